"""What the benchmark measures, and the shape of its results (latest.json).

latest.json:
    {"meta": {"gpu": str, "dtype": str, "date": "YYYY-MM-DD", "copy_gbps": float,
              "versions": {name: version}},
     "rows": [{"method": "rope"|"alibi"|"alibi_attention", "config": str, "op": str, "provider": str,
               "ms": float|null, "burst_ms": float|null, "roofline_ms": float|null,
               "peak_mb": float|null, "note": str|null}]}

Rows of method "alibi_attention" (attention with ALiBi, its own section: attention.py) have
their own providers (ATTENTION_PROVIDERS) and one more field, "tflops": float|null.

Rows of method "rope" and config "<VARIANT_CONFIG>-<variant>" (op "apply") are the RoPE variants
(ROPE_VARIANTS), each changing one thing of that configuration.

burst_ms: on a GPU, the Triton (torch) row timed as the JAX rows are, for comparing the two
frameworks by one method; null elsewhere. A row with ms null says why in its note.
"""

import dataclasses
import datetime


@dataclasses.dataclass(frozen=True)
class Config:
    """One shape: RoPE q/k (batch, seq_len, heads, head_dim); ALiBi scores (batch, heads, seq_len,
    seq_len); attention q (batch, seq_q or seq_len, heads, head_dim), k and v (batch, seq_len,
    heads, head_dim)."""

    name: str
    heads: int
    seq_len: int
    batch: int
    head_dim: int | None = None  # RoPE and attention
    seq_q: int | None = None  # attention: queries, where fewer than the seq_len keys (decode)


# The original benchmark report's configurations, smallest first.
CONFIGS = {
    "rope": [Config("small", 32, 512, 4, 64), Config("medium", 64, 2048, 2, 128),
             Config("large", 64, 8192, 1, 128), Config("xl", 128, 32768, 1, 128)],
    "alibi": [Config("small", 32, 512, 4), Config("medium", 64, 2048, 2),
              Config("large", 128, 8192, 1), Config("xl", 128, 32768, 1)],
    # The ALiBi sizes with head_dim 128, and one decoding step over 8192 cached keys (first:
    # the least work, what --quick runs).
    "alibi_attention": [Config("decode", 64, 8192, 16, 128, seq_q=1), Config("medium", 64, 2048, 2, 128),
                        Config("large", 128, 8192, 1, 128), Config("xl", 128, 32768, 1, 128)],
}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}

METHODS = {
    "rope": {
        "name": "RoPE",
        "title": "RoPE (Rotary Position Embedding)",
        "used_in": "LLaMA, Qwen, Gemma, GPT-NeoX",
        "ops": ["generate", "apply", "total", "fwd_bwd"],
        "labels": {"generate": "Generate cos/sin", "apply": "Apply rotation", "total": "Total",
                   "fwd_bwd": "Forward + backward"},
    },
    "alibi": {
        "name": "ALiBi",
        "title": "ALiBi (Attention with Linear Biases)",
        "used_in": "BLOOM, MPT, some efficient models",
        "ops": ["slopes", "bias", "total", "add_to_scores", "softmax"],
        "labels": {"slopes": "Generate slopes", "bias": "Compute biases", "total": "Total",
                   "add_to_scores": "Add to scores", "softmax": "Softmax with bias"},
    },
    "alibi_attention": {
        "name": "Attention with ALiBi",
        "title": "Attention with ALiBi",
        "used_in": "BLOOM, MPT, Baichuan 13B",
        "ops": ["fwd", "fwd_bwd", "fwd_causal", "fwd_bwd_causal"],
        "labels": {"fwd": "Forward", "fwd_bwd": "Forward + backward", "fwd_causal": "Causal forward",
                   "fwd_bwd_causal": "Causal forward + backward"},
    },
}
ORIGINAL_METHODS = ("rope", "alibi")  # the original benchmark report's, with its sections and plots
# Provider -> its name in the report. FRAMEWORK_PROVIDERS: which framework runs each.
PROVIDERS = {"pytorch": "PyTorch", "triton": "Triton", "torch_compile": "torch.compile",
             "liger": "Liger", "jax_xla": "JAX (XLA)", "jax_triton": "JAX Triton"}
FRAMEWORK_PROVIDERS = {"torch": ("pytorch", "triton", "torch_compile", "liger"),
                       "jax": ("jax_xla", "jax_triton")}
KERNEL_PROVIDERS = ("triton", "liger", "jax_triton")  # Triton kernels: a CUDA GPU only
ATTENTION = "alibi_attention"
ATTENTION_PROVIDERS = {"triton": "trinix (torch)", "jax_triton": "trinix (JAX)", "flex": "FlexAttention",
                       "sdpa_no_bias": "SDPA, no bias", "sdpa_bias": "SDPA + bias",
                       "jax_cudnn_bias": "JAX cuDNN + bias", "jax_xla_bias": "JAX XLA + bias"}
ATTENTION_FRAMEWORK_PROVIDERS = {"torch": ("triton", "flex", "sdpa_no_bias", "sdpa_bias"),
                                 "jax": ("jax_triton", "jax_cudnn_bias", "jax_xla_bias")}
METHOD_PROVIDERS = {ATTENTION: ATTENTION_PROVIDERS}  # methods whose providers are not PROVIDERS

