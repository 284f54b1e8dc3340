"""RoPE for JAX: the Triton kernels under custom_vjp and custom_vmap, an XLA fallback, the
functional forms and the Flax NNX module `FastRoPEPositionEmbedding`.

Shapes: q (batch, seq, heads_q, head_dim) and k (batch, seq, heads_k, head_dim) in layout
"bshd", or (batch, heads, seq, head_dim) in layout "bhsd"; cos and sin (rows, head_dim) or
(batch, rows, head_dim); position_ids (batch, seq) or (1, seq) integers.

Backends: "triton" (the kernel through jax-triton, GPU), "interpret" (the same kernel through
Triton's interpreter on the CPU), "xla" (plain jax.numpy), "auto" ("triton" on a GPU, else
"xla"). Differentiation is reverse mode only: the kernel's backward is the same kernel with the
rotation conjugated. cos and sin are constants to differentiation on every backend (their
cotangent is zero), as in the PyTorch binding.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trinix import rope as host
from trinix.jax.launcher import (as_arrays, compute_dtype, dtype_name, launch, operand, platform_of,
                                 resolve_backend)
from trinix.kernels.rope import rope_apply_call, rope_table_call


class _Rotation(NamedTuple):
    """Static configuration of one kernel rotation."""

    layout: str
    offset: int
    backend: str  # "triton" or "interpret"
    conjugate: bool = False


def _launch_rotation(q, k, cos, sin, freq_turns, positions, *, rotation: _Rotation):
    call = rope_apply_call(
        operand(q), operand(k), layout=rotation.layout, cos=operand(cos), sin=operand(sin),
        positions=operand(positions), position_offset=rotation.offset, conjugate=rotation.conjugate,
    )
    arrays = dict(q=q, k=k, cos=cos, sin=sin, freq_turns=freq_turns, positions=positions)
    return launch(call, arrays, backend=rotation.backend)


@functools.cache
def _batchable_rotation(rotation: _Rotation):
    """The kernel launch with a vmap rule (jax-triton and pure_callback have none we want)."""
    rotate = jax.custom_batching.custom_vmap(functools.partial(_launch_rotation, rotation=rotation))
    rotate.def_vmap(functools.partial(_rotation_vmap_rule, rotate))
    return rotate


def _rotation_vmap_rule(rotate, axis_size, in_batched, *args):
    """vmap of the rotation: the mapped axis (leading here) joins the batch of q, k and
    positions, so one launch serves it all. Mapped cos/sin/freq_turns, and (batch, rows, dim)
    tables, which strides cannot index by the joint batch, take one launch per example."""
    q, k, cos, sin, freq_turns, positions = args
    q_batched, k_batched, cos_batched, sin_batched, freq_batched, positions_batched = in_batched
    per_batch_table = cos is not None and cos.ndim == 3 and cos.shape[0] != 1
    if cos_batched or sin_batched or freq_batched or per_batch_table:
        def one_example(mapped):
            return rotate(*(m if b else a for a, m, b in zip(args, mapped, in_batched)))

        return jax.lax.map(one_example, [a if b else None for a, b in zip(args, in_batched)]), (True, True)

    def fold(x, batched):
        """(axis_size, batch, ...) -> (axis_size * batch, ...); an unmapped x is broadcast."""
        x = x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
        return x.reshape(axis_size * x.shape[1], *x.shape[2:])

    def unfold(x):
        return x.reshape(axis_size, batch, *x.shape[1:])

    batch = q.shape[1] if q_batched else q.shape[0]
    if positions is not None and (positions_batched or positions.shape[0] != 1):
        positions = positions if positions_batched else positions[None]
        positions = fold(jnp.broadcast_to(positions, (axis_size, batch, positions.shape[-1])), True)
    q_out, k_out = rotate(fold(q, q_batched), fold(k, k_batched), cos, sin, freq_turns, positions)
    return (unfold(q_out), unfold(k_out)), (True, True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _rotate(q, k, cos, sin, freq_turns, positions, rotation: _Rotation):
    """(q_rot, k_rot) by the kernel; cos/sin, or freq_turns and positions, are constants."""
    return _batchable_rotation(rotation)(q, k, cos, sin, freq_turns, positions)


def _rotate_fwd(q, k, cos, sin, freq_turns, positions, rotation):
    return _rotate(q, k, cos, sin, freq_turns, positions, rotation), (cos, sin, freq_turns, positions)


def _rotate_bwd(rotation, residuals, grads):
    cos, sin, freq_turns, positions = residuals
    transpose = rotation._replace(conjugate=not rotation.conjugate)
    grad_q, grad_k = _rotate(*grads, cos, sin, freq_turns, positions, transpose)
    return grad_q, grad_k, None, None, None, None


_rotate.defvjp(_rotate_fwd, _rotate_bwd)


def _rotate_xla(q, k, cos, sin, layout):
    """The xla backend: cos/sin (batch or 1, seq, head_dim), already per token."""
    compute = compute_dtype(q.dtype)
    head_axis = 2 if layout == "bshd" else 1
    cos = jnp.expand_dims(cos.astype(compute), head_axis)
    sin = jnp.expand_dims(sin.astype(compute), head_axis)

    def rotate(x):
        x_c = x.astype(compute)
        x1, x2 = jnp.split(x_c, 2, axis=-1)
        return (x_c * cos + jnp.concatenate([-x2, x1], axis=-1) * sin).astype(x.dtype)

    return rotate(q), rotate(k)


def _cos_sin_xla(freq_turns, positions, compute):
    """cos and sin (*positions.shape, dim) in `compute` dtype.

    The angle 2pi * frac(position * turns) is formed in `compute` (float32 unless x64), as in
    Flax and transformers, so it loses bits at long context; the kernels form it in float64.
    """
    positions = positions.astype(compute)[..., None]
    high, low = freq_turns.astype(compute)
    turns = positions * high
    turns = turns - jnp.floor(turns) + positions * low
    angle = (2 * math.pi) * (turns - jnp.floor(turns))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def _table_rows(table, positions):
    """Rows positions[b, s] of a (rows, dim) or (batch, rows, dim) table, as
    (batch or 1, seq, dim); NaN rows for positions outside the table, as the kernel gives."""
    table = table if table.ndim == 3 else table[None]
    inside = (positions >= 0) & (positions < table.shape[1])
    rows = jnp.take_along_axis(table, jnp.where(inside, positions, 0)[..., None], axis=1)
    return jnp.where(inside[..., None], rows, jnp.nan)


def _token_positions(position_ids, offset, seq_len):
    """(batch or 1, seq) positions of each token."""
    if position_ids is not None:
        return position_ids
    return jnp.arange(offset, offset + seq_len)[None]


def _check_table_positions(position_ids, rows: int) -> None:
    """Concrete position_ids outside a cos/sin table are refused; traced ones can't be read
    (the rotation then yields NaN for such rows)."""
    if position_ids is None or position_ids.size == 0 or isinstance(position_ids, jax.core.Tracer):
        return
    values = np.asarray(position_ids)
    low, high = values.min(), values.max()
    if low < 0 or high >= rows:
        raise ValueError(f"position_ids must lie in [0, {rows}) to index cos/sin of {rows} rows, "
                         f"got values in [{low}, {high}]")


def _inv_freq64(inv_freq) -> np.ndarray:
    if isinstance(inv_freq, jax.core.Tracer):
        raise TypeError("inv_freq must be concrete (a numpy or jax array outside jit): the "
                        "rotation is specialised to it")
    inv_freq = np.ascontiguousarray(inv_freq, dtype=np.float64)
    if inv_freq.ndim != 1 or inv_freq.size == 0:
        raise ValueError(f"inv_freq must be a non-empty 1-dim array, got shape {inv_freq.shape}")
    return inv_freq


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, *, layout: str = "bshd",
                         backend: str = "auto", use_triton: bool = True):
    """Rotate q and k by given cos/sin tables (rows, head_dim) or (batch, rows, head_dim).

    Token s of batch b reads row position_ids[b, s], or row s without position_ids. Returns
    (q_rot, k_rot) in the layout and dtype of q and k. Concrete position_ids outside the table
    raise ValueError; under jit such tokens come out NaN.
    """
    return _apply_table(q, k, cos, sin, position_ids, layout=layout, backend=backend,
                        use_triton=use_triton)


def _apply_table(q, k, cos, sin, position_ids, *, layout, backend, use_triton, dim=None):
    """`apply_rotary_pos_emb`, checking head_dim against a module's `dim` if given."""
    q, k, cos, sin, position_ids = as_arrays(q=q, k=k, cos=cos, sin=sin, position_ids=position_ids)
    host.check_rope_apply(operand(q), operand(k), layout=layout, cos=operand(cos), sin=operand(sin),
                          positions=operand(position_ids), dim=dim)
    _check_table_positions(position_ids, cos.shape[-2])
    backend = resolve_backend(backend, use_triton, platform_of(q))
    cos, sin = jax.lax.stop_gradient(cos), jax.lax.stop_gradient(sin)
    if backend == "xla":
        positions = _token_positions(position_ids, 0, host.split_bshd(q.shape, layout)[1])
        return _rotate_xla(q, k, _table_rows(cos, positions), _table_rows(sin, positions), layout)
    return _rotate(q, k, cos, sin, None, position_ids, _Rotation(layout, 0, backend))


