"""Run from outside the checkout, in a venv holding the built wheel: trinix imports from the
install (trinix.kernels included) and RoPE and ALiBi run through Triton's interpreter as the
float64 reference computes them."""

from pathlib import Path

import numpy as np
import torch

import trinix
import trinix.kernels.rope
from trinix import FastALiBiPositionEmbedding, FastRoPEPositionEmbedding
from trinix import reference as ref

installed = Path(trinix.__file__).resolve().parent
assert "site-packages" in installed.parts, installed
assert Path(trinix.kernels.rope.__file__).resolve().parent == installed / "kernels"

rng = np.random.default_rng(0)
q = rng.standard_normal((2, 12, 4, 16))
k = rng.standard_normal((2, 12, 2, 16))
rope = FastRoPEPositionEmbedding(dim=16, backend="interpret")
q_rot, k_rot = rope.rotate(torch.from_numpy(q).float(), torch.from_numpy(k).float(), offset=5)
cos, sin = ref.rope_cos_sin(np.arange(5, 17), ref.rope_inv_freq(16))
np.testing.assert_allclose(q_rot.numpy(), ref.rope_rotate(q, cos[:, None], sin[:, None]), atol=1e-5)
np.testing.assert_allclose(k_rot.numpy(), ref.rope_rotate(k, cos[:, None], sin[:, None]), atol=1e-5)

scores = rng.standard_normal((1, 4, 9, 20))
alibi = FastALiBiPositionEmbedding(num_heads=4, backend="interpret")
probs = alibi.softmax(torch.from_numpy(scores).float(), scale=0.5, causal=True)
expected = ref.alibi_softmax(scores, ref.alibi_slopes(4), scale=0.5, causal=True)
np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)
print(f"trinix {trinix.__version__} from {installed}: RoPE and ALiBi match the reference")
