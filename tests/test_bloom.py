"""trinix.torch.bloom: a tiny random-weight BLOOM whose attention runs on trinix gives
transformers' logits, whole and decoded token by token with a cache."""

import inspect

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM

from trinix.torch.bloom import use_trinix_attention


def _model(n_head: int = 3):
    torch.manual_seed(0)
    config = BloomConfig(vocab_size=64, hidden_size=32 * n_head, n_layer=2, n_head=n_head)
    return BloomForCausalLM(config).eval()


@pytest.mark.parametrize("backend", ["interpret", "torch"])
def test_logits_match_transformers(backend):
    model = _model()
    input_ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids).logits
        use_trinix_attention(model, backend=backend)
        actual = model(input_ids).logits
        # Decoding with a cache: a prefix, then one token at a time after it.
        prefix = model(input_ids[:, :20], use_cache=True)
        cache, steps = prefix.past_key_values, [prefix.logits]
        # transformers 5.25 names the argument `cache`, earlier 5.x `past_key_values`.
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        for i in range(20, 24):
            step = model(input_ids[:, i:i + 1], use_cache=True, **{name: cache})
            cache = step.past_key_values
            steps.append(step.logits)
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=2e-5, rtol=2e-5)


def test_padding_and_dropout_are_refused():
    model = use_trinix_attention(_model(), backend="torch")
    input_ids = torch.zeros((1, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="padding"):
        model(input_ids, attention_mask=torch.tensor([[0] * 2 + [1] * 6]))
    model = _model()
    model.config.attention_dropout = 0.1
    for layer in model.transformer.h:
        layer.self_attention.attention_dropout.p = 0.1
    with pytest.raises(ValueError, match="attention_dropout"):
        use_trinix_attention(model)
