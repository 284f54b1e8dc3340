"""RoPE for JAX: the Triton kernels under custom_vjp and custom_vmap, an XLA fallback, the
functional forms and the Flax NNX module `FastRoPEPositionEmbedding`.

Shapes: q (batch, seq, heads_q, head_dim) and k (batch, seq, heads_k, head_dim) in layout
"bshd", (batch, heads, seq, head_dim) in "bhsd", or packed sequences (tokens, heads,
head_dim) in "thd" with cu_seqlens (n_seqs + 1,); cos and sin (rows, rotary_dim) or
(batch, rows, rotary_dim); position_ids (batch or 1, seq) integers, (tokens,) for "thd".
The first rotary_dim columns of a head rotate, in half-split pairs (i, i + rotary_dim/2) or
interleaved pairs (2i, 2i + 1); the rest pass through.

Backends: "triton" (the kernel through jax-triton, GPU), "interpret" (the same kernel through
Triton's interpreter on the CPU), "xla" (plain jax.numpy), "auto" ("triton" on a GPU, else
"xla"). Differentiation is reverse mode only: the kernel's backward is the same kernel with the
rotation conjugated. cos and sin are constants to differentiation on every backend (their
cotangent is zero), as in the PyTorch binding.

Under jit, array arguments may be traced; options that shape the launch are static: an int
offset (per-sequence offsets are an array, traced or not) and max_seqlen of packed sequences.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trinix import rope as host
from trinix.rope_scaling import SEQ_LEN_DEPENDENT, RopeConfig, inv_freq_and_scale
from trinix.jax.launcher import (as_arrays, compute_dtype, dtype_name, float_dtype_name, launch, operand,
                                 platform_of, resolve_backend)
from trinix.kernels.rope import rope_apply_call, rope_table_call


class _Rotation(NamedTuple):
    """Static configuration of one kernel rotation."""

    layout: str
    offset: int
    interleaved: bool
    max_seqlen: int
    backend: str  # "triton" or "interpret"
    conjugate: bool = False


def _launch_rotation(q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens, *,
                     rotation: _Rotation):
    call = rope_apply_call(
        operand(q), operand(k), layout=rotation.layout,
        rotary_dim=None if frequencies is None else 2 * frequencies.shape[1],
        interleaved=rotation.interleaved, cos=operand(cos), sin=operand(sin),
        positions=operand(positions), batch_offsets=operand(batch_offsets),
        cu_seqlens=operand(cu_seqlens), max_seqlen=rotation.max_seqlen,
        position_offset=rotation.offset, conjugate=rotation.conjugate,
    )
    arrays = dict(q=q, k=k, cos=cos, sin=sin, frequencies=frequencies, positions=positions,
                  cu_seqlens=cu_seqlens)
    if batch_offsets is not None:  # the kernel reads per-sequence offsets where ids would be
        arrays["positions"] = batch_offsets
    return launch(call, arrays, backend=rotation.backend)


@functools.cache
def _batchable_rotation(rotation: _Rotation):
    """The kernel launch with a vmap rule (jax-triton and pure_callback have none we want)."""
    rotate = jax.custom_batching.custom_vmap(functools.partial(_launch_rotation, rotation=rotation))
    rotate.def_vmap(functools.partial(_rotation_vmap_rule, rotate, rotation.layout))
    return rotate


def _rotation_vmap_rule(rotate, layout, axis_size, in_batched, *args):
    """vmap of the rotation: the mapped axis (leading here) joins the batch of q, k, positions
    and per-sequence offsets, so one launch serves it all. Mapped cos/sin/frequencies,
    (batch, rows, dim) tables, which strides cannot index by the joint batch, and packed "thd"
    sequences, which have no batch axis to join, take one launch per example."""
    q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens = args
    (q_batched, k_batched, cos_batched, sin_batched, freq_batched, positions_batched, offsets_batched,
     _) = in_batched
    per_batch_table = cos is not None and cos.ndim == 3 and cos.shape[0] != 1
    if layout == "thd" or cos_batched or sin_batched or freq_batched or per_batch_table:
        def one_example(mapped):
            return rotate(*(m if b else a for a, m, b in zip(args, mapped, in_batched)))

        return jax.lax.map(one_example, [a if b else None for a, b in zip(args, in_batched)]), (True, True)

    def fold(x, batched):
        """(axis_size, batch, ...) -> (axis_size * batch, ...); an unmapped x is broadcast."""
        x = x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
        return x.reshape(axis_size * x.shape[1], *x.shape[2:])

    def unfold(x):
        return x.reshape(axis_size, batch, *x.shape[1:])

    def fold_per_batch(x, batched):
        """x, (batch or 1, ...) per example, for the joint batch; one unmapped row shared by
        every batch stays as it is (the kernel reads it with batch stride 0)."""
        if x is None or (not batched and x.shape[0] == 1):
            return x
        x = x if batched else x[None]
        return fold(jnp.broadcast_to(x, (axis_size, batch, *x.shape[2:])), True)

    batch = q.shape[1] if q_batched else q.shape[0]
    q_out, k_out = rotate(fold(q, q_batched), fold(k, k_batched), cos, sin, frequencies,
                          fold_per_batch(positions, positions_batched),
                          fold_per_batch(batch_offsets, offsets_batched), cu_seqlens)
    return (unfold(q_out), unfold(k_out)), (True, True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _rotate_kernel(q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens,
                   rotation: _Rotation):
    """(q_rot, k_rot) by the kernel; every argument but q and k is a constant."""
    return _batchable_rotation(rotation)(q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens)


def _rotate_kernel_fwd(q, k, *constants_and_rotation):
    return _rotate_kernel(q, k, *constants_and_rotation), constants_and_rotation[:-1]


def _rotate_kernel_bwd(rotation, constants, grads):
    transpose = rotation._replace(conjugate=not rotation.conjugate)
    return (*_rotate_kernel(*grads, *constants, transpose), *(None,) * len(constants))


_rotate_kernel.defvjp(_rotate_kernel_fwd, _rotate_kernel_bwd)


def _pairs(x, half: int, interleaved: bool):
    """The two members of each rotated pair, from the first 2 * half columns of x."""
    if interleaved:
        return x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    return x[..., :half], x[..., half:2 * half]


def _rotate_xla(q, k, cos, sin, layout, interleaved):
    """The xla backend: cos/sin (batch or 1, seq, rotary_dim), or (tokens, rotary_dim) for
    "thd", already per token."""
    compute = compute_dtype(q.dtype)
    head_axis = -3 if layout == "bhsd" else -2  # where cos/sin broadcast over heads
    half = cos.shape[-1] // 2
    c1, c2 = (jnp.expand_dims(c, head_axis) for c in _pairs(cos.astype(compute), half, interleaved))
    s1, s2 = (jnp.expand_dims(s, head_axis) for s in _pairs(sin.astype(compute), half, interleaved))

    def rotate(x):
        x1, x2 = _pairs(x.astype(compute), half, interleaved)
        o1, o2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
        if interleaved:
            rotated = jnp.stack((o1, o2), axis=-1).reshape(*o1.shape[:-1], 2 * half)
        else:
            rotated = jnp.concatenate((o1, o2), axis=-1)
        return jnp.concatenate((rotated.astype(x.dtype), x[..., 2 * half:]), axis=-1)

    return rotate(q), rotate(k)


def _cos_sin_xla(frequencies, positions, compute, interleaved):
    """cos and sin (*positions.shape, rotary_dim) in `compute` dtype, times the amplitude.

    The angle 2pi * frac(position * turns) is formed in `compute` (float32 unless x64), as in
    Flax and transformers, so it loses bits at long context; the kernels form it in float64.
    """
    positions = positions.astype(compute)[..., None]
    high, low, amplitude = frequencies.astype(compute)
    turns = positions * high
    turns = turns - jnp.floor(turns) + positions * low
    angle = (2 * math.pi) * (turns - jnp.floor(turns))

    def in_both_columns(x):
        """Each frequency's value in both columns of its pair (see _pairs)."""
        return jnp.repeat(x, 2, axis=-1) if interleaved else jnp.concatenate([x, x], axis=-1)

    return in_both_columns(amplitude * jnp.cos(angle)), in_both_columns(amplitude * jnp.sin(angle))


