"""Where the fused ALiBi softmax's time goes on a CUDA GPU: its kernel per tile, row blocks a
program and num_warps.

    python benchmarks/probe_alibi.py [--causal]

The softmax kernel (softmax(scores + bias) over keys, fp16 scores, causal and not; with
`--causal` the causal rows alone) at the original medium and large ALiBi configurations, per
tile (rows of a block), blocks of rows a program works through and num_warps, then as the
builder chooses. Each variant is checked first (medium: against the torch fallback; large,
where the float32 fallback does not fit: against the first variant, which the test suite
checks at smaller sizes), then timed by triton.testing.do_bench (L2 flushed before each
call), against the roofline (scores read once, probabilities written once) at the copy
bandwidth as the benchmark measures it. The add kernel runs beside it for scale: it moves
the same bytes with no reduction.
"""

import argparse
import contextlib
import dataclasses
import itertools

import torch
import triton.testing

from trinix_bench.harness import Harness, copy_gbps

import trinix.kernels.alibi as kernels_alibi
from trinix.torch.alibi import alibi_add, alibi_slopes, alibi_softmax
from trinix.torch.launcher import launch, operand

CONFIGS = {"medium": (2, 64, 2048), "large": (1, 128, 8192)}  # batch, heads, seq
WARPS = (4, 8, 16)
# Elements of a block (kernels.alibi._SOFTMAX_TILE_ELEMENTS): at medium 1 row of 2048 keys or
# 4; at large one row of 8192 either way.
TILE_ELEMENTS = (2048, 8192)
# Blocks of rows a program works through, loading each while it reduces the one before
# (kernels.alibi._SOFTMAX_BLOCKS_Q, with the minimum grid lifted).
BLOCKS_Q = (1, 2, 4, 8)


@contextlib.contextmanager
def softmax_rule(**values):
    """kernels.alibi's softmax constants set to `values` for the calls built inside (the
    builder's cache cleared on the way in and out), then restored."""
    saved = {name: getattr(kernels_alibi, name) for name in values}
    for name, value in values.items():
        setattr(kernels_alibi, name, value)
    kernels_alibi.alibi_softmax_call.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(kernels_alibi, name, value)
        kernels_alibi.alibi_softmax_call.cache_clear()


def max_error(out, expected):
    """Largest |out - expected|, a head at a time (float32 copies of large scores do not fit)."""
    return max((out[:, h].float() - expected[:, h].float()).abs().max().item() for h in range(out.shape[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true", help="time the causal softmax alone")
    args = parser.parse_args()
    device = torch.device("cuda")
    gbps = copy_gbps(Harness(device, warmup=3, iters=20), device)
    print(f"copy bandwidth {gbps:.0f} GB/s (the benchmark's measurement)")
    for name, (batch, heads, seq) in CONFIGS.items():
        scores = torch.randn(batch, heads, seq, seq, dtype=torch.float16, device=device)
        slopes = alibi_slopes(heads, device=device)
        roofline_ms = 2 * scores.numel() * scores.element_size() / gbps / 1e6
        work = scores.clone()  # the timed in-place adds drift its values, not the scores'
        add_ms = triton.testing.do_bench(lambda: alibi_add(work, slopes, inplace=True))
        del work
        print(f"\n{name} scores {tuple(scores.shape)} fp16: roofline {roofline_ms:.3f} ms; "
              f"in-place add {add_ms:.3f} ms ({add_ms / roofline_ms:.3f}x)")
        arrays = dict(scores=scores, slopes=slopes)
        for causal in (True,) if args.causal else (False, True):
            # The torch fallback (float32, ~7x the scores' memory) at medium; at large the first
            # variant, which the test suite checks at smaller sizes.
            expected = (alibi_softmax(scores, slopes, causal=causal, backend="torch")
                        if name == "medium" else None)
            timed = set()
            for tile, blocks, warps in itertools.product(TILE_ELEMENTS, BLOCKS_Q, WARPS):
                with softmax_rule(_SOFTMAX_TILE_ELEMENTS=tile, _SOFTMAX_BLOCKS_Q=blocks, _SOFTMAX_MIN_PROGRAMS=1):
                    call = kernels_alibi.alibi_softmax_call(operand(scores), operand(slopes), scale=1.0,
                                                            q_offset=0, causal=causal)
                key = (call.constexprs["BLOCK_Q"], call.constexprs["BLOCKS_Q"], warps)
                if key in timed:  # at large every tile size is one row
                    continue
                timed.add(key)
                variant = dataclasses.replace(call, num_warps=warps)
                (out,) = launch(variant, arrays, interpret=False)
                if expected is None:
                    expected = out
                error = max_error(out, expected)
                del out
                ok = error <= 2e-3
                ms = triton.testing.do_bench(lambda: launch(variant, arrays, interpret=False)) if ok else float("nan")
                print(f"{name:6s} {'causal' if causal else 'full  '} block {call.constexprs['BLOCK_Q']}x"
                      f"{call.constexprs['BLOCK_K']} x {call.constexprs['BLOCKS_Q']:2d} a program, warps "
                      f"{warps:2d} (default {call.num_warps}): {ms:.3f} ms  {ms / roofline_ms:.3f}x roofline  "
                      f"max error {error:.1e} {'ok' if ok else 'WRONG'}", flush=True)
            del expected
            # The builder's own choice, as the benchmark and the library run it.
            call = kernels_alibi.alibi_softmax_call(operand(scores), operand(slopes), scale=1.0,
                                                    q_offset=0, causal=causal)
            ms = triton.testing.do_bench(lambda: alibi_softmax(scores, slopes, causal=causal))
            print(f"{name:6s} {'causal' if causal else 'full  '} default (block {call.constexprs['BLOCK_Q']}x"
                  f"{call.constexprs['BLOCK_K']} x {call.constexprs['BLOCKS_Q']}, warps {call.num_warps}): "
                  f"{ms:.3f} ms  {ms / roofline_ms:.3f}x roofline")
        del scores, arrays
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
