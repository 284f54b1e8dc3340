"""The PyTorch RoPE API: the seed's snippet, autograd and torch.compile (refused inputs:
tests/test_bad_inputs.py)."""

import numpy as np
import pytest
import torch

from tests.runners import HAS_CUDA
from trinix import FastRoPEPositionEmbedding
from trinix import reference as ref
from trinix.torch import apply_rotary_pos_emb, rope_rotate


def test_seed_snippet_runs_as_written():
    batch, seq_len, num_heads, head_dim = 2, 24, 4, 128
    rope = FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768, base=10000.0, use_triton=True)
    q = torch.randn(batch, seq_len, num_heads, head_dim)
    k = torch.randn(batch, seq_len, num_heads, head_dim)
    cos, sin = rope(q, seq_len)
    q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)
    assert cos.shape == sin.shape == (seq_len, head_dim) and cos.dtype == q.dtype
    c, s = ref.rope_cos_sin(np.arange(seq_len), ref.rope_inv_freq(128))
    expected = ref.rope_rotate(q.double().numpy(), c[:, None], s[:, None])
    np.testing.assert_allclose(q_rot.numpy(), expected, atol=1e-5, rtol=1e-5)
    pos = torch.randint(0, seq_len, (batch, seq_len))
    q_pos, _ = rope.apply_rotary_pos_emb(q, k, cos, sin, position_ids=pos)
    expected = ref.rope_rotate(q.double().numpy(), c[pos.numpy()][:, :, None], s[pos.numpy()][:, :, None])
    np.testing.assert_allclose(q_pos.numpy(), expected, atol=1e-5, rtol=1e-5)


def test_inference_precompute_snippet_and_growth_past_max_positions():
    rope = FastRoPEPositionEmbedding(dim=64, max_position_embeddings=16, use_triton=True, backend="interpret")
    cos_cached, sin_cached = rope.forward(torch.zeros(1, 40, 1, 64), seq_len=40)
    c, s = ref.rope_cos_sin(np.arange(40), rope.inv_freq)
    np.testing.assert_allclose(cos_cached.numpy(), c, atol=1e-6)
    np.testing.assert_allclose(sin_cached.numpy(), s, atol=1e-6)


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_rotate_matches_table_path(backend):
    """The no-table method and the table method rotate alike, at an offset and at ids."""
    rope = FastRoPEPositionEmbedding(dim=32, backend=backend, layout="bhsd")
    q, k = torch.randn(2, 4, 10, 32), torch.randn(2, 2, 10, 32)
    cos, sin = rope(q, 30)
    by_table = rope.apply_rotary_pos_emb(q, k, cos[20:], sin[20:])
    by_offset = rope.rotate(q, k, offset=20)
    by_ids = rope.rotate(q, k, position_ids=torch.arange(20, 30)[None])
    for a, b, c in zip(by_table, by_offset, by_ids):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(b, c, atol=0, rtol=0)


@pytest.mark.parametrize("source", ["computed", "table"])
def test_gradcheck_float64_through_the_kernel(source):
    inv_freq = ref.rope_inv_freq(8, 10000.0)
    q = torch.randn(1, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 3, 1, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[5, 0, 5]])
    if source == "table":
        cos, sin = (torch.from_numpy(t) for t in ref.rope_cos_sin(np.arange(6), inv_freq))
        fn = lambda a, b: apply_rotary_pos_emb(a, b, cos, sin, pos, backend="interpret")  # noqa: E731
    else:
        fn = lambda a, b: rope_rotate(a, b, inv_freq, position_ids=pos, backend="interpret")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k))


def test_inplace_rotates_the_inputs_and_keeps_autograd():
    rope = FastRoPEPositionEmbedding(dim=16, backend="interpret")
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(2, 5, 3, 16)
    q, k = x @ w, x[:, :, :1] @ w  # non-leaf, so in place is allowed
    expected_q, _ = rope.rotate(q, k, offset=3)
    out_q, out_k = rope.rotate(q, k, offset=3, inplace=True)
    assert out_q is q and out_k is k
    torch.testing.assert_close(q, expected_q)
    (out_q.square().sum() + out_k.sum()).backward()
    reference_w = w.detach().clone().requires_grad_()
    q_ref, k_ref = rope.rotate(x @ reference_w, x[:, :, :1] @ reference_w, offset=3, backend="torch")
    (q_ref.square().sum() + k_ref.sum()).backward()
    torch.testing.assert_close(w.grad, reference_w.grad, atol=1e-4, rtol=1e-4)


def test_torch_backend_compiles_fullgraph():
    rope = FastRoPEPositionEmbedding(dim=32, use_triton=False)
    q, k = torch.randn(2, 8, 4, 32), torch.randn(2, 8, 2, 32)
    compiled = torch.compile(lambda a, b: rope.rotate(a, b, offset=4), fullgraph=True)
    for a, b in zip(compiled(q, k), rope.rotate(q, k, offset=4)):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_CUDA, reason="compiling the Triton path needs a CUDA GPU")
@pytest.mark.parametrize("method", ["rotate", "table", "cos_sin"])
def test_triton_backend_compiles_fullgraph_with_autograd(method):
    rope = FastRoPEPositionEmbedding(dim=64, backend="triton")
    q = torch.randn(2, 16, 4, 64, device="cuda", dtype=torch.float16, requires_grad=True)
    k = torch.randn(2, 16, 2, 64, device="cuda", dtype=torch.float16, requires_grad=True)

    def step(a, b):
        if method == "rotate":
            qr, kr = rope.rotate(a, b, offset=7)
        else:
            cos, sin = rope(a, 16)
            if method == "cos_sin":
                return cos.float().sum() + sin.float().sum()
            qr, kr = rope.apply_rotary_pos_emb(a, b, cos, sin)
        return qr.float().square().sum() + kr.float().sum()

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(q, k)
    torch.testing.assert_close(loss, step(q, k), atol=1e-2, rtol=1e-3)
    if method != "cos_sin":
        loss.backward()
        assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("method", ["rotate", "table"])
def test_decode_step_replays_in_a_cuda_graph(method):
    """Serving captures decode steps in CUDA graphs, so that a step costs no host time: the
    launch must be capturable, and a replay must rotate what the captured inputs hold then."""
    rope = FastRoPEPositionEmbedding(dim=64, max_position_embeddings=256, backend="triton")
    q = torch.randn(2, 1, 8, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 1, 2, 64, device="cuda", dtype=torch.float16)
    positions = torch.tensor([[5], [9]], device="cuda")
    cos, sin = rope(q, 256)

    def step():
        if method == "rotate":
            return rope.rotate(q, k, position_ids=positions)
        return rope.apply_rotary_pos_emb(q, k, cos, sin, positions)

    step()  # compiles the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out, k_out = step()
    new_q, new_k = torch.randn_like(q), torch.randn_like(k)
    new_positions = torch.tensor([[200], [0]], device="cuda")
    q.copy_(new_q)
    k.copy_(new_k)
    positions.copy_(new_positions)
    graph.replay()
    expected = rope.rotate(new_q, new_k, position_ids=new_positions, backend="torch")
    torch.testing.assert_close(q_out, expected[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(k_out, expected[1], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_empty_sequence_gives_empty_results(backend):
    rope = FastRoPEPositionEmbedding(dim=8, backend=backend)
    q, k = torch.zeros(2, 0, 4, 8), torch.zeros(2, 0, 2, 8)
    q_rot, k_rot = rope.rotate(q, k)
    cos, sin = rope(q, 0)
    assert q_rot.shape == q.shape and k_rot.shape == k.shape and cos.shape == (0, 8)
