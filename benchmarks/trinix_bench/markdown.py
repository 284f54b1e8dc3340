"""EMBEDDINGS.md: the original benchmark report's structure, filled with the measured rows
(sections has the measured sections; this module the page, its environment, recommendations
and the fixed text)."""

from . import sections
from .analysis import Rows, fmt_ms, fmt_x
from .attention_section import attention_section
from .plots import PLOTS
from .schema import ATTENTION, BLOCKS, METHODS, on_gpu, operation_configs


def render_markdown(results: dict, configs: dict, run_info: dict, plot_note: str | None,
                    json_link: str) -> str:
    """The original benchmark report's structure filled with the measured rows. run_info:
    warmup, iters and the command that ran; plot_note: why there are no plots, or None;
    json_link: latest.json's path relative to the report."""
    rows = Rows(results)
    gpu = on_gpu(rows.meta)
    # Header, what a model gains (the blocks, from their rows alone), environment, the operations'
    # sections, attention with ALiBi, then the rest.
    operations = operation_configs(configs)
    blocks = sections.blocks_section(rows)
    parts = [_header(gpu, json_link, rows), *([blocks] if blocks else []), _environment(rows, run_info, gpu)]
    if operations:
        variants = sections.variants_section(rows, operations)
        parts += [sections.summary(rows, operations),
                  *(sections.method_section(rows, method, cs) for method, cs in operations.items()),
                  *([variants] if variants else []), sections.insights(rows, operations),
                  _recommendations(rows, operations), sections.guidelines(rows, operations),
                  sections.scaling(rows, operations, plot_note), sections.memory(rows, operations, gpu)]
    attention = attention_section(rows, configs.get(ATTENTION, []))
    parts += [*([attention] if attention else []), *([_details()] if operations or attention else []),
              _reproduce(run_info, rows), _footer(rows, json_link, plots=bool(operations) and plot_note is None)]
    return "\n\n---\n\n".join(parts) + "\n"


def _runs(rows: Rows) -> list[str]:
    """Lines "- **sections**: date, GPU, copy bandwidth" of each run a report merged from several
    (latest.json's meta.runs, --render-from); none for one run."""
    names = {**{m: spec["title"] for m, spec in METHODS.items()}, **{m: spec["title"] for m, spec in BLOCKS.items()}}
    return [f"- **{', '.join(names[m] for m in run['methods'])}**: {run['date']}, {run['gpu']}, copy bandwidth "
            f"{run['copy_gbps']:,.0f} GB/s" + (f" (`{run['command']}`)" if run.get("command") else "")
            for run in rows.meta.get("runs", [])]


def _header(gpu: bool, json_link: str, rows: Rows) -> str:
    lines = ["# Position Embeddings Benchmark", "",
             "Performance comparison of position encoding methods: trinix's Triton kernels against the "
             "PyTorch path of the original benchmark report, torch.compile, Liger-Kernel and JAX, in one process "
             f"and one harness. Every number below is a row of [{json_link}]({json_link})."]
    if not gpu:
        lines += ["", "> **This run had no CUDA GPU.** The Triton columns (trinix through PyTorch and "
                      "through JAX) and Liger need one: they are empty, and no Triton speedup is measured "
                      "here. The numbers compare the PyTorch, torch.compile and JAX paths on this CPU and "
                      "say nothing about GPU performance."]
    if runs := _runs(rows):
        lines += ["", "> **The sections come from separate runs**, their rows merged into one latest.json "
                      "(each row's times and rooflines are its own run's; the environment below is the first "
                      "run's):", ">", *(f"> {line}" for line in runs)]
    return "\n".join(lines)


