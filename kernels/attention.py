"""Attention with ALiBi (FlashAttention-2 style) kernels and their call builders.

Query row i sits at key position p_i = q_offset + i (default q_offset = seqlen_k - seqlen_q,
bottom-right, per sequence when packed); key j at j. With m the head's slope:

    s_ij = scale * q_i . k_j + bias_ij,   bias: none 0;  symmetric -m |p_i - j|;
                                                 causal    -m (p_i - j), keys j > p_i masked
    O_i = sum_j softmax_j(s_i) v_j,  LSE_i = log sum_j exp(s_ij)

Causal masking (causal=True) also applies without ALiBi or with the symmetric form. A row with
no visible key gets O = 0 and LSE = -inf, and zero gradients.

The forward keeps an online softmax over key tiles in float32 registers, in base 2 (log2(e)
folded into the scale and the slope): no score matrix is ever stored. The backward recomputes
each tile's probabilities from the LSE: a preprocess kernel forms delta_i = sum_d dO_id O_id and
the LSE in base 2, one kernel accumulates dk and dv for a key tile over all query tiles (and all
query heads of a KV head), another dq for a query tile over all key tiles. No atomics: results
are deterministic.

Layouts: "bshd", "bhsd" (any strides, head_dim contiguous or not) and "thd" (packed tokens
with int32 cu_seqlens). k and v may have fewer heads than q (GQA, MQA).
"""

import functools
import math
from typing import NamedTuple

import triton
import triton.language as tl

from .alibi import LOG2_E, _finite, _inverse_sum
from .call import KernelCall, Operand, Output, cdiv, compute_dtype, next_power_of_2, row_major_strides
from .hints import kernel, multiple_of_16, strides_aligned
from .rope import LAYOUTS, _bshd
from .triton_compat import dot, rowwise_max, rowwise_sum

ALIBI_FORMS = ("none", "symmetric", "causal")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
MAX_HEAD_DIM = 128
LN_2 = tl.constexpr(0.6931471805599453)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per padded head_dim and kernel: the forward and dq
# own BLOCK_M queries and loop over key tiles, dk/dv own BLOCK_N keys and loop over query tiles;
# "decode" is the forward of at most DECODE_QUERIES queries (tensor-core tiles are 16 rows).
# For sm_90 (H100, H200): head_dim 64 and 128 from benchmarks/sweep_attention_tiles.py on an
# H100 (benchmarks/NOTES.md); 16 and 32 and the decode tiles are starting points, not swept.
TILES = {
    16: dict(fwd=(64, 64, 4, 3), dkdv=(64, 64, 4, 2), dq=(64, 64, 4, 2), decode=(16, 64, 4, 3)),
    32: dict(fwd=(64, 64, 4, 3), dkdv=(32, 128, 4, 3), dq=(64, 64, 4, 2), decode=(16, 64, 4, 3)),
    64: dict(fwd=(64, 64, 4, 3), dkdv=(32, 128, 4, 3), dq=(64, 64, 4, 2), decode=(16, 128, 4, 3)),
    128: dict(fwd=(128, 128, 8, 3), dkdv=(64, 64, 4, 2), dq=(128, 64, 8, 3), decode=(16, 128, 4, 3)),
}
DECODE_QUERIES = 16
# A forward of fewer programs than this splits its keys over more (flash-decoding): two per
# streaming multiprocessor of an H100 or H200 (132). Each split keeps MIN_SPLIT_TILES key tiles.
FILL_PROGRAMS = 264
MIN_SPLIT_TILES = 4


@triton.jit
def _aligned(stride_b, stride_s, stride_h):
    """Batch, row and head strides, multiples of 16 (the builder's ALIGNED), in a form the
    compiler sees so: rows then load as 16-byte vectors (kernels/hints.py)."""
    return multiple_of_16(stride_b), multiple_of_16(stride_s), multiple_of_16(stride_h)


