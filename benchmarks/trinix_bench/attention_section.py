"""EMBEDDINGS.md's section of attention with ALiBi, from its rows (attention.py measures them)."""

from typing import NamedTuple

from .analysis import Rows, fmt_amount, fmt_ms, fmt_x, label, table
from .attention import BACKWARD_FACTOR, CHECK_CONFIG, REFERENCE, ROW_CAP_S, is_decode, ops_at, seq_q
from .harness import CAPPED_MIN_ITERS
from .schema import ATTENTION, ATTENTION_PROVIDERS, DTYPE_BYTES, METHODS, Config
from .sections import _notes


class Target(NamedTuple):
    """One of trinix's speed or memory targets for attention with ALiBi, at one configuration and
    op. kind: "sdpa" (trinix (torch)'s time / SDPA, no bias, at most `limit`), "flex" (Flex's
    time / trinix (torch)'s, at least), "cudnn" (JAX cuDNN + bias's time / trinix (JAX)'s, at
    least), "jax" (trinix (JAX)'s time / trinix (torch)'s, at most), "roofline" (a
    decoding row's time / its roofline, at most, torch and JAX) or "memory" (peak memory of the
    inputs and the call / the bytes of q, k, v, o, do, dq, dk, dv and the log-sum-exp, at most)."""

    kind: str
    config: str
    op: str
    limit: float


TARGETS = [
    *(Target("sdpa", "large", op, 1.10) for op in ("fwd", "fwd_causal")),
    *(Target("sdpa", "large", op, 1.25) for op in ("fwd_bwd", "fwd_bwd_causal")),
    Target("sdpa", "xl", "fwd_causal", 1.10), Target("sdpa", "xl", "fwd_bwd_causal", 1.25),
    *(Target("flex", "medium", op, 1.3) for op in ("fwd", "fwd_bwd", "fwd_causal", "fwd_bwd_causal")),
    *(Target("jax", config, op, 1.05) for config in ("large", "xl")
      for op in ("fwd", "fwd_bwd", "fwd_causal", "fwd_bwd_causal")),
    *(Target("cudnn", "large", op, 2.5) for op in ("fwd", "fwd_causal")),
    Target("roofline", "decode", "fwd_causal", 1.25),
    Target("memory", "xl", "fwd_bwd_causal", 1.2),
]


def attention_section(rows: Rows, configs: list[Config]) -> str | None:
    """Per configuration (the decoding one last): each provider's time with its TFLOP/s (a
    decoding row: its time / roofline), trinix's ratios to its peers, and memory; None without
    any row of attention."""
    measured = [c for c in sorted(configs, key=is_decode)
                if any((ATTENTION, c.name, op, p) in rows.by_key for op in ops_at(c) for p in ATTENTION_PROVIDERS)]
    if not measured:
        return None
    spec = METHODS[ATTENTION]
    full = [c for c in measured if not is_decode(c)]
    lines = [f"## {spec['title']}", f"**Used in: {spec['used_in']}**", "", *_method(rows)]
    shared = _notes(rows, ATTENTION, full) if full else []
    if shared:
        lines += ["", f"Notes for {', '.join(c.name for c in full)}:", *shared]
    targets = targets_section(rows, measured)
    if targets:
        lines += ["", *targets]
    for config in measured:
        lines += ["", *_config_tables(rows, config)]
        own = _notes(rows, ATTENTION, [config]) if is_decode(config) else _notes(rows, ATTENTION, full, config.name)
        if own:
            lines += ["", *own]
    return "\n".join(lines)


def targets_section(rows: Rows, configs: list[Config]) -> list[str]:
    """Each of TARGETS measured in this run, met or not; for a missed speed target, the time it
    needs and what trinix's own kernels take without ALiBi, both as ratios to SDPA, no bias."""
    by_name = {c.name: c for c in configs}
    body = []
    for target in (t for t in TARGETS if t.config in by_name):
        config = by_name[target.config]
        measured, needed = _measured(rows, target, config)
        if measured is None:
            body.append([_target_text(target, config), "—", "not measured", "", ""])
            continue
        met = measured >= target.limit if target.kind in ("flex", "cudnn") else measured <= target.limit
        needs = no_alibi = ""
        sdpa = rows.ms(ATTENTION, config.name, target.op, "sdpa_no_bias")
        if not met and needed and sdpa:
            needs = f"{fmt_ms(needed)} ms ({fmt_x(needed / sdpa)} SDPA, no bias)"
            no_alibi_ms = rows.ms(ATTENTION, config.name, target.op, "triton_no_alibi")
            no_alibi = f"{fmt_x(no_alibi_ms / sdpa)} SDPA, no bias" if no_alibi_ms else "—"
        body.append([_target_text(target, config), fmt_x(measured), "met" if met else "**missed**", needs, no_alibi])
    if not body:
        return []
    return ["### Targets", "",
            "trinix's targets for attention with ALiBi, measured in this run. Where a speed target is missed: the "
            "time that would meet it, and the time of trinix's own kernels with no ALiBi term at all (causal: the "
            "mask alone), both against SDPA, no bias. Where trinix without ALiBi is already slower than the target "
            "needs, the miss is not the ALiBi term's cost but the attention kernel's own speed against cuDNN's; "
            "what bounds that kernel (its profile) is in benchmarks/NOTES.md.", "",
            *table(["Target", "Measured", "Met", "Needs", "trinix, no ALiBi"], body)]


