"""The command line of benchmarks/benchmark_embeddings.py."""

import argparse
import shlex
import sys
from pathlib import Path

from .harness import MIN_ITERS, ROW_BUDGET_S
from .report import console_table, write_outputs
from .run import run_benchmark
from .schema import CONFIGS, DTYPE_BYTES, FRAMEWORK_PROVIDERS, METHODS, Config, every_provider

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
        "original four per method (unset ones: heads %d, head_dim %d, seq_len %d, batch %d)" % CUSTOM_DEFAULTS)
    shape.add_argument("--num_heads", type=_positive_int)
    shape.add_argument("--head_dim", type=_positive_int, help="RoPE and attention; even")
    shape.add_argument("--seq_len", type=_positive_int)
    shape.add_argument("--batch", type=_positive_int)
    parser.add_argument("--dtype", choices=list(DTYPE_BYTES), default="float16")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="alibi_attention: attention with ALiBi, a section of its own")
    parser.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORK_PROVIDERS),
                        default=list(FRAMEWORK_PROVIDERS))
    parser.add_argument("--providers", nargs="+", choices=every_provider(), default=every_provider(),
                        help="run only these providers (the others still get rows, with a note)")
    parser.add_argument("--warmup", type=_positive_int,
                        help=f"untimed calls per row (default 10; {QUICK_WARMUP} with --quick)")
    parser.add_argument("--iters", type=_positive_int,
                        help=f"timed calls per row (default 100; {QUICK_ITERS} with --quick); rows "
                             f"over {ROW_BUDGET_S:g} s in all take fewer, at least {MIN_ITERS}")
    parser.add_argument("--quick", action="store_true",
                        help="the small configurations only, few iterations (minutes on a CPU)")
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
    """The configurations to run, per method."""
    custom = (args.num_heads, args.head_dim, args.seq_len, args.batch)
    if any(value is not None for value in custom):
        heads, head_dim, seq_len, batch = (given or default for given, default in zip(custom, CUSTOM_DEFAULTS))
        return {method: [Config("custom", heads, seq_len, batch, None if method == "alibi" else head_dim)]
                for method in args.methods}
    return {method: CONFIGS[method][:1] if args.quick else CONFIGS[method] for method in args.methods}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configs = selected_configs(args)
    results = run_benchmark(args, configs)
    # The command that reproduces the numbers: where they are written is no part of it.
    shown = [a for i, a in enumerate(argv)
             if not a.startswith("--output") and (i == 0 or argv[i - 1] != "--output")]
    run_info = {"warmup": args.warmup, "iters": args.iters,
                "command": shlex.join(["python", "benchmarks/benchmark_embeddings.py", *shown])}
    print(console_table(results))
    for path in write_outputs(results, configs, run_info, args.output):
        print(f"wrote {path}")
    return 0