def rope_rotate(q, k, inv_freq, *, position_ids=None, offset: int = 0, layout: str = "bshd",
                backend: str = "auto", use_triton: bool = True):
    """Rotate q and k with cos/sin computed from positions x inv_freq; no table exists.

    inv_freq: (head_dim / 2,) frequencies, concrete (numpy float64 is exact). Positions are
    position_ids (batch or 1, seq), or offset + s. Returns (q_rot, k_rot) like q and k.
    """
    q, k, position_ids = as_arrays(q=q, k=k, position_ids=position_ids)
    inv_freq = _inv_freq64(inv_freq)
    host.check_rope_apply(operand(q), operand(k), layout=layout, positions=operand(position_ids),
                          position_offset=offset, dim=2 * inv_freq.size)
    backend = resolve_backend(backend, use_triton, platform_of(q))
    freq_turns = jnp.asarray(host.frequency_turns(inv_freq))
    if backend == "xla":
        positions = _token_positions(position_ids, offset, host.split_bshd(q.shape, layout)[1])
        cos, sin = _cos_sin_xla(freq_turns, positions, compute_dtype(q.dtype))
        return _rotate_xla(q, k, cos, sin, layout)
    return _rotate(q, k, None, None, freq_turns, position_ids, _Rotation(layout, offset, backend))


