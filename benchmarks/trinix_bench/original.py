"""The original benchmark report's paths, in plain PyTorch and in jax.numpy: the baselines
("pytorch", "torch_compile", "jax_xla") and what the other providers are checked against.

RoPE: q, k (batch, seq, heads, head_dim), cos/sin tables (seq, head_dim), half-split rotation.
ALiBi: slopes 2 ** (-8 i / heads), bias -slope * |i - j| as (batch, heads, seq, seq) float32.
"""

import torch

ROPE_BASE = 10000.0


def torch_inv_freq(dim: int, device):
    """RoPE frequencies base ** (-2i / dim), (dim / 2,) float32."""
    return 1.0 / ROPE_BASE ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)


def torch_rope_cos_sin(inv_freq, seq_len: int, dtype):
    """cos, sin (seq_len, head_dim): arange, outer, cat, cos, sin, cast."""
    positions = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def torch_rope_apply(q, k, cos, sin):
    """q, k (batch, seq, heads, head_dim) rotated by cos, sin (seq, head_dim)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def torch_rope_total(inv_freq, q, k):
    cos, sin = torch_rope_cos_sin(inv_freq, q.shape[1], q.dtype)
    return torch_rope_apply(q, k, cos, sin)


def torch_alibi_slopes(num_heads: int, device):
    """2 ** (-8 i / num_heads) for i in 1 .. num_heads, float32."""
    heads = torch.arange(1, num_heads + 1, device=device, dtype=torch.float32)
    return 2.0 ** (-8.0 * heads / num_heads)


def torch_alibi_bias(slopes, seq_len: int, batch: int):
    """-slope * |i - j| as (batch, heads, seq_len, seq_len) float32, every batch copy written."""
    positions = torch.arange(seq_len, device=slopes.device)
    distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)
    return -slopes.view(1, -1, 1, 1).expand(batch, -1, 1, 1) * distance


def torch_alibi_total(num_heads: int, seq_len: int, batch: int, device):
    return torch_alibi_bias(torch_alibi_slopes(num_heads, device), seq_len, batch)


def torch_add_to_scores(scores, slopes):
    """scores (batch, heads, seq, seq) += the materialised bias, in place."""
    return scores.add_(torch_alibi_bias(slopes, scores.shape[-1], scores.shape[0]))


def torch_softmax(scores, slopes):
    bias = torch_alibi_bias(slopes, scores.shape[-1], scores.shape[0])
    return (scores + bias).softmax(dim=-1).to(scores.dtype)


def jax_inv_freq(dim: int):
    import jax.numpy as jnp

    return 1.0 / ROPE_BASE ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


def jax_rope_cos_sin(inv_freq, seq_len: int, dtype):
    import jax.numpy as jnp

    freqs = jnp.outer(jnp.arange(seq_len, dtype=jnp.float32), inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def jax_rope_apply(q, k, cos, sin):
    import jax.numpy as jnp

    def rotate(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos[:, None, :] + jnp.concatenate([-x2, x1], axis=-1) * sin[:, None, :]

    return rotate(q), rotate(k)


def jax_rope_total(inv_freq, q, k):
    cos, sin = jax_rope_cos_sin(inv_freq, q.shape[1], q.dtype)
    return jax_rope_apply(q, k, cos, sin)


def jax_alibi_slopes(num_heads: int):
    import jax.numpy as jnp

    return 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1, dtype=jnp.float32) / num_heads)


def jax_alibi_bias(slopes, seq_len: int, batch: int):
    import jax.numpy as jnp

    positions = jnp.arange(seq_len)
    distance = jnp.abs(positions[None, :] - positions[:, None]).astype(jnp.float32)
    bias = -slopes[None, :, None, None] * distance
    return jnp.broadcast_to(bias, (batch, *bias.shape[1:]))


def jax_alibi_total(num_heads: int, seq_len: int, batch: int):
    return jax_alibi_bias(jax_alibi_slopes(num_heads), seq_len, batch)


def jax_add_to_scores(scores, slopes):
    """scores + bias; XLA fuses the bias in."""
    return (scores + jax_alibi_bias(slopes, scores.shape[-1], scores.shape[0])).astype(scores.dtype)


def jax_softmax(scores, slopes):
    import jax

    bias = jax_alibi_bias(slopes, scores.shape[-1], scores.shape[0])
    return jax.nn.softmax(scores + bias, axis=-1).astype(scores.dtype)
