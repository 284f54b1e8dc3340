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
