"""ALiBi for JAX: the Triton kernels under custom_vjp and custom_vmap, the functional forms and
the Flax NNX module `FastALiBiPositionEmbedding`. Checks and plans: trinix.alibi; the "xla"
backend: trinix.fallback.

Shapes, positions and bias forms: trinix.alibi.

Backends: "triton" (jax-triton, GPU), "interpret" (the same kernels through Triton's
interpreter on the CPU), "xla" (plain jax.numpy), "auto" (on a GPU by
trinix.backend.AUTO: "triton" for ALiBi, eager or under jit; else "xla").
Reverse-mode differentiation: adding ALiBi passes the scores' cotangent through unchanged; the
fused softmax's is scale * y * (g - sum(g * y)) in jax.numpy. Slopes are constants. Under
vmap the mapped axis joins the scores' batch (or, for a bias, the heads): one launch.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from trinix import alibi as host
from trinix import fallback
from trinix.alibi import AlibiSpec, BiasPlan, ScoresPlan
from trinix.jax.launcher import JaxOps, as_arrays, float_dtype_name, launch, operand, platform_of, resolve_backend
from trinix.jax.sharding import shard_local
from trinix.kernels.alibi import alibi_slopes_call


def _bias_on_shard(slopes, *, plan: BiasPlan, backend: str):
    return launch(host.bias_call(plan, operand(slopes)), dict(slopes=slopes), backend=backend)


def _launch_bias(slopes, *, plan: BiasPlan, backend: str):
    """The bias of slopes (heads,), each device computing its heads' rows."""
    run = functools.partial(_bias_on_shard, plan=plan, backend=backend)
    return shard_local(run, (slopes,), ("h",), ("h q k",))[0]


def _scores_on_shard(scores, slopes, *, plan: ScoresPlan, backend: str):
    # In place: under jit XLA reuses the scores' buffer when nothing else needs it.
    call = host.scores_call(plan, operand(scores), operand(slopes), inplace=True)
    return launch(call, dict(scores=scores, slopes=slopes), backend=backend)


def _launch_scores(scores, slopes, *, plan: ScoresPlan, backend: str):
    """The scores op, each device on its batch and heads; slopes (batch, heads) are split with
    both, (1, heads) or (heads,) with the heads."""
    slopes_dims = "h" if slopes.ndim == 1 else ("b h" if slopes.shape[0] == scores.shape[0] else "one h")
    run = functools.partial(_scores_on_shard, plan=plan, backend=backend)
    return shard_local(run, (scores, slopes), ("b h q k", slopes_dims), ("b h q k",))[0]


@functools.cache
def _batchable_scores(plan: ScoresPlan, backend: str):
    """A scores launch with a vmap rule (jax-triton and the interpreter's FFI call have none we want)."""
    run = jax.custom_batching.custom_vmap(functools.partial(_launch_scores, plan=plan, backend=backend))
    run.def_vmap(functools.partial(_scores_vmap_rule, run))
    return run


def _scores_vmap_rule(run, axis_size, in_batched, scores, slopes):
    """vmap of a scores op: the mapped axis (leading) joins the scores' batch, and slopes
    become (joint batch, heads) rows where they differ by example, so one launch serves all."""
    scores_batched, slopes_batched = in_batched
    if not scores_batched:
        scores = jnp.broadcast_to(scores, (axis_size, *scores.shape))
    batch, heads = scores.shape[1:3]
    slopes = slopes if slopes_batched else slopes[None]
    slopes = slopes.reshape(slopes.shape[0], -1, heads)  # (axis_size or 1, batch or 1, heads)
    if slopes.shape[:2] == (1, 1):
        slopes = slopes[0, 0]
    else:
        slopes = jnp.broadcast_to(slopes, (axis_size, batch, heads)).reshape(axis_size * batch, heads)
    out = run(scores.reshape(axis_size * batch, *scores.shape[2:]), slopes)
    return out.reshape(scores.shape), True


@functools.cache
def _batchable_bias(plan: BiasPlan, backend: str):
    """The bias launch with a vmap rule: mapped slopes (n, heads) are n * heads heads."""
    run = jax.custom_batching.custom_vmap(functools.partial(_launch_bias, plan=plan, backend=backend))

    @run.def_vmap
    def rule(axis_size, in_batched, slopes):
        bias = run(slopes.reshape(-1))
        return bias.reshape(axis_size, -1, *bias.shape[1:]), True

    return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _scores_by_kernel(scores, slopes, plan: ScoresPlan, backend: str):
    """scores + bias, or softmax(scale * scores + bias), by the kernel. The cotangent of added
    scores is the output's, unchanged; the softmax's comes from its output."""
    return _batchable_scores(plan, backend)(scores, slopes)


