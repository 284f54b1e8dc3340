"""What the benchmark measures, and the shape of its results (latest.json).

latest.json:
    {"meta": {"gpu": str, "dtype": str, "date": "YYYY-MM-DD", "copy_gbps": float,
              "versions": {name: version}},
     "rows": [{"method": "rope"|"alibi"|"llama_block"|"bloom_block", "config": str, "op": str,
               "provider": str, "ms": float|null, "burst_ms": float|null, "roofline_ms": float|null,
               "peak_mb": float|null, "note": str|null}]}

Rows of method "rope" and config "<VARIANT_CONFIG>-<variant>" (op "apply") are the RoPE variants
(ROPE_VARIANTS), each changing one thing of that configuration.

Rows of methods "llama_block" and "bloom_block" time whole blocks (BLOCKS), ops "fwd" and
"fwd_bwd", providers of their own; their roofline_ms and burst_ms are null.

burst_ms: on a GPU, the Triton (torch) row timed as the JAX rows are, for comparing the two
frameworks by one method; null elsewhere. A row with ms null says why in its note.
"""

import dataclasses
import datetime


@dataclasses.dataclass(frozen=True)
class Config:
    """One shape: RoPE q/k (batch, seq_len, heads, head_dim); ALiBi scores (batch, heads, seq_len, seq_len)."""

    name: str
    heads: int
    seq_len: int
    batch: int
    head_dim: int | None = None  # RoPE only


# The original benchmark report's configurations, smallest first.
CONFIGS = {
    "rope": [Config("small", 32, 512, 4, 64), Config("medium", 64, 2048, 2, 128),
             Config("large", 64, 8192, 1, 128), Config("xl", 128, 32768, 1, 128)],
    "alibi": [Config("small", 32, 512, 4), Config("medium", 64, 2048, 2),
              Config("large", 128, 8192, 1), Config("xl", 128, 32768, 1)],
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
}
# Provider -> its name in the report. FRAMEWORK_PROVIDERS: which framework runs each.
PROVIDERS = {"pytorch": "PyTorch", "triton": "Triton", "torch_compile": "torch.compile",
             "liger": "Liger", "jax_xla": "JAX (XLA)", "jax_triton": "JAX Triton"}
FRAMEWORK_PROVIDERS = {"torch": ("pytorch", "triton", "torch_compile", "liger"),
                       "jax": ("jax_xla", "jax_triton")}
KERNEL_PROVIDERS = ("triton", "liger", "jax_triton")  # Triton kernels: a CUDA GPU only

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

# Whole blocks, what a model gains: each in bfloat16 (whatever --dtype says), forward and
# forward + backward. Providers: name -> (framework, what it runs); `baseline`: the provider
# each framework's providers are compared with.
BLOCK_DTYPE = "bfloat16"
BLOCK_OPS = {"fwd": "Forward", "fwd_bwd": "Forward + backward"}
BLOCK_CONFIGS = {
    "llama_block": [Config("s8192b1", 32, 8192, 1, 128), Config("s2048b8", 32, 2048, 8, 128)],
    "bloom_block": [Config("s2048b1", 32, 2048, 1, 128), Config("s8192b1", 32, 8192, 1, 128)],
}
BLOCKS = {
    "llama_block": {
        "title": "Llama-style block (RoPE)",
        "what": "x (batch, seq, 4096) -> q, k, v projections (32 q heads, 8 kv heads, head_dim 128) -> "
                "RoPE (positions 0..seq-1, base 500000) -> causal attention (SDPA; in JAX "
                "jax.nn.dot_product_attention, cuDNN where available) -> output projection",
        "providers": {"eager": ("torch", "PyTorch eager, transformers' rotation"),
                      "eager_trinix": ("torch", "PyTorch eager, trinix"),
                      "compile": ("torch", "torch.compile, transformers' rotation"),
                      "compile_trinix": ("torch", "torch.compile, trinix"),
                      "jax": ("jax", "JAX jit, jnp rotation"),
                      "jax_trinix": ("jax", "JAX jit, trinix")},
        "baseline": {"torch": "compile", "jax": "jax"},
    },
    "bloom_block": {
        "title": "BLOOM-style block (ALiBi)",
        "what": "x (batch, seq, 4096) -> fused qkv projection (32 heads, head_dim 128) -> causal "
                "attention with ALiBi -> dense projection",
        "providers": {"eager": ("torch", "transformers' BLOOM attention (baddbmm onto the ALiBi tensor)"),
                      "flex": ("torch", "FlexAttention (compiled), ALiBi score_mod, causal block mask"),
                      "sdpa_bias": ("torch", "SDPA with a materialized ALiBi + causal bias"),
                      "trinix": ("torch", "trinix attention"),
                      "jax_cudnn_bias": ("jax", "jax.nn.dot_product_attention with a materialized bias"),
                      "jax_trinix": ("jax", "trinix attention in JAX")},
        "baseline": {"torch": "eager", "jax": "jax_cudnn_bias"},
    },
}


