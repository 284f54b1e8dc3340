"""Attention with ALiBi through the public functions, trinix.torch.attention and
trinix.jax.attention, on every CPU backend (the kernels through Triton's interpreter, the
torch and xla fallbacks), compared with trinix.reference in float64; torch and jax launches
of the same kernels agree bit for bit; refused inputs raise before any launch. GPU-only: the
compiled kernels at a medium shape, beside FlexAttention with an ALiBi score_mod.

Cases are sized by their grid (the interpreter costs a few ms per program): a few dozen
tokens, head_dim 32, so that the tile table's tiles cover each sequence in one program (one
case at head_dim 128, whose tiles are larger).
"""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.runners import HAS_CUDA
from tests import test_attention_kernels as kernel_tests
from tests.test_attention_kernels import GRAD_TOLERANCES, TOLERANCES, _rounded
from trinix import reference as ref
from trinix.jax import FastALiBiPositionEmbedding as JaxALiBi
from trinix.torch import FastALiBiPositionEmbedding
from trinix.torch.launcher import DTYPES

# The modules: `import trinix.torch.attention as ...` would give the function the package exports.
torch_attention = importlib.import_module("trinix.torch.attention")
jax_attention = importlib.import_module("trinix.jax.attention")


@dataclasses.dataclass(frozen=True)
class Case(kernel_tests.Case):
    """A case of the kernels' tests stated by the bias form the API is to choose (alibi
    "symmetric" or "causal": slopes given, causal False or True; "none": no slopes), plus packed
    sequences: (cu_seqlens_q, cu_seqlens_k) for layout "thd"."""

    cu_seqlens: tuple | None = None


PACKED = ((0, 5, 37, 50), (0, 17, 30, 70))  # the middle sequence has more queries than keys
CASES = [
    Case(40, 40, alibi="symmetric"),
    Case(33, 50, kv_heads=1, alibi="causal"),                           # MQA, fewer queries than keys
    Case(40, 40, dtype="float64", causal=True),                         # plain causal attention
    Case(24, 40, dtype="float16", alibi="symmetric", q_offset=7),
    Case(50, 30, heads=4, dtype="bfloat16", alibi="causal", batch=2),   # GQA; 20 rows see no key
    Case(20, 28, layout="bhsd", alibi="causal", batch=2, batch_slopes=True),
    Case(50, 70, kv_heads=1, alibi="causal", layout="thd", batch_slopes=True, cu_seqlens=PACKED),
    Case(50, 70, dtype="float64", alibi="symmetric", q_offset=3, layout="thd", cu_seqlens=PACKED),
    Case(40, 24),                                                       # no bias, no mask
    Case(1, 520, heads=4, kv_heads=2, alibi="causal"),                  # decode: 9 key tiles split in 2
    Case(40, 70, heads=4, kv_heads=2, head_dim=128, dtype="float16", alibi="causal"),  # head_dim 128's tiles
]


def _inputs(case: Case, seed: int = 0) -> dict:
    """float64 NumPy q, k, v, do in the case's layout, float32 slopes (or None) and int32
    cu_seqlens (or None)."""
    rng = np.random.default_rng(seed)
    if case.cu_seqlens:
        q_shape, kv_shape = ((cu[-1], heads, case.head_dim) for cu, heads in
                             zip(case.cu_seqlens, (case.heads, case.kv_heads)))
    else:
        q_shape = (case.batch, case.seqlen_q, case.heads, case.head_dim)
        kv_shape = (case.batch, case.seqlen_k, case.kv_heads, case.head_dim)
        if case.layout == "bhsd":
            q_shape, kv_shape = ((s[0], s[2], s[1], s[3]) for s in (q_shape, kv_shape))
    arrays = dict(q=_rounded(q_shape, case.dtype, rng), k=_rounded(kv_shape, case.dtype, rng),
                  v=_rounded(kv_shape, case.dtype, rng), do=_rounded(q_shape, case.dtype, rng))
    slopes = ref.alibi_slopes(case.heads, max_bias=4.0).astype(np.float32)
    n_seqs = len(case.cu_seqlens[0]) - 1 if case.cu_seqlens else case.batch
    if case.batch_slopes:
        slopes = np.stack([slopes * (1 + b) for b in range(n_seqs)])
    arrays["slopes"] = None if case.alibi == "none" else slopes
    cu = case.cu_seqlens or (None, None)
    arrays["cu_seqlens_q"], arrays["cu_seqlens_k"] = (None if c is None else np.array(c, np.int32) for c in cu)
    return arrays


def _options(case: Case) -> dict:
    """The API's options of `case`: its form's causal flag."""
    options = dict(causal=case.alibi == "causal" or bool(case.causal), q_offset=case.q_offset, layout=case.layout)
    if case.cu_seqlens:
        options.update(max_seqlen_q=case.seqlen_q, max_seqlen_k=case.seqlen_k)
    return options


