"""ALiBi for JAX: the Triton kernels under custom_vjp and custom_vmap, an XLA fallback, the
functional forms and the Flax NNX module `FastALiBiPositionEmbedding`.

Shapes: scores (batch, heads, seqlen_q, seqlen_k); slopes (heads,) float32, or (batch or 1,
heads) for the scores ops; a bias (heads, seqlen_q, seqlen_k). Query i sits at key position
i + q_offset, by default seqlen_k - seqlen_q (bottom-right, as a KV cache needs). Bias forms:
symmetric -m|j - i'| and causal m(j - i') (the caller masks j > i'; the fused softmax does).

Backends: "triton" (jax-triton, GPU), "interpret" (the same kernels through Triton's
interpreter on the CPU), "xla" (plain jax.numpy), "auto" ("triton" on a GPU, else "xla").
Reverse-mode differentiation: adding ALiBi passes the scores' cotangent through unchanged; the
fused softmax's is scale * y * (g - sum(g * y)) in jax.numpy. Slopes are constants. Under
vmap the mapped axis joins the scores' batch (or, for a bias, the heads): one launch.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from trinix import alibi as host
from trinix.jax.launcher import (as_arrays, compute_dtype, float_dtype_name, launch, operand, platform_of,
                                 resolve_backend)
from trinix.kernels.alibi import alibi_add_call, alibi_bias_call, alibi_slopes_call, alibi_softmax_call


class _Alibi(NamedTuple):
    """Static configuration of one kernel launch."""

    q_offset: int
    causal: bool
    backend: str  # "triton" or "interpret"
    scale: float = 1.0  # the fused softmax's


def _launch_bias(slopes, *, op: _Alibi, seqlen: tuple[int, int], dtype: str):
    call = alibi_bias_call(operand(slopes), *seqlen, q_offset=op.q_offset, causal=op.causal, dtype=dtype)
    return launch(call, dict(slopes=slopes), backend=op.backend)[0]


def _launch_add(scores, slopes, *, op: _Alibi):
    # In place: under jit XLA reuses the scores' buffer when nothing else needs it.
    call = alibi_add_call(operand(scores), operand(slopes), q_offset=op.q_offset, causal=op.causal,
                          inplace=True)
    return launch(call, dict(scores=scores, slopes=slopes), backend=op.backend)[0]


def _launch_softmax(scores, slopes, *, op: _Alibi):
    call = alibi_softmax_call(operand(scores), operand(slopes), scale=op.scale, q_offset=op.q_offset,
                              causal=op.causal)
    return launch(call, dict(scores=scores, slopes=slopes), backend=op.backend)[0]


@functools.cache
def _batchable_scores_op(launch_scores_op, op: _Alibi):
    """A scores launch with a vmap rule (jax-triton and pure_callback have none we want)."""
    run = jax.custom_batching.custom_vmap(functools.partial(launch_scores_op, op=op))
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
def _batchable_bias(op: _Alibi, seqlen: tuple[int, int], dtype: str):
    """The bias launch with a vmap rule: mapped slopes (n, heads) are n * heads heads."""
    run = jax.custom_batching.custom_vmap(functools.partial(_launch_bias, op=op, seqlen=seqlen, dtype=dtype))

    @run.def_vmap
    def rule(axis_size, in_batched, slopes):
        bias = run(slopes.reshape(-1))
        return bias.reshape(axis_size, -1, *bias.shape[1:]), True

    return run


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _add(scores, slopes, op: _Alibi):
    return _batchable_scores_op(_launch_add, op)(scores, slopes)


def _add_fwd(scores, slopes, op):
    return _add(scores, slopes, op), None


def _add_bwd(op, _, grad):
    return grad, None


_add.defvjp(_add_fwd, _add_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _softmax(scores, slopes, op: _Alibi):
    return _batchable_scores_op(_launch_softmax, op)(scores, slopes)


def _softmax_fwd(scores, slopes, op):
    y = _softmax(scores, slopes, op)
    return y, y


def _softmax_bwd(op, y, grad):
    """scale * y * (g - sum_k g * y), in float32 (float64 for float64)."""
    compute = compute_dtype(y.dtype)
    y32, g32 = y.astype(compute), grad.astype(compute)
    dscores = op.scale * y32 * (g32 - (g32 * y32).sum(-1, keepdims=True))
    return dscores.astype(y.dtype), None


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _distance(seqlen_q: int, seqlen_k: int, q_offset: int):
    """(seqlen_q, seqlen_k) int32 key position - query position."""
    return jnp.arange(seqlen_k)[None, :] - jnp.arange(q_offset, q_offset + seqlen_q)[:, None]


def _from_nearest_key(distance, causal: bool):
    """distance less, per row, that of the row's nearest visible key: the softmax's bias then
    keeps its precision far from the keys (kernels/alibi.py, _from_nearest_key)."""
    seqlen_k = distance.shape[-1]
    query = -distance[:, :1]
    if causal:
        return distance - jnp.minimum(seqlen_k - 1 - query, 0)
    return jnp.abs(distance) - jnp.maximum(jnp.maximum(query - (seqlen_k - 1), -query), 0)


def _bias_xla(slopes, distance, causal: bool, compute):
    """The xla backend's bias, (*slopes.shape, seqlen_q, seqlen_k) in `compute`."""
    m = slopes.astype(compute)[..., None, None]
    d = distance.astype(compute)
    return m * d if causal else -m * jnp.abs(d)


