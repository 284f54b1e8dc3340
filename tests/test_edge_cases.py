"""Edge cases, each a test, on the CPU: empty tensors, the smallest shapes, positions near 2^20,
NaN and Inf, aliasing, threads and determinism. Expected values come from trinix.reference
(NumPy float64) or are written out by hand; runners (tests/runners.py, tests/test_alibi.py)
take every framework x backend this machine has. The last section holds the bugs these tests
and tests/test_properties.py found, as regression tests.
"""

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.runners import BFLOAT16, HAS_CUDA, from_torch, rope_runners, to_torch
from tests.test_alibi import JaxAlibi, TorchAlibi
from tests.test_rope import NUMPY_DTYPES, TOLERANCES, assert_close
from trinix import reference as ref
from trinix.jax import alibi as jax_alibi
from trinix.jax import rope as jax_rope
from trinix.rope_scaling import RopeConfig
from trinix.torch import alibi as torch_alibi
from trinix.torch import hf
from trinix.torch import rope as torch_rope

ROPE_RUNNERS = rope_runners()
ALIBI_RUNNERS = [TorchAlibi("interpret"), TorchAlibi("torch"), JaxAlibi("interpret"), JaxAlibi("xla")]
KERNEL_ROPE_RUNNERS = [r for r in ROPE_RUNNERS if r.backend in ("interpret", "triton")]


def _id(runner) -> str:
    return f"{runner.framework}-{runner.backend}"


def rotated(x, positions, inv_freq, *, layout="bshd", interleaved=False, cos=None, sin=None):
    """Reference rotation of x at positions (batch or 1, seq), or (tokens,) for "thd", by
    computed cos/sin or rows of (rows, R) tables; float64."""
    if cos is None:
        c, s = ref.rope_cos_sin(positions, inv_freq, interleaved=interleaved)
    else:
        c, s = cos.astype(np.float64)[positions], sin.astype(np.float64)[positions]
    axis = 2 if layout == "bshd" else 1
    return ref.rope_rotate(x.astype(np.float64), np.expand_dims(c, axis), np.expand_dims(s, axis),
                           interleaved=interleaved)


def table(rows: int, dim: int, dtype=np.float32, interleaved=False):
    return tuple(t.astype(dtype) for t in ref.rope_cos_sin(np.arange(rows), ref.rope_inv_freq(dim),
                                                              interleaved=interleaved))


# --- empty tensors ----------------------------------------------------------------------------

EMPTY_ROPE = {  # q shape, k shape, layout, cu_seqlens
    "seq-0-bhsd": ((2, 3, 0, 8), (2, 1, 0, 8), "bhsd", None),
    "k-without-heads": ((2, 5, 3, 8), (2, 5, 0, 8), "bshd", None),
    "q-without-heads": ((2, 5, 0, 8), (2, 5, 2, 8), "bshd", None),
    "empty-batch": ((0, 5, 3, 8), (0, 5, 1, 8), "bshd", None),
    "empty-batch-bhsd": ((0, 3, 5, 8), (0, 1, 5, 8), "bhsd", None),
    "packed-no-tokens": ((0, 3, 8), (0, 1, 8), "thd", [0, 0, 0]),
    "packed-no-sequences": ((0, 3, 8), (0, 1, 8), "thd", [0]),
}