def _environment(rows: Rows, run_info: dict, gpu: bool) -> str:
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
              "for *JAX Triton against Triton*" if gpu else
              "is timed by the wall clock, waited for (no cache flush)")
    torch_memory = ("the CUDA allocator's peak above what was allocated before the call" if gpu
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
        f"- **Copy bandwidth**: {meta['copy_gbps']:,.0f} GB/s (a large {'device' if gpu else 'host'} "
        "copy, bytes read + written, measured in this run)",
        *(["- **Runs**: the sections come from separate runs, each with its own date, device and copy "
           "bandwidth (its rooflines and GB/s are at its own):", *(f"  {line}" for line in _runs(rows))]
          if "runs" in meta else []),
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
        "rotation* by given tables; *Total*: rotated q and k from nothing (generate + apply, as in the "
        "original benchmark report; "
        "for trinix `rope.rotate`, which computes cos/sin in the kernel); *Forward + backward*: apply "
        "and its gradient, through autograd or `jax.vjp`. ALiBi: *Generate slopes*; *Compute biases* "
        "(batch, heads, seq, seq); *Total*: slopes + biases; *Add to scores*: scores + bias, in place "
        "where the framework allows; *Softmax with bias*: softmax(scores + bias) over keys.",
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
        "cos, sin = rope(q, seq_len)                               # or in two steps",
        "q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)", "```", "",
        "### For Length Extrapolation", "",
        f"Measured: ALiBi added to the scores in place (*Add to scores*), "
        f"{measured('alibi', 'large', 'add_to_scores')}; softmax with the bias, "
        f"{measured('alibi', 'large', 'softmax')}. Neither creates a bias tensor{_too_big(rows, configs)}.", "",
        "```python", "from trinix import FastALiBiPositionEmbedding", "",
        "alibi = FastALiBiPositionEmbedding(num_heads=64, max_seq_len=32768, use_triton=True, device=\"cuda\")",
        "scores = alibi.add_to_scores(scores, inplace=True)      # scores (batch, 64, seq_q, seq_k)",
        "probs = alibi.softmax(scores, scale=head_dim ** -0.5)   # or bias and softmax in one kernel",
        "bias = alibi(seq_len, batch_size)                       # the bias itself, where it fits", "```", "",
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


def _reproduce(run_info: dict, rows: Rows) -> str:
    return "\n".join([
        "## Reproduce These Results", "",
        "```bash", "# Install dependencies (from a checkout of trinix)", "pip install -e \".[dev]\"", "",
        "# Run benchmark: on a CUDA GPU, EMBEDDINGS.md and plots into benchmarks/, the rows into",
        "# benchmarks/results/latest.json; without one, all into benchmarks/results/cpu/ (--output: elsewhere)",
        "python benchmarks/benchmark_embeddings.py", "",
        "# Quick run: the small configurations, a minute or two on a CPU",
        "python benchmarks/benchmark_embeddings.py --quick", "",
        "# Custom configuration",
        "python benchmarks/benchmark_embeddings.py --num_heads 64 --head_dim 128 --seq_len 8192", "",
        "# The blocks alone (a CUDA GPU): What a model gains",
        "python benchmarks/benchmark_embeddings.py --methods llama_block bloom_block", "",
        "# Attention with ALiBi alone",
        "python benchmarks/benchmark_embeddings.py --methods alibi_attention", "",
        "# Everything but the blocks, then one report from both runs' rows (on any machine)",
        "python benchmarks/benchmark_embeddings.py --methods rope alibi alibi_attention --output /tmp/rest",
        "python benchmarks/benchmark_embeddings.py --methods llama_block bloom_block --output /tmp/blocks",
        "python benchmarks/benchmark_embeddings.py --render-from /tmp/blocks/results/latest.json "
        "/tmp/rest/results/latest.json", "```", "",
        f"This report: `{run_info['command']}`"
        + (", from the rows of the runs its header lists" if "runs" in rows.meta else ""),
    ])


def _footer(rows: Rows, json_link: str, plots: bool) -> str:
    """plots: whether the run drew them (it did if it measured an operation)."""
    return "\n".join([
        "## Related Benchmarks", "",
        f"- [Every row of this report, machine-readable]({json_link})",
        *([f"- Plots: [time against roofline]({PLOTS[0]}), [speedups]({PLOTS[1]})"] if plots else []), "", "---", "",
        f"*Last updated: {rows.meta['date']}*",
        f"*Benchmarked on {rows.meta['gpu']}*",
        "*Generated by benchmarks/benchmark_embeddings.py*",
    ])
