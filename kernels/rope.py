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

from .call import (KernelCall, Operand, Output, batched_strides, cdiv, compute_dtype, largest_power_of_2,
                   next_power_of_2, row_major_strides)
from .hints import kernel, multiple_of_16, strides_aligned

# A program rotates a tile of BLOCK_S tokens x BLOCK_H heads x BLOCK_HALF pairs of q or of k
# (with the BLOCK_PASS columns after them that partial rotation passes through), each
# tensor's tiles shaped for its own head count: heads fill up to _HEAD_TILE_ELEMENTS pairs
# (cos/sin, computed once per token, serve every head of the tile, so wide head tiles pay),
# then tokens up to _TILE_ELEMENTS; passed-through columns count two to a pair. The sizes here
# come from the sweeps in benchmarks/NOTES.md ("2026-12-06: moved from code comments").
_HEAD_TILE_ELEMENTS = 8192
_TILE_ELEMENTS = 4096
# In "bhsd" a head's tokens are contiguous: computing cos/sin, a tile of a few heads x a few
# tokens reads contiguous rows and still shares each token's cos/sin among heads; reading
# tables, the default tile is as fast.
_BHSD_COMPUTED_HEAD_TILE_ELEMENTS = 512
# Warps per program. Reading cos/sin tables, a tile of 4096 pairs or more takes 8 warps: on 4
# such a tile needs over 200 registers a thread. Computing cos/sin, 4 warps are faster.
_TABLE_WARPS_FROM_PAIRS = 4096
# Pairs a program of the cos/sin table kernel computes: each is a float64 angle, a cos and a
# sin (~100 instructions): small programs, many of them, keep the GPU busy on short tables;
# at 512 a thread has 4 pairs.
_TABLE_TILE_PAIRS = 512


