"""Benchmark of RoPE and ALiBi: trinix's Triton kernels against the seed's PyTorch path and peers.

    python benchmarks/benchmark_embeddings.py                  # the seed's eight configurations
    python benchmarks/benchmark_embeddings.py --quick          # small configurations, few iterations
    python benchmarks/benchmark_embeddings.py --num_heads 64 --head_dim 128 --seq_len 8192

The seed's configurations come with RoPE variants at the large one (GQA, BHSD, bf16, fp32,
partial and interleaved rotation: embeddings_report.ROPE_VARIANTS), each call checked against
a plain PyTorch rotation before it is timed.

Writes <output>/EMBEDDINGS.md, <output>/results/latest.json and PNG plots beside the report.
<output> defaults to benchmarks/ on a CUDA GPU and to benchmarks/results/cpu/ without one, so a
CPU run replaces the committed GPU report only when asked to with --output benchmarks.

Method (DESIGN.md, "Performance method"; ../shared/ANCHORS.md measured the same way): every
provider goes through one harness. A call is run `warmup` times, then timed `iters` times. On a
GPU, torch calls as triton.testing.do_bench times them: L2 flushed before each, CUDA events
around it, the host dispatching ahead (so the time is the GPU's unless dispatch is slower);
JAX calls, whose stream torch's events cannot see, by the wall time of bursts of back-to-back
calls. On a CPU, each call by the wall clock. The median is reported, beside the roofline: the
op's bytes (inputs read once, outputs written once) at the copy bandwidth of the same run.
"""

import argparse
import dataclasses
import datetime
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

# JAX would otherwise take 75% of the GPU at start, leaving too little to the torch rows.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

from embeddings_report import (METHODS, PROVIDERS, ROPE_VARIANTS, VARIANT_CONFIG, console_table,  # noqa: E402
                               validate_results, variant_config, write_outputs)

BENCH_DIR = Path(__file__).resolve().parent
ROPE_BASE = 10000.0
FLUSH_BYTES = 256 * 2**20  # larger than any L2 cache
ROW_BUDGET_S = 2.0  # timed iterations of one row are cut to fit this, but never below MIN_ITERS
MIN_ITERS = 10
# A burst of JAX calls lasts about this long (and at least one call): its first dispatch and
# its last wait, which no other call overlaps, are then a small part of it.
BURST_MS = 10.0
MIN_BURSTS = 3
QUICK_WARMUP, QUICK_ITERS = 3, 10
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FRAMEWORK_PROVIDERS = {"torch": ("pytorch", "triton", "torch_compile", "liger"),
                       "jax": ("jax_xla", "jax_triton")}


@dataclasses.dataclass(frozen=True)
class Config:
    """One shape: RoPE q/k (batch, seq_len, heads, head_dim); ALiBi scores (batch, heads, seq_len, seq_len)."""

    name: str
    heads: int
    seq_len: int
    batch: int
    head_dim: int | None = None  # RoPE only


CONFIGS = {
    "rope": [Config("small", 32, 512, 4, 64), Config("medium", 64, 2048, 2, 128),
             Config("large", 64, 8192, 1, 128), Config("xl", 128, 32768, 1, 128)],
    "alibi": [Config("small", 32, 512, 4), Config("medium", 64, 2048, 2),
              Config("large", 128, 8192, 1), Config("xl", 128, 32768, 1)],
}


# ---------------------------------------------------------------------------------------------
# Command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark trinix RoPE and ALiBi against the seed's PyTorch path and peers.")
    shape = parser.add_argument_group(
        "custom configuration", "any of these runs one configuration named 'custom' instead of "
        "the seed's four per method (unset ones: heads 32, head_dim 128, seq_len 2048, batch 1)")
    shape.add_argument("--num_heads", type=_positive_int)
    shape.add_argument("--head_dim", type=_positive_int, help="RoPE only; even")
    shape.add_argument("--seq_len", type=_positive_int)
    shape.add_argument("--batch", type=_positive_int)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--frameworks", nargs="+", choices=list(FRAMEWORK_PROVIDERS),
                        default=list(FRAMEWORK_PROVIDERS))
    parser.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS),
                        help="run only these providers (the others still get rows, with a note)")
    parser.add_argument("--warmup", type=_positive_int,
                        help=f"untimed calls per row (default 10; {QUICK_WARMUP} with --quick)")
    parser.add_argument("--iters", type=_positive_int,
                        help=f"timed calls per row (default 100; {QUICK_ITERS} with --quick); rows "
                             f"over {ROW_BUDGET_S:g} s in all take fewer, at least {MIN_ITERS}")
    parser.add_argument("--quick", action="store_true",
                        help="the small configurations only, few iterations (minutes on a CPU)")
    parser.add_argument("--output", type=Path,
                        help="folder for EMBEDDINGS.md, results/latest.json and the plots "
                             "(default: benchmarks/ on a CUDA GPU, benchmarks/results/cpu/ without)")
    args = parser.parse_args(argv)
    if args.head_dim is not None and args.head_dim % 2:
        parser.error(f"--head_dim must be even, got {args.head_dim}")
    args.warmup = args.warmup or (QUICK_WARMUP if args.quick else 10)
    args.iters = args.iters or (QUICK_ITERS if args.quick else 100)
    if args.output is None:
        args.output = BENCH_DIR if torch.cuda.is_available() else BENCH_DIR / "results" / "cpu"
    return args


