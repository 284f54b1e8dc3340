"""EMBEDDINGS.md's sections of measurements: what a model gains (the blocks), summary, a section
per method and configuration, the RoPE variants, insights, guidelines, scaling and memory, each
made from the rows."""

from . import blocks
from .analysis import (Rows, crossover, dims, fastest, fastest_peer, fmt_amount, fmt_ms, fmt_x, geomean, label,
                       row_label, speedups, table, why_not)
from .plots import PLOTS
from .schema import (BLOCK_CONFIGS, BLOCK_DTYPE, BLOCK_OPS, BLOCKS, METHODS, PROVIDERS, ROPE_VARIANTS, VARIANT_CONFIG,
                     providers_of, variant_config)

_TITLES = {("rope", "large"): "Large Configuration (LLaMA 3 70B)", "xl": "XL Configuration (Long Context)"}
_USE_CASES = {"small": "Small Models", "medium": "Training, 2k context", "large": "Large models, 8k context",
              "xl": "Long Context"}


def blocks_section(rows: Rows) -> str | None:
    """What a model gains: per block, configuration and op, each provider's time, its speedup over
    its framework's baseline and its peak memory; None if the rows have no block."""
    present = [(m, c) for m, c, _, _ in rows.by_key if m in BLOCKS]
    if not present:
        return None
    lines = ["## What a model gains", "",
             f"Whole transformer blocks in {BLOCK_DTYPE}, forward and forward + backward (the gradients of "
             "x and of every weight), timed by the harness of the operations below (L2 flushed before each "
             f"torch call, a CUDA event pair around it; JAX by bursts): after {blocks.WARMUP} warm-up calls "
             f"each, compilation included, all of an op's providers in a framework (eager and compiled alike) "
             f"take {blocks.TURNS} turns, each timing about {blocks.TURN_MS:g} ms of one provider's calls, "
             "in reverse order every other turn, with Python's garbage collector paused; a row's time is the "
             "median of its calls (of its bursts, for JAX), so that the GPU's drift over the seconds an op "
             "takes falls on every provider alike. "
             "Before it is timed, every block is checked against its "
             "framework's plain block computed in float32 (output and gradients: relative error, norm of the "
             f"difference / norm, at most {blocks.TOLERANCE[BLOCK_DTYPE]:g}); a block that fails the check "
             "is not timed. Peak memory: what one call needs beyond its inputs (torch: the CUDA allocator's "
             "peak above what was allocated before the call; JAX: the outputs and temporaries of the "
             "compiled program, by XLA's memory analysis, since the device's peak statistic cannot be reset "
             "between calls). trinix runs with backend=\"auto\"; each trinix row's note says what it chose."]
    for method, spec in BLOCKS.items():
        names = list(dict.fromkeys(c for m, c in present if m == method))
        if not names:
            continue
        shapes = {c.name: f"seq {c.seq_len}, batch {c.batch}" for c in BLOCK_CONFIGS[method]}
        baselines = ", ".join(f"{spec['providers'][b][1]} for {framework}" for framework, b in spec["baseline"].items())
        lines += ["", f"### {spec['title']}", "", spec["what"] + ".", "",
                  f"Speedup: the baseline's time / the provider's (baselines: {baselines}).", ""]
        table_rows, notes = [], {}
        for config in names:
            for op in BLOCK_OPS:
                for provider, (framework, what) in spec["providers"].items():
                    ms = rows.ms(method, config, op, provider)
                    base = rows.ms(method, config, op, spec["baseline"][framework])
                    table_rows.append([f"{config} ({shapes[config]})" if config in shapes else config, BLOCK_OPS[op],
                                       f"{what} (`{provider}`)", fmt_ms(ms), fmt_x(base / ms if ms and base else None),
                                       fmt_amount(rows.get(method, config, op, provider, "peak_mb"))])
                    if text := rows.note(method, config, op, provider):
                        notes.setdefault((provider, text), []).append(f"{config} {BLOCK_OPS[op].lower()}")
        lines += table(["Config", "Op", "Provider", "ms", "Speedup", "Peak memory (MB)"], table_rows)
        if notes:
            every = len(names) * len(BLOCK_OPS)
            lines += ["", *(f"- `{p}`, {'every row' if len(where) == every else ', '.join(where)}: {text}"
                            for (p, text), where in notes.items())]
    return "\n".join(lines)


