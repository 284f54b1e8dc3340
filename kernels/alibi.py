"""ALiBi (attention with linear biases) kernels and their call builders.

Slopes (Press et al., "Train Short, Test Long"): global head g of n heads, p the largest
power of two <= n,

    m_g = 2 ** (-max_bias * (g + 1) / p)              g < p
    m_g = 2 ** (-max_bias * (2 (g - p) + 1) / (2 p))  g >= p   (every other entry of the 2p series)

Bias of query i and key j, with the query at key position i + q_offset and
d = j - i - q_offset: symmetric -m |d|, causal m d (the caller masks d > 0; the softmax
kernel masks them itself). Bias arithmetic is float32 (float64 for float64 scores): a
float16 bias at long context cannot tell neighbouring keys apart.
"""

import functools

import triton
import triton.language as tl

from .call import (KernelCall, Operand, Output, batched_strides, cdiv, compute_dtype, largest_power_of_2,
                   next_power_of_2, row_major_strides)
from .hints import kernel, multiple_of_16, strides_aligned
from .triton_compat import rowwise_max, rowwise_sum

# Elements of one (BLOCK_Q, BLOCK_K) tile a program writes; rows of at most _BLOCK_K keys
# keep each thread's stores 16-byte vectors along the contiguous key axis.
_TILE_ELEMENTS = 8192
_BLOCK_K = 256
# The fused softmax keeps a row of up to this many keys in registers (one read); longer
# rows are read twice, the second time mostly from L2.
_SOFTMAX_BLOCK_K = 8192
# The softmax's blocks: rows of more keys than this one to a block, of fewer as many as make
# this many elements (16 a thread on its 4 warps). Programs of such short blocks work through
# up to _SOFTMAX_BLOCKS_Q of them, loading each while they reduce the one before, as long as
# the grid keeps SOFTMAX_MIN_PROGRAMS programs (about 4 waves of 4 on a 132-SM GPU). These
# sizes were the fastest of a sweep of rows a block, blocks a program and warps
# (benchmarks/NOTES.md, "2026-12-06: moved from code comments").
_SOFTMAX_TILE_ELEMENTS = 2048
_SOFTMAX_BLOCKS_Q = 8
SOFTMAX_MIN_PROGRAMS = 2048  # public: a test lowers it to give small grids several blocks a program
_BLOCK_HEADS = 1024
# The softmax's logits are kept in base 2: exp(z) = exp2(z * LOG2_E), with LOG2_E folded into
# the scale and the slope, so that a probability costs no multiply before its exp2.
LOG2_E = tl.constexpr(1.4426950408889634)


@kernel
def _alibi_slopes_kernel(MAX_BIAS, n_heads, head_offset, power, SLOPES, BLOCK_H: tl.constexpr):
    """SLOPES[h] = slope of global head head_offset + h, for h < n_heads; `power` is the
    largest power of two <= the total head count, MAX_BIAS a (1,) array."""
    offs = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    g = offs + head_offset
    numerator = tl.where(g < power, g + 1, 2 * (g - power) + 1).to(tl.float32)
    denominator = tl.where(g < power, power, 2 * power).to(tl.float32)
    max_bias = tl.load(MAX_BIAS).to(tl.float32)
    # numerator / denominator is exact: the denominator is a power of two.
    tl.store(SLOPES + offs, tl.exp2(-max_bias * (numerator / denominator)), mask=offs < n_heads)


@triton.jit
def _distance(offs_q, offs_k, q_offset):
    """d = key position - query position, (BLOCK_Q, BLOCK_K) int."""
    return offs_k[None, :] - (offs_q[:, None] + q_offset)


@triton.jit
def _aligned_rows(seqlen_k, stride_b, stride_h, stride_q, stride_ob, stride_oh, stride_oq):
    """The row length and the batch, head and row strides of scores and output, all multiples
    of 16 (the builder's ALIGNED), in a form the compiler sees so (kernels/hints.py)."""
    return (multiple_of_16(seqlen_k), multiple_of_16(stride_b), multiple_of_16(stride_h),
            multiple_of_16(stride_q), multiple_of_16(stride_ob), multiple_of_16(stride_oh),
            multiple_of_16(stride_oq))