@triton.jit
def _query_tile_start(CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """The first query of this program's tile. Causal tiles run last query tile first: the
    longest loops start first and the grid's last wave holds short ones."""
    if CAUSAL:
        return (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    return tl.program_id(0) * BLOCK_M


@triton.jit
def _sequence(CU_SEQLENS, b, seqlen, VARLEN: tl.constexpr):
    """(first row, length) of sequence b: packed sequences start at CU_SEQLENS[b]."""
    start = 0
    if VARLEN:  # one return: Triton 3.6 types a function by all its returns, even past a constexpr
        first = tl.load(CU_SEQLENS + b)
        start, seqlen = first.to(tl.int64), tl.load(CU_SEQLENS + b + 1) - first
    return start, seqlen


@triton.jit
def _sequence_pair(CU_SEQLENS_Q, CU_SEQLENS_K, b, seqlen_q, seqlen_k, q_offset, VARLEN: tl.constexpr,
                   BOTTOM_RIGHT: tl.constexpr):
    """(first query row, first key row, seqlen_q, seqlen_k, key position of query 0) of
    sequence b."""
    q_start, seqlen_q = _sequence(CU_SEQLENS_Q, b, seqlen_q, VARLEN)
    k_start, seqlen_k = _sequence(CU_SEQLENS_K, b, seqlen_k, VARLEN)
    if BOTTOM_RIGHT:
        q_offset += seqlen_k - seqlen_q
    return q_start, k_start, seqlen_q, seqlen_k, q_offset


@triton.jit
def _slope(SLOPES, b, h, stride_mb, stride_mh, ALIBI: tl.constexpr, COMPUTE: tl.constexpr):
    """Head h's slope times log2(e) (scores are kept in base 2); 0 without ALiBi."""
    if ALIBI == "none":
        return 0.0
    return tl.load(SLOPES + b * stride_mb + h * stride_mh).to(COMPUTE) * LOG2_E


@triton.jit
def _load_rows(base, offs, n_rows, offs_d, stride_s, stride_d, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, MASKED: tl.constexpr):
    """Rows `offs` (BLOCK, BLOCK_D) of one head; padded columns and, when MASKED, rows past
    n_rows are 0."""
    ptrs = base + offs.to(tl.int64)[:, None] * stride_s + offs_d[None, :] * stride_d
    if MASKED:
        return tl.load(ptrs, mask=(offs < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    if HEAD_DIM != BLOCK_D:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _store_rows(base, value, offs, n_rows, offs_d, stride_s, stride_d, HEAD_DIM: tl.constexpr):
    ptrs = base + offs.to(tl.int64)[:, None] * stride_s + offs_d[None, :] * stride_d
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=(offs < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _biased(product, bias, key_pos, query_pos, seqlen_k, SCALE: tl.constexpr, ALIBI: tl.constexpr,
            CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    """Scores in base 2 from q.k products: scale * product plus the ALiBi bias, given as
    `bias` = m (j - p_i) (m already times log2(e): symmetric subtracts its magnitude), -inf
    where masked (MASKED: keys at key_pos past seqlen_k, or after the query at query_pos when
    CAUSAL). bias, key_pos and query_pos broadcast against product."""
    s = product * (SCALE * LOG2_E)
    if ALIBI == "symmetric":  # slopes are positive: m |j - p_i| = |m (j - p_i)|
        s -= tl.abs(bias)
    elif ALIBI == "causal":
        s += bias
    if MASKED:
        visible = key_pos < seqlen_k
        if CAUSAL:
            visible = visible & (key_pos <= query_pos)
        s = tl.where(visible, s, float("-inf"))
    return s


@triton.jit
def _scores(q, k, slope, n0, query_pos, seqlen_k, SCALE: tl.constexpr, ALIBI: tl.constexpr,
            CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
            COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) scores, base 2, of queries at query_pos (BLOCK_M,) and keys n0 ..
    n0 + BLOCK_N."""
    ramp = tl.arange(0, BLOCK_N)
    # m (j - p_i) as a per-row term plus a per-column ramp: one add per score.
    bias = (slope * (n0 - query_pos).to(COMPUTE))[:, None] + (slope * ramp.to(COMPUTE))[None, :]
    return _biased(dot(q, tl.trans(k), PRECISION, COMPUTE), bias, (n0 + ramp)[None, :], query_pos[:, None],
                   seqlen_k, SCALE, ALIBI, CAUSAL, MASKED)


@triton.jit
def _scores_transposed(k, q_t, slope, n0, query_pos, seqlen_k, SCALE: tl.constexpr, ALIBI: tl.constexpr,
                       CAUSAL: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                       COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """The scores of `_scores` as (BLOCK_N, BLOCK_M), from q_t (BLOCK_D, BLOCK_M): the dk/dv
    kernel then feeds them to its products without transposing registers."""
    ramp = tl.arange(0, BLOCK_N)
    bias = (slope * ramp.to(COMPUTE))[:, None] + (slope * (n0 - query_pos).to(COMPUTE))[None, :]
    return _biased(dot(k, q_t, PRECISION, COMPUTE), bias, (n0 + ramp)[:, None], query_pos[None, :], seqlen_k,
                   SCALE, ALIBI, CAUSAL, MASKED)


@triton.jit
def _key_tile(q, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d, stride_ks, stride_kd, stride_vs, stride_vd,
              SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """(k, v, scores) of the key tile n0 .. n0 + BLOCK_N for a query tile q: what the forward and
    dq kernels read and compute first for each key tile."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, seqlen_k, offs_d, stride_ks, stride_kd, HEAD_DIM, BLOCK_D, MASKED)
    v = _load_rows(v_base, offs_n, seqlen_k, offs_d, stride_vs, stride_vd, HEAD_DIM, BLOCK_D, MASKED)
    return k, v, _scores(q, k, slope, n0, query_pos, seqlen_k, SCALE, ALIBI, CAUSAL, MASKED, BLOCK_N, COMPUTE,
                         PRECISION)


@triton.jit
def _fwd_tile(acc, row_max, row_sum, q, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d,
              stride_ks, stride_kd, stride_vs, stride_vd,
              SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile of the online softmax: the running (acc, row max, row sum), updated."""
    k, v, s = _key_tile(q, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d, stride_ks, stride_kd, stride_vs,
                        stride_vd, SCALE, ALIBI, CAUSAL, MASKED, HEAD_DIM, BLOCK_N, BLOCK_D, COMPUTE, PRECISION)
    new_max = tl.maximum(row_max, rowwise_max(s))
    shift = _finite(new_max)  # a row with no visible key yet: exp2(-inf - 0) = 0, never NaN
    p = tl.exp2(s - shift[:, None])
    rescale = tl.exp2(row_max - shift)
    row_sum = row_sum * rescale + rowwise_sum(p)
    acc = acc * rescale[:, None] + dot(p.to(v.dtype), v, PRECISION, COMPUTE)
    return acc, new_max, row_sum


@triton.jit
def _query_tile_key_range(first_pos, seqlen_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """(full_end, end) of the keys that queries first_pos .. first_pos + BLOCK_M - 1 see: key
    tiles before full_end need no mask; those from it up to end are masked; later ones are
    hidden from every row and skipped."""
    if CAUSAL:
        end = tl.minimum(tl.maximum(first_pos + BLOCK_M, 0), seqlen_k)
        full_end = tl.minimum(tl.maximum(first_pos + 1, 0), seqlen_k) // BLOCK_N * BLOCK_N
    else:
        end = seqlen_k
        full_end = seqlen_k // BLOCK_N * BLOCK_N
    return full_end, end


@kernel
def _attention_fwd_kernel(
    Q, K, V, SLOPES, CU_SEQLENS_Q, CU_SEQLENS_K,
    n_heads, n_heads_per_kv, seqlen_q, seqlen_k, q_offset, keys_per_split,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_mb, stride_mh,
    stride_ob, stride_os, stride_oh, stride_od, stride_o_split,
    stride_lb, stride_lh, stride_l_split,
    O, LSE,
    SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
):
    """O (like q) and LSE (float32, (batch, heads, seqlen_q) or packed (heads, tokens)) of
    BLOCK_M queries of one (sequence, head), looping over the key tiles they see among keys
    split * keys_per_split .. (split + 1) * keys_per_split (a multiple of BLOCK_N); split i
    writes at O + i * stride_o_split and LSE + i * stride_l_split, for the combine kernel.

    Grid: (cdiv(seqlen_q, BLOCK_M), batch * n_heads, splits); packed, seqlen_q is the longest
    sequence's.
    """
    if ALIGNED:
        stride_qb, stride_qs, stride_qh = _aligned(stride_qb, stride_qs, stride_qh)
        stride_kb, stride_ks, stride_kh = _aligned(stride_kb, stride_ks, stride_kh)
        stride_vb, stride_vs, stride_vh = _aligned(stride_vb, stride_vs, stride_vh)
        stride_ob, stride_os, stride_oh = _aligned(stride_ob, stride_os, stride_oh)
    m0 = _query_tile_start(CAUSAL, BLOCK_M)
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    q_start, k_start, seqlen_q, seqlen_k, q_offset = _sequence_pair(
        CU_SEQLENS_Q, CU_SEQLENS_K, b, seqlen_q, seqlen_k, q_offset, VARLEN, BOTTOM_RIGHT)
    if m0 >= seqlen_q:  # a packed sequence shorter than the longest
        return
    b = b.to(tl.int64)
    h = h.to(tl.int64)
    kv_head = h // n_heads_per_kv
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    query_pos = q_offset + offs_m
    q_base = Q + b * stride_qb + h * stride_qh + q_start * stride_qs
    k_base = K + b * stride_kb + kv_head * stride_kh + k_start * stride_ks
    v_base = V + b * stride_vb + kv_head * stride_vh + k_start * stride_vs
    slope = _slope(SLOPES, b, h, stride_mb, stride_mh, ALIBI, COMPUTE)

    q = _load_rows(q_base, offs_m, seqlen_q, offs_d, stride_qs, stride_qd, HEAD_DIM, BLOCK_D, True)
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, COMPUTE)
    row_max = tl.full((BLOCK_M,), float("-inf"), COMPUTE)
    row_sum = tl.full((BLOCK_M,), 0.0, COMPUTE)
    full_end, end = _query_tile_key_range(q_offset + m0, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    keys_start = tl.program_id(2) * keys_per_split
    keys_stop = keys_start + keys_per_split
    for n0 in range(keys_start, tl.minimum(full_end, keys_stop), BLOCK_N):
        acc, row_max, row_sum = _fwd_tile(acc, row_max, row_sum, q, k_base, v_base, slope, n0, query_pos,
                                          seqlen_k, offs_d, stride_ks, stride_kd, stride_vs, stride_vd,
                                          SCALE, ALIBI, CAUSAL, False, HEAD_DIM, BLOCK_N, BLOCK_D,
                                          COMPUTE, PRECISION)
    for n0 in range(tl.maximum(full_end, keys_start), tl.minimum(end, keys_stop), BLOCK_N):
        acc, row_max, row_sum = _fwd_tile(acc, row_max, row_sum, q, k_base, v_base, slope, n0, query_pos,
                                          seqlen_k, offs_d, stride_ks, stride_kd, stride_vs, stride_vd,
                                          SCALE, ALIBI, CAUSAL, True, HEAD_DIM, BLOCK_N, BLOCK_D,
                                          COMPUTE, PRECISION)

    split = tl.program_id(2).to(tl.int64)
    o_base = O + split * stride_o_split + b * stride_ob + h * stride_oh + q_start * stride_os
    _store_rows(o_base, acc * _inverse_sum(row_sum)[:, None], offs_m, seqlen_q, offs_d, stride_os, stride_od,
                HEAD_DIM)
    # log(sum) in natural units; a row that saw no key has sum 0 and LSE -inf.
    lse = tl.where(row_sum == 0, float("-inf"), (row_max + tl.log2(tl.where(row_sum == 0, 1.0, row_sum))) * LN_2)
    tl.store(LSE + split * stride_l_split + b * stride_lb + h * stride_lh + q_start + offs_m, lse.to(tl.float32),
             mask=offs_m < seqlen_q)


@kernel
def _attention_combine_kernel(
    O_SPLITS, LSE_SPLITS,
    n_heads, seqlen_q, n_splits,
    stride_pb, stride_ps, stride_ph, stride_p_split,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_lb, stride_lh, stride_l_split,
    O, LSE,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """O and LSE of BLOCK_M queries of one (batch, head) from the forward's key splits: O_SPLITS
    (splits, like q, float32, row-major) and LSE_SPLITS (splits, batch, heads, seqlen_q)
    merged by their LSE. Grid: (cdiv(seqlen_q, BLOCK_M), batch * n_heads)."""
    m0 = tl.program_id(0) * BLOCK_M
    b = (tl.program_id(1) // n_heads).to(tl.int64)
    h = (tl.program_id(1) % n_heads).to(tl.int64)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_rows = offs_m < seqlen_q
    lse_rows = LSE_SPLITS + b * stride_lb + h * stride_lh + offs_m
    o_base = O_SPLITS + b * stride_pb + h * stride_ph
    acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
    lse_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    weight_sum = tl.full((BLOCK_M,), 0.0, tl.float32)
    for split in range(n_splits):
        lse = tl.load(lse_rows + split * stride_l_split, mask=in_rows, other=float("-inf"))
        o = _load_rows(o_base + split * stride_p_split, offs_m, seqlen_q, offs_d, stride_ps, 1, HEAD_DIM, BLOCK_D,
                       True)
        new_max = tl.maximum(lse_max, lse)
        shift = _finite(new_max)  # splits that saw no key weigh exp(-inf) = 0
        rescale = tl.exp(lse_max - shift)
        weight = tl.exp(lse - shift)
        acc = acc * rescale[:, None] + o * weight[:, None]
        weight_sum = weight_sum * rescale + weight
        lse_max = new_max
    _store_rows(O + b * stride_ob + h * stride_oh, acc * _inverse_sum(weight_sum)[:, None], offs_m, seqlen_q, offs_d,
                stride_os, stride_od, HEAD_DIM)
    lse = tl.where(weight_sum == 0, float("-inf"), lse_max + tl.log(tl.where(weight_sum == 0, 1.0, weight_sum)))
    tl.store(LSE + b * stride_lb + h * stride_lh + offs_m, lse, mask=in_rows)


@kernel
def _attention_bwd_preprocess_kernel(
    O, DO, LSE, CU_SEQLENS_Q,
    n_heads, seqlen_q,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_lb, stride_lh,
    DELTA, LSE_BASE2,
    VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """DELTA_i = sum_d dO_id O_id and LSE_BASE2_i, the LSE in base 2 (+inf for a row that sees
    no key, so that its P is 0), both float32 laid out like LSE, of BLOCK_M rows of one
    (sequence, head): the backward's loops read them as they are. Grid: (cdiv(seqlen_q,
    BLOCK_M), batch * n_heads)."""
    if ALIGNED:
        stride_ob, stride_os, stride_oh = _aligned(stride_ob, stride_os, stride_oh)
        stride_dob, stride_dos, stride_doh = _aligned(stride_dob, stride_dos, stride_doh)
    m0 = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    q_start, seqlen_q = _sequence(CU_SEQLENS_Q, b, seqlen_q, VARLEN)
    if m0 >= seqlen_q:
        return
    b = b.to(tl.int64)
    h = h.to(tl.int64)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(O + b * stride_ob + h * stride_oh + q_start * stride_os, offs_m, seqlen_q, offs_d,
                   stride_os, stride_od, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh + q_start * stride_dos, offs_m, seqlen_q, offs_d,
                    stride_dos, stride_dod, HEAD_DIM, BLOCK_D, True)
    delta = rowwise_sum(o.to(tl.float32) * do.to(tl.float32))
    rows = b * stride_lb + h * stride_lh + q_start + offs_m
    in_rows = offs_m < seqlen_q
    tl.store(DELTA + rows, delta, mask=in_rows)
    lse = tl.load(LSE + rows, mask=in_rows, other=0.0)
    tl.store(LSE_BASE2 + rows, tl.where(lse == float("-inf"), float("inf"), lse * LOG2_E), mask=in_rows)


@triton.jit
def _load_row_stats(LSE_BASE2, DELTA, row_base, offs_m, seqlen_q, COMPUTE: tl.constexpr, MASKED: tl.constexpr):
    """The preprocess's LSE in base 2 (rows past seqlen_q: +inf) and delta of rows offs_m;
    unless MASKED, every row is below seqlen_q."""
    if MASKED:
        in_rows = offs_m < seqlen_q
        lse = tl.load(LSE_BASE2 + row_base + offs_m, mask=in_rows, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=in_rows, other=0.0)
    else:
        lse = tl.load(LSE_BASE2 + row_base + offs_m)
        delta = tl.load(DELTA + row_base + offs_m)
    return lse.to(COMPUTE), delta.to(COMPUTE)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, do_base, LSE_BASE2, DELTA, row_base, slope, m0, n0, q_offset, seqlen_q,
               seqlen_k, offs_d, stride_qs, stride_qd, stride_dos, stride_dod,
               SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """dk (without the scale) and dv of one key tile, plus the query tile m0 .. m0 + BLOCK_M.
    Transposed throughout (keys as rows): P^T = exp2(S^T - LSE), dS^T = P^T (V dO^T - delta),
    dv += P^T dO, dk += dS^T Q, with q loaded as q^T."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q_t = tl.trans(_load_rows(q_base, offs_m, seqlen_q, offs_d, stride_qs, stride_qd, HEAD_DIM, BLOCK_D, MASKED))
    do = _load_rows(do_base, offs_m, seqlen_q, offs_d, stride_dos, stride_dod, HEAD_DIM, BLOCK_D, MASKED)
    lse, delta = _load_row_stats(LSE_BASE2, DELTA, row_base, offs_m, seqlen_q, COMPUTE, MASKED)
    s_t = _scores_transposed(k, q_t, slope, n0, q_offset + offs_m, seqlen_k, SCALE, ALIBI, CAUSAL, MASKED,
                             BLOCK_N, COMPUTE, PRECISION)
    p_t = tl.exp2(s_t - lse[None, :])
    dv += dot(p_t.to(do.dtype), do, PRECISION, COMPUTE)
    ds_t = p_t * (dot(v, tl.trans(do), PRECISION, COMPUTE) - delta[None, :])
    dk += dot(ds_t.to(q_t.dtype), tl.trans(q_t), PRECISION, COMPUTE)
    return dk, dv


@kernel
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE_BASE2, DELTA, SLOPES, CU_SEQLENS_Q, CU_SEQLENS_K,
    n_heads, n_heads_per_kv, seqlen_q, seqlen_k, q_offset,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_mb, stride_mh,
    stride_dkb, stride_dks, stride_dkh, stride_dkd,
    stride_dvb, stride_dvs, stride_dvh, stride_dvd,
    stride_lb, stride_lh,
    DK, DV,
    SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
):
    """dk and dv of BLOCK_N keys of one (sequence, KV head), summed over the query heads that
    share it and the query tiles that see the keys, in registers.

    Grid: (cdiv(seqlen_k, BLOCK_N), batch * n_heads // n_heads_per_kv). Per query head, query
    tiles before the first row that sees a key of the tile are skipped; those that see only
    part of it are masked, and so is the last, partial one.
    """
    if ALIGNED:
        stride_qb, stride_qs, stride_qh = _aligned(stride_qb, stride_qs, stride_qh)
        stride_kb, stride_ks, stride_kh = _aligned(stride_kb, stride_ks, stride_kh)
        stride_vb, stride_vs, stride_vh = _aligned(stride_vb, stride_vs, stride_vh)
        stride_dob, stride_dos, stride_doh = _aligned(stride_dob, stride_dos, stride_doh)
        stride_dkb, stride_dks, stride_dkh = _aligned(stride_dkb, stride_dks, stride_dkh)
        stride_dvb, stride_dvs, stride_dvh = _aligned(stride_dvb, stride_dvs, stride_dvh)
    n0 = tl.program_id(0) * BLOCK_N
    n_kv_heads = n_heads // n_heads_per_kv
    b = tl.program_id(1) // n_kv_heads
    kv_head = tl.program_id(1) % n_kv_heads
    q_start, k_start, seqlen_q, seqlen_k, q_offset = _sequence_pair(
        CU_SEQLENS_Q, CU_SEQLENS_K, b, seqlen_q, seqlen_k, q_offset, VARLEN, BOTTOM_RIGHT)
    if n0 >= seqlen_k:
        return
    b = b.to(tl.int64)
    kv_head = kv_head.to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * stride_kb + kv_head * stride_kh + k_start * stride_ks, offs_n, seqlen_k, offs_d,
                   stride_ks, stride_kd, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V + b * stride_vb + kv_head * stride_vh + k_start * stride_vs, offs_n, seqlen_k, offs_d,
                   stride_vs, stride_vd, HEAD_DIM, BLOCK_D, True)
    dk = tl.full((BLOCK_N, BLOCK_D), 0.0, COMPUTE)
    dv = tl.full((BLOCK_N, BLOCK_D), 0.0, COMPUTE)

    # Query tiles [start, full_start) and [full_end, end) are masked, [full_start, full_end) not.
    if CAUSAL:  # row i sees a key of the tile when p_i >= n0, all of it when p_i >= n0 + BLOCK_N - 1
        start = tl.minimum(tl.maximum(n0 - q_offset, 0), seqlen_q) // BLOCK_M * BLOCK_M
        full_start = (tl.maximum(n0 + BLOCK_N - 1 - q_offset, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    else:
        start = 0
        full_start = 0
    end = seqlen_q
    full_end = seqlen_q // BLOCK_M * BLOCK_M
    if n0 + BLOCK_N > seqlen_k:  # a partial key tile: every query tile masked
        full_end = 0
    full_start = tl.minimum(tl.maximum(full_start, start), end)
    full_end = tl.maximum(full_end, full_start)

    for head_in_group in range(n_heads_per_kv):
        h = kv_head * n_heads_per_kv + head_in_group
        q_base = Q + b * stride_qb + h * stride_qh + q_start * stride_qs
        do_base = DO + b * stride_dob + h * stride_doh + q_start * stride_dos
        row_base = b * stride_lb + h * stride_lh + q_start
        slope = _slope(SLOPES, b, h, stride_mb, stride_mh, ALIBI, COMPUTE)
        for m0 in range(start, full_start, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, LSE_BASE2, DELTA, row_base, slope, m0, n0, q_offset,
                                seqlen_q, seqlen_k, offs_d, stride_qs, stride_qd, stride_dos, stride_dod,
                                SCALE, ALIBI, CAUSAL, True, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, COMPUTE,
                                PRECISION)
        for m0 in range(full_start, full_end, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, LSE_BASE2, DELTA, row_base, slope, m0, n0, q_offset,
                                seqlen_q, seqlen_k, offs_d, stride_qs, stride_qd, stride_dos, stride_dod,
                                SCALE, ALIBI, CAUSAL, False, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, COMPUTE,
                                PRECISION)
        for m0 in range(full_end, end, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, LSE_BASE2, DELTA, row_base, slope, m0, n0, q_offset,
                                seqlen_q, seqlen_k, offs_d, stride_qs, stride_qd, stride_dos, stride_dod,
                                SCALE, ALIBI, CAUSAL, True, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, COMPUTE,
                                PRECISION)

    _store_rows(DK + b * stride_dkb + kv_head * stride_dkh + k_start * stride_dks, dk * SCALE, offs_n, seqlen_k,
                offs_d, stride_dks, stride_dkd, HEAD_DIM)
    _store_rows(DV + b * stride_dvb + kv_head * stride_dvh + k_start * stride_dvs, dv, offs_n, seqlen_k,
                offs_d, stride_dvs, stride_dvd, HEAD_DIM)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d,
             stride_ks, stride_kd, stride_vs, stride_vd,
             SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """dq (without the scale) of one query tile, plus the key tile n0 .. n0 + BLOCK_N."""
    k, v, s = _key_tile(q, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d, stride_ks, stride_kd, stride_vs,
                        stride_vd, SCALE, ALIBI, CAUSAL, MASKED, HEAD_DIM, BLOCK_N, BLOCK_D, COMPUTE, PRECISION)
    # P recomputed from the LSE (rows of no visible key have LSE +inf here, so P = 0);
    # dS = P (dO v^T - delta).
    ds = tl.exp2(s - lse[:, None]) * (dot(do, tl.trans(v), PRECISION, COMPUTE) - delta[:, None])
    return dq + dot(ds.to(k.dtype), k, PRECISION, COMPUTE)


@kernel
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE_BASE2, DELTA, SLOPES, CU_SEQLENS_Q, CU_SEQLENS_K,
    n_heads, n_heads_per_kv, seqlen_q, seqlen_k, q_offset,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_dob, stride_dos, stride_doh, stride_dod,
    stride_mb, stride_mh,
    stride_dqb, stride_dqs, stride_dqh, stride_dqd,
    stride_lb, stride_lh,
    DQ,
    SCALE: tl.constexpr, ALIBI: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
):
    """dq of BLOCK_M queries of one (sequence, head), over the key tiles they see (skipped and
    masked as in the forward). Grid: (cdiv(seqlen_q, BLOCK_M), batch * n_heads)."""
    if ALIGNED:
        stride_qb, stride_qs, stride_qh = _aligned(stride_qb, stride_qs, stride_qh)
        stride_kb, stride_ks, stride_kh = _aligned(stride_kb, stride_ks, stride_kh)
        stride_vb, stride_vs, stride_vh = _aligned(stride_vb, stride_vs, stride_vh)
        stride_dob, stride_dos, stride_doh = _aligned(stride_dob, stride_dos, stride_doh)
        stride_dqb, stride_dqs, stride_dqh = _aligned(stride_dqb, stride_dqs, stride_dqh)
    m0 = _query_tile_start(CAUSAL, BLOCK_M)
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    q_start, k_start, seqlen_q, seqlen_k, q_offset = _sequence_pair(
        CU_SEQLENS_Q, CU_SEQLENS_K, b, seqlen_q, seqlen_k, q_offset, VARLEN, BOTTOM_RIGHT)
    if m0 >= seqlen_q:
        return
    b = b.to(tl.int64)
    h = h.to(tl.int64)
    kv_head = h // n_heads_per_kv
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    query_pos = q_offset + offs_m
    k_base = K + b * stride_kb + kv_head * stride_kh + k_start * stride_ks
    v_base = V + b * stride_vb + kv_head * stride_vh + k_start * stride_vs
    slope = _slope(SLOPES, b, h, stride_mb, stride_mh, ALIBI, COMPUTE)
    q = _load_rows(Q + b * stride_qb + h * stride_qh + q_start * stride_qs, offs_m, seqlen_q, offs_d,
                   stride_qs, stride_qd, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + b * stride_dob + h * stride_doh + q_start * stride_dos, offs_m, seqlen_q, offs_d,
                    stride_dos, stride_dod, HEAD_DIM, BLOCK_D, True)
    lse, delta = _load_row_stats(LSE_BASE2, DELTA, b * stride_lb + h * stride_lh + q_start, offs_m, seqlen_q, COMPUTE,
                                 True)
    dq = tl.full((BLOCK_M, BLOCK_D), 0.0, COMPUTE)
    full_end, end = _query_tile_key_range(q_offset + m0, seqlen_k, CAUSAL, BLOCK_M, BLOCK_N)
    for n0 in range(0, full_end, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d,
                      stride_ks, stride_kd, stride_vs, stride_vd, SCALE, ALIBI, CAUSAL, False, HEAD_DIM,
                      BLOCK_N, BLOCK_D, COMPUTE, PRECISION)
    for n0 in range(full_end, end, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, slope, n0, query_pos, seqlen_k, offs_d,
                      stride_ks, stride_kd, stride_vs, stride_vd, SCALE, ALIBI, CAUSAL, True, HEAD_DIM,
                      BLOCK_N, BLOCK_D, COMPUTE, PRECISION)
    _store_rows(DQ + b * stride_dqb + h * stride_dqh + q_start * stride_dqs, dq * SCALE, offs_m, seqlen_q, offs_d,
                stride_dqs, stride_dqd, HEAD_DIM)


# --- Call builders ------------------------------------------------------------------------------

class _Geometry(NamedTuple):
    """What the builders derive from q, k, v and the options, checked."""

    batch: int              # sequences, when packed
    seqlen_q: int           # the longest, when packed
    seqlen_k: int
    n_heads: int
    n_heads_per_kv: int
    head_dim: int
    q_offset: int
    bottom_right: bool      # q_offset counts from seqlen_k - seqlen_q (packed: per sequence)
    lse_shape: tuple[int, ...]
    lse_strides: tuple[int, int]  # (batch, head); rows are contiguous
    slope_strides: tuple[int, int]
    constexprs: tuple       # sorted (name, value) pairs common to every kernel


_DIMS = {"bshd": "(batch, seq, heads, head_dim)", "bhsd": "(batch, heads, seq, head_dim)",
         "thd": "(tokens, heads, head_dim)"}


def _check_operand(name: str, array: Operand, layout: str) -> None:
    if not isinstance(array, Operand):
        raise TypeError(f"{name} must be an Operand, got {type(array).__name__}")
    if len(array.shape) != _DIMS[layout].count(",") + 1:
        raise ValueError(f"{name} must have the dims {_DIMS[layout]} of layout {layout!r}, got shape "
                         f"{tuple(array.shape)}")


def _check_cu_seqlens(name: str, cu_seqlens: Operand | None, n_seqs: int | None) -> int:
    """The number of sequences cu_seqlens (n_seqs + 1,) int32 bounds."""
    if cu_seqlens is None:
        raise ValueError(f'layout="thd" needs {name}')
    if cu_seqlens.dtype != "int32":
        raise TypeError(f"{name} must be int32, got {cu_seqlens.dtype}")
    if len(cu_seqlens.shape) != 1 or cu_seqlens.shape[0] < 2 or n_seqs not in (None, cu_seqlens.shape[0] - 1):
        raise ValueError(f"{name} must have shape (n_seqs + 1,) with n_seqs >= 1 sequences, as many as "
                         f"cu_seqlens_q, got shape {tuple(cu_seqlens.shape)}")
    return cu_seqlens.shape[0] - 1


@functools.lru_cache(maxsize=1024)
def _geometry(q: Operand, k: Operand, v: Operand, slopes: Operand | None, alibi: str, causal: bool | None,
              scale: float | None, q_offset: int | None, layout: str, cu_seqlens_q: Operand | None,
              cu_seqlens_k: Operand | None, max_seqlen_q: int | None, max_seqlen_k: int | None) -> _Geometry:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    varlen = layout == "thd"
    for name, array in (("q", q), ("k", k), ("v", v)):
        _check_operand(name, array, layout)
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"q must be one of {FLOAT_DTYPES}, got {q.dtype}")
    for name, array in (("k", k), ("v", v)):
        if array.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {array.dtype}")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if varlen:
        n_seqs = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, None)
        _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, n_seqs)
        for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'layout="thd" needs {name}, an int >= 0 (the longest sequence), got {value!r}')
        batch, _, n_heads, head_dim = _bshd(q.shape, layout, n_seqs)
        _, _, n_kv_heads, kv_head_dim = _bshd(k.shape, layout, n_seqs)
        seqlen_q, seqlen_k = max_seqlen_q, max_seqlen_k
    else:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ValueError(f'cu_seqlens_q and cu_seqlens_k are for layout="thd", not {layout!r}')
        batch, seqlen_q, n_heads, head_dim = _bshd(q.shape, layout, 0)
        kv_batch, seqlen_k, n_kv_heads, kv_head_dim = _bshd(k.shape, layout, 0)
        if kv_batch != batch:
            raise ValueError(f"k and v must have q's batch size {batch}, got {kv_batch}")
    if kv_head_dim != head_dim:
        raise ValueError(f"k and v must have q's head_dim {head_dim}, got {kv_head_dim}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be 1 .. {MAX_HEAD_DIM}, got {head_dim}")
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"q's number of heads ({n_heads}) must be a multiple of k's and v's ({n_kv_heads})")

    if alibi not in ALIBI_FORMS:
        raise ValueError(f"alibi must be one of {ALIBI_FORMS}, got {alibi!r}")
    if causal is None:
        causal = alibi == "causal"
    elif alibi == "causal" and not causal:
        raise ValueError('alibi="causal" masks the keys after each query: it cannot take causal=False')
    if (slopes is None) != (alibi == "none"):
        raise ValueError(f'slopes are needed exactly when alibi is not "none"; alibi={alibi!r}, slopes '
                         f'{"missing" if slopes is None else "given"}')
    slope_strides = (0, 0)
    if slopes is not None:
        if slopes.dtype != "float32":
            raise TypeError(f"slopes must be float32, got {slopes.dtype}")
        if tuple(slopes.shape) not in ((n_heads,), (batch, n_heads)):
            raise ValueError(f"slopes must have shape ({n_heads},) or ({batch}, {n_heads}), got "
                             f"{tuple(slopes.shape)}")
        slope_strides = (0, slopes.strides[0]) if len(slopes.shape) == 1 else tuple(slopes.strides)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite number, got {scale!r}")
    if q_offset is not None and (isinstance(q_offset, bool) or not isinstance(q_offset, int)):
        raise TypeError(f"q_offset must be an int or None, got {type(q_offset).__name__}")
    bottom_right = q_offset is None
    q_offset = 0 if bottom_right else q_offset
    if not varlen and bottom_right:  # resolved here, where one offset serves every sequence
        q_offset, bottom_right = seqlen_k - seqlen_q, False
    if abs(q_offset) + seqlen_q + seqlen_k >= 2**31:
        raise ValueError(f"q_offset {q_offset} with {seqlen_q} queries and {seqlen_k} keys: |q_offset| + "
                         f"seqlen_q + seqlen_k must be below 2**31 (int32 positions)")

    if varlen:  # LSE of packed tokens: (heads, tokens)
        lse_shape = (n_heads, q.shape[0])
        lse_strides = (0, q.shape[0])
    else:
        lse_shape = (batch, n_heads, seqlen_q)
        lse_strides = (n_heads * seqlen_q, seqlen_q)
    block_d = max(16, next_power_of_2(head_dim))
    constexprs = dict(
        SCALE=float(scale), ALIBI=alibi, CAUSAL=bool(causal), VARLEN=varlen, BOTTOM_RIGHT=bottom_right,
        HEAD_DIM=head_dim, BLOCK_D=block_d, COMPUTE=compute_dtype(q.dtype),
        # Full float32 products for float32/float64 inputs (tests, references), not TF32.
        PRECISION="tf32" if q.dtype in ("float16", "bfloat16") else "ieee",
    )
    return _Geometry(batch, seqlen_q, seqlen_k, n_heads, n_heads // n_kv_heads, head_dim, q_offset,
                     bottom_right, lse_shape, lse_strides, slope_strides, tuple(sorted(constexprs.items())))


