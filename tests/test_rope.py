"""The RoPE case matrix: every case through every runner, against trinix.reference."""

import dataclasses

import numpy as np
import pytest

from tests.runners import BFLOAT16, rope_runners
from trinix import reference as ref

RUNNERS = rope_runners()
NUMPY_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BFLOAT16,
                "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
# |out - ref| <= ATOL + RTOL * |ref|: a few roundings of the output dtype.
TOLERANCES = {"float16": (2e-3, 2e-3), "bfloat16": (2e-2, 1.6e-2), "float32": (2e-6, 2e-6),
              "float64": (1e-9, 1e-9)}


@dataclasses.dataclass(frozen=True)
class RopeCase:
    name: str
    batch: int
    seq: int
    heads_q: int
    heads_k: int
    head_dim: int
    dtype: str = "float32"
    layout: str = "bshd"
    # "none": s; "offset": offset + s; "ids": position_ids (batch, seq); "shared-ids": (1, seq)
    positions: str = "none"
    source: str = "computed"  # cos/sin "computed" in the kernel or read from a "table"
    inplace: bool = False
    noncontiguous: bool = False
    base: float = 10000.0

    def __str__(self):
        return self.name


CASES = [
    # The seed's four configurations, scaled down to interpreter-sized grids.
    RopeCase("small-fp16", 2, 64, 4, 4, 64, "float16"),
    RopeCase("medium-fp16-table", 2, 128, 8, 8, 128, "float16", source="table"),
    RopeCase("large-bf16", 1, 256, 8, 8, 128, "bfloat16", positions="offset"),
    RopeCase("xl-fp16-table-ids", 1, 512, 4, 4, 128, "float16", positions="ids", source="table"),
    # Odd sizes: masks on every axis.
    RopeCase("odd-fp32", 3, 217, 7, 7, 72),
    RopeCase("odd-fp32-table", 3, 217, 7, 7, 72, source="table"),
    RopeCase("odd-bf16-ids", 2, 19, 7, 3, 72, "bfloat16", positions="ids"),
    # GQA / MQA: k with fewer heads, one launch.
    RopeCase("gqa-8-2", 2, 33, 8, 2, 64, "float16"),
    RopeCase("mqa-8-1-table", 2, 33, 8, 1, 64, "bfloat16", source="table", positions="ids"),
    # transformers' layout and strided inputs, no copies.
    RopeCase("bhsd", 2, 40, 6, 2, 64, layout="bhsd", positions="ids"),
    RopeCase("bhsd-shared-ids", 2, 40, 6, 2, 64, layout="bhsd", positions="shared-ids"),
    RopeCase("shared-ids-table", 3, 20, 4, 4, 32, "float16", positions="shared-ids", source="table"),
    RopeCase("bhsd-table-fp16", 2, 40, 6, 6, 64, "float16", layout="bhsd", source="table"),
    RopeCase("noncontiguous", 2, 24, 4, 2, 32, noncontiguous=True, positions="offset"),
    RopeCase("noncontiguous-bhsd-table", 2, 24, 4, 4, 32, layout="bhsd", noncontiguous=True,
             source="table"),
    # In place, decode (seq 1 at a large offset), empty, float64, another base.
    RopeCase("inplace", 2, 30, 4, 2, 64, "float16", inplace=True, positions="ids"),
    RopeCase("inplace-table-bhsd", 2, 30, 4, 4, 64, layout="bhsd", inplace=True, source="table"),
    RopeCase("decode", 3, 1, 8, 2, 128, "bfloat16", positions="offset"),
    RopeCase("empty", 2, 0, 4, 2, 64),
    RopeCase("float64", 2, 16, 3, 1, 16, "float64", positions="ids", base=500000.0),
]


def _inputs(case: RopeCase, seed: int = 0):
    """q, k in the case's dtype and layout, positions, offset and (for tables) cos/sin."""
    rng = np.random.default_rng(seed)
    dtype = NUMPY_DTYPES[case.dtype]

    def heads(n):
        shape = (case.batch, case.seq, n, case.head_dim)
        if case.layout == "bhsd":
            shape = (case.batch, n, case.seq, case.head_dim)
        return rng.standard_normal(shape).astype(dtype)

    q, k = heads(case.heads_q), heads(case.heads_k)
    offset = 1000 if case.positions == "offset" else 0
    positions = None
    if case.positions in ("ids", "shared-ids"):  # repeats and gaps, in no order
        batch = case.batch if case.positions == "ids" else 1
        positions = rng.integers(0, 3 * max(case.seq, 1), size=(batch, case.seq)).astype(np.int64)
    token_positions = positions if positions is not None else offset + np.arange(case.seq)[None]
    inv_freq = ref.rope_inv_freq(case.head_dim, case.base)
    cos = sin = None
    if case.source == "table":
        rows = int(token_positions.max(initial=0)) + 1
        cos, sin = (t.astype(dtype) for t in ref.rope_cos_sin(np.arange(rows), inv_freq))
    return q, k, inv_freq, positions, offset, cos, sin, token_positions


