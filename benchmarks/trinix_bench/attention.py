"""Attention with ALiBi (method "alibi_attention"): trinix's kernels from PyTorch and JAX beside
FlexAttention, SDPA and jax.nn.dot_product_attention.

q (batch, seq_q, heads, head_dim), k and v (batch, seq_k, heads, head_dim), slopes float32
(heads,) 2 ** (-8 i / heads), the paper's for a power-of-two head count. Query i sits at key position p_i = seq_k - seq_q + i
(bottom-right). Ops: "fwd" and "fwd_bwd" add the symmetric bias -m |p_i - j|; "fwd_causal" and
"fwd_bwd_causal" add -m (p_i - j) and mask the keys after p_i. A decoding configuration (one
query over cached keys) has "fwd_causal" only.

Rows carry TFLOP/s (attention_flops); a decoding row's roofline is the bytes of K and V at the
copy bandwidth (it is memory-bound, the others compute-bound). Before any row of a framework
is timed, trinix is checked against attention by a materialized float32 bias (check_trinix).
"""

import contextlib
import dataclasses
from typing import Any

import numpy as np
import torch

from . import original
from .harness import Call, Harness, failure_note, release_memory, runnable
from .jax_providers import require_jax_gpu, require_jax_triton
from .progress import Progress
from .providers import NEEDS_GPU, Unavailable, import_module
from .roofline import free_bytes, gb
from .schema import (ATTENTION, ATTENTION_FRAMEWORK_PROVIDERS, ATTENTION_PROVIDERS, CONFIGS, DTYPE_BYTES, ops_of,
                     Config, row)

ROW_CAP_S = 0.5  # each row's warm-up and timed calls (Harness.capped): xl calls take up to a second
# Flex's forward + backward takes about a second a call at xl, plus its compile: too much of the
# section's few minutes on the GPU; its forward there is timed.
FLEX_UNTIMED_BACKWARD = ("xl",)
CHECK_CONFIG = next(c for c in CONFIGS[ATTENTION] if c.name == "medium")
CHECK_TOLERANCE = 1e-2  # of the largest |reference|, at least 1: fp16 rounding is ~1e-3, a wrong bias ~1
BACKWARD_FACTOR = 3.5  # forward + backward FLOPs over forward: 2 matmuls forward, 5 backward


def seq_q(config: Config) -> int:
    return config.seq_q or config.seq_len


def is_decode(config: Config) -> bool:
    """One query over a cache of keys: memory-bound, causal forward only."""
    return seq_q(config) == 1


def ops_at(config: Config) -> list[str]:
    """The ops of the rows of one configuration (of the method's, schema.ops_of)."""
    return ["fwd_causal"] if is_decode(config) else ops_of(ATTENTION)


def is_causal(op: str) -> bool:
    return op.endswith("_causal")


