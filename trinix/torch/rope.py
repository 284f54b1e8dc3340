"""RoPE for PyTorch: torch.library ops over the Triton kernels, autograd, functional forms
and the seed's `FastRoPEPositionEmbedding` module.

Shapes: q (batch, seq, heads_q, head_dim) and k (batch, seq, heads_k, head_dim) in layout
"bshd", or (batch, heads, seq, head_dim) in layout "bhsd"; cos and sin (rows, head_dim) or
(batch, rows, head_dim); position_ids (batch, seq) or (1, seq) integers.
"""

import functools

import numpy as np
import torch
from torch import Tensor
from torch.library import triton_op

from trinix import rope as host
from trinix.kernels.rope import rope_apply_call, rope_table_call
from trinix.torch.launcher import DTYPES, compute_dtype, dtype_name, launch, operand, resolve_backend


def _launch_apply(q, k, cos, sin, freq_turns, positions, offset, layout, conjugate, interpret,
                  inplace, traceable=False):
    call = rope_apply_call(
        operand(q), operand(k), layout=layout, cos=operand(cos), sin=operand(sin),
        positions=operand(positions), position_offset=offset, conjugate=conjugate, inplace=inplace,
    )
    arrays = dict(q=q, k=k, cos=cos, sin=sin, freq_turns=freq_turns, positions=positions)
    return launch(call, arrays, interpret=interpret, traceable=traceable)


@triton_op("trinix::rope_apply", mutates_args=())
def _rope_apply_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, freq_turns: Tensor | None,
    positions: Tensor | None, offset: int, layout: str, conjugate: bool, interpret: bool,
) -> tuple[Tensor, Tensor]:
    return _launch_apply(q, k, cos, sin, freq_turns, positions, offset, layout, conjugate,
                         interpret, inplace=False, traceable=True)


@triton_op("trinix::rope_apply_", mutates_args=("q", "k"))
def _rope_apply_inplace_op(
    q: Tensor, k: Tensor, cos: Tensor | None, sin: Tensor | None, freq_turns: Tensor | None,
    positions: Tensor | None, offset: int, layout: str, interpret: bool,
) -> None:
    _launch_apply(q, k, cos, sin, freq_turns, positions, offset, layout, False, interpret,
                  inplace=True, traceable=True)


