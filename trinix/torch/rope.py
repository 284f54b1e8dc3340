"""RoPE for PyTorch: torch.library ops over the Triton kernels, autograd, functional forms
and the seed's `FastRoPEPositionEmbedding` module.

Shapes: q (batch, seq, heads_q, head_dim) and k (batch, seq, heads_k, head_dim) in layout
"bshd", (batch, heads, seq, head_dim) in "bhsd", or packed sequences (tokens, heads,
head_dim) in "thd" with cu_seqlens (n_seqs + 1,); cos and sin (rows, rotary_dim) or
(batch, rows, rotary_dim); position_ids (batch or 1, seq) integers, (tokens,) for "thd".
The first rotary_dim columns of a head rotate, in half-split pairs (i, i + rotary_dim/2) or
interleaved pairs (2i, 2i + 1); the rest pass through.
"""

import functools
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.library import triton_op

from trinix import rope as host
from trinix.rope_scaling import SEQ_LEN_DEPENDENT, RopeConfig, inv_freq_and_scale
from trinix.kernels.rope import rope_apply_call, rope_table_call
from trinix.torch.launcher import (DTYPES, cached, compute_dtype, dtype_name, launch, may_synchronize, operand,
                                   resolve_backend)


class _Options(NamedTuple):
    """Static options of one rotation."""

    layout: str
    offset: int
    interleaved: bool
    max_seqlen: int


def _launch_apply(tensors, options: _Options, conjugate, interpret, inplace, traceable=False,
                  operands=None):
    """Rotate by one kernel launch; tensors: (q, k, cos, sin, frequencies, positions,
    batch_offsets, cu_seqlens), None where not used; operands: theirs, if already made."""
    q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens = tensors
    q_, k_, cos_, sin_, _, positions_, batch_offsets_, cu_seqlens_ = operands or map(operand, tensors)
    call = cached(rope_apply_call)(
        q_, k_, layout=options.layout,
        rotary_dim=None if frequencies is None else 2 * frequencies.shape[1],
        interleaved=options.interleaved, cos=cos_, sin=sin_, positions=positions_,
        batch_offsets=batch_offsets_, cu_seqlens=cu_seqlens_, max_seqlen=options.max_seqlen,
        position_offset=options.offset, conjugate=conjugate, inplace=inplace,
    )
    arrays = dict(q=q, k=k, cos=cos, sin=sin, frequencies=frequencies, positions=positions,
                  cu_seqlens=cu_seqlens)
    if batch_offsets is not None:  # the kernel reads per-sequence offsets where ids would be
        arrays["positions"] = batch_offsets
    return launch(call, arrays, interpret=interpret, traceable=traceable)


@triton_op("trinix::rope_apply", mutates_args=())
def _rope_apply_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, frequencies: Tensor | None,
    positions: Tensor | None, batch_offsets: Tensor | None, cu_seqlens: Tensor | None,
    layout: str, offset: int, interleaved: bool, max_seqlen: int, conjugate: bool, interpret: bool,
) -> tuple[Tensor, Tensor]:
    tensors = (q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens)
    return _launch_apply(tensors, _Options(layout, offset, interleaved, max_seqlen), conjugate,
                         interpret, inplace=False, traceable=True)


@triton_op("trinix::rope_apply_", mutates_args=("q", "k"))
def _rope_apply_inplace_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, frequencies: Tensor | None,
    positions: Tensor | None, batch_offsets: Tensor | None, cu_seqlens: Tensor | None,
    layout: str, offset: int, interleaved: bool, max_seqlen: int, interpret: bool,
) -> None:
    tensors = (q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens)
    _launch_apply(tensors, _Options(layout, offset, interleaved, max_seqlen), False, interpret,
                  inplace=True, traceable=True)


def _rotate_by_kernel(tensors, options: _Options, interpret: bool, inplace: bool, operands=None):
    """The forward rotation: launched directly when eager, through the torch.library ops under
    torch.compile, which the compiler can trace (their dispatch costs tens of microseconds per
    eager call)."""
    traced = torch.compiler.is_compiling()
    if inplace:
        if traced:
            _rope_apply_inplace_op(*tensors, *options, interpret)
        else:
            _launch_apply(tensors, options, False, interpret, inplace=True, operands=operands)
        return tensors[0], tensors[1]
    if traced:
        return _rope_apply_op(*tensors, *options, False, interpret)
    return _launch_apply(tensors, options, False, interpret, inplace=False, operands=operands)