@pytest.mark.parametrize("runner", ROPE_RUNNERS, ids=_id)
@pytest.mark.parametrize("source", ["computed", "table"])
@pytest.mark.parametrize("name", list(EMPTY_ROPE))
def test_empty_rope_inputs(name, source, runner):
    """Empty q or k give empty results of their shape and dtype; the other one still rotates."""
    q_shape, k_shape, layout, cu_seqlens = EMPTY_ROPE[name]
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal(shape).astype(np.float32) for shape in (q_shape, k_shape))
    inv_freq = ref.rope_inv_freq(8)
    cos, sin = table(5, 8) if source == "table" else (None, None)
    cu = None if cu_seqlens is None else np.asarray(cu_seqlens, np.int32)
    outputs = runner.apply(q, k, cos=cos, sin=sin, inv_freq=inv_freq, layout=layout, cu_seqlens=cu)
    positions = np.arange(5)[None]
    for x, out in zip((q, k), outputs):
        assert out.shape == x.shape and out.dtype == x.dtype
        if x.size:
            x_bshd = np.swapaxes(x, 1, 2) if layout == "bhsd" else x
            expected = rotated(x_bshd, positions, inv_freq, cos=cos, sin=sin)
            assert_close(np.swapaxes(out, 1, 2) if layout == "bhsd" else out, expected, "float32")


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0)],
                         ids=["empty-batch", "no-queries", "no-keys"])
def test_empty_alibi_inputs(shape, runner):
    scores = np.zeros(shape, np.float32)
    slopes = np.array([0.5, 0.25], np.float32)
    for what, out in (("add", runner.add(scores, slopes, causal=True, q_offset=None)),
                      ("softmax", runner.softmax(scores, slopes, scale=0.5, causal=True, q_offset=None)),
                      ("bias", runner.bias(slopes, *shape[2:], causal=False, q_offset=None, dtype="float32"))):
        expected = shape if what != "bias" else (2, *shape[2:])
        assert out.shape == expected and out.dtype == np.float32, what


# --- the smallest shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("runner", ROPE_RUNNERS, ids=_id)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("source", ["computed", "table"])
@pytest.mark.parametrize("head_dim, rotary_dim", [(2, 2), (4, 2)], ids=["head_dim-2", "partial-2-of-4"])
def test_one_token_one_head_one_pair(head_dim, rotary_dim, source, interleaved, runner):
    """seq 1, one head, one rotated pair (with 2 columns passing through, partially)."""
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((3, 1, 1, head_dim)).astype(np.float32) for _ in range(2))
    inv_freq = ref.rope_inv_freq(rotary_dim)
    positions = np.array([[7], [0], [3]])
    cos, sin = table(8, rotary_dim, interleaved=interleaved) if source == "table" else (None, None)
    outputs = runner.apply(q, k, cos=cos, sin=sin, inv_freq=inv_freq, positions=positions,
                           interleaved=interleaved)
    for x, out in zip((q, k), outputs):
        # by hand: one pair (x0, x1) turns by the angle of its position; the rest is copied
        angle = positions[:, :, None] * inv_freq[0]
        x0, x1 = x[..., 0].astype(np.float64), x[..., 1].astype(np.float64)
        by_hand = np.stack([x0 * np.cos(angle) - x1 * np.sin(angle), x1 * np.cos(angle) + x0 * np.sin(angle)], -1)
        expected = np.concatenate([by_hand, x[..., 2:].astype(np.float64)], -1)
        assert_close(out, expected, "float32")
        np.testing.assert_array_equal(out[..., 2:], x[..., 2:])


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
def test_one_head_one_query_one_key(runner):
    slopes = np.array([0.5], np.float32)
    scores = np.array([[[[3.0]]]], np.float32)
    assert runner.bias(slopes, 1, 1, causal=False, q_offset=None, dtype="float32").tolist() == [[[0.0]]]
    assert runner.add(scores, slopes, causal=True, q_offset=None).tolist() == [[[[3.0]]]]
    assert runner.softmax(scores, slopes, scale=0.5, causal=True, q_offset=None).tolist() == [[[[1.0]]]]
    # The query one position before its only key: causal leaves no key, so the row is 0.
    assert runner.softmax(scores, slopes, scale=0.5, causal=True, q_offset=-1).tolist() == [[[[0.0]]]]


# --- positions near 2^20 ----------------------------------------------------------------------

FAR = 2**20 + np.arange(-4, 4)  # positions whose angles at inv_freq 1 are ~10^6 radians