def _table_rows(table, positions, sequence):
    """Rows `positions` of a (rows, dim) table, or of sequence `sequence` (broadcastable to
    positions) of a (batch, rows, dim) one, as (*positions.shape, dim); NaN rows for positions
    outside the table, as the kernel gives."""
    table = table if table.ndim == 3 else table[None]
    inside = (positions >= 0) & (positions < table.shape[1])
    rows = table[sequence if table.shape[0] > 1 else 0, jnp.where(inside, positions, 0)]
    return jnp.where(inside[..., None], rows, jnp.nan)


def _token_positions(shape, layout, position_ids, batch_offsets, cu_seqlens, offset):
    """Position of each token, (batch or 1, seq), or (tokens,) for "thd", and the batch
    (sequence) index to read per-batch tables at, broadcastable to it. Packed tokens find
    their sequence by a search of cu_seqlens on the device: no host sync, traceable."""
    if layout == "thd":
        tokens = jnp.arange(shape[0])
        sequence = jnp.searchsorted(cu_seqlens[1:], tokens, side="right")
        if position_ids is not None:
            return position_ids, sequence
        positions = tokens - cu_seqlens[sequence] + offset
        if batch_offsets is not None:
            positions = positions + jnp.broadcast_to(batch_offsets, cu_seqlens[1:].shape)[sequence]
        return positions, sequence
    batch, seq_len = host.split_bshd(shape, layout)[:2]
    positions = position_ids
    if positions is None:
        positions = jnp.arange(offset, offset + seq_len)[None]
        if batch_offsets is not None:
            positions = positions + batch_offsets[:, None]
    return positions, jnp.arange(batch)[:, None]


