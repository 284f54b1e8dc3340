"""ALiBi: slopes, biases, scores + bias and the fused softmax through every framework x
backend against trinix.reference in float64; the module APIs and gradients (refused inputs:
tests/test_bad_inputs.py).

CPU cases are sized by their grid (Triton's interpreter costs a few ms per program); the
compiled-Triton runners and the `gpu` tests run where there is a CUDA GPU.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.runners import BFLOAT16, HAS_CUDA, from_torch, to_torch
from trinix import alibi as host
from trinix import reference as ref
from trinix.kernels import alibi as kernels_alibi
from trinix.kernels.call import Operand, row_major_strides
from trinix.jax import alibi as jax_alibi
from trinix.jax.alibi import FastALiBiPositionEmbedding as NnxALiBi
from trinix.jax.linen import FastALiBiPositionEmbedding as LinenALiBi
from trinix.torch import alibi as torch_alibi
from trinix.torch.alibi import FastALiBiPositionEmbedding

HEADS = [1, 8, 12, 40, 64]
NUMPY_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BFLOAT16,
                "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
# |out - ref| <= ATOL * max(1, max|ref|) + RTOL * |ref|: a few roundings of the output dtype
# (ATOL scales with the bias, which a sum of scores and bias can cancel).
TOLERANCES = {"float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2), "float32": (2e-6, 2e-6),
              "float64": (1e-12, 1e-12)}
gpu = pytest.mark.gpu


class TorchAlibi:
    """trinix.torch ALiBi through one backend ("interpret", "torch" or, on a GPU, "triton")."""

    framework = "torch"

    def __init__(self, backend: str):
        self.backend = backend
        self.device = "cuda" if backend == "triton" else "cpu"

    def slopes(self, num_heads, **config):
        return from_torch(torch_alibi.alibi_slopes(num_heads, device=self.device, backend=self.backend,
                                                   **config))

    def bias(self, slopes, seq_len, key_len, *, causal, q_offset, dtype):
        bias = torch_alibi.alibi_bias(to_torch(slopes, self.device), seq_len, key_len, causal=causal,
                                      q_offset=q_offset, dtype=TORCH_DTYPES[dtype], backend=self.backend)
        return from_torch(bias)

    def add(self, scores, slopes, *, causal, q_offset, inplace=False, noncontiguous=False):
        tensor = to_torch(scores, self.device, noncontiguous)
        out = torch_alibi.alibi_add(tensor, to_torch(slopes, self.device), causal=causal,
                                    q_offset=q_offset, inplace=inplace, backend=self.backend)
        assert (out is tensor) == inplace, "in place must return the scores, else a new tensor"
        return from_torch(out)

    def softmax(self, scores, slopes, *, scale, causal, q_offset, noncontiguous=False):
        out = torch_alibi.alibi_softmax(to_torch(scores, self.device, noncontiguous),
                                        to_torch(slopes, self.device), scale=scale, causal=causal,
                                        q_offset=q_offset, backend=self.backend)
        return from_torch(out)

    def softmax_vjp(self, scores, slopes, grad, *, scale, causal, q_offset):
        tensor = to_torch(scores, self.device).requires_grad_()
        y = torch_alibi.alibi_softmax(tensor, to_torch(slopes, self.device), scale=scale, causal=causal,
                                      q_offset=q_offset, backend=self.backend)
        y.backward(to_torch(grad, self.device))
        return from_torch(tensor.grad)


class JaxAlibi:
    """trinix.jax ALiBi through one backend ("interpret", "xla" or, on a GPU, "triton"), under
    jax.jit. JAX arrays are immutable and have no strides: in-place and non-contiguous cases
    run as plain ones."""

    framework = "jax"

    def __init__(self, backend: str):
        self.backend = backend

    def slopes(self, num_heads, **config):
        return np.asarray(jax_alibi.alibi_slopes(num_heads, backend=self.backend, **config))

    def bias(self, slopes, seq_len, key_len, *, causal, q_offset, dtype):
        with jax.enable_x64(dtype == "float64"):
            fn = jax.jit(lambda m: jax_alibi.alibi_bias(m, seq_len, key_len, causal=causal, q_offset=q_offset,
                                                        dtype=dtype, backend=self.backend))
            return np.asarray(fn(jnp.asarray(slopes)))

    def add(self, scores, slopes, *, causal, q_offset, inplace=False, noncontiguous=False):
        with jax.enable_x64(scores.dtype == np.float64):
            fn = jax.jit(lambda s, m: jax_alibi.alibi_add(s, m, causal=causal, q_offset=q_offset,
                                                          backend=self.backend))
            return np.asarray(fn(jnp.asarray(scores), jnp.asarray(slopes)))

    def softmax(self, scores, slopes, *, scale, causal, q_offset, noncontiguous=False):
        with jax.enable_x64(scores.dtype == np.float64):
            fn = jax.jit(lambda s, m: jax_alibi.alibi_softmax(s, m, scale=scale, causal=causal,
                                                              q_offset=q_offset, backend=self.backend))
            return np.asarray(fn(jnp.asarray(scores), jnp.asarray(slopes)))

    def softmax_vjp(self, scores, slopes, grad, *, scale, causal, q_offset):
        with jax.enable_x64(scores.dtype == np.float64):
            @jax.jit
            def vjp(s, m, g):
                fn = lambda s: jax_alibi.alibi_softmax(s, m, scale=scale, causal=causal,  # noqa: E731
                                                       q_offset=q_offset, backend=self.backend)
                return jax.vjp(fn, s)[1](g)[0]

            return np.asarray(vjp(*map(jnp.asarray, (scores, slopes, grad))))


def _runners() -> list:
    """Interpreter and framework ops always; compiled Triton beside a GPU (marked gpu)."""
    runners = [TorchAlibi("interpret"), TorchAlibi("torch"), JaxAlibi("interpret"), JaxAlibi("xla")]
    if HAS_CUDA:
        runners.append(TorchAlibi("triton"))
    if jax.default_backend() == "gpu":
        runners.append(JaxAlibi("triton"))
    return [pytest.param(r, id=f"{r.framework}-{r.backend}", marks=[gpu] if r.backend == "triton" else [])
            for r in runners]


RUNNERS = _runners()


def assert_close(actual, expected, dtype, what="output", extra_atol=0.0):
    atol, rtol = TOLERANCES[dtype]
    actual = np.asarray(actual)
    assert actual.dtype == NUMPY_DTYPES[dtype], f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                               atol=atol * scale + extra_atol, err_msg=what)


def _slopes32(num_heads: int, batch: int | None = None) -> np.ndarray:
    """float32 slopes (heads,), or (batch, heads) of different max_bias per batch row."""
    if batch is None:
        return ref.alibi_slopes(num_heads).astype(np.float32)
    return np.stack([ref.alibi_slopes(num_heads, 8.0 / (b + 1)) for b in range(batch)]).astype(np.float32)


def _scores(shape, dtype: str, seed: int = 0) -> np.ndarray:
    return (4 * np.random.default_rng(seed).standard_normal(shape)).astype(NUMPY_DTYPES[dtype])


# --- slopes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bias", [8.0, 16.0, 5.5])
def test_host_slopes_equal_the_papers_construction(max_bias):
    """trinix.alibi's closed form per head against the reference's concatenated series."""
    for n in range(1, 130):
        np.testing.assert_allclose(host.alibi_slopes(n, max_bias=max_bias), ref.alibi_slopes(n, max_bias),
                                   rtol=1e-15, atol=0, err_msg=f"{n} heads")
    shard = host.alibi_slopes(8, max_bias=max_bias, head_offset=16, total_heads=40)
    np.testing.assert_allclose(shard, ref.alibi_slopes(40, max_bias)[16:24], rtol=1e-15, atol=0)


def test_paper_slopes_by_hand():
    np.testing.assert_array_equal(ref.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    # 12 heads: the 8-head series, then the 1st, 3rd, 5th, 7th of the 16-head series.
    np.testing.assert_allclose(ref.alibi_slopes(12)[8:], 2.0 ** (-0.5 * np.array([1, 3, 5, 7])), rtol=1e-15)


@pytest.mark.parametrize("num_heads", HEADS)
def test_slopes_match_transformers_bloom(num_heads):
    """An outside check: BLOOM's build_alibi_tensor is slope * key position."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)
    np.testing.assert_allclose(host.alibi_slopes(num_heads), alibi[:, 0, 1].double().numpy(), rtol=1e-6)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("num_heads", HEADS)
