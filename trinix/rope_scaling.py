"""RoPE frequency recipes, as transformers' `modeling_rope_utils` computes them: default,
linear, dynamic NTK, YaRN, Llama 3 and LongRoPE. Host-side float64 NumPy, no framework.

A recipe gives the inverse frequencies (rotary_dim / 2,) and the attention factor that cos
and sin are multiplied by; `trinix.reference` holds each formula.
"""

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
# Recipes whose frequencies depend on the sequence length (see inv_freq_and_scale).
SEQ_LEN_DEPENDENT = ("dynamic", "longrope")

# Parameters a recipe cannot do without; the original context and YaRN's and LongRoPE's
# factor fall back on max_position_embeddings instead (see RopeConfig).
_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor", "max_position_embeddings"),
    "yarn": (),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "longrope": ("short_factor", "long_factor"),
}
_USES_ORIGINAL_CONTEXT = ("yarn", "llama3", "longrope")

# Keys of transformers' rope parameters that map one to one onto RopeConfig fields.
_RECIPE_PARAMETERS = ("factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                      "low_freq_factor", "high_freq_factor", "short_factor", "long_factor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Which RoPE frequencies a model uses, with transformers' names and defaults.

    dim: the rotary dim (even; the first `dim` features of each head rotate). head_dim: the
    full head dim, >= dim (None: dim). base: rope_theta. rope_type: one of ROPE_TYPES.
    max_position_embeddings: the context the model is configured for; dynamic NTK rescales
    past it. original_max_position_embeddings: the pre-training context of YaRN, Llama 3 and
    LongRoPE (None: max_position_embeddings). factor: the context extension (linear, dynamic,
    Llama 3; for YaRN and LongRoPE, None means max_position_embeddings / the original context).
    attention_factor: YaRN's and LongRoPE's scale of cos and sin (None: their formula).
    YaRN: beta_fast, beta_slow, truncate, mscale, mscale_all_dim. Llama 3: low_freq_factor,
    high_freq_factor. LongRoPE: short_factor, long_factor, dim / 2 numbers each (stored as
    tuples, so the config stays hashable).

    >>> config = RopeConfig(dim=8, base=500000.0, rope_type="llama3", factor=8.0,
    ...                     low_freq_factor=1.0, high_freq_factor=4.0,
    ...                     original_max_position_embeddings=8192)
    >>> inv_freq, attention_factor = inv_freq_and_scale(config)
    >>> inv_freq.shape, attention_factor
    ((4,), 1.0)
    """

    dim: int
    head_dim: int | None = None
    base: float = 10000.0
    rope_type: str = "default"
    max_position_embeddings: int | None = None
    original_max_position_embeddings: int | None = None
    factor: float | None = None
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    mscale: float | None = None
    mscale_all_dim: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        for name in _REQUIRED[self.rope_type]:
            if getattr(self, name) is None:
                raise ValueError(f"rope_type {self.rope_type!r} needs {name}")
        if self.rope_type in _USES_ORIGINAL_CONTEXT and self.max_position_embeddings is None:
            if self.original_max_position_embeddings is None:
                raise ValueError(f"rope_type {self.rope_type!r} needs original_max_position_embeddings "
                                 "(or max_position_embeddings)")
            if self.factor is None and self.rope_type != "llama3":
                raise ValueError(f"rope_type {self.rope_type!r} needs factor (or "
                                 "max_position_embeddings, to take it as max_position_embeddings / "
                                 "original_max_position_embeddings)")

        _check_number("dim", self.dim, integer=True)
        if self.dim % 2:
            raise ValueError(f"dim (the rotary dim) must be even, got {self.dim}")
        if self.rope_type == "dynamic" and self.dim < 4:
            raise ValueError(f"dim must be >= 4 for dynamic NTK (its exponent is dim / (dim - 2)), "
                             f"got {self.dim}")
        if self.head_dim is not None:
            _check_number("head_dim", self.head_dim, integer=True)
            if self.dim > self.head_dim:
                raise ValueError(f"dim (the rotary dim, {self.dim}) must be <= head_dim ({self.head_dim})")
        for name in ("max_position_embeddings", "original_max_position_embeddings"):
            _check_number(name, getattr(self, name), integer=True, optional=True)
        for name in ("base", "beta_fast", "beta_slow"):
            _check_number(name, getattr(self, name))
        for name in ("factor", "attention_factor", "low_freq_factor", "high_freq_factor"):
            _check_number(name, getattr(self, name), optional=True)
        for name in ("mscale", "mscale_all_dim"):
            _check_number(name, getattr(self, name), optional=True, positive=False)
        if not isinstance(self.truncate, bool):
            raise TypeError(f"truncate must be a bool, got {self.truncate!r}")
        if self.beta_fast <= self.beta_slow:
            raise ValueError(f"beta_fast ({self.beta_fast}) must be greater than beta_slow "
                             f"({self.beta_slow})")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"high_freq_factor ({self.high_freq_factor}) must be greater than "
                             f"low_freq_factor ({self.low_freq_factor})")
        for name in ("short_factor", "long_factor"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _factor_list(name, getattr(self, name), self.dim // 2))

    @property
    def original_context(self) -> int:
        """original_max_position_embeddings, else max_position_embeddings."""
        if self.original_max_position_embeddings is None:
            return self.max_position_embeddings
        return self.original_max_position_embeddings

    @classmethod
    def from_hf(cls, config) -> "RopeConfig":
        """The RoPE of a transformers config object or dict (config.json), read as
        transformers 5 reads it: `rope_parameters` (transformers 5) or `rope_scaling` +
        `rope_theta` (4.x; `type` or `rope_type`); rope_theta, partial_rotary_factor there
        or beside it (10000 and 1 when absent); head_dim, else hidden_size //
        num_attention_heads; a top-level original_max_position_embeddings wins (Phi-3)."""
        if isinstance(config, Mapping):
            get = config.get
        else:
            def get(name):
                return getattr(config, name, None)
        params = get("rope_scaling") or get("rope_parameters") or {}
        if not isinstance(params, Mapping):
            raise TypeError(f"rope_parameters / rope_scaling must be a dict, got {params!r}")
        if any(isinstance(value, Mapping) for value in params.values()):
            raise ValueError(f"rope_parameters per layer type are not supported, got keys {list(params)}")

        head_dim = get("head_dim")
        if not head_dim:
            if not (get("hidden_size") and get("num_attention_heads")):
                raise ValueError("the config needs head_dim, or hidden_size and num_attention_heads")
            head_dim = get("hidden_size") // get("num_attention_heads")
        partial_rotary_factor = _first_given(params.get("partial_rotary_factor"),
                                             get("partial_rotary_factor"), 1.0)
        _check_number("partial_rotary_factor", partial_rotary_factor)
        return cls(
            dim=int(head_dim * partial_rotary_factor),
            head_dim=head_dim,
            base=_first_given(params.get("rope_theta"), get("rope_theta"), get("default_theta"), 10000.0),
            rope_type=params.get("rope_type", params.get("type", "default")),
            max_position_embeddings=get("max_position_embeddings"),
            original_max_position_embeddings=_first_given(
                get("original_max_position_embeddings"), params.get("original_max_position_embeddings")),
            truncate=bool(params.get("truncate", True)),  # transformers' truth value: null is False
            **{name: params[name] for name in _RECIPE_PARAMETERS if params.get(name) is not None},
        )


def inv_freq_and_scale(config: RopeConfig, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """(inv_freq (config.dim / 2,) float64, attention_factor) for a sequence of `seq_len`
    positions: max(position_ids) + 1, as transformers takes it (None: at initialisation, as
    transformers builds its buffers).

    seq_len matters to dynamic NTK (its base grows past max_position_embeddings) and to
    LongRoPE (long_factor when seq_len > the original context, short_factor otherwise).
    cos and sin of the positions are multiplied by attention_factor.
    """
    if seq_len is not None:
        _check_number("seq_len", seq_len, integer=True, positive=False)
        if seq_len < 0:
            raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    return _RECIPES[config.rope_type](config, seq_len)


def _default_inv_freq(dim: int, base: float) -> np.ndarray:
    return base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def _default(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    return _default_inv_freq(config.dim, config.base), 1.0


def _linear(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    return _default_inv_freq(config.dim, config.base) / config.factor, 1.0


def _dynamic(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    trained = config.max_position_embeddings
    length = trained if seq_len is None else max(seq_len, trained)
    growth = config.factor * length / trained - (config.factor - 1)
    return _default_inv_freq(config.dim, config.base * growth ** (config.dim / (config.dim - 2))), 1.0


def _yarn(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    dim, base, context = config.dim, config.base, config.original_context
    factor = _factor(config)

    def pair_with_turns(turns: float) -> float:
        # the frequency pair that makes `turns` full turns over the original context
        return dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_with_turns(config.beta_fast), pair_with_turns(config.beta_slow)
    if config.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    # 0 below `low` (fast pairs keep their frequency), 1 above `high` (slow pairs interpolate)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = _default_inv_freq(dim, base) * (1 - ramp + ramp / factor)

    if config.attention_factor is not None:
        return inv_freq, float(config.attention_factor)

    def yarn_mscale(scale: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0

    if config.mscale and config.mscale_all_dim:
        return inv_freq, yarn_mscale(config.mscale) / yarn_mscale(config.mscale_all_dim)
    return inv_freq, yarn_mscale(1.0)


def _llama3(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    inv_freq = _default_inv_freq(config.dim, config.base)
    turns = config.original_context * inv_freq / (2 * math.pi)  # over the original context
    # 1: kept (short wavelengths), 0: divided by factor (long ones), linear in between
    keep = np.clip((turns - config.low_freq_factor) / (config.high_freq_factor - config.low_freq_factor),
                   0.0, 1.0)
    return inv_freq * (keep + (1 - keep) / config.factor), 1.0


def _longrope(config: RopeConfig, seq_len: int | None) -> tuple[np.ndarray, float]:
    context = config.original_context
    long = seq_len is not None and seq_len > context
    rescale = np.asarray(config.long_factor if long else config.short_factor, dtype=np.float64)
    inv_freq = _default_inv_freq(config.dim, config.base) / rescale
    if config.attention_factor is not None:
        return inv_freq, float(config.attention_factor)
    factor = _factor(config)
    if factor <= 1:
        return inv_freq, 1.0
    return inv_freq, math.sqrt(1 + math.log(factor) / math.log(context))


_RECIPES = {"default": _default, "linear": _linear, "dynamic": _dynamic, "yarn": _yarn,
            "llama3": _llama3, "longrope": _longrope}


def _factor(config: RopeConfig) -> float:
    """factor, else (YaRN, LongRoPE) max_position_embeddings / the original context."""
    if config.factor is None:
        return config.max_position_embeddings / config.original_context
    return config.factor


def _first_given(*values):
    return next((value for value in values if value is not None), None)


def _check_number(name: str, value, *, integer: bool = False, optional: bool = False,
                  positive: bool = True) -> None:
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def _factor_list(name: str, values, length: int) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a list of numbers, got {values!r}")
    if len(values) != length:
        raise ValueError(f"{name} must have dim / 2 = {length} numbers, got {len(values)}")
    for value in values:
        _check_number(f"each {name} entry", value)
    return tuple(float(value) for value in values)