def _logical_strides(array: Operand, layout: str) -> tuple[int, int, int, int]:
    """(batch, seq, head, head_dim) strides; packed tokens are addressed by row alone."""
    return _bshd(array.strides, layout, 0)


def _output(like: Operand, layout: str) -> tuple[Output, tuple[int, int, int, int]]:
    """A row-major output shaped like `like`, and its logical strides."""
    strides = row_major_strides(like.shape)
    return Output(tuple(like.shape), like.dtype), _bshd(strides, layout, 0)


def _tiles(geometry: _Geometry, stage: str, tiles: tuple[int, int, int, int] | None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of one kernel: `tiles`, else the table's."""
    return tiles or TILES[dict(geometry.constexprs)["BLOCK_D"]][stage]


def _aligned_strides(*strides: tuple[int, ...]) -> bool:
    """ALIGNED: every batch, row and head stride a multiple of 16 elements."""
    return strides_aligned(*(value for each in strides for value in each[:3]))


def _key_splits(geometry: _Geometry, block_m: int, block_n: int) -> int:
    """How many programs share each query tile's keys: more than one when the grid would not
    fill the GPU (decode), with at least MIN_SPLIT_TILES key tiles each; packed never."""
    programs = cdiv(geometry.seqlen_q, block_m) * geometry.batch * geometry.n_heads
    if dict(geometry.constexprs)["VARLEN"] or programs >= FILL_PROGRAMS:
        return 1
    return max(1, min(cdiv(FILL_PROGRAMS, programs), cdiv(geometry.seqlen_k, block_n) // MIN_SPLIT_TILES))


@functools.lru_cache(maxsize=1024)
def attention_fwd_calls(q: Operand, k: Operand, v: Operand, slopes: Operand | None = None, *,
                        alibi: str = "none", causal: bool | None = None, scale: float | None = None,
                        q_offset: int | None = None, layout: str = "bshd",
                        cu_seqlens_q: Operand | None = None, cu_seqlens_k: Operand | None = None,
                        max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                        tiles: tuple[int, int, int, int] | None = None,
                        key_splits: int | None = None) -> tuple[KernelCall, ...]:
    """Attention of q (batch, seqlen_q, heads, head_dim) over k and v (batch, seqlen_k,
    kv_heads, head_dim), kv_heads dividing heads, in `layout`: one launch, or two when the keys
    are split (flash-decoding), run in order.

    Inputs, by name: "q", "k", "v", "slopes", "cu_seqlens_q", "cu_seqlens_k". Outputs: o (like
    q, row-major) and lse (float32 (batch, heads, seqlen_q), or (heads, tokens) when packed).
    Split: the first launch's outputs, "o_splits" and "lse_splits", are the second's inputs.

    Options: `alibi` "none", "symmetric" or "causal" (slopes float32 (heads,) or (batch, heads)
    then needed); `causal` masks the keys after each query (default: alibi == "causal");
    `scale` (default head_dim ** -0.5, compiled in); `q_offset` the key position of query 0
    (default seqlen_k - seqlen_q, per sequence when packed); `layout` "bshd", "bhsd" or "thd"
    (packed tokens, with int32 `cu_seqlens_q`/`cu_seqlens_k` (n_seqs + 1,) and the longest
    sequences `max_seqlen_q`/`max_seqlen_k`); `tiles` (BLOCK_M, BLOCK_N, num_warps, num_stages)
    instead of the tile table's, for every kernel (tests use small tiles, the sweep others);
    `key_splits` instead of the rule's (`_key_splits`; not packed).
    """
    geometry = _geometry(q, k, v, slopes, alibi, causal, scale, q_offset, layout, cu_seqlens_q, cu_seqlens_k,
                         max_seqlen_q, max_seqlen_k)
    stage = "decode" if geometry.seqlen_q <= DECODE_QUERIES else "fwd"
    block_m, block_n, num_warps, num_stages = _tiles(geometry, stage, tiles)
    if key_splits is not None and (isinstance(key_splits, bool) or not isinstance(key_splits, int)
                                   or key_splits < 1 or (key_splits > 1 and layout == "thd")):
        raise ValueError(f'key_splits must be an int >= 1 (1 for layout "thd"), got {key_splits!r}')
    splits = key_splits or _key_splits(geometry, block_m, block_n)
    keys_per_split = cdiv(cdiv(geometry.seqlen_k, block_n), splits) * block_n
    splits = cdiv(geometry.seqlen_k, keys_per_split) if geometry.seqlen_k else 1
    o, o_strides = _output(q, layout)
    lse = Output(geometry.lse_shape, "float32")
    strides = [_logical_strides(array, layout) for array in (q, k, v)]
    split_strides = (math.prod(q.shape), math.prod(geometry.lse_shape)) if splits > 1 else (0, 0)
    forward = KernelCall(
        kernel=_attention_fwd_kernel,
        grid=(cdiv(geometry.seqlen_q, block_m), geometry.batch * geometry.n_heads, splits),
        inputs=("q", "k", "v", "slopes", "cu_seqlens_q", "cu_seqlens_k"),
        scalars=(geometry.n_heads, geometry.n_heads_per_kv, geometry.seqlen_q, geometry.seqlen_k, geometry.q_offset,
                 keys_per_split, *(value for each in strides for value in each), *geometry.slope_strides,
                 *o_strides, split_strides[0], *geometry.lse_strides, split_strides[1]),
        outputs=(Output((splits, *o.shape), "float32"), Output((splits, *lse.shape), "float32")) if splits > 1
        else (o, lse),
        constexprs=dict(geometry.constexprs, BLOCK_M=block_m, BLOCK_N=block_n,
                        ALIGNED=_aligned_strides(*strides, o_strides)),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if splits == 1:
        return (forward,)
    constexprs = dict(geometry.constexprs)
    combine_block_m = min(64, max(16, next_power_of_2(geometry.seqlen_q)))
    combine = KernelCall(
        kernel=_attention_combine_kernel,
        grid=(cdiv(geometry.seqlen_q, combine_block_m), geometry.batch * geometry.n_heads),
        inputs=("o_splits", "lse_splits"),
        scalars=(geometry.n_heads, geometry.seqlen_q, splits, *o_strides[:3], split_strides[0], *o_strides,
                 *geometry.lse_strides, split_strides[1]),
        outputs=(o, lse),
        constexprs=dict(HEAD_DIM=constexprs["HEAD_DIM"], BLOCK_M=combine_block_m, BLOCK_D=constexprs["BLOCK_D"]),
        num_warps=4,
    )
    return forward, combine


@functools.lru_cache(maxsize=1024)
def attention_bwd_calls(q: Operand, k: Operand, v: Operand, o: Operand, do: Operand,
                        slopes: Operand | None = None, *, alibi: str = "none", causal: bool | None = None,
                        scale: float | None = None, q_offset: int | None = None, layout: str = "bshd",
                        cu_seqlens_q: Operand | None = None, cu_seqlens_k: Operand | None = None,
                        max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                        tiles: tuple[int, int, int, int] | None = None) -> tuple[KernelCall, KernelCall, KernelCall]:
    """The backward of `attention_fwd_calls` (same arguments and options), given its output o
    and the gradient do (both shaped like q, any strides): three launches, in this order.

    1. preprocess: inputs "o", "do", "lse", "cu_seqlens_q" (lse as the forward wrote it);
       outputs delta and lse_base2 (laid out like lse).
    2. dk/dv: inputs "q", "k", "v", "do", "lse_base2", "delta", "slopes", "cu_seqlens_q",
       "cu_seqlens_k"; outputs dk, dv (like k, v, row-major).
    3. dq: the same inputs; output dq (like q, row-major).
    """
    geometry = _geometry(q, k, v, slopes, alibi, causal, scale, q_offset, layout, cu_seqlens_q, cu_seqlens_k,
                         max_seqlen_q, max_seqlen_k)
    for name, array in (("o", o), ("do", do)):
        if tuple(array.shape) != tuple(q.shape):
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(array.shape)}")
    dq, dq_strides = _output(q, layout)
    dk, dk_strides = _output(k, layout)
    dv, dv_strides = _output(v, layout)
    q_s, k_s, v_s, o_s, do_s = (_logical_strides(array, layout) for array in (q, k, v, o, do))
    common = dict(geometry.constexprs)
    n_kv_heads = geometry.n_heads // geometry.n_heads_per_kv
    head_scalars = (geometry.n_heads, geometry.n_heads_per_kv, geometry.seqlen_q, geometry.seqlen_k,
                    geometry.q_offset, *q_s, *k_s, *v_s, *do_s, *geometry.slope_strides)
    gradient_inputs = ("q", "k", "v", "do", "lse_base2", "delta", "slopes", "cu_seqlens_q", "cu_seqlens_k")

    block_m, block_n, num_warps, num_stages = _tiles(geometry, "dq", tiles)
    preprocess = KernelCall(
        kernel=_attention_bwd_preprocess_kernel,
        grid=(cdiv(geometry.seqlen_q, block_m), geometry.batch * geometry.n_heads),
        inputs=("o", "do", "lse", "cu_seqlens_q"),
        scalars=(geometry.n_heads, geometry.seqlen_q, *o_s, *do_s, *geometry.lse_strides),
        outputs=(Output(geometry.lse_shape, "float32"), Output(geometry.lse_shape, "float32")),
        constexprs=dict(VARLEN=common["VARLEN"], HEAD_DIM=common["HEAD_DIM"], BLOCK_M=block_m,
                        BLOCK_D=common["BLOCK_D"], ALIGNED=_aligned_strides(o_s, do_s)),
        num_warps=4,
    )
    dq_call = KernelCall(
        kernel=_attention_bwd_dq_kernel,
        grid=(cdiv(geometry.seqlen_q, block_m), geometry.batch * geometry.n_heads),
        inputs=gradient_inputs,
        scalars=(*head_scalars, *dq_strides, *geometry.lse_strides),
        outputs=(dq,),
        constexprs=dict(common, BLOCK_M=block_m, BLOCK_N=block_n,
                        ALIGNED=_aligned_strides(q_s, k_s, v_s, do_s, dq_strides)),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    block_m, block_n, num_warps, num_stages = _tiles(geometry, "dkdv", tiles)
    dkdv_call = KernelCall(
        kernel=_attention_bwd_dkdv_kernel,
        grid=(cdiv(geometry.seqlen_k, block_n), geometry.batch * n_kv_heads),
        inputs=gradient_inputs,
        scalars=(*head_scalars, *dk_strides, *dv_strides, *geometry.lse_strides),
        outputs=(dk, dv),
        constexprs=dict(common, BLOCK_M=block_m, BLOCK_N=block_n,
                        ALIGNED=_aligned_strides(q_s, k_s, v_s, do_s, dk_strides, dv_strides)),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return preprocess, dkdv_call, dq_call