def visible_pairs(config: Config, causal: bool) -> int:
    """(query, key) pairs one head attends: all seq_q * seq_k, or under the bottom-right causal
    mask those with j <= p_i (S (S + 1) / 2 for seq_q = seq_k = S; every key for one query)."""
    queries, keys = seq_q(config), config.seq_len
    return queries * keys - (queries * (queries - 1) // 2 if causal else 0)


def attention_flops(config: Config, op: str) -> float:
    """FLOPs of one call: 4 * head_dim per visible pair and head (q.k and p.v, a multiply-add a
    column each), batch * heads times; BACKWARD_FACTOR times that forward + backward."""
    flops = 4 * config.batch * config.heads * visible_pairs(config, is_causal(op)) * config.head_dim
    return flops * (BACKWARD_FACTOR if op.startswith("fwd_bwd") else 1)


def tflops(config: Config, op: str, ms: float | None) -> float | None:
    return attention_flops(config, op) / ms / 1e9 if ms else None


def kv_bytes(config: Config, dtype: str) -> int:
    """Bytes of k and v: what a decoding step must read at least."""
    return 2 * config.batch * config.seq_len * config.heads * config.head_dim * DTYPE_BYTES[dtype]


def roofline_ms(config: Config, dtype: str, copy_gbps: float) -> float | None:
    """A decoding row's roofline: k and v read once at the copy bandwidth; None elsewhere."""
    return kv_bytes(config, dtype) / copy_gbps / 1e6 if is_decode(config) else None


def bias_shape(config: Config) -> tuple[int, int, int, int]:
    """A materialized bias, broadcast over the batch."""
    return (1, config.heads, seq_q(config), config.seq_len)


def torch_bias(slopes: torch.Tensor, config: Config, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """bias_shape(config) in `dtype`: -m |p_i - j|, or -m (p_i - j) with -inf at the keys after
    p_i (SDPA takes no causal flag beside a bias). Written a head at a time, so that no float32
    bias of every head exists."""
    queries = torch.arange(seq_q(config), device=slopes.device) + (config.seq_len - seq_q(config))
    signed = (queries[:, None] - torch.arange(config.seq_len, device=slopes.device)[None, :]).float()
    distance = signed if causal else signed.abs()
    bias = torch.empty(bias_shape(config), dtype=dtype, device=slopes.device)
    for head in range(config.heads):
        bias[0, head] = -slopes[head] * distance
    if causal:
        bias.masked_fill_(signed < 0, float("-inf"))
    return bias


def jax_bias(slopes, config: Config, causal: bool, dtype):
    """bias_shape(config) in `dtype`: -m |p_i - j| or -m (p_i - j), unmasked (JAX's causal flag
    masks). Jitted, XLA writes it in one fusion, with no float32 copy."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def build(slopes):
        queries = jnp.arange(seq_q(config)) + (config.seq_len - seq_q(config))
        distance = (queries[:, None] - jnp.arange(config.seq_len)[None, :]).astype(jnp.float32)
        return (-slopes[:, None, None] * (distance if causal else jnp.abs(distance)))[None].astype(dtype)

    return build(slopes)


def alibi_score_mod(slopes, causal: bool, q_offset: int):
    """FlexAttention's score_mod of ALiBi: score - m_h |p_i - j|, or score - m_h (p_i - j), with
    p_i = q_offset + i."""
    def symmetric(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + q_offset - kv_idx).abs()

    def causal_form(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + q_offset - kv_idx)

    return causal_form if causal else symmetric


def causal_mask_mod(q_offset: int):
    """FlexAttention's mask_mod: key j visible to query i where j <= p_i = q_offset + i."""
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx + q_offset >= kv_idx

    return mask_mod


def masks_keys(config: Config, causal: bool) -> bool:
    """Whether a causal flag is needed: SDPA's and JAX's is_causal align top-left, the same as
    bottom-right for seq_q = seq_k; a single decoding query sees every key, so needs none."""
    return causal and not is_decode(config)


# --- inputs ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Arrays:
    """The inputs of one configuration: q, do (batch, seq_q, heads, head_dim), k, v (batch,
    seq_k, heads, head_dim), slopes float32 (heads,); torch tensors or jax arrays."""

    config: Config
    q: Any
    k: Any
    v: Any
    do: Any
    slopes: Any


def torch_arrays(config: Config, dtype: str, device: torch.device) -> Arrays:
    def randn(queries):
        return torch.randn(config.batch, queries, config.heads, config.head_dim, dtype=getattr(torch, dtype),
                           device=device)

    return Arrays(config, randn(seq_q(config)), randn(config.seq_len), randn(config.seq_len), randn(seq_q(config)),
                  original.torch_alibi_slopes(config.heads, device))


def jax_arrays(config: Config, dtype: str) -> Arrays:
    import jax

    keys = jax.random.split(jax.random.key(0), 4)
    shapes = [(config.batch, n, config.heads, config.head_dim)
              for n in (seq_q(config), config.seq_len, config.seq_len, seq_q(config))]
    q, k, v, do = (jax.random.normal(key, shape, dtype) for key, shape in zip(keys, shapes))
    return Arrays(config, q, k, v, do, original.jax_alibi_slopes(config.heads))


def arrays(framework: str, config: Config, dtype: str, device: torch.device) -> Arrays:
    return torch_arrays(config, dtype, device) if framework == "torch" else jax_arrays(config, dtype)


def cast(x: Arrays, dtype: str) -> Arrays:
    """x with q, k, v and do in `dtype` (the same values, for a reference)."""
    def convert(array):
        return array.to(getattr(torch, dtype)) if isinstance(array, torch.Tensor) else array.astype(dtype)

    return dataclasses.replace(x, **{name: convert(getattr(x, name)) for name in ("q", "k", "v", "do")})


# --- providers ------------------------------------------------------------------------------


class AttentionProvider:
    """One implementation of attention with ALiBi on the Arrays of one configuration.
    `attend(causal)` returns (fn, constants): fn(q, k, v, *constants) -> o, like q. The
    constructor raises Unavailable where the provider cannot run."""

    name = ""
    framework = "torch"
    materialises_bias = False
    note: str | None = None  # what its rows measure, where not plain

    def __init__(self, x: Arrays):
        self.x, self.config = x, x.config

    def attend(self, causal: bool):
        raise NotImplementedError

    def untimed(self, op: str) -> str | None:
        """Why `op` is not timed at this configuration, or None."""
        return None

    def footprint(self) -> tuple[int, str | None]:
        """(bytes of what a row builds before its call, a materialized bias; what that is)."""
        if not self.materialises_bias:
            return 0, None
        shape, dtype = bias_shape(self.config), self.x.q.dtype
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return nbytes, f"the bias {shape} {str(dtype).removeprefix('torch.')} alone is {gb(nbytes)}"

    def call(self, op: str) -> Call:
        """The Call of `op`: o, or forward + backward (o, (dq, dk, dv)) by the cotangent do."""
        fn, constants = self.attend(is_causal(op))
        if op.startswith("fwd_bwd"):
            return self.fwd_bwd(fn, constants)
        return self.forward(fn, constants)

    def forward(self, fn, constants) -> Call:
        raise NotImplementedError

    def fwd_bwd(self, fn, constants) -> Call:
        raise NotImplementedError


class TorchAttention(AttentionProvider):
    """q, k, v as BSHD tensors; SDPA and Flex take (batch, heads, seq, head_dim) views of them."""

    def forward(self, fn, constants) -> Call:
        return Call(fn, (self.x.q, self.x.k, self.x.v, *constants))

    def fwd_bwd(self, fn, constants) -> Call:
        """Through autograd from leaves q, k, v; the gradients are returned, not accumulated."""
        q, k, v = (array.detach().requires_grad_() for array in (self.x.q, self.x.k, self.x.v))

        def fwd_bwd(q, k, v, do, *constants):
            o = fn(q, k, v, *constants)
            return o, torch.autograd.grad(o, (q, k, v), do)

        return Call(fwd_bwd, (q, k, v, self.x.do, *constants))


def _bhsd(*arrays):
    return tuple(array.transpose(1, 2) for array in arrays)


class TrinixAttention(TorchAttention):
    """trinix.torch.attention with the slopes, backend "triton"."""

    name = "triton"
    backend = "triton"  # "interpret" runs the same kernels through Triton's interpreter, on a CPU

    def __init__(self, x: Arrays):
        super().__init__(x)
        if self.backend == "triton" and x.q.device.type != "cuda":
            raise Unavailable(NEEDS_GPU)
        self.attention = import_module("trinix.torch.attention").attention

    def attend(self, causal):
        def attend(q, k, v, slopes):
            return self.attention(q, k, v, alibi=slopes, causal=causal, backend=self.backend)

        return attend, (self.x.slopes,)


class TrinixNoAlibi(TrinixAttention):
    """trinix.torch.attention without ALiBi: what the ALiBi term costs trinix's own kernels."""

    name = "triton_no_alibi"
    note = "trinix's kernels without ALiBi (what the ALiBi term costs them); causal: the mask alone"

    def attend(self, causal):
        def attend(q, k, v):
            return self.attention(q, k, v, causal=causal, backend=self.backend)

        return attend, ()


class Flex(TorchAttention):
    """FlexAttention, compiled (static shapes), ALiBi as its score_mod, a causal block mask."""

    name = "flex"
    compiled = True  # False: flex_attention eager, on any device (tests)
    note = "torch.compile(flex_attention, dynamic=False); ALiBi as a score_mod; causal: a block mask"

    def __init__(self, x: Arrays):
        super().__init__(x)
        if self.compiled and x.q.device.type != "cuda":
            raise Unavailable(NEEDS_GPU)
        self.module = import_module("torch.nn.attention.flex_attention")
        flex = self.module.flex_attention
        self.flex = torch.compile(flex, dynamic=False) if self.compiled else flex

    def untimed(self, op):
        if op.startswith("fwd_bwd") and self.config.name in FLEX_UNTIMED_BACKWARD:
            return "not timed at this size: about a second a call, and its compile, would take too much of the run"
        return None

    def attend(self, causal):
        c = self.config
        q_offset = c.seq_len - seq_q(c)
        score_mod = alibi_score_mod(self.x.slopes, causal, q_offset)
        block_mask = self.module.create_block_mask(causal_mask_mod(q_offset), None, None, seq_q(c), c.seq_len,
                                                   device=self.x.q.device) if causal else None

        def attend(q, k, v):
            return self.flex(*_bhsd(q, k, v), score_mod=score_mod, block_mask=block_mask).transpose(1, 2)

        return attend, ()


class SdpaNoBias(TorchAttention):
    """F.scaled_dot_product_attention without ALiBi: the same attention's ceiling."""

    name = "sdpa_no_bias"
    note = "no ALiBi (the ceiling); causal: is_causal (a decoding query sees every key: no mask)"

    def attend(self, causal):
        masked = masks_keys(self.config, causal)

        def attend(q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(*_bhsd(q, k, v), is_causal=masked).transpose(1, 2)

        return attend, ()


class SdpaBias(TorchAttention):
    """F.scaled_dot_product_attention with a materialized bias (torch_bias) as its attn_mask."""

    name = "sdpa_bias"
    materialises_bias = True
    note = ("a (1, heads, seq_q, seq_k) bias in the input dtype, built before the call (not in its time or "
            "memory); causal: -inf at the keys after each query")

    def attend(self, causal):
        bias = torch_bias(self.x.slopes, self.config, causal, self.x.q.dtype)

        def attend(q, k, v, bias):
            return torch.nn.functional.scaled_dot_product_attention(*_bhsd(q, k, v), attn_mask=bias).transpose(1, 2)

        return attend, (bias,)


class JaxAttention(AttentionProvider):
    """q, k, v as BSHD jax arrays, each op under jax.jit, its constants passed as arguments
    (a closed-over array would be compiled into the program)."""

    framework = "jax"

    def forward(self, fn, constants) -> Call:
        import jax

        return Call(jax.jit(fn), (self.x.q, self.x.k, self.x.v, *constants))

    def fwd_bwd(self, fn, constants) -> Call:
        import jax

        def fwd_bwd(q, k, v, do, *constants):
            o, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, *constants), q, k, v)
            return o, vjp(do)

        return Call(jax.jit(fwd_bwd), (self.x.q, self.x.k, self.x.v, self.x.do, *constants))


class TrinixJaxAttention(JaxAttention):
    """trinix.jax.attention with the slopes, backend "triton" (jax-triton)."""

    name = "jax_triton"
    backend = "triton"  # "interpret" runs the same kernels through Triton's interpreter, on a CPU

    def __init__(self, x: Arrays):
        super().__init__(x)
        if self.backend == "triton":
            require_jax_triton()
        self.attention = import_module("trinix.jax.attention").attention

    def attend(self, causal):
        def attend(q, k, v, slopes):
            return self.attention(q, k, v, alibi=slopes, causal=causal, backend=self.backend)

        return attend, (self.x.slopes,)


class JaxBias(JaxAttention):
    """jax.nn.dot_product_attention with a materialized bias (jax_bias), is_causal where causal."""

    implementation = ""
    materialises_bias = True

    def attend(self, causal):
        import jax

        bias = jax_bias(self.x.slopes, self.config, causal, self.x.q.dtype)
        masked = masks_keys(self.config, causal)

        def attend(q, k, v, bias):
            return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=masked,
                                                implementation=self.implementation)

        return attend, (bias,)


