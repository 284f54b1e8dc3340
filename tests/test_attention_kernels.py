"""Attention kernels (kernels/attention.py), forward and backward, launched through Triton's
interpreter on CPU tensors and compared with trinix.reference in float64; the builders'
refusals; and the kernels compiled offline for sm_90.

Cases are sized by their grid (the interpreter costs a few ms per program): 16 x 16 tiles
(the builders' `tiles`) over sequences of a few dozen tokens.
"""

import dataclasses

import numpy as np
import pytest
import torch

from tests.test_compiled_code import SM90_SHARED_BYTES, compiled
from trinix import reference as ref
from trinix.attention import run_backward, run_forward
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix.kernels.call import Operand, row_major_strides
from trinix.torch.launcher import DTYPES, launch, operand

TEST_TILES = (16, 16, 4, 1)
# |out - ref| <= ATOL * max(1, max|ref|) + RTOL * |ref|. Low precision: the probabilities are
# rounded to the input dtype before their product with v (as FlashAttention-2 does). float64:
# the LSE is float32, and the backward's probabilities are recomputed from it.
TOLERANCES = {"float16": (4e-3, 4e-3), "bfloat16": (3e-2, 3e-2), "float32": (2e-5, 2e-5),
              "float64": (2e-6, 2e-6)}
GRAD_TOLERANCES = {"float16": (1e-2, 1e-2), "bfloat16": (6e-2, 6e-2), "float32": (5e-5, 5e-5),
                   "float64": (5e-6, 5e-6)}


@dataclasses.dataclass(frozen=True)
class Case:
    seqlen_q: int
    seqlen_k: int
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 32
    dtype: str = "float32"
    alibi: str = "none"
    causal: bool | None = None
    q_offset: int | None = None
    layout: str = "bshd"
    batch: int = 1
    batch_slopes: bool = False  # slopes (batch, heads) rather than (heads,)
    strided: bool = False       # q, k, v views of the other layout's memory (no copy)
    tiles: tuple[int, int, int, int] | None = TEST_TILES
    key_splits: int | None = None  # forced (flash-decoding); None: the builder's rule

    @property
    def name(self) -> str:
        fields = dataclasses.asdict(self)
        return "-".join(f"{key}={value}" for key, value in fields.items()
                        if value != type(self).__dataclass_fields__[key].default or key in ("seqlen_q", "seqlen_k"))


CASES = [
    Case(40, 40, dtype="float64"),
    Case(40, 40, alibi="symmetric"),
    Case(33, 50, kv_heads=1, alibi="causal"),                        # MQA, fewer queries than keys
    Case(50, 30, heads=4, kv_heads=2, dtype="float16", alibi="causal", batch=2),  # GQA; 20 rows see no key
    Case(24, 40, head_dim=64, dtype="bfloat16", alibi="symmetric", q_offset=7, strided=True),
    Case(40, 24, alibi="symmetric", causal=True, q_offset=-5),       # symmetric bias under a causal mask
    Case(40, 40, kv_heads=1, dtype="float64", causal=True),          # causal, no bias
    Case(30, 45, head_dim=64, dtype="float16", alibi="causal", q_offset=20, layout="bhsd", strided=True),
    Case(20, 28, alibi="causal", layout="bhsd", batch=2, batch_slopes=True),
    Case(20, 20, heads=1, kv_heads=1, head_dim=72, alibi="symmetric"),  # head_dim padded to 128
    Case(64, 64, head_dim=64, dtype="float16", alibi="symmetric", tiles=None),  # the tile table
    # Keys split over programs, 32 each, merged by the combine kernel: decode and a few queries.
    Case(1, 80, heads=4, kv_heads=2, dtype="float16", alibi="causal", batch=2, key_splits=3),
    Case(3, 80, alibi="symmetric", key_splits=3, layout="bhsd", strided=True),
    Case(20, 80, alibi="causal", q_offset=10, key_splits=3),  # splits 2 and 3 hidden from every row
    Case(1, 130, dtype="float64", causal=True, key_splits=None),  # the rule splits 9 key tiles in 2
]