def test_slopes_kernel_matches_reference(runner, num_heads):
    slopes = runner.slopes(num_heads)
    assert slopes.dtype == np.float32 and slopes.shape == (num_heads,)
    np.testing.assert_allclose(slopes, ref.alibi_slopes(num_heads), rtol=1e-6, atol=0)


@pytest.mark.parametrize("runner", RUNNERS)
def test_slopes_of_a_tensor_parallel_shard_and_max_bias(runner):
    slopes = runner.slopes(12, max_bias=16.0, head_offset=24, total_heads=40)
    np.testing.assert_allclose(slopes, ref.alibi_slopes(40, 16.0)[24:36], rtol=1e-6, atol=0)


# --- the case matrix --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    heads: int
    seqlen_q: int
    seqlen_k: int
    q_offset: int | None = None  # None: bottom-right, seqlen_k - seqlen_q
    causal: bool = False
    dtype: str = "float32"
    scale: float = 1.0
    inplace: bool = False
    noncontiguous: bool = False
    per_batch_slopes: bool = False  # slopes (batch, heads)

    def __str__(self):
        return self.name

    def slopes(self):
        return _slopes32(self.heads, self.batch if self.per_batch_slopes else None)

    def scores(self, seed=0):
        return _scores((self.batch, self.heads, self.seqlen_q, self.seqlen_k), self.dtype, seed)


