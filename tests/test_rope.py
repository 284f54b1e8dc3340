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
    # "none": s; "offset": offset + s; "batch-offsets": offsets[b] + s; "ids": position_ids
    # (batch, seq), or (tokens,) packed; "shared-ids": (1, seq)
    positions: str = "none"
    source: str = "computed"  # cos/sin "computed" in the kernel or read from a "table"
    inplace: bool = False
    noncontiguous: bool = False
    base: float = 10000.0
    rotary_dim: int | None = None  # None: head_dim
    interleaved: bool = False
    seqlens: tuple[int, ...] = ()  # lengths of the packed sequences of layout "thd"

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
    # Computing cos/sin in "bhsd", 12 heads of 64 pairs take tiles of 8 heads x 8 tokens: a
    # partial head block and a partial token block.
    RopeCase("bhsd-12-heads", 1, 19, 12, 4, 128, layout="bhsd"),
    RopeCase("shared-ids-table", 3, 20, 4, 4, 32, "float16", positions="shared-ids", source="table"),
    RopeCase("bhsd-table-fp16", 2, 40, 6, 6, 64, "float16", layout="bhsd", source="table"),
    RopeCase("noncontiguous", 2, 24, 4, 2, 32, noncontiguous=True, positions="offset"),
    RopeCase("noncontiguous-bhsd-table", 2, 24, 4, 4, 32, layout="bhsd", noncontiguous=True,
             source="table"),
    # In place, decode (seq 1 at a large offset), empty, float64, another base.
    RopeCase("inplace", 2, 30, 4, 2, 64, "float16", inplace=True, positions="ids"),
    RopeCase("inplace-table-bhsd", 2, 30, 4, 4, 64, layout="bhsd", inplace=True, source="table"),
    RopeCase("decode", 3, 1, 8, 2, 128, "bfloat16", positions="offset"),
    RopeCase("decode-batch-offsets", 3, 1, 8, 2, 64, "float16", positions="batch-offsets"),
    RopeCase("empty", 2, 0, 4, 2, 64),
    RopeCase("float64", 2, 16, 3, 1, 16, "float64", positions="ids", base=500000.0),
    # Partial rotation (GPT-NeoX, Phi: the tail passes through) and interleaved pairs (GPT-J).
    RopeCase("partial", 2, 21, 4, 2, 80, "float16", rotary_dim=20, positions="ids"),
    RopeCase("partial-table-bhsd", 2, 21, 4, 2, 72, layout="bhsd", rotary_dim=36, source="table"),
    RopeCase("partial-inplace", 2, 9, 3, 1, 64, rotary_dim=16, inplace=True, positions="offset"),
    # Tiles of whole rows (rotated and passed-through columns) over 300 tokens: 19 of q's.
    RopeCase("partial-long", 1, 300, 2, 1, 128, rotary_dim=32),
    RopeCase("interleaved", 2, 25, 4, 2, 64, "bfloat16", interleaved=True, positions="ids"),
    RopeCase("interleaved-table", 2, 25, 4, 4, 64, interleaved=True, source="table"),
    RopeCase("interleaved-partial", 1, 17, 5, 5, 96, "float16", rotary_dim=64, interleaved=True,
             positions="batch-offsets"),
    RopeCase("batch-offsets-bhsd", 3, 11, 4, 2, 32, layout="bhsd", positions="batch-offsets"),
    # Packed variable-length sequences (positions restart per sequence), one empty.
    RopeCase("packed", 4, 0, 6, 2, 64, "float16", layout="thd", seqlens=(5, 0, 37, 9)),
    RopeCase("packed-table", 3, 0, 4, 4, 32, layout="thd", seqlens=(3, 20, 1), source="table"),
    RopeCase("packed-offsets", 3, 0, 4, 2, 32, "bfloat16", layout="thd", seqlens=(3, 20, 1),
             positions="batch-offsets"),
    RopeCase("packed-ids-partial", 2, 0, 4, 1, 48, "bfloat16", layout="thd", seqlens=(8, 13),
             positions="ids", rotary_dim=16),
    RopeCase("packed-inplace-interleaved", 2, 0, 4, 2, 32, layout="thd", seqlens=(6, 10),
             positions="offset", interleaved=True, inplace=True),
]


