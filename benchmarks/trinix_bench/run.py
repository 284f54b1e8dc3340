"""One run: every row of the selected configurations, providers and ops, measured.

A row is one (method, configuration, op, provider). Before a provider is timed, the run checks
that it can run here (else its rows say why: no GPU, not installed, not selected) and that the
op fits in memory (else the row says how much it needs); a provider that fails is a row with
its error, not a crash. In each framework, the operations' rows (and the RoPE variants') come
first, then those of attention with ALiBi (attention.py), then the blocks' (blocks.py).
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform

import torch

from . import attention
from .blocks import block_harness, block_rows
from .harness import Harness, copy_gbps, failure_note, release_memory, runnable
from .jax_providers import JaxInputs, OriginalJax, TrinixJax
from .progress import Progress
from .providers import NEEDS_GPU, Inputs, Provider, Unavailable
from .roofline import free_bytes, gb, op_bytes, op_footprint
from .schema import (ATTENTION, BLOCK_OPS, BLOCKS, FRAMEWORK_PROVIDERS, METHODS, PROVIDERS, ROPE_VARIANTS,
                     VARIANT_CONFIG, VARIANT_PROVIDERS, Config, operation_configs, providers_of, row, row_order,
                     validate_results)
from .torch_providers import CompiledTorch, Liger, OriginalTorch, TorchInputs, TrinixTorch
from .variants import variant_rows

PROVIDER_CLASSES = {cls.name: cls for cls in (OriginalTorch, TrinixTorch, CompiledTorch, Liger, OriginalJax, TrinixJax)}


def measure(harness: Harness, provider: Provider, method: str, config: Config, op: str,
            dtype: str) -> tuple[float | None, float | None, float | None, str | None]:
    """(ms, burst ms, peak MB, note) of one row. Burst ms: trinix's torch binding timed as the
    JAX rows are, on a GPU, so that JAX Triton compares with it by one method; else None."""
    build = getattr(provider, f"{method}_{op}", None)
    if build is None:
        return None, None, None, provider.missing.get(f"{method}_{op}", f"{provider.name} has no {op}")
    needed, largest = op_footprint(method, config, op, dtype, provider.materialises_bias)
    available = free_bytes(provider.framework)
    if needed > 0.9 * available:
        return None, None, None, f"does not fit: needs about {gb(needed)} ({largest}), {gb(available)} free"
    try:
        call = build()
        run = runnable(provider.framework, call)
        ms = harness.median_ms(provider.framework, run)
        burst_ms = harness.median_ms("torch", run, bursts=True) if harness.cuda and provider.name == "triton" else None
        peak = harness.peak_mb(provider.framework, call, run)
    except Exception as error:  # a provider that fails is a row with its error, not a crash
        release_memory()
        return None, None, None, failure_note(error)
    return ms, burst_ms, peak, provider.notes.get(f"{method}_{op}")


def _framework_note(framework: str, selected: list[str]) -> str | None:
    """Why a framework's providers do not run, or None."""
    if framework not in selected:
        return "not selected (--frameworks)"
    if framework == "jax" and importlib.util.find_spec("jax") is None:
        return "jax is not installed"
    return None


def _inputs(framework: str, config: Config, dtype: str, device: torch.device) -> Inputs:
    return TorchInputs(config, dtype, device) if framework == "torch" else JaxInputs(config, dtype)


def run_benchmark(args: argparse.Namespace, configs: dict[str, list[Config]]) -> dict:
    """Measure every row of `configs` (method -> configurations) as `args` (cli) asks; returns
    the results (latest.json's content). Every torch row runs before the JAX rows, so each
    framework has the device to itself; in each, the blocks come last."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harness = Harness(device, args.warmup, args.iters)
    bandwidth = copy_gbps(harness, device)
    release_memory()
    operations = operation_configs(configs)
    blocks = {m: cs for m, cs in configs.items() if m in BLOCKS}
    blocks_harness = block_harness(device, args.warmup, args.iters) if blocks else None
    # The variants run beside the original configurations, not with --quick or a custom one.
    variant_base = next((c for c in operations.get("rope", []) if c.name == VARIANT_CONFIG), None)
    if "torch" not in args.frameworks:
        variant_base = None
    attention_configs = configs.get(ATTENTION, [])
    progress = Progress(sum(len(METHODS[m]["ops"]) * len(cs) for m, cs in operations.items()) * len(PROVIDERS)
                        + (len(ROPE_VARIANTS) * len(VARIANT_PROVIDERS) if variant_base else 0)
                        + attention.row_count(attention_configs)
                        + sum(len(BLOCK_OPS) * len(cs) * len(providers_of(m)) for m, cs in blocks.items()))
    rows = []
    for framework, names in FRAMEWORK_PROVIDERS.items():
        framework_note = _framework_note(framework, args.frameworks)
        for method, method_configs in operations.items():
            for config in method_configs:
                x = None if framework_note else _inputs(framework, config, args.dtype, device)
                for name in names:
                    note = framework_note or (None if name in args.providers else "not selected (--providers)")
                    for op, ms, burst_ms, peak, op_note in _provider_rows(harness, name, x, method, config,
                                                                          args.dtype, note, progress):
                        roofline = op_bytes(method, config, op, args.dtype) / bandwidth / 1e6
                        rows.append(row(method, config.name, op, name, ms=ms, burst_ms=burst_ms,
                                        roofline_ms=roofline, peak_mb=peak, note=op_note))
                del x
                if framework == "torch":
                    torch.compiler.reset()
                release_memory()
        if framework == "torch" and variant_base:
            rows += variant_rows(harness, bandwidth, variant_base, args.providers, progress)
        rows += attention.attention_rows(harness, framework, attention_configs, args.dtype, args.providers, bandwidth,
                                         framework_note, progress)
        # Blocks at their sizes would take hours on a CPU: a GPU only.
        block_note = framework_note or (None if harness.cuda else NEEDS_GPU)
        for method, method_configs in blocks.items():
            for config in method_configs:
                rows += block_rows(blocks_harness, method, config, framework, progress=progress, note=block_note)
    progress.close()
    results = {"meta": {"gpu": _device_name(), "dtype": args.dtype,
                        "date": datetime.date.today().isoformat(), "copy_gbps": round(bandwidth, 1),
                        "versions": _versions()},
               "rows": sorted(rows, key=row_order(configs))}
    validate_results(results)
    return results


def _provider_rows(harness: Harness, name: str, x: Inputs | None, method: str, config: Config,
                   dtype: str, note: str | None, progress: Progress):
    """(op, ms, burst ms, peak MB, note) of each op of one provider; `note`: why it does not run."""
    provider = None
    if note is None:
        try:
            provider = PROVIDER_CLASSES[name](x, method)
        except Unavailable as error:
            note = str(error)
    for op in METHODS[method]["ops"]:
        progress.start(f"{method} {config.name} {op} {name}")
        if provider is None:
            yield op, None, None, None, note
        else:
            yield op, *measure(harness, provider, method, config, op, dtype)
        progress.finish_row()


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"none (CPU only: {platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    if torch.version.cuda and torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    for name in ("torch", "triton", "jax", "jaxlib", "flax", "numpy", "trinix", "liger-kernel", "jax-triton"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
