"""Probe of the compiled Llama-style blocks (benchmarks/trinix_bench/blocks.py): the plain block
beside trinix's under torch.compile and jax.jit, with "auto" and with the kernel, timed as the
report times them (blocks.timed_in_turns) in several rounds, and what each compiled program
launches.

    python benchmarks/probe_blocks.py [--configs s8192b1 s2048b8] [--rounds 8] [--turns 10] [--out DIR]

Prints, per config and op, each provider's median over rounds of its per-round median ms, and
the spread of its ratio to the plain block across rounds. With --out, writes the kernels each
torch op (forward, forward + backward) launches (torch.profiler) and the ENTRY computation of
each JAX op's optimized HLO, to compare what the compilers made of each rotation.
"""

import argparse
import pathlib
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from trinix_bench.blocks import block_harness, make_block, timed_in_turns  # noqa: E402
from trinix_bench.harness import runnable  # noqa: E402
from trinix_bench.schema import BLOCK_CONFIGS  # noqa: E402

PLAIN = {"torch": "compile", "jax": "jax"}
TRINIX = {"torch": "compile_trinix", "jax": "jax_trinix"}


def torch_kernels(call) -> str:
    """The CUDA kernels one call launches, by name, with their count and total GPU time."""
    from torch.profiler import ProfilerActivity, profile

    call.fn(*call.args)  # compiled before it is profiled
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call.fn(*call.args)
        torch.cuda.synchronize()
    rows = [f"  {e.count:3d} x {e.device_time_total / e.count:9.1f} us  {e.key[:110]}"
            for e in prof.key_averages() if e.device_time_total > 0]
    return "\n".join(rows)


def jax_entry(call) -> str:
    """The ENTRY computation of the call's optimized HLO: one line per instruction."""
    text = call.fn.lower(*call.args).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    return entry[:entry.index("\n}") + 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["s8192b1", "s2048b8"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10, help="turns of each round")
    parser.add_argument("--frameworks", nargs="+", default=["torch", "jax"])
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    harness = block_harness(device, warmup=3, iters=args.turns)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, {args.rounds} rounds of "
          f"{harness.iters} turns")
    print("| framework | config | op | provider | median ms | ratio to plain: median (min..max) |")
    print("|---|---|---|---|---|---|")
    for config in (c for c in BLOCK_CONFIGS["llama_block"] if c.name in args.configs):
        for framework in args.frameworks:
            blocks = {backend: make_block("llama_block", config, framework, "bfloat16", backend, device)
                      for backend in ("auto", "triton")}
            variants = {PLAIN[framework]: blocks["auto"], TRINIX[framework] + " auto": blocks["auto"],
                        TRINIX[framework] + " triton": blocks["triton"]}
            for op in ("fwd", "fwd_bwd"):
                calls = {name: block.call(name.split()[0], op) for name, block in variants.items()}
                if args.out:
                    describe = torch_kernels if framework == "torch" else jax_entry
                    for name, call in calls.items():
                        path = args.out / f"{framework}-{config.name}-{op}-{name.replace(' ', '-')}.txt"
                        path.write_text(describe(call) + "\n")
                runs = {name: runnable(framework, call) for name, call in calls.items()}
                times = {name: [] for name in runs}
                for _ in range(args.rounds):
                    samples, failures = timed_in_turns(harness, framework, runs)
                    if failures:
                        raise RuntimeError(f"{framework} {config.name} {op}: {failures}")
                    for name, ms in samples.items():
                        times[name].append(statistics.median(ms))
                plain = times[PLAIN[framework]]
                for name, ms in times.items():
                    ratios = [t / p for t, p in zip(ms, plain)]
                    print(f"| {framework} | {config.name} | {op} | {name} | {statistics.median(ms):.3f} | "
                          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f}) |", flush=True)
                del calls, runs
            del blocks, variants
            torch.compiler.reset()


if __name__ == "__main__":
    main()
