"""The kernels compiled for an H100/H200 (sm_90) without a GPU: Triton's compiler and ptxas run
on the CPU. jax-triton specializes no integer argument on divisibility by 16, where Triton's own
launcher marks each one that is unless the kernel says not to (kernels/hints.py): both must
compile the same code for a call, which must vectorize its global loads and stores where
ALIGNED says rows allow, or the JAX binding moves one element per instruction."""

import functools
import re

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource

from trinix.kernels.alibi import alibi_add_call, alibi_bias_call, alibi_slopes_call, alibi_softmax_call
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix.kernels.call import KernelCall, Operand, row_major_strides
from trinix.kernels.rope import rope_apply_call, rope_table_call

TARGET = GPUTarget("cuda", 90, 32)
TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
                "int32": "i32", "int64": "i64"}


def compiled(call: KernelCall, input_dtypes: dict[str, str], launcher: str):
    """`call`'s kernel compiled for sm_90 as `launcher` ("triton" or "jax-triton") specializes
    it: pointers 16-byte aligned, integer arguments equal to 1 compiled in, and (Triton's
    launcher, where the kernel allows it) the others marked divisible by 16 where they are."""
    backend = CUDABackend(TARGET)
    names = call.kernel.arg_names
    signature, constants, attrs = {}, dict(call.constexprs), {}
    for index, name in enumerate(call.inputs):
        signature[names[index]] = "*" + TRITON_TYPES[input_dtypes.get(name, "float32")]
        attrs[(index,)] = backend.parse_attr("D")
    for offset, value in enumerate(call.scalars):
        index, name = len(call.inputs) + offset, names[len(call.inputs) + offset]
        if value == 1:
            constants[name] = 1
            continue
        signature[name] = "i64" if abs(value) >= 2**31 else "i32"
        divisible = (launcher == "triton" and value % 16 == 0
                     and not call.kernel.params[index].do_not_specialize_on_alignment)
        attrs[(index,)] = backend.parse_attr("D" if divisible else "")
    for offset, out in enumerate(call.outputs):
        index = len(call.inputs) + len(call.scalars) + offset
        signature[names[index]] = "*" + TRITON_TYPES[out.dtype]
        attrs[(index,)] = backend.parse_attr("D")
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(call.kernel, signature, constants, attrs)
    return triton.compile(source, target=TARGET, options=dict(num_warps=call.num_warps, num_stages=call.num_stages))


def ptx(call: KernelCall, input_dtypes: dict[str, str], launcher: str) -> str:
    return compiled(call, input_dtypes, launcher).asm["ptx"]


def vector_accesses(code: str) -> tuple[int, int, int]:
    """(global stores, stores that move a vector (.v2/.v4), loads that move a vector)."""
    stores = re.findall(r"\bst\.global[.\w]*", code)
    loads = re.findall(r"\bld\.global[.\w]*", code)
    return len(stores), sum(".v" in s for s in stores), sum(".v" in s for s in loads)


XL_Q = Operand((1, 4096, 128, 128), row_major_strides((1, 4096, 128, 128)), "float16")
XL_K_GQA = Operand((1, 4096, 8, 128), row_major_strides((1, 4096, 8, 128)), "float16")
TABLE = Operand((4096, 128), (128, 1), "float16")
SCORES = Operand((1, 16, 1024, 1024), row_major_strides((1, 16, 1024, 1024)), "float16")
SLOPES = Operand((16,), (1,), "float32")
ROPE_DTYPES = {"q": "float16", "k": "float16", "cos": "float16", "sin": "float16", "positions": "int64"}
ALIBI_DTYPES = {"scores": "float16"}
CALLS = {
    "rope-computed": (rope_apply_call(XL_Q, XL_Q), ROPE_DTYPES),
    "rope-table": (rope_apply_call(XL_Q, XL_Q, cos=TABLE, sin=TABLE), ROPE_DTYPES),
    "rope-gqa": (rope_apply_call(XL_Q, XL_K_GQA), ROPE_DTYPES),
    # Partial rotation (Pythia: 32 of 128 columns) and interleaved pairs (GPT-J: 64 of them).
    "rope-partial": (rope_apply_call(XL_Q, XL_Q, rotary_dim=32), ROPE_DTYPES),
    "rope-interleaved-partial": (rope_apply_call(XL_Q, XL_Q, rotary_dim=64, interleaved=True), ROPE_DTYPES),
    "alibi-bias": (alibi_bias_call(SLOPES, 1024, 1024, q_offset=0, causal=False), ALIBI_DTYPES),
    "alibi-add": (alibi_add_call(SCORES, SLOPES, q_offset=0, causal=False, inplace=True), ALIBI_DTYPES),
    "alibi-softmax": (alibi_softmax_call(SCORES, SLOPES, scale=1.0, q_offset=0, causal=False), ALIBI_DTYPES),
}