def assert_close(actual: torch.Tensor, expected: np.ndarray, tolerances, what: str) -> None:
    actual = actual.double().numpy()
    assert not np.isnan(actual).any(), f"{what}: NaN"
    atol, rtol = tolerances
    bound = atol * max(1.0, float(np.abs(expected).max(initial=0.0))) + rtol * np.abs(expected)
    error = np.abs(actual - expected)
    assert (error <= bound).all(), f"{what}: max error {error.max():.3g}, bound {bound.max():.3g}"


def assert_lse_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    """Equal infinities (rows with no visible key: -inf) and finite values to float32."""
    actual = actual.double().numpy()
    assert np.array_equal(np.isneginf(actual), np.isneginf(expected)) and not np.isnan(actual).any()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=2e-6, atol=2e-5)


def _tensor(bshd: np.ndarray, dtype: str, layout: str, strided: bool) -> torch.Tensor:
    """`bshd` (batch, seq, heads, head_dim) in `layout`; `strided`: a view of the other layout's
    contiguous memory, so that the kernel sees non-contiguous strides."""
    tensor = torch.from_numpy(bshd).to(DTYPES[dtype])
    if layout == "bhsd":
        return tensor.contiguous().transpose(1, 2) if strided else tensor.transpose(1, 2).contiguous()
    return tensor.transpose(1, 2).contiguous().transpose(1, 2) if strided else tensor.contiguous()


