"""The benchmark's outputs: results/latest.json (its shape checked), EMBEDDINGS.md in the seed
report's structure, and PNG plots beside it, all computed from the result rows.

latest.json:
    {"meta": {"gpu": str, "dtype": str, "date": "YYYY-MM-DD", "copy_gbps": float,
              "versions": {name: version}},
     "rows": [{"method": "rope"|"alibi", "config": str, "op": str, "provider": str,
               "ms": float|null, "burst_ms": float|null, "roofline_ms": float|null,
               "peak_mb": float|null, "note": str|null}]}

Rows of method "rope" and config "<VARIANT_CONFIG>-<variant>" (op "apply") are the RoPE variants
(ROPE_VARIANTS), each changing one thing of that configuration.

burst_ms: on a GPU, the Triton (torch) row timed as the JAX rows are, for comparing the two
frameworks by one method; null elsewhere.

The report functions take `configs` (method -> its configurations, smallest first; objects
with name, heads, seq_len, batch and, for RoPE, head_dim) for the headings and the order.
"""

import datetime
import json
import math
from pathlib import Path

METHODS = {
    "rope": {
        "name": "RoPE",
        "title": "RoPE (Rotary Position Embedding)",
        "used_in": "LLaMA, Qwen, Gemma, GPT-NeoX",
        "ops": ["generate", "apply", "total", "fwd_bwd"],
        "labels": {"generate": "Generate cos/sin", "apply": "Apply rotation", "total": "Total",
                   "fwd_bwd": "Forward + backward"},
    },
    "alibi": {
        "name": "ALiBi",
        "title": "ALiBi (Attention with Linear Biases)",
        "used_in": "BLOOM, MPT, some efficient models",
        "ops": ["slopes", "bias", "total", "add_to_scores", "softmax"],
        "labels": {"slopes": "Generate slopes", "bias": "Compute biases", "total": "Total",
                   "add_to_scores": "Add to scores", "softmax": "Softmax with bias"},
    },
}
# RoPE as real models use it beyond the seed's four configurations, measured at one of them
# (the apply op; rows "<VARIANT_CONFIG>-<variant>" of method "rope"): variant -> (what it
# is, how it differs from that configuration).
VARIANT_CONFIG = "large"
ROPE_VARIANTS = {
    "gqa": ("GQA: k of 8 heads (LLaMA 3 70B, Qwen 2)", dict(k_heads=8)),
    "bhsd": ("(batch, heads, seq, head_dim) layout", dict(layout="bhsd")),
    "bf16": ("bfloat16", dict(dtype="bfloat16")),
    "fp32": ("float32", dict(dtype="float32")),
    "partial": ("32 of 128 columns rotate (Pythia, GPT-NeoX, Phi)", dict(rotary_dim=32)),
    "interleaved": ("interleaved pairs (RoFormer, Meta's LLaMA code)", dict(interleaved=True)),
    "gptj": ("64 of 128 columns in interleaved pairs (GPT-J)", dict(rotary_dim=64, interleaved=True)),
}


def variant_config(variant: str, base: str = VARIANT_CONFIG) -> str:
    """The rows' config name of a RoPE variant of configuration `base`."""
    return f"{base}-{variant}"


PROVIDERS = {"pytorch": "PyTorch", "triton": "Triton", "torch_compile": "torch.compile",
             "liger": "Liger", "jax_xla": "JAX (XLA)", "jax_triton": "JAX Triton"}
PLOTS = ("embeddings_time.png", "embeddings_speedup.png")
_TITLES = {("rope", "large"): "Large Configuration (LLaMA 3 70B)", "xl": "XL Configuration (Long Context)"}
_USE_CASES = {"small": "Small Models", "medium": "Training, 2k context", "large": "Large models, 8k context",
              "xl": "Long Context"}

_OPTIONAL_FLOAT = (float, type(None))
_META_TYPES = {"gpu": str, "dtype": str, "date": str, "copy_gbps": float, "versions": dict}
_ROW_TYPES = {"method": str, "config": str, "op": str, "provider": str, "ms": _OPTIONAL_FLOAT,
              "burst_ms": _OPTIONAL_FLOAT, "roofline_ms": _OPTIONAL_FLOAT, "peak_mb": _OPTIONAL_FLOAT, "note": (str, type(None))}


# ---------------------------------------------------------------------------------------------
# latest.json


def _check_keys(where: str, value, types: dict) -> None:
    if not isinstance(value, dict) or set(value) != set(types):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{where} must have exactly the keys {sorted(types)}, got {got}")
    for key, expected in types.items():
        if isinstance(value[key], bool) or not isinstance(value[key], expected):
            raise ValueError(f"{where}.{key} must be {expected}, got {type(value[key]).__name__}")