def _float32_angle_error(inv_freq) -> float:
    """How far cos of angles formed in float32 (position * inv_freq rounded) are from exact at
    FAR: what a path that kept float32 angles would lose."""
    exact = np.cos(FAR[:, None] * inv_freq)
    in_float32 = np.cos((FAR[:, None].astype(np.float32) * inv_freq.astype(np.float32)).astype(np.float64))
    return float(np.abs(in_float32 - exact).max())


@pytest.mark.parametrize("runner", [r for r in ROPE_RUNNERS if r.backend != "xla"], ids=_id)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("positions", ["ids", "offset"])
def test_positions_near_2_pow_20_keep_their_angle(positions, dtype, runner):
    """The kernels form angles in float64 (the torch backend too): at positions near 2^20 their
    outputs stay within the dtype's usual tolerance of the float64 reference, which float32
    angles would miss by far. (XLA forms angles in float32, by design: not held to this.)"""
    inv_freq = ref.rope_inv_freq(64)
    atol, _ = TOLERANCES["float32"]
    assert _float32_angle_error(inv_freq) > 1000 * atol, "the test must tell float32 angles apart"
    rng = np.random.default_rng(2)
    q = rng.uniform(-1, 1, (2, FAR.size, 2, 64)).astype(NUMPY_DTYPES[dtype])
    k = rng.uniform(-1, 1, (2, FAR.size, 1, 64)).astype(NUMPY_DTYPES[dtype])
    if positions == "ids":
        q_rot, k_rot = runner.apply(q, k, inv_freq=inv_freq, positions=np.stack([FAR, FAR[::-1]]))
        token_positions = np.stack([FAR, FAR[::-1]])
    else:
        q_rot, k_rot = runner.apply(q, k, inv_freq=inv_freq, offset=int(FAR[0]))
        token_positions = FAR[None]
    for x, out in ((q, q_rot), (k, k_rot)):
        assert_close(out, rotated(x, token_positions, inv_freq), dtype)


EDGE = 2**31 - 3 + np.arange(6)  # positions across the int32 limit


@pytest.mark.parametrize("runner", [r for r in ROPE_RUNNERS if r.backend != "xla"], ids=_id)
def test_offsets_across_the_int32_limit(runner):
    """An int offset with positions past 2**31 - 1 (the kernels once added it to the token index
    in int32, which wrapped to negative positions); the tables too. float16: an error from a
    wrapped position is of order 1, far above its tolerance."""
    inv_freq = ref.rope_inv_freq(16)
    rng = np.random.default_rng(3)
    q = rng.uniform(-1, 1, (1, EDGE.size, 2, 16)).astype(np.float16)
    k = rng.uniform(-1, 1, (1, EDGE.size, 1, 16)).astype(np.float16)
    q_rot, k_rot = runner.apply(q, k, inv_freq=inv_freq, offset=int(EDGE[0]))
    for x, out in ((q, q_rot), (k, k_rot)):
        assert_close(out, rotated(x, EDGE[None], inv_freq), "float16")
    cos, sin = runner.cos_sin(inv_freq, EDGE.size, int(EDGE[0]), "float16")
    expected = ref.rope_cos_sin(EDGE, inv_freq)
    assert_close(cos, expected[0], "float16", what="cos")
    assert_close(sin, expected[1], "float16", what="sin")


@pytest.mark.parametrize("runner", [r for r in ROPE_RUNNERS if r.backend != "xla"], ids=_id)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cos_sin_tables_near_2_pow_20(dtype, runner):
    inv_freq = ref.rope_inv_freq(64)
    cos, sin = runner.cos_sin(inv_freq, FAR.size, int(FAR[0]), dtype)
    expected = ref.rope_cos_sin(FAR, inv_freq)
    assert_close(cos, expected[0], dtype, what="cos")
    assert_close(sin, expected[1], dtype, what="sin")


# --- NaN and Inf ------------------------------------------------------------------------------

# NumPy (the reference, Triton's interpreter) warns on inf * 0 and inf - inf: expected here.
expected_invalid_values = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