def _scores_fwd(scores, slopes, plan, backend):
    out = _scores_by_kernel(scores, slopes, plan, backend)
    return out, out if plan.scale is not None else None


def _scores_bwd(plan, backend, y, grad):
    if plan.scale is not None:
        grad = fallback.softmax_backward(JaxOps, y, grad, plan.scale)
    return grad, None


_scores_by_kernel.defvjp(_scores_fwd, _scores_bwd)


def _available_bytes() -> int | None:
    """Memory of the default device: XLA's limit on a GPU, the machine's on the CPU."""
    stats = jax.local_devices()[0].memory_stats()
    if stats is None:
        return host.host_memory_bytes() if platform_of(None) == "cpu" else None
    return stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)


def alibi_slopes(num_heads: int, *, max_bias: float = 8.0, head_offset: int = 0,
                 total_heads: int | None = None, backend: str = "auto", use_triton: bool = True):
    """ALiBi slopes of heads head_offset .. head_offset + num_heads - 1 of a model with
    `total_heads` heads (default num_heads), (num_heads,) float32; one kernel launch on the
    Triton backends."""
    spec = AlibiSpec.of(num_heads, max_bias=max_bias, head_offset=head_offset, total_heads=total_heads)
    backend = resolve_backend(backend, use_triton, "alibi")
    if backend == "xla":
        return jnp.asarray(spec.slopes(), jnp.float32)
    call = alibi_slopes_call(num_heads, head_offset=head_offset, total_heads=spec.total_heads)
    return launch(call, dict(max_bias=jnp.full((1,), max_bias, jnp.float32)), backend=backend)[0]


def alibi_bias(slopes, seq_len: int, key_len: int | None = None, *, causal: bool = False,
               q_offset: int | None = None, dtype=jnp.float32, backend: str = "auto",
               use_triton: bool = True):
    """The ALiBi bias (heads, seq_len, key_len) of `dtype` for slopes (heads,), key_len
    defaulting to seq_len. A bias too big for the device's memory is refused (ValueError)
    before anything is allocated."""
    (slopes,) = as_arrays(slopes=slopes)
    dtype = float_dtype_name(dtype)
    plan = host.plan_bias(operand(slopes), seq_len, key_len, q_offset=q_offset, causal=causal, dtype=dtype,
                          available_bytes=_available_bytes())
    backend = resolve_backend(backend, use_triton, "alibi", slopes)
    slopes = jax.lax.stop_gradient(slopes)
    if backend == "xla":
        return fallback.alibi_bias(JaxOps, slopes, plan.seqlen_q, plan.seqlen_k, plan.q_offset, plan.causal,
                                   jnp.dtype(dtype))
    return _batchable_bias(plan, backend)(slopes)


def _run_scores(scores, slopes, *, q_offset, causal, backend, use_triton, scale=None, num_heads=None):
    """alibi_add, or alibi_softmax when scale is given; num_heads: a module's, checked."""
    scores, slopes = as_arrays(scores=scores, slopes=slopes)
    plan = host.plan_scores(operand(scores), operand(slopes), q_offset=q_offset, causal=causal, scale=scale,
                            num_heads=num_heads)
    backend = resolve_backend(backend, use_triton, "alibi", scores)
    slopes = jax.lax.stop_gradient(slopes)
    if backend != "xla":
        return _scores_by_kernel(scores, slopes, plan, backend)
    if plan.scale is not None:
        return fallback.alibi_softmax(JaxOps, scores, slopes, plan.scale, plan.q_offset, plan.causal)
    return fallback.alibi_add(JaxOps, scores, slopes, plan.q_offset, plan.causal)


def alibi_add(scores, slopes, *, causal: bool = False, q_offset: int | None = None,
              backend: str = "auto", use_triton: bool = True):
    """scores + ALiBi bias, without a bias array: one kernel reads and writes each score once
    (into the scores' buffer, where XLA can reuse it). The cotangent of scores passes through."""
    return _run_scores(scores, slopes, q_offset=q_offset, causal=causal, backend=backend, use_triton=use_triton)