BIAS_CASES = [
    Case("seq1-64h", 1, 64, 1, 1),
    Case("seq217-12h", 1, 12, 217, 217),
    Case("seq512-1h-causal", 1, 1, 512, 512, causal=True),
    Case("seq512-8h-bf16", 1, 8, 512, 512, dtype="bfloat16"),
    Case("kv-cache-40h-fp16-causal", 1, 40, 5, 217, causal=True, dtype="float16"),
    Case("q-longer-than-k-offset", 1, 8, 217, 40, q_offset=-3, causal=True),
    Case("offset-float64", 1, 12, 3, 100, q_offset=50, dtype="float64"),
    Case("empty", 1, 4, 0, 7),
]


def _named(cases, name):
    return next(c for c in cases if c.name == name)


def run_bias(runner, case: Case):
    return runner.bias(case.slopes(), case.seqlen_q, case.seqlen_k, causal=case.causal,
                       q_offset=case.q_offset, dtype=case.dtype)


def run_add(runner, case: Case):
    return runner.add(case.scores(), case.slopes(), causal=case.causal, q_offset=case.q_offset,
                      inplace=case.inplace, noncontiguous=case.noncontiguous)


def run_softmax(runner, case: Case):
    return runner.softmax(case.scores(), case.slopes(), scale=case.scale, causal=case.causal,
                          q_offset=case.q_offset, noncontiguous=case.noncontiguous)


def expected_bias(case: Case):
    return ref.alibi_bias(case.slopes(), case.seqlen_q, case.seqlen_k, causal=case.causal,
                          q_offset=case.q_offset)


def expected_softmax(case: Case):
    return ref.alibi_softmax(case.scores(), case.slopes(), scale=case.scale, causal=case.causal,
                             q_offset=case.q_offset)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", BIAS_CASES, ids=str)
def test_bias_matches_reference(case, runner):
    assert_close(run_bias(runner, case), expected_bias(case), case.dtype, "bias")


ADD_CASES = [
    Case("seq217-8h-fp16", 2, 8, 217, 217, dtype="float16"),
    Case("decode-64h-bf16-causal", 1, 64, 1, 512, causal=True, dtype="bfloat16"),
    Case("seq512-1h-causal", 2, 1, 512, 512, causal=True),
    Case("inplace-12h-offset", 3, 12, 5, 40, q_offset=3, causal=True, inplace=True),
    Case("noncontiguous-40h", 2, 40, 7, 33, noncontiguous=True),
    Case("inplace-noncontiguous-fp16", 2, 8, 17, 30, causal=True, dtype="float16", inplace=True,
         noncontiguous=True),
    Case("per-batch-slopes-float64", 2, 4, 9, 20, q_offset=-2, dtype="float64", per_batch_slopes=True),
]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", ADD_CASES, ids=str)
def test_add_to_scores_matches_reference(case, runner):
    expected = case.scores().astype(np.float64) + expected_bias(case)
    assert_close(run_add(runner, case), expected, case.dtype, "scores + bias")