@pytest.mark.parametrize("name", CALLS)
def test_jax_triton_launch_vectorizes_like_triton_launch(name):
    call, dtypes = CALLS[name]
    assert call.constexprs["ALIGNED"]
    as_torch_launches = ptx(call, dtypes, "triton")
    stores, vector_stores, vector_loads = vector_accesses(as_torch_launches)
    # Every store is a vector, and so are the loads of what the kernel rewrites (all but the
    # bias read only slopes); small operands (frequencies, slopes) may load one element.
    assert stores and vector_stores == stores
    assert name == "alibi-bias" or vector_loads >= vector_stores
    assert ptx(call, dtypes, "jax-triton") == as_torch_launches


def test_both_launchers_compile_unaligned_calls_alike():
    """Where ALIGNED is unset, Triton's launcher would still mark the sizes and strides that are
    multiples of 16 (here 16 heads, 32 queries, a head stride of 1056), and compile other code
    than jax-triton for the same call; the kernels decline that specialization."""
    shape = (1, 16, 32, 33)
    softmax = alibi_softmax_call(Operand(shape, row_major_strides(shape), "float32"),
                                 Operand((16,), (1,), "float32"), scale=1 / 3, q_offset=-131, causal=True)
    q = Operand((2, 100, 16, 72), row_major_strides((2, 100, 16, 72)), "float16")
    for call, dtypes in ((softmax, {}), (rope_apply_call(q, q), ROPE_DTYPES)):
        assert not call.constexprs["ALIGNED"]
        assert ptx(call, dtypes, "triton") == ptx(call, dtypes, "jax-triton")


def test_unaligned_rows_are_not_declared_aligned():
    """head_dim 72: rows of q start 144 bytes apart, not a multiple of 32 (16 fp16 elements)."""
    q = Operand((1, 64, 4, 72), row_major_strides((1, 64, 4, 72)), "float16")
    assert not rope_apply_call(q, q).constexprs["ALIGNED"]
    scores = Operand((1, 4, 33, 33), row_major_strides((1, 4, 33, 33)), "float16")
    slopes = Operand((4,), (1,), "float32")
    assert not alibi_add_call(scores, slopes, q_offset=0, causal=False).constexprs["ALIGNED"]


# Shared memory a block may use on an H100/H200 (227 KiB).
SM90_SHARED_BYTES = 232448


def _spread(shape: tuple[int, ...], dtype: str) -> Operand:
    """Every other element of every dim: no dim is unit-stride."""
    return Operand(shape, tuple(2 * stride for stride in row_major_strides(shape)), dtype)


def _rope_thd(heads: int, head_dim: int, rotary_dim: int) -> KernelCall:
    table = Operand((1, 1, rotary_dim), row_major_strides((1, 1, rotary_dim)), "float64")
    q = _spread((771, heads, head_dim), "float64")
    return rope_apply_call(q, q, layout="thd", cos=table, sin=table, positions=Operand((771,), (1,), "int64"),
                           cu_seqlens=Operand((5,), (1,), "int32"), max_seqlen=200)


STRIDED_FLOAT64_CALLS = {
    # The GPU property test's failing example (session 6): MQA, 24 of 104 columns rotating.
    "rope-mqa-partial": lambda: _rope_thd(1, 104, 24),
    "rope-128-heads-partial": lambda: _rope_thd(128, 256, 128),
    "alibi-softmax": lambda: alibi_softmax_call(_spread((1, 16, 4, 8192), "float64"), SLOPES, scale=1.0,
                                                q_offset=0, causal=False),
    "alibi-add": lambda: alibi_add_call(_spread((1, 16, 8, 16384), "float64"), SLOPES, q_offset=0, causal=False),
}