class _RopeApply(torch.autograd.Function):
    """Rotation by the kernel; its backward is the same kernel, conjugated.

    Eagerly the kernel is launched directly; under torch.compile through the torch.library ops,
    which the compiler can trace (the ops' dispatch costs tens of microseconds per call)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, freq_turns, positions, offset, layout, interpret, inplace):
        traced = torch.compiler.is_compiling()
        if inplace:
            if traced:
                _rope_apply_inplace_op(q, k, cos, sin, freq_turns, positions, offset, layout, interpret)
            else:
                _launch_apply(q, k, cos, sin, freq_turns, positions, offset, layout, False, interpret, True)
            ctx.mark_dirty(q, k)
            out = (q, k)
        elif traced:
            out = _rope_apply_op(q, k, cos, sin, freq_turns, positions, offset, layout, False, interpret)
        else:
            out = _launch_apply(q, k, cos, sin, freq_turns, positions, offset, layout, False, interpret, False)
        ctx.save_for_backward(cos, sin, freq_turns, positions)
        ctx.config = (offset, layout, interpret)
        return out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin, freq_turns, positions = ctx.saved_tensors
        offset, layout, interpret = ctx.config
        args = (grad_q, grad_k, cos, sin, freq_turns, positions, offset, layout, True, interpret)
        if torch.compiler.is_compiling():
            grad_q, grad_k = _rope_apply_op(*args)
        else:
            grad_q, grad_k = _launch_apply(*args, False)
        return grad_q, grad_k, None, None, None, None, None, None, None, None


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_torch(q, k, cos, sin, layout, inplace):
    """The torch backend: cos/sin (batch or 1, seq, head_dim) already per token."""
    compute = compute_dtype(q.dtype)
    head_axis = 2 if layout == "bshd" else 1
    cos = cos.to(compute).unsqueeze(head_axis)
    sin = sin.to(compute).unsqueeze(head_axis)

    def rotate(x):
        x32 = x.to(compute)
        return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)

    if inplace:
        return q.copy_(rotate(q)), k.copy_(rotate(k))
    return rotate(q), rotate(k)


def _token_positions(positions, offset, seq_len, device):
    """(batch or 1, seq) positions of each token."""
    if positions is not None:
        return positions
    return torch.arange(offset, offset + seq_len, device=device)[None]


def _rows(table: Tensor, positions: Tensor) -> Tensor:
    """table[positions] for a (rows, dim) table, table[b, positions[b]] for (batch, rows, dim)."""
    if table.ndim == 2:
        return table[positions]
    return table[torch.arange(table.shape[0], device=table.device)[:, None], positions]


def _check_table_positions(positions: Tensor | None, rows: int) -> None:
    """Positions outside a cos/sin table are refused; costs one sync, so only on the table
    path, and not while torch.compile traces (the kernel then yields NaN for such rows)."""
    if positions is None or positions.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = torch.stack(torch.aminmax(positions)).tolist()
    if low < 0 or high >= rows:
        raise ValueError(f"position_ids must lie in [0, {rows}) to index cos/sin of {rows} rows, "
                         f"got values in [{low}, {high}]")


def _check_positions_arg(position_ids):
    if position_ids is not None and not isinstance(position_ids, Tensor):
        raise TypeError(f"position_ids must be a tensor, got {type(position_ids).__name__}")


def _check_tensors(**tensors):
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_inplace(inplace, *tensors):
    """In place is refused where autograd would lose the inputs: a leaf that requires grad."""
    if inplace and torch.is_grad_enabled() and any(t.is_leaf and t.requires_grad for t in tensors):
        raise ValueError("inplace=True cannot rotate a leaf tensor that requires grad; "
                         "use inplace=False or rotate a non-leaf (e.g. a projection's output)")


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                         position_ids: Tensor | None = None, *, layout: str = "bshd",
                         inplace: bool = False, backend: str = "auto", use_triton: bool = True):
    """Rotate q and k by given cos/sin tables (rows, head_dim) or (batch, rows, head_dim).

    Token s of batch b reads row position_ids[b, s], or row s without position_ids. Returns
    (q_rot, k_rot) in the layout and dtype of q and k (q and k themselves if `inplace`).
    cos and sin are constants to autograd: pass tensors that do not require grad.
    """
    _check_tensors(q=q, k=k, cos=cos, sin=sin)
    _check_positions_arg(position_ids)
    host.check_rope_apply(operand(q), operand(k), layout=layout, cos=operand(cos), sin=operand(sin),
                          positions=operand(position_ids))
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("cos and sin must not require grad: trinix rotates by them as constants")
    _check_inplace(inplace, q, k)
    _check_table_positions(position_ids, cos.shape[-2])
    backend = resolve_backend(backend, use_triton, q.device)
    if backend == "torch":
        seq_len = host.split_bshd(q.shape, layout)[1]
        positions = _token_positions(position_ids, 0, seq_len, q.device)
        return _rotate_torch(q, k, _rows(cos, positions), _rows(sin, positions), layout, inplace)
    return _RopeApply.apply(q, k, cos, sin, None, position_ids, 0, layout, backend == "interpret", inplace)


def _inv_freq64(inv_freq) -> np.ndarray:
    if isinstance(inv_freq, Tensor):
        inv_freq = inv_freq.detach().cpu().numpy()
    inv_freq = np.ascontiguousarray(inv_freq, dtype=np.float64)
    if inv_freq.ndim != 1 or inv_freq.size == 0:
        raise ValueError(f"inv_freq must be a non-empty 1-dim array, got shape {inv_freq.shape}")
    return inv_freq


@functools.cache
def _cached_frequency_turns(inv_freq_bytes: bytes, device: torch.device) -> Tensor:
    inv_freq = np.frombuffer(inv_freq_bytes, dtype=np.float64)
    return torch.from_numpy(host.frequency_turns(inv_freq)).to(device)


def frequency_turns(inv_freq, device) -> Tensor:
    """The kernels' frequency operand (2, dim / 2) float32 on `device` (see
    trinix.rope.frequency_turns), made once per inv_freq and device."""
    return _cached_frequency_turns(_inv_freq64(inv_freq).tobytes(), torch.device(device))


def _angles_torch(freq_turns: Tensor, positions: Tensor, compute: torch.dtype):
    """cos/sin (*positions.shape, dim) from float64 angles, in `compute` dtype."""
    turns = freq_turns[0].double() + freq_turns[1].double()
    angles = positions.to(torch.float64)[..., None] * turns * (2 * np.pi)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(compute), angles.sin().to(compute)


def _rotate(q, k, freq_turns, position_ids, offset, layout, inplace, backend, use_triton):
    """rope_rotate after its checks, with the frequencies already a tensor on q's device."""
    _check_positions_arg(position_ids)
    host.check_rope_apply(operand(q), operand(k), layout=layout, positions=operand(position_ids),
                          position_offset=offset, dim=2 * freq_turns.shape[1])
    _check_inplace(inplace, q, k)
    backend = resolve_backend(backend, use_triton, q.device)
    if backend == "torch":
        seq_len = host.split_bshd(q.shape, layout)[1]
        positions = _token_positions(position_ids, offset, seq_len, q.device)
        cos, sin = _angles_torch(freq_turns, positions, compute_dtype(q.dtype))
        return _rotate_torch(q, k, cos, sin, layout, inplace)
    return _RopeApply.apply(q, k, None, None, freq_turns, position_ids, offset, layout,
                            backend == "interpret", inplace)


