"""RoPE frequency recipes (trinix.rope_scaling) against their formulas in trinix.reference and
against transformers' own ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding."""

import dataclasses
import doctest
import re

import numpy as np
import pytest
import torch
import transformers
from transformers import GPTNeoXConfig, LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from trinix import reference as ref
from trinix import rope_scaling
from trinix.rope_scaling import RopeConfig, inv_freq_and_scale

SHORT = tuple(1.0 + 0.05 * i for i in range(32))  # LongRoPE factors, sliced to dim / 2
LONG = tuple(1.5 + 0.5 * i for i in range(32))
LONGROPE_48 = dict(rope_type="longrope", short_factor=SHORT[:24], long_factor=LONG[:24],
                   max_position_embeddings=2048, original_max_position_embeddings=512)

# The grid: every recipe, its optional parameters set and unset, partial rotation; all with
# head_dim and max_position_embeddings given, as a transformers config has them.
CONFIGS = {
    "default": RopeConfig(dim=64, head_dim=64, max_position_embeddings=512),
    "default-partial": RopeConfig(dim=32, head_dim=80, max_position_embeddings=512),
    "linear": RopeConfig(dim=64, head_dim=64, rope_type="linear", factor=4.0, max_position_embeddings=2048),
    "linear-below-1": RopeConfig(dim=72, head_dim=72, rope_type="linear", factor=0.5, base=5e5,
                                 max_position_embeddings=512),
    "dynamic": RopeConfig(dim=64, head_dim=64, rope_type="dynamic", factor=2.0, max_position_embeddings=512),
    "dynamic-partial": RopeConfig(dim=36, head_dim=72, rope_type="dynamic", factor=8.0, base=1e6,
                                  max_position_embeddings=512),
    "yarn": RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0, max_position_embeddings=2048,
                       original_max_position_embeddings=512),
    "yarn-untruncated-betas": RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0, beta_fast=16.0,
                                         beta_slow=2.0, truncate=False, max_position_embeddings=2048,
                                         original_max_position_embeddings=512),
    "yarn-mscale": RopeConfig(dim=128, head_dim=128, rope_type="yarn", factor=40.0, base=1e4, mscale=1.0,
                              mscale_all_dim=0.707, max_position_embeddings=163840,
                              original_max_position_embeddings=4096),
    "yarn-attention-factor": RopeConfig(dim=48, head_dim=96, rope_type="yarn", factor=8.0,
                                        attention_factor=0.9, max_position_embeddings=4096,
                                        original_max_position_embeddings=512),
    "yarn-implicit-factor": RopeConfig(dim=64, head_dim=64, rope_type="yarn", base=1e6,
                                       max_position_embeddings=2048, original_max_position_embeddings=256),
    "yarn-no-original": RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=2.0,
                                   max_position_embeddings=1024),
    # the ramp's ends clamped: past dim / 2 (a long context), both at 0 (low == high)
    "yarn-long-context": RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0,
                                    max_position_embeddings=524288, original_max_position_embeddings=131072),
    "yarn-tiny-context": RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0,
                                    max_position_embeddings=24, original_max_position_embeddings=6),
    "llama3": RopeConfig(dim=128, head_dim=128, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, base=5e5, max_position_embeddings=131072,
                         original_max_position_embeddings=8192),
    "llama3-small-context": RopeConfig(dim=64, head_dim=64, rope_type="llama3", factor=32.0,
                                       low_freq_factor=2.0, high_freq_factor=8.0, base=5e5,
                                       max_position_embeddings=4096, original_max_position_embeddings=256),
    "longrope": RopeConfig(dim=48, head_dim=48, **LONGROPE_48),
    "longrope-factor": RopeConfig(dim=48, head_dim=96, factor=16.0, **LONGROPE_48),
    "longrope-attention-factor": RopeConfig(dim=48, head_dim=48, attention_factor=1.2, **LONGROPE_48),
}
# Below, at and past the original context (512 for most), past max_position_embeddings.
SEQ_LENS = [None, 0, 100, 512, 513, 3000]