def _check_table_positions(position_ids, rows: int) -> None:
    """Concrete position_ids outside a cos/sin table are refused; traced ones can't be read
    (the rotation then yields NaN for such rows)."""
    if position_ids is not None and not isinstance(position_ids, jax.core.Tracer):
        host.check_table_positions(np.asarray(position_ids), rows)


def _packed_max_seqlen(cu_seqlens, tokens: int, max_seqlen) -> int:
    """The longest packed sequence, which sizes the launch, so a static int: max_seqlen if
    given, else read from cu_seqlens. Concrete cu_seqlens are checked (one device-to-host
    read); traced ones can be neither checked nor read, so they need max_seqlen."""
    if cu_seqlens is None:
        return 0
    if max_seqlen is not None and (isinstance(max_seqlen, bool)
                                   or not isinstance(max_seqlen, (int, np.integer))):
        raise TypeError(f"max_seqlen must be a static int, got {type(max_seqlen).__name__}")
    if isinstance(cu_seqlens, jax.core.Tracer):
        if max_seqlen is None:
            raise ValueError("traced cu_seqlens (under jit or vmap) need max_seqlen, a static int: "
                             "reading it from cu_seqlens would need their values")
        return int(max_seqlen)
    return host.packed_max_seqlen(np.asarray(cu_seqlens), tokens, max_seqlen)


def _inv_freq64(inv_freq) -> np.ndarray:
    if isinstance(inv_freq, jax.core.Tracer):
        raise TypeError("inv_freq must be concrete (a numpy or jax array outside jit): the "
                        "rotation is specialised to it")
    return host.as_inv_freq(inv_freq)


def _split_offset(offset):
    """(int offset, per-sequence offsets array or None) from an int or a (batch,) array."""
    if isinstance(offset, (jax.Array, np.ndarray)):
        return 0, offset
    return offset, None