def _partner(column: int, rotary_dim: int, interleaved: bool) -> int:
    """The other member of a rotated column's pair; a column past rotary_dim has none."""
    if column >= rotary_dim:
        return column
    if interleaved:
        return column ^ 1
    half = rotary_dim // 2
    return column + half if column < half else column - half


@pytest.mark.parametrize("runner", ROPE_RUNNERS, ids=_id)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("source", ["computed", "table"])
@expected_invalid_values
def test_nan_and_inf_stay_in_their_pair(source, interleaved, runner):
    """RoPE mixes the two columns of a pair and nothing else: a NaN or Inf of q or k makes only
    its own pair of its own token and head non-finite (only itself past rotary_dim)."""
    head_dim, rotary_dim = 12, 8
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 3, head_dim)).astype(np.float32)
    k = rng.standard_normal((2, 4, 2, head_dim)).astype(np.float32)
    poisoned = {"q": [((0, 1, 2, 1), np.nan), ((1, 3, 0, 6), np.inf), ((1, 0, 1, 9), np.nan)],
                "k": [((1, 2, 1, 10), -np.inf), ((0, 0, 0, 3), -np.inf)]}
    masks = {}
    for name, x in (("q", q), ("k", k)):
        masks[name] = np.zeros(x.shape, bool)
        for (b, s, h, d), value in poisoned[name]:
            x[b, s, h, d] = value
            masks[name][b, s, h, [d, _partner(d, rotary_dim, interleaved)]] = True
    inv_freq = ref.rope_inv_freq(rotary_dim)
    cos, sin = table(6, rotary_dim, interleaved=interleaved) if source == "table" else (None, None)
    positions = np.array([[0, 5, 2, 1], [3, 3, 0, 4]])
    outputs = runner.apply(q, k, cos=cos, sin=sin, inv_freq=inv_freq, positions=positions, interleaved=interleaved)
    for (name, x), out in zip((("q", q), ("k", k)), outputs):
        np.testing.assert_array_equal(~np.isfinite(out), masks[name], err_msg=f"{name}: non-finite where")
        expected = rotated(x, positions, inv_freq, interleaved=interleaved, cos=cos, sin=sin)
        assert_close(out[~masks[name]], expected[~masks[name]], "float32", what=name)


def _poisoned_scores():
    """Scores (2, 3, 4, 6) with a NaN and a +inf at keys their queries see, and a NaN at a key
    that causal masks (bottom-right: query i sits at key i + 2; the keys after it are masked);
    and where they are."""
    scores = np.random.default_rng(4).standard_normal((2, 3, 4, 6)).astype(np.float32)
    where = np.zeros(scores.shape, bool)
    for index, value in (((0, 1, 2, 3), np.nan), ((1, 2, 3, 4), np.inf), ((1, 0, 1, 5), np.nan)):
        scores[index], where[index] = value, True
    return scores, where


