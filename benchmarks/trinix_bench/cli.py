"""The command line of benchmarks/benchmark_embeddings.py."""

import argparse
import shlex
import sys
from pathlib import Path

from .harness import MIN_ITERS, ROW_BUDGET_S
from .report import console_table, render_from, write_outputs
from .run import run_benchmark
from .schema import (BLOCK_CONFIGS, CONFIGS, DTYPE_BYTES, FRAMEWORK_PROVIDERS, METHODS, Config, every_method,
                     every_provider)

QUICK_WARMUP, QUICK_ITERS = 3, 10
CUSTOM_DEFAULTS = (32, 128, 2048, 1)  # heads, head_dim, seq_len, batch of a custom configuration


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark trinix RoPE and ALiBi against the original PyTorch path and peers.")
    shape = parser.add_argument_group(
        "custom configuration", "any of these runs one configuration named 'custom' instead of the "
        "original four per method, and no blocks (unset ones: heads %d, head_dim %d, seq_len %d, batch %d)"
        % CUSTOM_DEFAULTS)
    shape.add_argument("--num_heads", type=_positive_int)
    shape.add_argument("--head_dim", type=_positive_int, help="RoPE and attention; even")
    shape.add_argument("--seq_len", type=_positive_int)
    shape.add_argument("--batch", type=_positive_int)
    parser.add_argument("--dtype", choices=list(DTYPE_BYTES), default="float16")
    parser.add_argument("--methods", nargs="+", choices=every_method(), default=every_method(),
                        help="the operations (rope, alibi), attention with ALiBi (alibi_attention, a section "
                             "of its own) and whole blocks (llama_block, bloom_block: bfloat16, their own "
                             "configurations, a CUDA GPU only); --methods llama_block bloom_block runs the "
                             "blocks alone, --methods alibi_attention the attention alone")
    parser.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORK_PROVIDERS),
                        default=list(FRAMEWORK_PROVIDERS))
    parser.add_argument("--providers", nargs="+", choices=every_provider(), default=every_provider(),
                        help="run only these providers of the operations and the attention (the others still "
                             "get rows, with a note); blocks run all of theirs")
    parser.add_argument("--warmup", type=_positive_int,
                        help=f"untimed calls per row (default 10; {QUICK_WARMUP} with --quick)")
    parser.add_argument("--iters", type=_positive_int,
                        help=f"timed calls per row (default 100; {QUICK_ITERS} with --quick); rows "
                             f"over {ROW_BUDGET_S:g} s in all take fewer, at least {MIN_ITERS}")
    parser.add_argument("--quick", action="store_true",
                        help="the small configurations only, few iterations (minutes on a CPU)")
    parser.add_argument("--render-from", nargs="+", type=Path, metavar="LATEST_JSON",
                        help="measure nothing: merge the rows of these runs' latest.json files (each method's "
                             "from the first file that has it; the first file's meta, and which run each "
                             "section came from) into one latest.json and render EMBEDDINGS.md and the plots "
                             "from it, where --output says (default as for a run on the first file's device)")
    parser.add_argument("--output", type=Path,
                        help="folder for EMBEDDINGS.md, latest.json and the plots (default: benchmarks/ "
                             "on a CUDA GPU, latest.json in its results/; benchmarks/results/cpu/ without)")
    args = parser.parse_args(argv)
    if args.head_dim is not None and args.head_dim % 2:
        parser.error(f"--head_dim must be even, got {args.head_dim}")
    args.warmup = args.warmup or (QUICK_WARMUP if args.quick else 10)
    args.iters = args.iters or (QUICK_ITERS if args.quick else 100)
    return args


def selected_configs(args: argparse.Namespace) -> dict[str, list[Config]]:
    """The configurations to run, per method (the blocks' too, but not with a custom one)."""
    custom = (args.num_heads, args.head_dim, args.seq_len, args.batch)
    if any(value is not None for value in custom):
        heads, head_dim, seq_len, batch = (given or default for given, default in zip(custom, CUSTOM_DEFAULTS))
        return {method: [Config("custom", heads, seq_len, batch, None if method == "alibi" else head_dim)]
                for method in args.methods if method in METHODS}
    configs = {**CONFIGS, **BLOCK_CONFIGS}
    return {method: configs[method][:1] if args.quick else configs[method] for method in args.methods}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # The command that reproduces the numbers: where they are written is no part of it.
    shown = [a for i, a in enumerate(argv)
             if not a.startswith("--output") and (i == 0 or argv[i - 1] != "--output")]
    if args.render_from:
        command = shlex.join(["python", "benchmarks/benchmark_embeddings.py", *shown])
        for path in render_from(args.render_from, args.output, command):
            print(f"wrote {path}")
        return 0
    configs = selected_configs(args)
    results = run_benchmark(args, configs)
    run_info = {"warmup": args.warmup, "iters": args.iters,
                "command": shlex.join(["python", "benchmarks/benchmark_embeddings.py", *shown])}
    results["meta"]["run"] = run_info  # so that --render-from can tell how its rows were measured
    print(console_table(results))
    for path in write_outputs(results, configs, run_info, args.output):
        print(f"wrote {path}")
    # A provider whose result failed its check is written down, and the run fails with it.
    wrong = [r for r in results["rows"] if (r["note"] or "").startswith("wrong:")]
    for r in wrong:
        print(f"{r['method']} {r['config']} {r['op']} {r['provider']}: {r['note']}", file=sys.stderr)
    return 1 if wrong else 0
