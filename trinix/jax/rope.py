"""RoPE for JAX: the Triton kernel under custom_vjp and custom_vmap, the functional forms and
the Flax NNX module `FastRoPEPositionEmbedding`. Checks and plans: trinix.rope; the "xla"
backend: trinix.fallback.

Shapes and pair orders: trinix.rope.

Backends: "triton" (the kernel through jax-triton, GPU), "interpret" (the same kernel through
Triton's interpreter on the CPU), "xla" (plain jax.numpy), "auto" (on a GPU by
trinix.backend.AUTO: "triton" eager, "xla" under jit, where XLA fuses its own rotation; else
"xla"). Differentiation is reverse mode only: the kernel's backward is the same kernel with the
rotation conjugated. cos and sin are constants to differentiation on every backend (their
cotangent is zero), as in the PyTorch binding.

Under jit, array arguments may be traced; options that shape the launch are static: an int
offset (per-sequence offsets are an array, traced or not) and max_seqlen of packed sequences.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trinix import fallback
from trinix import rope as host
from trinix.jax.launcher import (JaxOps, as_arrays, dtype_name, float_dtype_name, launch, operand, read,
                                 resolve_backend)
from trinix.jax.sharding import shard_local
from trinix.kernels.rope import rope_table_call
from trinix.rope import Rotation, RopeSpec
from trinix.rope_scaling import RopeConfig


class _Launch(NamedTuple):
    """Static configuration of one kernel rotation: its plan, backend ("triton" or
    "interpret") and direction."""

    rotation: Rotation
    backend: str
    conjugate: bool = False


def _rotation_on_shard(*arrays, launch_: _Launch, start=None):
    """The kernel's rotation of one shard; `start`: the first position of a sequence shard,
    added to the positions unless position ids (split with the sequence) give them."""
    q, k, cos, sin, frequencies, positions, offsets, cu_seqlens = arrays
    if start is not None and positions is None:
        offsets = (jnp.zeros((1,), jnp.int32) if offsets is None else offsets) + start.astype(jnp.int32)
    arrays = (q, k, cos, sin, frequencies, positions, offsets, cu_seqlens)
    call = host.rotation_call(launch_.rotation, tuple(map(operand, arrays)), launch_.conjugate)
    return launch(call, host.rotation_inputs(*arrays), backend=launch_.backend)


def _rotation_dims(layout: str, arrays) -> list[str | None]:
    """The sharding factors of each input of a rotation (see trinix.jax.sharding): batch "b",
    sequence "s" and the heads of q "h" and of k "kh" may be split; packed tokens "t", their
    sequences "n" and table rows stay whole. Inputs of one row ("one") serve every batch."""
    q, k, cos, sin, frequencies, positions, offsets, cu_seqlens = arrays
    tokens = {"bshd": "b s {} d", "bhsd": "b {} s d", "thd": "t {} d"}[layout]

    def rows(x):
        if x.shape[0] == 1:
            return "one"
        return "n" if layout == "thd" else "b"

    table = None if cos is None else ("r c" if cos.ndim == 2 else f"{rows(cos)} r c")
    return [tokens.format("h"), tokens.format("kh"), table, table, None if frequencies is None else "three f",
            None if positions is None else ("t" if layout == "thd" else f"{rows(positions)} s"),
            None if offsets is None else rows(offsets), None if cu_seqlens is None else "seqs"]


def _launch_rotation(*arrays, launch_: _Launch):
    """The rotation, each device on its shard of batch, sequence and heads."""
    dims = _rotation_dims(launch_.rotation.layout, arrays)
    run = functools.partial(_rotation_on_shard, launch_=launch_)
    return shard_local(run, arrays, dims, dims[:2], shardable=("b", "h", "kh"), sequence="s")


@functools.cache
def _batchable_rotation(launch_: _Launch):
    """The kernel launch with a vmap rule (jax-triton and the interpreter's FFI call have none we want)."""
    rotate = jax.custom_batching.custom_vmap(functools.partial(_launch_rotation, launch_=launch_))
    rotate.def_vmap(functools.partial(_rotation_vmap_rule, rotate, launch_.rotation.layout))
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
def _rotate_kernel(q, k, cos, sin, frequencies, positions, offsets, cu_seqlens, launch_: _Launch):
    """(q_rot, k_rot) by the kernel; every argument but q and k is a constant."""
    return _batchable_rotation(launch_)(q, k, cos, sin, frequencies, positions, offsets, cu_seqlens)


def _rotate_kernel_fwd(q, k, *constants_and_launch):
    return _rotate_kernel(q, k, *constants_and_launch), constants_and_launch[:-1]


def _rotate_kernel_bwd(launch_, constants, grads):
    transpose = launch_._replace(conjugate=not launch_.conjugate)
    return (*_rotate_kernel(*grads, *constants, transpose), *(None,) * len(constants))


_rotate_kernel.defvjp(_rotate_kernel_fwd, _rotate_kernel_bwd)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _rotate(q, k, *, cos=None, sin=None, frequencies=None, position_ids=None, offset=0, layout="bshd",
            interleaved=False, cu_seqlens=None, max_seqlen=None, backend="auto", use_triton=True):
    """Check, plan, then rotate by the chosen backend (see apply_rotary_pos_emb and rope_rotate)."""
    if frequencies is None:  # by tables: both are needed
        for name, table in (("cos", cos), ("sin", sin)):
            if not _is_array(table):
                raise TypeError(f"{name} must be a jax or numpy array, got {type(table).__name__}")
    offset, offsets = host.split_offset(offset, _is_array)
    q, k, cos, sin, position_ids, offsets, cu_seqlens = as_arrays(
        q=q, k=k, cos=cos, sin=sin, position_ids=position_ids, offset=offsets, cu_seqlens=cu_seqlens)
    if cos is not None:
        cos, sin = jax.lax.stop_gradient(cos), jax.lax.stop_gradient(sin)
    arrays = (q, k, cos, sin, frequencies, position_ids, offsets, cu_seqlens)
    rotation = host.plan_rotation(arrays, tuple(map(operand, arrays)), offset=offset, layout=layout,
                                  interleaved=interleaved, max_seqlen=max_seqlen, read=read)
    backend = resolve_backend(backend, use_triton, "rope", q)
    if backend == "xla":
        return fallback.rope_rotate(JaxOps, q, k, cos=cos, sin=sin, frequencies=frequencies,
                                    position_ids=position_ids, offsets=offsets, cu_seqlens=cu_seqlens,
                                    offset=offset, layout=layout, interleaved=interleaved)
    return _rotate_kernel(*arrays, _Launch(rotation, backend))


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


def _frequencies(inv_freq, attention_factor) -> jax.Array:
    """The kernels' frequency operand (3, rotary_dim / 2) of concrete inv_freq."""
    if isinstance(inv_freq, jax.core.Tracer):
        raise TypeError("inv_freq must be concrete (a numpy or jax array outside jit): the "
                        "rotation is specialised to it")
    return jnp.asarray(host.kernel_frequencies(host.as_inv_freq(inv_freq), attention_factor))


def rope_rotate(q, k, inv_freq, *, position_ids=None, offset=0, layout: str = "bshd",
                interleaved: bool = False, attention_factor: float = 1.0, cu_seqlens=None,
                max_seqlen: int | None = None, backend: str = "auto", use_triton: bool = True):
    """Rotate q and k with cos/sin computed from positions x inv_freq; no table exists.

    inv_freq: (rotary_dim / 2,) frequencies, concrete (numpy float64 is exact); rotary_dim <=
    head_dim, the columns past it pass through. Positions are position_ids, or offset + s, with
    `offset` a static int, a 0-d integer array or per-sequence (batch,) integers (KV-cache
    decoding). cos and sin carry `attention_factor`. Returns (q_rot, k_rot) like q and k.
    """
    return _rotate(q, k, frequencies=_frequencies(inv_freq, attention_factor), position_ids=position_ids,
                   offset=offset, layout=layout, interleaved=interleaved, cu_seqlens=cu_seqlens,
                   max_seqlen=max_seqlen, backend=backend, use_triton=use_triton)


def rope_cos_sin(inv_freq, seq_len: int, *, offset: int = 0, dtype=jnp.float32,
                 interleaved: bool = False, attention_factor: float = 1.0, backend: str = "auto",
                 use_triton: bool = True):
    """cos and sin tables, each (seq_len, 2 * len(inv_freq)) of `dtype`, for positions
    offset .. offset + seq_len - 1, times `attention_factor`, in half-split or `interleaved`
    column order; one kernel launch on the Triton backends."""
    host.check_seq_len(seq_len)
    host.check_offset(offset)
    frequencies = _frequencies(inv_freq, attention_factor)
    dtype = jnp.dtype(float_dtype_name(dtype))
    backend = resolve_backend(backend, use_triton, "rope")
    if backend == "xla":
        return fallback.rope_table(JaxOps, frequencies, seq_len, offset, dtype, interleaved)
    call = rope_table_call(seq_len, 2 * frequencies.shape[1], dtype_name(dtype), position_offset=offset,
                           interleaved=interleaved)
    return launch(call, dict(frequencies=frequencies), backend=backend)


class RoPEMethods:
    """The methods of `FastRoPEPositionEmbedding`, shared by its NNX and Linen forms; they
    read spec (a trinix.rope.RopeSpec), dim, use_triton and backend from self."""

    @classmethod
    def from_hf_config(cls, config, **kwargs):
        """The rotary embedding of a transformers config (object or config.json dict, 4.x
        `rope_scaling` or 5 `rope_parameters`): its rope type and parameters, rotary dim and
        base. kwargs: the module's other options (backend, layout, ...)."""
        return cls(**RopeSpec.hf_arguments(config), **kwargs)

    @property
    def scaling(self) -> RopeConfig:
        """The frequency recipe: rope_config, else the default one of dim and base."""
        return self.spec.config

    def frequencies(self, seq_len: int | None = None) -> tuple[np.ndarray, float]:
        """(inv_freq (dim / 2,) float64, attention_factor) for sequences of seq_len positions
        (dynamic NTK and LongRoPE depend on it)."""
        return self.spec.inv_freq_and_scale(seq_len)

    @property
    def inv_freq(self) -> np.ndarray:
        """(dim / 2,) float64 frequencies."""
        return self.frequencies()[0]

    def __call__(self, x, seq_len: int | None = None, *, offset: int = 0):
        """cos and sin, each (seq_len, dim) in x's dtype, for positions offset .. offset +
        seq_len - 1; seq_len defaults to x's seq dim (x 4 dims in layout "bshd" or "bhsd")."""
        (x,) = as_arrays(x=x)
        seq_len = host.table_seq_len(x.shape, self.spec.layout, seq_len, offset)
        inv_freq, attention_factor = self.spec.inv_freq_and_scale(host.table_extent(seq_len, offset))
        return rope_cos_sin(inv_freq, seq_len, offset=offset, dtype=x.dtype,
                            interleaved=self.spec.interleaved, attention_factor=attention_factor,
                            backend=self.backend, use_triton=self.use_triton)

    def apply_rotary_pos_emb(self, q, k, cos, sin, position_ids=None, *, cu_seqlens=None,
                             max_seqlen: int | None = None, backend: str | None = None):
        """`apply_rotary_pos_emb` in the module's layout, pair order and backend (or
        `backend`); cos must have the module's rotary dim."""
        (cos,) = as_arrays(cos=cos)
        if cos is not None:
            self.spec.check_table_width(cos.shape)
        return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=self.spec.layout,
                       interleaved=self.spec.interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                       backend=backend or self.backend, use_triton=self.use_triton)

    def rotate(self, q, k, *, position_ids=None, offset=0, cu_seqlens=None,
               max_seqlen: int | None = None, backend: str | None = None):
        """`rope_rotate` by the module's frequencies: cos/sin computed, no table."""
        (q,) = as_arrays(q=q)
        extent = self.spec.rotation_extent(q.shape, position_ids, offset, cu_seqlens, max_seqlen, read)
        return _rotate(q, k, frequencies=jnp.asarray(self.spec.frequencies(extent)), position_ids=position_ids,
                       offset=offset, layout=self.spec.layout, interleaved=self.spec.interleaved,
                       cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, backend=backend or self.backend,
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

    Args: those of `trinix.rope.RopeSpec.of` (the module's `spec`), and
      use_triton: False forces the xla backend.
      backend: "auto", "triton", "interpret" or "xla".
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd",
                 interleaved: bool = False, rope_config: RopeConfig | None = None):
        self.spec = RopeSpec.of(dim, max_position_embeddings, base, rope_config, layout, interleaved)
        resolve_backend(backend, use_triton, "rope", platform="gpu")
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, base
        self.use_triton, self.backend = use_triton, backend
        self.layout, self.interleaved, self.rope_config = layout, interleaved, rope_config