@pytest.fixture(autouse=True)
def quiet_transformers():
    """transformers logs warnings about configs it accepts (e.g. an implicit YaRN factor)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def reference_recipe(config: RopeConfig, seq_len):
    """inv_freq and attention factor from trinix.reference, by rope type."""
    dim, base, t = config.dim, config.base, config.rope_type
    context = config.original_max_position_embeddings or config.max_position_embeddings
    factor = config.factor or config.max_position_embeddings / context
    if t == "default":
        return ref.rope_inv_freq(dim, base), 1.0
    if t == "linear":
        return ref.rope_inv_freq_linear(dim, base, factor), 1.0
    if t == "dynamic":
        return ref.rope_inv_freq_dynamic(dim, base, factor, config.max_position_embeddings, seq_len), 1.0
    if t == "llama3":
        return ref.rope_inv_freq_llama3(dim, base, factor, config.low_freq_factor, config.high_freq_factor,
                                        context), 1.0
    if t == "yarn":
        inv_freq = ref.rope_inv_freq_yarn(dim, base, factor, context, config.beta_fast, config.beta_slow,
                                          config.truncate)
        scale = ref.rope_yarn_attention_factor(factor, config.mscale, config.mscale_all_dim)
    else:
        inv_freq = ref.rope_inv_freq_longrope(dim, base, config.short_factor, config.long_factor, context,
                                              seq_len)
        scale = ref.rope_longrope_attention_factor(factor, context)
    return inv_freq, scale if config.attention_factor is None else config.attention_factor


NOT_RECIPE_PARAMETERS = ("dim", "head_dim", "base", "rope_type", "max_position_embeddings")


def hf_rope_parameters(config: RopeConfig) -> dict:
    """config as transformers 5's rope_parameters."""
    params = {"rope_type": config.rope_type, "rope_theta": config.base}
    if config.dim != config.head_dim:
        params["partial_rotary_factor"] = config.dim / config.head_dim
    for field in dataclasses.fields(RopeConfig):
        value = getattr(config, field.name)
        if field.name not in NOT_RECIPE_PARAMETERS and value is not None:
            params[field.name] = list(value) if isinstance(value, tuple) else value
    if config.rope_type == "yarn":
        params.setdefault("factor", None)  # a key YaRN requires, whose None transformers accepts
    return params


def hf_config(config: RopeConfig) -> LlamaConfig:
    """A transformers LlamaConfig with config's RoPE."""
    return LlamaConfig(hidden_size=4 * config.head_dim, num_attention_heads=4, head_dim=config.head_dim,
                       max_position_embeddings=config.max_position_embeddings,
                       rope_parameters=hf_rope_parameters(config))


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("name", CONFIGS)
def test_recipe_matches_reference(name, seq_len):
    config = CONFIGS[name]
    inv_freq, scale = inv_freq_and_scale(config, seq_len)
    expected_inv_freq, expected_scale = reference_recipe(config, seq_len)
    assert inv_freq.dtype == np.float64 and inv_freq.shape == (config.dim // 2,)
    np.testing.assert_allclose(inv_freq, expected_inv_freq, rtol=1e-13, atol=0)
    assert isinstance(scale, float)
    assert scale == pytest.approx(expected_scale, rel=1e-14)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("name", CONFIGS)
def test_recipe_matches_transformers(name, seq_len):
    config = CONFIGS[name]
    init = ROPE_INIT_FUNCTIONS.get(config.rope_type, GPTNeoXRotaryEmbedding.compute_default_rope_parameters)
    hf_inv_freq, hf_scale = init(hf_config(config), "cpu", seq_len=seq_len)
    inv_freq, scale = inv_freq_and_scale(config, seq_len)
    # transformers computes the frequencies in float32 (a few ulp from base ** exponent).
    np.testing.assert_allclose(inv_freq, hf_inv_freq.double().numpy(), rtol=2e-6, atol=0)
    assert scale == pytest.approx(hf_scale, rel=1e-12)


@pytest.mark.parametrize("name", CONFIGS)
def test_from_hf_reads_back_the_grid(name):
    hf = hf_config(CONFIGS[name])
    # transformers writes the original context it defaults to max_position_embeddings
    config = dataclasses.replace(CONFIGS[name], original_max_position_embeddings=hf.rope_parameters.get(
        "original_max_position_embeddings"))
    assert RopeConfig.from_hf(hf) == config
    assert RopeConfig.from_hf(hf.to_dict()) == config


LLAMA_ROPE = {
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    "yarn-mscale": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0,
                        mscale_all_dim=0.8, beta_fast=8.0, truncate=False),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "longrope": dict(rope_type="longrope", short_factor=list(SHORT[:16]), long_factor=list(LONG[:16]),
                     original_max_position_embeddings=64),
}