def _rotate(q, k, *, cos=None, sin=None, inv_freq=None, attention_factor=1.0, position_ids=None,
            offset=0, layout="bshd", interleaved=False, cu_seqlens=None, max_seqlen=None,
            backend="auto", use_triton=True):
    """Check, then rotate by the chosen backend (see apply_rotary_pos_emb and rope_rotate)."""
    if inv_freq is None:  # by tables: both are needed
        for name, table in (("cos", cos), ("sin", sin)):
            if not isinstance(table, (jax.Array, np.ndarray)):
                raise TypeError(f"{name} must be a jax or numpy array, got {type(table).__name__}")
    offset, batch_offsets = _split_offset(offset)
    q, k, cos, sin, position_ids, batch_offsets, cu_seqlens = as_arrays(
        q=q, k=k, cos=cos, sin=sin, position_ids=position_ids, offset=batch_offsets,
        cu_seqlens=cu_seqlens)
    host.check_rope_apply(
        operand(q), operand(k), layout=layout, cos=operand(cos), sin=operand(sin),
        positions=operand(position_ids), batch_offsets=operand(batch_offsets),
        cu_seqlens=operand(cu_seqlens), position_offset=offset,
        dim=None if inv_freq is None else 2 * inv_freq.size,
    )
    if cos is not None:
        _check_table_positions(position_ids, cos.shape[-2])
        cos, sin = jax.lax.stop_gradient(cos), jax.lax.stop_gradient(sin)
    max_seqlen = _packed_max_seqlen(cu_seqlens, q.shape[0], max_seqlen)
    if cos is not None and position_ids is None:
        host.check_table_rows(cos.shape[-2], max_seqlen)
    backend = resolve_backend(backend, use_triton, platform_of(q))
    frequencies = None
    if inv_freq is not None:
        frequencies = jnp.asarray(host.kernel_frequencies(inv_freq, attention_factor))
    if backend == "xla":
        positions, sequence = _token_positions(q.shape, layout, position_ids, batch_offsets,
                                               cu_seqlens, offset)
        if cos is None:
            cos, sin = _cos_sin_xla(frequencies, positions, compute_dtype(q.dtype), interleaved)
        else:
            cos, sin = _table_rows(cos, positions, sequence), _table_rows(sin, positions, sequence)
        return _rotate_xla(q, k, cos, sin, layout, interleaved)
    rotation = _Rotation(layout, offset, interleaved, max_seqlen, backend)
    return _rotate_kernel(q, k, cos, sin, frequencies, position_ids, batch_offsets, cu_seqlens, rotation)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, *, layout: str = "bshd",
                         interleaved: bool = False, cu_seqlens=None, max_seqlen: int | None = None,
                         backend: str = "auto", use_triton: bool = True):
    """Rotate q and k by given cos/sin tables (rows, rotary_dim) or (batch, rows, rotary_dim).

    Token s of batch b reads row position_ids[b, s], or row s without position_ids (for
    packed "thd" sequences: row s of its own sequence). The first rotary_dim columns of each
    head rotate, in `interleaved` pairs or half-split; the rest pass through. Returns
    (q_rot, k_rot) in the layout and dtype of q and k. Concrete position_ids outside the table
    raise ValueError; under jit such tokens come out NaN.
    """
    return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=layout,
                   interleaved=interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                   backend=backend, use_triton=use_triton)


def rope_rotate(q, k, inv_freq, *, position_ids=None, offset=0, layout: str = "bshd",
                interleaved: bool = False, attention_factor: float = 1.0, cu_seqlens=None,
                max_seqlen: int | None = None, backend: str = "auto", use_triton: bool = True):
    """Rotate q and k with cos/sin computed from positions x inv_freq; no table exists.

    inv_freq: (rotary_dim / 2,) frequencies, concrete (numpy float64 is exact); rotary_dim <=
    head_dim, the columns past it pass through. Positions are position_ids, or offset + s, with
    `offset` a static int or per-sequence (batch,) integers (KV-cache decoding). cos and sin
    carry `attention_factor`. Returns (q_rot, k_rot) like q and k.
    """
    return _rotate(q, k, inv_freq=_inv_freq64(inv_freq), attention_factor=attention_factor,
                   position_ids=position_ids, offset=offset, layout=layout, interleaved=interleaved,
                   cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend,
                   use_triton=use_triton)


