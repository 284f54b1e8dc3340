"""The benchmark of trinix's RoPE and ALiBi (run it as benchmarks/benchmark_embeddings.py).

schema       configurations, methods, ops, providers and the rows of latest.json
original     the original benchmark report's paths in plain PyTorch and jax.numpy
roofline     the bytes each op must move, and whether a row fits in memory
harness      timing (CUDA events after an L2 flush, bursts for JAX, the wall clock on a CPU)
providers    what a provider is; torch_providers and jax_providers are the implementations
variants     RoPE variants (GQA, BHSD, dtypes, partial and interleaved rotation)
attention    attention with ALiBi: its providers, trinix's check, its rows (attention_section: its
             part of EMBEDDINGS.md)
blocks       whole Llama- and BLOOM-style blocks, checked then timed (torch_blocks and jax_blocks
             build them)
run          every row of one run, measured (progress: its progress bar)
analysis     what follows from the rows: speedups, roofline ratios, crossovers
markdown, sections, plots, report
             EMBEDDINGS.md, the plots and latest.json, written from the rows
cli          the command line
"""

import os

# JAX would otherwise take 75% of the GPU at start, leaving too little to the torch rows.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