def _target_text(target: Target, config: Config) -> str:
    where = f"{config.name} {label(ATTENTION, target.op).lower()}"
    limit = fmt_x(target.limit)
    return {"sdpa": f"{where}: trinix (torch)'s time ≤ {limit} SDPA, no bias",
            "flex": f"{where}: FlexAttention's time ≥ {limit} trinix (torch)'s",
            "cudnn": f"{where}: JAX cuDNN + bias's time ≥ {limit} trinix (JAX)'s",
            "jax": f"{where}: trinix (JAX)'s time ≤ {limit} trinix (torch)'s (JAX against torch)",
            "roofline": f"{where}: trinix's time ≤ {limit} the roofline (the slower of torch and JAX)",
            "memory": f"{where}: peak memory ≤ {limit} the bytes of q, k, v, o, do, dq, dk, dv and the log-sum-exp",
            }[target.kind]


def _measured(rows: Rows, target: Target, config: Config) -> tuple[float | None, float | None]:
    """(the target's ratio in this run, the trinix time in ms that would just meet it)."""
    def ms(provider):
        return rows.ms(ATTENTION, config.name, target.op, provider)

    def ratio(numerator, denominator):
        return numerator / denominator if numerator and denominator else None

    if target.kind == "sdpa":
        return ratio(ms("triton"), ms("sdpa_no_bias")), target.limit * (ms("sdpa_no_bias") or 0)
    if target.kind == "flex":
        return ratio(ms("flex"), ms("triton")), (ms("flex") or 0) / target.limit
    if target.kind == "cudnn":
        return ratio(ms("jax_cudnn_bias"), ms("jax_triton")), (ms("jax_cudnn_bias") or 0) / target.limit
    if target.kind == "jax":
        return rows.jax_over_torch(ATTENTION, config.name, target.op), None
    if target.kind == "roofline":
        roofline = rows.roofline(ATTENTION, config.name, target.op)
        times = [ms("triton"), ms("jax_triton")]
        return (ratio(max(times), roofline) if all(times) else None), None
    peak_mb = rows.get(ATTENTION, config.name, target.op, "triton", "peak_mb")
    element = DTYPE_BYTES[rows.meta["dtype"]]
    tensor = config.batch * config.heads * config.seq_len * config.head_dim * element  # q, k, v, o, do or a gradient
    inputs = 4 * tensor  # q, k, v and do: memory is reported beyond them
    needed = 8 * tensor + config.batch * config.heads * config.seq_len * 4  # ... and the float32 log-sum-exp
    return (ratio(inputs + peak_mb * 1e6, needed) if peak_mb is not None else None), None


