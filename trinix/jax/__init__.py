"""trinix for JAX: RoPE as functional forms and a Flax NNX module (Linen: trinix.jax.linen)."""

from trinix.jax.rope import FastRoPEPositionEmbedding, apply_rotary_pos_emb, rope_cos_sin, rope_rotate

__all__ = ["FastRoPEPositionEmbedding", "apply_rotary_pos_emb", "rope_cos_sin", "rope_rotate"]
