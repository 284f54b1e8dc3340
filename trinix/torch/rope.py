"""RoPE for PyTorch: torch.library ops over the Triton kernel, autograd, functional forms and
the original API's `FastRoPEPositionEmbedding` module. Checks and plans: trinix.rope; the
"torch" backend: trinix.fallback.

Shapes and pair orders: trinix.rope.
"""

import functools

import numpy as np
import torch
from torch import Tensor
from torch.library import triton_op

from trinix import fallback
from trinix import rope as host
from trinix.kernels.rope import rope_table_call
from trinix.rope import Rotation, RopeSpec
from trinix.rope_scaling import RopeConfig
from trinix.torch import sharding
from trinix.torch.launcher import (DTYPES, InductorOps, TorchOps, cached, dtype_name, launch, operand, read,
                                     resolve_backend, through_ops)


def _launch_rotation(tensors, rotation: Rotation, conjugate, interpret, inplace, traceable=False,
                     operands=None):
    """Rotate by one kernel launch; tensors: those of trinix.rope.ROTATION_INPUTS, None where not
    used; operands: theirs, if already made."""
    call = cached(host.rotation_call)(rotation, operands or tuple(map(operand, tensors)), conjugate, inplace)
    return launch(call, host.rotation_inputs(*tensors), interpret=interpret, traceable=traceable)


@triton_op("trinix::rope_apply", mutates_args=())
def _rope_apply_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, frequencies: Tensor | None,
    positions: Tensor | None, offsets: Tensor | None, cu_seqlens: Tensor | None,
    offset: int, layout: str, interleaved: bool, max_seqlen: int, conjugate: bool, interpret: bool,
) -> tuple[Tensor, Tensor]:
    tensors = (q, k, cos, sin, frequencies, positions, offsets, cu_seqlens)
    return _launch_rotation(tensors, Rotation(offset, layout, interleaved, max_seqlen), conjugate,
                            interpret, inplace=False, traceable=True)


@triton_op("trinix::rope_apply_", mutates_args=("q", "k"))
def _rope_apply_inplace_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, frequencies: Tensor | None,
    positions: Tensor | None, offsets: Tensor | None, cu_seqlens: Tensor | None,
    offset: int, layout: str, interleaved: bool, max_seqlen: int, interpret: bool,
) -> None:
    tensors = (q, k, cos, sin, frequencies, positions, offsets, cu_seqlens)
    _launch_rotation(tensors, Rotation(offset, layout, interleaved, max_seqlen), False, interpret,
                     inplace=True, traceable=True)


sharding.register("rope_apply", sharding.rotation_axes, len(host.ROTATION_INPUTS), layout_at=9)
sharding.register("rope_apply_", sharding.rotation_axes, len(host.ROTATION_INPUTS), layout_at=9)


def _rotate_by_kernel(tensors, rotation: Rotation, interpret: bool, inplace: bool, operands=None):
    """The forward rotation, through the torch.library ops or launched directly (see
    `through_ops`)."""
    traced = through_ops()
    if inplace:
        if traced:
            _rope_apply_inplace_op(*tensors, *rotation, interpret)
        else:
            _launch_rotation(tensors, rotation, False, interpret, inplace=True, operands=operands)
        return tensors[0], tensors[1]
    if traced:
        return _rope_apply_op(*tensors, *rotation, False, interpret)
    return _launch_rotation(tensors, rotation, False, interpret, inplace=False, operands=operands)


class _RopeApply(torch.autograd.Function):
    """Rotation by the kernel; its backward is the same kernel, conjugated."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, frequencies, positions, offsets, cu_seqlens, rotation: Rotation,
                interpret: bool, inplace: bool):
        tensors = (q, k, cos, sin, frequencies, positions, offsets, cu_seqlens)
        out = _rotate_by_kernel(tensors, rotation, interpret, inplace)
        if inplace:
            ctx.mark_dirty(q, k)
        ctx.save_for_backward(*tensors[2:])
        ctx.rotation, ctx.interpret = rotation, interpret
        return out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        tensors = (grad_q, grad_k, *ctx.saved_tensors)
        if through_ops():
            grad_q, grad_k = _rope_apply_op(*tensors, *ctx.rotation, True, ctx.interpret)
        else:
            grad_q, grad_k = _launch_rotation(tensors, ctx.rotation, True, ctx.interpret, inplace=False)
        return grad_q, grad_k, *(None,) * 9


def _check_tensors(**tensors):
    for name, value in tensors.items():
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _global_positions(q, offset: int, offsets, layout: str) -> Tensor:
    """Position ids (1, seq) of the tokens of q sharded over its sequence: their global
    positions, which a shard's rotation cannot tell from its local indices."""
    if offsets is not None:
        raise ValueError("offset must be an int when q is sharded over the sequence: fold per-sequence "
                         "offsets into position_ids")
    seq = host.split_bshd(q.shape, layout)[1]
    return torch.arange(offset, offset + seq, device=q.device)[None]