def selected_configs(args: argparse.Namespace) -> dict[str, list[Config]]:
    """The configurations to run, per method."""
    custom = (args.num_heads, args.head_dim, args.seq_len, args.batch)
    if any(value is not None for value in custom):
        heads, head_dim, seq_len, batch = (given or default for given, default
                                           in zip(custom, (32, 128, 2048, 1)))
        return {method: [Config("custom", heads, seq_len, batch, head_dim if method == "rope" else None)]
                for method in args.methods}
    return {method: CONFIGS[method][:1] if args.quick else CONFIGS[method] for method in args.methods}


# ---------------------------------------------------------------------------------------------
# Bytes: the roofline of each op, and whether it fits


def _itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize


def op_bytes(method: str, config: Config, op: str, dtype: str) -> int:
    """Bytes an op must move at least: each input read once, each output written once.

    RoPE tables are (seq_len, head_dim) in the input dtype, and RoPE's total needs none (cos
    and sin can be computed where they are used). The ALiBi bias is one float32 (heads,
    seq_len, seq_len) bias, the batch a broadcast of it; scores are in the input dtype.
    """
    b, h, s, elt = config.batch, config.heads, config.seq_len, _itemsize(dtype)
    if method == "rope":
        qk = 2 * b * s * h * config.head_dim * elt
        tables = 2 * s * config.head_dim * elt
        return {"generate": tables, "apply": 2 * qk + tables, "total": 2 * qk,
                "fwd_bwd": 2 * (2 * qk + tables)}[op]
    bias, scores = h * s * s * 4, b * h * s * s * elt
    return {"slopes": h * 4, "bias": bias, "total": bias + h * 4,
            "add_to_scores": 2 * scores, "softmax": 2 * scores}[op]


def op_footprint(method: str, config: Config, op: str, dtype: str,
                 materialises_bias: bool) -> tuple[int, str]:
    """(about the bytes a provider holds at its peak; the largest tensor among them, as text),
    to skip what cannot fit. `materialises_bias`: an eager path, which builds the distance
    matrix and the bias before adding them, where a compiler or a kernel fuses them away."""
    b, h, s = config.batch, config.heads, config.seq_len
    if method == "rope":
        q = (b, s, h, config.head_dim)
        return 3 * op_bytes(method, config, op, dtype), _tensor_text("q", q, dtype)
    bias = b * h * s * s * 4  # float32, every batch copy
    scores = b * h * s * s * _itemsize(dtype)
    distance = s * s * 12 if materialises_bias else 0  # |i - j| as int64, then float32
    built_bias = bias if materialises_bias else 0
    # Scores ops: the scores, an output like them, and for softmax a float32 intermediate.
    needed = {"slopes": h * 4, "bias": bias + distance, "total": bias + distance,
              "add_to_scores": 2 * scores + built_bias + distance,
              "softmax": 2 * scores + bias + built_bias + distance}[op]
    if op in ("add_to_scores", "softmax"):
        return needed, _tensor_text("scores", (b, h, s, s), dtype)
    return needed, _tensor_text("bias", (b, h, s, s), "float32")


def _tensor_text(name: str, shape: tuple[int, ...], dtype: str) -> str:
    return f"{name} {shape} {dtype} alone is {_gb(math.prod(shape) * _itemsize(dtype))}"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def free_bytes(framework: str) -> int:
    """Memory the framework can still allocate on its device (host memory on a CPU)."""
    if framework == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()  # None on a CPU
        if stats:
            return stats["bytes_limit"] - stats["bytes_in_use"]
    elif torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ---------------------------------------------------------------------------------------------
# The seed's paths, in plain framework code


def seed_inv_freq(dim: int, device):
    """The seed's RoPE frequencies, (dim / 2,) float32."""
    return 1.0 / ROPE_BASE ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)