@pytest.mark.parametrize("seq_len", [40, 64, 65, 200, 300])  # original context 64, max 256
@pytest.mark.parametrize("name", LLAMA_ROPE)
def test_cos_sin_match_llama_rotary_embedding(name, seq_len):
    """A tiny LlamaConfig's rotary embedding gives cos(p * inv_freq) * attention_factor."""
    hf = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=256,
                     rope_parameters=dict(rope_theta=10000.0, **LLAMA_ROPE[name]))
    positions = torch.arange(seq_len)[None]
    cos, sin = LlamaRotaryEmbedding(hf)(torch.zeros(1, seq_len, 64), positions)

    inv_freq, scale = inv_freq_and_scale(RopeConfig.from_hf(hf), seq_len)
    expected_cos, expected_sin = ref.rope_cos_sin(positions[0].numpy(), inv_freq)
    # float32 angles of up to ~300 rad: a few ulp of the angle (1.3e-5 seen)
    np.testing.assert_allclose(cos[0].double().numpy(), scale * expected_cos, rtol=0, atol=5e-5)
    np.testing.assert_allclose(sin[0].double().numpy(), scale * expected_sin, rtol=0, atol=5e-5)


HEADS = dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096)
FROM_HF = {
    "v5-dict": (
        HEADS | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                     "original_max_position_embeddings": 1024}},
        RopeConfig(dim=64, head_dim=64, base=1e6, rope_type="yarn", factor=4.0, max_position_embeddings=4096,
                   original_max_position_embeddings=1024)),
    "v5-dict-partial": (
        HEADS | {"head_dim": 80, "rope_parameters": {"rope_type": "default", "rope_theta": 5e4,
                                                     "partial_rotary_factor": 0.4}},
        RopeConfig(dim=32, head_dim=80, base=5e4, max_position_embeddings=4096)),
    "v4-dict-type": (
        HEADS | {"head_dim": 128, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}},
        RopeConfig(dim=128, head_dim=128, base=5e5, rope_type="linear", factor=2.0,
                   max_position_embeddings=4096)),
    "v4-dict-rope-type-partial": (
        HEADS | {"rope_theta": 1e4, "partial_rotary_factor": 0.5,
                 "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}},
        RopeConfig(dim=32, head_dim=64, rope_type="dynamic", factor=4.0, max_position_embeddings=4096)),
    "v5-dict-truncate-null": (
        HEADS | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "truncate": None}},
        RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0, truncate=False,
                   max_position_embeddings=4096)),
    "v4-dict-no-rope": (
        HEADS,
        RopeConfig(dim=64, head_dim=64, max_position_embeddings=4096)),
    "v4-dict-phi3": (  # the top-level original context wins over rope_scaling's
        HEADS | {"original_max_position_embeddings": 512, "rope_theta": 1e4,
                 "rope_scaling": {"type": "longrope", "short_factor": list(SHORT[:32]),
                                  "long_factor": list(LONG[:32]), "original_max_position_embeddings": 2048}},
        RopeConfig(dim=64, head_dim=64, rope_type="longrope", short_factor=SHORT[:32], long_factor=LONG[:32],
                   max_position_embeddings=4096, original_max_position_embeddings=512)),
    "v4-llama-object": (
        LlamaConfig(**HEADS, rope_theta=5e5, rope_scaling={"type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 1024}),
        RopeConfig(dim=64, head_dim=64, base=5e5, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, max_position_embeddings=4096,
                   original_max_position_embeddings=1024)),
    "v5-llama-object": (
        LlamaConfig(**HEADS, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
        RopeConfig(dim=64, head_dim=64, rope_type="yarn", factor=4.0, max_position_embeddings=4096,
                   original_max_position_embeddings=4096)),
    "phi3-object": (
        Phi3Config(**HEADS, original_max_position_embeddings=512,
                   rope_scaling={"type": "longrope", "short_factor": list(SHORT[:32]),
                                 "long_factor": list(LONG[:32])}),
        RopeConfig(dim=64, head_dim=64, rope_type="longrope", short_factor=SHORT[:32], long_factor=LONG[:32],
                   max_position_embeddings=4096, original_max_position_embeddings=512)),
    "gpt-neox-object": (
        GPTNeoXConfig(**HEADS, rotary_pct=0.25),
        RopeConfig(dim=16, head_dim=64, max_position_embeddings=4096)),
}


@pytest.mark.parametrize("name", FROM_HF)
def test_from_hf(name):
    source, expected = FROM_HF[name]
    assert RopeConfig.from_hf(source) == expected


def test_factor_lists_become_tuples():
    config = RopeConfig(dim=4, rope_type="longrope", short_factor=[1, 2], long_factor=np.array([3.0, 4.0]),
                        max_position_embeddings=8)
    assert config.short_factor == (1.0, 2.0) and config.long_factor == (3.0, 4.0)
    assert hash(config) == hash(dataclasses.replace(config))


def test_docstring_example():
    assert doctest.testmod(rope_scaling).failed == 0


LONGROPE = dict(rope_type="longrope", short_factor=[1.0] * 4, long_factor=[2.0] * 4,
                max_position_embeddings=64)
BAD_CONFIGS = [
    (dict(dim=8, rope_type="ntk"), ValueError, "rope_type"),
    (dict(dim=8, rope_type=None), ValueError, "rope_type"),
    (dict(dim=7), ValueError, "dim"),
    (dict(dim=8.0), TypeError, "dim"),
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=10, head_dim=8), ValueError, "head_dim"),
    (dict(dim=8, base=0.0), ValueError, "base"),
    (dict(dim=8, base="10000"), TypeError, "base"),
    (dict(dim=8, base=None), TypeError, "base"),
    (dict(dim=8, rope_type="linear"), ValueError, "factor"),
    (dict(dim=8, rope_type="linear", factor=0.0), ValueError, "factor"),
    (dict(dim=8, rope_type="linear", factor=-2.0), ValueError, "factor"),
    (dict(dim=8, rope_type="linear", factor=float("nan")), ValueError, "factor"),
    (dict(dim=8, rope_type="dynamic", factor=2.0), ValueError, "max_position_embeddings"),
    (dict(dim=2, rope_type="dynamic", factor=2.0, max_position_embeddings=64), ValueError, "dim"),
    (dict(dim=8, rope_type="dynamic", factor=2.0, max_position_embeddings=64.5), TypeError,
     "max_position_embeddings"),
    (dict(dim=8, rope_type="yarn", factor=2.0), ValueError, "original_max_position_embeddings"),
    (dict(dim=8, rope_type="yarn", original_max_position_embeddings=64), ValueError, "factor"),
    (dict(dim=8, rope_type="yarn", factor=2.0, max_position_embeddings=64, beta_fast=1.0), ValueError,
     "beta_fast"),
    (dict(dim=8, rope_type="yarn", factor=2.0, max_position_embeddings=64, beta_slow=None), TypeError,
     "beta_slow"),
    (dict(dim=8, rope_type="yarn", factor=2.0, max_position_embeddings=64, truncate="yes"), TypeError,
     "truncate"),
    (dict(dim=8, rope_type="yarn", factor=2.0, max_position_embeddings=64, attention_factor=0.0), ValueError,
     "attention_factor"),
    (dict(dim=8, rope_type="yarn", factor=2.0, max_position_embeddings=64, mscale="1"), TypeError, "mscale"),
    (dict(dim=8, rope_type="yarn", factor=2.0, original_max_position_embeddings=0,
          max_position_embeddings=64), ValueError, "original_max_position_embeddings"),
    (dict(dim=8, rope_type="llama3", factor=8.0, high_freq_factor=4.0, max_position_embeddings=64),
     ValueError, "low_freq_factor"),
    (dict(dim=8, rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=4.0,
          max_position_embeddings=64), ValueError, "high_freq_factor"),
    (LONGROPE | dict(dim=8, long_factor=None), ValueError, "long_factor"),
    (LONGROPE | dict(dim=8, short_factor=[1.0] * 3), ValueError, "short_factor"),
    (LONGROPE | dict(dim=10), ValueError, "short_factor"),
    (LONGROPE | dict(dim=8, long_factor=[2.0, 2.0, 0.0, 2.0]), ValueError, "long_factor"),
    (LONGROPE | dict(dim=8, long_factor=2.0), TypeError, "long_factor"),
    (LONGROPE | dict(dim=8, short_factor=[1.0, "2", 1.0, 1.0]), TypeError, "short_factor"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_CONFIGS)
def test_bad_config(kwargs, error, name):
    with pytest.raises(error, match=re.escape(name)):
        RopeConfig(**kwargs)


@pytest.mark.parametrize("seq_len, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_seq_len(seq_len, error):
    with pytest.raises(error, match="seq_len"):
        inv_freq_and_scale(RopeConfig(dim=8), seq_len)


BAD_HF = [
    (HEADS | {"rope_parameters": {"rope_type": "su", "rope_theta": 1e4}}, ValueError, "rope_type"),
    (HEADS | {"rope_scaling": {"type": "linear"}}, ValueError, "factor"),
    (HEADS | {"rope_scaling": {"type": "linear", "factor": 0}}, ValueError, "factor"),
    (HEADS | {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 31, "long_factor": [1.0] * 32}},
     ValueError, "short_factor"),
    (HEADS | {"partial_rotary_factor": 0.3}, ValueError, "dim"),  # 64 * 0.3 -> 19
    (HEADS | {"partial_rotary_factor": 1.5}, ValueError, "head_dim"),
    (HEADS | {"partial_rotary_factor": 0.0}, ValueError, "partial_rotary_factor"),
    (HEADS | {"rope_parameters": {"full_attention": {"rope_type": "default"}}}, ValueError,
     "rope_parameters"),
    (HEADS | {"rope_scaling": [("type", "linear")]}, TypeError, "rope_scaling"),
    ({"max_position_embeddings": 64}, ValueError, "head_dim"),
]


@pytest.mark.parametrize("config, error, name", BAD_HF)
def test_from_hf_bad_config(config, error, name):
    with pytest.raises(error, match=re.escape(name)):
        RopeConfig.from_hf(config)


def test_dynamic_tables_at_negative_offsets_take_the_rotations_extent():
    """cos/sin of a dynamic-NTK module at offset -10 (positions -10 .. -8) use the original
    frequencies, as rotating at that offset does (a negative offset counts as 0 in both), in
    both frameworks."""
    import trinix.jax
    import trinix.torch

    config = RopeConfig(dim=8, rope_type="dynamic", factor=2.0, max_position_embeddings=16)
    positions = np.arange(-10, -7)
    expected = ref.rope_cos_sin(positions, ref.rope_inv_freq(8))
    x = np.zeros((1, 3, 2, 8), np.float32)
    torch_rope = trinix.torch.FastRoPEPositionEmbedding(8, 16, rope_config=config, backend="torch")
    jax_rope = trinix.jax.FastRoPEPositionEmbedding(8, 16, rope_config=config, backend="xla")
    for cos_sin in (torch_rope(torch.from_numpy(x), 3, offset=-10), jax_rope(x, 3, offset=-10)):
        for actual, wanted in zip(cos_sin, expected):
            np.testing.assert_allclose(np.asarray(actual), wanted, rtol=1e-6, atol=1e-6)