def _per_batch(slopes):
    """(heads,) or (batch or 1, heads) slopes as (batch or 1, heads)."""
    return slopes if slopes.ndim == 2 else slopes[None]


def _softmax_xla(scores, slopes, scale, q_offset, causal):
    seqlen_q, seqlen_k = scores.shape[-2:]
    compute = compute_dtype(scores.dtype)
    distance = _distance(seqlen_q, seqlen_k, q_offset)
    bias = _bias_xla(_per_batch(slopes), _from_nearest_key(distance, causal), causal, compute)
    z = scale * scores.astype(compute) + bias
    if causal:
        z = jnp.where(distance > 0, -jnp.inf, z)
    hidden = z == -jnp.inf  # keys causal masking or the caller's -inf scores hide
    # A row with no key left is 0, as the kernel gives; filling it with 0 before softmax keeps
    # its gradient finite.
    z = jnp.where(hidden.all(-1, keepdims=True), 0.0, z)
    return jnp.where(hidden, 0.0, jax.nn.softmax(z, axis=-1)).astype(scores.dtype)


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
    slopes = host.alibi_slopes(num_heads, max_bias=max_bias, head_offset=head_offset,
                               total_heads=total_heads)
    backend = resolve_backend(backend, use_triton, platform_of(None))
    if backend == "xla":
        return jnp.asarray(slopes, jnp.float32)
    call = alibi_slopes_call(num_heads, head_offset=head_offset, total_heads=total_heads)
    return launch(call, dict(max_bias=jnp.full((1,), max_bias, jnp.float32)), backend=backend)[0]


def alibi_bias(slopes, seq_len: int, key_len: int | None = None, *, causal: bool = False,
               q_offset: int | None = None, dtype=jnp.float32, backend: str = "auto",
               use_triton: bool = True):
    """The ALiBi bias (heads, seq_len, key_len) of `dtype` for slopes (heads,), key_len
    defaulting to seq_len. A bias too big for the device's memory is refused (ValueError)
    before anything is allocated."""
    (slopes,) = as_arrays(slopes=slopes)
    host.check_slopes(operand(slopes))
    host.check_size("seq_len", seq_len)
    seqlen_k = seq_len if key_len is None else key_len
    host.check_size("key_len", seqlen_k)
    q_offset = host.query_offset(q_offset, seq_len, seqlen_k)
    dtype = float_dtype_name(dtype)
    host.check_bias_fits((slopes.shape[0], seq_len, seqlen_k), dtype, _available_bytes())
    backend = resolve_backend(backend, use_triton, platform_of(slopes))
    slopes = jax.lax.stop_gradient(slopes)
    if backend == "xla":
        compute = compute_dtype(jnp.dtype(dtype))
        return _bias_xla(slopes, _distance(seq_len, seqlen_k, q_offset), causal, compute).astype(dtype)
    return _batchable_bias(_Alibi(q_offset, causal, backend), (seq_len, seqlen_k), dtype)(slopes)


def _checked_scores(scores, slopes, q_offset, num_heads=None):
    """scores and slopes as arrays, checked (scores' heads against a module's), and the query
    offset."""
    scores, slopes = as_arrays(scores=scores, slopes=slopes)
    host.check_scores(operand(scores), operand(slopes), num_heads=num_heads)
    return scores, jax.lax.stop_gradient(slopes), host.query_offset(q_offset, *scores.shape[-2:])


def alibi_add(scores, slopes, *, causal: bool = False, q_offset: int | None = None,
              backend: str = "auto", use_triton: bool = True):
    """scores + ALiBi bias, without a bias array: one kernel reads and writes each score once
    (into the scores' buffer, where XLA can reuse it). The cotangent of scores passes through."""
    scores, slopes, q_offset = _checked_scores(scores, slopes, q_offset)
    backend = resolve_backend(backend, use_triton, platform_of(scores))
    if backend == "xla":
        bias = _bias_xla(_per_batch(slopes), _distance(*scores.shape[-2:], q_offset), causal,
                         compute_dtype(scores.dtype))
        return (scores.astype(bias.dtype) + bias).astype(scores.dtype)
    return _add(scores, slopes, _Alibi(q_offset, causal, backend))