def rope_rotate(q: Tensor, k: Tensor, inv_freq, *, position_ids: Tensor | None = None,
                offset: int = 0, layout: str = "bshd", inplace: bool = False,
                backend: str = "auto", use_triton: bool = True):
    """Rotate q and k with cos/sin computed in the kernel from positions x inv_freq.

    inv_freq: (head_dim / 2,) frequencies, numpy float64 (or a tensor, read to the host once).
    Positions are position_ids (batch or 1, seq), or offset + s. No cos/sin table exists.
    Under torch.compile use FastRoPEPositionEmbedding.rotate, whose frequencies are a buffer.
    """
    _check_tensors(q=q, k=k)
    return _rotate(q, k, frequency_turns(inv_freq, q.device), position_ids, offset, layout,
                   inplace, backend, use_triton)


def _cos_sin(freq_turns, seq_len, offset, dtype, backend, use_triton):
    host.check_seq_len(seq_len)
    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be one of {list(DTYPES.values())}, got {dtype}")
    backend = resolve_backend(backend, use_triton, freq_turns.device)
    if backend == "torch":
        positions = torch.arange(offset, offset + seq_len, device=freq_turns.device)
        cos, sin = _angles_torch(freq_turns, positions, torch.float64)
        return cos.to(dtype), sin.to(dtype)
    call = rope_table_call(seq_len, 2 * freq_turns.shape[1], dtype_name(dtype), position_offset=offset)
    return launch(call, dict(freq_turns=freq_turns), interpret=backend == "interpret",
                  traceable=torch.compiler.is_compiling())