def _method(rows: Rows) -> list[str]:
    dtype = rows.meta["dtype"]
    return [
        f"Attention with ALiBi inside the kernel, {dtype}: q (batch, queries, heads, head_dim), k and v (batch, "
        "keys, heads, head_dim), head i (1 .. heads) with the slope m = 2^(-8i/heads). *Forward* and *Forward + "
        "backward* add the symmetric bias -m·\\|i - j\\|; the causal ops add -m·(i - j) and mask the keys after "
        "each query. Query i sits at key position keys - queries + i (bottom-right), so a decoding query sees "
        "every cached key.", "",
        "- **trinix (torch)**, **trinix (JAX)**: `trinix.torch.attention` and `trinix.jax.attention` (under "
        "`jax.jit`) with the slopes, backend \"triton\": no bias tensor. Before any row is timed, each is "
        f"checked at {CHECK_CONFIG.name} (the output and the gradients of q, k, v, every op) against "
        f"{ATTENTION_PROVIDERS[REFERENCE['torch'].name]} and {ATTENTION_PROVIDERS[REFERENCE['jax'].name]} "
        "respectively, in float32 on the same values; the run stops if they disagree.",
        "- **FlexAttention**: `flex_attention` compiled (static shapes), ALiBi as its `score_mod` reading the "
        "head's slope, a causal block mask.",
        "- **SDPA, no bias**: `F.scaled_dot_product_attention` without ALiBi, `is_causal` when causal: the same "
        "attention without ALiBi, the practical ceiling.",
        "- **trinix, no ALiBi**: `trinix.torch.attention` without slopes (causal: the mask alone): trinix's "
        "kernels with no ALiBi term, so that the row of trinix (torch) over it is what ALiBi costs them.",
        "- **SDPA + bias**, **JAX cuDNN + bias**, **JAX XLA + bias**: `F.scaled_dot_product_attention` and "
        "`jax.nn.dot_product_attention` with a materialized (1, heads, queries, keys) bias in the input dtype, "
        "where it fits.", "",
        f"- Time: the median of each row's timed calls; a row's warm-up after its first (compiling) call, and its "
        f"timed calls, stop at about {ROW_CAP_S:g} s, with at least {CAPPED_MIN_ITERS} timed calls (the xl rows "
        "are medians of few calls).",
        f"- TFLOP/s: 4·batch·heads·head_dim FLOPs per visible (query, key) pair: queries·keys pairs, causal "
        f"queries·keys - queries·(queries - 1)/2 (about half for queries = keys; every key for a decoding "
        f"query); forward + backward counts {BACKWARD_FACTOR:g}× the forward (five matmuls against two).",
        "- Decoding is memory-bound: its roofline is the bytes of k and v at this run's copy bandwidth.",
        "- Memory (MB): what one call needs beyond its inputs (q, k, v, the cotangent do and a materialized "
        "bias): for torch the allocator's peak over the call, for JAX the compiled program's outputs and "
        "temporaries.",
        "- JAX against torch: trinix (JAX)'s time / trinix (torch)'s, the torch binding timed by bursts as the "
        "JAX rows are.",
    ]


def _config_tables(rows: Rows, config: Config) -> list[str]:
    c = config.name
    decode = is_decode(config)
    ops = ops_at(config)
    providers = list(ATTENTION_PROVIDERS)

    def ms(op, provider):
        return rows.ms(ATTENTION, c, op, provider)

    def time_cell(op, provider):
        if ms(op, provider) is None:
            return "—"
        if decode:
            roofline = rows.roofline(ATTENTION, c, op)
            return f"{fmt_ms(ms(op, provider))} ({fmt_x(ms(op, provider) / roofline if roofline else None)})"
        return f"{fmt_ms(ms(op, provider))} ({fmt_amount(rows.get(ATTENTION, c, op, provider, 'tflops'))})"

    def ratio(numerator, denominator):
        return fmt_x(numerator / denominator if numerator and denominator else None)

    shape = (f"(batch, heads, queries, keys, head_dim) = ({config.batch}, {config.heads}, {seq_q(config)}, "
             f"{config.seq_len}, {config.head_dim})")
    lines = [f"### {'XL' if c == 'xl' else c.capitalize()}: {shape}", ""]
    if decode:
        lines += ["ms (time / roofline):", ""]
        lines += table(["Operation", "Roofline (ms)", *ATTENTION_PROVIDERS.values()],
                       [[label(ATTENTION, op), fmt_ms(rows.roofline(ATTENTION, c, op)),
                         *(time_cell(op, p) for p in providers)] for op in ops])
    else:
        lines += ["ms (TFLOP/s):", ""]
        lines += table(["Operation", *ATTENTION_PROVIDERS.values()],
                       [[label(ATTENTION, op), *(time_cell(op, p) for p in providers)] for op in ops])
    lines += ["", "trinix against its peers:", ""]
    lines += table(["Operation", "FlexAttention's time / trinix (torch)'s", "trinix (torch)'s time / SDPA, no bias",
                    "trinix (torch)'s time / trinix, no ALiBi", "JAX against torch",
                    "JAX cuDNN + bias's time / trinix (JAX)'s"],
                   [[label(ATTENTION, op), ratio(ms(op, "flex"), ms(op, "triton")),
                     ratio(ms(op, "triton"), ms(op, "sdpa_no_bias")),
                     ratio(ms(op, "triton"), ms(op, "triton_no_alibi")), fmt_x(rows.jax_over_torch(ATTENTION, c, op)),
                     ratio(ms(op, "jax_cudnn_bias"), ms(op, "jax_triton"))]
                    for op in ops])
    lines += ["", "Memory (MB beyond the inputs):", ""]
    lines += table(["Operation", *ATTENTION_PROVIDERS.values()],
                   [[label(ATTENTION, op), *(fmt_amount(rows.get(ATTENTION, c, op, p, "peak_mb")) for p in providers)]
                    for op in ops])
    return lines
