"""trinix for JAX: RoPE and ALiBi as functional forms and Flax NNX modules (Linen: trinix.jax.linen)."""

from trinix.jax.alibi import FastALiBiPositionEmbedding, alibi_add, alibi_bias, alibi_slopes, alibi_softmax
from trinix.jax.attention import attention
from trinix.jax.context_parallel import context_parallel_attention, zigzag_order, zigzag_restore
from trinix.jax.rope import FastRoPEPositionEmbedding, apply_rotary_pos_emb, rope_cos_sin, rope_rotate

__all__ = ["FastALiBiPositionEmbedding", "FastRoPEPositionEmbedding", "alibi_add", "alibi_bias", "alibi_slopes",
           "alibi_softmax", "apply_rotary_pos_emb", "attention", "context_parallel_attention", "rope_cos_sin", "rope_rotate",
           "zigzag_order", "zigzag_restore"]