@dataclasses.dataclass
class RopeInputs:
    """A case's inputs, and the position of every token the reference needs."""

    q: np.ndarray
    k: np.ndarray
    inv_freq: np.ndarray
    cos: np.ndarray | None
    sin: np.ndarray | None
    positions: np.ndarray | None
    offset: int | np.ndarray
    cu_seqlens: np.ndarray | None
    token_positions: np.ndarray  # (batch or 1, seq), or (tokens,) packed

    def rope_kwargs(self, case: RopeCase) -> dict:
        """What a runner's apply / apply_vjp takes besides q and k."""
        return dict(cos=self.cos, sin=self.sin, inv_freq=self.inv_freq, positions=self.positions,
                    offset=self.offset, layout=case.layout, interleaved=case.interleaved,
                    cu_seqlens=self.cu_seqlens)


def _inputs(case: RopeCase, seed: int = 0) -> RopeInputs:
    """q, k in the case's dtype and layout, its positions and (for tables) cos/sin."""
    rng = np.random.default_rng(seed)
    dtype = NUMPY_DTYPES[case.dtype]
    packed = case.layout == "thd"
    tokens = sum(case.seqlens)

    def heads(n):
        shape = {"bshd": (case.batch, case.seq, n, case.head_dim),
                 "bhsd": (case.batch, n, case.seq, case.head_dim),
                 "thd": (tokens, n, case.head_dim)}[case.layout]
        return rng.standard_normal(shape).astype(dtype)

    q, k = heads(case.heads_q), heads(case.heads_k)
    cu_seqlens = np.cumsum((0, *case.seqlens)).astype(np.int32) if packed else None
    # Position of each token within its sequence.
    if packed:
        index = np.concatenate([np.arange(n) for n in case.seqlens]).astype(np.int64)
        sequence = np.repeat(np.arange(case.batch), case.seqlens)
    else:
        index, sequence = np.arange(case.seq)[None], np.arange(case.batch)[:, None]
    offset, positions, token_positions = 0, None, index
    if case.positions == "offset":
        offset = 1000
        token_positions = index + offset
    elif case.positions == "batch-offsets":
        offset = rng.integers(0, 500, size=case.batch).astype(np.int64)
        token_positions = index + offset[sequence]
    elif case.positions in ("ids", "shared-ids"):  # repeats and gaps, in no order
        shape = (tokens,) if packed else (case.batch if case.positions == "ids" else 1, case.seq)
        positions = rng.integers(0, 3 * max(case.seq, tokens, 1), size=shape).astype(np.int64)
        token_positions = positions
    inv_freq = ref.rope_inv_freq(case.rotary_dim or case.head_dim, case.base)
    cos = sin = None
    if case.source == "table":
        rows = int(np.max(token_positions, initial=0)) + 1
        tables = ref.rope_cos_sin(np.arange(rows), inv_freq, interleaved=case.interleaved)
        cos, sin = (t.astype(dtype) for t in tables)
    return RopeInputs(q, k, inv_freq, cos, sin, positions, offset, cu_seqlens,
                      np.broadcast_to(token_positions, token_positions.shape))


def _expected(case, x, inputs: RopeInputs, transpose=False):
    """Reference rotation (or its VJP) of x, float64, in the case's layout."""
    positions = inputs.token_positions
    if inputs.cos is None:
        c, s = ref.rope_cos_sin(positions, inputs.inv_freq, interleaved=case.interleaved)
    else:
        c, s = inputs.cos.astype(np.float64)[positions], inputs.sin.astype(np.float64)[positions]
    axis = 2 if case.layout == "bshd" else 1  # heads axis, where cos/sin broadcast
    c, s = np.expand_dims(c, axis), np.expand_dims(s, axis)
    x = x.astype(np.float64)
    rotate = ref.rope_rotate_vjp if transpose else ref.rope_rotate
    return rotate(x, c, s, interleaved=case.interleaved)