@triton.jit
def _pair_columns(offs_d, HALF: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Columns of the two elements of each rotated pair: (i, i + HALF) in half-split style,
    (2i, 2i + 1) interleaved (GPT-J / RoFormer)."""
    if INTERLEAVED:
        first = 2 * offs_d
        second = first + 1
    else:
        first = offs_d
        second = offs_d + HALF
    return first.to(tl.int64), second.to(tl.int64)


@triton.jit
def _cos_sin_from_frequencies(FREQUENCIES, positions, offs_d, d_mask, HALF: tl.constexpr,
                              COMPUTE: tl.constexpr):
    """cos and sin of positions x frequencies, (BLOCK_S, BLOCK_HALF) in COMPUTE dtype.

    FREQUENCIES (3, HALF) float32 holds each frequency in turns per position (inv_freq / 2pi)
    as high and low parts, then the amplitude cos and sin carry (the attention factor of
    scaled RoPE). The angle is formed and reduced to one turn in float64, so the position
    survives at any context length; only the final [0, 2pi) angle is rounded.
    """
    hi = tl.load(FREQUENCIES + offs_d, mask=d_mask, other=0.0).to(tl.float64)
    lo = tl.load(FREQUENCIES + HALF + offs_d, mask=d_mask, other=0.0).to(tl.float64)
    amplitude = tl.load(FREQUENCIES + 2 * HALF + offs_d, mask=d_mask, other=0.0).to(COMPUTE)[None, :]
    turns = positions.to(tl.float64)[:, None] * (hi + lo)[None, :]
    turns = turns - tl.floor(turns)
    angle = turns.to(COMPUTE) * tl.full([1, 1], 6.283185307179586, COMPUTE)
    return tl.cos(angle) * amplitude, tl.sin(angle) * amplitude


@triton.jit
def _rotate_heads(X, X_OUT, x_base, o_base, rows, s_mask, h0, n_heads,
                  stride_s, stride_h, stride_d, stride_os, stride_oh, stride_od,
                  c1, c2, s1, s2, offs_d, d_mask,
                  HALF: tl.constexpr, PASS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr, INTERLEAVED: tl.constexpr,
                  INPLACE: tl.constexpr, COMPUTE: tl.constexpr):
    """Rotate heads h0 .. h0+BLOCK_H of the BLOCK_S token rows `rows` (element offsets x_base /
    o_base already hold the batch); the PASS columns after the rotary ones are copied
    unchanged.

    Every load comes before every store: the compiler cannot tell that the output does not
    alias the input, so a load after a store is issued only once the store's data has
    arrived, one memory round trip after another."""
    offs_h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
    head_mask = s_mask[:, None, None] & (offs_h < n_heads)[None, :, None]
    mask = head_mask & d_mask[None, None, :]
    x_row = X + x_base + rows[:, None, None] * stride_s + offs_h[None, :, None] * stride_h
    o_row = X_OUT + o_base + rows[:, None, None] * stride_os + offs_h[None, :, None] * stride_oh
    if INTERLEAVED:
        # Pairs (2i, 2i + 1) are neighbours: read the rotated columns as one contiguous block
        # and split the pairs in registers, not as two loads of every other element.
        columns = tl.arange(0, 2 * BLOCK_HALF)
        pair_mask = head_mask & (columns < 2 * HALF)[None, None, :]
        x_rotated = tl.load(x_row + columns.to(tl.int64)[None, None, :] * stride_d, mask=pair_mask, other=0.0)
        x1, x2 = tl.split(tl.reshape(x_rotated.to(COMPUTE), (BLOCK_S, BLOCK_H, BLOCK_HALF, 2)))
    else:
        first, second = _pair_columns(offs_d, HALF, INTERLEAVED)
        x1 = tl.load(x_row + first[None, None, :] * stride_d, mask=mask, other=0.0).to(COMPUTE)
        x2 = tl.load(x_row + second[None, None, :] * stride_d, mask=mask, other=0.0).to(COMPUTE)
    if PASS > 0 and not INPLACE:
        offs_p = tl.arange(0, BLOCK_PASS)
        pass_mask = head_mask & (offs_p < PASS)[None, None, :]
        tail = (2 * HALF + offs_p).to(tl.int64)[None, None, :]
        x_tail = tl.load(x_row + tail * stride_d, mask=pass_mask, other=0.0)
    o1 = x1 * c1[:, None, :] - x2 * s1[:, None, :]
    o2 = x2 * c2[:, None, :] + x1 * s2[:, None, :]
    if INTERLEAVED:
        o_rotated = tl.reshape(tl.join(o1, o2), (BLOCK_S, BLOCK_H, 2 * BLOCK_HALF))
        tl.store(o_row + columns.to(tl.int64)[None, None, :] * stride_od, o_rotated.to(X_OUT.dtype.element_ty),
                 mask=pair_mask)
    else:
        tl.store(o_row + first[None, None, :] * stride_od, o1.to(X_OUT.dtype.element_ty), mask=mask)
        tl.store(o_row + second[None, None, :] * stride_od, o2.to(X_OUT.dtype.element_ty), mask=mask)
    if PASS > 0 and not INPLACE:
        tl.store(o_row + tail * stride_od, x_tail.to(X_OUT.dtype.element_ty), mask=pass_mask)


@triton.jit
def _rotate_tile(X, X_OUT, COS, SIN, FREQUENCIES, POSITIONS, CU_SEQLENS, b, seq_block, head_block,
                 seq_len, n_heads, position_offset, table_rows,
                 stride_b, stride_s, stride_h, stride_d, stride_ob, stride_os, stride_oh, stride_od,
                 stride_cb, stride_cs, stride_cd, stride_sb, stride_ss, stride_sd, stride_pb, stride_ps,
                 HALF: tl.constexpr, PASS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
                 FROM_TABLE: tl.constexpr, POSITION_IDS: tl.constexpr, BATCH_OFFSETS: tl.constexpr,
                 VARLEN: tl.constexpr, INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr,
                 INPLACE: tl.constexpr, COMPUTE: tl.constexpr):
    """Rotate tokens seq_block * BLOCK_S .. + BLOCK_S and heads head_block * BLOCK_H .. +
    BLOCK_H of batch b of X (q or k), with one cos/sin per token shared by the tile's heads."""
    offs_s = seq_block * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    if VARLEN:
        start = tl.load(CU_SEQLENS + b).to(tl.int64)
        s_mask = offs_s < tl.load(CU_SEQLENS + b + 1).to(tl.int64) - start
        rows = start + offs_s.to(tl.int64)
    else:
        s_mask = offs_s < seq_len
        rows = offs_s.to(tl.int64)

    if POSITION_IDS:
        positions = tl.load(POSITIONS + b * stride_pb + rows * stride_ps, mask=s_mask, other=0).to(tl.int64)
    else:
        # In int64 before the add: an int32 offset near 2**31 would wrap.
        positions = offs_s.to(tl.int64) + position_offset
        if BATCH_OFFSETS:
            positions += tl.load(POSITIONS + b * stride_pb).to(tl.int64)

    if FROM_TABLE:
        # A position outside the table reads nothing and yields NaN, never a neighbour's row.
        row_ok = s_mask & (positions >= 0) & (positions < table_rows)
        mask = row_ok[:, None] & d_mask[None, :]
        first, second = _pair_columns(offs_d, HALF, INTERLEAVED)
        cos_ptr = COS + b * stride_cb + (positions * stride_cs)[:, None]
        sin_ptr = SIN + b * stride_sb + (positions * stride_ss)[:, None]
        c1 = tl.load(cos_ptr + first[None, :] * stride_cd, mask=mask, other=float("nan")).to(COMPUTE)
        c2 = tl.load(cos_ptr + second[None, :] * stride_cd, mask=mask, other=float("nan")).to(COMPUTE)
        s1 = tl.load(sin_ptr + first[None, :] * stride_sd, mask=mask, other=float("nan")).to(COMPUTE)
        s2 = tl.load(sin_ptr + second[None, :] * stride_sd, mask=mask, other=float("nan")).to(COMPUTE)
    else:
        c1, s1 = _cos_sin_from_frequencies(FREQUENCIES, positions, offs_d, d_mask, HALF, COMPUTE)
        c2 = c1
        s2 = s1
    if CONJUGATE:
        s1, s2 = -s2, -s1
    _rotate_heads(X, X_OUT, b * stride_b, b * stride_ob, rows, s_mask, head_block * BLOCK_H, n_heads,
                  stride_s, stride_h, stride_d, stride_os, stride_oh, stride_od,
                  c1, c2, s1, s2, offs_d, d_mask,
                  HALF, PASS, BLOCK_S, BLOCK_H, BLOCK_HALF, BLOCK_PASS, INTERLEAVED, INPLACE, COMPUTE)


@kernel
def _rope_apply_kernel(
    Q, K, COS, SIN, FREQUENCIES, POSITIONS, CU_SEQLENS,
    seq_len, n_heads_q, n_heads_k, n_q_seq_blocks, n_k_seq_blocks, n_q_tiles, n_tiles,
    position_offset, table_rows,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_qob, stride_qos, stride_qoh, stride_qod,
    stride_kob, stride_kos, stride_koh, stride_kod,
    stride_cb, stride_cs, stride_cd,
    stride_sb, stride_ss, stride_sd,
    stride_pb, stride_ps,
    Q_OUT, K_OUT,
    HALF: tl.constexpr, PASS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_S_K: tl.constexpr, BLOCK_H_K: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
    FROM_TABLE: tl.constexpr, POSITION_IDS: tl.constexpr, BATCH_OFFSETS: tl.constexpr,
    VARLEN: tl.constexpr, INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr,
    INPLACE: tl.constexpr, COMPUTE: tl.constexpr, ALIGNED: tl.constexpr,
):
    """Rotate q and k, logical layout (batch, seq, heads, head_dim), in one launch.

    Grid: (batch * n_tiles,). Each batch has n_q_tiles tiles of q, BLOCK_S tokens x BLOCK_H
    heads (token blocks first), then tiles of k, BLOCK_S_K tokens x BLOCK_H_K heads (reading
    tables, the programs take k's spread among q's): k's tiles have their own shape, so that
    a k of few heads (GQA) takes as many elements per program as q. Position of token s of
    batch b: POSITIONS[b, s] (POSITION_IDS), else position_offset + s, plus POSITIONS[b]
    (BATCH_OFFSETS). With VARLEN, "batch" b is sequence b of packed tokens: its tokens are
    rows CU_SEQLENS[b] .. CU_SEQLENS[b + 1] - 1 and seq_len is the longest.
    """
    if ALIGNED:  # batch, token and head strides are multiples of 16 (kernels/hints.py)
        stride_qb, stride_qs, stride_qh = multiple_of_16(stride_qb), multiple_of_16(stride_qs), multiple_of_16(stride_qh)
        stride_kb, stride_ks, stride_kh = multiple_of_16(stride_kb), multiple_of_16(stride_ks), multiple_of_16(stride_kh)
        stride_qob, stride_qos, stride_qoh = (multiple_of_16(stride_qob), multiple_of_16(stride_qos),
                                              multiple_of_16(stride_qoh))
        stride_kob, stride_kos, stride_koh = (multiple_of_16(stride_kob), multiple_of_16(stride_kos),
                                              multiple_of_16(stride_koh))
        stride_cb, stride_cs = multiple_of_16(stride_cb), multiple_of_16(stride_cs)
        stride_sb, stride_ss = multiple_of_16(stride_sb), multiple_of_16(stride_ss)
    pid = tl.program_id(0)
    b = (pid // n_tiles).to(tl.int64)
    tile = pid % n_tiles
    if FROM_TABLE:
        # k's tiles run spread evenly among q's, not after them all: program `tile` is k's when
        # the count of k's tiles before it, floor(tile * n_k_tiles / n_tiles), steps up, so that
        # the tiles of a small k (GQA) do not all run in the last wave.
        n_k_tiles = n_tiles - n_q_tiles
        k_before = (tile.to(tl.int64) * n_k_tiles) // n_tiles
        is_k = ((tile + 1).to(tl.int64) * n_k_tiles) // n_tiles > k_before
        tile = tl.where(is_k, n_q_tiles + k_before, tile - k_before).to(tl.int32)
    if tile < n_q_tiles:
        _rotate_tile(Q, Q_OUT, COS, SIN, FREQUENCIES, POSITIONS, CU_SEQLENS, b,
                     tile % n_q_seq_blocks, tile // n_q_seq_blocks, seq_len, n_heads_q, position_offset,
                     table_rows, stride_qb, stride_qs, stride_qh, stride_qd,
                     stride_qob, stride_qos, stride_qoh, stride_qod,
                     stride_cb, stride_cs, stride_cd, stride_sb, stride_ss, stride_sd, stride_pb, stride_ps,
                     HALF, PASS, BLOCK_S, BLOCK_H, BLOCK_HALF, BLOCK_PASS, FROM_TABLE, POSITION_IDS,
                     BATCH_OFFSETS, VARLEN, INTERLEAVED, CONJUGATE, INPLACE, COMPUTE)
    else:
        tile -= n_q_tiles
        _rotate_tile(K, K_OUT, COS, SIN, FREQUENCIES, POSITIONS, CU_SEQLENS, b,
                     tile % n_k_seq_blocks, tile // n_k_seq_blocks, seq_len, n_heads_k, position_offset,
                     table_rows, stride_kb, stride_ks, stride_kh, stride_kd,
                     stride_kob, stride_kos, stride_koh, stride_kod,
                     stride_cb, stride_cs, stride_cd, stride_sb, stride_ss, stride_sd, stride_pb, stride_ps,
                     HALF, PASS, BLOCK_S_K, BLOCK_H_K, BLOCK_HALF, BLOCK_PASS, FROM_TABLE, POSITION_IDS,
                     BATCH_OFFSETS, VARLEN, INTERLEAVED, CONJUGATE, INPLACE, COMPUTE)


@kernel
def _rope_table_kernel(
    FREQUENCIES, n_rows, position_offset, COS, SIN,
    HALF: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_HALF: tl.constexpr,
    INTERLEAVED: tl.constexpr, COMPUTE: tl.constexpr,
):
    """Write cos and sin tables (n_rows, 2*HALF) for positions offset .. offset+n_rows-1,
    each frequency in both columns of its pair (see _pair_columns)."""
    offs_s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    positions = offs_s.to(tl.int64) + position_offset  # int64 first, as in _rotate_tile
    cos, sin = _cos_sin_from_frequencies(FREQUENCIES, positions, offs_d, d_mask, HALF, COMPUTE)
    mask = (offs_s < n_rows)[:, None] & d_mask[None, :]
    row = offs_s.to(tl.int64)[:, None] * (2 * HALF)
    first, second = _pair_columns(offs_d, HALF, INTERLEAVED)
    cos = cos.to(COS.dtype.element_ty)
    sin = sin.to(SIN.dtype.element_ty)
    tl.store(COS + row + first[None, :], cos, mask=mask)
    tl.store(COS + row + second[None, :], cos, mask=mask)
    tl.store(SIN + row + first[None, :], sin, mask=mask)
    tl.store(SIN + row + second[None, :], sin, mask=mask)


LAYOUTS = ("bshd", "bhsd", "thd")


def _bshd(values: tuple[int, ...], layout: str, batch_value: int) -> tuple[int, ...]:
    """Shape or strides in the kernel's logical order (batch, seq, heads, head_dim): "bhsd"
    swaps the middle dims; "thd" (packed tokens, heads, head_dim) gets `batch_value` first."""
    if layout == "bhsd":
        return values[0], values[2], values[1], values[3]
    if layout == "thd":
        return (batch_value, *values)
    return tuple(values)


def _batch_stride(offsets: Operand) -> int:
    """Stride of per-sequence offsets (batch,): 0 for one offset shared by every sequence."""
    return 0 if offsets.shape[0] == 1 else offsets.strides[0]


def _tile(n_heads: int, row_pairs: int, head_tile_elements: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_H) of a tensor's tiles, rows of `row_pairs` pairs: heads up to
    head_tile_elements pairs, then tokens up to _TILE_ELEMENTS, both powers of two."""
    block_h = min(next_power_of_2(n_heads), largest_power_of_2(max(1, head_tile_elements // row_pairs)))
    return largest_power_of_2(max(1, _TILE_ELEMENTS // (block_h * row_pairs))), block_h


# Builders are pure functions of hashable shapes and options, called on every launch: caching
# them takes the tile arithmetic off the per-call host time.
@functools.lru_cache(maxsize=4096)
def rope_apply_call(
    q: Operand,
    k: Operand,
    *,
    layout: str = "bshd",
    rotary_dim: int | None = None,
    interleaved: bool = False,
    cos: Operand | None = None,
    sin: Operand | None = None,
    positions: Operand | None = None,
    batch_offsets: Operand | None = None,
    cu_seqlens: Operand | None = None,
    max_seqlen: int = 0,
    position_offset: int = 0,
    conjugate: bool = False,
    inplace: bool = False,
) -> KernelCall:
    """Rotate q and k (in `layout`: "bshd", "bhsd" or "thd") in one launch.

    Inputs, by name: "q", "k", "cos", "sin", "frequencies", "positions", "cu_seqlens".
    The first `rotary_dim` columns of each head rotate (default: all; with cos/sin, their
    width), in pairs (i, i + rotary_dim/2), or (2i, 2i + 1) if `interleaved`; the rest pass
    through. Positions: `positions` (batch or 1, seq) ids, else position_offset + s, plus a
    per-sequence `batch_offsets` (batch,). With `cos`/`sin` (each (rows, rotary_dim) or
    (batch, rows, rotary_dim)) the rotation reads row = position; without, it computes cos/sin
    from "frequencies" (3, rotary_dim/2) float32. "thd" packs sequences: q (tokens, heads,
    head_dim), `cu_seqlens` (n_seqs + 1,) their boundaries, `max_seqlen` the longest, and
    positions (tokens,) if given. k may have fewer heads than q (GQA/MQA) or none at all.
    Outputs: q_out, k_out in the callers' layout, row-major, or q and k when `inplace`.
    """
    varlen = layout == "thd"
    n_seqs = cu_seqlens.shape[0] - 1 if varlen else 0
    batch, seq_len, n_heads_q, head_dim = _bshd(q.shape, layout, n_seqs)
    if varlen:
        seq_len = max_seqlen
    n_heads_k = _bshd(k.shape, layout, n_seqs)[2]
    if cos is not None:
        rotary_dim = cos.shape[-1]
    half = (rotary_dim or head_dim) // 2
    passed = head_dim - 2 * half
    # A tile holds whole rows: the rotated pairs and, unless in place, the columns that pass
    # through (a block of BLOCK_PASS, two to a pair in the tile's size): faster than copying
    # them in other programs or after the rotated stores. Sized by the rotated pairs alone, the
    # pass-through block could be 8x the rotated one, too many registers and shared memory.
    block_half = next_power_of_2(half)
    block_pass = next_power_of_2(passed) if passed and not inplace else 0
    row_pairs = block_half + block_pass // 2
    from_table = cos is not None
    head_tile_elements = (_BHSD_COMPUTED_HEAD_TILE_ELEMENTS if layout == "bhsd" and not from_table
                          else _HEAD_TILE_ELEMENTS)
    block_s, block_h = _tile(n_heads_q, row_pairs, head_tile_elements)
    block_s_k, block_h_k = _tile(n_heads_k, row_pairs, head_tile_elements)
    n_q_seq_blocks, n_k_seq_blocks = cdiv(seq_len, block_s), cdiv(seq_len, block_s_k)
    n_q_tiles = n_q_seq_blocks * cdiv(n_heads_q, block_h)
    n_tiles = n_q_tiles + n_k_seq_blocks * cdiv(n_heads_k, block_h_k)

    if inplace:
        outputs = (Output(q.shape, q.dtype, alias="q"), Output(k.shape, k.dtype, alias="k"))
        q_out_strides, k_out_strides = q.strides, k.strides
    else:
        outputs = (Output(q.shape, q.dtype), Output(k.shape, k.dtype))
        q_out_strides, k_out_strides = row_major_strides(q.shape), row_major_strides(k.shape)
    # Packed tokens are addressed by row alone: their "batch" stride is 0.
    tensor_strides = [_bshd(strides, layout, 0) for strides in (q.strides, k.strides, q_out_strides, k_out_strides)]
    table_strides = [batched_strides(table, 3) for table in (cos, sin)]
    scalars = (
        seq_len, n_heads_q, n_heads_k, n_q_seq_blocks, n_k_seq_blocks, n_q_tiles, n_tiles,
        position_offset, cos.shape[-2] if from_table else 0,
        *(stride for strides in tensor_strides + table_strides for stride in strides),
        *(batched_strides(positions, 2) if batch_offsets is None else (_batch_stride(batch_offsets), 0)),
    )
    aligned = strides_aligned(*(stride for strides in tensor_strides for stride in strides[:3]),
                              *(stride for strides in table_strides for stride in strides[:2]))
    return KernelCall(
        kernel=_rope_apply_kernel,
        grid=(batch * n_tiles,),
        inputs=("q", "k", "cos", "sin", "frequencies", "positions", "cu_seqlens"),
        scalars=scalars,
        outputs=outputs,
        constexprs=dict(
            HALF=half, PASS=passed, BLOCK_S=block_s, BLOCK_H=block_h, BLOCK_S_K=block_s_k,
            BLOCK_H_K=block_h_k, BLOCK_HALF=block_half,
            BLOCK_PASS=max(block_pass, 1), FROM_TABLE=from_table,
            POSITION_IDS=positions is not None, BATCH_OFFSETS=batch_offsets is not None,
            VARLEN=varlen, INTERLEAVED=interleaved, CONJUGATE=conjugate, INPLACE=inplace,
            COMPUTE=compute_dtype(q.dtype), ALIGNED=aligned,
        ),
        num_warps=8 if from_table and block_s * block_h * block_half >= _TABLE_WARPS_FROM_PAIRS else 4,
    )


@functools.lru_cache(maxsize=1024)
def rope_table_call(n_rows: int, dim: int, dtype: str, *, position_offset: int = 0,
                    interleaved: bool = False) -> KernelCall:
    """Write cos and sin tables, each (n_rows, dim) of `dtype`, for positions
    position_offset .. position_offset + n_rows - 1, in half-split or `interleaved` column
    order. Input: "frequencies" (3, dim/2) float32."""
    half = dim // 2
    block_half = next_power_of_2(half)
    block_s = max(1, _TABLE_TILE_PAIRS // block_half)
    return KernelCall(
        kernel=_rope_table_kernel,
        grid=(cdiv(n_rows, block_s),),
        inputs=("frequencies",),
        scalars=(n_rows, position_offset),
        outputs=(Output((n_rows, dim), dtype), Output((n_rows, dim), dtype)),
        constexprs=dict(HALF=half, BLOCK_S=block_s, BLOCK_HALF=block_half, INTERLEAVED=interleaved,
                        COMPUTE=compute_dtype(dtype)),
        num_warps=4,
    )