@triton.jit
def _nearest_key(offs_q, q_offset, seqlen_k, CAUSAL: tl.constexpr):
    """Per row, the position of the visible key nearest the query: min(query, seqlen_k - 1)
    when CAUSAL (the latest key it sees), else the query clamped to 0 .. seqlen_k - 1. The
    softmax measures distances from it: a row constant in the bias cancels in the softmax, and
    without it a query far from its keys (a long KV cache) has logits near -m * distance,
    whose float32 ulp would blur the probabilities. From it, keys are within seqlen_k, which
    float32 holds exactly below 2**24."""
    query = offs_q + q_offset
    if CAUSAL:
        return tl.minimum(query, seqlen_k - 1)
    return tl.minimum(tl.maximum(query, 0), seqlen_k - 1)


@triton.jit
def _alibi_tile(slope, distance, CAUSAL: tl.constexpr):
    """Bias of a tile of distances, in slope's dtype: m d (causal) or -m |d|."""
    distance = distance.to(slope.dtype)
    if CAUSAL:
        bias = slope * distance
    else:
        bias = -slope * tl.abs(distance)
    return bias


@triton.jit
def _inverse_sum(row_sum):
    """1 / row_sum, where a row with no key (sum 0) stays 0 and a NaN sum stays NaN."""
    return 1.0 / tl.where(row_sum == 0, 1.0, row_sum)


@triton.jit
def _finite(row_max):
    """row_max with -inf (a row with no key yet) as 0: exp(-inf - 0) = 0, never NaN."""
    return tl.where(row_max == float("-inf"), 0.0, row_max)