class _RopeApply(torch.autograd.Function):
    """Rotation by the kernel; its backward is the same kernel, conjugated."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens,
                options: _Options, interpret: bool, inplace: bool):
        tensors = (q, k, cos, sin, frequencies, positions, batch_offsets, cu_seqlens)
        out = _rotate_by_kernel(tensors, options, interpret, inplace)
        if inplace:
            ctx.mark_dirty(q, k)
        ctx.save_for_backward(*tensors[2:])
        ctx.options, ctx.interpret = options, interpret
        return out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        tensors = (grad_q, grad_k, *ctx.saved_tensors)
        if torch.compiler.is_compiling():
            grad_q, grad_k = _rope_apply_op(*tensors, *ctx.options, True, ctx.interpret)
        else:
            grad_q, grad_k = _launch_apply(tensors, ctx.options, True, ctx.interpret, inplace=False)
        return grad_q, grad_k, *(None,) * 9


def _pairs(x: Tensor, half: int, interleaved: bool):
    """The two members of each rotated pair, from the first 2 * half columns of x."""
    if interleaved:
        return x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    return x[..., :half], x[..., half:2 * half]


def _rotate_torch(q, k, cos, sin, layout, interleaved, inplace):
    """The torch backend: cos/sin (batch or 1, seq, rotary_dim), or (tokens, rotary_dim) for
    "thd", already per token."""
    compute = compute_dtype(q.dtype)
    head_axis = -3 if layout == "bhsd" else -2  # where cos/sin broadcast over heads
    half = cos.shape[-1] // 2
    c1, c2 = (c.unsqueeze(head_axis) for c in _pairs(cos.to(compute), half, interleaved))
    s1, s2 = (s.unsqueeze(head_axis) for s in _pairs(sin.to(compute), half, interleaved))

    def rotate(x):
        x1, x2 = _pairs(x.to(compute), half, interleaved)
        o1, o2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
        rotated = torch.stack((o1, o2), -1).flatten(-2) if interleaved else torch.cat((o1, o2), -1)
        return torch.cat((rotated.to(x.dtype), x[..., 2 * half:]), dim=-1)

    if inplace:
        return q.copy_(rotate(q)), k.copy_(rotate(k))
    return rotate(q), rotate(k)


def _token_positions(q, layout, position_ids, batch_offsets, cu_seqlens, offset):
    """Position of each token, (batch or 1, seq), or (tokens,) for "thd", and the batch
    (sequence) index to read per-batch tables at, broadcastable to it."""
    device = q.device
    if layout == "thd":
        tokens = torch.arange(q.shape[0], device=device)
        sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
        if position_ids is not None:
            return position_ids, sequence
        positions = tokens - cu_seqlens[sequence] + offset
        if batch_offsets is not None:
            positions = positions + batch_offsets.expand(cu_seqlens.shape[0] - 1)[sequence]
        return positions, sequence
    batch, seq_len = host.split_bshd(q.shape, layout)[:2]
    if position_ids is not None:
        positions = position_ids
    else:
        positions = torch.arange(offset, offset + seq_len, device=device)[None]
        if batch_offsets is not None:
            positions = positions + batch_offsets[:, None]
    return positions, torch.arange(batch, device=device)[:, None]


def _rows(table: Tensor, positions: Tensor, batch_index: Tensor) -> Tensor:
    """table[positions] for a (rows, dim) table, table[batch, positions] for (batch, rows, dim)."""
    if table.ndim == 2:
        return table[positions]
    return table[batch_index if table.shape[0] > 1 else 0, positions]


def _check_table_positions(positions: Tensor | None, rows: int) -> None:
    """Positions outside a cos/sin table are refused; reading them costs one sync, so only on
    the table path, and not while torch.compile traces or a CUDA graph captures (the kernel
    then yields NaN for them)."""
    if positions is not None and positions.numel() and may_synchronize(positions.device):
        host.check_table_positions(torch.stack(torch.aminmax(positions)).cpu().numpy(), rows)


def _packed_max_seqlen(cu_seqlens: Tensor | None, tokens: int, max_seqlen: int | None) -> int:
    """The longest packed sequence, after checking cu_seqlens (one sync; neither under
    torch.compile nor while a CUDA graph captures, so max_seqlen must be given there)."""
    if cu_seqlens is None:
        return 0
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)):
        raise TypeError(f"max_seqlen must be an int, got {type(max_seqlen).__name__}")
    if not may_synchronize(cu_seqlens.device):
        if max_seqlen is None:
            raise ValueError("under torch.compile or CUDA graph capture, packed sequences need "
                             "max_seqlen (reading it from cu_seqlens would synchronise)")
        return max_seqlen
    return host.packed_max_seqlen(cu_seqlens.cpu().numpy(), tokens, max_seqlen)


# The checks depend on shapes, strides, dtypes and options alone: a call like an earlier one
# (every call of a training step) skips them.
_check_rope_apply = functools.lru_cache(maxsize=4096)(host.check_rope_apply)


def _check_tensors(**tensors):
    for name, value in tensors.items():
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_inplace(inplace, *tensors):
    """In place is refused where autograd would lose the inputs: a leaf that requires grad."""
    if inplace and torch.is_grad_enabled() and any(t.is_leaf and t.requires_grad for t in tensors):
        raise ValueError("inplace=True cannot rotate a leaf tensor that requires grad; "
                         "use inplace=False or rotate a non-leaf (e.g. a projection's output)")


def _split_offset(offset):
    """(int offset, per-sequence offsets tensor or None) from an int or a (batch,) tensor."""
    if isinstance(offset, Tensor):
        return 0, offset
    return offset, None


def _rotate(q, k, *, cos=None, sin=None, frequencies=None, position_ids=None, offset=0,
            layout="bshd", interleaved=False, cu_seqlens=None, max_seqlen=None, inplace=False,
            backend="auto", use_triton=True):
    """Check, then rotate by the chosen backend (see apply_rotary_pos_emb and rope_rotate)."""
    if frequencies is None:  # by tables: both are needed
        for name, table in (("cos", cos), ("sin", sin)):
            if not isinstance(table, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(table).__name__}")
    offset, batch_offsets = _split_offset(offset)
    _check_tensors(q=q, k=k, cos=cos, sin=sin, position_ids=position_ids, offset=batch_offsets,
                   cu_seqlens=cu_seqlens)
    host.check_layout(layout)  # layout and offset key the cached checks: an unhashable one
    host.check_offset(offset)  # must get its own message, not lru_cache's
    tensors = (q, k, cos, sin, frequencies, position_ids, batch_offsets, cu_seqlens)
    operands = tuple(map(operand, tensors))
    q_, k_, cos_, sin_, _, positions_, batch_offsets_, cu_seqlens_ = operands
    cached(_check_rope_apply)(
        q_, k_, layout=layout, cos=cos_, sin=sin_, positions=positions_,
        batch_offsets=batch_offsets_, cu_seqlens=cu_seqlens_, position_offset=offset,
        dim=None if frequencies is None else 2 * frequencies.shape[1],
    )
    for name, tensor in (("k", k), ("cos", cos), ("sin", sin), ("position_ids", position_ids),
                         ("offset", batch_offsets), ("cu_seqlens", cu_seqlens)):
        if tensor is not None and tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device}, q on {q.device}: they must share a device")
    if cos is not None and (cos.requires_grad or sin.requires_grad):
        raise ValueError("cos and sin must not require grad: trinix rotates by them as constants")
    _check_inplace(inplace, q, k)
    if cos is not None:
        _check_table_positions(position_ids, cos.shape[-2])
    max_seqlen = _packed_max_seqlen(cu_seqlens, q.shape[0], max_seqlen)
    if cu_seqlens is not None and not cu_seqlens.is_contiguous():
        cu_seqlens = cu_seqlens.contiguous()  # the kernel reads it at unit stride
        tensors, operands = (*tensors[:-1], cu_seqlens), (*operands[:-1], operand(cu_seqlens))
    if cos is not None and position_ids is None:
        host.check_table_rows(cos.shape[-2], max_seqlen)
    backend = resolve_backend(backend, use_triton, q.device)
    if backend == "torch":
        positions, batch_index = _token_positions(q, layout, position_ids, batch_offsets, cu_seqlens,
                                                  offset)
        if cos is None:
            cos, sin = _angles_torch(frequencies, positions, compute_dtype(q.dtype), interleaved)
        else:
            cos, sin = _rows(cos, positions, batch_index), _rows(sin, positions, batch_index)
        return _rotate_torch(q, k, cos, sin, layout, interleaved, inplace)
    options = _Options(layout, offset, interleaved, max_seqlen)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _RopeApply.apply(*tensors, options, backend == "interpret", inplace)
    # Nothing to differentiate (inference, or q and k are constants): skip autograd's cost.
    return _rotate_by_kernel(tensors, options, backend == "interpret", inplace, operands)


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


def _inv_freq64(inv_freq) -> np.ndarray:
    if isinstance(inv_freq, Tensor):
        inv_freq = inv_freq.detach().cpu().numpy()
    return host.as_inv_freq(inv_freq)


@functools.lru_cache(maxsize=256)  # dynamic NTK makes new frequencies for each longer sequence
def _cached_frequencies(inv_freq_bytes: bytes, attention_factor: float, device: torch.device) -> Tensor:
    inv_freq = np.frombuffer(inv_freq_bytes, dtype=np.float64)
    return torch.from_numpy(host.kernel_frequencies(inv_freq, attention_factor)).to(device)


def device_frequencies(inv_freq, device, attention_factor: float = 1.0) -> Tensor:
    """The kernels' frequency operand (3, rotary_dim / 2) float32 on `device` (see
    trinix.rope.kernel_frequencies), made once per inv_freq, factor and device."""
    host.check_attention_factor(attention_factor)
    return _cached_frequencies(_inv_freq64(inv_freq).tobytes(), float(attention_factor),
                               torch.device(device))


def _angles_torch(frequencies: Tensor, positions: Tensor, compute: torch.dtype, interleaved: bool):
    """cos/sin (*positions.shape, rotary_dim) from float64 angles, in `compute` dtype."""
    turns = frequencies[0].double() + frequencies[1].double()
    angles = positions.to(torch.float64)[..., None] * turns * (2 * np.pi)
    if interleaved:
        angles = angles.repeat_interleave(2, dim=-1)
    else:
        angles = torch.cat((angles, angles), dim=-1)
    amplitude = frequencies[2, 0].double()
    return (angles.cos() * amplitude).to(compute), (angles.sin() * amplitude).to(compute)


def rope_rotate(q: Tensor, k: Tensor, inv_freq, *, position_ids: Tensor | None = None,
                offset: int | Tensor = 0, layout: str = "bshd", interleaved: bool = False,
                attention_factor: float = 1.0, cu_seqlens: Tensor | None = None,
                max_seqlen: int | None = None, inplace: bool = False, backend: str = "auto",
                use_triton: bool = True):
    """Rotate q and k with cos/sin computed in the kernel from positions x inv_freq.

    inv_freq: (rotary_dim / 2,) frequencies, numpy float64 (or a tensor, read to the host
    once); rotary_dim <= head_dim, the columns past it pass through. Positions are
    position_ids, or offset + s, with `offset` an int or per-sequence (batch,) tensor (KV-cache
    decoding). cos and sin carry `attention_factor`. No cos/sin table exists.
    Under torch.compile use FastRoPEPositionEmbedding.rotate, whose frequencies are a buffer.
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
    backend = resolve_backend(backend, use_triton, frequencies.device)
    if backend == "torch":
        positions = torch.arange(offset, offset + seq_len, device=frequencies.device)
        cos, sin = _angles_torch(frequencies, positions, torch.float64, interleaved)
        return cos.to(dtype), sin.to(dtype)
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

    Args:
        dim: rotary dim: the head_dim of q and k, or fewer columns (partial rotation, as in
            GPT-NeoX or Phi: the columns past dim pass through). Even.
        max_position_embeddings: the context the model was trained for. Longer sequences
            work too: cos/sin are computed for any position, there is no cache to outgrow.
        base: RoPE base (theta).
        use_triton: False runs plain torch ops (the "torch" backend).
        backend: "auto" (Triton for CUDA tensors, torch ops otherwise), "triton",
            "interpret" (the Triton kernel on the CPU through Triton's interpreter) or "torch".
        layout: "bshd" (batch, seq, heads, head_dim), "bhsd" (batch, heads, seq, head_dim) or
            "thd" (packed tokens, heads, head_dim; calls then take cu_seqlens).
        interleaved: rotate pairs (2i, 2i + 1) (GPT-J, RoFormer) instead of (i, i + dim/2).
        rope_config: a `trinix.rope_scaling.RopeConfig` with a scaling recipe (linear, dynamic
            NTK, YaRN, Llama 3, LongRoPE) of the same dim and base; `from_hf_config` makes one
            from a transformers config.
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd",
                 interleaved: bool = False, rope_config: RopeConfig | None = None):
        super().__init__()
        if rope_config is None:
            rope_config = RopeConfig(dim=dim, base=base, max_position_embeddings=max_position_embeddings)
        elif not isinstance(rope_config, RopeConfig):
            raise TypeError(f"rope_config must be a trinix.rope_scaling.RopeConfig, got "
                            f"{type(rope_config).__name__}")
        elif (rope_config.dim, rope_config.base) != (dim, base):
            raise ValueError(f"rope_config has dim {rope_config.dim} and base {rope_config.base}, the "
                             f"module dim {dim} and base {base}")
        host.check_layout(layout)
        resolve_backend(backend, use_triton, torch.device("cuda"))
        self.rope_config = rope_config
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.use_triton = use_triton
        self.backend = backend
        self.layout = layout
        self.interleaved = interleaved
        self.inv_freq, self.attention_factor = inv_freq_and_scale(rope_config)
        # The kernels' frequencies, kept as the int32 bits of their float32 values: a buffer
        # moves with .to(device) and is visible to torch.compile, and integer bits are left
        # alone by .half() / .to(dtype), which would round the frequencies.
        bits = host.kernel_frequencies(self.inv_freq, self.attention_factor).view(np.int32)
        self.register_buffer("frequency_bits", torch.from_numpy(bits), persistent=False)
        self._frequencies_on: dict[torch.device, Tensor] = {}

    @classmethod
    def from_hf_config(cls, config, **kwargs) -> "FastRoPEPositionEmbedding":
        """The rotary embedding of a transformers config (object or config.json dict, 4.x
        `rope_scaling` or 5 `rope_parameters`): its rope type and parameters, rotary dim
        (head_dim x partial_rotary_factor) and base, so that `rope(x, seq_len)` gives the
        model's own cos/sin. kwargs: the module's other options (backend, layout, ...)."""
        rope_config = RopeConfig.from_hf(config)
        return cls(rope_config.dim, rope_config.max_position_embeddings or 2048, rope_config.base,
                   rope_config=rope_config, **kwargs)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, max_position_embeddings={self.max_position_embeddings}, "
                f"base={self.base}, rope_type={self.rope_config.rope_type!r}, "
                f"backend={self.backend!r}, layout={self.layout!r}, interleaved={self.interleaved}")

    def frequencies(self, device: torch.device, seq_len: int | None = None) -> Tensor:
        """The kernels' frequency operand (3, dim / 2) float32, on `device`, for sequences of
        seq_len positions (dynamic NTK and LongRoPE depend on it)."""
        if seq_len is not None and self.rope_config.rope_type in SEQ_LEN_DEPENDENT:
            inv_freq, attention_factor = inv_freq_and_scale(self.rope_config, seq_len)
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
        if isinstance(cos, Tensor) and cos.shape[-1] != self.dim:
            raise ValueError(f"cos has {cos.shape[-1]} columns, the module's rotary dim is {self.dim}")
        return _rotate(q, k, cos=cos, sin=sin, position_ids=position_ids, layout=self.layout,
                       interleaved=self.interleaved, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                       inplace=inplace, backend=backend or self.backend, use_triton=self.use_triton)

    def rotate(self, q: Tensor, k: Tensor, *, position_ids: Tensor | None = None,
               offset: int | Tensor = 0, cu_seqlens: Tensor | None = None,
               max_seqlen: int | None = None, inplace: bool = False, backend: str | None = None):
        """Rotate q and k at position_ids, or at offset + s (offset an int or per-sequence
        (batch,) tensor), with cos/sin computed in the kernel."""
        _check_tensors(q=q)
        frequencies = self.frequencies(q.device)
        if self.rope_config.rope_type in SEQ_LEN_DEPENDENT:
            # Reading ids, offsets or cu_seqlens costs a sync: only these recipes need it.
            values = [None if t is None else t.cpu().numpy() if isinstance(t, Tensor) else t
                      for t in (position_ids, offset, cu_seqlens)]
            seq_len = host.positions_extent(q.shape, self.layout, *values, max_seqlen)
            frequencies = self.frequencies(q.device, seq_len)
        return _rotate(q, k, frequencies=frequencies, position_ids=position_ids,
                       offset=offset, layout=self.layout, interleaved=self.interleaved,
                       cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, inplace=inplace,
                       backend=backend or self.backend, use_triton=self.use_triton)