def rope_cos_sin(inv_freq, seq_len: int, *, offset: int = 0, dtype=jnp.float32,
                 backend: str = "auto", use_triton: bool = True):
    """cos and sin tables, each (seq_len, 2 * len(inv_freq)) of `dtype`, for positions
    offset .. offset + seq_len - 1; one kernel launch on the Triton backends."""
    host.check_seq_len(seq_len)
    inv_freq = _inv_freq64(inv_freq)
    dtype = jnp.dtype(dtype)
    if dtype_name(dtype) not in host.FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {host.FLOAT_DTYPES}, got {dtype}")
    backend = resolve_backend(backend, use_triton, platform_of(None))
    freq_turns = jnp.asarray(host.frequency_turns(inv_freq))
    if backend == "xla":
        positions = jnp.arange(offset, offset + seq_len)
        cos, sin = _cos_sin_xla(freq_turns, positions, compute_dtype(dtype))
        return cos.astype(dtype), sin.astype(dtype)
    call = rope_table_call(seq_len, 2 * inv_freq.size, dtype_name(dtype), position_offset=offset)
    return launch(call, dict(freq_turns=freq_turns), backend=backend)


class RoPEMethods:
    """The methods of `FastRoPEPositionEmbedding`, shared by its NNX and Linen forms; they
    read dim, max_position_embeddings, base, use_triton, backend and layout from self."""

    def _check_config(self) -> None:
        host.check_rope_config(self.dim, self.base)
        host.check_layout(self.layout)
        resolve_backend(self.backend, self.use_triton, "gpu")

    @property
    def inv_freq(self) -> np.ndarray:
        """(dim / 2,) float64 frequencies."""
        return host.default_inv_freq(self.dim, self.base)

    def __call__(self, x, seq_len: int | None = None, *, offset: int = 0):
        """cos and sin, each (seq_len, dim) in x's dtype, for positions offset .. offset +
        seq_len - 1; seq_len defaults to x's seq dim (x 4 dims in the module's layout)."""
        (x,) = as_arrays(x=x)
        if seq_len is None:
            if x.ndim != 4:
                raise ValueError(f"x must have 4 dims in layout {self.layout!r} to give seq_len, "
                                 f"got shape {tuple(x.shape)}; or pass seq_len")
            seq_len = host.split_bshd(x.shape, self.layout)[1]
        return rope_cos_sin(self.inv_freq, seq_len, offset=offset, dtype=x.dtype,
                            backend=self.backend, use_triton=self.use_triton)

    def apply_rotary_pos_emb(self, q, k, cos, sin, position_ids=None, *, backend: str | None = None):
        """`apply_rotary_pos_emb` in the module's layout and backend (or `backend`)."""
        return _apply_table(q, k, cos, sin, position_ids, layout=self.layout,
                            backend=backend or self.backend, use_triton=self.use_triton, dim=self.dim)

    def rotate(self, q, k, *, position_ids=None, offset: int = 0, backend: str | None = None):
        """`rope_rotate` by the module's frequencies: cos/sin computed, no table."""
        return rope_rotate(q, k, self.inv_freq, position_ids=position_ids, offset=offset,
                           layout=self.layout, backend=backend or self.backend,
                           use_triton=self.use_triton)


class FastRoPEPositionEmbedding(RoPEMethods, nnx.Module):
    """Rotary position embedding (half-split, as LLaMA and transformers) for Flax NNX.

    Holds no arrays: cos/sin are computed per call, so sequences longer than
    max_position_embeddings work too (the value is kept for the configs that name it).

    Example::

        >>> import jax.numpy as jnp
        >>> from trinix.jax import FastRoPEPositionEmbedding
        >>> rope = FastRoPEPositionEmbedding(64)
        >>> q, k = jnp.ones((2, 16, 8, 64)), jnp.ones((2, 16, 2, 64))
        >>> cos, sin = rope(q)
        >>> cos.shape
        (16, 64)
        >>> q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)
        >>> q_rot.shape, k_rot.shape
        ((2, 16, 8, 64), (2, 16, 2, 64))
        >>> q_rot, k_rot = rope.rotate(q, k, offset=16)  # cos/sin computed, no table

    Args:
      dim: rotary head_dim (even).
      max_position_embeddings: the model's context length.
      base: RoPE base; frequencies are base ** (-2i / dim).
      use_triton: False forces the xla backend.
      backend: "auto", "triton", "interpret" or "xla".
      layout: "bshd" or "bhsd", for q, k and x.
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd"):
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.use_triton = use_triton
        self.backend = backend
        self.layout = layout
        self._check_config()