def _reference(case: Case, arrays: dict):
    """(o, dq, dk, dv) of trinix.reference, float64, in the case's layout."""
    form = dict(alibi=case.alibi, causal=case.causal, q_offset=case.q_offset)
    q, k, v, do, slopes = (arrays[name] for name in ("q", "k", "v", "do", "slopes"))
    if case.cu_seqlens:
        packed = (*case.cu_seqlens, slopes)
        o, _ = ref.attention_packed(q, k, v, *packed, **form)
        return (o, *ref.attention_packed_vjp(q, k, v, do, *packed, **form))
    swap = (lambda x: x.swapaxes(1, 2)) if case.layout == "bhsd" else (lambda x: x)
    q, k, v, do = map(swap, (q, k, v, do))
    o, _ = ref.attention(q, k, v, slopes, **form)
    return tuple(map(swap, (o, *ref.attention_vjp(q, k, v, do, slopes, **form))))


def _torch(x, device="cpu"):
    return None if x is None else torch.from_numpy(x).to(device)


def run_torch(case: Case, arrays: dict, backend: str, device: str = "cpu", function=None):
    """(o, dq, dk, dv) of trinix.torch.attention (or `function`, e.g. it compiled) as float64 NumPy."""
    function = function or torch_attention.attention
    q, k, v = (_torch(arrays[name], device).to(DTYPES[case.dtype]).requires_grad_() for name in ("q", "k", "v"))
    slopes, cu_q, cu_k = (_torch(arrays[name], device) for name in ("slopes", "cu_seqlens_q", "cu_seqlens_k"))
    o = function(q, k, v, alibi=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend, **_options(case))
    assert o.dtype == q.dtype and o.shape == q.shape
    o.backward(_torch(arrays["do"], device).to(o.dtype))
    return tuple(x.detach().double().cpu().numpy() for x in (o, q.grad, k.grad, v.grad))


def _jax(x, dtype=None):
    return None if x is None else jnp.asarray(x if dtype is None else torch.from_numpy(x).to(
        DTYPES[dtype]).float().numpy() if dtype == "bfloat16" else x, dtype)


def run_jax(case: Case, arrays: dict, backend: str, jit: bool = False):
    """(o, dq, dk, dv) of trinix.jax.attention (under jax.vjp) as float64 NumPy."""
    with jax.enable_x64(case.dtype == "float64"):
        q, k, v, do = (_jax(arrays[name], case.dtype) for name in ("q", "k", "v", "do"))
        slopes, cu_q, cu_k = (_jax(arrays[name]) for name in ("slopes", "cu_seqlens_q", "cu_seqlens_k"))

        def forward(q, k, v):
            return jax_attention.attention(q, k, v, alibi=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                           backend=backend, **_options(case))

        o, vjp = jax.vjp(jax.jit(forward) if jit else forward, q, k, v)
        assert o.dtype == q.dtype and o.shape == q.shape
        return tuple(np.asarray(x.astype(jnp.float64 if case.dtype == "float64" else jnp.float32), np.float64)
                     for x in (o, *vjp(do)))


RUNNERS = {"torch-interpret": (run_torch, "interpret"), "torch-torch": (run_torch, "torch"),
           "jax-interpret": (run_jax, "interpret"), "jax-xla": (run_jax, "xla")}


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerances, what: str) -> None:
    """|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|, no NaN."""
    assert not np.isnan(actual).any(), f"{what}: NaN"
    atol, rtol = tolerances
    bound = atol * max(1.0, float(np.abs(expected).max(initial=0.0))) + rtol * np.abs(expected)
    error = np.abs(actual - expected)
    assert (error <= bound).all(), f"{what}: max error {error.max():.3g}, bound {bound.max():.3g}"


def _assert_matches_reference(case, results, expected):
    assert_close(results[0], expected[0], TOLERANCES[case.dtype], "o")
    for name, grad, want in zip(("dq", "dk", "dv"), results[1:], expected[1:]):
        assert_close(grad, want, GRAD_TOLERANCES[case.dtype], name)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_matches_reference(case, runner):
    run, backend = RUNNERS[runner]
    arrays = _inputs(case)
    _assert_matches_reference(case, run(case, arrays, backend), _reference(case, arrays))


@pytest.mark.parametrize("case", [CASES[4], CASES[6]], ids=lambda case: case.name)
def test_torch_and_jax_launches_agree_bit_for_bit(case):
    """The same kernels on the same row-major inputs: identical outputs and gradients."""
    arrays = _inputs(case)
    for torch_result, jax_result in zip(run_torch(case, arrays, "interpret"), run_jax(case, arrays, "interpret")):
        np.testing.assert_array_equal(torch_result, jax_result)