def _rotate(q, k, *, cos=None, sin=None, frequencies=None, position_ids=None, offset=0,
            layout="bshd", interleaved=False, cu_seqlens=None, max_seqlen=None, inplace=False,
            backend="auto", use_triton=True):
    """Check, plan, then rotate by the chosen backend (see apply_rotary_pos_emb and rope_rotate)."""
    if frequencies is None:  # by tables: both are needed
        for name, table in (("cos", cos), ("sin", sin)):
            if not isinstance(table, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(table).__name__}")
    offset, offsets = host.split_offset(offset, lambda x: isinstance(x, Tensor))
    tensors = (q, k, cos, sin, frequencies, position_ids, offsets, cu_seqlens)
    _check_tensors(**dict(zip(host.ROTATION_INPUTS, tensors)))
    for name, tensor in zip(host.ROTATION_INPUTS[1:], tensors[1:]):
        if tensor is not None and tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device}, q on {q.device}: they must share a device")
    if cos is not None and (cos.requires_grad or sin.requires_grad):
        raise ValueError("cos and sin must not require grad: trinix rotates by them as constants")
    if inplace and torch.is_grad_enabled() and any(t.is_leaf and t.requires_grad for t in (q, k)):
        raise ValueError("inplace=True cannot rotate a leaf tensor that requires grad; "
                         "use inplace=False or rotate a non-leaf (e.g. a projection's output)")
    if cu_seqlens is not None and not cu_seqlens.is_contiguous():
        cu_seqlens = cu_seqlens.contiguous()  # the kernel reads it at unit stride
        tensors = (*tensors[:-1], cu_seqlens)
    if position_ids is None and sharding.sharded_over(q, "seq", layout):
        tensors, offset = (*tensors[:5], _global_positions(q, offset, offsets, layout), *tensors[6:]), 0
    operands = tuple(map(operand, tensors))
    rotation = host.plan_rotation(tensors, operands, offset=offset, layout=layout, interleaved=interleaved,
                                  max_seqlen=max_seqlen, read=read, cache=not torch.compiler.is_compiling())
    placed = sharding.sharding(host.ROTATION_INPUTS, tensors, sharding.rotation_axes, layout)
    if placed is not None:  # DTensors: each rank rotates its shards by the plan (trinix.torch.sharding)
        q_rot, k_rot = placed.run_local(
            lambda *local: _run_rotation(local, rotation, backend, use_triton, inplace=False), tensors)
        return (q.copy_(q_rot), k.copy_(k_rot)) if inplace else (q_rot, k_rot)
    return _run_rotation(tensors, rotation, backend, use_triton, inplace, operands)


def _run_rotation(tensors, rotation: Rotation, backend: str, use_triton: bool, inplace: bool, operands=None):
    """Rotate checked and planned `tensors` (those of trinix.rope.ROTATION_INPUTS, plain
    tensors) by the chosen backend; operands: theirs, if already made."""
    q, k, cos, sin, frequencies, position_ids, offsets, cu_seqlens = tensors
    backend = resolve_backend(backend, use_triton, q.device, "rope")
    if backend == "torch":
        ops = InductorOps if torch.compiler.is_compiling() else TorchOps
        q_rot, k_rot = fallback.rope_rotate(ops, q, k, cos=cos, sin=sin, frequencies=frequencies,
                                            position_ids=position_ids, offsets=offsets, cu_seqlens=cu_seqlens,
                                            offset=rotation.offset, layout=rotation.layout,
                                            interleaved=rotation.interleaved)
        return (q.copy_(q_rot), k.copy_(k_rot)) if inplace else (q_rot, k_rot)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _RopeApply.apply(*tensors, rotation, backend == "interpret", inplace)
    # Nothing to differentiate (inference, or q and k are constants): skip autograd's cost.
    return _rotate_by_kernel(tensors, rotation, backend == "interpret", inplace, operands)


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                         position_ids: Tensor | None = None, *, layout: str = "bshd",
                         interleaved: bool = False, cu_seqlens: Tensor | None = None,
                         max_seqlen: int | None = None, inplace: bool = False,
                         backend: str = "auto", use_triton: bool = True):
    """Rotate q and k by given cos/sin tables (rows, rotary_dim) or (batch, rows, rotary_dim).

    Token s of batch b reads row position_ids[b, s], or row s without position_ids (for
    packed "thd" sequences: row s of its own sequence). The first rotary_dim columns of each
    head rotate, in `interleaved` pairs or half-split; the rest pass through. Returns
    (q_rot, k_rot) in the layout and dtype of q and k (q and k themselves if `inplace`).
    cos and sin are constants to autograd: pass tensors that do not require grad.
    """
    return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=layout,
                   interleaved=interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                   inplace=inplace, backend=backend, use_triton=use_triton)