def seed_rope_cos_sin(inv_freq, seq_len: int, dtype):
    """cos, sin (seq_len, head_dim): arange, outer, cat, cos, sin, cast."""
    positions = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def seed_rope_apply(q, k, cos, sin):
    """q, k (batch, seq, heads, head_dim) rotated by cos, sin (seq, head_dim)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def seed_rope_total(inv_freq, q, k):
    cos, sin = seed_rope_cos_sin(inv_freq, q.shape[1], q.dtype)
    return seed_rope_apply(q, k, cos, sin)


def rope_variant_apply(q, k, cos, sin, layout: str = "bshd", interleaved: bool = False):
    """The seed's rotation, generalised: the first cos.shape[-1] columns of each head of q and
    k rotate by cos, sin (seq, rotary_dim), in half-split or `interleaved` pairs (the tables
    then hold each frequency in both columns of its pair); the rest pass through. q, k in
    `layout` "bshd" or "bhsd"."""
    rotary = cos.shape[-1]
    if layout == "bshd":
        cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x):
        x_rot = x[..., :rotary]
        if interleaved:
            turned = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
        else:
            turned = rotate_half(x_rot)
        return torch.cat((x_rot * cos + turned * sin, x[..., rotary:]), dim=-1)

    return rotate(q), rotate(k)


def seed_alibi_slopes(num_heads: int, device):
    """2 ** (-8 i / num_heads) for i in 1 .. num_heads, float32."""
    heads = torch.arange(1, num_heads + 1, device=device, dtype=torch.float32)
    return 2.0 ** (-8.0 * heads / num_heads)


def seed_alibi_bias(slopes, seq_len: int, batch: int):
    """-slope * |i - j| as (batch, heads, seq_len, seq_len) float32, every batch copy written."""
    positions = torch.arange(seq_len, device=slopes.device)
    distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)
    return -slopes.view(1, -1, 1, 1).expand(batch, -1, 1, 1) * distance


def seed_alibi_total(num_heads: int, seq_len: int, batch: int, device):
    return seed_alibi_bias(seed_alibi_slopes(num_heads, device), seq_len, batch)


def seed_add_to_scores(scores, slopes):
    """scores (batch, heads, seq, seq) += the materialised bias, in place."""
    return scores.add_(seed_alibi_bias(slopes, scores.shape[-1], scores.shape[0]))


def seed_softmax(scores, slopes):
    bias = seed_alibi_bias(slopes, scores.shape[-1], scores.shape[0])
    return (scores + bias).softmax(dim=-1).to(scores.dtype)


def jax_rope_cos_sin(inv_freq, seq_len: int, dtype):
    import jax.numpy as jnp

    freqs = jnp.outer(jnp.arange(seq_len, dtype=jnp.float32), inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def jax_rope_apply(q, k, cos, sin):
    import jax.numpy as jnp

    def rotate(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos[:, None, :] + jnp.concatenate([-x2, x1], axis=-1) * sin[:, None, :]

    return rotate(q), rotate(k)


def jax_rope_total(inv_freq, q, k):
    cos, sin = jax_rope_cos_sin(inv_freq, q.shape[1], q.dtype)
    return jax_rope_apply(q, k, cos, sin)


def jax_alibi_slopes(num_heads: int):
    import jax.numpy as jnp

    return 2.0 ** (-8.0 * jnp.arange(1, num_heads + 1, dtype=jnp.float32) / num_heads)


def jax_alibi_bias(slopes, seq_len: int, batch: int):
    import jax.numpy as jnp

    positions = jnp.arange(seq_len)
    distance = jnp.abs(positions[None, :] - positions[:, None]).astype(jnp.float32)
    bias = -slopes[None, :, None, None] * distance
    return jnp.broadcast_to(bias, (batch, *bias.shape[1:]))


def jax_alibi_total(num_heads: int, seq_len: int, batch: int):
    return jax_alibi_bias(jax_alibi_slopes(num_heads), seq_len, batch)


def jax_add_to_scores(scores, slopes):
    """scores + bias; XLA fuses the bias in."""
    return (scores + jax_alibi_bias(slopes, scores.shape[-1], scores.shape[0])).astype(scores.dtype)


def jax_softmax(scores, slopes):
    import jax

    bias = jax_alibi_bias(slopes, scores.shape[-1], scores.shape[0])
    return jax.nn.softmax(scores + bias, axis=-1).astype(scores.dtype)


# ---------------------------------------------------------------------------------------------
# Inputs and providers


class Call(NamedTuple):
    """One op as fn(*args). JAX fns are jitted, so their compiled memory can be read; one
    that `donates_first` consumes its first argument, and its result is the next call's."""

    fn: Callable
    args: tuple
    donates_first: bool = False


class Unavailable(Exception):
    """A provider cannot run here; the message becomes the note of its rows."""


class Inputs:
    """The arrays of one configuration, each made on first use (so what a row skips for
    size is never allocated) and shared by the providers of one framework."""

    def __init__(self, config: Config):
        self.config = config

    def _randn(self, *shape):
        raise NotImplementedError

    @functools.cached_property
    def q(self):
        c = self.config
        return self._randn(c.batch, c.seq_len, c.heads, c.head_dim)

    @functools.cached_property
    def k(self):
        return self._randn(*self.q.shape)

    @functools.cached_property
    def grads(self):
        """Cotangents of rotated q and k."""
        return self._randn(*self.q.shape), self._randn(*self.k.shape)

    @functools.cached_property
    def scores(self):
        return self.new_scores()

    def new_scores(self):
        """Scores of its own, for a call that consumes them."""
        c = self.config
        return self._randn(c.batch, c.heads, c.seq_len, c.seq_len)


class TorchInputs(Inputs):
    def __init__(self, config: Config, dtype: str, device: torch.device):
        super().__init__(config)
        self.dtype, self.device = DTYPES[dtype], device

    def _randn(self, *shape):
        return torch.randn(*shape, dtype=self.dtype, device=self.device)

    @functools.cached_property
    def inv_freq(self):
        return seed_inv_freq(self.config.head_dim, self.device)

    @functools.cached_property
    def tables(self):
        """cos, sin (seq_len, head_dim) by the seed's path, the tables every apply row rotates by."""
        return seed_rope_cos_sin(self.inv_freq, self.config.seq_len, self.dtype)

    @functools.cached_property
    def slopes(self):
        return seed_alibi_slopes(self.config.heads, self.device)


class JaxInputs(Inputs):
    def __init__(self, config: Config, dtype: str):
        import jax.numpy as jnp

        super().__init__(config)
        self.dtype = jnp.dtype(dtype)
        self._seed = 0

    def _randn(self, *shape):
        import jax

        self._seed += 1
        return jax.random.normal(jax.random.key(self._seed), shape, self.dtype)

    @functools.cached_property
    def inv_freq(self):
        import jax.numpy as jnp

        dim = self.config.head_dim
        return 1.0 / ROPE_BASE ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)

    @functools.cached_property
    def tables(self):
        return jax_rope_cos_sin(self.inv_freq, self.config.seq_len, self.dtype)

    @functools.cached_property
    def slopes(self):
        return jax_alibi_slopes(self.config.heads)


NEEDS_GPU = "needs a CUDA GPU, and this run had none"