def test_jax_jit_matches_eager():
    case = CASES[1]
    arrays = _inputs(case)
    for eager, jitted in zip(run_jax(case, arrays, "interpret"), run_jax(case, arrays, "interpret", jit=True)):
        np.testing.assert_array_equal(eager, jitted)


@pytest.mark.parametrize("case", [CASES[5], CASES[6]], ids=["bhsd", "thd"])
def test_jax_vmap_and_grad_match_each_example(case):
    """vmap over a stack of two inputs (q, k, v and slopes mapped; cu_seqlens shared) of the
    forward and of its gradient: each example's result, whether the axis joins the batch or
    (packed) is mapped one example at a time."""
    examples = [_inputs(case, seed) for seed in (0, 1)]
    examples[1]["slopes"] = examples[1]["slopes"] * 0.5
    stacked = {name: jnp.stack([e[name] for e in examples]).astype(jnp.float32)
               for name in ("q", "k", "v", "do", "slopes")}
    cu_q, cu_k = (_jax(examples[0][name]) for name in ("cu_seqlens_q", "cu_seqlens_k"))

    def loss(q, k, v, slopes, do):
        o = jax_attention.attention(q, k, v, alibi=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                    backend="interpret", **_options(case))
        return (o * do).sum(), o

    grads, o = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2), has_aux=True)))(
        *(stacked[name] for name in ("q", "k", "v", "slopes", "do")))
    for i, example in enumerate(examples):
        expected = _reference(case, example)
        _assert_matches_reference(case, (np.asarray(o[i]), *(np.asarray(g[i]) for g in grads)), expected)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_module_attention_uses_its_slopes_and_causal_flag(framework):
    case = Case(33, 50, kv_heads=1, alibi="causal")
    arrays = _inputs(case)
    module = (FastALiBiPositionEmbedding if framework == "torch" else JaxALiBi)(2, causal=True, max_bias=4.0)
    np.testing.assert_array_equal(np.asarray(module.slopes), arrays["slopes"])
    convert = _torch if framework == "torch" else _jax
    q, k, v = (convert(arrays[name].astype(np.float32)) for name in ("q", "k", "v"))
    o = module.attention(q, k, v, backend="interpret")
    assert_close(np.asarray(o, np.float64), _reference(case, arrays)[0], TOLERANCES["float32"], "o")


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=lambda case: case.name)
def test_torch_compile_of_the_fallback_has_no_graph_break(case):
    arrays = _inputs(case)
    # Static shapes: the kernel plan is shape math on ints (dynamic shapes would trace it with SymInts).
    compiled = torch.compile(torch_attention.attention, fullgraph=True, dynamic=False, backend="aot_eager")
    _assert_matches_reference(case, run_torch(case, arrays, "torch", function=compiled), _reference(case, arrays))


# --- GPU: the compiled kernels ------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="compiled Triton needs a CUDA GPU")
MEDIUM = [Case(512, 512, heads=8, kv_heads=2, head_dim=64, dtype="float16", alibi="causal", batch=2),
          Case(300, 700, heads=6, kv_heads=6, head_dim=128, dtype="bfloat16", alibi="symmetric", q_offset=100,
               layout="bhsd"),
          Case(200, 300, heads=4, kv_heads=1, head_dim=64, dtype="float16", alibi="causal", layout="thd",
               cu_seqlens=((0, 100, 130, 330), (0, 150, 160, 460))),
          Case(1, 8192, heads=8, kv_heads=2, head_dim=128, dtype="float16", alibi="causal", batch=2)]  # decode, split


@gpu
@pytest.mark.parametrize("case", MEDIUM, ids=lambda case: case.name)
def test_compiled_kernels_match_reference(case):
    arrays = _inputs(case)
    _assert_matches_reference(case, run_torch(case, arrays, "triton", "cuda"), _reference(case, arrays))


@gpu
def test_torch_compile_of_the_triton_path_with_backward():
    case = MEDIUM[0]
    arrays = _inputs(case)
    compiled = torch.compile(torch_attention.attention, fullgraph=True, dynamic=False)
    _assert_matches_reference(case, run_torch(case, arrays, "triton", "cuda", compiled), _reference(case, arrays))


def _on_cuda(arrays: dict):
    """q, k, v (float16) and slopes of `arrays` on the GPU."""
    return (*(_torch(arrays[name], "cuda").half() for name in ("q", "k", "v")), _torch(arrays["slopes"], "cuda"))


@gpu
@pytest.mark.parametrize("case", [MEDIUM[0], MEDIUM[3]], ids=["prefill", "decode"])
def test_forward_is_deterministic_and_the_same_from_jax(case):
    """Two launches give the same bits (no atomics, splits merged in a fixed order), and jax-triton
    launches of the same kernels give them too."""
    q, k, v, slopes = _on_cuda(_inputs(case))
    first, second = (torch_attention.attention(q, k, v, alibi=slopes, causal=True, backend="triton") for _ in "ab")
    assert torch.equal(first, second)
    from_jax = jax_attention.attention(*(jnp.asarray(x.cpu().numpy()) for x in (q, k, v)),
                                       alibi=jnp.asarray(slopes.cpu().numpy()), causal=True, backend="triton")
    np.testing.assert_array_equal(np.asarray(from_jax), first.cpu().numpy())