@kernel
def _alibi_kernel(
    SCORES, SLOPES,
    n_heads, seqlen_q, seqlen_k, q_offset, n_q_blocks, n_k_blocks,
    stride_b, stride_h, stride_q, stride_k,
    stride_mb, stride_mh,
    stride_ob, stride_oh, stride_oq, stride_ok,
    OUT,
    HAS_SCORES: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, ALIGNED: tl.constexpr,
):
    """OUT = SCORES + bias (logical (batch, heads, seqlen_q, seqlen_k)), or OUT = bias
    without SCORES. OUT may be SCORES itself (in place): each element is read, then written,
    by one program.

    Grid: (batch * n_heads * n_q_blocks * n_k_blocks,), one (BLOCK_Q, BLOCK_K) tile each.
    """
    if ALIGNED:
        seqlen_k, stride_b, stride_h, stride_q, stride_ob, stride_oh, stride_oq = _aligned_rows(
            seqlen_k, stride_b, stride_h, stride_q, stride_ob, stride_oh, stride_oq)
    pid = tl.program_id(0)
    pid_k = pid % n_k_blocks
    pid_q = (pid // n_k_blocks) % n_q_blocks
    bh = pid // (n_k_blocks * n_q_blocks)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_q < seqlen_q)[:, None] & (offs_k < seqlen_k)[None, :]
    row = offs_q.to(tl.int64)[:, None]
    col = offs_k.to(tl.int64)[None, :]

    slope = tl.load(SLOPES + b * stride_mb + h * stride_mh).to(COMPUTE)
    out = _alibi_tile(slope, _distance(offs_q, offs_k, q_offset), CAUSAL)
    if HAS_SCORES:
        x_ptr = SCORES + b * stride_b + h * stride_h + row * stride_q + col * stride_k
        out += tl.load(x_ptr, mask=mask, other=0.0).to(COMPUTE)
    o_ptr = OUT + b * stride_ob + h * stride_oh + row * stride_oq + col * stride_ok
    tl.store(o_ptr, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _load_block(x_base, offs_q, k0, seqlen_q, seqlen_k, key_end, q_offset, stride_q, stride_k,
                CAUSAL: tl.constexpr, EVEN: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scores of keys k0 .. k0 + BLOCK_K of rows offs_q, 0 where there is no score; a block at
    or past key_end (no row of the block sees it) is not read, nor, when CAUSAL, a row's keys
    more than 15 after its last visible one. EVEN: every row and key of the block exists."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    x_ptr = x_base + offs_q.to(tl.int64)[:, None] * stride_q + offs_k.to(tl.int64)[None, :] * stride_k
    if EVEN:
        return tl.load(x_ptr)
    # A block at or past key_end reads nothing: a bound on the keys rather than a scalar
    # condition `&` the block, which Triton 3.9's interpreter broadcasts to an int32 mask.
    key_bound = tl.where(k0 < key_end, seqlen_k, 0)
    in_bounds = (offs_q < seqlen_q)[:, None] & (offs_k < key_bound)[None, :]
    if CAUSAL:
        # Each row's read ends at a multiple of 16 keys: a mask uniform over 16 keys of the
        # contiguous key axis keeps the loads 16-byte vectors. The keys past the row's last
        # visible one and before that end are read, then masked by _logits.
        row_end = tl.multiple_of((_nearest_key(offs_q, q_offset, seqlen_k, CAUSAL) + 16) // 16 * 16, 16)
        in_bounds &= offs_k[None, :] < row_end[:, None]
    return tl.load(x_ptr, mask=in_bounds, other=0.0)


@triton.jit
def _logits(x, keys, offs_q, k0, seqlen_q, seqlen_k, q_offset, slope, SCALE: tl.constexpr,
            CAUSAL: tl.constexpr, EVEN: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """(SCALE * x + bias) * log2(e) of a block of scores x (rows offs_q, keys k0 + keys; `keys`
    is 0 .. BLOCK_K - 1 in COMPUTE, `slope` already times log2(e)), -inf where there is no key
    (past seqlen_k, or after the query when CAUSAL). EVEN: every row and key exists and none
    is masked."""
    # Key less nearest key, in COMPUTE: one add an element, from the row's integer offset.
    from_nearest = (k0 - _nearest_key(offs_q, q_offset, seqlen_k, CAUSAL)).to(COMPUTE)[:, None] + keys[None, :]
    z = x.to(COMPUTE) * (SCALE * LOG2_E) + _alibi_tile(slope, from_nearest, CAUSAL)
    if EVEN:
        return z
    offs_k = k0 + tl.arange(0, BLOCK_K)
    valid = (offs_q < seqlen_q)[:, None] & (offs_k < seqlen_k)[None, :]
    if CAUSAL:  # from the nearest key: key <= query exactly where from_nearest <= 0
        valid &= from_nearest <= 0
    return tl.where(valid, z, float("-inf"))


@triton.jit
def _read_logits(x_base, keys, offs_q, k0, seqlen_q, seqlen_k, key_end, q_offset, slope, stride_q,
                 stride_k, SCALE: tl.constexpr, CAUSAL: tl.constexpr, EVEN: tl.constexpr,
                 BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """_logits of the block that _load_block reads."""
    x = _load_block(x_base, offs_q, k0, seqlen_q, seqlen_k, key_end, q_offset, stride_q, stride_k, CAUSAL,
                    EVEN, BLOCK_K)
    return _logits(x, keys, offs_q, k0, seqlen_q, seqlen_k, q_offset, slope, SCALE, CAUSAL, EVEN,
                   BLOCK_K, COMPUTE)


@triton.jit
def _store_block(o_base, y, offs_q, k0, seqlen_q, seqlen_k, stride_oq, stride_ok,
                 EVEN: tl.constexpr, BLOCK_K: tl.constexpr):
    """Write the probabilities y of keys k0 .. k0 + BLOCK_K of rows offs_q."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    o_ptr = o_base + offs_q.to(tl.int64)[:, None] * stride_oq + offs_k.to(tl.int64)[None, :] * stride_ok
    if EVEN:
        tl.store(o_ptr, y.to(o_base.dtype.element_ty))
    else:
        mask = (offs_q < seqlen_q)[:, None] & (offs_k < seqlen_k)[None, :]
        tl.store(o_ptr, y.to(o_base.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_store(o_base, x, keys, offs_q, seqlen_q, seqlen_k, q_offset, slope, stride_oq,
                   stride_ok, SCALE: tl.constexpr, CAUSAL: tl.constexpr, EVEN: tl.constexpr,
                   BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr):
    """Write the softmax of a block of whole rows of scores x (rows offs_q, all keys)."""
    z = _logits(x, keys, offs_q, 0, seqlen_q, seqlen_k, q_offset, slope, SCALE, CAUSAL, EVEN,
                BLOCK_K, COMPUTE)
    # The exponentials are kept for the store: one exp per score, not two.
    p = tl.exp2(z - _finite(rowwise_max(z))[:, None])
    _store_block(o_base, p * _inverse_sum(rowwise_sum(p))[:, None], offs_q, 0, seqlen_q, seqlen_k,
                 stride_oq, stride_ok, EVEN, BLOCK_K)


@kernel
def _alibi_softmax_kernel(
    SCORES, SLOPES,
    n_heads, seqlen_q, seqlen_k, q_offset, n_q_groups,
    stride_b, stride_h, stride_q, stride_k,
    stride_mb, stride_mh,
    stride_ob, stride_oh, stride_oq, stride_ok,
    OUT,
    SCALE: tl.constexpr, CAUSAL: tl.constexpr, ONE_BLOCK: tl.constexpr, EVEN: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCKS_Q: tl.constexpr, COMPUTE: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """OUT = softmax over keys of SCALE * SCORES + bias; with CAUSAL the keys after each
    query are masked, and a row with no key left is 0.

    Grid: (batch * n_heads * n_q_groups,); a program owns BLOCKS_Q blocks of BLOCK_Q whole
    rows, one block after another. With ONE_BLOCK a row fits in BLOCK_K and is read once, and
    each block's scores are loaded before the one before it is reduced, so that a program
    always has a read in flight. Otherwise a first pass keeps the running max and sum over key
    blocks (online softmax) and a second pass reads the row again and writes. EVEN: no row or
    key block is partial and nothing is masked. The logits are in base 2 (times log2(e)), so
    that each probability is one exp2.
    """
    if ALIGNED:
        seqlen_k, stride_b, stride_h, stride_q, stride_ob, stride_oh, stride_oq = _aligned_rows(
            seqlen_k, stride_b, stride_h, stride_q, stride_ob, stride_oh, stride_oq)
    pid = tl.program_id(0)
    group = pid % n_q_groups
    bh = pid // n_q_groups
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    offs_q = group * (BLOCKS_Q * BLOCK_Q) + tl.arange(0, BLOCK_Q)
    slope = tl.load(SLOPES + b * stride_mb + h * stride_mh).to(COMPUTE) * LOG2_E
    x_base = SCORES + b * stride_b + h * stride_h
    o_base = OUT + b * stride_ob + h * stride_oh
    keys = tl.arange(0, BLOCK_K).to(COMPUTE)  # once a program, not once a block

    if ONE_BLOCK:
        x = _load_block(x_base, offs_q, 0, seqlen_q, seqlen_k, seqlen_k, q_offset, stride_q, stride_k, CAUSAL,
                        EVEN, BLOCK_K)
        for _ in range(BLOCKS_Q - 1):
            x_next = _load_block(x_base, offs_q + BLOCK_Q, 0, seqlen_q, seqlen_k, seqlen_k, q_offset,
                                 stride_q, stride_k, CAUSAL, EVEN, BLOCK_K)
            _softmax_store(o_base, x, keys, offs_q, seqlen_q, seqlen_k, q_offset, slope, stride_oq,
                           stride_ok, SCALE, CAUSAL, EVEN, BLOCK_K, COMPUTE)
            x = x_next
            offs_q += BLOCK_Q
        _softmax_store(o_base, x, keys, offs_q, seqlen_q, seqlen_k, q_offset, slope, stride_oq,
                       stride_ok, SCALE, CAUSAL, EVEN, BLOCK_K, COMPUTE)
    else:  # one block of rows a program (BLOCKS_Q is 1)
        if CAUSAL:  # keys past the block's last query are masked for every row of it
            key_end = tl.minimum(seqlen_k, tl.minimum((group + 1) * BLOCK_Q, seqlen_q) + q_offset)
        else:
            key_end = seqlen_k
        row_max = tl.full((BLOCK_Q,), float("-inf"), COMPUTE)
        row_sum = tl.full((BLOCK_Q,), 0.0, COMPUTE)
        # `while`, not `for k0 in range(...)`: Triton 3.6's interpreter cannot take a runtime
        # bound in range() under NumPy 2 (its scalars are 1-element arrays).
        k0 = 0
        while k0 < key_end:
            z = _read_logits(x_base, keys, offs_q, k0, seqlen_q, seqlen_k, key_end, q_offset, slope,
                             stride_q, stride_k, SCALE, CAUSAL, EVEN, BLOCK_K, COMPUTE)
            new_max = tl.maximum(row_max, rowwise_max(z))
            shift = _finite(new_max)
            row_sum = row_sum * tl.exp2(row_max - shift) + rowwise_sum(tl.exp2(z - shift[:, None]))
            row_max = new_max
            k0 += BLOCK_K
        shift = _finite(row_max)
        inv_sum = _inverse_sum(row_sum)
        k0 = 0
        while k0 < seqlen_k:
            z = _read_logits(x_base, keys, offs_q, k0, seqlen_q, seqlen_k, key_end, q_offset, slope,
                             stride_q, stride_k, SCALE, CAUSAL, EVEN, BLOCK_K, COMPUTE)
            _store_block(o_base, tl.exp2(z - shift[:, None]) * inv_sum[:, None], offs_q, k0,
                         seqlen_q, seqlen_k, stride_oq, stride_ok, EVEN, BLOCK_K)
            k0 += BLOCK_K


# Builders are pure functions of hashable shapes and options, called on every launch: cached,
# as RoPE's, to take the tile arithmetic off the per-call host time.
@functools.lru_cache(maxsize=256)
def alibi_slopes_call(num_heads: int, *, head_offset: int = 0, total_heads: int | None = None) -> KernelCall:
    """Slopes of heads head_offset .. head_offset + num_heads - 1 of `total_heads` (default
    num_heads). Input "max_bias": (1,) float32. Output: (num_heads,) float32."""
    power = largest_power_of_2(total_heads or num_heads)
    block_h = min(next_power_of_2(num_heads), _BLOCK_HEADS)
    return KernelCall(
        kernel=_alibi_slopes_kernel,
        grid=(cdiv(num_heads, block_h),),
        inputs=("max_bias",),
        scalars=(num_heads, head_offset, power),
        outputs=(Output((num_heads,), "float32"),),
        constexprs=dict(BLOCK_H=block_h),
        num_warps=1,
    )


def _tile(seqlen_q: int, seqlen_k: int, max_block_k: int, elements: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_K) of about `elements` elements (fewer for small inputs, more for rows
    longer than that)."""
    block_k = min(next_power_of_2(seqlen_k), max_block_k)
    block_q = min(next_power_of_2(seqlen_q), max(1, elements // block_k))
    return block_q, block_k


def _elementwise_call(scores: Operand | None, slopes: Operand, shape: tuple[int, int, int, int],
                      out: Output, out_strides: tuple[int, ...], *, q_offset: int, causal: bool,
                      compute: str) -> KernelCall:
    """`_alibi_kernel` over `shape` (batch, heads, seqlen_q, seqlen_k): scores + bias, or the
    bias alone without scores."""
    batch, n_heads, seqlen_q, seqlen_k = shape
    block_q, block_k = _tile(seqlen_q, seqlen_k, _BLOCK_K, _TILE_ELEMENTS)
    n_q_blocks, n_k_blocks = cdiv(seqlen_q, block_q), cdiv(seqlen_k, block_k)
    scores_strides = scores.strides if scores is not None else (0, 0, 0, 0)
    return KernelCall(
        kernel=_alibi_kernel,
        grid=(batch * n_heads * n_q_blocks * n_k_blocks,),
        inputs=("scores", "slopes"),
        scalars=(n_heads, seqlen_q, seqlen_k, q_offset, n_q_blocks, n_k_blocks,
                 *scores_strides, *batched_strides(slopes, 2), *out_strides),
        outputs=(out,),
        constexprs=dict(HAS_SCORES=scores is not None, CAUSAL=causal, BLOCK_Q=block_q,
                        BLOCK_K=block_k, COMPUTE=compute_dtype(compute),
                        ALIGNED=strides_aligned(seqlen_k, *scores_strides[:3], *out_strides[:3])),
        num_warps=4,
    )


@functools.lru_cache(maxsize=1024)
def alibi_bias_call(slopes: Operand, seqlen_q: int, seqlen_k: int, *, q_offset: int,
                    causal: bool, dtype: str = "float32") -> KernelCall:
    """The bias (heads, seqlen_q, seqlen_k) of `dtype`, row-major, for slopes (heads,).
    Input: "slopes"."""
    shape = (slopes.shape[-1], seqlen_q, seqlen_k)
    return _elementwise_call(None, slopes, (1, *shape), Output(shape, dtype),
                             (0, *row_major_strides(shape)), q_offset=q_offset, causal=causal,
                             compute=dtype)


@functools.lru_cache(maxsize=1024)
def alibi_add_call(scores: Operand, slopes: Operand, *, q_offset: int, causal: bool,
                   inplace: bool = False) -> KernelCall:
    """scores (batch, heads, seqlen_q, seqlen_k), any strides, plus the bias of slopes
    (heads,) or (batch or 1, heads). Inputs: "scores", "slopes". Output: like scores,
    row-major, or written into scores when `inplace`."""
    if inplace:
        out, out_strides = Output(scores.shape, scores.dtype, alias="scores"), scores.strides
    else:
        out, out_strides = Output(scores.shape, scores.dtype), row_major_strides(scores.shape)
    return _elementwise_call(scores, slopes, scores.shape, out, out_strides, q_offset=q_offset,
                             causal=causal, compute=scores.dtype)


@functools.lru_cache(maxsize=1024)
def alibi_softmax_call(scores: Operand, slopes: Operand, *, scale: float, q_offset: int,
                       causal: bool) -> KernelCall:
    """softmax over keys of scale * scores + bias (causal: keys after the query masked), for
    scores (batch, heads, seqlen_q, seqlen_k), any strides, and slopes (heads,) or (batch or
    1, heads). `scale` is compiled in (one compilation per value). Inputs: "scores",
    "slopes". Output: like scores, row-major."""
    batch, n_heads, seqlen_q, seqlen_k = scores.shape
    block_q, block_k = _tile(seqlen_q, seqlen_k, _SOFTMAX_BLOCK_K, _SOFTMAX_TILE_ELEMENTS)
    n_q_blocks = cdiv(seqlen_q, block_q)
    one_block = seqlen_k <= block_k
    # Blocks a program (short blocks only): as many as leave SOFTMAX_MIN_PROGRAMS programs,
    # up to _SOFTMAX_BLOCKS_Q, a power of two (one compilation each), never past the head's rows.
    blocks_q = 1
    while (one_block and block_q * block_k <= _SOFTMAX_TILE_ELEMENTS
           and 2 * blocks_q <= min(_SOFTMAX_BLOCKS_Q, n_q_blocks)
           and batch * n_heads * n_q_blocks >= 2 * blocks_q * SOFTMAX_MIN_PROGRAMS):
        blocks_q *= 2
    n_q_groups = cdiv(n_q_blocks, blocks_q)
    out_strides = row_major_strides(scores.shape)
    return KernelCall(
        kernel=_alibi_softmax_kernel,
        grid=(batch * n_heads * n_q_groups if seqlen_k else 0,),
        inputs=("scores", "slopes"),
        scalars=(n_heads, seqlen_q, seqlen_k, q_offset, n_q_groups, *scores.strides,
                 *batched_strides(slopes, 2), *out_strides),
        outputs=(Output(scores.shape, scores.dtype),),
        constexprs=dict(SCALE=float(scale), CAUSAL=causal, ONE_BLOCK=one_block,
                        EVEN=(not causal and seqlen_q % (block_q * blocks_q) == 0
                              and seqlen_k % block_k == 0),
                        BLOCK_Q=block_q, BLOCK_K=block_k, BLOCKS_Q=blocks_q,
                        COMPUTE=compute_dtype(scores.dtype),
                        ALIGNED=strides_aligned(seqlen_k, *scores.strides[:3], *out_strides[:3])),
        num_warps=4,
    )
