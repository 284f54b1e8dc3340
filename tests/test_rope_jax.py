"""The JAX RoPE API: the seed's snippet in Flax NNX and Linen form, jit, gradients, vmap and
the out-of-table contract (refused inputs: tests/test_bad_inputs.py). Expected values come from
trinix.reference (NumPy float64); shapes are tiny because the "interpret" backend runs Triton's
interpreter."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from trinix import reference as ref
from trinix.jax import FastRoPEPositionEmbedding, apply_rotary_pos_emb, rope_cos_sin, rope_rotate
from trinix.jax import linen
from trinix.rope_scaling import RopeConfig, inv_freq_and_scale

CPU_BACKENDS = ["interpret", "xla"]
INV8 = ref.rope_inv_freq(8)


@pytest.fixture
def launches(monkeypatch):
    """Records the inputs (name -> shape) of every interpreted kernel launch: trinix.jax runs
    the interpreter by handing each launch to trinix.torch.launcher.launch on the host."""
    import trinix.torch.launcher as torch_launcher

    seen = []
    original = torch_launcher.launch

    def counting(call, arrays, *, interpret):
        seen.append({name: tuple(t.shape) for name, t in arrays.items() if t is not None})
        return original(call, arrays, interpret=interpret)

    monkeypatch.setattr(torch_launcher, "launch", counting)
    return seen


def rotated(x, positions, inv_freq, layout="bshd") -> np.ndarray:
    """trinix.reference's rotation of x (4 dims in `layout`) at positions (seq,), (1, seq) or
    (batch, seq), float64."""
    x = np.asarray(x, np.float64)
    x = x if layout == "bshd" else np.swapaxes(x, 1, 2)
    cos, sin = ref.rope_cos_sin(np.broadcast_to(positions, x.shape[:2]), inv_freq)
    out = ref.rope_rotate(x, cos[:, :, None], sin[:, :, None])
    return out if layout == "bshd" else np.swapaxes(out, 1, 2)


def rotated_vjp(grad, positions, inv_freq, layout="bshd") -> np.ndarray:
    """trinix.reference's transpose of `rotated` applied to grad, float64."""
    grad = np.asarray(grad, np.float64)
    grad = grad if layout == "bshd" else np.swapaxes(grad, 1, 2)
    cos, sin = ref.rope_cos_sin(np.broadcast_to(positions, grad.shape[:2]), inv_freq)
    out = ref.rope_rotate_vjp(grad, cos[:, :, None], sin[:, :, None])
    return out if layout == "bshd" else np.swapaxes(out, 1, 2)


def table(rows: int, dtype=np.float32):
    """cos and sin of positions 0 .. rows - 1 for head_dim 8, from the reference."""
    return tuple(jnp.asarray(t.astype(dtype)) for t in ref.rope_cos_sin(np.arange(rows), INV8))