@functools.lru_cache(maxsize=256)  # dynamic NTK makes new frequencies for each longer sequence
def frequencies_on_device(inv_freq_bytes: bytes, attention_factor: float, device: torch.device) -> Tensor:
    """The kernels' frequency operand of float64 inv_freq (as bytes) on `device`, cached."""
    inv_freq = np.frombuffer(inv_freq_bytes, dtype=np.float64)
    return torch.from_numpy(host.kernel_frequencies(inv_freq, attention_factor)).to(device)


def device_frequencies(inv_freq, device, attention_factor: float = 1.0) -> Tensor:
    """The kernels' frequency operand (3, rotary_dim / 2) float32 on `device` (see
    trinix.rope.kernel_frequencies), made once per inv_freq, factor and device."""
    host.check_attention_factor(attention_factor)
    if isinstance(inv_freq, Tensor):
        inv_freq = inv_freq.detach().cpu().numpy()
    return frequencies_on_device(host.as_inv_freq(inv_freq).tobytes(), float(attention_factor),
                                 torch.device(device))


def rope_rotate(q: Tensor, k: Tensor, inv_freq, *, position_ids: Tensor | None = None,
                offset: int | Tensor = 0, layout: str = "bshd", interleaved: bool = False,
                attention_factor: float = 1.0, cu_seqlens: Tensor | None = None,
                max_seqlen: int | None = None, inplace: bool = False, backend: str = "auto",
                use_triton: bool = True):
    """Rotate q and k with cos/sin computed in the kernel from positions x inv_freq.

    inv_freq: (rotary_dim / 2,) frequencies, numpy float64 (or a tensor, read to the host
    once); rotary_dim <= head_dim, the columns past it pass through. Positions are
    position_ids, or offset + s, with `offset` an int, a 0-d integer tensor or per-sequence
    (batch,) tensor (KV-cache decoding). cos and sin carry `attention_factor`. No cos/sin table
    exists. Under torch.compile use FastRoPEPositionEmbedding.rotate, whose frequencies are a
    buffer.
    """
    _check_tensors(q=q)
    return _rotate(q, k, frequencies=device_frequencies(inv_freq, q.device, attention_factor),
                   position_ids=position_ids, offset=offset, layout=layout, interleaved=interleaved,
                   cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, inplace=inplace, backend=backend,
                   use_triton=use_triton)


def _cos_sin(frequencies, seq_len, offset, dtype, interleaved, backend, use_triton):
    host.check_seq_len(seq_len)
    host.check_offset(offset)
    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be one of {list(DTYPES.values())}, got {dtype}")
    backend = resolve_backend(backend, use_triton, frequencies.device, "rope")
    if backend == "torch":
        return fallback.rope_table(TorchOps, frequencies, seq_len, offset, dtype, interleaved)
    call = cached(rope_table_call)(seq_len, 2 * frequencies.shape[1], dtype_name(dtype), position_offset=offset,
                                   interleaved=interleaved)
    return launch(call, dict(frequencies=frequencies), interpret=backend == "interpret",
                  traceable=torch.compiler.is_compiling())