SOFTMAX_CASES = [
    Case("seq217-8h", 2, 8, 217, 217, scale=0.125),
    Case("seq217-12h-fp16-causal", 1, 12, 217, 217, causal=True, dtype="float16", scale=0.125),
    Case("seq512-1h-causal", 1, 1, 512, 512, causal=True, scale=0.125),
    Case("decode-64h-bf16-causal", 1, 64, 1, 512, causal=True, dtype="bfloat16"),
    Case("one-key-64h-causal", 1, 64, 1, 1, causal=True),
    Case("kv-cache-40h-offset-causal", 2, 40, 5, 40, q_offset=3, causal=True, scale=0.5),
    Case("queries-before-every-key", 1, 2, 6, 8, q_offset=-3, causal=True),
    Case("long-row-two-passes", 1, 1, 3, 8200, scale=0.5),
    Case("long-row-two-passes-causal", 1, 1, 3, 8200, q_offset=8000, causal=True, scale=0.5),
    Case("noncontiguous-fp16-causal", 2, 8, 17, 30, causal=True, dtype="float16", scale=0.5,
         noncontiguous=True),
    Case("per-batch-slopes-float64", 2, 4, 9, 20, dtype="float64", per_batch_slopes=True),
    # A query 300000 positions past its keys (a long KV cache): logits near -m * 3e5 keep their
    # precision only relative to the row's nearest key.
    Case("far-queries-8h", 1, 8, 3, 40, q_offset=300_000, scale=0.5),
    Case("far-queries-8h-causal", 1, 8, 3, 40, q_offset=300_000, causal=True),
    Case("far-queries-before-the-keys", 1, 8, 3, 40, q_offset=-300_000),
]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=str)
def test_fused_softmax_matches_reference(case, runner):
    assert_close(run_softmax(runner, case), expected_softmax(case), case.dtype, "softmax")


# Programs that work through several blocks of rows, loading each while reducing the one before
# (kernels/alibi.py's BLOCKS_Q); the builder gives them only to inputs of thousands of row
# blocks, so the test lowers its minimum grid. Rows of 256 keys come 8 to a block.
SEVERAL_BLOCKS_CASES = [
    Case("whole-groups-fp16", 1, 2, 128, 256, dtype="float16", scale=0.5),  # 16 blocks: 2 x 8
    Case("rows-past-the-last-group", 1, 2, 90, 256, scale=0.5),  # 12 blocks: 8, then 4 and 4 empty
    Case("rows-past-the-last-group-causal", 2, 2, 90, 250, q_offset=5, causal=True),
]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", SEVERAL_BLOCKS_CASES, ids=str)
def test_fused_softmax_with_several_row_blocks_a_program(case, runner, monkeypatch):
    monkeypatch.setattr(kernels_alibi, "SOFTMAX_MIN_PROGRAMS", 1)
    kernels_alibi.alibi_softmax_call.cache_clear()
    try:
        shape = (case.batch, case.heads, case.seqlen_q, case.seqlen_k)
        call = kernels_alibi.alibi_softmax_call(
            Operand(shape, row_major_strides(shape), case.dtype), Operand((case.heads,), (1,), "float32"),
            scale=case.scale, q_offset=case.seqlen_k - case.seqlen_q if case.q_offset is None else case.q_offset,
            causal=case.causal)
        assert call.constexprs["BLOCKS_Q"] == 8
        assert call.constexprs["EVEN"] == (case.name == "whole-groups-fp16")
        assert_close(run_softmax(runner, case), expected_softmax(case), case.dtype, "softmax")
    finally:
        kernels_alibi.alibi_softmax_call.cache_clear()


VJP_CASES = [_named(SOFTMAX_CASES, name) for name in
             ("seq217-12h-fp16-causal", "kv-cache-40h-offset-causal", "queries-before-every-key",
              "per-batch-slopes-float64")]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("case", VJP_CASES, ids=str)
