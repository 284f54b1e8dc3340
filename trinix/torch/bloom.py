"""transformers' BLOOM with its attention on trinix: `use_trinix_attention(model)`.

BLOOM adds m * j (key position times the head's slope) to the scores under a causal mask;
softmax does not see a per-row constant, so that is trinix's causal ALiBi, m (j - p_i). One
trinix attention call then replaces the bias tensor, baddbmm, mask and softmax of each layer.

    model = BloomForCausalLM.from_pretrained(...)
    use_trinix_attention(model)          # every BloomAttention now runs trinix.torch.attention
"""

import types

import torch

from trinix import alibi as host
from trinix.torch.attention import attention
from trinix.torch.launcher import resolve_backend


def use_trinix_attention(model: torch.nn.Module, *, backend: str = "auto") -> torch.nn.Module:
    """Run every BloomAttention of `model` (a BLOOM transformers model) through trinix's
    attention on `backend`; returns `model`. Batches without padding only: a forward with an
    attention_mask that hides a token is refused (ValueError). Attention dropout and
    output_attentions have no trinix counterpart and are refused too."""
    from transformers.models.bloom.modeling_bloom import BloomAttention

    resolve_backend(backend, True, torch.device("cuda"), "attention")
    layers = [module for module in model.modules() if isinstance(module, BloomAttention)]
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no BloomAttention layer")
    for layer in layers:
        if layer.attention_dropout.p > 0:
            raise ValueError(f"attention_dropout={layer.attention_dropout.p}: trinix attention has no dropout")
        slopes = host.alibi_slopes(layer.num_heads)  # BLOOM's slopes: 2^(-8h/n), interleaved past 2^k heads
        layer.register_buffer("trinix_slopes", torch.tensor(slopes, dtype=torch.float32,
                                                            device=layer.dense.weight.device), persistent=False)
        layer.trinix_backend = backend
        layer.forward = types.MethodType(_bloom_attention_forward, layer)
    model.register_forward_pre_hook(_refuse_padding, with_kwargs=True)
    return model


def _refuse_padding(module, args, kwargs):
    """BLOOM shifts the positions of a padded row; trinix positions keys by index."""
    mask = kwargs.get("attention_mask")
    if mask is not None and not torch.compiler.is_compiling() and not bool(mask.all()):
        raise ValueError("use_trinix_attention serves batches without padding: attention_mask hides tokens")


def _bloom_attention_forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None,
                             use_cache=False, output_attentions=False, **kwargs):
    """BloomAttention.forward on trinix: (output, None); `alibi` and `attention_mask` are what
    the trinix call forms itself (causal ALiBi from the layer's slopes, keys after the cache's)."""
    if output_attentions:
        raise ValueError("trinix attention forms no attention probabilities: output_attentions must be False")
    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))  # (batch, heads, seq, head_dim)
    q_offset = 0
    if layer_past is not None:
        # Queries follow the cached keys; a static cache's unwritten slots lie after them, masked.
        q_offset = layer_past.get_seq_length(self.layer_idx)
        key, value = layer_past.update(key, value, self.layer_idx)
    context = attention(query, key, value, alibi=self.trinix_slopes, causal=True, scale=self.inv_norm_factor,
                        layout="bhsd", q_offset=q_offset, backend=self.trinix_backend)
    context = context.transpose(1, 2).reshape(batch_size, q_length, self.hidden_size)
    output = torch.nn.functional.dropout(self.dense(context), self.hidden_dropout, self.training)
    return residual + output, None