def rope_cos_sin(inv_freq, seq_len: int, *, offset: int = 0, dtype=jnp.float32,
                 interleaved: bool = False, attention_factor: float = 1.0, backend: str = "auto",
                 use_triton: bool = True):
    """cos and sin tables, each (seq_len, 2 * len(inv_freq)) of `dtype`, for positions
    offset .. offset + seq_len - 1, times `attention_factor`, in half-split or `interleaved`
    column order; one kernel launch on the Triton backends."""
    host.check_seq_len(seq_len)
    host.check_offset(offset)
    inv_freq = _inv_freq64(inv_freq)
    dtype = jnp.dtype(float_dtype_name(dtype))
    backend = resolve_backend(backend, use_triton, platform_of(None))
    frequencies = jnp.asarray(host.kernel_frequencies(inv_freq, attention_factor))
    if backend == "xla":
        positions = jnp.arange(offset, offset + seq_len)
        cos, sin = _cos_sin_xla(frequencies, positions, compute_dtype(dtype), interleaved)
        return cos.astype(dtype), sin.astype(dtype)
    call = rope_table_call(seq_len, 2 * inv_freq.size, dtype_name(dtype), position_offset=offset,
                           interleaved=interleaved)
    return launch(call, dict(frequencies=frequencies), backend=backend)