def _check_seed_results(q, k, seq_len, cos, sin, q_rot, k_rot, position_ids, q_pos, k_pos):
    assert cos.shape == sin.shape == (seq_len, 128) and cos.dtype == sin.dtype == q.dtype
    assert q_rot.shape == q.shape and k_rot.shape == k.shape and q_rot.dtype == q.dtype
    c, s = ref.rope_cos_sin(np.arange(seq_len), ref.rope_inv_freq(128, 10000.0))
    np.testing.assert_allclose(np.asarray(cos), c, atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), s, atol=2e-6)
    positions = np.arange(seq_len)
    np.testing.assert_allclose(q_rot, rotated(q, positions, ref.rope_inv_freq(128)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(k_rot, rotated(k, positions, ref.rope_inv_freq(128)), atol=1e-5, rtol=1e-5)
    positions = np.asarray(position_ids)
    np.testing.assert_allclose(q_pos, rotated(q, positions, ref.rope_inv_freq(128)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(k_pos, rotated(k, positions, ref.rope_inv_freq(128)), atol=1e-5, rtol=1e-5)


def _seed_inputs():
    batch, seq_len, num_heads, head_dim = 2, 6, 2, 128
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((batch, seq_len, num_heads, head_dim)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((batch, seq_len, num_heads, head_dim)), jnp.float32)
    position_ids = jnp.asarray(rng.permuted(np.tile(np.arange(seq_len), (batch, 1)), axis=1))
    return q, k, seq_len, position_ids


# "as-written" is the seed's line verbatim ("auto": XLA on the CPU, Triton on a GPU);
# "interpret" adds backend="interpret", to run the Triton kernel on the CPU as well.
SEED_VARIANTS = [pytest.param({}, id="as-written"), pytest.param({"backend": "interpret"}, id="interpret")]


@pytest.mark.parametrize("extra", SEED_VARIANTS)
def test_seed_snippet_nnx(extra):
    q, k, seq_len, position_ids = _seed_inputs()
    rope = FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768, base=10000.0, use_triton=True, **extra)
    cos, sin = rope(q, seq_len)
    q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)
    q_pos, k_pos = rope.apply_rotary_pos_emb(q, k, cos, sin, position_ids=position_ids)
    _check_seed_results(q, k, seq_len, cos, sin, q_rot, k_rot, position_ids, q_pos, k_pos)


@pytest.mark.parametrize("extra", SEED_VARIANTS)
def test_seed_snippet_linen(extra):
    q, k, seq_len, position_ids = _seed_inputs()
    rope = linen.FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768, base=10000.0, use_triton=True,
                                           **extra)
    cos, sin = rope.apply({}, q, seq_len)
    q_rot, k_rot = rope.apply({}, q, k, cos, sin, method="apply_rotary_pos_emb")
    q_pos, k_pos = rope.apply({}, q, k, cos, sin, position_ids=position_ids, method="apply_rotary_pos_emb")
    _check_seed_results(q, k, seq_len, cos, sin, q_rot, k_rot, position_ids, q_pos, k_pos)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bhsd_module_reads_seq_from_x_and_rotates_at_offset(backend):
    rope = FastRoPEPositionEmbedding(8, backend=backend, layout="bhsd")
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, 3, 7, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 1, 7, 8)), jnp.float32)
    cos, sin = rope(q)  # seq_len 7 from axis 2 in "bhsd"
    assert cos.shape == (7, 8)
    q_rot, k_rot = rope.rotate(q, k, offset=5)
    np.testing.assert_allclose(q_rot, rotated(q, np.arange(5, 12), INV8, "bhsd"), atol=2e-6, rtol=2e-6)
    np.testing.assert_allclose(k_rot, rotated(k, np.arange(5, 12), INV8, "bhsd"), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_jax_jit_and_nnx_jit(backend):
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 5, 1, 8)), jnp.float32)
    ids = jnp.asarray([[4, 0, 2, 2, 9], [1, 3, 5, 7, 6]])
    rope = FastRoPEPositionEmbedding(8, backend=backend)
    lrope = linen.FastRoPEPositionEmbedding(8, backend=backend)

    def by_table(m, q, k, ids):
        cos, sin = m(q, 10)
        return m.apply_rotary_pos_emb(q, k, cos, sin, position_ids=ids)

    def linen_by_table(q, k, ids):
        cos, sin = lrope.apply({}, q, 10)
        return lrope.apply({}, q, k, cos, sin, ids, method="apply_rotary_pos_emb")

    results = {
        "jax.jit table": jax.jit(lambda q, k, ids: by_table(rope, q, k, ids))(q, k, ids),
        "nnx.jit table": nnx.jit(by_table)(rope, q, k, ids),
        "nnx.jit rotate": nnx.jit(lambda m, q, k, ids: m.rotate(q, k, position_ids=ids))(rope, q, k, ids),
        "jax.jit linen table": jax.jit(linen_by_table)(q, k, ids),
        "jax.jit linen rotate": jax.jit(
            lambda q, k, ids: lrope.apply({}, q, k, position_ids=ids, method="rotate"))(q, k, ids),
    }
    for name, (q_rot, k_rot) in results.items():
        np.testing.assert_allclose(q_rot, rotated(q, ids, INV8), atol=2e-6, rtol=2e-6, err_msg=name)
        np.testing.assert_allclose(k_rot, rotated(k, ids, INV8), atol=2e-6, rtol=2e-6, err_msg=name)
    cos, sin = jax.jit(lambda: rope_cos_sin(INV8, 10, offset=3, backend=backend))()
    c, s = ref.rope_cos_sin(np.arange(3, 13), INV8)
    np.testing.assert_allclose(cos, c, atol=1e-6)
    np.testing.assert_allclose(sin, s, atol=1e-6)


GRAD_IDS = np.array([[2, 0, 2], [1, 4, 3]])


