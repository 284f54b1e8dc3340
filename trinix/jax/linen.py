"""`FastRoPEPositionEmbedding` for Flax Linen: the NNX module's fields and methods.

    >>> import jax.numpy as jnp
    >>> from trinix.jax.linen import FastRoPEPositionEmbedding
    >>> rope = FastRoPEPositionEmbedding(dim=64)
    >>> q, k = jnp.ones((2, 16, 8, 64)), jnp.ones((2, 16, 2, 64))
    >>> cos, sin = rope.apply({}, q)
    >>> q_rot, k_rot = rope.apply({}, q, k, cos, sin, method="apply_rotary_pos_emb")
"""

from flax import linen as nn

from trinix.jax.rope import RoPEMethods


class FastRoPEPositionEmbedding(RoPEMethods, nn.Module):
    """Rotary position embedding for Linen; has no variables (`apply({}, ...)`). Fields and
    methods as `trinix.jax.FastRoPEPositionEmbedding`."""

    dim: int
    max_position_embeddings: int = 2048
    base: float = 10000.0
    use_triton: bool = True
    backend: str = "auto"
    layout: str = "bshd"

    def __post_init__(self):
        self._check_config()
        super().__post_init__()
