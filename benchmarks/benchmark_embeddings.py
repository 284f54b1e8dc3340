"""Benchmark of RoPE and ALiBi: trinix's Triton kernels against the PyTorch path of the original
benchmark report, torch.compile, Liger-Kernel and JAX.

    python benchmarks/benchmark_embeddings.py                  # the original eight configurations
    python benchmarks/benchmark_embeddings.py --quick          # small configurations, few iterations
    python benchmarks/benchmark_embeddings.py --num_heads 64 --head_dim 128 --seq_len 8192
    python benchmarks/benchmark_embeddings.py --methods alibi_attention   # attention with ALiBi alone
    python benchmarks/benchmark_embeddings.py --methods llama_block bloom_block   # the blocks alone
    python benchmarks/benchmark_embeddings.py --render-from A/latest.json B/latest.json --output DIR
        # no measuring: one report from two runs' rows (each method's from the first file with it)

The original configurations come with RoPE variants at the large one (GQA, BHSD, bf16, fp32,
partial and interleaved rotation), each call checked against a plain PyTorch rotation before it
is timed; and with attention with ALiBi (head_dim 128, forward and backward, symmetric and
causal, and a decoding step), trinix beside FlexAttention, SDPA and jax.nn.dot_product_attention;
and with whole Llama- and BLOOM-style blocks (What a model gains, the report's first section).

On a CUDA GPU it writes benchmarks/EMBEDDINGS.md, its plots and benchmarks/results/latest.json;
without one, all of them into benchmarks/results/cpu/ (latest.json beside the report), so a CPU
run never replaces the committed GPU report; --output names another folder.

Method: every provider goes through one harness (trinix_bench/harness.py, beside this file);
the median time of each row is reported beside its roofline, the op's bytes (inputs read
once, outputs written once) at the copy bandwidth of the same run.
"""

import sys

from trinix_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