SLOPES3 = np.array([0.5, 0.25, 0.125], np.float32)


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
@expected_invalid_values
def test_nan_and_inf_scores_stay_where_they_are_when_adding(runner):
    scores, where = _poisoned_scores()
    added = runner.add(scores, SLOPES3, causal=True, q_offset=None)
    np.testing.assert_array_equal(~np.isfinite(added), where)
    expected = scores.astype(np.float64) + ref.alibi_bias(SLOPES3, 4, 6, causal=True)
    np.testing.assert_allclose(added[~where], expected[~where], rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
@expected_invalid_values
def test_nan_and_inf_scores_spoil_only_their_row_in_the_softmax(runner):
    """A NaN or +inf score leaves its row's normaliser undefined: every key the query sees
    comes out non-finite (never a finite wrong probability: the kernel and the reference took
    a NaN row sum for a row with no key), and no other row changes; a NaN at a key that causal
    masks reaches nothing."""
    scores, where = _poisoned_scores()
    probs = runner.softmax(scores, SLOPES3, scale=0.5, causal=True, q_offset=None)
    visible = ref.alibi_bias(np.ones(1), 4, 6, causal=True)[0] <= 0  # (query, key) not masked
    spoiled = np.zeros(scores.shape[:3], bool)
    spoiled[0, 1, 2] = spoiled[1, 2, 3] = True
    assert (~np.isfinite(probs[spoiled][visible[[2, 3]]])).all(), "a spoiled row holds finite probabilities"
    clean = np.where(where, 0.0, scores)  # the other rows do not depend on what was there
    expected = ref.alibi_softmax(clean, SLOPES3, scale=0.5, causal=True)
    np.testing.assert_allclose(probs[~spoiled], expected[~spoiled], atol=2e-6)


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
@expected_invalid_values
def test_minus_inf_scores_are_masked_keys(runner):
    """-inf scores (a caller's mask) get probability 0; the rest of the row sums to 1."""
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((1, 2, 3, 5)).astype(np.float32)
    scores[0, 0, :, 1] = scores[0, 1, 2, :4] = -np.inf
    slopes = np.array([0.5, 0.25], np.float32)
    probs = runner.softmax(scores, slopes, scale=1.0, causal=False, q_offset=None)
    assert (probs[np.isneginf(scores)] == 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, ref.alibi_softmax(scores, slopes), atol=2e-6)


@pytest.mark.parametrize("runner", ALIBI_RUNNERS, ids=_id)
@expected_invalid_values
def test_rows_of_only_minus_inf_scores_give_zeros(runner):
    """A row the caller masks entirely has no key: 0, as a query before every key gets (the
    torch and xla backends gave NaN, torch.softmax's and jax.nn.softmax's answer)."""
    scores = np.zeros((1, 1, 2, 3), np.float32)
    scores[0, 0, 0] = -np.inf
    probs = runner.softmax(scores, np.array([0.5], np.float32), scale=1.0, causal=False, q_offset=None)
    expected = ref.alibi_softmax(scores, np.array([0.5]))
    assert expected[0, 0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(probs, expected, atol=1e-6)


# --- aliasing ---------------------------------------------------------------------------------

def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _rope_calls(backend):
    """Every public RoPE call form of trinix.torch: name -> (call(q, k, inplace), inputs)."""
    inv_freq = ref.rope_inv_freq(16)
    module = torch_rope.FastRoPEPositionEmbedding(16, backend=backend)
    cos, sin = (torch.from_numpy(t) for t in table(8, 16))
    ids = torch.tensor([[3, 1, 4, 1, 5], [0, 2, 7, 1, 6]])
    hf_cos, hf_sin = cos[ids], sin[ids]
    return {
        "rope_rotate": (lambda q, k, inplace: torch_rope.rope_rotate(
            q, k, inv_freq, offset=3, inplace=inplace, backend=backend), ()),
        "apply_rotary_pos_emb": (lambda q, k, inplace: torch_rope.apply_rotary_pos_emb(
            q, k, cos, sin, ids, inplace=inplace, backend=backend), (cos, sin, ids)),
        "module.rotate": (lambda q, k, inplace: module.rotate(q, k, position_ids=ids, inplace=inplace), (ids,)),
        "module.apply_rotary_pos_emb": (lambda q, k, inplace: module.apply_rotary_pos_emb(
            q, k, cos, sin, inplace=inplace), (cos, sin)),
        "hf.apply_rotary_pos_emb": (lambda q, k, inplace: hf.apply_rotary_pos_emb(
            q, k, hf_cos, hf_sin, 2, backend=backend), (hf_cos, hf_sin)),
    }


@pytest.mark.parametrize("backend", ["interpret", "torch"])
@pytest.mark.parametrize("form", list(_rope_calls("torch")))
def test_rope_outputs_never_alias_inputs_unless_in_place(form, backend):
    call, others = _rope_calls(backend)[form]
    q, k = torch.randn(2, 5, 3, 16), torch.randn(2, 5, 1, 16)
    q_before, k_before = q.clone(), k.clone()
    q_rot, k_rot = call(q, k, False)
    for out in (q_rot, k_rot):
        assert all(_storage(out) != _storage(x) for x in (q, k, *others)), "an output aliases an input"
    assert torch.equal(q, q_before) and torch.equal(k, k_before), "inputs were written"
    if form.startswith("hf."):
        return  # transformers' signature has no in place
    q_in, k_in = call(q, k, True)
    assert q_in is q and k_in is k, "in place returns q and k themselves"
    assert torch.equal(q, q_rot) and torch.equal(k, k_rot), "in place gives what a new output holds"


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_alibi_outputs_never_alias_inputs_unless_in_place(backend):
    scores = torch.randn(2, 3, 4, 6)
    before = scores.clone()
    module = torch_alibi.FastALiBiPositionEmbedding(3, backend=backend)
    slopes = module.slopes
    outputs = [module.add_to_scores(scores), module.softmax(scores, scale=0.5),
               torch_alibi.alibi_add(scores, slopes, causal=True, backend=backend),
               torch_alibi.alibi_softmax(scores, slopes, causal=True, backend=backend),
               torch_alibi.alibi_bias(slopes, 4, 6, backend=backend)]
    for out in outputs:
        assert _storage(out) not in (_storage(scores), _storage(slopes)), "an output aliases an input"
    assert torch.equal(scores, before), "the scores were written"
    added = outputs[0]
    assert module.add_to_scores(scores, inplace=True) is scores
    assert torch.equal(scores, added)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("backend", ["interpret", "xla"])
def test_jax_inputs_are_never_written(backend, jit):
    """JAX arrays are immutable: the in-place ALiBi kernel (which writes the scores' buffer in
    the interpreter's host callback) must leave the caller's scores as they were."""
    rng = np.random.default_rng(6)
    scores = jnp.asarray(rng.standard_normal((1, 2, 3, 4)).astype(np.float32))
    q, k = (jnp.asarray(rng.standard_normal(shape).astype(np.float32)) for shape in ((1, 3, 2, 8), (1, 3, 1, 8)))
    kept = [np.array(x) for x in (scores, q, k)]
    slopes = jnp.asarray([0.5, 0.25], jnp.float32)

    def calls(scores, q, k):
        return (jax_alibi.alibi_add(scores, slopes, backend=backend),
                jax_alibi.alibi_softmax(scores, slopes, backend=backend),
                jax_rope.rope_rotate(q, k, ref.rope_inv_freq(8), offset=2, backend=backend))

    (jax.jit(calls) if jit else calls)(scores, q, k)
    for x, before in zip((scores, q, k), kept):
        np.testing.assert_array_equal(np.asarray(x), before)


# --- threads ----------------------------------------------------------------------------------

def _run_concurrently(jobs, threads=8, rounds=5):
    """Jobs run by `threads` threads started together, each thread `rounds` of them (starting
    at a different job): each thread's results."""
    barrier = threading.Barrier(threads)

    def worker(first):
        barrier.wait()
        return [jobs[(first + i) % len(jobs)]() for i in range(rounds)]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(worker, range(threads)))


@pytest.mark.parametrize("backend", ["torch", "interpret"])
def test_threads_growing_the_frequency_cache_rotate_as_one_thread(backend):
    """Dynamic NTK makes new frequencies for each longer sequence, kept in a cache per
    (frequencies, device): threads that rotate sequences of different lengths at once grow it
    together, and each must get what it gets alone. Triton's interpreter keeps global state
    while it runs, so interpreted launches from several threads must take turns (they failed
    with InterpreterError before trinix serialised them)."""
    config = RopeConfig(dim=16, rope_type="dynamic", factor=2.0, max_position_embeddings=8)
    rope = torch_rope.FastRoPEPositionEmbedding(16, backend=backend, rope_config=config)
    torch.manual_seed(7)
    inputs = [(torch.randn(2, 5, 2, 16), torch.randn(2, 5, 1, 16), offset) for offset in range(0, 64, 8)]

    def job(q, k, offset):
        def run():
            q_rot, k_rot = rope.rotate(q, k, offset=offset)
            cos, sin = rope(q, 5, offset=offset)
            inv_freq = ref.rope_inv_freq(16, 10000.0 + offset)  # a new cache entry per job
            plain = torch_rope.rope_rotate(q, k, inv_freq, offset=offset, backend=backend)
            return offset, [q_rot, k_rot, cos, sin, *plain]
        return run

    jobs = [job(*x) for x in inputs]
    torch_rope.frequencies_on_device.cache_clear()
    concurrent = _run_concurrently(jobs)
    torch_rope.frequencies_on_device.cache_clear()
    alone = dict(job() for job in jobs)
    assert len(alone) == len(jobs)
    for results in concurrent:
        for offset, tensors in results:
            for a, b in zip(tensors, alone[offset]):
                assert torch.equal(a, b), f"offset {offset}: a thread got another result than alone"


# --- determinism ------------------------------------------------------------------------------

def _kernel_calls(backend: str):
    """Kernel calls of both frameworks through `backend` ("interpret", or "triton" compiled on
    a GPU), each returning arrays."""
    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 9, 3, 24)).astype(np.float32)
    k = rng.standard_normal((2, 9, 1, 24)).astype(np.float32)
    packed = rng.standard_normal((11, 2, 24)).astype(BFLOAT16)
    cu = np.array([0, 4, 4, 11], np.int32)
    ids = rng.integers(0, 20, (2, 9))
    cos, sin = table(20, 16)
    scores = rng.standard_normal((2, 3, 5, 40)).astype(np.float16)
    slopes = np.array([0.5, 0.25, 0.125], np.float32)
    inv_freq = ref.rope_inv_freq(16)
    device = "cuda" if backend == "triton" else "cpu"
    backend = dict(backend=backend)
    tq, tk, t_packed, t_scores, t_slopes = (to_torch(x, device) for x in (q, k, packed, scores, slopes))
    tq_grad = to_torch(q, device).requires_grad_()

    def torch_backward():
        out = torch_rope.rope_rotate(tq_grad, tk, inv_freq, offset=5, interleaved=True, **backend)
        (grad,) = torch.autograd.grad(out[0], tq_grad, to_torch(q, device))
        return [grad]

    return {
        "torch-rope-table": lambda: torch_rope.apply_rotary_pos_emb(
            tq, tk, to_torch(cos, device), to_torch(sin, device), torch.from_numpy(ids).to(device), **backend),
        "torch-rope-computed-packed": lambda: torch_rope.rope_rotate(
            t_packed, t_packed, inv_freq, layout="thd", cu_seqlens=torch.from_numpy(cu).to(device),
            offset=torch.tensor([100, 0, 2**20], device=device), **backend),
        "torch-rope-backward": torch_backward,
        "torch-cos-sin": lambda: torch_rope.rope_cos_sin(inv_freq, 30, offset=2**20, device=device, **backend),
        "torch-alibi": lambda: [torch_alibi.alibi_add(t_scores, t_slopes, causal=True, **backend),
                                torch_alibi.alibi_softmax(t_scores, t_slopes, scale=0.3, **backend),
                                torch_alibi.alibi_bias(t_slopes, 5, 40, q_offset=-3, **backend)],
        "jax-rope-table": lambda: jax_rope.apply_rotary_pos_emb(q, k, cos, sin, ids, **backend),
        "jax-rope-computed-packed": lambda: jax_rope.rope_rotate(
            packed, packed, inv_freq, layout="thd", cu_seqlens=cu, offset=np.array([100, 0, 2**20]), **backend),
        "jax-cos-sin": lambda: jax_rope.rope_cos_sin(inv_freq, 30, offset=2**20, **backend),
        "jax-alibi": lambda: [jax_alibi.alibi_add(scores, slopes, causal=True, **backend),
                              jax_alibi.alibi_softmax(scores, slopes, scale=0.3, **backend),
                              jax_alibi.alibi_bias(slopes, 5, 40, q_offset=-3, **backend)],
    }


