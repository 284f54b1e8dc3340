"""Rotary position embedding (RoPE) kernels and their call builders.

Half-split rotation (GPT-NeoX / LLaMA, transformers' `rotate_half`): for a head vector
x = [x1, x2] with halves of width R/2 and cos/sin rows c = [c1, c2], s = [s1, s2],

    out = x * c + rotate_half(x) * s = [x1*c1 - x2*s1, x2*c2 + x1*s2].

Its transpose (the backward) is the same kernel with CONJUGATE: [x1*c1 + x2*s2, x2*c2 - x1*s1].
cos/sin come either from tables (any strides, optionally gathered by position ids) or are
computed in the kernel from positions and frequencies, so the fast path needs no table.
"""

import functools

import triton
import triton.language as tl

from .call import (KernelCall, Operand, Output, batched_strides, cdiv, compute_dtype, next_power_of_2,
                   row_major_strides)

# Elements of one half-tile (tokens x heads x half head_dim) a program rotates.
_TILE_ELEMENTS = 4096


@triton.jit
def _cos_sin_from_frequencies(FREQ_TURNS, positions, offs_d, d_mask, HALF: tl.constexpr,
                              COMPUTE: tl.constexpr):
    """cos and sin of positions x frequencies, (BLOCK_S, BLOCK_HALF) in COMPUTE dtype.

    FREQ_TURNS holds each frequency in turns per position (inv_freq / 2pi) as float32 high
    and low parts. The angle is formed and reduced to one turn in float64, so the position
    survives at any context length; only the final [0, 2pi) angle is rounded.
    """
    hi = tl.load(FREQ_TURNS + offs_d, mask=d_mask, other=0.0).to(tl.float64)
    lo = tl.load(FREQ_TURNS + HALF + offs_d, mask=d_mask, other=0.0).to(tl.float64)
    turns = positions.to(tl.float64)[:, None] * (hi + lo)[None, :]
    turns = turns - tl.floor(turns)
    angle = turns.to(COMPUTE) * tl.full([1, 1], 6.283185307179586, COMPUTE)
    return tl.cos(angle), tl.sin(angle)