def alibi_softmax(scores, slopes, *, scale: float = 1.0, causal: bool = False,
                  q_offset: int | None = None, backend: str = "auto", use_triton: bool = True):
    """softmax over keys of scale * scores + ALiBi bias in one kernel, like scores.

    causal=False adds the symmetric bias; causal=True masks the keys after each query (either
    form then gives the same) and returns 0 for a query before every key. `scale` is static.
    """
    return _run_scores(scores, slopes, q_offset=q_offset, causal=causal, backend=backend, use_triton=use_triton,
                       scale=scale)


class ALiBiMethods:
    """The methods of `FastALiBiPositionEmbedding`, shared by its NNX and Linen forms; they
    read spec (a trinix.alibi.AlibiSpec), use_triton, backend and dtype from self."""

    @property
    def slopes(self):
        """(num_heads,) float32: the module's heads' slopes in the whole model."""
        return jnp.asarray(self.spec.slopes(), jnp.float32)

    def __call__(self, seq_len: int, batch_size: int = 1, *, key_len: int | None = None,
                 q_offset: int | None = None):
        """The bias (batch_size, num_heads, seq_len, key_len) of the module's dtype, key_len
        defaulting to seq_len. A JAX array has no stride-0 view: the batch is a broadcast,
        which XLA materializes only where it must (e.g. as a jit output)."""
        host.check_size("batch_size", batch_size)
        bias = alibi_bias(self.slopes, seq_len, key_len, causal=self.spec.causal, q_offset=q_offset,
                          dtype=self.dtype, backend=self.backend, use_triton=self.use_triton)
        return jnp.broadcast_to(bias, (batch_size, *bias.shape))

    def add_to_scores(self, scores, *, q_offset: int | None = None, backend: str | None = None):
        """scores (batch, num_heads, seqlen_q, seqlen_k) + ALiBi without a bias array (see
        `alibi_add`)."""
        return _run_scores(scores, self.slopes, q_offset=q_offset, causal=self.spec.causal,
                           backend=backend or self.backend, use_triton=self.use_triton,
                           num_heads=self.spec.num_heads)

    def softmax(self, scores, *, scale: float = 1.0, causal: bool | None = None,
                q_offset: int | None = None, backend: str | None = None):
        """softmax(scale * scores + ALiBi) over keys in one kernel (see `alibi_softmax`);
        causal (masking the keys after each query) defaults to the module's."""
        causal = self.spec.causal if causal is None else causal
        return _run_scores(scores, self.slopes, q_offset=q_offset, causal=causal, backend=backend or self.backend,
                           use_triton=self.use_triton, scale=scale, num_heads=self.spec.num_heads)

    def attention(self, q, k, v, *, causal: bool | None = None, **options):
        """Attention with this module's ALiBi inside the kernel, forward and backward (see
        `trinix.jax.attention`); causal defaults to the module's."""
        from trinix.jax.attention import alibi_attention

        return alibi_attention(self, q, k, v, causal=causal, **options)


class FastALiBiPositionEmbedding(ALiBiMethods, nnx.Module):
    """ALiBi (attention with linear biases, Press et al.) for Flax NNX.

    Holds no arrays: slopes and biases are computed per call, for any length.

    Example::

        >>> import jax.numpy as jnp
        >>> from trinix.jax import FastALiBiPositionEmbedding
        >>> alibi = FastALiBiPositionEmbedding(num_heads=8, max_seq_len=2048)
        >>> alibi(16, 2).shape
        (2, 8, 16, 16)
        >>> scores = jnp.zeros((2, 8, 4, 16))
        >>> alibi.add_to_scores(scores).shape        # the 4 queries are the last 4 keys
        (2, 8, 4, 16)
        >>> probs = alibi.softmax(scores, scale=0.125, causal=True)

    Args: those of `trinix.alibi.AlibiSpec.of` (the module's `spec`), and
      use_triton: False forces the xla backend.
      backend: "auto", "triton", "interpret" or "xla".
      dtype: dtype of the bias `__call__` returns (float32 by default).
    """

    def __init__(self, num_heads: int, max_seq_len: int = 2048, use_triton: bool = True, *,
                 backend: str = "auto", causal: bool = False, dtype=jnp.float32,
                 max_bias: float = 8.0, head_offset: int = 0, total_heads: int | None = None):
        self.spec = AlibiSpec.of(num_heads, max_seq_len, causal, max_bias, head_offset, total_heads)
        float_dtype_name(dtype)
        resolve_backend(backend, use_triton, "alibi", platform="gpu")
        self.num_heads, self.max_seq_len, self.causal, self.dtype = num_heads, max_seq_len, causal, dtype
        self.max_bias, self.head_offset, self.total_heads = max_bias, head_offset, total_heads
        self.use_triton, self.backend = use_triton, backend