def _numpy(x):
    return from_torch(x) if isinstance(x, torch.Tensor) else np.asarray(x)


KERNEL_BACKENDS = ["interpret"] + (["triton"] if HAS_CUDA and jax.default_backend() == "gpu" else [])


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(_kernel_calls("interpret")))
def test_runs_are_bit_identical(name, backend):
    """Two runs of the same call give the same bits: interpreted, and compiled on a GPU."""
    call = _kernel_calls(backend)[name]
    first, second = ([_numpy(x) for x in call()] for _ in range(2))
    for a, b in zip(first, second):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- GPU only: past 2^31 elements -----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("source", ["computed", "table"])
def test_rope_past_2_pow_31_elements(source):
    """q of 2^31 + 16384 elements (fp16, 4.3 GB): element offsets past int32 address the
    last tokens right, checked against the reference there and at the start."""
    seq, heads, head_dim = 2**17 + 1, 128, 128
    q = torch.empty(1, seq, heads, head_dim, dtype=torch.float16, device="cuda").uniform_(-1, 1)
    k = torch.empty(1, seq, 8, head_dim, dtype=torch.float16, device="cuda").uniform_(-1, 1)
    assert q.numel() > 2**31
    rope = torch_rope.FastRoPEPositionEmbedding(head_dim, max_position_embeddings=seq).cuda()
    tables = {}
    if source == "computed":
        q_rot, k_rot = rope.rotate(q, k)
    else:
        cos, sin = rope(q)
        q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)
        tables = dict(cos=from_torch(cos), sin=from_torch(sin))
    inv_freq = ref.rope_inv_freq(head_dim)
    for tokens in (slice(0, 2), slice(seq - 2, seq)):
        positions = np.arange(seq)[tokens][None]
        for x, out in ((q, q_rot), (k, k_rot)):
            expected = rotated(from_torch(x[:, tokens]), positions, inv_freq, **tables)
            assert_close(from_torch(out[:, tokens]), expected, "float16")