def _import(module: str):
    """The module, or Unavailable naming what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Unavailable(f"{module} cannot be imported ({error})") from None


def torch_fwd_bwd(apply, x: TorchInputs) -> Call:
    """Forward and backward through autograd from leaves q and k; the gradients are returned,
    not accumulated into .grad."""
    q, k = x.q.detach().requires_grad_(), x.k.detach().requires_grad_()

    def fwd_bwd(q, k, cos, sin, grads):
        return torch.autograd.grad(apply(q, k, cos, sin), (q, k), grads)

    return Call(fwd_bwd, (q, k, *x.tables, x.grads))


def jax_fwd_bwd(apply, x: JaxInputs) -> Call:
    """Forward and backward through jax.vjp. The outputs are returned beside the cotangents:
    the backward of a linear op needs no forward value, and XLA drops an unused forward."""
    import jax

    def fwd_bwd(q, k, cos, sin, grads):
        out, vjp = jax.vjp(lambda q, k: apply(q, k, cos, sin), q, k)
        return out, vjp(grads)

    return Call(jax.jit(fwd_bwd), (x.q, x.k, *x.tables, x.grads))


class Provider:
    """One implementation of the ops. A method named `<method>_<op>` returns the Call that
    performs the op on the inputs; without one, the row has ms null and the note in
    `missing`. The constructor raises Unavailable when the provider cannot run `method` here."""

    name = ""
    framework = "torch"
    materialises_bias = False
    missing: dict[str, str] = {}
    notes: dict[str, str] = {}  # "<method>_<op>": what the row measures, where not plain

    def __init__(self, x: Inputs, method: str):
        self.x, self.config = x, x.config


class SeedTorch(Provider):
    """The seed's PyTorch path, eager."""

    name = "pytorch"
    materialises_bias = True
    notes = {"rope_total": "generate + apply",
             "alibi_bias": "writes every batch copy of the bias",
             "alibi_add_to_scores": "materialises the bias, then adds it in place",
             "alibi_softmax": "materialises the bias; softmax in float32"}

    def compiled(self, fn):
        """fn as this provider runs it: eager, unchanged."""
        return fn

    def rope_generate(self):
        return Call(self.compiled(seed_rope_cos_sin), (self.x.inv_freq, self.config.seq_len, self.x.dtype))

    def rope_apply(self):
        return Call(self.compiled(seed_rope_apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.compiled(seed_rope_total), (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.compiled(seed_rope_apply), self.x)

    def alibi_slopes(self):
        return Call(self.compiled(seed_alibi_slopes), (self.config.heads, self.x.device))

    def alibi_bias(self):
        c = self.config
        return Call(self.compiled(seed_alibi_bias), (self.x.slopes, c.seq_len, c.batch))

    def alibi_total(self):
        c = self.config
        return Call(self.compiled(seed_alibi_total), (c.heads, c.seq_len, c.batch, self.x.device))

    def alibi_add_to_scores(self):
        return Call(self.compiled(seed_add_to_scores), (self.x.scores, self.x.slopes))

    def alibi_softmax(self):
        return Call(self.compiled(seed_softmax), (self.x.scores, self.x.slopes))


class CompiledTorch(SeedTorch):
    """torch.compile (default mode, static shapes) of the seed's PyTorch path."""

    name = "torch_compile"
    materialises_bias = False
    notes = {"rope_total": "generate + apply, compiled together",
             "alibi_bias": "writes every batch copy of the bias"}

    def compiled(self, fn):
        return torch.compile(fn, dynamic=False)


class TrinixTorch(Provider):
    """trinix through PyTorch, backend "triton"."""

    name = "triton"
    backend = "triton"  # "interpret" runs the same calls through Triton's interpreter, on a CPU
    notes = {"rope_total": "rope.rotate: cos/sin computed in the kernel, no table",
             "alibi_bias": "one (heads, seq, seq) bias, the batch a stride-0 view of it",
             "alibi_total": "alibi_slopes + alibi_bias",
             "alibi_add_to_scores": "add_to_scores(inplace=True): no bias tensor",
             "alibi_softmax": "softmax(scores + bias) in one kernel"}

    def __init__(self, x: TorchInputs, method: str):
        super().__init__(x, method)
        if self.backend == "triton" and x.device.type != "cuda":
            raise Unavailable(NEEDS_GPU)
        c = self.config
        if method == "rope":
            self.rope = _import("trinix.torch.rope").FastRoPEPositionEmbedding(
                c.head_dim, c.seq_len, backend=self.backend)
        else:
            self.module = _import("trinix.torch.alibi")
            self.alibi = self.module.FastALiBiPositionEmbedding(c.heads, c.seq_len, backend=self.backend,
                                                                device=x.device)

    def rope_generate(self):
        return Call(self.rope, (self.x.q, self.config.seq_len))

    def rope_apply(self):
        return Call(self.rope.apply_rotary_pos_emb, (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.rope.rotate, (self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.rope.apply_rotary_pos_emb, self.x)

    def alibi_slopes(self):
        return Call(functools.partial(self.module.alibi_slopes, device=self.x.device, backend=self.backend),
                    (self.config.heads,))

    def alibi_bias(self):
        return Call(self.alibi, (self.config.seq_len, self.config.batch))

    def alibi_total(self):
        alibi = self.module

        def total(num_heads, seq_len, batch):
            slopes = alibi.alibi_slopes(num_heads, device=self.x.device, backend=self.backend)
            bias = alibi.alibi_bias(slopes, seq_len, backend=self.backend)
            return bias.expand(batch, *bias.shape)

        c = self.config
        return Call(total, (c.heads, c.seq_len, c.batch))

    def alibi_add_to_scores(self):
        return Call(functools.partial(self.alibi.add_to_scores, inplace=True), (self.x.scores,))

    def alibi_softmax(self):
        return Call(self.alibi.softmax, (self.x.scores,))


class Liger(Provider):
    """Liger-Kernel's RoPE (liger_kernel.ops.rope), which rotates q and k in place."""

    name = "liger"
    missing = {"rope_generate": "Liger-Kernel has no cos/sin generator"}
    notes = {"rope_apply": "in place", "rope_total": "cos/sin by the seed's PyTorch path, then Liger in place",
             "rope_fwd_bwd": "in place"}

    def __init__(self, x: TorchInputs, method: str):
        super().__init__(x, method)
        if method != "rope":
            raise Unavailable("Liger-Kernel has no ALiBi")
        if x.device.type != "cuda":
            raise Unavailable(NEEDS_GPU)
        self.rope_function = _import("liger_kernel.ops.rope").LigerRopeFunction

    def apply(self, q, k, cos, sin):
        """Liger takes (batch, heads, seq, head_dim) views and cos/sin (1, seq, head_dim); a
        transposed BSHD tensor is such a view, so nothing is copied."""
        q_rot, k_rot = self.rope_function.apply(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])[:2]
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    def total(self, inv_freq, q, k):
        return self.apply(q, k, *seed_rope_cos_sin(inv_freq, q.shape[1], q.dtype))

    def rope_apply(self):
        return Call(self.apply, (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.total, (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.apply, self.x)


def _jit(fn, *static_argnums):
    import jax

    return jax.jit(fn, static_argnums=static_argnums)


class SeedJax(Provider):
    """The seed's path in plain jax.numpy under jax.jit (XLA)."""

    name = "jax_xla"
    framework = "jax"
    notes = {"rope_total": "generate + apply, jitted together",
             "alibi_bias": "writes every batch copy of the bias (a JAX array has no stride-0 view)",
             "alibi_add_to_scores": "in place: the scores are donated to the jit; bias fused in by XLA",
             "alibi_softmax": "softmax in float32, bias fused in by XLA"}

    def rope_generate(self):
        return Call(_jit(jax_rope_cos_sin, 1, 2), (self.x.inv_freq, self.config.seq_len, self.x.dtype))

    def rope_apply(self):
        return Call(_jit(jax_rope_apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(_jit(jax_rope_total), (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return jax_fwd_bwd(jax_rope_apply, self.x)

    def alibi_slopes(self):
        return Call(_jit(jax_alibi_slopes, 0), (self.config.heads,))

    def alibi_bias(self):
        c = self.config
        return Call(_jit(jax_alibi_bias, 1, 2), (self.x.slopes, c.seq_len, c.batch))

    def alibi_total(self):
        c = self.config
        return Call(_jit(jax_alibi_total, 0, 1, 2), (c.heads, c.seq_len, c.batch))

    def alibi_add_to_scores(self):
        import jax

        return Call(jax.jit(jax_add_to_scores, donate_argnums=0), (self.x.new_scores(), self.x.slopes),
                    donates_first=True)

    def alibi_softmax(self):
        return Call(_jit(jax_softmax), (self.x.scores, self.x.slopes))


class TrinixJax(Provider):
    """trinix through JAX, backend "triton" (jax-triton), each call under jax.jit."""

    name = "jax_triton"
    framework = "jax"
    backend = "triton"  # "interpret" runs the same calls through Triton's interpreter, on a CPU
    notes = {**TrinixTorch.notes,
             "alibi_bias": "one (heads, seq, seq) bias; the batch broadcast is materialised as the "
                           "jit's output (a JAX array has no stride-0 view)",
             "alibi_add_to_scores": "add_to_scores in place: the scores are donated to the jit"}

    def __init__(self, x: JaxInputs, method: str):
        import jax

        super().__init__(x, method)
        if self.backend == "triton":
            if jax.default_backend() not in ("gpu", "cuda"):
                raise Unavailable(NEEDS_GPU if not torch.cuda.is_available()
                                  else f"needs JAX on a CUDA GPU; JAX here runs on {jax.default_backend()}")
            try:  # through trinix, which keeps jax_triton's import from unsetting Triton's cache dir
                _import("trinix.jax.launcher").jax_triton()
            except ImportError as error:
                raise Unavailable(f"jax_triton cannot be imported ({error})") from None
        c = self.config
        if method == "rope":
            self.rope = _import("trinix.jax.rope").FastRoPEPositionEmbedding(
                c.head_dim, c.seq_len, backend=self.backend)
        else:
            self.module = _import("trinix.jax.alibi")
            self.alibi = self.module.FastALiBiPositionEmbedding(c.heads, c.seq_len, backend=self.backend)

    def apply(self, q, k, cos, sin):
        return self.rope.apply_rotary_pos_emb(q, k, cos, sin)

    def rope_generate(self):
        return Call(_jit(lambda x: self.rope(x)), (self.x.q,))

    def rope_apply(self):
        return Call(_jit(self.apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(_jit(lambda q, k: self.rope.rotate(q, k)), (self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return jax_fwd_bwd(self.apply, self.x)

    def alibi_slopes(self):
        return Call(_jit(functools.partial(self.module.alibi_slopes, backend=self.backend), 0), (self.config.heads,))

    def alibi_bias(self):
        c = self.config
        return Call(_jit(lambda seq_len, batch: self.alibi(seq_len, batch), 0, 1), (c.seq_len, c.batch))

    def alibi_total(self):
        import jax.numpy as jnp

        def total(num_heads, seq_len, batch):
            slopes = self.module.alibi_slopes(num_heads, backend=self.backend)
            bias = self.module.alibi_bias(slopes, seq_len, backend=self.backend)
            return jnp.broadcast_to(bias, (batch, *bias.shape))

        c = self.config
        return Call(_jit(total, 0, 1, 2), (c.heads, c.seq_len, c.batch))

    def alibi_add_to_scores(self):
        import jax

        return Call(jax.jit(lambda scores: self.alibi.add_to_scores(scores), donate_argnums=0),
                    (self.x.new_scores(),), donates_first=True)

    def alibi_softmax(self):
        return Call(_jit(lambda scores: self.alibi.softmax(scores)), (self.x.scores,))


PROVIDER_CLASSES = {cls.name: cls for cls in (SeedTorch, TrinixTorch, CompiledTorch, Liger, SeedJax, TrinixJax)}


# ---------------------------------------------------------------------------------------------
# The harness


class Run(NamedTuple):
    """One call of a row: `start()` dispatches it and returns its output; `wait(out)` returns
    once that output is ready (torch on the CPU and JAX's async dispatch need it)."""

    start: Callable[[], Any]
    wait: Callable[[Any], Any]


class Harness:
    """Times a call and reads its memory, the same way for every provider."""

    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.cuda = device.type == "cuda"
        self.warmup, self.iters = warmup, iters
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None

    def _torch_gpu_ms(self, run: Run, iters: int) -> list[float]:
        """Per-call GPU times as triton.testing.do_bench takes them: before each call the L2 is
        flushed, CUDA events bracket the call, and nothing waits in between, so the host
        dispatches ahead of the GPU. The time is the GPU's, unless the host takes longer to
        dispatch a call than the GPU takes to flush and run it: then it is the host's."""
        events = []
        for _ in range(iters):
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run.start()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def _burst_ms(self, run: Run, iters: int, calls: int) -> list[float]:
        """Per-call times from bursts of `calls` back-to-back calls (iters // calls bursts, at
        least one): a burst's wall time (until its last output is ready) / its calls. JAX runs on
        a stream of its own that torch's events do not see; dispatching ahead, like the torch
        rows, its time is the GPU's unless the host's dispatch is longer. A burst also holds its
        first dispatch and its last wait, which BURST_MS makes small beside it. No L2 flush
        between calls (a flush would be a JAX call of its own); at the seed's sizes the JAX rows
        are host-bound or move far more than the L2 holds."""
        times = []
        for _ in range(max(1, iters // calls)):
            begin = time.perf_counter()
            for _ in range(calls):
                out = None  # freed before the next call allocates its own (a large bias is 34 GB)
                out = run.start()
            run.wait(out)
            times.append((time.perf_counter() - begin) * 1e3 / calls)
        return times

    def _wall_ms(self, run: Run, iters: int) -> list[float]:
        """Per-call wall times, each call waited for (a CPU run: no flush, no overlap)."""
        times = []
        for _ in range(iters):
            begin = time.perf_counter()
            run.wait(run.start())
            times.append((time.perf_counter() - begin) * 1e3)
        return times

    def median_ms(self, framework: str, run: Run, bursts: bool = False) -> float:
        """Median time of one call, after `warmup` calls (compilation included). On a GPU, torch
        calls by CUDA events, JAX calls (and torch's with `bursts`) by bursts."""
        for _ in range(self.warmup):
            run.wait(run.start())
        if self.cuda and (framework != "torch" or bursts):
            estimate = statistics.median(self._burst_ms(run, 3, calls=3))
            calls = max(1, math.ceil(BURST_MS / max(estimate, 1e-6)))
            return statistics.median(self._burst_ms(run, max(self._iters(estimate), MIN_BURSTS * calls), calls))
        timed = self._torch_gpu_ms if self.cuda else self._wall_ms
        estimate = statistics.median(timed(run, 3))
        return statistics.median(timed(run, self._iters(estimate)))

    def _iters(self, estimate_ms: float) -> int:
        """Timed calls of a row: `iters`, fewer where they would take over ROW_BUDGET_S."""
        estimate_ms = max(estimate_ms, 1e-6)
        return max(min(self.iters, MIN_ITERS), min(self.iters, int(ROW_BUDGET_S * 1e3 / estimate_ms)))

    def peak_mb(self, framework: str, call: Call, run: Run) -> float | None:
        """Memory one call needs beyond its inputs (its outputs and temporaries), in MB.

        torch: the CUDA allocator's peak above what was allocated before the call (None on a
        CPU, which keeps no statistics). JAX: outputs + temporaries of the compiled program,
        from XLA's memory analysis, since JAX's own peak statistic cannot be reset per call.
        """
        if framework == "jax":
            import jax

            # Shapes only: a donated argument is gone by now.
            args = [jax.ShapeDtypeStruct(a.shape, a.dtype) if isinstance(a, jax.Array) else a for a in call.args]
            stats = call.fn.lower(*args).compile().memory_analysis()
            if stats is None:
                return None
            return (stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / 1e6
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = run.wait(run.start())
        del out
        return (torch.cuda.max_memory_allocated() - before) / 1e6


def copy_gbps(harness: Harness, device: torch.device) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, in GB/s."""
    nbytes = 4 * 2**30 if device.type == "cuda" else 2**27
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / harness.median_ms("torch", runnable("torch", Call(target.copy_, (source,)))) / 1e6


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def runnable(framework: str, call: Call) -> Run:
    """The call as a Run. A donating JAX call feeds its output back as the next call's
    donated argument."""
    if framework == "torch":
        def wait(out):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out

        return Run(lambda: call.fn(*call.args), wait)
    import jax

    args = list(call.args)

    def start():
        out = call.fn(*args)
        if call.donates_first:
            args[0] = out
        return out

    return Run(start, jax.block_until_ready)


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
        return None, None, None, f"does not fit: needs about {_gb(needed)} ({largest}), {_gb(available)} free"
    try:
        call = build()
        run = runnable(provider.framework, call)
        ms = harness.median_ms(provider.framework, run)
        burst_ms = harness.median_ms("torch", run, bursts=True) if harness.cuda and provider.name == "triton" else None
        peak = harness.peak_mb(provider.framework, call, run)
    except Exception as error:  # a provider that fails is a row with its error, not a crash
        _release_memory()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, None, None, f"failed: {type(error).__name__}: {message}"[:240]
    return ms, burst_ms, peak, provider.notes.get(f"{method}_{op}")


# ---------------------------------------------------------------------------------------------
# The run


class Progress:
    """A tqdm bar on stderr, or a counter line per row where tqdm is not installed."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, file=sys.stderr, unit="row", dynamic_ncols=True) if tqdm else None
        self.total, self.done = total, 0

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def finish_row(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _framework_note(framework: str, selected: list[str]) -> str | None:
    """Why a framework's providers do not run, or None."""
    if framework not in selected:
        return "not selected (--frameworks)"
    if framework == "jax" and importlib.util.find_spec("jax") is None:
        return "jax is not installed"
    return None


def _inputs(framework: str, config: Config, dtype: str, device: torch.device) -> Inputs:
    return TorchInputs(config, dtype, device) if framework == "torch" else JaxInputs(config, dtype)


def run_benchmark(args: argparse.Namespace) -> tuple[dict, dict[str, list[Config]]]:
    """Measure every row; returns the results (latest.json's content) and the configurations.
    Every torch row runs before the JAX rows, so each framework has the device to itself."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harness = Harness(device, args.warmup, args.iters)
    bandwidth = copy_gbps(harness, device)
    _release_memory()
    configs = selected_configs(args)
    # The variants run beside the seed's own configurations, not with --quick or a custom one.
    variant_base = next((c for c in configs.get("rope", []) if c.name == VARIANT_CONFIG), None)
    if "torch" not in args.frameworks:
        variant_base = None
    progress = Progress(sum(len(METHODS[m]["ops"]) * len(cs) for m, cs in configs.items()) * len(PROVIDERS)
                        + (len(ROPE_VARIANTS) * len(VARIANT_PROVIDERS) if variant_base else 0))
    rows = []
    for framework, names in FRAMEWORK_PROVIDERS.items():
        framework_note = _framework_note(framework, args.frameworks)
        for method, method_configs in configs.items():
            for config in method_configs:
                x = None if framework_note else _inputs(framework, config, args.dtype, device)
                for name in names:
                    note = framework_note or (None if name in args.providers else "not selected (--providers)")
                    for op, ms, burst_ms, peak, op_note in _provider_rows(harness, name, x, method, config,
                                                                          args.dtype, note, progress):
                        roofline = op_bytes(method, config, op, args.dtype) / bandwidth / 1e6
                        rows.append(dict(method=method, config=config.name, op=op, provider=name,
                                         ms=_round(ms), burst_ms=_round(burst_ms), roofline_ms=_round(roofline),
                                         peak_mb=_round(peak), note=op_note))
                del x
                if framework == "torch":
                    torch.compiler.reset()
                _release_memory()
        if framework == "torch" and variant_base:
            rows += variant_rows(harness, bandwidth, variant_base, args.providers, progress)
    progress.close()
    results = {"meta": {"gpu": _device_name(), "dtype": args.dtype,
                        "date": datetime.date.today().isoformat(), "copy_gbps": round(bandwidth, 1),
                        "versions": _versions()},
               "rows": sorted(rows, key=_row_order(configs))}
    validate_results(results)
    return results, configs


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


# ---------------------------------------------------------------------------------------------
# RoPE variants (embeddings_report.ROPE_VARIANTS): the apply op at one configuration


VARIANT_PROVIDERS = ("pytorch", "torch_compile", "liger", "triton")


def variant_inputs(base: Config, options: dict, device: torch.device) -> tuple:
    """q, k (in the variant's layout) and its cos, sin tables (seq_len, rotary_dim), for
    `base` changed by `options` (ROPE_VARIANTS)."""
    dtype = DTYPES[options.get("dtype", "float16")]
    rotary = options.get("rotary_dim", base.head_dim)
    q = torch.randn(base.batch, base.seq_len, base.heads, base.head_dim, dtype=dtype, device=device)
    k = torch.randn(base.batch, base.seq_len, options.get("k_heads", base.heads), base.head_dim, dtype=dtype,
                    device=device)
    if options.get("layout") == "bhsd":
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    cos, sin = seed_rope_cos_sin(seed_inv_freq(rotary, device), base.seq_len, dtype)
    if options.get("interleaved"):  # each frequency in both columns of its pair
        cos, sin = (table[:, :rotary // 2].repeat_interleave(2, dim=-1) for table in (cos, sin))
    return q, k, cos, sin


def variant_calls(q, k, cos, sin, options: dict, backend: str = "triton") -> dict[str, Call | str]:
    """Each of VARIANT_PROVIDERS' Call of the variant's apply, or why it has none. Liger's
    rotates (clones of) q and k in place."""
    layout, interleaved = options.get("layout", "bshd"), options.get("interleaved", False)

    def apply(q, k, cos, sin):
        return rope_variant_apply(q, k, cos, sin, layout, interleaved)

    calls: dict[str, Call | str] = {"pytorch": Call(apply, (q, k, cos, sin)),
                                    "torch_compile": Call(torch.compile(apply, dynamic=False), (q, k, cos, sin))}
    if cos.shape[-1] != q.shape[-1] or interleaved:
        calls["liger"] = "Liger-Kernel rotates every column, in half-split pairs only"
    elif q.device.type != "cuda":
        calls["liger"] = NEEDS_GPU
    else:
        try:
            liger = _import("liger_kernel.ops.rope").LigerRopeFunction
        except Unavailable as error:
            calls["liger"] = str(error)
        else:
            def liger_apply(q, k, cos, sin):  # Liger takes (batch, heads, seq, head_dim) views
                if layout == "bhsd":
                    return liger.apply(q, k, cos[None], sin[None])[:2]
                q_rot, k_rot = liger.apply(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])[:2]
                return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

            calls["liger"] = Call(liger_apply, (q.clone(), k.clone(), cos, sin))
    if backend == "triton" and q.device.type != "cuda":
        calls["triton"] = NEEDS_GPU
    else:
        trinix_rope = _import("trinix.torch.rope")
        calls["triton"] = Call(functools.partial(trinix_rope.apply_rotary_pos_emb, layout=layout,
                                                 interleaved=interleaved, backend=backend), (q, k, cos, sin))
    return calls


def _variant_error(call: Call, expected: tuple) -> float:
    """Largest |out - expected| / (1 + |expected|) of one call of `call` (on clones of its
    q and k, which it may rotate in place)."""
    q, k, *tables = call.args
    out = call.fn(q.clone(), k.clone(), *tables)
    return max(((o.float() - e.float()).abs() / (1 + e.float().abs())).max().item() for o, e in zip(out, expected))


def variant_rows(harness: Harness, bandwidth: float, base: Config, providers: list[str],
                 progress: Progress | None = None, backend: str = "triton") -> list[dict]:
    """Result rows of every ROPE_VARIANTS entry's apply at `base` (config "<base>-<variant>"),
    each call checked against the plain PyTorch rotation before it is timed."""
    device = torch.device("cuda" if harness.cuda else "cpu")
    rows = []
    for variant, (_, options) in ROPE_VARIANTS.items():
        q, k, cos, sin = variant_inputs(base, options, device)
        roofline = (2 * (q.nbytes + k.nbytes) + cos.nbytes + sin.nbytes) / bandwidth / 1e6
        calls = variant_calls(q, k, cos, sin, options, backend)
        expected = calls["pytorch"].fn(*calls["pytorch"].args)
        # Eager PyTorch rounds twice in the input dtype, the kernels once from float32.
        tolerance = 8 * torch.finfo(q.dtype).eps
        for name in VARIANT_PROVIDERS:
            if progress:
                progress.start(f"rope {base.name} {variant} {name}")
            call, ms, note = calls[name], None, None
            if name not in providers:
                note = "not selected (--providers)"
            elif isinstance(call, str):
                note = call
            else:
                try:
                    error = _variant_error(call, expected)
                    if error <= tolerance:
                        ms = harness.median_ms("torch", runnable("torch", call))
                    else:
                        note = f"wrong: relative error {error:.2g} against the PyTorch rotation"
                except Exception as error:  # a provider that fails is a row with its error, not a crash
                    note = f"failed: {type(error).__name__}: {str(error).strip()[:200]}"
            rows.append(dict(method="rope", config=variant_config(variant, base.name), op="apply", provider=name,
                             ms=_round(ms), burst_ms=None, roofline_ms=_round(roofline), peak_mb=None, note=note))
            if progress:
                progress.finish_row()
        del q, k, cos, sin, calls, expected
        torch.compiler.reset()
        _release_memory()
    return rows


def _round(value: float | None) -> float | None:
    """Five significant digits: far finer than the run-to-run noise."""
    return None if value is None else float(f"{value:.5g}")


def _row_order(configs: dict[str, list[Config]]):
    config_index = {(m, c.name): i for m, cs in configs.items() for i, c in enumerate(cs)}
    after = len(config_index)
    for i, variant in enumerate(ROPE_VARIANTS):  # after the seed's configurations
        config_index["rope", variant_config(variant)] = after + i
    methods, providers = list(METHODS), list(PROVIDERS)

    def key(row):
        return (methods.index(row["method"]), config_index[row["method"], row["config"]],
                METHODS[row["method"]]["ops"].index(row["op"]), providers.index(row["provider"]))

    return key


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results, configs = run_benchmark(args)
    # The command that reproduces the numbers: where they are written is no part of it.
    shown = [a for i, a in enumerate(argv)
             if not a.startswith("--output") and (i == 0 or argv[i - 1] != "--output")]
    run_info = {"warmup": args.warmup, "iters": args.iters,
                "command": shlex.join(["python", "benchmarks/benchmark_embeddings.py", *shown])}
    print(console_table(results))
    for path in write_outputs(results, configs, run_info, args.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