def test_fused_softmax_backward_matches_reference_vjp(case, runner):
    grad = case.scores(seed=1)
    dscores = runner.softmax_vjp(case.scores(), case.slopes(), grad, scale=case.scale, causal=case.causal,
                                 q_offset=case.q_offset)
    expected = ref.alibi_softmax_vjp(expected_softmax(case), grad.astype(np.float64), case.scale)
    assert_close(dscores, expected, case.dtype, "dscores")


PARITY_RUNS = [(run_bias, _named(BIAS_CASES, "kv-cache-40h-fp16-causal")),
               (run_add, _named(ADD_CASES, "decode-64h-bf16-causal")),
               (run_softmax, _named(SOFTMAX_CASES, "kv-cache-40h-offset-causal"))]


def _kernel_pairs():
    """Runners of the same kernel backend in both frameworks: (torch, jax) pairs."""
    torch_runners = {p.values[0].backend: p for p in RUNNERS if p.values[0].framework == "torch"}
    return [pytest.param(torch_runners[p.values[0].backend].values[0], p.values[0], id=p.values[0].backend,
                         marks=p.marks)
            for p in RUNNERS if p.values[0].framework == "jax" and p.values[0].backend in torch_runners]


@pytest.mark.parametrize("torch_runner, jax_runner", _kernel_pairs())
def test_same_kernel_is_bit_identical_across_frameworks(torch_runner, jax_runner):
    """torch and jax launch the same kernel source: their outputs agree bit for bit."""
    for run, case in PARITY_RUNS:
        a, b = run(torch_runner, case), run(jax_runner, case)
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{run.__name__} {case}"


def test_torch_and_jax_framework_ops_agree():
    for run, case in PARITY_RUNS:
        assert_close(run(TorchAlibi("torch"), case), run(JaxAlibi("xla"), case).astype(np.float64),
                     case.dtype, run.__name__)


# --- the PyTorch module -----------------------------------------------------------------------

def test_seed_snippet_runs_as_written():
    alibi = FastALiBiPositionEmbedding(num_heads=64, max_seq_len=32768, use_triton=True)
    seq_len, batch_size = 217, 3
    bias = alibi(seq_len, batch_size)
    assert bias.shape == (batch_size, 64, seq_len, seq_len) and bias.dtype == torch.float32
    assert bias.stride(0) == 0, "the batch dim must be a broadcast view"
    np.testing.assert_allclose(bias[2].numpy(), ref.alibi_bias(ref.alibi_slopes(64), seq_len, seq_len),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alibi.slopes.numpy(), ref.alibi_slopes(64), rtol=1e-7)


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_module_options(backend):
    alibi = FastALiBiPositionEmbedding(8, max_seq_len=16, backend=backend, causal=True, dtype=torch.bfloat16,
                                       max_bias=16.0, head_offset=8, total_heads=24)
    slopes = ref.alibi_slopes(24, 16.0)[8:16]
    # Longer than max_seq_len: served (ALiBi extrapolates), not refused.
    bias = alibi(40, 2, key_len=50)
    assert bias.shape == (2, 8, 40, 50) and bias.dtype == torch.bfloat16 and bias.stride(0) == 0
    np.testing.assert_allclose(bias[0].float().numpy(), ref.alibi_bias(slopes, 40, 50, causal=True),
                               rtol=1e-2, atol=1e-2)
    scores = torch.randn(2, 8, 4, 50)
    probs = alibi.softmax(scores, scale=0.5)  # causal mask: the module's default
    np.testing.assert_allclose(probs.numpy(), ref.alibi_softmax(scores.numpy(), slopes.astype(np.float32),
                                                                scale=0.5, causal=True), atol=1e-6)
    np.testing.assert_allclose(alibi.softmax(scores, causal=False).numpy(),
                               ref.alibi_softmax(scores.numpy(), slopes.astype(np.float32)), atol=1e-6)


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_add_to_scores_in_place_and_gradients(backend):
    alibi = FastALiBiPositionEmbedding(4, backend=backend)
    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    scores = q @ q.transpose(-1, -2)  # a non-leaf, as in attention
    out = alibi.add_to_scores(scores, inplace=True)
    assert out is scores
    grad = torch.randn_like(out)
    out.backward(grad)
    expected = (grad + grad.transpose(-1, -2)) @ q.detach()
    torch.testing.assert_close(q.grad, expected)


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_gradcheck_float64(backend):
    slopes = torch.tensor([0.5, 0.25])
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    softmax = lambda s: torch_alibi.alibi_softmax(s, slopes, scale=0.5, causal=True,  # noqa: E731
                                                  q_offset=-1, backend=backend)
    assert torch.autograd.gradcheck(softmax, (x,))
    assert torch.autograd.gradcheck(lambda s: torch_alibi.alibi_add(s, slopes, backend=backend), (x,))