# --- bugs these tests found, now fixed -------------------------------------------------------

def test_strided_cu_seqlens():
    """A strided cu_seqlens tensor (e.g. cu[::2]) rotates as its contiguous copy (the kernel
    reads it at unit stride: it read wrong boundaries, out of bounds). In a subprocess: a
    regression reads memory out of bounds and may kill the process."""
    script = textwrap.dedent("""
        import torch
        from trinix import reference as ref
        from trinix.torch import rope_rotate

        torch.manual_seed(0)
        q, k = torch.randn(7, 2, 8), torch.randn(7, 1, 8)
        strided = torch.tensor([0, 99, 3, 99, 7])[::2]
        assert strided.tolist() == [0, 3, 7] and strided.stride() == (2,)
        for backend in ("interpret", "torch"):
            by_strided = rope_rotate(q, k, ref.rope_inv_freq(8), layout="thd", cu_seqlens=strided,
                                     backend=backend)
            by_contiguous = rope_rotate(q, k, ref.rope_inv_freq(8), layout="thd",
                                        cu_seqlens=strided.contiguous(), backend=backend)
            assert all(map(torch.equal, by_strided, by_contiguous)), backend
        print("same")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["same"], (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("runner", KERNEL_ROPE_RUNNERS, ids=_id)
def test_float64_cos_sin_tables_keep_float64_precision(runner):
    """The table kernel computes float64 tables in float64 (it computed in float32: ~3e-8 off)."""
    inv_freq = ref.rope_inv_freq(8)
    cos, sin = runner.cos_sin(inv_freq, 5, 1, "float64")
    expected = ref.rope_cos_sin(1 + np.arange(5), inv_freq)
    assert_close(cos, expected[0], "float64", what="cos")
    assert_close(sin, expected[1], "float64", what="sin")
