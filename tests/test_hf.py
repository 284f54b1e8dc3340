"""trinix.torch.hf: transformers' apply_rotary_pos_emb replaced by the trinix kernel."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from trinix import reference as ref
from trinix.torch import hf

ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def _tiny_llama(rope_parameters) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, num_hidden_layers=2, vocab_size=100,
                         max_position_embeddings=64, rope_parameters=rope_parameters)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("backend", ["interpret", "torch"])
@pytest.mark.parametrize("rope", list(ROPE_PARAMETERS))
def test_patched_llama_gives_the_same_logits(rope, backend, monkeypatch):
    model = _tiny_llama(ROPE_PARAMETERS[rope])
    tokens = torch.randint(0, 100, (2, 40))  # past the original context of 16 for yarn/llama3
    calls = []

    def trinix_rope(*args, **kwargs):
        calls.append(args[0].shape)
        return hf.apply_rotary_pos_emb(*args, **kwargs, backend=backend)

    with torch.no_grad():
        expected = model(tokens).logits
        monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", trinix_rope)
        patched = model(tokens).logits
    assert len(calls) == 2, "the patched function must serve both layers"
    torch.testing.assert_close(patched, expected, atol=1e-4, rtol=1e-4)


def _compiled_graphs(rotate) -> list[list[tuple]]:
    """The forward and backward graphs AOTAutograd makes of a bf16 attention step with `rotate` as
    Llama calls it (projections, q and k on transposed views, causal attention, output
    projection) under torch.compile: each node's op, shape and strides."""
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append([(str(node.target), tuple(node.meta["val"].shape), node.meta["val"].stride())
                       for node in graph_module.graph.nodes
                       if node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor)])
        return graph_module

    def step(x, wq, wk, wv, wo, cos, sin):
        b, s, _ = x.shape
        q, k, v = (F.linear(x, w).view(b, s, -1, 32).transpose(1, 2) for w in (wq, wk, wv))
        q, k = rotate(q, k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.linear(o.transpose(1, 2).reshape(b, s, -1), wo)

    torch.manual_seed(0)
    x, wq, wo = (torch.randn(2, 16, 128), torch.randn(128, 128), torch.randn(128, 128))
    wk, wv = torch.randn(64, 128), torch.randn(64, 128)
    leaves = [t.bfloat16().requires_grad_() for t in (x, wq, wk, wv, wo)]
    inv_freq = ref.rope_inv_freq(32)
    cos, sin = (torch.from_numpy(t).bfloat16()[None].expand(2, 16, 32)
                for t in ref.rope_cos_sin(np.arange(16), inv_freq))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=False,
                             backend=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    compiled(*leaves, cos, sin).float().sum().backward()
    return graphs


def test_compiled_drop_in_is_transformers_program():
    """Under torch.compile, "auto" gives the compiler transformers' rotation: the same forward and
    backward graphs, so that Inductor makes the same kernels (the gradient of q and k written
    once, in the projections' layout)."""
    ours = _compiled_graphs(functools.partial(hf.apply_rotary_pos_emb, backend="auto"))
    assert len(ours) == 2
    assert ours == _compiled_graphs(modeling_llama.apply_rotary_pos_emb)


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_partial_rotation_when_cos_is_narrower_than_head_dim(unsqueeze_dim):
    q = torch.randn(2, 3, 10, 32) if unsqueeze_dim == 1 else torch.randn(2, 10, 3, 32)
    k = torch.randn_like(q)
    inv_freq = ref.rope_inv_freq(16)
    cos, sin = (torch.from_numpy(t).float()[None].expand(2, 10, 16)
                for t in ref.rope_cos_sin(np.arange(10), inv_freq))
    q_rot, k_rot = hf.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim, backend="interpret")
    c, s = (np.expand_dims(t.numpy(), unsqueeze_dim) for t in (cos, sin))
    np.testing.assert_allclose(q_rot.numpy(), ref.rope_rotate(q.numpy(), c, s), atol=2e-6)
    np.testing.assert_allclose(k_rot.numpy(), ref.rope_rotate(k.numpy(), c, s), atol=2e-6)
    np.testing.assert_array_equal(q_rot[..., 16:].numpy(), q[..., 16:].numpy())


HF_CONFIGS = {
    **ROPE_PARAMETERS,
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0,
                 "original_max_position_embeddings": 16,
                 "short_factor": [1.0 + i / 8 for i in range(8)],
                 "long_factor": [2.0 + i / 4 for i in range(8)]},
}


@pytest.mark.parametrize("backend", ["interpret", "torch"])
@pytest.mark.parametrize("rope", list(HF_CONFIGS))
@pytest.mark.parametrize("seq_len", [12, 100])  # inside and past the original contexts
def test_module_from_hf_config_gives_the_models_cos_sin(rope, backend, seq_len):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from trinix import FastRoPEPositionEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                         rope_parameters=HF_CONFIGS[rope])
    x = torch.zeros(1, seq_len, 4, 16)
    expected_cos, expected_sin = LlamaRotaryEmbedding(config)(x, torch.arange(seq_len)[None])
    rope_module = FastRoPEPositionEmbedding.from_hf_config(config, backend=backend)
    cos, sin = rope_module(x, seq_len)
    torch.testing.assert_close(cos, expected_cos[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(sin, expected_sin[0], atol=2e-5, rtol=1e-5)
    # The rotation computed in the kernel agrees with the table the module gives.
    q, k = torch.randn(1, seq_len, 4, 16), torch.randn(1, seq_len, 2, 16)
    by_ids = rope_module.rotate(q, k, position_ids=torch.arange(seq_len)[None])
    by_table = rope_module.apply_rotary_pos_emb(q, k, cos, sin)
    for rotated, expected in zip((*rope_module.rotate(q, k), *by_ids), (*by_table, *by_table)):
        torch.testing.assert_close(rotated, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["interpret", "xla"])
@pytest.mark.parametrize("rope", list(HF_CONFIGS))
def test_flax_modules_from_hf_config_give_the_models_cos_sin(rope, backend):
    import jax.numpy as jnp
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from trinix.jax import FastRoPEPositionEmbedding
    from trinix.jax import linen

    seq_len = 100  # past every original context here
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                         rope_parameters=HF_CONFIGS[rope])
    expected_cos, expected_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(seq_len)[None])
    x = jnp.zeros((1, seq_len, 4, 16))
    nnx_module = FastRoPEPositionEmbedding.from_hf_config(config, backend=backend)
    linen_module = linen.FastRoPEPositionEmbedding.from_hf_config(config, backend=backend)
    for cos, sin in (nnx_module(x, seq_len), linen_module.apply({}, x, seq_len)):
        # XLA forms angles in float32: at position 100 that costs ~1e-5.
        np.testing.assert_allclose(np.asarray(cos), expected_cos[0].numpy(), atol=5e-5)
        np.testing.assert_allclose(np.asarray(sin), expected_sin[0].numpy(), atol=5e-5)