def assert_close(actual, expected, dtype, extra_atol=0.0, what="output"):
    atol, rtol = TOLERANCES[dtype]
    actual = np.asarray(actual).astype(np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    error = np.abs(actual - expected) - (atol + extra_atol + rtol * np.abs(expected))
    worst = np.unravel_index(np.argmax(error), error.shape) if error.size else None
    assert error.size == 0 or error.max() <= 0, (
        f"{what}: max excess error {error.max():.3g} at {worst}: {actual[worst]} vs {expected[worst]}")


def _angle_atol(runner, case, inputs: RopeInputs, x):
    """Paths that form angles in float32 (XLA) lose about |position| * 2^-24 of a turn."""
    if not getattr(runner, "float32_angles", False) or case.source == "table" or x.size == 0:
        return 0.0
    turns = np.abs(inputs.token_positions).max(initial=0) * inputs.inv_freq.max() / (2 * np.pi)
    return 4 * 2 * np.pi * turns * 2.0 ** -24 * np.abs(x.astype(np.float64)).max()


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rotation_matches_reference(case, runner):
    inputs = _inputs(case)
    q_rot, k_rot = runner.apply(inputs.q, inputs.k, inplace=case.inplace,
                                noncontiguous=case.noncontiguous, **inputs.rope_kwargs(case))
    for name, x, out in (("q", inputs.q, q_rot), ("k", inputs.k, k_rot)):
        assert out.dtype == x.dtype, f"{name}: dtype {out.dtype} != input {x.dtype}"
        extra = _angle_atol(runner, case, inputs, x)
        assert_close(out, _expected(case, x, inputs), case.dtype, extra, name)


GRAD_CASES = [c for c in CASES if c.name in
              ("small-fp16", "odd-fp32-table", "odd-bf16-ids", "mqa-8-1-table", "bhsd", "float64",
               "partial-table-bhsd", "interleaved-partial", "packed-table", "packed-offsets", "packed-ids-partial")]


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_backward_matches_reference_vjp(case, runner):
    inputs = _inputs(case)
    rng = np.random.default_rng(1)
    grad_q = rng.standard_normal(inputs.q.shape).astype(inputs.q.dtype)
    grad_k = rng.standard_normal(inputs.k.shape).astype(inputs.k.dtype)
    dq, dk = runner.apply_vjp(inputs.q, inputs.k, grad_q, grad_k, **inputs.rope_kwargs(case))
    for name, g, out in (("dq", grad_q, dq), ("dk", grad_k, dk)):
        extra = _angle_atol(runner, case, inputs, g)
        assert_close(out, _expected(case, g, inputs, transpose=True), case.dtype, extra, name)


@pytest.mark.parametrize("runner", RUNNERS, ids=lambda r: f"{r.framework}-{r.backend}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("seq_len, offset, dim, interleaved, factor", [
    (100, 0, 64, False, 1.0), (37, 5000, 72, False, 1.0), (0, 0, 64, False, 1.0),
    (50, 3, 32, True, 1.0), (20, 7, 16, False, 1.25)])
def test_cos_sin_tables_match_reference(runner, dtype, seq_len, offset, dim, interleaved, factor):
    inv_freq = ref.rope_inv_freq(dim, 10000.0)
    cos, sin = runner.cos_sin(inv_freq, seq_len, offset, dtype, interleaved, factor)
    ref_cos, ref_sin = ref.rope_cos_sin(offset + np.arange(seq_len), inv_freq, interleaved=interleaved,
                                        attention_factor=factor)
    extra = 0.0
    if getattr(runner, "float32_angles", False):
        extra = 4 * (offset + seq_len) * inv_freq.max() * 2.0 ** -24
    for name, out, expected in (("cos", cos, ref_cos), ("sin", sin, ref_sin)):
        assert out.dtype == NUMPY_DTYPES[dtype], f"{name} dtype {out.dtype}"
        assert_close(out, expected, dtype, extra, name)


PARITY_CASES = [c for c in CASES if c.name in ("odd-fp32-table", "odd-bf16-ids", "bhsd", "decode",
                                               "interleaved-partial", "packed")]


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
    inputs = _inputs(case)
    for runners in pairs:
        outs = [runner.apply(inputs.q, inputs.k, **inputs.rope_kwargs(case)) for runner in runners]
        for out in outs[1:]:
            for a, b in zip(outs[0], out):
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
                    f"{runners[0].framework} and the other framework differ on {runners[0].backend}")
