"""torch.compile(fullgraph=True) of trinix's modules and functions, forward and backward, between
eager calls, and warning of nothing in trinix's code (a Dynamo warning is printed once a process:
each backend compiles in a new one)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runners import HAS_CUDA

ROOT = Path(__file__).resolve().parent.parent

COMPILE = """
    import sys
    import warnings
    import torch
    from trinix import FastALiBiPositionEmbedding, FastRoPEPositionEmbedding

    backend = sys.argv[1]
    # "auto" on a GPU: the torch ops for RoPE under torch.compile, the kernels for ALiBi
    device = "cuda" if backend == "triton" or (backend == "auto" and torch.cuda.is_available()) else "cpu"
    rope = FastRoPEPositionEmbedding(dim=32, backend=backend).to(device)
    alibi = FastALiBiPositionEmbedding(num_heads=4, backend=backend, device=device)

    def step(q, k, scores):
        cos, sin = rope(q, q.shape[1])
        q1, k1 = rope.apply_rotary_pos_emb(q, k, cos, sin)
        q2, k2 = rope.rotate(q1, k1, offset=3)
        probs = alibi.softmax(alibi.add_to_scores(scores), scale=0.2, causal=True)
        return q2.sum() + k2.sum() + probs.sum()

    torch.manual_seed(0)
    q = torch.randn(2, 8, 4, 32, device=device, requires_grad=True)
    k = torch.randn(2, 8, 2, 32, device=device, requires_grad=True)
    scores = torch.randn(2, 4, 8, 8, device=device, requires_grad=True)
    eager = step(q, k, scores)  # eager first: its cached launches must not enter the graph
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = torch.compile(step, fullgraph=True)(q, k, scores)
        loss.backward()
    # A compiled graph sums in another order: a few float32 roundings of a sum of ~2000 terms.
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(step(q, k, scores), eager)
    for warning in caught:
        print(warning.filename, warning.message)
"""


@pytest.mark.parametrize("backend", ["torch", "auto", pytest.param("triton", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="compiling the Triton path needs a CUDA GPU"))])
def test_compiling_trinix_warns_of_nothing_in_trinix(backend):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE), backend], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    trinix_warnings = [line for line in result.stdout.splitlines() if "trinix" in line]
    assert not trinix_warnings, trinix_warnings