@gpu
def test_a_decode_step_is_captured_in_a_cuda_graph():
    """Launches with no host synchronization: a CUDA graph replays the split decode with new q."""
    case = MEDIUM[3]
    q, k, v, slopes = _on_cuda(_inputs(case))

    def step():
        return torch_attention.attention(q, k, v, alibi=slopes, causal=True, backend="triton")

    step()  # compiles the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o = step()
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.testing.assert_close(o, step(), rtol=0, atol=0)


@gpu
def test_agrees_with_flex_attention_and_an_alibi_score_mod():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    case = MEDIUM[0]
    q, k, v, slopes = _on_cuda(_inputs(case))

    def alibi(score, b, h, q_idx, kv_idx):  # seqlen_q = seqlen_k: query i at key position i
        return score + slopes[h] * (kv_idx - q_idx)

    mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, case.seqlen_q,
                             case.seqlen_k, device="cuda")
    expected = torch.compile(flex_attention)(*(x.transpose(1, 2) for x in (q, k, v)), score_mod=alibi,
                                             block_mask=mask, enable_gqa=True).transpose(1, 2)
    o = torch_attention.attention(q, k, v, alibi=slopes, causal=True, backend="triton")
    # Two float16 results, each within TOLERANCES of the exact one.
    atol, rtol = TOLERANCES["float16"]
    assert_close(o.double().cpu().numpy(), expected.double().cpu().numpy(), (2 * atol, 2 * rtol), "o")


# --- Refused inputs: named, raised before any launch ---------------------------------------------

def _refuse_launches(monkeypatch):
    def launch(*args, **kwargs):
        raise AssertionError("launched")

    monkeypatch.setattr(torch_attention, "launch", launch)
    monkeypatch.setattr(jax_attention, "launch", launch)


def _bad(q=(1, 16, 4, 32), k=(1, 16, 2, 32), v=None, dtype="float32", k_dtype=None, slopes=(4,),
         slopes_dtype="float32", **options):
    arrays = dict(q=np.zeros(q, dtype), k=np.zeros(k, k_dtype or dtype), v=np.zeros(v or k, k_dtype or dtype),
                  alibi=None if slopes is None else np.zeros(slopes, slopes_dtype))
    return arrays, options


THD = dict(layout="thd", max_seqlen_q=8, max_seqlen_k=8)
BAD_INPUTS = {
    "heads-not-a-multiple": (_bad(k=(1, 16, 3, 32)), ValueError, "heads"),
    "head_dim-mismatch": (_bad(k=(1, 16, 2, 16)), ValueError, "head_dim"),
    "dtype-mismatch": (_bad(k_dtype="float16"), TypeError, "k must have q's dtype"),
    "k-v-shape-mismatch": (_bad(v=(1, 16, 1, 32)), ValueError, "k and v must have the same shape"),
    "slopes-shape": (_bad(slopes=(2,)), ValueError, "slopes must have shape"),
    "slopes-dtype": (_bad(slopes_dtype="float16"), TypeError, "slopes must be float32"),
    "cu_seqlens-dtype": (_bad(q=(16, 4, 32), k=(16, 2, 32), cu_seqlens_q=np.array([0, 8, 16], np.int16),
                              cu_seqlens_k=np.array([0, 8, 16], np.int32), **THD), TypeError,
                         "cu_seqlens_q must be int32"),
    "layout": (_bad(layout="sbhd"), ValueError, "layout"),
}


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_are_refused_by_name_before_any_launch(bad, framework, monkeypatch):
    (arrays, options), error, message = BAD_INPUTS[bad]
    _refuse_launches(monkeypatch)
    convert = _torch if framework == "torch" else _jax
    module = torch_attention if framework == "torch" else jax_attention
    options = {name: convert(value) if isinstance(value, np.ndarray) else value for name, value in options.items()}
    with pytest.raises(error, match=message):
        module.attention(*(convert(arrays[name]) for name in ("q", "k", "v")), alibi=convert(arrays["alibi"]),
                         backend="interpret", **options)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_alibi_of_the_wrong_type_is_refused_by_name(framework):
    module = torch_attention if framework == "torch" else jax_attention
    convert = _torch if framework == "torch" else _jax
    q = convert(np.zeros((1, 8, 2, 32), np.float32))
    with pytest.raises(TypeError, match="alibi must be"):
        module.attention(q, q, q, alibi=[0.5, 0.25], backend="interpret")