def rope_cos_sin(inv_freq, seq_len: int, *, offset: int = 0, dtype: torch.dtype = torch.float32,
                 interleaved: bool = False, attention_factor: float = 1.0, device=None,
                 backend: str = "auto", use_triton: bool = True):
    """cos and sin tables, each (seq_len, 2 * len(inv_freq)) of `dtype`, for positions
    offset .. offset + seq_len - 1, times `attention_factor`, in half-split or `interleaved`
    column order; one kernel launch on the Triton backends."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _cos_sin(device_frequencies(inv_freq, device, attention_factor), seq_len, offset, dtype,
                    interleaved, backend, use_triton)


class FastRoPEPositionEmbedding(torch.nn.Module):
    """Rotary position embedding (GPT-NeoX / LLaMA style, or GPT-J's interleaved) on Triton
    kernels.

    Example::

        rope = FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768)
        cos, sin = rope(q, seq_len)                               # each (seq_len, 128)
        q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)  # q, k: (batch, seq, heads, 128)
        q_rot, k_rot = rope.rotate(q, k, offset=past_len)         # cos/sin computed in the kernel

    Args: those of `trinix.rope.RopeSpec.of` (the module's `spec`), and
        use_triton: False runs plain torch ops (the "torch" backend).
        backend: "auto" (for CUDA tensors trinix.backend.AUTO's choice: Triton eager,
            torch ops under torch.compile, which fuses them; torch ops otherwise), "triton",
            "interpret" (the Triton kernel on the CPU through Triton's interpreter) or "torch".
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd",
                 interleaved: bool = False, rope_config: RopeConfig | None = None):
        super().__init__()
        self.spec = RopeSpec.of(dim, max_position_embeddings, base, rope_config, layout, interleaved)
        resolve_backend(backend, use_triton, torch.device("cuda"), "rope")
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, base
        self.use_triton, self.backend = use_triton, backend
        self.inv_freq, self.attention_factor = self.spec.inv_freq_and_scale()
        # The kernels' frequencies, kept as the int32 bits of their float32 values: a buffer
        # moves with .to(device) and is visible to torch.compile, and integer bits are left
        # alone by .half() / .to(dtype), which would round the frequencies.
        bits = self.spec.frequencies().view(np.int32)
        self.register_buffer("frequency_bits", torch.from_numpy(bits), persistent=False)
        self._frequencies_on: dict[torch.device, Tensor] = {}

    rope_config = property(lambda self: self.spec.config)
    layout = property(lambda self: self.spec.layout)
    interleaved = property(lambda self: self.spec.interleaved)

    @classmethod
    def from_hf_config(cls, config, **kwargs) -> "FastRoPEPositionEmbedding":
        """The rotary embedding of a transformers config (object or config.json dict, 4.x
        `rope_scaling` or 5 `rope_parameters`): its rope type and parameters, rotary dim
        (head_dim x partial_rotary_factor) and base, so that `rope(x, seq_len)` gives the
        model's own cos/sin. kwargs: the module's other options (backend, layout, ...)."""
        return cls(**RopeSpec.hf_arguments(config), **kwargs)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, max_position_embeddings={self.max_position_embeddings}, "
                f"base={self.base}, rope_type={self.rope_config.rope_type!r}, "
                f"backend={self.backend!r}, layout={self.layout!r}, interleaved={self.interleaved}")

    def frequencies(self, device: torch.device, seq_len: int | None = None) -> Tensor:
        """The kernels' frequency operand (3, dim / 2) float32, on `device`, for sequences of
        seq_len positions (dynamic NTK and LongRoPE depend on it)."""
        if seq_len is not None and self.spec.length_dependent:
            inv_freq, attention_factor = self.spec.inv_freq_and_scale(seq_len)
            return device_frequencies(inv_freq, device, attention_factor)
        if self.frequency_bits.device == device:
            return self.frequency_bits.view(torch.float32)
        if device not in self._frequencies_on:  # the module was left on another device
            self._frequencies_on[device] = self.frequency_bits.to(device).view(torch.float32)
        return self._frequencies_on[device]

    def forward(self, x: Tensor, seq_len: int | None = None, *, offset: int = 0):
        """cos and sin for positions offset .. offset + seq_len - 1, each (seq_len, dim) in the
        dtype and on the device of x; seq_len defaults to x's sequence length."""
        _check_tensors(x=x)
        seq_len = host.table_seq_len(x.shape, self.layout, seq_len, offset)
        return _cos_sin(self.frequencies(x.device, host.table_extent(seq_len, offset)), seq_len, offset, x.dtype,
                        self.interleaved, self.backend, self.use_triton)

    def apply_rotary_pos_emb(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                             position_ids: Tensor | None = None, *, cu_seqlens: Tensor | None = None,
                             max_seqlen: int | None = None, inplace: bool = False,
                             backend: str | None = None):
        """Rotate q and k by cos/sin from `forward` (see the module-level apply_rotary_pos_emb)."""
        if isinstance(cos, Tensor):
            self.spec.check_table_width(cos.shape)
        return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=self.layout,
                       interleaved=self.interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                       inplace=inplace, backend=backend or self.backend, use_triton=self.use_triton)

    def rotate(self, q: Tensor, k: Tensor, *, position_ids: Tensor | None = None,
               offset: int | Tensor = 0, cu_seqlens: Tensor | None = None,
               max_seqlen: int | None = None, inplace: bool = False, backend: str | None = None):
        """Rotate q and k at position_ids, or at offset + s (offset an int, a 0-d or a
        per-sequence (batch,) tensor), with cos/sin computed in the kernel."""
        _check_tensors(q=q)
        # Reading ids, offsets or cu_seqlens costs a sync: only dynamic NTK and LongRoPE need it.
        extent = self.spec.rotation_extent(q.shape, position_ids, offset, cu_seqlens, max_seqlen, read)
        return _rotate(q, k, frequencies=self.frequencies(q.device, extent), position_ids=position_ids,
                       offset=offset, layout=self.layout, interleaved=self.interleaved,
                       cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, inplace=inplace,
                       backend=backend or self.backend, use_triton=self.use_triton)