def validate_results(results: dict) -> None:
    """Raise ValueError, naming the place, unless `results` has exactly latest.json's shape."""
    _check_keys("results", results, {"meta": dict, "rows": list})
    meta = results["meta"]
    _check_keys("meta", meta, _META_TYPES)
    try:
        datetime.datetime.strptime(meta["date"], "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"meta.date must be YYYY-MM-DD, got {meta['date']!r}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["versions"].items()):
        raise ValueError("meta.versions must map names to version strings")
    seen = set()
    for i, row in enumerate(results["rows"]):
        _check_keys(f"rows[{i}]", row, _ROW_TYPES)
        if row["method"] not in METHODS:
            raise ValueError(f"rows[{i}].method must be one of {list(METHODS)}, got {row['method']!r}")
        if row["op"] not in METHODS[row["method"]]["ops"]:
            raise ValueError(f"rows[{i}].op {row['op']!r} is not an op of {row['method']}")
        if row["provider"] not in PROVIDERS:
            raise ValueError(f"rows[{i}].provider must be one of {list(PROVIDERS)}, got {row['provider']!r}")
        if row["ms"] is None and not row["note"]:
            raise ValueError(f"rows[{i}] has ms null and no note saying why")
        key = (row["method"], row["config"], row["op"], row["provider"])
        if key in seen:
            raise ValueError(f"rows[{i}] repeats {key}")
        seen.add(key)


class Rows:
    """The result rows by (method, config, op, provider), and what follows from them."""

    def __init__(self, results: dict):
        self.meta = results["meta"]
        self.by_key = {(r["method"], r["config"], r["op"], r["provider"]): r for r in results["rows"]}

    def get(self, method, config, op, provider, field):
        row = self.by_key.get((method, config, op, provider))
        return row[field] if row else None

    def ms(self, method, config, op, provider) -> float | None:
        return self.get(method, config, op, provider, "ms")

    def note(self, method, config, op, provider) -> str | None:
        return self.get(method, config, op, provider, "note")

    def roofline(self, method, config, op) -> float | None:
        return self.get(method, config, op, "pytorch", "roofline_ms")

    def speedup(self, method, config, op, provider) -> float | None:
        """PyTorch's time / the provider's."""
        mine, theirs = self.ms(method, config, op, provider), self.ms(method, config, op, "pytorch")
        return theirs / mine if mine and theirs else None

    def over_roofline(self, method, config, op, provider) -> float | None:
        """Time / roofline."""
        ms, roofline = self.ms(method, config, op, provider), self.roofline(method, config, op)
        return ms / roofline if ms and roofline else None

    def gbps(self, method, config, op, provider) -> float | None:
        """Bytes moved / time: the roofline is those bytes at the copy bandwidth."""
        ratio = self.over_roofline(method, config, op, provider)
        return self.meta["copy_gbps"] / ratio if ratio else None


