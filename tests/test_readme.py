"""The README's Python snippets run as written, with small inputs for the names they leave to
the reader (on the CPU, backend "auto" takes the framework's own ops)."""

import re
from pathlib import Path

import numpy as np
import torch
import transformers.models.llama.modeling_llama as llama

from tests.runners import from_torch
from trinix import reference as ref
from trinix.torch import hf

SNIPPETS = re.findall(r"```python\n(.*?)```", (Path(__file__).parent.parent / "README.md").read_text(), re.S)
ROPE, HF, ALIBI = SNIPPETS


def test_the_snippets_are_rope_hf_and_alibi():
    assert "FastRoPEPositionEmbedding" in ROPE
    assert "hf.apply_rotary_pos_emb" in HF
    assert "FastALiBiPositionEmbedding" in ALIBI


def test_rope_snippet():
    seq_len = 16
    names = dict(q=torch.randn(2, seq_len, 4, 128), k=torch.randn(2, seq_len, 2, 128), seq_len=seq_len,
                 pos=torch.randint(0, seq_len, (2, seq_len)), past_len=5)
    exec(ROPE, names)
    # The last line rotated at positions past_len .. past_len + seq_len - 1.
    positions = np.arange(5, 5 + seq_len)[None]
    cos, sin = ref.rope_cos_sin(positions, ref.rope_inv_freq(128))
    expected = ref.rope_rotate(from_torch(names["q"]).astype(np.float64), cos[:, :, None], sin[:, :, None])
    np.testing.assert_allclose(from_torch(names["q_rot"]), expected, rtol=1e-5, atol=1e-5)


def test_hf_snippet_patches_the_model_module(monkeypatch):
    monkeypatch.setattr(llama, "apply_rotary_pos_emb", llama.apply_rotary_pos_emb)  # restored after
    exec(HF, {})
    assert llama.apply_rotary_pos_emb is hf.apply_rotary_pos_emb


def test_alibi_snippet():
    seq_len, batch_size, head_dim = 12, 2, 64
    names = dict(seq_len=seq_len, batch_size=batch_size, head_dim=head_dim,
                 scores=torch.randn(batch_size, 64, seq_len, seq_len))
    exec(ALIBI, names)
    assert names["bias"].shape == (batch_size, 64, seq_len, seq_len)
    probs = names["probs"]
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, rtol=1e-5)
    assert torch.all(probs.triu(1) == 0), "causal: no probability after the query"