@triton.jit
def _rotate_heads(X, X_OUT, b, offs_s, s_mask, h0, n_heads,
                  stride_b, stride_s, stride_h, stride_d,
                  stride_ob, stride_os, stride_oh, stride_od,
                  c1, c2, s1, s2, offs_d, d_mask,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, COMPUTE: tl.constexpr):
    """Rotate heads h0 .. h0+BLOCK_H of tokens offs_s of batch b."""
    offs_h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
    mask = s_mask[:, None, None] & (offs_h < n_heads)[None, :, None] & d_mask[None, None, :]
    row = offs_s.to(tl.int64)[:, None, None]
    head = offs_h[None, :, None]
    col = offs_d.to(tl.int64)[None, None, :]
    x_ptr = X + b * stride_b + row * stride_s + head * stride_h + col * stride_d
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(COMPUTE)
    x2 = tl.load(x_ptr + HALF * stride_d, mask=mask, other=0.0).to(COMPUTE)
    o1 = x1 * c1[:, None, :] - x2 * s1[:, None, :]
    o2 = x2 * c2[:, None, :] + x1 * s2[:, None, :]
    o_ptr = X_OUT + b * stride_ob + row * stride_os + head * stride_oh + col * stride_od
    tl.store(o_ptr, o1.to(X_OUT.dtype.element_ty), mask=mask)
    tl.store(o_ptr + HALF * stride_od, o2.to(X_OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_apply_kernel(
    Q, K, COS, SIN, FREQ_TURNS, POSITIONS,
    seq_len, n_heads_q, n_heads_k, n_seq_blocks, n_q_head_blocks, position_offset, table_rows,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_qob, stride_qos, stride_qoh, stride_qod,
    stride_kob, stride_kos, stride_koh, stride_kod,
    stride_cb, stride_cs, stride_cd,
    stride_sb, stride_ss, stride_sd,
    stride_pb, stride_ps,
    Q_OUT, K_OUT,
    HALF: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    FROM_TABLE: tl.constexpr, HAS_POSITIONS: tl.constexpr, CONJUGATE: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """Rotate q and k, logical layout (batch, seq, heads, head_dim), in one launch.

    Grid: (batch * n_seq_blocks, n_q_head_blocks + n_k_head_blocks); a program takes
    BLOCK_S tokens and BLOCK_H heads of q or of k, and shares their cos/sin across heads.
    """
    pid_bs = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = (pid_bs // n_seq_blocks).to(tl.int64)
    offs_s = (pid_bs % n_seq_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = offs_s < seq_len
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF

    if HAS_POSITIONS:
        positions = tl.load(POSITIONS + b * stride_pb + offs_s.to(tl.int64) * stride_ps,
                            mask=s_mask, other=0).to(tl.int64)
    else:
        positions = (offs_s + position_offset).to(tl.int64)

    if FROM_TABLE:
        # A position outside the table reads nothing and yields NaN, never a neighbour's row.
        row_ok = s_mask & (positions >= 0) & (positions < table_rows)
        mask = row_ok[:, None] & d_mask[None, :]
        col = offs_d[None, :].to(tl.int64)
        cos_ptr = COS + b * stride_cb + (positions * stride_cs)[:, None] + col * stride_cd
        sin_ptr = SIN + b * stride_sb + (positions * stride_ss)[:, None] + col * stride_sd
        c1 = tl.load(cos_ptr, mask=mask, other=float("nan")).to(COMPUTE)
        c2 = tl.load(cos_ptr + HALF * stride_cd, mask=mask, other=float("nan")).to(COMPUTE)
        s1 = tl.load(sin_ptr, mask=mask, other=float("nan")).to(COMPUTE)
        s2 = tl.load(sin_ptr + HALF * stride_sd, mask=mask, other=float("nan")).to(COMPUTE)
    else:
        c1, s1 = _cos_sin_from_frequencies(FREQ_TURNS, positions, offs_d, d_mask, HALF, COMPUTE)
        c2 = c1
        s2 = s1
    if CONJUGATE:
        s1, s2 = -s2, -s1

    if pid_h < n_q_head_blocks:
        _rotate_heads(Q, Q_OUT, b, offs_s, s_mask, pid_h * BLOCK_H, n_heads_q,
                      stride_qb, stride_qs, stride_qh, stride_qd,
                      stride_qob, stride_qos, stride_qoh, stride_qod,
                      c1, c2, s1, s2, offs_d, d_mask, HALF, BLOCK_H, COMPUTE)
    else:
        _rotate_heads(K, K_OUT, b, offs_s, s_mask, (pid_h - n_q_head_blocks) * BLOCK_H, n_heads_k,
                      stride_kb, stride_ks, stride_kh, stride_kd,
                      stride_kob, stride_kos, stride_koh, stride_kod,
                      c1, c2, s1, s2, offs_d, d_mask, HALF, BLOCK_H, COMPUTE)


@triton.jit
def _rope_table_kernel(
    FREQ_TURNS, n_rows, position_offset, COS, SIN,
    HALF: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    """Write cos and sin tables (n_rows, 2*HALF) for positions offset .. offset+n_rows-1."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    positions = (offs_s + position_offset).to(tl.int64)
    cos, sin = _cos_sin_from_frequencies(FREQ_TURNS, positions, offs_d, d_mask, HALF, tl.float32)
    mask = (offs_s < n_rows)[:, None] & d_mask[None, :]
    offsets = offs_s.to(tl.int64)[:, None] * (2 * HALF) + offs_d[None, :]
    cos = cos.to(COS.dtype.element_ty)
    sin = sin.to(SIN.dtype.element_ty)
    tl.store(COS + offsets, cos, mask=mask)
    tl.store(COS + offsets + HALF, cos, mask=mask)
    tl.store(SIN + offsets, sin, mask=mask)
    tl.store(SIN + offsets + HALF, sin, mask=mask)


_LAYOUT_TO_BSHD = {"bshd": (0, 1, 2, 3), "bhsd": (0, 2, 1, 3)}


def _bshd(values: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return tuple(values[i] for i in _LAYOUT_TO_BSHD[layout])


# Builders are pure functions of hashable shapes and options, called on every launch: caching
# them takes the tile arithmetic off the per-call host time.
@functools.lru_cache(maxsize=4096)
def rope_apply_call(
    q: Operand,
    k: Operand,
    *,
    layout: str = "bshd",
    cos: Operand | None = None,
    sin: Operand | None = None,
    positions: Operand | None = None,
    position_offset: int = 0,
    conjugate: bool = False,
    inplace: bool = False,
) -> KernelCall:
    """Rotate q and k (in `layout`, "bshd" or "bhsd") in one launch.

    Inputs, by name: "q", "k", "cos", "sin", "freq_turns", "positions". With `cos`/`sin`
    (each (rows, dim) or (batch, rows, dim)) the rotation reads them at row `positions[b, s]`
    (or `position_offset + s`); without, it computes them from "freq_turns" (2, dim/2)
    float32. k may have fewer heads than q (GQA/MQA) or none at all. Outputs: q_out, k_out in
    the callers' layout, row-major, or written into q and k when `inplace`.
    """
    batch, seq_len, n_heads_q, head_dim = _bshd(q.shape, layout)
    n_heads_k = _bshd(k.shape, layout)[2]
    half = head_dim // 2
    block_half = next_power_of_2(half)
    block_h = min(next_power_of_2(max(n_heads_q, n_heads_k)), max(1, _TILE_ELEMENTS // block_half))
    block_s = max(1, _TILE_ELEMENTS // (block_h * block_half))
    n_seq_blocks = cdiv(seq_len, block_s)
    n_q_head_blocks = cdiv(n_heads_q, block_h)
    n_k_head_blocks = cdiv(n_heads_k, block_h)

    if inplace:
        outputs = (Output(q.shape, q.dtype, alias="q"), Output(k.shape, k.dtype, alias="k"))
        q_out_strides, k_out_strides = q.strides, k.strides
    else:
        outputs = (Output(q.shape, q.dtype), Output(k.shape, k.dtype))
        q_out_strides, k_out_strides = row_major_strides(q.shape), row_major_strides(k.shape)
    from_table = cos is not None
    scalars = (
        seq_len, n_heads_q, n_heads_k, n_seq_blocks, n_q_head_blocks, position_offset,
        cos.shape[-2] if from_table else 0,
        *_bshd(q.strides, layout), *_bshd(k.strides, layout),
        *_bshd(q_out_strides, layout), *_bshd(k_out_strides, layout),
        *batched_strides(cos, 3), *batched_strides(sin, 3), *batched_strides(positions, 2),
    )
    return KernelCall(
        kernel=_rope_apply_kernel,
        grid=(batch * n_seq_blocks, n_q_head_blocks + n_k_head_blocks),
        inputs=("q", "k", "cos", "sin", "freq_turns", "positions"),
        scalars=scalars,
        outputs=outputs,
        constexprs=dict(
            HALF=half, BLOCK_S=block_s, BLOCK_H=block_h, BLOCK_HALF=block_half,
            FROM_TABLE=from_table, HAS_POSITIONS=positions is not None, CONJUGATE=conjugate,
            COMPUTE=compute_dtype(q.dtype),
        ),
        num_warps=4,
    )


@functools.lru_cache(maxsize=1024)
def rope_table_call(n_rows: int, dim: int, dtype: str, *, position_offset: int = 0) -> KernelCall:
    """Write cos and sin tables, each (n_rows, dim) of `dtype`, for positions
    position_offset .. position_offset + n_rows - 1. Input: "freq_turns" (2, dim/2) float32."""
    half = dim // 2
    block_half = next_power_of_2(half)
    block_s = max(1, _TILE_ELEMENTS // block_half)
    return KernelCall(
        kernel=_rope_table_kernel,
        grid=(cdiv(n_rows, block_s),),
        inputs=("freq_turns",),
        scalars=(n_rows, position_offset),
        outputs=(Output((n_rows, dim), dtype), Output((n_rows, dim), dtype)),
        constexprs=dict(HALF=half, BLOCK_S=block_s, BLOCK_HALF=block_half),
        num_warps=4,
    )