# RoPE as real models use it beyond the original four configurations, measured at one of them
# (the apply op; rows "<VARIANT_CONFIG>-<variant>" of method "rope"): variant -> (what it
# is, how it differs from that configuration).
VARIANT_CONFIG = "large"
ROPE_VARIANTS = {
    "gqa": ("GQA: k of 8 heads (LLaMA 3 70B, Qwen 2)", dict(k_heads=8)),
    "bhsd": ("(batch, heads, seq, head_dim) layout", dict(layout="bhsd")),
    "bf16": ("bfloat16", dict(dtype="bfloat16")),
    "fp32": ("float32", dict(dtype="float32")),
    "partial": ("32 of 128 columns rotate (Pythia, GPT-NeoX, Phi)", dict(rotary_dim=32)),
    "interleaved": ("interleaved pairs (RoFormer, Meta's LLaMA code)", dict(interleaved=True)),
    "gptj": ("64 of 128 columns in interleaved pairs (GPT-J)", dict(rotary_dim=64, interleaved=True)),
}
VARIANT_PROVIDERS = ("pytorch", "torch_compile", "liger", "triton")


def providers_of(method: str) -> dict[str, str]:
    """The providers of `method`'s rows, each with its name in the report."""
    return METHOD_PROVIDERS.get(method, PROVIDERS)


def every_provider() -> list[str]:
    """Every provider of any method, once (the choices of --providers)."""
    return list(dict.fromkeys(p for method in METHODS for p in providers_of(method)))


def original_methods(configs: dict) -> dict:
    """The part of `configs` (method -> configurations) of the original report's methods."""
    return {m: cs for m, cs in configs.items() if m in ORIGINAL_METHODS}


def variant_config(variant: str, base: str = VARIANT_CONFIG) -> str:
    """The rows' config name of a RoPE variant of configuration `base`."""
    return f"{base}-{variant}"


def on_gpu(meta: dict) -> bool:
    """Whether the run had a CUDA GPU (meta.gpu names it, or says "none (CPU only: ...)")."""
    return not meta["gpu"].startswith("none")


def row(method: str, config: str, op: str, provider: str, *, ms=None, burst_ms=None, roofline_ms=None,
        peak_mb=None, note: str | None = None, **fields) -> dict:
    """One result row, its times and sizes to five significant digits (far finer than the
    run-to-run noise); `fields`: the method's own (EXTRA_FIELDS), numbers too."""
    def rounded(value):
        return None if value is None else float(f"{value:.5g}")

    return dict(method=method, config=config, op=op, provider=provider, ms=rounded(ms),
                burst_ms=rounded(burst_ms), roofline_ms=rounded(roofline_ms), peak_mb=rounded(peak_mb),
                note=note, **{name: rounded(value) for name, value in fields.items()})


def row_order(configs: dict[str, list[Config]]):
    """Sort key of rows: method, configuration (the variants after the others), op, provider."""
    config_index = {(m, c.name): i for m, cs in configs.items() for i, c in enumerate(cs)}
    after = len(config_index)
    for i, variant in enumerate(ROPE_VARIANTS):
        config_index["rope", variant_config(variant)] = after + i
    methods = list(METHODS)

    def key(row):
        method = row["method"]
        return (methods.index(method), config_index[method, row["config"]], METHODS[method]["ops"].index(row["op"]),
                list(providers_of(method)).index(row["provider"]))

    return key


_OPTIONAL_FLOAT = (float, type(None))
_META_TYPES = {"gpu": str, "dtype": str, "date": str, "copy_gbps": float, "versions": dict}
_ROW_TYPES = {"method": str, "config": str, "op": str, "provider": str, "ms": _OPTIONAL_FLOAT,
              "burst_ms": _OPTIONAL_FLOAT, "roofline_ms": _OPTIONAL_FLOAT, "peak_mb": _OPTIONAL_FLOAT,
              "note": (str, type(None))}
EXTRA_FIELDS = {ATTENTION: {"tflops": _OPTIONAL_FLOAT}}  # a method's row fields beyond _ROW_TYPES


def _row_types(row) -> dict:
    """_ROW_TYPES and the fields of the row's method."""
    method = row.get("method") if isinstance(row, dict) else None
    return {**_ROW_TYPES, **(EXTRA_FIELDS.get(method, {}) if isinstance(method, str) else {})}


def _check_keys(where: str, value, types: dict) -> None:
    if not isinstance(value, dict) or set(value) != set(types):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{where} must have exactly the keys {sorted(types)}, got {got}")
    for key, expected in types.items():
        if isinstance(value[key], bool) or not isinstance(value[key], expected):
            raise ValueError(f"{where}.{key} must be {expected}, got {type(value[key]).__name__}")


def validate_results(results: dict) -> None:
    """Raise ValueError, naming the place, unless `results` has exactly latest.json's shape."""
    _check_keys("results", results, {"meta": dict, "rows": list})
    meta = results["meta"]
    _check_keys("meta", meta, _META_TYPES)
    try:
        datetime.datetime.strptime(meta["date"], "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"meta.date must be YYYY-MM-DD, got {meta['date']!r}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["versions"].items()):
        raise ValueError("meta.versions must map names to version strings")
    seen = set()
    for i, row in enumerate(results["rows"]):
        _check_keys(f"rows[{i}]", row, _row_types(row))
        if row["method"] not in METHODS:
            raise ValueError(f"rows[{i}].method must be one of {list(METHODS)}, got {row['method']!r}")
        if row["op"] not in METHODS[row["method"]]["ops"]:
            raise ValueError(f"rows[{i}].op {row['op']!r} is not an op of {row['method']}")
        if row["provider"] not in providers_of(row["method"]):
            raise ValueError(f"rows[{i}].provider must be one of {list(providers_of(row['method']))}, "
                             f"got {row['provider']!r}")
        if row["ms"] is None and not row["note"]:
            raise ValueError(f"rows[{i}] has ms null and no note saying why")
        key = (row["method"], row["config"], row["op"], row["provider"])
        if key in seen:
            raise ValueError(f"rows[{i}] repeats {key}")
        seen.add(key)
