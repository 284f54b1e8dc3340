"""trinix: RoPE and ALiBi position encodings as Triton kernels for PyTorch and JAX/Flax.

`from trinix import FastRoPEPositionEmbedding` gives the PyTorch module (the original API); the
JAX/Flax modules live in `trinix.jax` (NNX) and `trinix.jax.linen`. Nothing here imports a
framework until a name that needs one is used.
"""

__version__ = "0.2.0"

_TORCH_NAMES = {
    "FastRoPEPositionEmbedding": "trinix.torch.rope",
    "FastALiBiPositionEmbedding": "trinix.torch.alibi",
}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'trinix' has no attribute {name!r}")


__all__ = list(_TORCH_NAMES)
