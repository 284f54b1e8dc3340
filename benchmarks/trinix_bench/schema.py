"""What the benchmark measures, and the shape of its results (latest.json).

latest.json:
    {"meta": {"gpu": str, "dtype": str, "date": "YYYY-MM-DD", "copy_gbps": float,
              "versions": {name: version}},
     "rows": [{"method": "rope"|"alibi"|"alibi_attention"|"llama_block"|"bloom_block", "config": str,
               "op": str, "provider": str, "ms": float|null, "burst_ms": float|null, "roofline_ms": float|null,
               "peak_mb": float|null, "note": str|null}]}

Rows of method "alibi_attention" (attention with ALiBi, its own section: attention.py) have
their own providers (ATTENTION_PROVIDERS) and one more field, "tflops": float|null.

Rows of method "rope" and config "<VARIANT_CONFIG>-<variant>" (op "apply") are the RoPE variants
(ROPE_VARIANTS), each changing one thing of that configuration.

Rows of methods "llama_block" and "bloom_block" time whole blocks (BLOCKS), ops "fwd" and
"fwd_bwd", providers of their own; their roofline_ms and burst_ms are null.

meta may also have "run": {"command": str, "warmup": int, "iters": int} (how the run was
started), and a report merged from several runs' latest.json (--render-from) "runs": [{"methods":
[str], "date": str, "gpu": str, "copy_gbps": float, "command": str|null}], the run each method's
rows come from (its rooflines at that run's copy bandwidth).

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
OPERATIONS = ("rope", "alibi")  # the original benchmark report's methods, with its sections and plots
# Provider -> its name in the report. FRAMEWORK_PROVIDERS: which framework runs each.
PROVIDERS = {"pytorch": "PyTorch", "triton": "Triton", "torch_compile": "torch.compile",
             "liger": "Liger", "jax_xla": "JAX (XLA)", "jax_triton": "JAX Triton"}
FRAMEWORK_PROVIDERS = {"torch": ("pytorch", "triton", "torch_compile", "liger"),
                       "jax": ("jax_xla", "jax_triton")}
KERNEL_PROVIDERS = ("triton", "liger", "jax_triton")  # Triton kernels: a CUDA GPU only
ATTENTION = "alibi_attention"
ATTENTION_PROVIDERS = {"triton": "trinix (torch)", "jax_triton": "trinix (JAX)", "flex": "FlexAttention",
                       "sdpa_no_bias": "SDPA, no bias", "triton_no_alibi": "trinix, no ALiBi",
                       "sdpa_bias": "SDPA + bias", "jax_cudnn_bias": "JAX cuDNN + bias",
                       "jax_xla_bias": "JAX XLA + bias"}
ATTENTION_FRAMEWORK_PROVIDERS = {"torch": ("triton", "flex", "sdpa_no_bias", "triton_no_alibi", "sdpa_bias"),
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


# A method is of one of three kinds, each with its section of the report: an operation
# (OPERATIONS: the original report's methods, their sections, plots and RoPE variants; providers
# PROVIDERS), attention with ALiBi (ATTENTION, in METHODS, providers ATTENTION_PROVIDERS) or a
# whole block (BLOCKS, not in METHODS: ops BLOCK_OPS, providers and configurations of its own).


def every_method() -> list[str]:
    """Every method, in the order of latest.json's rows (the choices of --methods)."""
    return [*METHODS, *BLOCKS]


def operation_configs(configs: dict[str, list[Config]]) -> dict[str, list[Config]]:
    """The part of `configs` (method -> configurations) of the operations (OPERATIONS), without
    a method that has none."""
    return {method: cs for method, cs in configs.items() if method in OPERATIONS and cs}


def ops_of(method: str) -> list[str]:
    """The ops of `method`'s rows (of an attention configuration, attention.ops_at says which)."""
    return METHODS[method]["ops"] if method in METHODS else list(BLOCK_OPS)


def providers_of(method: str) -> dict[str, str]:
    """The providers of `method`'s rows, each with its name in the report."""
    if method in BLOCKS:
        return {name: what for name, (_, what) in BLOCKS[method]["providers"].items()}
    return METHOD_PROVIDERS.get(method, PROVIDERS)


def every_provider() -> list[str]:
    """Every provider of the operations and attention, once (the choices of --providers; a block
    runs all of its own)."""
    return list(dict.fromkeys(p for method in METHODS for p in providers_of(method)))


