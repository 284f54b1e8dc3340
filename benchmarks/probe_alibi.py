"""Where the fused ALiBi softmax's time goes on a CUDA GPU: its kernel per loop shape.

    python benchmarks/probe_alibi.py

The softmax kernel (softmax(scores + bias) over keys, fp16 scores, causal and not) at the
seed's medium and large ALiBi configurations, for row blocks per program x pipeline stages x
num_warps, each checked first (medium: the first variant against the torch fallback, the
others against it; large, where the float32 fallback does not fit: against the first
variant, which the test suite checks at smaller sizes), timed by triton.testing.do_bench
(L2 flushed before each call), against the roofline (scores read once, probabilities written
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
LOOPS = ((1, 1), (2, 2), (4, 2), (4, 3), (8, 2))  # (row blocks per program, stages)
WARPS = (4, 8, 16)


def main():
    device = torch.device("cuda")
    gbps = copy_gbps(Harness(device, warmup=3, iters=20), device)
    print(f"copy bandwidth {gbps:.0f} GB/s (the benchmark's measurement)")
    defaults = kernels_alibi._SOFTMAX_ROW_BLOCKS, kernels_alibi._SOFTMAX_STAGES
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
            expected = None  # the first variant's output, itself checked where the fallback fits
            for row_blocks, stages in LOOPS:
                kernels_alibi._SOFTMAX_ROW_BLOCKS, kernels_alibi._SOFTMAX_STAGES = row_blocks, stages
                kernels_alibi.alibi_softmax_call.cache_clear()
                call = kernels_alibi.alibi_softmax_call(operand(scores), operand(slopes), scale=1.0,
                                                        q_offset=0, causal=causal)
                for warps in WARPS:
                    variant = dataclasses.replace(call, num_warps=warps)
                    (out,) = launch(variant, arrays, interpret=False)
                    if expected is None:
                        # The float32 fallback needs ~7x the scores' memory: medium only.
                        reference = (alibi_softmax(scores, slopes, causal=causal, backend="torch")
                                     if name == "medium" else out)
                        expected = out
                        ok = torch.allclose(out.float(), reference.float(), atol=2e-3, rtol=2e-3)
                        del reference
                    else:
                        ok = torch.allclose(out.float(), expected.float(), atol=2e-3, rtol=2e-3)
                    del out
                    ms = triton.testing.do_bench(lambda: launch(variant, arrays, interpret=False)) if ok else float("nan")
                    print(f"{name:6s} {'causal' if causal else 'full  '} rows {row_blocks} stages {stages} "
                          f"warps {warps:2d}: {ms:.3f} ms  {ms / roofline_ms:.3f}x roofline  {'ok' if ok else 'WRONG'}")
            del expected
        del scores, arrays
        torch.cuda.empty_cache()
    kernels_alibi._SOFTMAX_ROW_BLOCKS, kernels_alibi._SOFTMAX_STAGES = defaults
    kernels_alibi.alibi_softmax_call.cache_clear()


if __name__ == "__main__":
    main()