def summary(rows: Rows, configs: dict) -> str:
    measured = speedups(rows, configs)
    if measured:
        means = {m: geomean([s for mm, _, _, s in measured if mm == m]) for m in configs}
        means = {m: g for m, g in means.items() if g is not None}
        average = (", ".join(f"{METHODS[m]['name']} {fmt_x(g)}" for m, g in means.items())
                   + " (geometric mean of Triton over PyTorch, every op and configuration measured)")
        method, config, op, best = max(measured, key=lambda t: t[3])
        maximum = f"{fmt_x(best)} ({METHODS[method]['name']} {config}, {label(method, op)})"
        top = max(means, key=means.get)
        best_method = f"{METHODS[top]['name']} (highest average Triton speedup, {fmt_x(means[top])})"
    else:
        method = next(iter(configs))
        average = maximum = best_method = \
            f"not measured: Triton {why_not(rows, method, configs[method], 'total', 'triton')}"
    threshold = "; ".join(f"{METHODS[m]['name']} *Total*: Triton {crossover(rows, m, cs)}"
                          for m, cs in configs.items())
    if measured:
        threshold += " (measured, in place of the original benchmark report's guess: hidden_size > 2048, seq_len > 512)"
    peers = [(p, geomean([s for *_, s in speedups(rows, configs, p)])) for p in list(PROVIDERS)[1:]]
    peers_text = ", ".join(f"{PROVIDERS[p]} {fmt_x(g)}" for p, g in peers if g) or "none measured"
    return "\n".join(["## Summary", "", *table(["Metric", "Value"], [
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
    ops, names, providers = METHODS[method]["ops"], [c.name for c in configs], providers_of(method)
    lines = []
    for provider in providers:
        ops_by_note = {}
        for op in ops:
            text = rows.note(method, config or names[0], op, provider)
            shared = len({rows.note(method, n, op, provider) for n in names}) == 1
            if text and shared == (config is None):
                ops_by_note.setdefault(text, []).append(op)
        for text, noted in ops_by_note.items():
            where = "" if noted == ops else ", " + ", ".join(label(method, op) for op in noted)
            lines.append(f"- **{providers[provider]}**{where}: {text}")
    return lines


def method_section(rows: Rows, method: str, configs: list) -> str:
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
        lines += ["", f"### {title}", f"**{dims(method, config)}**", ""]
        lines += table(["Operation", "PyTorch (ms)", "Triton (ms)", "Speedup", "Memory (MB)"], [
            [row_label(method, op), fmt_ms(rows.ms(method, c, op, "pytorch")), fmt_ms(rows.ms(method, c, op, "triton")),
             fmt_x(rows.speedup(method, c, op, "triton")),
             " / ".join(fmt_amount(rows.get(method, c, op, p, "peak_mb")) for p in ("pytorch", "triton"))]
            for op in spec["ops"]])
        lines += ["", "Memory: PyTorch / Triton, what one call needs beyond its inputs.", "",
                  "Every provider, ms (time / roofline):", ""]
        lines += table(["Operation", "Roofline (ms)", *PROVIDERS.values()], [
            [row_label(method, op), fmt_ms(rows.roofline(method, c, op)), *(time_cell(op, p) for p in PROVIDERS)]
            for op in spec["ops"]])
        lines += ["", "Bandwidth, GB/s (bytes moved / time):", ""]
        lines += table(["Operation", *PROVIDERS.values()], [
            [row_label(method, op), *(fmt_amount(rows.gbps(method, c, op, p)) for p in PROVIDERS)]
            for op in spec["ops"]])
        own_notes = _notes(rows, method, configs, c)
        if own_notes:
            lines += ["", *own_notes]
    return "\n".join(lines)


def variants_section(rows: Rows, configs: dict) -> str | None:
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
             f"({dims('rope', base)}), FP16 unless named, one change at a time. Every call is checked "
             "against the plain PyTorch rotation before it is timed. ms (time / roofline):", ""]
    lines += table(["Variant", "Roofline (ms)", *(PROVIDERS[p] for p in providers), "Triton over PyTorch"], [
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
    lines += ["", "PyTorch is the original benchmark report's rotation generalised to these variants (partial "
                  "columns, interleaved pairs, either layout); torch.compile compiles it; Liger takes (batch, "
                  "heads, seq, head_dim) views and rotates in place."]
    return "\n".join(lines)


def insights(rows: Rows, configs: dict) -> str:
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
                    too_big.setdefault(note, []).append(label(method, op))
            lines += [f"- At {c.name}, {', '.join(ops)}: {note}" for note, ops in too_big.items()]
    lines += ["", "### Comparison", "", *_comparison(rows, configs)]
    return "\n".join(lines)


def _jax_against_torch(rows: Rows, method: str, configs: list) -> list[str]:
    """Rows.jax_over_torch per op and configuration; empty without burst times (a CPU run)."""
    lines = []
    for op in METHODS[method]["ops"]:
        ratios = [f"{c.name} {fmt_x(ratio)}" for c in configs
                  if (ratio := rows.jax_over_torch(method, c.name, op))]
        if ratios:
            lines.append(f"  - {label(method, op)}: " + ", ".join(ratios))
    if not lines:
        return []
    return ["- **JAX Triton against Triton** (JAX Triton's time / Triton's through torch, both "
            "timed by bursts as the JAX rows are):", *lines]


def _op_insight(rows: Rows, method: str, configs: list, op: str) -> str:
    """The fastest provider of `op` at the largest configuration measured, against the
    roofline, with PyTorch and Triton beside it."""
    op_label = label(method, op)
    config = next((c.name for c in reversed(configs) if fastest(rows, method, c.name, op)), None)
    if config is None:
        return f"- **{op_label}**: not measured ({why_not(rows, method, configs, op, 'pytorch')})"
    ms, best = fastest(rows, method, config, op)
    parts = [f"fastest at {config}: {PROVIDERS[best]}, {fmt_ms(ms)} ms = "
             f"{fmt_x(rows.over_roofline(method, config, op, best))} the roofline "
             f"({fmt_amount(rows.gbps(method, config, op, best))} GB/s)"]
    parts += [f"{PROVIDERS[p]} {fmt_ms(rows.ms(method, config, op, p))} ms "
              f"({fmt_x(rows.over_roofline(method, config, op, p))})"
              for p in ("pytorch", "triton") if p != best and rows.ms(method, config, op, p)]
    return f"- **{op_label}**: " + "; ".join(parts)


def _comparison(rows: Rows, configs: dict) -> list[str]:
    def measured(method):
        if method not in configs:
            return ["not run", "not run"]
        op = "apply" if method == "rope" else "add_to_scores"
        top = next((c.name for c in reversed(configs[method]) if fastest(rows, method, c.name, op)), None)
        best = fastest(rows, method, top, op) if top else None
        speed = f"{label(method, op)} at {top}: {PROVIDERS[best[1]]}, {fmt_ms(best[0])} ms" if best else \
            f"{label(method, op)} not measured"
        ups = [(c.name, s) for c in configs[method] if (s := rows.speedup(method, c.name, "total", "triton"))]
        return [speed, f"{fmt_x(ups[-1][1])} at {ups[-1][0]}" if ups else "not measured"]

    rope, alibi = measured("rope"), measured("alibi")
    return table(["Feature", "RoPE", "ALiBi"], [
        ["**Computation**", "Rotation of q and k by position", "Bias -m·\\|i-j\\| added to scores"],
        ["**Parameters**", "None", "None (fixed slopes)"],
        ["**Fastest (largest configuration)**", rope[0], alibi[0]],
        ["**Triton speedup (Total)**", rope[1], alibi[1]],
        ["**Used in**", "LLaMA, Qwen", "BLOOM, MPT"],
    ])


def guidelines(rows: Rows, configs: dict) -> str:
    table_rows = []
    for method, cs in configs.items():
        for c in cs:
            speedup = rows.speedup(method, c.name, "total", "triton")
            verdict = (f"{fmt_x(speedup)}: {'Triton' if speedup > 1 else 'PyTorch fallback'}" if speedup
                       else f"not measured ({rows.note(method, c.name, 'total', 'triton')})")
            table_rows.append([f"**{_USE_CASES.get(c.name, c.name)}**", METHODS[method]["name"],
                               dims(method, c), verdict])
    return "\n".join(["## Configuration Guidelines", "",
                      *table(["Use Case", "Method", "Config", "Measured Speedup (Total)"], table_rows)])


def scaling(rows: Rows, configs: dict, plot_note: str | None) -> str:
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
                  *table([first_column, f"Measured Speedup ({label(method, op)})", "Reason"], table_rows)]
    lines += ["", "### Plots", ""]
    if plot_note:
        lines.append(f"No plots: {plot_note}.")
    else:
        lines += ["Time per configuration against the roofline (black bars), log scale:", "",
                  f"![time against roofline]({PLOTS[0]})", "",
                  "Speedup over the original PyTorch path, log scale:", "", f"![speedups]({PLOTS[1]})"]
    return "\n".join(lines)


def memory(rows: Rows, configs: dict, on_gpu: bool) -> str:
    lines = ["## Memory Efficiency (Measured)"]
    for method, cs in configs.items():
        lines += ["", f"### {METHODS[method]['name']}"]
        for op in METHODS[method]["ops"]:
            for c in reversed(cs):
                peaks = [f"{PROVIDERS[p]} {fmt_amount(mb)}" for p in PROVIDERS
                         if (mb := rows.get(method, c.name, op, p, "peak_mb")) is not None]
                if peaks:
                    lines.append(f"- **{label(method, op)}** at {c.name}, MB beyond the inputs: " + ", ".join(peaks))
                    break
        lines.append("- No learned parameters; `rope.rotate` needs no cos/sin table at all." if method == "rope"
                     else "- `add_to_scores` and `softmax` never create the bias: all they need is their "
                          "output (nothing, in place).")
    if not on_gpu:
        lines += ["", "Memory of the torch providers is not measured on a CPU."]
    return "\n".join(lines)