class JaxCudnnBias(JaxBias):
    name = "jax_cudnn_bias"
    implementation = "cudnn"
    note = ("a (1, heads, seq_q, seq_k) bias built before the call; causal: is_causal (cuDNN skips "
            "the masked blocks); the backward also computes the bias's gradient, as JAX's cuDNN path always does")

    def __init__(self, x: Arrays):
        super().__init__(x)
        require_jax_gpu()


class JaxXlaBias(JaxBias):
    name = "jax_xla_bias"
    implementation = "xla"
    note = "a (1, heads, seq_q, seq_k) bias built before the call; causal: is_causal (a mask)"


PROVIDER_CLASSES = {cls.name: cls for cls in (TrinixAttention, Flex, SdpaNoBias, TrinixNoAlibi, SdpaBias,
                                               TrinixJaxAttention, JaxCudnnBias, JaxXlaBias)}
TRINIX = {"torch": TrinixAttention, "jax": TrinixJaxAttention}
REFERENCE = {"torch": SdpaBias, "jax": JaxXlaBias}  # run in float32 by check_trinix
assert set(PROVIDER_CLASSES) == set(ATTENTION_PROVIDERS)


# --- the check and the rows -----------------------------------------------------------------


def _results(out) -> list:
    """o, or o, dq, dk, dv, of one call, as float32 numpy arrays."""
    arrays = [out] if not isinstance(out, tuple) else [out[0], *out[1]]
    return [np.asarray(a.detach().float().cpu() if isinstance(a, torch.Tensor) else a, np.float32) for a in arrays]


