"""Where the fused ALiBi softmax's time goes on a CUDA GPU: its kernel per row block and num_warps.

    python benchmarks/probe_alibi.py

The softmax kernel (softmax(scores + bias) over keys, fp16 scores, causal and not) at the
seed's medium and large ALiBi configurations, per longest row held in registers and
num_warps, each checked first (medium: against the torch fallback; large, where the float32
fallback does not fit: against the first variant, which the test suite checks at smaller
sizes), timed by triton.testing.do_bench (L2
flushed before each call), against the roofline (scores read once, probabilities written
once) at the copy bandwidth as the benchmark measures it. The add kernel runs beside it for
scale: it moves the same bytes with no reduction.
"""

import dataclasses

import torch
import triton.testing

from benchmark_embeddings import Harness, copy_gbps

import trinix.kernels.alibi as kernels_alibi
from trinix.torch.alibi import alibi_add, alibi_slopes, alibi_softmax
from trinix.torch.launcher import launch, operand

CONFIGS = {"medium": (2, 64, 2048), "large": (1, 128, 8192)}  # batch, heads, seq
WARPS = (4, 8, 16)
# Longest row held in registers (kernels.alibi._SOFTMAX_BLOCK_K): a longer row is read in
# blocks twice (online max and sum, then again from L2 to write), with fewer registers a thread
# and so more programs in flight (offline sm_90: a whole 8192-key row takes 128 registers a
# thread on 4 warps, 64 on 8, 40 on 16).
ROW_BLOCKS = (8192, 4096, 2048, 1024)


def max_error(out, expected):
    """Largest |out - expected|, a head at a time (float32 copies of large scores do not fit)."""
    return max((out[:, h].float() - expected[:, h].float()).abs().max().item() for h in range(out.shape[1]))


def main():
    device = torch.device("cuda")
    gbps = copy_gbps(Harness(device, warmup=3, iters=20), device)
    print(f"copy bandwidth {gbps:.0f} GB/s (the benchmark's measurement)")
    default_row_block = kernels_alibi._SOFTMAX_BLOCK_K
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
        for causal in (False, True):
            # The torch fallback (float32, ~7x the scores' memory) at medium; at large the first
            # variant, which the test suite checks at smaller sizes.
            expected = (alibi_softmax(scores, slopes, causal=causal, backend="torch")
                        if name == "medium" else None)
            for row_block in (b for b in ROW_BLOCKS if b <= seq):
                kernels_alibi._SOFTMAX_BLOCK_K = row_block
                kernels_alibi.alibi_softmax_call.cache_clear()
                call = kernels_alibi.alibi_softmax_call(operand(scores), operand(slopes), scale=1.0,
                                                        q_offset=0, causal=causal)
                for warps in WARPS:
                    variant = dataclasses.replace(call, num_warps=warps)
                    (out,) = launch(variant, arrays, interpret=False)
                    if expected is None:
                        expected = out
                    error = max_error(out, expected)
                    del out
                    ok = error <= 2e-3
                    ms = triton.testing.do_bench(lambda: launch(variant, arrays, interpret=False)) if ok else float("nan")
                    print(f"{name:6s} {'causal' if causal else 'full  '} rows of {row_block:4d} keys "
                          f"(Q {call.constexprs['BLOCK_Q']}) warps {warps:2d} (default {call.num_warps}): "
                          f"{ms:.3f} ms  {ms / roofline_ms:.3f}x roofline  max error {error:.1e} "
                          f"{'ok' if ok else 'WRONG'}")
            del expected
            kernels_alibi._SOFTMAX_BLOCK_K = default_row_block
            kernels_alibi.alibi_softmax_call.cache_clear()
        del scores, arrays
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
