"""`FastRoPEPositionEmbedding` for Flax Linen: the NNX module's fields and methods.

    >>> import jax.numpy as jnp
    >>> from trinix.jax.linen import FastRoPEPositionEmbedding
    >>> rope = FastRoPEPositionEmbedding(dim=64)
    >>> q, k = jnp.ones((2, 16, 8, 64)), jnp.ones((2, 16, 2, 64))
    >>> cos, sin = rope.apply({}, q)
    >>> q_rot, k_rot = rope.apply({}, q, k, cos, sin, method="apply_rotary_pos_emb")
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from trinix.jax.alibi import ALiBiMethods
from trinix.alibi import AlibiSpec
from trinix.jax.launcher import float_dtype_name, resolve_backend
from trinix.jax.rope import RoPEMethods
from trinix.rope import RopeSpec
from trinix.rope_scaling import RopeConfig


class FastRoPEPositionEmbedding(RoPEMethods, nn.Module):
    """Rotary position embedding for Linen; has no variables (`apply({}, ...)`). Fields and
    methods as `trinix.jax.FastRoPEPositionEmbedding`."""

    dim: int
    max_position_embeddings: int = 2048
    base: float = 10000.0
    use_triton: bool = True
    backend: str = "auto"
    layout: str = "bshd"
    interleaved: bool = False
    rope_config: RopeConfig | None = None

    def __post_init__(self):
        _ = self.spec  # made now, so that a bad field is refused at construction
        resolve_backend(self.backend, self.use_triton, "rope", platform="gpu")
        super().__post_init__()

    @functools.cached_property
    def spec(self) -> RopeSpec:
        return RopeSpec.of(self.dim, self.max_position_embeddings, self.base, self.rope_config, self.layout,
                           self.interleaved)


class FastALiBiPositionEmbedding(ALiBiMethods, nn.Module):
    """ALiBi for Linen; has no variables. Fields and methods as
    `trinix.jax.FastALiBiPositionEmbedding`::

        alibi = FastALiBiPositionEmbedding(num_heads=8)
        bias = alibi.apply({}, 16, 2)                                  # (2, 8, 16, 16)
        probs = alibi.apply({}, scores, method="softmax", causal=True)
    """

    num_heads: int
    max_seq_len: int = 2048
    use_triton: bool = True
    backend: str = "auto"
    causal: bool = False
    dtype: Any = jnp.float32
    max_bias: float = 8.0
    head_offset: int = 0
    total_heads: int | None = None

    def __post_init__(self):
        _ = self.spec  # made now, so that a bad field is refused at construction
        float_dtype_name(self.dtype)
        resolve_backend(self.backend, self.use_triton, "alibi", platform="gpu")
        super().__post_init__()

    @functools.cached_property
    def spec(self) -> AlibiSpec:
        return AlibiSpec.of(self.num_heads, self.max_seq_len, self.causal, self.max_bias, self.head_offset,
                            self.total_heads)