def check_trinix(framework: str, config: Config, dtype: str, device: torch.device) -> None:
    """Raise RuntimeError unless trinix's attention from `framework` (o and the gradients of q,
    k and v, every op) is within CHECK_TOLERANCE of REFERENCE's on the same values in float32.
    Nothing to check where trinix cannot run; where it fails, its rows will say why."""
    x = arrays(framework, config, dtype, device)
    try:
        mine = TRINIX[framework](x)
    except Unavailable:
        return
    reference = REFERENCE[framework](cast(x, "float32"))

    def precise():
        """Full float32 products for the reference (XLA's default on a GPU is TF32)."""
        if framework == "jax":
            import jax

            return jax.default_matmul_precision("highest")
        return contextlib.nullcontext()

    wrong = []
    for op in ops_at(config):
        try:
            got = _results(runnable(framework, mine.call(op)).start())
        except Exception:  # only wrong results stop the run
            break
        with precise():
            want = _results(runnable(framework, reference.call(op)).start())
        for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
            error, scale = float(np.abs(g - w).max()), max(1.0, float(np.abs(w).max()))
            if not error <= CHECK_TOLERANCE * scale:
                wrong.append(f"{op} {name}: max |error| {error:.3g} (largest |value| {scale:.3g})")
    if wrong:
        raise RuntimeError(f"trinix's attention through {framework} disagrees with {REFERENCE[framework].name} in "
                           f"float32 at {config.name}: " + "; ".join(wrong))