def _rotation(source, backend, layout):
    """(q, k) -> (q_rot, k_rot) at GRAD_IDS, by a cos/sin table or by computed cos/sin."""
    ids = jnp.asarray(GRAD_IDS)
    if source == "table":
        cos, sin = table(5, np.float64)
        return lambda q, k: apply_rotary_pos_emb(q, k, cos, sin, ids, layout=layout, backend=backend)
    return lambda q, k: rope_rotate(q, k, INV8, position_ids=ids, layout=layout, backend=backend)


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("source", ["table", "computed"])
def test_gradients_float64(source, backend, layout):
    shape = (lambda h: (2, 3, h, 8)) if layout == "bshd" else (lambda h: (2, h, 3, 8))
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        q, k, grad_q, grad_k = (jnp.asarray(rng.standard_normal(shape(h))) for h in (2, 1, 2, 1))
        assert q.dtype == jnp.float64
        f = _rotation(source, backend, layout)
        # Under jit: eager, the many small evaluations of check_grads cost seconds on the table
        # path; eager differentiation is checked below (the VJP, and grad == jit(grad)).
        check_grads(jax.jit(f), (q, k), order=2, modes=["rev"])

        dq, dk = jax.vjp(f, q, k)[1]((grad_q, grad_k))
        np.testing.assert_allclose(dq, rotated_vjp(grad_q, GRAD_IDS, INV8, layout), atol=1e-12)
        np.testing.assert_allclose(dk, rotated_vjp(grad_k, GRAD_IDS, INV8, layout), atol=1e-12)

        def loss(q, k):
            q_rot, k_rot = f(q, k)
            return jnp.sum(jnp.sin(q_rot)) + jnp.sum(k_rot * k_rot * k_rot)

        grads = jax.grad(loss, argnums=(0, 1))(q, k)
        jit_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, k)
        for g, jg in zip(grads, jit_grads):
            np.testing.assert_allclose(jg, g, atol=1e-12, rtol=1e-12)
        # The gradient itself, against the reference: d/dq sum(sin(rot q)) = rot^T cos(rot q).
        q_ref = rotated(q, GRAD_IDS, INV8, layout)
        np.testing.assert_allclose(grads[0], rotated_vjp(np.cos(q_ref), GRAD_IDS, INV8, layout), atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cos_sin_are_constants_to_differentiation(backend):
    q = jnp.ones((1, 3, 1, 8))
    cos, sin = table(3)

    def loss(cos, sin):
        q_rot, k_rot = apply_rotary_pos_emb(q, q, cos, sin, backend=backend)
        return jnp.sum(q_rot) + jnp.sum(k_rot)

    grad_cos, grad_sin = jax.grad(loss, argnums=(0, 1))(cos, sin)
    assert not np.any(grad_cos) and not np.any(grad_sin)


# vmap: V examples of (B, S, heads, 8), mapped on axis 0.
V, B, S = 3, 2, 4


def _vmap_inputs():
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.standard_normal((V, B, S, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((V, B, S, 1, 8)), jnp.float32)
    ids = rng.integers(0, 12, (V, B, S))
    return q, k, ids


def _loop(f, args, in_axes):
    """The Python loop that vmap stands for."""
    outs = [f(*(a[v] if axis == 0 else a for a, axis in zip(args, in_axes))) for v in range(V)]
    return tuple(jnp.stack([out[i] for out in outs]) for i in range(2))


VMAP_CASES = {
    # name: (function of (q, k, ids, cos, sin), which of q, k, ids are mapped, ids or offset per example)
    "rotate q k ids mapped": (lambda q, k, i, c, s: rope_rotate(q, k, INV8, position_ids=i, backend="interpret"),
                              (0, 0, 0)),
    "rotate q mapped only": (lambda q, k, i, c, s: rope_rotate(q, k, INV8, position_ids=i, backend="interpret"),
                             (0, None, None)),
    "rotate offset": (lambda q, k, i, c, s: rope_rotate(q, k, INV8, offset=7, backend="interpret"), (0, 0, None)),
    "rotate per-sequence offsets": (
        lambda q, k, i, c, s: rope_rotate(q, k, INV8, offset=i[:, 0], backend="interpret"), (0, 0, 0)),
    "rotate shared offset array": (
        lambda q, k, i, c, s: rope_rotate(q, k, INV8, offset=i[:1, 0], backend="interpret"), (0, 0, None)),
    "table q k ids mapped": (lambda q, k, i, c, s: apply_rotary_pos_emb(q, k, c, s, i, backend="interpret"),
                             (0, 0, 0)),
}


def _vmap_case(name):
    f, (q_axis, k_axis, ids_axis) = VMAP_CASES[name]
    q, k, ids = _vmap_inputs()
    k = k if k_axis == 0 else k[0]
    ids = ids if ids_axis == 0 else ids[0]
    cos, sin = table(12)
    args, in_axes = (q, k, jnp.asarray(ids), cos, sin), (q_axis, k_axis, ids_axis, None, None)
    offset_positions = {"rotate offset": np.arange(7, 7 + S),
                        "rotate per-sequence offsets": ids[..., :1] + np.arange(S),
                        "rotate shared offset array": ids[..., :1, :1] + np.arange(S)}
    positions = np.broadcast_to(offset_positions.get(name, ids), (V, B, S))
    return f, args, in_axes, positions


@pytest.mark.parametrize("name", list(VMAP_CASES))
def test_vmap_is_one_launch_and_equals_the_loop(name, launches):
    f, args, in_axes, positions = _vmap_case(name)
    q, k = args[0], jnp.broadcast_to(args[1], (V, B, S, 1, 8))
    loop_q, loop_k = _loop(f, args, in_axes)
    del launches[:]
    q_rot, k_rot = jax.vmap(f, in_axes=in_axes)(*args)
    assert len(launches) == 1, launches
    assert launches[0]["q"] == (V * B, S, 3, 8)
    jit_q, jit_k = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
    for got in (q_rot, jit_q, loop_q):
        np.testing.assert_allclose(got, np.stack([rotated(q[v], positions[v], INV8) for v in range(V)]),
                                   atol=2e-6, rtol=2e-6)
    for got in (k_rot, jit_k, loop_k):
        np.testing.assert_allclose(got, np.stack([rotated(k[v], positions[v], INV8) for v in range(V)]),
                                   atol=2e-6, rtol=2e-6)
    np.testing.assert_array_equal(q_rot, loop_q)
    np.testing.assert_array_equal(k_rot, loop_k)


def test_vmap_over_mapped_tables_launches_per_example(launches):
    """Mapped cos/sin can't join the batch: one launch per example, results still right."""
    q, k, ids = _vmap_inputs()
    cos, sin = table(12)
    scale = jnp.asarray([1.0, 0.5, 2.0], jnp.float32)[:, None, None]
    cos_v, sin_v = cos * scale, sin * scale
    f = lambda q, k, c, s, i: apply_rotary_pos_emb(q, k, c, s, i, backend="interpret")  # noqa: E731
    q_rot, _ = jax.vmap(f)(q, k, cos_v, sin_v, jnp.asarray(ids))
    assert len(launches) == V
    for v in range(V):
        expected = float(scale[v, 0, 0]) * rotated(q[v], ids[v], INV8)
        np.testing.assert_allclose(q_rot[v], expected, atol=2e-6, rtol=2e-6)


def test_vmap_over_packed_sequences_launches_per_example(launches):
    """Packed "thd" tokens have no batch axis for the mapped one to join: one launch per example."""
    rng = np.random.default_rng(7)
    q = jnp.asarray(rng.standard_normal((V, 7, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((V, 7, 1, 8)), jnp.float32)
    cu_seqlens = np.array([[0, 3, 7], [0, 0, 7], [0, 5, 7]])
    f = lambda q, k, cu: rope_rotate(q, k, INV8, layout="thd", cu_seqlens=cu, max_seqlen=7,  # noqa: E731
                                     backend="interpret")
    q_rot, k_rot = jax.vmap(f)(q, k, jnp.asarray(cu_seqlens))
    assert len(launches) == V
    for v in range(V):
        positions = np.concatenate([np.arange(n) for n in np.diff(cu_seqlens[v])])
        loop_q, loop_k = f(q[v], k[v], jnp.asarray(cu_seqlens[v]))
        np.testing.assert_array_equal(q_rot[v], loop_q)
        np.testing.assert_array_equal(k_rot[v], loop_k)
        np.testing.assert_allclose(q_rot[v], rotated(q[v][None], positions, INV8)[0], atol=2e-6, rtol=2e-6)
        np.testing.assert_allclose(k_rot[v], rotated(k[v][None], positions, INV8)[0], atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_partial_interleaved_eager_and_under_jit(backend):
    """Concrete cu_seqlens give max_seqlen themselves; traced ones (under jit) take it static.
    Per-sequence offsets are an array, traced or not; the columns past the rotary dim pass."""
    rng = np.random.default_rng(8)
    q = jnp.asarray(rng.standard_normal((9, 3, 12)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((9, 1, 12)), jnp.float32)
    cu_seqlens, offsets = jnp.asarray([0, 4, 4, 9]), jnp.asarray([3, 0, 10])
    rope = FastRoPEPositionEmbedding(8, backend=backend, layout="thd", interleaved=True)
    lrope = linen.FastRoPEPositionEmbedding(8, backend=backend, layout="thd", interleaved=True)
    results = {
        "eager": rope.rotate(q, k, offset=offsets, cu_seqlens=cu_seqlens),
        "jit": jax.jit(lambda q, k, o, cu: rope.rotate(q, k, offset=o, cu_seqlens=cu, max_seqlen=5))(
            q, k, offsets, cu_seqlens),
        "linen": lrope.apply({}, q, k, offset=offsets, cu_seqlens=cu_seqlens, method="rotate"),
    }
    cos, sin = ref.rope_cos_sin(np.array([3, 4, 5, 6, 10, 11, 12, 13, 14]), INV8, interleaved=True)
    for name, (q_rot, k_rot) in results.items():
        for x, out in ((q, q_rot), (k, k_rot)):
            expected = ref.rope_rotate(np.asarray(x), cos[:, None], sin[:, None], interleaved=True)
            np.testing.assert_allclose(out, expected, atol=2e-6, rtol=2e-6, err_msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dynamic_ntk_packed_under_jit_sizes_by_max_seqlen(backend):
    """Traced cu_seqlens with a static max_seqlen: dynamic NTK takes its frequencies for
    max_seqlen positions, as eagerly (it read the traced cu_seqlens on the host, and failed)."""
    config = RopeConfig(dim=8, rope_type="dynamic", factor=2.0, max_position_embeddings=4)
    rope = FastRoPEPositionEmbedding(8, rope_config=config, layout="thd", backend=backend)
    q = jnp.asarray(np.random.default_rng(9).standard_normal((7, 2, 8)), jnp.float32)
    cu_seqlens = jnp.asarray([0, 3, 7])
    q_rot, _ = jax.jit(lambda cu: rope.rotate(q, q, cu_seqlens=cu, max_seqlen=6))(cu_seqlens)
    inv_freq, _ = inv_freq_and_scale(config, 6)
    cos, sin = ref.rope_cos_sin(np.array([0, 1, 2, 0, 1, 2, 3]), inv_freq)
    expected = ref.rope_rotate(np.asarray(q), cos[:, None], sin[:, None])
    np.testing.assert_allclose(q_rot, expected, atol=2e-6, rtol=2e-6)


def test_grad_of_vmap(launches):
    f, args, in_axes, positions = _vmap_case("rotate q k ids mapped")
    q, k, ids, cos, sin = args

    def loss(q, k):
        q_rot, k_rot = jax.vmap(f, in_axes=in_axes)(q, k, ids, cos, sin)
        return jnp.sum(jnp.sin(q_rot)) + jnp.sum(k_rot * k_rot)

    del launches[:]
    grad_q, grad_k = jax.grad(loss, argnums=(0, 1))(q, k)
    assert len(launches) == 2, launches  # forward and backward, each over all V * B examples
    assert all(launch["q"][0] == V * B for launch in launches)
    per_example = [jax.grad(lambda q, k: jnp.sum(jnp.sin(f(q, k, ids[v], cos, sin)[0]))
                            + jnp.sum(f(q, k, ids[v], cos, sin)[1] ** 2), argnums=(0, 1))(q[v], k[v])
                   for v in range(V)]
    np.testing.assert_allclose(grad_q, np.stack([g[0] for g in per_example]), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(grad_k, np.stack([g[1] for g in per_example]), atol=1e-6, rtol=1e-6)
    for v in range(V):
        q_ref = rotated(q[v], positions[v], INV8)
        np.testing.assert_allclose(grad_q[v], rotated_vjp(np.cos(q_ref), positions[v], INV8), atol=1e-5)
        np.testing.assert_allclose(grad_k[v], 2 * np.asarray(k[v], np.float64), atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_table_position_ids_under_jit_give_nan_tokens(backend):
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 5, 1, 8)), jnp.float32)
    cos, sin = table(6)
    ids = np.array([[0, -1, 2, 6, 4], [5, 3, 100, 1, -7]])
    bad = (ids < 0) | (ids >= 6)
    q_rot, k_rot = jax.jit(lambda i: apply_rotary_pos_emb(q, k, cos, sin, i, backend=backend))(jnp.asarray(ids))
    for x, out in ((q, q_rot), (k, k_rot)):
        out = np.asarray(out)
        np.testing.assert_array_equal(np.isnan(out), np.broadcast_to(bad[:, :, None, None], out.shape))
        np.testing.assert_allclose(out[~bad], rotated(x, np.where(bad, 0, ids), INV8)[~bad], atol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_sequence_gives_empty_results(backend):
    rope = FastRoPEPositionEmbedding(8, backend=backend)
    lrope = linen.FastRoPEPositionEmbedding(8, backend=backend, layout="bhsd")
    q, k = jnp.zeros((2, 0, 4, 8), jnp.bfloat16), jnp.zeros((2, 0, 2, 8), jnp.bfloat16)
    cos, sin = rope(q, 0)
    assert cos.shape == sin.shape == (0, 8) and cos.dtype == jnp.bfloat16
    assert lrope.apply({}, jnp.swapaxes(q, 1, 2))[0].shape == (0, 8)
    no_ids = jnp.zeros((2, 0), jnp.int32)
    results = [
        rope.apply_rotary_pos_emb(q, k, cos, sin),
        rope.apply_rotary_pos_emb(q, k, cos, sin, position_ids=no_ids),
        jax.jit(lambda q, k: rope.apply_rotary_pos_emb(q, k, cos, sin))(q, k),
        rope.rotate(q, k, offset=3),
        rope.rotate(q, k, position_ids=no_ids),
        jax.jit(lambda q, k: rope.rotate(q, k))(q, k),
    ]
    for q_rot, k_rot in results:
        assert q_rot.shape == q.shape and k_rot.shape == k.shape
        assert q_rot.dtype == k_rot.dtype == jnp.bfloat16
    cos, sin = rope_cos_sin(INV8, 0, backend=backend)
    assert cos.shape == sin.shape == (0, 8)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
def test_numpy_integer_seq_len_and_offset(backend):
    """The input checks accept numpy integers for seq_len and offset (shapes and loop indices
    often are), so every backend must run them."""
    q = jnp.asarray(np.random.default_rng(6).standard_normal((1, 3, 2, 8)), jnp.float32)
    cos, sin = rope_cos_sin(INV8, np.int64(3), offset=np.int64(2), backend=backend)
    c, s = ref.rope_cos_sin(np.arange(2, 5), INV8)
    np.testing.assert_allclose(cos, c, atol=1e-6)
    np.testing.assert_allclose(sin, s, atol=1e-6)
    q_rot, _ = rope_rotate(q, q, INV8, offset=np.int64(2), backend=backend)
    np.testing.assert_allclose(q_rot, rotated(q, np.arange(2, 5), INV8), atol=2e-6, rtol=2e-6)


def test_import_needs_no_jax_triton():
    """`import trinix.jax` (and using it off the GPU) neither imports jax_triton nor, where it
    is not installed, tries to; torch waits for the interpreter."""
    script = textwrap.dedent("""
        import sys

        class Spy:
            tried = []

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "jax_triton":
                    Spy.tried.append(name)
                return None

        sys.meta_path.insert(0, Spy())
        import jax.numpy as jnp
        import trinix.jax
        import trinix.jax.linen
        print("torch after import:", "torch" in sys.modules)
        rope = trinix.jax.FastRoPEPositionEmbedding(8, backend="xla")
        q = jnp.ones((1, 3, 2, 8))
        rope.apply_rotary_pos_emb(q, q, *rope(q))
        print("jax_triton:", "jax_triton" in sys.modules, Spy.tried)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["torch after import: False", "jax_triton: False []"]


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="jax_triton imports where JAX has a GPU")
@pytest.mark.parametrize("cache_dir", [None, "/tmp/trinix-triton-cache"])
def test_jax_triton_import_leaves_tritons_cache_dir_as_it_was(cache_dir):
    """jax_triton sets TRITON_CACHE_DIR to "" on import, after which a torch Triton launch in
    the same process fails ("Could not create or locate cache dir"); trinix puts it back."""
    script = "import os; from trinix.jax.launcher import jax_triton; jax_triton(); " \
             "print(repr(os.environ.get('TRITON_CACHE_DIR')))"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_CACHE_DIR"}
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = cache_dir
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == repr(cache_dir)