class RoPEMethods:
    """The methods of `FastRoPEPositionEmbedding`, shared by its NNX and Linen forms; they
    read dim, max_position_embeddings, base, use_triton, backend, layout, interleaved and
    rope_config from self."""

    def _check_config(self) -> None:
        if self.rope_config is not None and not isinstance(self.rope_config, RopeConfig):
            raise TypeError(f"rope_config must be a trinix.rope_scaling.RopeConfig, got "
                            f"{type(self.rope_config).__name__}")
        config = self.scaling
        if (config.dim, config.base) != (self.dim, self.base):
            raise ValueError(f"rope_config has dim {config.dim} and base {config.base}, the module "
                             f"dim {self.dim} and base {self.base}")
        host.check_layout(self.layout)
        resolve_backend(self.backend, self.use_triton, "gpu")

    @classmethod
    def from_hf_config(cls, config, **kwargs):
        """The rotary embedding of a transformers config (object or config.json dict, 4.x
        `rope_scaling` or 5 `rope_parameters`): its rope type and parameters, rotary dim and
        base. kwargs: the module's other options (backend, layout, ...)."""
        rope_config = RopeConfig.from_hf(config)
        return cls(dim=rope_config.dim, max_position_embeddings=rope_config.max_position_embeddings or 2048,
                   base=rope_config.base, rope_config=rope_config, **kwargs)

    @property
    def scaling(self) -> RopeConfig:
        """The frequency recipe: rope_config, else the default one of dim and base."""
        if self.rope_config is not None:
            return self.rope_config
        return RopeConfig(dim=self.dim, base=self.base, max_position_embeddings=self.max_position_embeddings)

    def frequencies(self, seq_len: int | None = None) -> tuple[np.ndarray, float]:
        """(inv_freq (dim / 2,) float64, attention_factor) for sequences of seq_len positions
        (dynamic NTK and LongRoPE depend on it)."""
        config = self.scaling
        return inv_freq_and_scale(config, seq_len if config.rope_type in SEQ_LEN_DEPENDENT else None)

    @property
    def inv_freq(self) -> np.ndarray:
        """(dim / 2,) float64 frequencies."""
        return self.frequencies()[0]

    def __call__(self, x, seq_len: int | None = None, *, offset: int = 0):
        """cos and sin, each (seq_len, dim) in x's dtype, for positions offset .. offset +
        seq_len - 1; seq_len defaults to x's seq dim (x 4 dims in layout "bshd" or "bhsd")."""
        (x,) = as_arrays(x=x)
        seq_len = host.table_seq_len(x.shape, self.layout, seq_len, offset)
        inv_freq, attention_factor = self.frequencies(host.table_extent(seq_len, offset))
        return rope_cos_sin(inv_freq, seq_len, offset=offset, dtype=x.dtype,
                            interleaved=self.interleaved, attention_factor=attention_factor,
                            backend=self.backend, use_triton=self.use_triton)

    def apply_rotary_pos_emb(self, q, k, cos, sin, position_ids=None, *, cu_seqlens=None,
                             max_seqlen: int | None = None, backend: str | None = None):
        """`apply_rotary_pos_emb` in the module's layout, pair order and backend (or
        `backend`); cos must have the module's rotary dim."""
        (cos,) = as_arrays(cos=cos)
        if cos is not None and cos.shape[-1:] != (self.dim,):
            raise ValueError(f"cos must have the module's rotary dim {self.dim} as its last dim, "
                             f"got shape {tuple(cos.shape)}")
        return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=self.layout,
                       interleaved=self.interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                       backend=backend or self.backend, use_triton=self.use_triton)

    def rotate(self, q, k, *, position_ids=None, offset=0, cu_seqlens=None,
               max_seqlen: int | None = None, backend: str | None = None):
        """`rope_rotate` by the module's frequencies: cos/sin computed, no table."""
        seq_len = None
        if self.scaling.rope_type in SEQ_LEN_DEPENDENT:
            (q,) = as_arrays(q=q)
            for name, value in (("position_ids", position_ids), ("offset", offset)):
                if isinstance(value, jax.core.Tracer):
                    raise ValueError(f"{name} is traced: dynamic NTK and LongRoPE choose their "
                                     "frequencies by the longest position, which must be concrete")
            if isinstance(cu_seqlens, jax.core.Tracer) and max_seqlen is None:
                raise ValueError("traced cu_seqlens (under jit or vmap) need max_seqlen, a static int: "
                                 "reading it from cu_seqlens would need their values")
            needed = (position_ids, offset, None if max_seqlen is not None else cu_seqlens)
            values = [np.asarray(v) if isinstance(v, (jax.Array, np.ndarray)) else v for v in needed]
            seq_len = host.positions_extent(q.shape, self.layout, *values, max_seqlen)
        inv_freq, attention_factor = self.frequencies(seq_len)
        return rope_rotate(q, k, inv_freq, attention_factor=attention_factor,
                           position_ids=position_ids, offset=offset,
                           layout=self.layout, interleaved=self.interleaved, cu_seqlens=cu_seqlens,
                           max_seqlen=max_seqlen, backend=backend or self.backend,
                           use_triton=self.use_triton)


class FastRoPEPositionEmbedding(RoPEMethods, nnx.Module):
    """Rotary position embedding (half-split, as LLaMA and transformers, or GPT-J's
    interleaved pairs) for Flax NNX.

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
      dim: rotary dim: the head_dim of q and k, or fewer columns (partial rotation, as in
        GPT-NeoX or Phi: the columns past dim pass through). Even.
      max_position_embeddings: the model's context length.
      base: RoPE base; frequencies are base ** (-2i / dim).
      use_triton: False forces the xla backend.
      backend: "auto", "triton", "interpret" or "xla".
      layout: "bshd", "bhsd" or "thd" (packed tokens, heads, head_dim; calls then take
        cu_seqlens), for q, k and x.
      interleaved: rotate pairs (2i, 2i + 1) (GPT-J, RoFormer) instead of (i, i + dim/2).
      rope_config: a `trinix.rope_scaling.RopeConfig` with a scaling recipe (linear, dynamic
        NTK, YaRN, Llama 3, LongRoPE) of the same dim and base; `from_hf_config` makes one
        from a transformers config.
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd",
                 interleaved: bool = False, rope_config: RopeConfig | None = None):
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.use_triton = use_triton
        self.backend = backend
        self.layout = layout
        self.interleaved = interleaved
        self.rope_config = rope_config
        self._check_config()
