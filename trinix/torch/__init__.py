"""trinix for PyTorch: RoPE and ALiBi modules and functional forms."""

from trinix.torch.alibi import FastALiBiPositionEmbedding, alibi_add, alibi_bias, alibi_slopes, alibi_softmax
from trinix.torch.attention import attention
from trinix.torch.context_parallel import context_parallel_attention, zigzag_order, zigzag_restore
from trinix.torch.rope import FastRoPEPositionEmbedding, apply_rotary_pos_emb, rope_cos_sin, rope_rotate

__all__ = ["FastALiBiPositionEmbedding", "FastRoPEPositionEmbedding", "alibi_add", "alibi_bias", "alibi_slopes",
           "alibi_softmax", "apply_rotary_pos_emb", "attention", "context_parallel_attention", "rope_cos_sin",
           "rope_rotate", "zigzag_order", "zigzag_restore"]
