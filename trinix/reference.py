"""NumPy float64 formulas: the specification every trinix backend is tested against.

Nothing here is fast; everything here is exact to float64 rounding.
"""

import math

import numpy as np


def rope_inv_freq(dim: int, base: float = 10000.0) -> np.ndarray:
    """Inverse frequencies of RoPE, (dim // 2,) float64.

        inv_freq[i] = base ** (-2 i / dim),   i = 0 .. dim/2 - 1
    """
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def rope_cos_sin(positions, inv_freq, *, interleaved: bool = False,
                 attention_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each (*positions.shape, 2 * len(inv_freq)) float64.

        theta[p, i] = p * inv_freq[i]
        cos[p] = a * [cos(theta[p]), cos(theta[p])],  sin[p] = a * [sin(theta[p]), sin(theta[p])]

    each half repeated (the half-split layout of GPT-NeoX, LLaMA and transformers), or each
    entry repeated in place if `interleaved` (GPT-J); a is the attention factor of scaled RoPE.
    """
    theta = np.asarray(positions, dtype=np.float64)[..., None] * np.asarray(inv_freq, np.float64)
    if interleaved:
        theta = np.repeat(theta, 2, axis=-1)
    else:
        theta = np.concatenate([theta, theta], axis=-1)
    return attention_factor * np.cos(theta), attention_factor * np.sin(theta)


def _pairs(x, interleaved: bool):
    """The two members of each rotated pair: halves [x1, x2], or x[2i], x[2i+1] interleaved."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    return np.split(x, 2, axis=-1)


def _unpair(y1, y2, interleaved: bool) -> np.ndarray:
    if interleaved:
        return np.stack([y1, y2], axis=-1).reshape(*y1.shape[:-1], 2 * y1.shape[-1])
    return np.concatenate([y1, y2], axis=-1)


def rotate_half(x, interleaved: bool = False) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] over the last axis (pairs (2i, 2i+1) if interleaved)."""
    x1, x2 = _pairs(np.asarray(x, dtype=np.float64), interleaved)
    return _unpair(-x2, x1, interleaved)


def rope_rotate(x, cos, sin, *, interleaved: bool = False) -> np.ndarray:
    """Rotate the first R = cos.shape[-1] columns of x (..., head_dim) by cos/sin
    broadcastable to them; columns R.. pass through (partial rotation):

        out[..., :R] = x * cos + rotate_half(x) * sin = [x1 * c1 - x2 * s1,  x2 * c2 + x1 * s2]
    """
    x = np.asarray(x, dtype=np.float64)
    rotary = np.shape(cos)[-1]
    head, tail = x[..., :rotary], x[..., rotary:]
    rotated = head * cos + rotate_half(head, interleaved) * sin
    return np.concatenate([rotated, np.broadcast_to(tail, rotated.shape[:-1] + tail.shape[-1:])], axis=-1)


def rope_rotate_vjp(grad, cos, sin, *, interleaved: bool = False) -> np.ndarray:
    """Transpose of `rope_rotate` in x (its VJP): on the rotary columns
    grad * cos + rotate_half^T(grad * sin), with rotate_half^T([y1, y2]) = [y2, -y1]:

        dx = [g1 * c1 + g2 * s2,  g2 * c2 - g1 * s1]

    and the gradient itself on the columns that pass through.
    """
    grad = np.asarray(grad, dtype=np.float64)
    rotary = np.shape(cos)[-1]
    head, tail = grad[..., :rotary], grad[..., rotary:]
    g1, g2 = _pairs(head * sin, interleaved)
    rotated = head * cos + _unpair(g2, -g1, interleaved)
    return np.concatenate([rotated, np.broadcast_to(tail, rotated.shape[:-1] + tail.shape[-1:])], axis=-1)


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> np.ndarray:
    """ALiBi slopes, (num_heads,) float64, as in the paper (Press et al., "Train Short, Test
    Long") with its 8 as `max_bias`.

    For n = 2^k heads the geometric series m_h = 2 ** (-max_bias * h / n), h = 1 .. n.
    Otherwise the largest power of two p below n gets that series of p heads, and the other
    n - p heads get every other entry (the 1st, 3rd, 5th, ...) of the series of 2p heads.
    A tensor-parallel shard of heads a .. b takes alibi_slopes(total_heads)[a:b].
    """

    def series(n: int) -> np.ndarray:
        return 2.0 ** (-max_bias * np.arange(1, n + 1, dtype=np.float64) / n)

    p = 2 ** int(np.floor(np.log2(num_heads)))
    return np.concatenate([series(p), series(2 * p)[0::2][: num_heads - p]])


def alibi_bias(slopes, seqlen_q: int, seqlen_k: int, *, causal: bool = False,
               q_offset: int | None = None) -> np.ndarray:
    """ALiBi bias (*slopes.shape, seqlen_q, seqlen_k) float64 for slopes (heads,) or
    (batch, heads).

    Query i sits at key position i + q_offset; the default q_offset = seqlen_k - seqlen_q
    puts the last query on the last key (bottom-right, FlashAttention-2's convention for a
    KV cache). With d = j - (i + q_offset), the signed distance from query i to key j:

        symmetric:  -m * |d|
        causal:      m * d     (= -m * (i' - j) on and below the diagonal; above it, where
                                the caller masks, the same line goes on, positive)
    """
    d = _alibi_distance(seqlen_q, seqlen_k, q_offset)
    m = np.asarray(slopes, dtype=np.float64)[..., None, None]
    return m * d if causal else -m * np.abs(d)


def _alibi_distance(seqlen_q: int, seqlen_k: int, q_offset: int | None) -> np.ndarray:
    """d[i, j] = j - (i + q_offset), (seqlen_q, seqlen_k) float64; q_offset defaults to
    seqlen_k - seqlen_q."""
    if q_offset is None:
        q_offset = seqlen_k - seqlen_q
    return np.arange(seqlen_k, dtype=np.float64)[None, :] - (np.arange(seqlen_q) + q_offset)[:, None]


def alibi_softmax(scores, slopes, *, scale: float = 1.0, causal: bool = False,
                  q_offset: int | None = None) -> np.ndarray:
    """softmax over keys of scale * scores + bias, float64, for scores (batch, heads,
    seqlen_q, seqlen_k) and slopes (heads,) or (batch, heads).

    Non-causal uses the symmetric bias. Causal masks the keys after the query (d > 0), so
    either bias form gives the same; a row with no key left (a query before every key,
    q_offset < 0) is all zeros, as FlashAttention-2 gives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    seqlen_q, seqlen_k = scores.shape[-2:]
    bias = alibi_bias(slopes, seqlen_q, seqlen_k, causal=causal, q_offset=q_offset)
    z = scale * scores + bias
    if causal:
        z = np.where(_alibi_distance(seqlen_q, seqlen_k, q_offset) > 0, -np.inf, z)
    top = z.max(axis=-1, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(total == 0, 1.0, total)


def alibi_softmax_vjp(y, grad, scale: float = 1.0) -> np.ndarray:
    """VJP of `alibi_softmax` in scores, from its output y: scale * y * (g - sum_j g * y)."""
    y = np.asarray(y, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    return scale * y * (grad - (grad * y).sum(axis=-1, keepdims=True))


# RoPE frequency recipes (transformers' modeling_rope_utils). Each gives inv_freq (dim / 2,)
# float64; cos and sin of scaled RoPE are multiplied by an attention factor, 1 unless said.
# L is the context the recipe scales from. Written one frequency at a time, on purpose
# unlike trinix.rope_scaling, so that each checks the other.


def rope_inv_freq_linear(dim: int, base: float, factor: float) -> np.ndarray:
    """Linear scaling (position interpolation): positions divided by `factor`,

        inv_freq[i] = base ** (-2 i / dim) / factor
    """
    return np.array([base ** (-2 * i / dim) / factor for i in range(dim // 2)])


def rope_inv_freq_dynamic(dim: int, base: float, factor: float, max_position_embeddings: int,
                          seq_len: int | None = None) -> np.ndarray:
    """Dynamic NTK: the base grows once the sequence passes L = max_position_embeddings,

        s = max(seq_len, L)  (L when seq_len is None)
        base' = base * (factor * s / L - (factor - 1)) ** (dim / (dim - 2))
        inv_freq[i] = base' ** (-2 i / dim)

    (the default RoPE up to L).
    """
    length = max_position_embeddings if seq_len is None else max(seq_len, max_position_embeddings)
    scaled_base = base * (factor * length / max_position_embeddings - (factor - 1)) ** (dim / (dim - 2))
    return np.array([scaled_base ** (-2 * i / dim) for i in range(dim // 2)])


def rope_inv_freq_yarn(dim: int, base: float, factor: float, original_max_position_embeddings: int,
                       beta_fast: float = 32.0, beta_slow: float = 1.0,
                       truncate: bool = True) -> np.ndarray:
    """YaRN ("NTK-by-parts", Peng et al. 2023) over the original context L: pair i makes
    L * base ** (-2 i / dim) / (2 pi) turns over L, so the pair making b turns is

        d(b) = dim * ln(L / (2 pi b)) / (2 ln base)
        lo = d(beta_fast), hi = d(beta_slow)    (floor(lo), ceil(hi) if truncate)
        lo = max(lo, 0), hi = min(hi, dim - 1)  (hi += 0.001 if lo == hi)
        r[i] = clamp((i - lo) / (hi - lo), 0, 1)
        inv_freq[i] = base ** (-2 i / dim) * ((1 - r[i]) + r[i] / factor)

    Pairs of many turns (i <= lo) keep their frequency, pairs of few (i >= hi) are
    interpolated by `factor`, and a linear ramp runs between.
    """
    L = original_max_position_embeddings

    def pair(turns):
        return dim * math.log(L / (2 * math.pi * turns)) / (2 * math.log(base))

    lo, hi = pair(beta_fast), pair(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    inv_freq = []
    for i in range(dim // 2):
        r = min(max((i - lo) / (hi - lo), 0.0), 1.0)
        inv_freq.append(base ** (-2 * i / dim) * ((1 - r) + r / factor))
    return np.array(inv_freq)


def rope_yarn_attention_factor(factor: float, mscale: float | None = None,
                               mscale_all_dim: float | None = None) -> float:
    """YaRN's attention factor (unless the config sets attention_factor itself), with

        m(c) = 1 if factor <= 1 else 0.1 * c * ln(factor) + 1

    m(mscale) / m(mscale_all_dim) when both are given and nonzero (DeepSeek), else m(1).
    """
    def m(c):
        return 1.0 if factor <= 1 else 0.1 * c * math.log(factor) + 1

    return m(mscale) / m(mscale_all_dim) if mscale and mscale_all_dim else m(1.0)


def rope_inv_freq_llama3(dim: int, base: float, factor: float, low_freq_factor: float,
                         high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """Llama 3.1 scaling, by the wavelength w = 2 pi / f of each default frequency
    f = base ** (-2 i / dim), with L the original context:

        w < L / high_freq_factor:  f                           (short wavelengths kept)
        w > L / low_freq_factor:   f / factor                  (long ones interpolated)
        otherwise:                 (1 - s) * f / factor + s * f,
                                   s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
    """
    L = original_max_position_embeddings
    inv_freq = []
    for i in range(dim // 2):
        f = base ** (-2 * i / dim)
        w = 2 * math.pi / f
        if w < L / high_freq_factor:
            inv_freq.append(f)
        elif w > L / low_freq_factor:
            inv_freq.append(f / factor)
        else:
            s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
            inv_freq.append((1 - s) * f / factor + s * f)
    return np.array(inv_freq)


def rope_inv_freq_longrope(dim: int, base: float, short_factor, long_factor,
                           original_max_position_embeddings: int,
                           seq_len: int | None = None) -> np.ndarray:
    """LongRoPE (Phi-3): one rescale factor per frequency,

        inv_freq[i] = base ** (-2 i / dim) / ext[i],
        ext = long_factor if seq_len > L else short_factor   (short_factor when seq_len is None)
    """
    use_long = seq_len is not None and seq_len > original_max_position_embeddings
    ext = long_factor if use_long else short_factor
    return np.array([base ** (-2 * i / dim) / ext[i] for i in range(dim // 2)])


def rope_longrope_attention_factor(factor: float, original_max_position_embeddings: int) -> float:
    """LongRoPE's attention factor (unless the config sets attention_factor itself):

        sqrt(1 + ln(factor) / ln(L))  if factor > 1,  else 1
    """
    if factor <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))


def attention(q, k, v, slopes=None, *, alibi: str = "none", causal: bool | None = None,
              scale: float | None = None, q_offset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attention with ALiBi, float64: O (batch, seqlen_q, heads, head_dim) and LSE (batch, heads,
    seqlen_q), for q (batch, seqlen_q, heads, head_dim) and k, v (batch, seqlen_k, kv_heads,
    head_dim), kv_heads dividing heads (query head h reads kv head h // (heads / kv_heads)).

    Query i sits at p_i = i + q_offset (default seqlen_k - seqlen_q), key j at j; m is the
    head's slope (slopes (heads,) or (batch, heads)), scale defaults to head_dim ** -0.5:

        s_ij = scale * q_i . k_j + bias_ij,  bias: "none" 0, "symmetric" -m |p_i - j|,
                                                   "causal" -m (p_i - j)
        keys j > p_i masked (s = -inf) when causal (default: alibi == "causal")
        LSE_i = log sum_j exp(s_ij),  P_ij = exp(s_ij - LSE_i),  O_i = sum_j P_ij v_j

    A row with no visible key has P = 0, O = 0 and LSE = -inf.
    """
    p, lse = _attention_probabilities(q, k, slopes, alibi, causal, scale, q_offset)
    return np.einsum("bhqk,bkhd->bqhd", p, _repeat_kv(v, q.shape[2])), lse


def attention_vjp(q, k, v, grad, slopes=None, *, alibi: str = "none", causal: bool | None = None,
                  scale: float | None = None, q_offset: int | None = None) -> tuple[np.ndarray, ...]:
    """(dq, dk, dv) of `attention`'s O for its gradient `grad` (like q), float64:

        dv_j = sum_i P_ij grad_i,   dP_ij = grad_i . v_j,   delta_i = sum_j P_ij dP_ij = grad_i . O_i
        dS_ij = P_ij (dP_ij - delta_i),   dq_i = scale sum_j dS_ij k_j,   dk_j = scale sum_i dS_ij q_i

    dk and dv summed over the query heads that share a kv head.
    """
    q, grad = np.asarray(q, np.float64), np.asarray(grad, np.float64)
    heads, kv_heads = q.shape[2], np.shape(k)[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p, _ = _attention_probabilities(q, k, slopes, alibi, causal, scale, q_offset)
    k, v = _repeat_kv(k, heads), _repeat_kv(v, heads)
    dp = np.einsum("bqhd,bkhd->bhqk", grad, v)
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
    dq = scale * np.einsum("bhqk,bkhd->bqhd", ds, k)
    dk = scale * np.einsum("bhqk,bqhd->bkhd", ds, q)
    dv = np.einsum("bhqk,bqhd->bkhd", p, grad)

    def per_kv_head(x):
        return x.reshape(*x.shape[:2], kv_heads, heads // kv_heads, x.shape[-1]).sum(axis=3)

    return dq, per_kv_head(dk), per_kv_head(dv)


def attention_packed(q, k, v, cu_seqlens_q, cu_seqlens_k, slopes=None, **options) -> tuple[np.ndarray, ...]:
    """`attention` of packed sequences, q (tokens_q, heads, head_dim) and k, v (tokens_k,
    kv_heads, head_dim), sequence b being rows cu_seqlens[b] .. cu_seqlens[b + 1]: O like q
    and LSE (heads, tokens_q). One call per sequence; q_offset defaults per sequence. Slopes
    (batch, heads) give sequence b row b."""
    outs, lses = [], []
    for b, (qb, kb, vb, slopes_b) in enumerate(_sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, slopes)):
        o, lse = attention(qb, kb, vb, slopes_b, **options)
        outs.append(o[0])
        lses.append(lse[0])
    return np.concatenate(outs), np.concatenate(lses, axis=-1)


def attention_packed_vjp(q, k, v, grad, cu_seqlens_q, cu_seqlens_k, slopes=None, **options) -> tuple[np.ndarray, ...]:
    """`attention_vjp` of `attention_packed`: (dq, dk, dv), packed like q, k, v."""
    grads = [attention_vjp(qb, kb, vb, gb[None], slopes_b, **options)
             for (qb, kb, vb, slopes_b), gb in zip(_sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, slopes),
                                                   np.split(np.asarray(grad), np.asarray(cu_seqlens_q)[1:-1]))]
    return tuple(np.concatenate([g[i][0] for g in grads]) for i in range(3))


def _sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, slopes):
    """(q, k, v, slopes) of each packed sequence, as a batch of one."""
    for b in range(len(cu_seqlens_q) - 1):
        rows_q = slice(cu_seqlens_q[b], cu_seqlens_q[b + 1])
        rows_k = slice(cu_seqlens_k[b], cu_seqlens_k[b + 1])
        slopes_b = None if slopes is None else np.asarray(slopes)[b] if np.ndim(slopes) == 2 else slopes
        yield q[None, rows_q], k[None, rows_k], v[None, rows_k], slopes_b


def _repeat_kv(x, heads: int) -> np.ndarray:
    """k or v (batch, seq, kv_heads, head_dim) with each kv head repeated for its query heads."""
    x = np.asarray(x, np.float64)
    return np.repeat(x, heads // x.shape[2], axis=2)


def _attention_probabilities(q, k, slopes, alibi, causal, scale, q_offset):
    """P (batch, heads, seqlen_q, seqlen_k) and LSE (batch, heads, seqlen_q) of `attention`."""
    q = np.asarray(q, np.float64)
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k = np.shape(k)[1]
    scale = head_dim ** -0.5 if scale is None else scale
    causal = alibi == "causal" if causal is None else causal
    s = scale * np.einsum("bqhd,bkhd->bhqk", q, _repeat_kv(k, heads))
    d = _alibi_distance(seqlen_q, seqlen_k, q_offset)  # j - p_i
    if alibi != "none":
        m = np.broadcast_to(np.asarray(slopes, np.float64), (batch, heads))[..., None, None]
        s = s - m * np.abs(d) if alibi == "symmetric" else s + m * d
    if causal:
        s = np.where(d > 0, -np.inf, s)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(s - top)
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (np.log(total) + top)[..., 0]
    return e / np.where(total == 0, 1.0, total), lse