def _expected(case, x, inv_freq, cos, sin, token_positions, transpose=False):
    """Reference rotation (or its VJP) of x, float64, in the case's layout."""
    if cos is None:
        c, s = ref.rope_cos_sin(token_positions, inv_freq)
    else:
        c, s = cos.astype(np.float64)[token_positions], sin.astype(np.float64)[token_positions]
    axis = 2 if case.layout == "bshd" else 1  # heads axis, where cos/sin broadcast
    c, s = np.expand_dims(c, axis), np.expand_dims(s, axis)
    x = x.astype(np.float64)
    return ref.rope_rotate_vjp(x, c, s) if transpose else ref.rope_rotate(x, c, s)


def assert_close(actual, expected, dtype, extra_atol=0.0, what="output"):
    atol, rtol = TOLERANCES[dtype]
    actual = np.asarray(actual).astype(np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    error = np.abs(actual - expected) - (atol + extra_atol + rtol * np.abs(expected))
    worst = np.unravel_index(np.argmax(error), error.shape) if error.size else None
    assert error.size == 0 or error.max() <= 0, (
        f"{what}: max excess error {error.max():.3g} at {worst}: {actual[worst]} vs {expected[worst]}")


def _angle_atol(runner, case, inv_freq, token_positions, x):
    """Paths that form angles in float32 (XLA) lose about |position| * 2^-24 of a turn."""
    if not getattr(runner, "float32_angles", False) or case.source == "table" or x.size == 0:
        return 0.0
    turns = np.abs(token_positions).max() * inv_freq.max() / (2 * np.pi)
    return 4 * 2 * np.pi * turns * 2.0 ** -24 * np.abs(x.astype(np.float64)).max()


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rotation_matches_reference(case, runner):
    q, k, inv_freq, positions, offset, cos, sin, token_positions = _inputs(case)
    q_rot, k_rot = runner.apply(q, k, cos=cos, sin=sin, inv_freq=inv_freq, positions=positions,
                                offset=offset, layout=case.layout, inplace=case.inplace,
                                noncontiguous=case.noncontiguous)
    for name, x, out in (("q", q, q_rot), ("k", k, k_rot)):
        assert out.dtype == x.dtype, f"{name}: dtype {out.dtype} != input {x.dtype}"
        extra = _angle_atol(runner, case, inv_freq, token_positions, x)
        assert_close(out, _expected(case, x, inv_freq, cos, sin, token_positions), case.dtype, extra, name)


GRAD_CASES = [c for c in CASES if c.name in
              ("small-fp16", "odd-fp32-table", "odd-bf16-ids", "mqa-8-1-table", "bhsd", "float64")]


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_backward_matches_reference_vjp(case, runner):
    q, k, inv_freq, positions, offset, cos, sin, token_positions = _inputs(case)
    rng = np.random.default_rng(1)
    grad_q = rng.standard_normal(q.shape).astype(q.dtype)
    grad_k = rng.standard_normal(k.shape).astype(k.dtype)
    dq, dk = runner.apply_vjp(q, k, grad_q, grad_k, cos=cos, sin=sin, inv_freq=inv_freq,
                              positions=positions, offset=offset, layout=case.layout)
    for name, g, x, out in (("dq", grad_q, q, dq), ("dk", grad_k, k, dk)):
        extra = _angle_atol(runner, case, inv_freq, token_positions, g)
        expected = _expected(case, g, inv_freq, cos, sin, token_positions, transpose=True)
        assert_close(out, expected, case.dtype, extra, name)


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("seq_len, offset, dim", [(100, 0, 64), (37, 5000, 72), (0, 0, 64)])
def test_cos_sin_tables_match_reference(runner, dtype, seq_len, offset, dim):
    inv_freq = ref.rope_inv_freq(dim, 10000.0)
    cos, sin = runner.cos_sin(inv_freq, seq_len, offset, dtype)
    ref_cos, ref_sin = ref.rope_cos_sin(offset + np.arange(seq_len), inv_freq)
    extra = 0.0
    if getattr(runner, "float32_angles", False):
        extra = 4 * (offset + seq_len) * inv_freq.max() * 2.0 ** -24
    for name, out, expected in (("cos", cos, ref_cos), ("sin", sin, ref_sin)):
        assert out.dtype == NUMPY_DTYPES[dtype], f"{name} dtype {out.dtype}"
        assert_close(out, expected, dtype, extra, name)


PARITY_CASES = [c for c in CASES if c.name in ("odd-fp32-table", "odd-bf16-ids", "bhsd", "decode")]


@pytest.mark.parametrize("case", PARITY_CASES, ids=str)
def test_same_kernel_is_bit_identical_across_frameworks(case):
    """torch and jax launch the same kernel source: their outputs agree bit for bit."""
    kernels = [r for r in RUNNERS if r.backend in ("interpret", "triton")]
    by_backend = {}
    for runner in kernels:
        by_backend.setdefault(runner.backend, []).append(runner)
    pairs = [rs for rs in by_backend.values() if len({r.framework for r in rs}) > 1]
    if not pairs:
        pytest.skip("needs the same kernel backend in two frameworks")
    q, k, inv_freq, positions, offset, cos, sin, _ = _inputs(case)
    for runners in pairs:
        outs = [runner.apply(q, k, cos=cos, sin=sin, inv_freq=inv_freq, positions=positions,
                             offset=offset, layout=case.layout) for runner in runners]
        for out in outs[1:]:
            for a, b in zip(outs[0], out):
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
                    f"{runners[0].framework} and the other framework differ on {runners[0].backend}")