def alibi_softmax(scores, slopes, *, scale: float = 1.0, causal: bool = False,
                  q_offset: int | None = None, backend: str = "auto", use_triton: bool = True):
    """softmax over keys of scale * scores + ALiBi bias in one kernel, like scores.

    causal=False adds the symmetric bias; causal=True masks the keys after each query (either
    form then gives the same) and returns 0 for a query before every key. `scale` is static.
    """
    scores, slopes, q_offset = _checked_scores(scores, slopes, q_offset)
    host.check_scale(scale)
    backend = resolve_backend(backend, use_triton, platform_of(scores))
    if backend == "xla":
        return _softmax_xla(scores, slopes, scale, q_offset, causal)
    return _softmax(scores, slopes, _Alibi(q_offset, causal, backend, float(scale)))


class ALiBiMethods:
    """The methods of `FastALiBiPositionEmbedding`, shared by its NNX and Linen forms; they
    read num_heads, max_seq_len, use_triton, backend, causal, dtype, max_bias, head_offset and
    total_heads from self."""

    def _check_config(self) -> None:
        host.check_alibi_config(self.num_heads, max_bias=self.max_bias, head_offset=self.head_offset,
                                total_heads=self.total_heads, max_seq_len=self.max_seq_len)
        float_dtype_name(self.dtype)
        resolve_backend(self.backend, self.use_triton, "gpu")

    @property
    def slopes(self):
        """(num_heads,) float32: the module's heads' slopes in the whole model."""
        slopes = host.alibi_slopes(self.num_heads, max_bias=self.max_bias, head_offset=self.head_offset,
                                   total_heads=self.total_heads)
        return jnp.asarray(slopes, jnp.float32)

    def __call__(self, seq_len: int, batch_size: int = 1, *, key_len: int | None = None,
                 q_offset: int | None = None):
        """The bias (batch_size, num_heads, seq_len, key_len) of the module's dtype, key_len
        defaulting to seq_len. A JAX array has no stride-0 view: the batch is a broadcast,
        which XLA materializes only where it must (e.g. as a jit output)."""
        host.check_size("batch_size", batch_size)
        bias = alibi_bias(self.slopes, seq_len, key_len, causal=self.causal, q_offset=q_offset,
                          dtype=self.dtype, backend=self.backend, use_triton=self.use_triton)
        return jnp.broadcast_to(bias, (batch_size, *bias.shape))

    def add_to_scores(self, scores, *, q_offset: int | None = None, backend: str | None = None):
        """scores (batch, num_heads, seqlen_q, seqlen_k) + ALiBi without a bias array (see
        `alibi_add`)."""
        _checked_scores(scores, self.slopes, q_offset, self.num_heads)
        return alibi_add(scores, self.slopes, causal=self.causal, q_offset=q_offset,
                         backend=backend or self.backend, use_triton=self.use_triton)

    def softmax(self, scores, *, scale: float = 1.0, causal: bool | None = None,
                q_offset: int | None = None, backend: str | None = None):
        """softmax(scale * scores + ALiBi) over keys in one kernel (see `alibi_softmax`);
        causal (masking the keys after each query) defaults to the module's."""
        _checked_scores(scores, self.slopes, q_offset, self.num_heads)
        return alibi_softmax(scores, self.slopes, scale=scale,
                             causal=self.causal if causal is None else causal, q_offset=q_offset,
                             backend=backend or self.backend, use_triton=self.use_triton)


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

    Args:
      num_heads: heads of this module (of the shard, under tensor parallelism).
      max_seq_len: the context the model was trained for. Longer sequences are served, not
        refused (ALiBi extrapolates; there is no table to outgrow); only a bias too big for the
        device's memory is refused (use add_to_scores or softmax then).
      use_triton: False forces the xla backend.
      backend: "auto", "triton", "interpret" or "xla".
      causal: the bias form, causal m(j - i') instead of symmetric -m|j - i'|; also the default
        mask of `softmax`.
      dtype: dtype of the bias `__call__` returns (float32 by default).
      max_bias: the 8 of the paper's slopes 2^(-8h/n).
      head_offset, total_heads: this module's heads are heads head_offset .. head_offset +
        num_heads - 1 of a model with total_heads heads, and get their slopes.
    """

    def __init__(self, num_heads: int, max_seq_len: int = 2048, use_triton: bool = True, *,
                 backend: str = "auto", causal: bool = False, dtype=jnp.float32,
                 max_bias: float = 8.0, head_offset: int = 0, total_heads: int | None = None):
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.use_triton = use_triton
        self.backend = backend
        self.causal = causal
        self.dtype = dtype
        self.max_bias = max_bias
        self.head_offset = head_offset
        self.total_heads = total_heads
        self._check_config()