def configs_of_rows(rows: list[dict]) -> dict[str, list[Config]]:
    """method -> the configurations its rows were measured at, smallest first: the named ones
    (CONFIGS, BLOCK_CONFIGS; a RoPE variant's rows belong to its base). ValueError for any other
    (a custom configuration, whose shape latest.json does not keep)."""
    names: dict[str, set] = {}
    for r in rows:
        names.setdefault(r["method"], set()).add(r["config"])
    known, variants = {**CONFIGS, **BLOCK_CONFIGS}, {variant_config(v) for v in ROPE_VARIANTS}
    configs = {}
    for method in every_method():
        if method in names:
            unknown = names[method] - {c.name for c in known[method]} - (variants if method == "rope" else set())
            if unknown:
                raise ValueError(f"{method} rows of configurations {sorted(unknown)} that are not the named ones "
                                 "(a custom configuration's shape is not kept in latest.json)")
            configs[method] = [c for c in known[method] if c.name in names[method]]
    return configs


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
    methods = every_method()

    def key(row):
        method = row["method"]
        return (methods.index(method), config_index[method, row["config"]], ops_of(method).index(row["op"]),
                list(providers_of(method)).index(row["provider"]))

    return key


_OPTIONAL_FLOAT = (float, type(None))
_META_TYPES = {"gpu": str, "dtype": str, "date": str, "copy_gbps": float, "versions": dict}
_META_OPTIONAL = {"run": dict, "runs": list}
_RUN_TYPES = {"command": str, "warmup": int, "iters": int}
_RUNS_TYPES = {"methods": list, "date": str, "gpu": str, "copy_gbps": float, "command": (str, type(None))}
_ROW_TYPES = {"method": str, "config": str, "op": str, "provider": str, "ms": _OPTIONAL_FLOAT,
              "burst_ms": _OPTIONAL_FLOAT, "roofline_ms": _OPTIONAL_FLOAT, "peak_mb": _OPTIONAL_FLOAT,
              "note": (str, type(None))}
EXTRA_FIELDS = {ATTENTION: {"tflops": _OPTIONAL_FLOAT}}  # a method's row fields beyond _ROW_TYPES


def _row_types(row) -> dict:
    """_ROW_TYPES and the fields of the row's method."""
    method = row.get("method") if isinstance(row, dict) else None
    return {**_ROW_TYPES, **(EXTRA_FIELDS.get(method, {}) if isinstance(method, str) else {})}


def _check_keys(where: str, value, types: dict, optional: dict | None = None) -> None:
    """`value` has the keys of `types`, maybe some of `optional`'s, and no other, each of its type."""
    optional = optional or {}
    if not isinstance(value, dict) or not set(types) <= set(value) <= set(types) | set(optional):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        extra = f" (and maybe {sorted(optional)})" if optional else ""
        raise ValueError(f"{where} must have exactly the keys {sorted(types)}{extra}, got {got}")
    for key, expected in {**types, **optional}.items():
        if key not in value:
            continue
        if isinstance(value[key], bool) or not isinstance(value[key], expected):
            raise ValueError(f"{where}.{key} must be {expected}, got {type(value[key]).__name__}")


def validate_results(results: dict) -> None:
    """Raise ValueError, naming the place, unless `results` has exactly latest.json's shape."""
    _check_keys("results", results, {"meta": dict, "rows": list})
    meta = results["meta"]
    _check_keys("meta", meta, _META_TYPES, _META_OPTIONAL)
    if "run" in meta:
        _check_keys("meta.run", meta["run"], _RUN_TYPES)
    for i, run in enumerate(meta.get("runs", [])):
        _check_keys(f"meta.runs[{i}]", run, _RUNS_TYPES)
        if not run["methods"] or not set(run["methods"]) <= set(every_method()):
            raise ValueError(f"meta.runs[{i}].methods must be some of {every_method()}, got {run['methods']!r}")
    try:
        datetime.datetime.strptime(meta["date"], "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"meta.date must be YYYY-MM-DD, got {meta['date']!r}") from None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["versions"].items()):
        raise ValueError("meta.versions must map names to version strings")
    seen = set()
    for i, row in enumerate(results["rows"]):
        _check_keys(f"rows[{i}]", row, _row_types(row))
        method = row["method"]
        if method not in every_method():
            raise ValueError(f"rows[{i}].method must be one of {every_method()}, got {method!r}")
        if row["op"] not in ops_of(method):
            raise ValueError(f"rows[{i}].op {row['op']!r} is not an op of {method}")
        if row["provider"] not in providers_of(method):
            raise ValueError(f"rows[{i}].provider must be one of {list(providers_of(method))}, "
                             f"got {row['provider']!r}")
        if row["ms"] is None and not row["note"]:
            raise ValueError(f"rows[{i}] has ms null and no note saying why")
        if "runs" in meta and not any(method in run["methods"] for run in meta["runs"]):
            raise ValueError(f"rows[{i}].method {method!r} is in none of meta.runs")
        key = (row["method"], row["config"], row["op"], row["provider"])
        if key in seen:
            raise ValueError(f"rows[{i}] repeats {key}")
        seen.add(key)