@pytest.mark.parametrize("name", STRIDED_FLOAT64_CALLS)
def test_strided_float64_calls_fit_in_shared_memory(name):
    """Where the last dim is strided, the compiler passes a tile through shared memory to change
    its layout for the row-major output. RoPE once copied all the passed-through columns of a
    rotating tile at once: for the MQA example that was 256 KiB in float64, and the launch
    failed. A tile is now sized by its whole rows (64 KiB here)."""
    dtypes = {"q": "float64", "k": "float64", "cos": "float64", "sin": "float64", "positions": "int64",
              "cu_seqlens": "int32", "scores": "float64"}
    assert compiled(STRIDED_FLOAT64_CALLS[name](), dtypes, "triton").metadata.shared <= SM90_SHARED_BYTES


@pytest.mark.parametrize("name", CALLS)
def test_constexprs_are_the_kernels_trailing_parameters(name):
    """The launcher passes a cached compiled kernel its arguments in signature order: inputs,
    scalars, outputs, then the constexprs, which must be exactly the kernel's other parameters."""
    call, _ = CALLS[name]
    positional = len(call.inputs) + len(call.scalars) + len(call.outputs)
    trailing = call.kernel.arg_names[positional:]
    assert len(trailing) == len(call.constexprs) and set(trailing) == set(call.constexprs)


_ATTENTION_SLOPES = Operand((128,), (1,), "float32")
DECODE_Q = Operand((1, 1, 128, 128), row_major_strides((1, 1, 128, 128)), "float16")
BUILDERS = {
    "rope_apply_call": lambda: rope_apply_call(XL_Q, XL_Q, cos=TABLE, sin=TABLE),
    "rope_table_call": lambda: rope_table_call(4096, 128, "float16"),
    "alibi_slopes_call": lambda: alibi_slopes_call(16),
    "alibi_bias_call": lambda: alibi_bias_call(SLOPES, 1024, 1024, q_offset=0, causal=False),
    "alibi_add_call": lambda: alibi_add_call(SCORES, SLOPES, q_offset=0, causal=False),
    "alibi_softmax_call": lambda: alibi_softmax_call(SCORES, SLOPES, scale=1.0, q_offset=0, causal=False),
    "attention_fwd_calls[0]": lambda: attention_fwd_calls(XL_Q, XL_K_GQA, XL_K_GQA, _ATTENTION_SLOPES,
                                                          alibi="causal")[0],
    **{f"attention_fwd_calls[{index}] (decode)": functools.partial(
        lambda index: attention_fwd_calls(DECODE_Q, XL_K_GQA, XL_K_GQA, _ATTENTION_SLOPES, alibi="causal")[index],
        index) for index in range(2)},
    **{f"attention_bwd_calls[{index}]": functools.partial(
        lambda index: attention_bwd_calls(XL_Q, XL_K_GQA, XL_K_GQA, XL_Q, XL_Q, _ATTENTION_SLOPES,
                                          alibi="causal")[index], index) for index in range(3)},
}


@pytest.mark.parametrize("name", BUILDERS)
def test_call_builders_return_the_same_call_for_the_same_arguments(name):
    """The torch launcher keeps a launch's compiled kernel by its KernelCall object: a builder
    that made a new call each time would recompile-check every launch through Triton."""
    assert BUILDERS[name]() is BUILDERS[name]()


@pytest.mark.parametrize("name", BUILDERS)
def test_scalars_are_the_kernels_lower_case_parameters(name):
    """kernels.hints.kernel finds a kernel's scalar parameters by their lower-case names."""
    call = BUILDERS[name]()
    names = call.kernel.arg_names
    scalars = names[len(call.inputs):len(call.inputs) + len(call.scalars)]
    others = names[:len(call.inputs)] + names[len(call.inputs) + len(call.scalars):]
    assert all(arg.islower() for arg in scalars) and not any(arg.islower() for arg in others)
