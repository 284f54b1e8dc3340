"""EMBEDDINGS.md's section of attention with ALiBi, from its rows (attention.py measures them)."""

from .analysis import Rows, fmt_amount, fmt_ms, fmt_x, label, table
from .attention import BACKWARD_FACTOR, CHECK_CONFIG, REFERENCE, ROW_CAP_S, is_decode, ops_at, seq_q
from .harness import CAPPED_MIN_ITERS
from .schema import ATTENTION, ATTENTION_PROVIDERS, METHODS, Config
from .sections import _notes


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
    for config in measured:
        lines += ["", *_config_tables(rows, config)]
        own = _notes(rows, ATTENTION, [config]) if is_decode(config) else _notes(rows, ATTENTION, full, config.name)
        if own:
            lines += ["", *own]
    return "\n".join(lines)


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
                    "JAX against torch", "JAX cuDNN + bias's time / trinix (JAX)'s"],
                   [[label(ATTENTION, op), ratio(ms(op, "flex"), ms(op, "triton")),
                     ratio(ms(op, "triton"), ms(op, "sdpa_no_bias")), fmt_x(rows.jax_over_torch(ATTENTION, c, op)),
                     ratio(ms(op, "jax_cudnn_bias"), ms(op, "jax_triton"))] for op in ops])
    lines += ["", "Memory (MB beyond the inputs):", ""]
    lines += table(["Operation", *ATTENTION_PROVIDERS.values()],
                   [[label(ATTENTION, op), *(fmt_amount(rows.get(ATTENTION, c, op, p, "peak_mb")) for p in providers)]
                    for op in ops])
    return lines