def operation_configs(configs: dict[str, list[Config]]) -> dict[str, list[Config]]:
    """The configurations of the operations (METHODS) among `configs`, without the blocks' (nor a
    method without any)."""
    return {method: cs for method, cs in configs.items() if method in METHODS and cs}


def ops_of(method: str) -> list[str]:
    return METHODS[method]["ops"] if method in METHODS else list(BLOCK_OPS)


def providers_of(method: str) -> list[str]:
    return list(PROVIDERS) if method in METHODS else list(BLOCKS[method]["providers"])


def variant_config(variant: str, base: str = VARIANT_CONFIG) -> str:
    """The rows' config name of a RoPE variant of configuration `base`."""
    return f"{base}-{variant}"


def on_gpu(meta: dict) -> bool:
    """Whether the run had a CUDA GPU (meta.gpu names it, or says "none (CPU only: ...)")."""
    return not meta["gpu"].startswith("none")


def row(method: str, config: str, op: str, provider: str, *, ms=None, burst_ms=None, roofline_ms=None,
        peak_mb=None, note: str | None = None) -> dict:
    """One result row, its times and sizes to five significant digits (far finer than the
    run-to-run noise)."""
    def rounded(value):
        return None if value is None else float(f"{value:.5g}")

    return dict(method=method, config=config, op=op, provider=provider, ms=rounded(ms),
                burst_ms=rounded(burst_ms), roofline_ms=rounded(roofline_ms), peak_mb=rounded(peak_mb),
                note=note)


def row_order(configs: dict[str, list[Config]]):
    """Sort key of rows: method, configuration (the variants after the others), op, provider."""
    config_index = {(m, c.name): i for m, cs in configs.items() for i, c in enumerate(cs)}
    after = len(config_index)
    for i, variant in enumerate(ROPE_VARIANTS):
        config_index["rope", variant_config(variant)] = after + i
    methods = [*METHODS, *BLOCKS]

    def key(row):
        method = row["method"]
        return (methods.index(method), config_index[method, row["config"]], ops_of(method).index(row["op"]),
                providers_of(method).index(row["provider"]))

    return key


_OPTIONAL_FLOAT = (float, type(None))
_META_TYPES = {"gpu": str, "dtype": str, "date": str, "copy_gbps": float, "versions": dict}
_ROW_TYPES = {"method": str, "config": str, "op": str, "provider": str, "ms": _OPTIONAL_FLOAT,
              "burst_ms": _OPTIONAL_FLOAT, "roofline_ms": _OPTIONAL_FLOAT, "peak_mb": _OPTIONAL_FLOAT,
              "note": (str, type(None))}


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
        _check_keys(f"rows[{i}]", row, _ROW_TYPES)
        method = row["method"]
        if method not in METHODS and method not in BLOCKS:
            raise ValueError(f"rows[{i}].method must be one of {[*METHODS, *BLOCKS]}, got {method!r}")
        if row["op"] not in ops_of(method):
            raise ValueError(f"rows[{i}].op {row['op']!r} is not an op of {method}")
        if row["provider"] not in providers_of(method):
            raise ValueError(f"rows[{i}].provider must be one of {providers_of(method)}, got {row['provider']!r}")
        if row["ms"] is None and not row["note"]:
            raise ValueError(f"rows[{i}] has ms null and no note saying why")
        key = (row["method"], row["config"], row["op"], row["provider"])
        if key in seen:
            raise ValueError(f"rows[{i}] repeats {key}")
        seen.add(key)