def _bshd(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    return tensor.transpose(1, 2) if layout == "bhsd" else tensor


def _rounded(shape, dtype: str, rng) -> np.ndarray:
    """Standard normal float64 values that the dtype holds exactly."""
    return torch.from_numpy(rng.standard_normal(shape)).to(DTYPES[dtype]).double().numpy()


def _slopes(heads: int, batch: int | None = None) -> np.ndarray:
    """float32 slopes, different per batch row when `batch` is given."""
    slopes = ref.alibi_slopes(heads, max_bias=4.0).astype(np.float32)
    return slopes if batch is None else np.stack([slopes * (1 + b) for b in range(batch)])


def _options(case: Case) -> dict:
    return dict(alibi=case.alibi, causal=case.causal, q_offset=case.q_offset)


def launch_forward_backward(arrays: dict, options: dict):
    """(o, lse, dq, dk, dv) of the kernels launched on `arrays` ("q", "k", "v", "do",
    "slopes" and any cu_seqlens) with the builders' `options`."""
    q, k, v, do, slopes = (operand(arrays[name]) for name in ("q", "k", "v", "do", "slopes"))
    key_splits = options.pop("key_splits", None)
    o, lse = run_forward(attention_fwd_calls(q, k, v, slopes, **options, key_splits=key_splits), arrays,
                         lambda call, named: launch(call, named, interpret=True))
    arrays = dict(arrays, o=o, lse=lse)
    dq, dk, dv = run_backward(attention_bwd_calls(q, k, v, operand(o), do, slopes, **options), arrays,
                              lambda call, named: launch(call, named, interpret=True))
    return o, lse, dq, dk, dv


def run_case(case: Case):
    """(kernel results, reference results): (o, lse, dq, dk, dv), o and gradients as BSHD."""
    rng = np.random.default_rng(0)
    q_np = _rounded((case.batch, case.seqlen_q, case.heads, case.head_dim), case.dtype, rng)
    k_np = _rounded((case.batch, case.seqlen_k, case.kv_heads, case.head_dim), case.dtype, rng)
    v_np = _rounded((case.batch, case.seqlen_k, case.kv_heads, case.head_dim), case.dtype, rng)
    do_np = _rounded(q_np.shape, case.dtype, rng)
    slopes_np = None if case.alibi == "none" else _slopes(case.heads, case.batch if case.batch_slopes else None)
    arrays = {name: _tensor(value, case.dtype, case.layout, case.strided)
              for name, value in dict(q=q_np, k=k_np, v=v_np, do=do_np).items()}
    arrays["slopes"] = None if slopes_np is None else torch.from_numpy(slopes_np)
    options = dict(_options(case), layout=case.layout, tiles=case.tiles, key_splits=case.key_splits)
    o, lse, dq, dk, dv = launch_forward_backward(arrays, options)

    expected_o, expected_lse = ref.attention(q_np, k_np, v_np, slopes_np, **_options(case))
    expected_grads = ref.attention_vjp(q_np, k_np, v_np, do_np, slopes_np, **_options(case))
    actual = (_bshd(o, case.layout), lse, *(_bshd(grad, case.layout) for grad in (dq, dk, dv)))
    return actual, (expected_o, expected_lse, *expected_grads)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_forward_and_backward_match_reference(case):
    (o, lse, dq, dk, dv), (expected_o, expected_lse, *expected_grads) = run_case(case)
    assert o.dtype == DTYPES[case.dtype] and lse.dtype == torch.float32
    assert_close(o, expected_o, TOLERANCES[case.dtype], "o")
    assert_lse_close(lse, expected_lse)
    for name, grad, expected in zip(("dq", "dk", "dv"), (dq, dk, dv), expected_grads):
        assert grad.dtype == DTYPES[case.dtype]
        assert_close(grad, expected, GRAD_TOLERANCES[case.dtype], name)


def test_rows_with_no_visible_key_are_zero():
    """Queries 0 .. 9 sit before every key (q_offset -10): output 0, LSE -inf, no gradient."""
    case = Case(24, 20, alibi="causal", q_offset=-10, dtype="float64")
    (o, lse, dq, dk, dv), expected = run_case(case)
    assert (o[:, :10] == 0).all() and (dq[:, :10] == 0).all() and torch.isneginf(lse[..., :10]).all()
    assert not torch.isnan(torch.cat([o.flatten(), dq.flatten(), dk.flatten(), dv.flatten()])).any()
    assert_close(dk, expected[3], GRAD_TOLERANCES["float64"], "dk")


PACKED_CU_SEQLENS_Q = [0, 5, 37, 50]
PACKED_CU_SEQLENS_K = [0, 17, 30, 70]  # the middle sequence has more queries than keys


@pytest.mark.parametrize("alibi, q_offset, dtype, batch_slopes", [
    ("causal", None, "float32", True),
    ("symmetric", 3, "float64", False),
], ids=["causal-default-offset", "symmetric-offset-3"])
def test_packed_sequences_match_per_sequence_reference(alibi, q_offset, dtype, batch_slopes):
    rng = np.random.default_rng(1)
    heads, kv_heads, head_dim = 2, 1, 32
    tokens_q, tokens_k = PACKED_CU_SEQLENS_Q[-1], PACKED_CU_SEQLENS_K[-1]
    n_seqs = len(PACKED_CU_SEQLENS_Q) - 1
    q_np = _rounded((tokens_q, heads, head_dim), dtype, rng)
    k_np = _rounded((tokens_k, kv_heads, head_dim), dtype, rng)
    v_np = _rounded((tokens_k, kv_heads, head_dim), dtype, rng)
    do_np = _rounded(q_np.shape, dtype, rng)
    slopes_np = _slopes(heads, n_seqs if batch_slopes else None)
    cu_q, cu_k = (torch.tensor(cu, dtype=torch.int32) for cu in (PACKED_CU_SEQLENS_Q, PACKED_CU_SEQLENS_K))
    arrays = dict(q=torch.from_numpy(q_np).to(DTYPES[dtype]), k=torch.from_numpy(k_np).to(DTYPES[dtype]),
                  v=torch.from_numpy(v_np).to(DTYPES[dtype]), do=torch.from_numpy(do_np).to(DTYPES[dtype]),
                  slopes=torch.from_numpy(slopes_np), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    max_q, max_k = (max(np.diff(cu)) for cu in (PACKED_CU_SEQLENS_Q, PACKED_CU_SEQLENS_K))
    options = dict(alibi=alibi, q_offset=q_offset, layout="thd", cu_seqlens_q=operand(cu_q),
                   cu_seqlens_k=operand(cu_k), max_seqlen_q=int(max_q), max_seqlen_k=int(max_k),
                   tiles=TEST_TILES)
    o, lse, dq, dk, dv = launch_forward_backward(arrays, options)

    packed = (PACKED_CU_SEQLENS_Q, PACKED_CU_SEQLENS_K, slopes_np)
    expected_o, expected_lse = ref.attention_packed(q_np, k_np, v_np, *packed, alibi=alibi, q_offset=q_offset)
    assert_close(o, expected_o, TOLERANCES[dtype], "o")
    assert_lse_close(lse, expected_lse)
    expected_grads = ref.attention_packed_vjp(q_np, k_np, v_np, do_np, *packed, alibi=alibi, q_offset=q_offset)
    for name, grad, expected in zip(("dq", "dk", "dv"), (dq, dk, dv), expected_grads):
        assert_close(grad, expected, GRAD_TOLERANCES[dtype], name)


def test_launches_are_deterministic():
    """No atomics: two launches of each kernel agree bit for bit."""
    case = Case(40, 40, heads=4, kv_heads=2, dtype="float16", alibi="causal")
    first, _ = run_case(case)
    second, _ = run_case(case)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# --- Refused inputs -----------------------------------------------------------------------------

def _op(shape, dtype="float16") -> Operand:
    return Operand(shape, row_major_strides(shape), dtype)


Q = _op((2, 16, 4, 64))
KV = _op((2, 16, 2, 64))
SLOPES = _op((4,), "float32")
CU = _op((3,), "int32")


@pytest.mark.parametrize("arguments, options, error, names", [
    ((Q, _op((2, 16, 3, 64)), _op((2, 16, 3, 64))), {}, ValueError, "heads"),
    ((Q, _op((2, 16, 2, 32)), _op((2, 16, 2, 32))), {}, ValueError, "head_dim"),
    ((_op((2, 16, 4, 256)), _op((2, 16, 2, 256)), _op((2, 16, 2, 256))), {}, ValueError, "head_dim"),
    ((Q, _op((2, 16, 2, 64), "bfloat16"), KV), {}, TypeError, "k must have q.s dtype"),
    ((Q, KV, _op((2, 16, 1, 64))), {}, ValueError, "k and v must have the same shape"),
    ((Q, KV, KV, _op((3,), "float32")), dict(alibi="symmetric"), ValueError, "slopes"),
    ((Q, KV, KV, _op((4,), "float16")), dict(alibi="symmetric"), TypeError, "slopes"),
    ((Q, KV, KV), dict(alibi="causal"), ValueError, "slopes"),
    ((Q, KV, KV, SLOPES), dict(alibi="causal", causal=False), ValueError, "causal"),
    ((Q, KV, KV, SLOPES), dict(alibi="linear"), ValueError, "alibi"),
    ((_op((40, 4, 64)), _op((40, 2, 64)), _op((40, 2, 64))),
     dict(layout="thd", cu_seqlens_q=_op((3,), "int64"), cu_seqlens_k=CU, max_seqlen_q=20, max_seqlen_k=20),
     TypeError, "cu_seqlens_q"),
    ((_op((40, 4, 64)), _op((40, 2, 64)), _op((40, 2, 64))),
     dict(layout="thd", cu_seqlens_q=CU, cu_seqlens_k=_op((4,), "int32"), max_seqlen_q=20, max_seqlen_k=20),
     ValueError, "cu_seqlens_k"),
    ((_op((40, 4, 64)), _op((40, 2, 64)), _op((40, 2, 64))),
     dict(layout="thd", cu_seqlens_q=CU, cu_seqlens_k=CU), ValueError, "max_seqlen_q"),
    ((Q, KV, KV), dict(layout="thd"), ValueError, "layout"),
    ((Q, KV, KV), dict(q_offset=1.5), TypeError, "q_offset"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_builders_refuse_bad_inputs_naming_the_argument(arguments, options, error, names):
    with pytest.raises(error, match=names):
        attention_fwd_calls(*arguments, **options)
    with pytest.raises(error, match=names):
        attention_bwd_calls(*arguments[:3], arguments[0], arguments[0], *arguments[3:], **options)


@pytest.mark.parametrize("key_splits", [0, 2.0, True])
def test_forward_refuses_bad_key_splits(key_splits):
    with pytest.raises(ValueError, match="key_splits"):
        attention_fwd_calls(Q, KV, KV, key_splits=key_splits)


def test_keys_are_split_only_when_the_grid_would_not_fill_the_gpu():
    """Decode (one query per sequence) splits its keys; a long prefill, packed sequences never."""
    def launches(seqlen_q, seqlen_k, batch=1, heads=8, **options):
        return len(attention_fwd_calls(_op((batch, seqlen_q, heads, 128)), _op((batch, seqlen_k, heads, 128)),
                                       _op((batch, seqlen_k, heads, 128)), **options))
    assert launches(1, 8192) == 2 and launches(4, 8192, batch=4) == 2
    assert launches(8192, 8192) == 1 and launches(1, 8192, batch=64, heads=32) == 1
    assert launches(1, 64) == 1  # too few key tiles to share
    cu = _op((3,), "int32")
    assert len(attention_fwd_calls(_op((2, 8, 128)), _op((8192, 8, 128)), _op((8192, 8, 128)), layout="thd",
                                   cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=1, max_seqlen_k=8192)) == 1


def test_backward_refuses_a_gradient_unlike_q():
    with pytest.raises(ValueError, match="do"):
        attention_bwd_calls(Q, KV, KV, Q, _op((2, 16, 4, 32)))


# --- Compiled for sm_90 -------------------------------------------------------------------------

COMPILE_DTYPES = {"q": None, "k": None, "v": None, "o": None, "do": None, "lse": "float32", "delta": "float32",
                  "lse_base2": "float32", "slopes": "float32", "cu_seqlens_q": "int32", "cu_seqlens_k": "int32"}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernels_compile_for_sm90_with_tensor_cores_within_shared_memory(head_dim, dtype):
    """Causal ALiBi with GQA, the table's tiles: every kernel fits an H100's shared memory, and
    its products run on tensor cores (wgmma, or mma)."""
    q = _op((2, 4096, 8, head_dim), dtype)  # enough query tiles to fill the GPU: one forward launch
    kv = _op((2, 4096, 2, head_dim), dtype)
    slopes = _op((8,), "float32")
    dtypes = {name: value or dtype for name, value in COMPILE_DTYPES.items()}
    preprocess, dkdv, dq = attention_bwd_calls(q, kv, kv, q, q, slopes, alibi="causal")
    (forward,) = attention_fwd_calls(q, kv, kv, slopes, alibi="causal")
    for call in (forward, dkdv, dq):
        assert call.constexprs["ALIGNED"]
        kernel = compiled(call, dtypes, "triton")
        assert kernel.metadata.shared <= SM90_SHARED_BYTES
        assert "wgmma" in kernel.asm["ptx"] or "mma" in kernel.asm["ttgir"]
    assert compiled(preprocess, dtypes, "triton").metadata.shared <= SM90_SHARED_BYTES


@pytest.mark.parametrize("head_dim", [64, 128])
def test_split_decode_kernels_compile_for_sm90(head_dim):
    """The decode tiles and the combine kernel, causal ALiBi: within shared memory, products on
    tensor cores."""
    q, kv = _op((4, 1, 16, head_dim), "float16"), _op((4, 8192, 16, head_dim), "float16")
    dtypes = {name: value or "float16" for name, value in COMPILE_DTYPES.items()}
    forward, combine = attention_fwd_calls(q, kv, kv, _op((16,), "float32"), alibi="causal")
    kernel = compiled(forward, dtypes, "triton")
    assert kernel.metadata.shared <= SM90_SHARED_BYTES and "mma" in kernel.asm["ttgir"]
    assert compiled(combine, {"o_splits": "float32", "lse_splits": "float32"}, "triton").metadata.shared \
        <= SM90_SHARED_BYTES


def test_packed_kernels_compile_for_sm90():
    """Packed sequences (int32 cu_seqlens): every kernel compiles, as on the GPU machine's
    Triton, where a helper returning other types past a constexpr branch once failed."""
    q, kv = _op((330, 4, 64), "float16"), _op((460, 1, 64), "float16")
    cu_seqlens, slopes = _op((4,), "int32"), _op((4,), "float32")
    packed = dict(alibi="causal", layout="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                  max_seqlen_q=200, max_seqlen_k=300)
    dtypes = {name: value or "float16" for name, value in COMPILE_DTYPES.items()}
    for call in (*attention_fwd_calls(q, kv, kv, slopes, **packed), *attention_bwd_calls(q, kv, kv, q, q, slopes, **packed)):
        assert compiled(call, dtypes, "triton").metadata.shared <= SM90_SHARED_BYTES
