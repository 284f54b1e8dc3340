"""A drop-in for transformers' `apply_rotary_pos_emb`, on the trinix kernel.

    import transformers.models.llama.modeling_llama as llama
    from trinix.torch import hf
    llama.apply_rotary_pos_emb = hf.apply_rotary_pos_emb   # the model now rotates with trinix
"""

import numbers

from torch import Tensor

from trinix.torch.rope import apply_rotary_pos_emb as _apply_tables

_LAYOUT_OF_UNSQUEEZE_DIM = {1: "bhsd", 2: "bshd"}


def apply_rotary_pos_emb(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1, *,
                         backend: str = "auto"):
    """transformers' signature and semantics: q, k (batch, heads, seq, head_dim) with
    unsqueeze_dim=1, or (batch, seq, heads, head_dim) with unsqueeze_dim=2; cos and sin
    (batch, seq, rotary_dim), already at each token's position, rotary_dim <= head_dim (the
    columns past it pass through). Returns (q_embed, k_embed). `backend` as everywhere in
    trinix ("auto": trinix.backend.AUTO's choice on CUDA tensors, Triton eager and torch ops
    under torch.compile; torch ops elsewhere); cos and sin are constants to
    autograd, as transformers makes them."""
    if isinstance(unsqueeze_dim, bool) or not isinstance(unsqueeze_dim, numbers.Integral):
        raise TypeError(f"unsqueeze_dim must be an int, got {type(unsqueeze_dim).__name__}")
    if unsqueeze_dim not in _LAYOUT_OF_UNSQUEEZE_DIM:
        raise ValueError(f"unsqueeze_dim must be 1 (q, k as (batch, heads, seq, head_dim)) or 2 "
                         f"((batch, seq, heads, head_dim)), got {unsqueeze_dim}")
    return _apply_tables(q, k, cos, sin, layout=_LAYOUT_OF_UNSQUEEZE_DIM[unsqueeze_dim], backend=backend)
