"""trinix for PyTorch: RoPE (and ALiBi) modules and functional forms."""

from trinix.torch.rope import FastRoPEPositionEmbedding, apply_rotary_pos_emb, rope_cos_sin, rope_rotate

__all__ = ["FastRoPEPositionEmbedding", "apply_rotary_pos_emb", "rope_cos_sin", "rope_rotate"]
