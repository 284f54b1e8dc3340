"""Host-side RoPE logic shared by the PyTorch and JAX bindings: frequencies and the input
contract. Works on shapes and dtype names only; never touches a tensor."""

import numpy as np

from trinix.kernels.call import Operand

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("bshd", "bhsd")


def default_inv_freq(dim: int, base: float) -> np.ndarray:
    """base ** (-2i / dim) for i < dim / 2, float64."""
    check_rope_config(dim, base)
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def frequency_turns(inv_freq: np.ndarray) -> np.ndarray:
    """The kernels' frequency operand: inv_freq / 2pi in turns per position, as float32 high
    and low parts, (2, dim / 2). Their sum keeps float64 precision, which a float32 array alone
    would not, and JAX has no float64 arrays by default."""
    turns = np.asarray(inv_freq, dtype=np.float64) / (2 * np.pi)
    high = turns.astype(np.float32)
    low = (turns - high.astype(np.float64)).astype(np.float32)
    return np.stack([high, low])


def check_rope_config(dim, base) -> None:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    if isinstance(base, bool) or not isinstance(base, (int, float, np.floating, np.integer)):
        raise TypeError(f"base must be a number, got {type(base).__name__}")
    if not np.isfinite(base) or base <= 0:
        raise ValueError(f"base must be a finite number > 0, got {base}")


def check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def check_seq_len(seq_len) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise TypeError(f"seq_len must be an int, got {type(seq_len).__name__}")
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")


def check_float(name: str, dtype: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({', '.join(FLOAT_DTYPES)}), got {dtype}")


def _dims(layout: str) -> str:
    return "(batch, seq, heads, head_dim)" if layout == "bshd" else "(batch, heads, seq, head_dim)"


def split_bshd(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """(batch, seq, heads, head_dim) of a 4-dim shape in `layout`."""
    if layout == "bshd":
        return tuple(shape)
    batch, heads, seq, head_dim = shape
    return batch, seq, heads, head_dim


def check_rope_apply(
    q: Operand,
    k: Operand,
    *,
    layout: str,
    cos: Operand | None = None,
    sin: Operand | None = None,
    positions: Operand | None = None,
    position_offset: int = 0,
    dim: int | None = None,
) -> None:
    """Raise ValueError/TypeError, naming the argument, for anything the rotation can't take.

    q, k: 4 dims in `layout`, same batch, seq and head_dim, heads may differ (GQA/MQA).
    cos, sin: (rows, head_dim) or (batch, rows, head_dim), both given or neither.
    positions: integer (batch, seq) or (1, seq). dim: the module's rotary dim, if any.
    """
    check_layout(layout)
    for name, x in (("q", q), ("k", k)):
        if len(x.shape) != 4:
            raise ValueError(f"{name} must have 4 dims {_dims(layout)}, got shape {tuple(x.shape)}")
        check_float(name, x.dtype)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    qb, qs, _, qd = split_bshd(q.shape, layout)
    kb, ks, _, kd = split_bshd(k.shape, layout)
    if qd != kd:
        raise ValueError(f"q and k must have the same head_dim, got {qd} and {kd}")
    if qd % 2:
        raise ValueError(f"head_dim must be even to rotate pairs, got {qd}")
    if (qb, qs) != (kb, ks):
        raise ValueError(f"q and k must have the same batch and seq, got q {tuple(q.shape)} and k "
                         f"{tuple(k.shape)} in layout {layout!r}")
    if dim is not None and qd != dim:
        raise ValueError(f"head_dim of q ({qd}) differs from the rotary dim ({dim}: the module's dim, "
                         "or 2 * len(inv_freq))")
    if not isinstance(position_offset, (int, np.integer)) or isinstance(position_offset, bool):
        raise TypeError(f"offset must be an int, got {type(position_offset).__name__}")

    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            check_float(name, t.dtype)
            if len(t.shape) not in (2, 3) or t.shape[-1] != qd:
                raise ValueError(f"{name} must be (seq, {qd}) or (batch, seq, {qd}) to match head_dim "
                                 f"{qd}, got shape {tuple(t.shape)}")
            if len(t.shape) == 3 and t.shape[0] not in (1, qb):
                raise ValueError(f"{name} batch must be 1 or {qb}, got shape {tuple(t.shape)}")
        if tuple(cos.shape) != tuple(sin.shape):
            raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and "
                             f"{tuple(sin.shape)}")
        if positions is None and cos.shape[-2] < position_offset + qs:
            raise ValueError(f"cos/sin have {cos.shape[-2]} rows, fewer than the {position_offset + qs} "
                             f"positions the sequence needs (offset {position_offset} + seq {qs})")
    if positions is not None:
        if not positions.dtype.startswith(("int", "uint")):
            raise TypeError(f"position_ids must be an integer tensor, got {positions.dtype}")
        if len(positions.shape) != 2 or positions.shape[1] != qs or positions.shape[0] not in (1, qb):
            raise ValueError(f"position_ids must be ({qb}, {qs}) or (1, {qs}), got shape "
                             f"{tuple(positions.shape)}")
