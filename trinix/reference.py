"""NumPy float64 formulas: the specification every trinix backend is tested against.

Nothing here is fast; everything here is exact to float64 rounding.
"""

import numpy as np


def rope_inv_freq(dim: int, base: float = 10000.0) -> np.ndarray:
    """Inverse frequencies of RoPE, (dim // 2,) float64.

        inv_freq[i] = base ** (-2 i / dim),   i = 0 .. dim/2 - 1
    """
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def rope_cos_sin(positions, inv_freq) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each (*positions.shape, 2 * len(inv_freq)) float64.

        theta[p, i] = p * inv_freq[i]
        cos[p] = [cos(theta[p]), cos(theta[p])],  sin[p] = [sin(theta[p]), sin(theta[p])]

    (each half repeated, the half-split layout of GPT-NeoX, LLaMA and transformers).
    """
    theta = np.asarray(positions, dtype=np.float64)[..., None] * np.asarray(inv_freq, np.float64)
    theta = np.concatenate([theta, theta], axis=-1)
    return np.cos(theta), np.sin(theta)


def rotate_half(x) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] over the last axis."""
    x1, x2 = np.split(np.asarray(x, dtype=np.float64), 2, axis=-1)
    return np.concatenate([-x2, x1], axis=-1)


def rope_rotate(x, cos, sin) -> np.ndarray:
    """Rotate x (..., dim) by cos/sin broadcastable to it, half-split style:

        out = x * cos + rotate_half(x) * sin
            = [x1 * c1 - x2 * s1,  x2 * c2 + x1 * s2]
    """
    x = np.asarray(x, dtype=np.float64)
    return x * cos + rotate_half(x) * sin


def rope_rotate_vjp(grad, cos, sin) -> np.ndarray:
    """Transpose of `rope_rotate` in x (its VJP): grad * cos + rotate_half^T(grad * sin),
    with rotate_half^T([y1, y2]) = [y2, -y1]:

        dx = [g1 * c1 + g2 * s2,  g2 * c2 - g1 * s1]
    """
    gs = np.asarray(grad, dtype=np.float64) * sin
    g1, g2 = np.split(gs, 2, axis=-1)
    return np.asarray(grad, dtype=np.float64) * cos + np.concatenate([g2, -g1], axis=-1)


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
    return e / np.where(total > 0, total, 1.0)


def alibi_softmax_vjp(y, grad, scale: float = 1.0) -> np.ndarray:
    """VJP of `alibi_softmax` in scores, from its output y: scale * y * (g - sum_j g * y)."""
    y = np.asarray(y, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    return scale * y * (grad - (grad * y).sum(axis=-1, keepdims=True))