def test_casting_the_module_keeps_float32_slopes():
    alibi = FastALiBiPositionEmbedding(12)
    expected = alibi.slopes.clone()
    for cast in (alibi.half(), alibi.to(torch.bfloat16), alibi.double()):
        assert cast.slopes.dtype == torch.float32
        torch.testing.assert_close(cast.slopes, expected, rtol=0, atol=0)


def test_library_ops_equal_the_eager_launches():
    """The torch.library ops (what torch.compile traces) run the same launches as eager calls."""
    ops = torch.ops.trinix
    slopes = ops.alibi_slopes(torch.tensor([8.0]), 4, 0, 4, True)
    torch.testing.assert_close(slopes, torch_alibi.alibi_slopes(4, backend="interpret"), rtol=0, atol=0)
    bias = ops.alibi_bias(slopes, 5, 9, 4, True, torch.float16, True)
    torch.testing.assert_close(bias, torch_alibi.alibi_bias(slopes, 5, 9, causal=True, dtype=torch.float16,
                                                            backend="interpret"), rtol=0, atol=0)
    scores = torch.randn(2, 4, 5, 9)
    added = torch_alibi.alibi_add(scores, slopes, backend="interpret")
    torch.testing.assert_close(ops.alibi_add(scores, slopes, 4, False, True), added, rtol=0, atol=0)
    ops.alibi_add_(scores, slopes, 4, False, True)
    torch.testing.assert_close(scores, added, rtol=0, atol=0)
    probs = torch_alibi.alibi_softmax(scores, slopes, scale=0.5, causal=True, backend="interpret")
    torch.testing.assert_close(ops.alibi_softmax(scores, slopes, 0.5, 4, True, True), probs, rtol=0, atol=0)


def test_torch_backend_compiles_fullgraph():
    alibi = FastALiBiPositionEmbedding(4, backend="torch")
    scores = torch.randn(2, 4, 5, 9)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def attend(scores):
        return alibi.softmax(alibi.add_to_scores(scores), scale=0.5, causal=True) + alibi(5, key_len=9)

    expected = alibi.softmax(alibi.add_to_scores(scores), scale=0.5, causal=True) + alibi(5, key_len=9)
    torch.testing.assert_close(attend(scores), expected)


# --- JAX: NNX and Linen modules, jit, grad, vmap ---------------------------------------------

@pytest.mark.parametrize("backend", ["interpret", "xla"])
def test_jax_modules_run_the_seed_forms(backend):
    slopes = ref.alibi_slopes(8)
    nnx_alibi = NnxALiBi(num_heads=8, max_seq_len=32768, backend=backend)
    linen_alibi = LinenALiBi(num_heads=8, max_seq_len=32768, backend=backend)
    expected = ref.alibi_bias(slopes, 17, 17)
    for bias in (nnx_alibi(17, 3), jax.jit(lambda: nnx_alibi(17, 3))(),
                 linen_alibi.apply({}, 17, 3)):
        assert bias.shape == (3, 8, 17, 17)
        np.testing.assert_allclose(np.asarray(bias[1]), expected, rtol=1e-6, atol=1e-6)
    scores = _scores((2, 8, 4, 17), "float32")
    expected = ref.alibi_softmax(scores, slopes.astype(np.float32), scale=0.5, causal=True)
    for probs in (nnx_alibi.softmax(scores, scale=0.5, causal=True),
                  linen_alibi.apply({}, scores, method="softmax", scale=0.5, causal=True)):
        np.testing.assert_allclose(np.asarray(probs), expected, atol=1e-6)
    added = linen_alibi.apply({}, scores, method="add_to_scores")
    np.testing.assert_allclose(np.asarray(added), scores + ref.alibi_bias(slopes.astype(np.float32), 4, 17),
                               atol=1e-5)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