# ---------------------------------------------------------------------------------------------
# Numbers and names as text


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}" if ms >= 1 else f"{ms:#.3g}"


def fmt_x(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    return f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def fmt_amount(value: float | None) -> str:
    """MB or GB/s."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _label(method: str, op: str) -> str:
    return METHODS[method]["labels"][op]


def _row_label(method: str, op: str) -> str:
    """An op's label in a table, Total in bold as in the seed."""
    return f"**{_label(method, op)}**" if op == "total" else _label(method, op)


def _dims(method: str, config) -> str:
    head_dim = f", HeadDim={config.head_dim}" if method == "rope" else ""
    return f"Heads={config.heads}{head_dim}, SeqLen={config.seq_len}, Batch={config.batch}"


def _size(method: str, config) -> str:
    """A configuration in the seed's threshold terms."""
    width = f"hidden_size {config.heads * config.head_dim}" if method == "rope" else f"heads {config.heads}"
    return f"{config.name} ({width}, seq_len {config.seq_len})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# ---------------------------------------------------------------------------------------------
# Measured claims


def _why_not(rows: Rows, method: str, configs: list, op: str, provider: str) -> str:
    """The note of the provider's first row of `op` without a time."""
    notes = (rows.note(method, c.name, op, provider) for c in configs if not rows.ms(method, c.name, op, provider))
    return next((n for n in notes if n), "not measured in this run")


def speedups(rows: Rows, configs: dict, provider: str = "triton") -> list[tuple[str, str, str, float]]:
    """(method, config, op, speedup over PyTorch) wherever both were measured."""
    return [(m, c.name, op, s) for m, cs in configs.items() for c in cs for op in METHODS[m]["ops"]
            if (s := rows.speedup(m, c.name, op, provider)) is not None]


def crossover(rows: Rows, method: str, configs: list, op: str = "total") -> str:
    """Where Triton starts to beat PyTorch on `op`, over the configurations smallest first."""
    measured = [(c, s) for c in configs if (s := rows.speedup(method, c.name, op, "triton")) is not None]
    if not measured:
        return f"not measured ({_why_not(rows, method, configs, op, 'triton')})"
    faster = [s > 1 for _, s in measured]
    if all(faster):
        return f"faster than PyTorch at every size measured, from {_size(method, measured[0][0])} up"
    if not faster[-1]:
        wins = [c.name for (c, _), f in zip(measured, faster) if f]
        return f"faster than PyTorch at {', '.join(wins)} only" if wins else \
            f"slower than PyTorch at every size measured, up to {_size(method, measured[-1][0])}"
    first = max(i for i, f in enumerate(faster) if not f) + 1
    return (f"faster than PyTorch from {_size(method, measured[first][0])} up, "
            f"slower at {_size(method, measured[first - 1][0])}")


def fastest(rows: Rows, method: str, config: str, op: str) -> tuple[float, str] | None:
    """(ms, provider) of the fastest provider, or None."""
    timed = [(ms, p) for p in PROVIDERS if (ms := rows.ms(method, config, op, p))]
    return min(timed) if timed else None


def fastest_peer(rows: Rows, method: str, config: str) -> tuple[float | None, str | None]:
    """(ms, provider) of the fastest provider that is not trinix on `total`."""
    timed = [(ms, p) for p in PROVIDERS if p not in ("triton", "jax_triton")
             if (ms := rows.ms(method, config, "total", p))]
    return min(timed) if timed else (None, None)


# ---------------------------------------------------------------------------------------------
# EMBEDDINGS.md


def render_markdown(results: dict, configs: dict, run_info: dict, plot_note: str | None) -> str:
    """The seed's report filled with the measured rows. run_info: warmup, iters and the
    command that ran; plot_note: why there are no plots, or None."""
    rows = Rows(results)
    on_gpu = not rows.meta["gpu"].startswith("none")
    variants = _variants_section(rows, configs)
    sections = [_header(on_gpu), _environment(rows, run_info, on_gpu), _summary(rows, configs),
                *(_method_section(rows, method, cs) for method, cs in configs.items()),
                *([variants] if variants else []), _insights(rows, configs), _recommendations(rows, configs), _guidelines(rows, configs),
                _scaling(rows, configs, plot_note), _memory(rows, configs, on_gpu), _details(),
                _reproduce(run_info), _footer(rows)]
    return "\n\n---\n\n".join(sections) + "\n"


def _header(on_gpu: bool) -> str:
    lines = ["# Position Embeddings Benchmark", "",
             "Performance comparison of position encoding methods: trinix's Triton kernels against the "
             "seed's PyTorch path, torch.compile, Liger-Kernel and JAX, in one process and one harness. "
             "Every number below is a row of [results/latest.json](results/latest.json)."]
    if not on_gpu:
        lines += ["", "> **This run had no CUDA GPU.** The Triton columns (trinix through PyTorch and "
                      "through JAX) and Liger need one: they are empty, and no Triton speedup is measured "
                      "here. The numbers compare the PyTorch, torch.compile and JAX paths on this CPU and "
                      "say nothing about GPU performance."]
    return "\n".join(lines)


def _environment(rows: Rows, run_info: dict, on_gpu: bool) -> str:
    meta, versions = rows.meta, rows.meta["versions"]

    def version(name):
        return versions.get(name, "not installed")

    precision = {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32"}.get(meta["dtype"], meta["dtype"])
    timing = ("from torch is timed as `triton.testing.do_bench` times it: the L2 cache flushed "
              "(256 MB zeroed) before each call, CUDA events around it, and no wait in between, so "
              "the host dispatches ahead and the time is the GPU's, unless dispatching a call takes "
              "the host longer than the GPU takes to flush and run it (then it is the host's). A "
              "JAX call, on a stream torch's events do not see, is timed by the wall time of "
              "bursts of back-to-back calls, the last one waited for, / the calls (no flush "
              "between them; a burst lasts about 10 ms, at least one call, so that its first "
              "dispatch and last wait count little). Triton's torch rows are timed that way too, "
              "for *JAX Triton against Triton*" if on_gpu else
              "is timed by the wall clock, waited for (no cache flush)")
    torch_memory = ("the CUDA allocator's peak above what was allocated before the call" if on_gpu
                    else "not measured on a CPU (the allocator keeps no statistics there)")
    return "\n".join([
        "## Test Environment", "",
        f"- **GPU**: {meta['gpu']}",
        f"- **CUDA**: {versions.get('cuda', 'none')}",
        f"- **PyTorch**: {version('torch')}",
        f"- **Triton**: {version('triton')}",
        f"- **JAX**: {version('jax')} (jaxlib {version('jaxlib')}, Flax {version('flax')}, "
        f"jax-triton {version('jax-triton')})",
        f"- **trinix**: {version('trinix')}; **Liger-Kernel**: {version('liger-kernel')}",
        f"- **Precision**: {precision}",
        f"- **Warmup**: {run_info['warmup']} iterations",
        f"- **Measurement**: {run_info['iters']} iterations, median (a row whose iterations would take "
        "over 2 s gets fewer, never fewer than 10)",
        f"- **Copy bandwidth**: {meta['copy_gbps']:,.0f} GB/s (a large {'device' if on_gpu else 'host'} "
        "copy, bytes read + written, measured in this run)",
        "", "### Method", "",
        f"- One harness for every provider: warm-up calls (compilation included), then each timed call {timing}.",
        "- Roofline = the bytes an op must move (each input read once, each output written once) at "
        "the copy bandwidth; GB/s = those bytes / time. RoPE tables are (seq, head_dim) in the input "
        "dtype, and RoPE's Total needs none; the ALiBi bias is one float32 (heads, seq, seq) bias, the "
        "batch a broadcast of it; scores are in the input dtype.",
        f"- Memory (MB) = what one call needs beyond its inputs (outputs + temporaries): for torch "
        f"{torch_memory}; for JAX the outputs + temporaries of the compiled program (XLA's memory "
        "analysis), since JAX's peak statistic cannot be reset between calls.",
        "- Operations. RoPE, q and k (batch, seq, heads, head_dim): *Generate cos/sin* tables; *Apply "
        "rotation* by given tables; *Total*: rotated q and k from nothing (the seed's generate + apply; "
        "for trinix `rope.rotate`, which computes cos/sin in the kernel); *Forward + backward*: apply "
        "and its gradient, through autograd or `jax.vjp`. ALiBi: *Generate slopes*; *Compute biases* "
        "(batch, heads, seq, seq); *Total*: slopes + biases; *Add to scores*: scores + bias, in place "
        "where the framework allows; *Softmax with bias*: softmax(scores + bias) over keys.",
    ])


def _summary(rows: Rows, configs: dict) -> str:
    measured = speedups(rows, configs)
    if measured:
        means = {m: geomean([s for mm, _, _, s in measured if mm == m]) for m in configs}
        means = {m: g for m, g in means.items() if g is not None}
        average = (", ".join(f"{METHODS[m]['name']} {fmt_x(g)}" for m, g in means.items())
                   + " (geometric mean of Triton over PyTorch, every op and configuration measured)")
        method, config, op, best = max(measured, key=lambda t: t[3])
        maximum = f"{fmt_x(best)} ({METHODS[method]['name']} {config}, {_label(method, op)})"
        top = max(means, key=means.get)
        best_method = f"{METHODS[top]['name']} (highest average Triton speedup, {fmt_x(means[top])})"
    else:
        method = next(iter(configs))
        average = maximum = best_method = \
            f"not measured: Triton {_why_not(rows, method, configs[method], 'total', 'triton')}"
    threshold = "; ".join(f"{METHODS[m]['name']} *Total*: Triton {crossover(rows, m, cs)}"
                          for m, cs in configs.items())
    if measured:
        threshold += " (measured, in place of the seed's guess: hidden_size > 2048, seq_len > 512)"
    peers = [(p, geomean([s for *_, s in speedups(rows, configs, p)])) for p in list(PROVIDERS)[1:]]
    peers_text = ", ".join(f"{PROVIDERS[p]} {fmt_x(g)}" for p, g in peers if g) or "none measured"
    return "\n".join(["## Summary", "", *_table(["Metric", "Value"], [
        ["**Average Speedup**", average],
        ["**Maximum Speedup**", maximum],
        ["**Best Method**", best_method],
        ["**Triton Threshold**", threshold],
        ["**Every provider vs PyTorch**",
         f"{peers_text} (geometric mean of speedups over the rows both measured)"],
    ])])


def _notes(rows: Rows, method: str, configs: list, config: str | None = None) -> list[str]:
    """Lines "- **Provider**, ops: note". Without `config`, the notes every configuration
    shares; with it, that configuration's others."""
    ops, names = METHODS[method]["ops"], [c.name for c in configs]
    lines = []
    for provider in PROVIDERS:
        ops_by_note = {}
        for op in ops:
            text = rows.note(method, config or names[0], op, provider)
            shared = len({rows.note(method, n, op, provider) for n in names}) == 1
            if text and shared == (config is None):
                ops_by_note.setdefault(text, []).append(op)
        for text, noted in ops_by_note.items():
            where = "" if noted == ops else ", " + ", ".join(_label(method, op) for op in noted)
            lines.append(f"- **{PROVIDERS[provider]}**{where}: {text}")
    return lines


def _method_section(rows: Rows, method: str, configs: list) -> str:
    spec = METHODS[method]
    lines = [f"## {spec['title']}", f"**Used in: {spec['used_in']}**"]
    shared = _notes(rows, method, configs)
    if shared:
        lines += ["", "Notes for every configuration:", *shared]
    for config in configs:
        c = config.name

        def time_cell(op, provider):
            ms = rows.ms(method, c, op, provider)
            return "—" if ms is None else f"{fmt_ms(ms)} ({fmt_x(rows.over_roofline(method, c, op, provider))})"

        title = _TITLES.get((method, c)) or _TITLES.get(c) or f"{c.capitalize()} Configuration"
        lines += ["", f"### {title}", f"**{_dims(method, config)}**", ""]
        lines += _table(["Operation", "PyTorch (ms)", "Triton (ms)", "Speedup", "Memory (MB)"], [
            [_row_label(method, op), fmt_ms(rows.ms(method, c, op, "pytorch")), fmt_ms(rows.ms(method, c, op, "triton")),
             fmt_x(rows.speedup(method, c, op, "triton")),
             " / ".join(fmt_amount(rows.get(method, c, op, p, "peak_mb")) for p in ("pytorch", "triton"))]
            for op in spec["ops"]])
        lines += ["", "Memory: PyTorch / Triton, what one call needs beyond its inputs.", "",
                  "Every provider, ms (time / roofline):", ""]
        lines += _table(["Operation", "Roofline (ms)", *PROVIDERS.values()], [
            [_row_label(method, op), fmt_ms(rows.roofline(method, c, op)), *(time_cell(op, p) for p in PROVIDERS)]
            for op in spec["ops"]])
        lines += ["", "Bandwidth, GB/s (bytes moved / time):", ""]
        lines += _table(["Operation", *PROVIDERS.values()], [
            [_row_label(method, op), *(fmt_amount(rows.gbps(method, c, op, p)) for p in PROVIDERS)]
            for op in spec["ops"]])
        own_notes = _notes(rows, method, configs, c)
        if own_notes:
            lines += ["", *own_notes]
    return "\n".join(lines)


def _variants_section(rows: Rows, configs: dict) -> str | None:
    """RoPE variants at VARIANT_CONFIG, a line each, if the rows have any."""
    measured = {(c, p) for m, c, op, p in rows.by_key if m == "rope" and op == "apply"}
    names = [v for v in ROPE_VARIANTS if any((variant_config(v), p) in measured for p in PROVIDERS)]
    if not names:
        return None
    providers = [p for p in PROVIDERS if any((variant_config(v), p) in measured for v in names)]
    base = next(c for c in configs["rope"] if c.name == VARIANT_CONFIG)

    def cell(variant, provider):
        config = variant_config(variant)
        ms = rows.ms("rope", config, "apply", provider)
        return "—" if ms is None else f"{fmt_ms(ms)} ({fmt_x(rows.over_roofline('rope', config, 'apply', provider))})"

    lines = ["## RoPE variants", "",
             f"*Apply rotation* (by cos/sin tables) at the {VARIANT_CONFIG} configuration "
             f"({_dims('rope', base)}), FP16 unless named, one change at a time. Every call is checked "
             "against the plain PyTorch rotation before it is timed. ms (time / roofline):", ""]
    lines += _table(["Variant", "Roofline (ms)", *(PROVIDERS[p] for p in providers), "Triton over PyTorch"], [
        [ROPE_VARIANTS[v][0], fmt_ms(rows.roofline("rope", variant_config(v), "apply")),
         *(cell(v, p) for p in providers), fmt_x(rows.speedup("rope", variant_config(v), "apply", "triton"))]
        for v in names])
    notes = {}
    for v in names:
        for p in providers:
            if text := rows.note("rope", variant_config(v), "apply", p):
                notes.setdefault((p, text), []).append(ROPE_VARIANTS[v][0])
    if notes:
        lines += ["", *(f"- **{PROVIDERS[p]}**, {'; '.join(where)}: {text}" for (p, text), where in notes.items())]
    lines += ["", "PyTorch is the seed's rotation generalised to these variants (partial columns, interleaved "
                  "pairs, either layout); torch.compile compiles it; Liger takes (batch, heads, seq, head_dim) "
                  "views and rotates in place."]
    return "\n".join(lines)


def _insights(rows: Rows, configs: dict) -> str:
    lines = ["## Key Insights (Measured)"]
    for method, cs in configs.items():
        lines += ["", f"### {METHODS[method]['name']} Performance"]
        lines += [_op_insight(rows, method, cs, op) for op in METHODS[method]["ops"]]
        against_peers = []
        for c in cs:
            mine, (ms, peer) = rows.ms(method, c.name, "total", "triton"), fastest_peer(rows, method, c.name)
            if mine and ms:
                against_peers.append(f"{c.name} {fmt_x(ms / mine)} ({PROVIDERS[peer]})")
        if against_peers:
            lines.append("- **Triton against the fastest peer** (*Total*, the peer's time / Triton's): "
                         + "; ".join(against_peers))
        lines.append(f"- **Crossover** (*Total*): Triton {crossover(rows, method, cs)}")
        lines += _jax_against_torch(rows, method, cs)
        for c in cs:
            too_big = {}
            for op in METHODS[method]["ops"]:
                if (note := rows.note(method, c.name, op, "pytorch") or "").startswith("does not fit"):
                    too_big.setdefault(note, []).append(_label(method, op))
            lines += [f"- At {c.name}, {', '.join(ops)}: {note}" for note, ops in too_big.items()]
    lines += ["", "### Comparison", "", *_comparison(rows, configs)]
    return "\n".join(lines)


def _jax_against_torch(rows: Rows, method: str, configs: list) -> list[str]:
    """JAX Triton's time / Triton's (torch), both timed by bursts, per op and configuration:
    the kernels are the same, so this is what launching from JAX costs. Empty without burst
    times (a CPU run)."""
    lines = []
    for op in METHODS[method]["ops"]:
        ratios = [f"{c.name} {fmt_x(jax_ms / torch_ms)}" for c in configs
                  if (jax_ms := rows.ms(method, c.name, op, "jax_triton"))
                  and (torch_ms := rows.get(method, c.name, op, "triton", "burst_ms"))]
        if ratios:
            lines.append(f"  - {_label(method, op)}: " + ", ".join(ratios))
    if not lines:
        return []
    return ["- **JAX Triton against Triton** (JAX Triton's time / Triton's through torch, both "
            "timed by bursts as the JAX rows are):", *lines]


def _op_insight(rows: Rows, method: str, configs: list, op: str) -> str:
    """The fastest provider of `op` at the largest configuration measured, against the
    roofline, with PyTorch and Triton beside it."""
    label = _label(method, op)
    config = next((c.name for c in reversed(configs) if fastest(rows, method, c.name, op)), None)
    if config is None:
        return f"- **{label}**: not measured ({_why_not(rows, method, configs, op, 'pytorch')})"
    ms, best = fastest(rows, method, config, op)
    parts = [f"fastest at {config}: {PROVIDERS[best]}, {fmt_ms(ms)} ms = "
             f"{fmt_x(rows.over_roofline(method, config, op, best))} the roofline "
             f"({fmt_amount(rows.gbps(method, config, op, best))} GB/s)"]
    parts += [f"{PROVIDERS[p]} {fmt_ms(rows.ms(method, config, op, p))} ms "
              f"({fmt_x(rows.over_roofline(method, config, op, p))})"
              for p in ("pytorch", "triton") if p != best and rows.ms(method, config, op, p)]
    return f"- **{label}**: " + "; ".join(parts)


def _comparison(rows: Rows, configs: dict) -> list[str]:
    def measured(method):
        if method not in configs:
            return ["not run", "not run"]
        op = "apply" if method == "rope" else "add_to_scores"
        top = next((c.name for c in reversed(configs[method]) if fastest(rows, method, c.name, op)), None)
        best = fastest(rows, method, top, op) if top else None
        speed = f"{_label(method, op)} at {top}: {PROVIDERS[best[1]]}, {fmt_ms(best[0])} ms" if best else \
            f"{_label(method, op)} not measured"
        ups = [(c.name, s) for c in configs[method] if (s := rows.speedup(method, c.name, "total", "triton"))]
        return [speed, f"{fmt_x(ups[-1][1])} at {ups[-1][0]}" if ups else "not measured"]

    rope, alibi = measured("rope"), measured("alibi")
    return _table(["Feature", "RoPE", "ALiBi"], [
        ["**Computation**", "Rotation of q and k by position", "Bias -m·\\|i-j\\| added to scores"],
        ["**Parameters**", "None", "None (fixed slopes)"],
        ["**Fastest (largest configuration)**", rope[0], alibi[0]],
        ["**Triton speedup (Total)**", rope[1], alibi[1]],
        ["**Used in**", "LLaMA, Qwen", "BLOOM, MPT"],
    ])


def _triton_vs_pytorch(rows: Rows, configs: dict, method: str, name: str, op: str) -> str:
    """'Triton X ms against PyTorch Y ms at <config> (Z×)', in configuration `name` or else
    the largest one, or why that is not measured."""
    cs = configs.get(method, [])
    if not cs:
        return f"{METHODS[method]['name']} not run"
    c = next((c.name for c in cs if c.name == name), cs[-1].name)
    mine, theirs = rows.ms(method, c, op, "triton"), rows.ms(method, c, op, "pytorch")
    if mine is None:
        return f"Triton not measured at {c} ({rows.note(method, c, op, 'triton')})"
    if theirs is None:
        return f"Triton {fmt_ms(mine)} ms at {c}, PyTorch not measured ({rows.note(method, c, op, 'pytorch')})"
    return f"Triton {fmt_ms(mine)} ms against PyTorch {fmt_ms(theirs)} ms at {c} ({fmt_x(theirs / mine)})"


def _recommendations(rows: Rows, configs: dict) -> str:
    def measured(method, name, op):
        return _triton_vs_pytorch(rows, configs, method, name, op)

    return "\n".join([
        "## Recommendations", "",
        "### For LLaMA-style Models", "",
        f"Measured: rotated q and k from nothing (*Total*), {measured('rope', 'large', 'total')}; "
        f"forward + backward, {measured('rope', 'large', 'fwd_bwd')}.", "",
        "```python", "from trinix import FastRoPEPositionEmbedding", "",
        "rope = FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768, base=10000.0, use_triton=True)",
        "q = torch.randn(batch, seq_len, num_heads, head_dim, device=\"cuda\", dtype=torch.float16)",
        "k = torch.randn(batch, seq_len, num_heads, head_dim, device=\"cuda\", dtype=torch.float16)",
        "q_rot, k_rot = rope.rotate(q, k)                          # cos/sin computed in the kernel",
        "cos, sin = rope(q, seq_len)                               # or the seed's two steps",
        "q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)", "```", "",
        "### For Length Extrapolation", "",
        f"Measured: ALiBi added to the scores in place (*Add to scores*), "
        f"{measured('alibi', 'large', 'add_to_scores')}; softmax with the bias, "
        f"{measured('alibi', 'large', 'softmax')}. Neither creates a bias tensor{_too_big(rows, configs)}.", "",
        "```python", "from trinix import FastALiBiPositionEmbedding", "",
        "alibi = FastALiBiPositionEmbedding(num_heads=64, max_seq_len=32768, use_triton=True, device=\"cuda\")",
        "scores = alibi.add_to_scores(scores, inplace=True)      # scores (batch, 64, seq_q, seq_k)",
        "probs = alibi.softmax(scores, scale=head_dim ** -0.5)   # or bias and softmax in one kernel",
        "bias = alibi(seq_len, batch_size)                       # the seed's bias, where it fits", "```", "",
        "### For Efficient Inference", "",
        "No cos/sin cache is needed: `rope.rotate(q, k, offset=past_len)` computes the angles of "
        f"positions past_len onwards in the kernel. Measured: {measured('rope', 'small', 'total')}.", "",
        "```python", "q_rot, k_rot = rope.rotate(q_new, k_new, offset=past_len)  # one decoding step", "```",
    ])


def _too_big(rows: Rows, configs: dict) -> str:
    """', which at <config> cannot exist: <size>', for the largest bias that did not fit."""
    for c in reversed(configs.get("alibi", [])):
        note = rows.note("alibi", c.name, "bias", "pytorch") or ""
        if note.startswith("does not fit"):
            return f", which at {c.name} could not even be allocated ({note.removeprefix('does not fit: ')})"
    return ""


def _guidelines(rows: Rows, configs: dict) -> str:
    table_rows = []
    for method, cs in configs.items():
        for c in cs:
            speedup = rows.speedup(method, c.name, "total", "triton")
            verdict = (f"{fmt_x(speedup)}: {'Triton' if speedup > 1 else 'PyTorch fallback'}" if speedup
                       else f"not measured ({rows.note(method, c.name, 'total', 'triton')})")
            table_rows.append([f"**{_USE_CASES.get(c.name, c.name)}**", METHODS[method]["name"],
                               _dims(method, c), verdict])
    return "\n".join(["## Configuration Guidelines", "",
                      *_table(["Use Case", "Method", "Config", "Measured Speedup (Total)"], table_rows)])


def _scaling(rows: Rows, configs: dict, plot_note: str | None) -> str:
    lines = ["## Performance Scaling (Measured)"]
    for method, cs in configs.items():
        op = "total" if method == "rope" else "bias"
        table_rows = []
        for c in cs:
            ratios = [f"{PROVIDERS[p]} {fmt_x(rows.over_roofline(method, c.name, op, p))}"
                      for p in ("pytorch", "triton") if rows.ms(method, c.name, op, p)]
            reason = ("time / roofline: " + ", ".join(ratios) if ratios
                      else rows.note(method, c.name, op, "pytorch") or "not measured")
            first = f"{c.name} (H={c.heads}, S={c.seq_len})" if method == "rope" else str(c.seq_len)
            table_rows.append([first, fmt_x(rows.speedup(method, c.name, op, "triton")), reason])
        by, first_column = ("Configuration", "Config") if method == "rope" else ("Sequence Length", "SeqLen")
        lines += ["", f"### {METHODS[method]['name']} by {by}", "",
                  *_table([first_column, f"Measured Speedup ({_label(method, op)})", "Reason"], table_rows)]
    lines += ["", "### Plots", ""]
    if plot_note:
        lines.append(f"No plots: {plot_note}.")
    else:
        lines += ["Time per configuration against the roofline (black bars), log scale:", "",
                  f"![time against roofline]({PLOTS[0]})", "",
                  "Speedup over the seed's PyTorch path, log scale:", "", f"![speedups]({PLOTS[1]})"]
    return "\n".join(lines)


def _memory(rows: Rows, configs: dict, on_gpu: bool) -> str:
    lines = ["## Memory Efficiency (Measured)"]
    for method, cs in configs.items():
        lines += ["", f"### {METHODS[method]['name']}"]
        for op in METHODS[method]["ops"]:
            for c in reversed(cs):
                peaks = [f"{PROVIDERS[p]} {fmt_amount(mb)}" for p in PROVIDERS
                         if (mb := rows.get(method, c.name, op, p, "peak_mb")) is not None]
                if peaks:
                    lines.append(f"- **{_label(method, op)}** at {c.name}, MB beyond the inputs: " + ", ".join(peaks))
                    break
        lines.append("- No learned parameters; `rope.rotate` needs no cos/sin table at all." if method == "rope"
                     else "- `add_to_scores` and `softmax` never create the bias: all they need is their "
                          "output (nothing, in place).")
    if not on_gpu:
        lines += ["", "Memory of the torch providers is not measured on a CPU."]
    return "\n".join(lines)


def _details() -> str:
    return "\n".join([
        "## Implementation Details", "",
        "### RoPE Algorithm", "```",
        "1. Generate position indices: [0, 1, 2, ..., seq_len-1]",
        "2. Compute frequencies: 1 / (base^(2i/dim)) for i in [0, dim/2)",
        "3. Compute angles: position * frequency",
        "4. Generate cos(angles) and sin(angles)",
        "5. Apply rotation to query and key (half-split, as LLaMA):",
        "   out = x * cos + rotate_half(x) * sin,  rotate_half([x1, x2]) = [-x2, x1]", "```", "",
        "### ALiBi Algorithm", "```",
        "1. Generate slopes: 2^(-8i/num_heads) for i in [1, num_heads] (for a power-of-two head",
        "   count, as here; trinix follows the paper for other counts)",
        "2. Compute position differences: |i - j| for all positions",
        "3. Compute biases: -slope * position_difference",
        "4. Add biases to attention scores before softmax", "```", "",
        "## Triton Optimization Details", "",
        "### RoPE Optimization",
        "- **One launch for q and k**: programs split the tokens and heads of either tensor; a tile's "
        "cos/sin are loaded or computed once and shared by its heads.",
        "- **No table**: `rope.rotate` computes cos/sin in the kernel, the angle reduced to one turn in "
        "float64, so long positions keep their precision and no table is read or written.",
        "- **Any strides**: BSHD and BHSD views are read where they are; the backward is the same "
        "kernel with the rotation conjugated.", "",
        "### ALiBi Optimization",
        "- **No bias tensor**: `add_to_scores` computes -m·|i-j| in registers and adds it to the "
        "scores in place, one read and one write of each score.",
        "- **Fused softmax**: scale, bias and softmax over keys in one kernel.",
        "- **A bias only where asked for**: one float32 (heads, seq, seq) bias, the batch a stride-0 "
        "view; a bias too big for the device is refused before anything is allocated.",
    ])


def _reproduce(run_info: dict) -> str:
    return "\n".join([
        "## Reproduce These Results", "",
        "```bash", "# Install dependencies (from a checkout of trinix)", "pip install -e \".[dev]\"", "",
        "# Run benchmark: EMBEDDINGS.md, results/latest.json and plots into --output",
        "# (default benchmarks/ on a CUDA GPU, benchmarks/results/cpu/ without one)",
        "python benchmarks/benchmark_embeddings.py", "",
        "# Quick run: the small configurations, a minute or two on a CPU",
        "python benchmarks/benchmark_embeddings.py --quick", "",
        "# Custom configuration",
        "python benchmarks/benchmark_embeddings.py --num_heads 64 --head_dim 128 --seq_len 8192", "```", "",
        f"This report: `{run_info['command']}`",
    ])


def _footer(rows: Rows) -> str:
    return "\n".join([
        "## Related Benchmarks", "",
        "- [Every row of this report, machine-readable](results/latest.json)",
        f"- Plots: [time against roofline]({PLOTS[0]}), [speedups]({PLOTS[1]})", "", "---", "",
        f"*Last updated: {rows.meta['date']}*",
        f"*Benchmarked on {rows.meta['gpu']}*",
        "*Generated by benchmarks/benchmark_embeddings.py*",
    ])


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(results: dict, configs: dict, output: Path) -> tuple[list[Path], str | None]:
    """Time against roofline, and speedup over PyTorch: a panel per (method, op), a bar per
    provider and configuration. Returns (the files written, None) or ([], why none)."""
    try:
        import matplotlib
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = Rows(results)
    n_cols = max(len(METHODS[m]["ops"]) for m in configs)
    written = []
    for filename, speedup in zip(PLOTS, (False, True)):
        providers = list(PROVIDERS)[1:] if speedup else list(PROVIDERS)
        width = 0.8 / len(providers)
        fig, axes = plt.subplots(len(configs), n_cols, figsize=(4.2 * n_cols, 3.4 * len(configs)), squeeze=False)
        for panels, (method, cs) in zip(axes, configs.items()):
            names = [c.name for c in cs]
            for ax in panels[len(METHODS[method]["ops"]):]:
                ax.axis("off")
            for ax, op in zip(panels, METHODS[method]["ops"]):
                ax.set_yscale("log")
                for i, p in enumerate(providers):
                    bars = [(j + (i - (len(providers) - 1) / 2) * width, value) for j, n in enumerate(names)
                            if (value := (rows.speedup if speedup else rows.ms)(method, n, op, p))]
                    # A speedup bar grows from 1, up when faster than PyTorch, down when slower.
                    base = 1.0 if speedup else 0.0
                    ax.bar([x for x, _ in bars], [v - base for _, v in bars], width, bottom=base or None,
                           label=PROVIDERS[p], color=f"C{list(PROVIDERS).index(p)}")
                if speedup:
                    ax.axhline(1.0, color="black", linewidth=0.8)
                    ax.set_ylabel("× over PyTorch")
                else:
                    ax.set_ylabel("ms")
                    for j, n in enumerate(names):
                        if roofline := rows.roofline(method, n, op):
                            ax.hlines(roofline, j - 0.45, j + 0.45, color="black", linewidth=2,
                                      label="roofline" if j == 0 else None)
                ax.set_xticks(range(len(names)), names)
                ax.set_xlim(-0.5, len(names) - 0.5)
                ax.set_title(f"{METHODS[method]['name']}: {_label(method, op)}", fontsize=10)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
        fig.text(0.5, 0.005, f"{rows.meta['gpu']}, {rows.meta['dtype']}, {rows.meta['date']}",
                 ha="center", va="bottom", fontsize=9)
        fig.tight_layout(rect=(0, 0.03, 1, 0.93))
        fig.savefig(output / filename, dpi=110)
        plt.close(fig)
        written.append(output / filename)
    return written, None


# ---------------------------------------------------------------------------------------------
# Writing everything


def write_outputs(results: dict, configs: dict, run_info: dict, output: Path) -> list[Path]:
    """Write results/latest.json, the plots and EMBEDDINGS.md into `output`; return their paths."""
    validate_results(results)
    output = Path(output)
    (output / "results").mkdir(parents=True, exist_ok=True)
    json_path = output / "results" / "latest.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plots, plot_note = write_plots(results, configs, output)
    report = output / "EMBEDDINGS.md"
    report.write_text(render_markdown(results, configs, run_info, plot_note))
    return [report, json_path, *plots]


def console_table(results: dict) -> str:
    """The rows as text: a line per (method, config, op), a column of ms per provider."""
    rows = Rows(results)
    keys = dict.fromkeys((r["method"], r["config"], r["op"]) for r in results["rows"])
    lines = [f"{'method':7}{'config':9}{'op':15}{'roofline':>10}" + "".join(f"{p:>14}" for p in PROVIDERS)]
    for method, config, op in keys:
        lines.append(f"{method:7}{config:9}{op:15}{fmt_ms(rows.roofline(method, config, op)):>10}"
                     + "".join(f"{fmt_ms(rows.ms(method, config, op, p)):>14}" for p in PROVIDERS))
    return "\n".join(lines)