def _time(harness: Harness, provider: AttentionProvider, op: str) -> tuple:
    """(ms, burst ms, peak MB) of one row; burst ms: the torch binding of trinix timed as the
    JAX rows are, on a GPU."""
    call = provider.call(op)
    run = runnable(provider.framework, call)
    ms = harness.median_ms(provider.framework, run)
    burst_ms = harness.median_ms("torch", run, bursts=True) if harness.cuda and provider.name == "triton" else None
    return ms, burst_ms, harness.peak_mb(provider.framework, call, run)


def measure(harness: Harness, provider: AttentionProvider, op: str) -> tuple:
    """(ms, burst ms, peak MB, note) of one row. An op the provider does not time here, or
    whose bias cannot fit, is not built; a call that fails (out of memory, unsupported) is a row
    with its error, its memory freed."""
    if reason := provider.untimed(op):
        return None, None, None, reason
    needed, what = provider.footprint()
    if needed:
        available = free_bytes(provider.framework)
        if needed > 0.9 * available:
            return None, None, None, f"does not fit: {what}, {gb(available)} free"
    try:
        return (*_time(harness, provider, op), provider.note)
    except Exception as error:  # a provider that fails is a row with its error, not a crash
        note = failure_note(error)
    release_memory()  # after the except block, whose traceback held the failed call's arrays
    return None, None, None, note


def row_count(configs: list[Config]) -> int:
    return sum(len(ops_at(c)) for c in configs) * len(ATTENTION_PROVIDERS)


def attention_rows(harness: Harness, framework: str, configs: list[Config], dtype: str, selected: list[str],
                   copy_gbps: float, framework_note: str | None = None, progress: Progress | None = None,
                   check_config: Config = CHECK_CONFIG) -> list[dict]:
    """Rows of `framework`'s providers (ATTENTION_FRAMEWORK_PROVIDERS) at `configs`, those not
    in `selected` with a note, as those of a framework with `framework_note`. trinix is
    checked at `check_config` first (check_trinix), where it is selected."""
    if not configs:
        return []
    device = torch.device("cuda" if harness.cuda else "cpu")
    names = ATTENTION_FRAMEWORK_PROVIDERS[framework]
    if framework_note is None and TRINIX[framework].name in selected:
        check_trinix(framework, check_config, dtype, device)
        release_memory()
    harness = harness.capped(ROW_CAP_S)
    rows = []
    for config in configs:
        x = None if framework_note else arrays(framework, config, dtype, device)
        for name in names:
            note = framework_note or (None if name in selected else "not selected (--providers)")
            provider = None
            if note is None:
                try:
                    provider = PROVIDER_CLASSES[name](x)
                except Unavailable as error:
                    note = str(error)
            for op in ops_at(config):
                if progress:
                    progress.start(f"{ATTENTION} {config.name} {op} {name}")
                ms, burst_ms, peak, op_note = (None, None, None, note) if provider is None else \
                    measure(harness, provider, op)
                rows.append(row(ATTENTION, config.name, op, name, ms=ms, burst_ms=burst_ms,
                                roofline_ms=roofline_ms(config, dtype, copy_gbps), peak_mb=peak, note=op_note,
                                tflops=tflops(config, op, ms)))
                if progress:
                    progress.finish_row()
            del provider
        del x
        if framework == "torch":
            torch.compiler.reset()  # Flex's graphs of this configuration, within dynamo's recompile limit
        release_memory()
    return rows