def test_jax_grad_and_vmap(backend):
    from jax.test_util import check_grads

    alibi = NnxALiBi(num_heads=4, backend=backend)
    slopes = alibi.slopes
    scores = _scores((3, 2, 4, 5, 7), "float32")  # vmapped over the leading 3
    grad = _scores(scores.shape, "float32", seed=1)

    def loss(s):
        return (alibi.softmax(alibi.add_to_scores(s), scale=0.5) * grad[0]).sum()

    per_example = jax.jit(jax.vmap(jax.grad(lambda s, g: (alibi.softmax(s, scale=0.5) * g).sum())))
    dscores = per_example(scores, grad)
    for i in range(3):
        y = ref.alibi_softmax(scores[i], np.asarray(slopes), scale=0.5)
        np.testing.assert_allclose(np.asarray(dscores[i]), ref.alibi_softmax_vjp(y, grad[i], 0.5), atol=1e-5)
    check_grads(loss, (scores[0],), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    # Mapped slopes: each example its own (heads,) slopes, for scores and for a bias.
    many = np.stack([_slopes32(4), _slopes32(4) / 2, _slopes32(4) / 4])
    added = jax.vmap(lambda s, m: jax_alibi.alibi_add(s, m, backend=backend))(scores, many)
    biases = jax.vmap(lambda m: jax_alibi.alibi_bias(m, 5, 7, backend=backend))(many)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(added[i]), scores[i] + ref.alibi_bias(many[i], 5, 7), atol=1e-5)
        np.testing.assert_allclose(np.asarray(biases[i]), ref.alibi_bias(many[i], 5, 7), atol=1e-6)


def test_bias_refused_when_its_allocation_fails_for_want_of_free_memory(monkeypatch):
    """Free CUDA memory is read only once the bias's allocation fails (reading it on every
    call cost ~0.5 ms): that OutOfMemoryError becomes the ValueError naming the bias's size,
    unless the free memory would have held the bias, when it stays what it was."""
    slopes = torch.full((4,), 0.5)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch_alibi, "launch", out_of_memory)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 10**9))
    with pytest.raises(ValueError, match=r"ALiBi bias of shape \(4, 64, 64\) in float32") as refused:
        torch_alibi.alibi_bias(slopes, 64, backend="interpret")
    assert isinstance(refused.value.__cause__, torch.OutOfMemoryError)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10**12, 10**12))
    with pytest.raises(torch.OutOfMemoryError):
        torch_alibi.alibi_bias(slopes, 64, backend="interpret")


# --- GPU only: sizes past 2^31 elements, compiled graphs -------------------------------------

@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_bias_and_add_past_int32_offsets():
    """The seed's large configuration, 1 x 128 x 8192 x 8192 (8.6G elements)."""
    heads, seq = 128, 8192
    alibi = FastALiBiPositionEmbedding(heads, device="cuda")
    slopes = ref.alibi_slopes(heads).astype(np.float32)
    rows = [0, seq // 2, seq - 1]
    bias = alibi(seq, 1)
    expected = ref.alibi_bias(slopes[-1:], seq, seq)[0][rows]
    np.testing.assert_allclose(bias[0, -1, rows].cpu().numpy(), expected, rtol=1e-6, atol=1e-6)
    del bias
    scores = torch.zeros(1, heads, seq, seq, dtype=torch.float16, device="cuda")
    alibi.add_to_scores(scores, inplace=True)
    np.testing.assert_allclose(scores[0, -1, rows].float().cpu().numpy(), expected, rtol=1e-3, atol=1e-3)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_triton_path_compiles_fullgraph():
    alibi = FastALiBiPositionEmbedding(8, device="cuda")
    scores = torch.randn(2, 8, 64, 64, device="cuda", dtype=torch.float16)

    def attend(scores):
        biased = alibi.add_to_scores(scores) + alibi(64, 2).to(scores.dtype)
        return alibi.softmax(alibi.add_to_scores(biased, inplace=True), scale=0.125, causal=True)

    torch.testing.assert_close(torch.compile(attend, fullgraph=True)(scores), attend(scores))