def rope_cos_sin(inv_freq, seq_len: int, *, offset: int = 0, dtype: torch.dtype = torch.float32,
                 device=None, backend: str = "auto", use_triton: bool = True):
    """cos and sin tables, each (seq_len, 2 * len(inv_freq)) of `dtype`, for positions
    offset .. offset + seq_len - 1; one kernel launch on the Triton backends."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _cos_sin(frequency_turns(inv_freq, device), seq_len, offset, dtype, backend, use_triton)


class FastRoPEPositionEmbedding(torch.nn.Module):
    """Rotary position embedding (half-split, GPT-NeoX / LLaMA style) on Triton kernels.

    Example::

        rope = FastRoPEPositionEmbedding(dim=128, max_position_embeddings=32768)
        cos, sin = rope(q, seq_len)                               # each (seq_len, 128)
        q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)  # q, k: (batch, seq, heads, 128)
        q_rot, k_rot = rope.rotate(q, k, offset=past_len)         # cos/sin computed in the kernel

    Args:
        dim: rotary dim, the head_dim of q and k (even).
        max_position_embeddings: the context the model was trained for. Longer sequences
            work too: cos/sin are computed for any position, there is no cache to outgrow.
        base: RoPE base (theta).
        use_triton: False runs plain torch ops (the "torch" backend).
        backend: "auto" (Triton for CUDA tensors, torch ops otherwise), "triton",
            "interpret" (the Triton kernel on the CPU through Triton's interpreter) or "torch".
        layout: "bshd" (batch, seq, heads, head_dim) or "bhsd" (batch, heads, seq, head_dim).
    """

    def __init__(self, dim: int, max_position_embeddings: int = 2048, base: float = 10000.0,
                 use_triton: bool = True, *, backend: str = "auto", layout: str = "bshd"):
        super().__init__()
        host.check_layout(layout)
        resolve_backend(backend, use_triton, torch.device("cuda"))
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.use_triton = use_triton
        self.backend = backend
        self.layout = layout
        self.inv_freq = host.default_inv_freq(dim, base)
        # The kernels' frequencies, kept as the int32 bits of their float32 values: a buffer
        # moves with .to(device) and is visible to torch.compile, and integer bits are left
        # alone by .half() / .to(dtype), which would round the frequencies.
        bits = host.frequency_turns(self.inv_freq).view(np.int32)
        self.register_buffer("frequency_bits", torch.from_numpy(bits), persistent=False)
        self._frequency_turns_on: dict[torch.device, Tensor] = {}

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, max_position_embeddings={self.max_position_embeddings}, "
                f"base={self.base}, backend={self.backend!r}, layout={self.layout!r}")

    def frequency_turns(self, device: torch.device) -> Tensor:
        """The kernels' frequency operand (2, dim / 2) float32, on `device`."""
        if self.frequency_bits.device == device:
            return self.frequency_bits.view(torch.float32)
        if device not in self._frequency_turns_on:  # the module was left on another device
            self._frequency_turns_on[device] = self.frequency_bits.to(device).view(torch.float32)
        return self._frequency_turns_on[device]

    def _seq_len(self, x: Tensor) -> int:
        if x.ndim != 4:
            raise ValueError(f"x must have 4 dims in layout {self.layout!r}, got shape {tuple(x.shape)}")
        return host.split_bshd(x.shape, self.layout)[1]

    def forward(self, x: Tensor, seq_len: int | None = None, *, offset: int = 0):
        """cos and sin for positions offset .. offset + seq_len - 1, each (seq_len, dim) in the
        dtype and on the device of x; seq_len defaults to x's sequence length."""
        _check_tensors(x=x)
        if seq_len is None:
            seq_len = self._seq_len(x)
        return _cos_sin(self.frequency_turns(x.device), seq_len, offset, x.dtype, self.backend,
                        self.use_triton)

    def apply_rotary_pos_emb(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor,
                             position_ids: Tensor | None = None, *, inplace: bool = False,
                             backend: str | None = None):
        """Rotate q and k by cos/sin from `forward` (see the module-level apply_rotary_pos_emb)."""
        _check_tensors(q=q)
        if q.ndim == 4 and host.split_bshd(q.shape, self.layout)[3] != self.dim:
            raise ValueError(f"head_dim of q ({host.split_bshd(q.shape, self.layout)[3]}) differs "
                             f"from the module's dim ({self.dim})")
        return apply_rotary_pos_emb(q, k, cos, sin, position_ids, layout=self.layout, inplace=inplace,
                                    backend=backend or self.backend, use_triton=self.use_triton)

    def rotate(self, q: Tensor, k: Tensor, *, position_ids: Tensor | None = None, offset: int = 0,
               inplace: bool = False, backend: str | None = None):
        """Rotate q and k at position_ids, or at offset + s, with cos/sin computed in the kernel."""
        _check_tensors(q=q, k=k)
        return _rotate(q, k, self.frequency_turns(q.device), position_ids, offset, self.layout,
                       inplace, backend or self.backend, self.use_triton)
