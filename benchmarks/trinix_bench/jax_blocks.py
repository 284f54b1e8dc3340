"""The JAX blocks (schema.BLOCKS), each under jax.jit: the Llama-style block with a jnp rotation or
trinix's; the BLOOM-style block with jax.nn.dot_product_attention and a materialized bias, or
trinix's attention.

Layouts: weights (in, out); q, k, v (batch, seq, heads, head_dim), as jax.nn.dot_product_attention
takes them. Its implementation is cuDNN's where that compiles, else XLA's (and the rows say so).
"""

import functools

import jax
import jax.numpy as jnp

from .blocks import ROPE_BASE, kv_heads
from .harness import Call
from .providers import import_module
from .schema import Config


def jnp_rotation(q, k, cos, sin):
    """Half-split rotation of q, k (batch, seq, heads, head_dim) by cos, sin (seq, head_dim)."""
    def rotate(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos[:, None] + jnp.concatenate([-x2, x1], axis=-1) * sin[:, None]

    return rotate(q), rotate(k)


def rotary_tables(config: Config, dtype):
    """cos, sin (seq, head_dim) at positions 0..seq-1: angles in float32, then cast."""
    d = config.head_dim
    inv_freq = 1.0 / ROPE_BASE ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    freqs = jnp.arange(config.seq_len, dtype=jnp.float32)[:, None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def llama_block(x, wq, wk, wv, wo, cos, sin, *, rotate, attention):
    """x (batch, seq, hidden) -> projections -> rotate(q, k, cos, sin) -> causal attention
    (grouped kv heads) -> output projection, like x."""
    b, s, _ = x.shape
    q, k, v = ((x @ w).reshape(b, s, -1, cos.shape[-1]) for w in (wq, wk, wv))
    q, k = rotate(q, k, cos, sin)
    return attention(q, k, v).reshape(b, s, -1) @ wo


def bloom_block(x, wqkv, bqkv, wd, bd, *constants, heads: int, attention):
    """x (batch, seq, hidden) -> fused qkv projection, split per head as BLOOM does ->
    attention(q, k, v, *constants) -> dense projection, like x."""
    b, s, _ = x.shape
    fused = (x @ wqkv + bqkv).reshape(b, s, heads, 3, -1)
    o = attention(fused[..., 0, :], fused[..., 1, :], fused[..., 2, :], *constants)
    return o.reshape(b, s, -1) @ wd + bd


def causal_attention(q, k, v, bias=None, *, implementation):
    return jax.nn.dot_product_attention(q, k, v, bias, is_causal=True, implementation=implementation)


@functools.cache
def attention_implementation(q_shape: tuple, k_shape: tuple, dtype, bias_shape: tuple | None):
    """("cudnn", None) where cuDNN's attention compiles for these shapes, forward and backward,
    else (None, why)."""
    def spec(shape):
        return None if shape is None else jax.ShapeDtypeStruct(shape, dtype)

    def loss(q, k, v, bias):
        return causal_attention(q, k, v, bias, implementation="cudnn").astype(jnp.float32).sum()

    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
            spec(q_shape), spec(k_shape), spec(k_shape), spec(bias_shape)).compile()
    except Exception as error:  # no cuDNN attention here: JAX's default
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        return None, f"attention by XLA: cuDNN's does not compile here ({reason})"
    return "cudnn", None


def causal_alibi_bias(slopes, seq_len: int, dtype):
    """(1, heads, seq, seq): slope * (j - i), for keys up to each query (is_causal masks the rest)."""
    positions = jnp.arange(seq_len)
    return (slopes[:, None, None] * (positions[None, :] - positions[:, None])).astype(dtype)[None]


class JaxBlock:
    """One block configuration in JAX: x and the weights (seeded), the output cotangent, and
    each provider's jitted calls. fwd returns the output; fwd_bwd (output, gradients of x and
    the weights)."""

    framework = "jax"

    def __init__(self, method: str, config: Config, dtype: str, backend: str):
        self.method, self.config, self.dtype, self.backend = method, config, dtype, backend
        keys = iter(jax.random.split(jax.random.key(0), 6))
        hidden = config.heads * config.head_dim

        def randn(*shape, scale=1.0):
            return jax.random.normal(next(keys), shape, jnp.float32) * scale

        if method == "llama_block":
            kv = kv_heads(config) * config.head_dim
            weights = [randn(hidden, out, scale=hidden ** -0.5) for out in (hidden, kv, kv, hidden)]
        else:
            weights = [randn(hidden, 3 * hidden, scale=hidden ** -0.5), randn(3 * hidden, scale=0.02),
                       randn(hidden, hidden, scale=hidden ** -0.5), randn(hidden, scale=0.02)]
        x = randn(config.batch, config.seq_len, hidden)
        self.leaves32 = (x, *weights)  # float32; the timed calls get them in `dtype`
        self.grad32 = randn(*x.shape)
        self.notes: dict[str, str] = {}  # provider -> what its rows should say of how it ran

    def _attention(self, dtype, provider: str, bias_shape=None):
        c = self.config
        q = (c.batch, c.seq_len, c.heads, c.head_dim)
        k = q if self.method == "bloom_block" else (*q[:2], kv_heads(c), c.head_dim)
        implementation = None  # cuDNN's attention takes 16-bit arrays only
        if jnp.dtype(dtype).itemsize == 2:
            implementation, note = attention_implementation(q, k, jnp.dtype(dtype), bias_shape)
            if note:
                self.notes[provider] = note
        return functools.partial(causal_attention, implementation=implementation)

    def providers(self, dtype) -> dict:
        """Provider -> () -> (block, its constants); the plain block first."""
        c = self.config
        if self.method == "llama_block":
            rope = import_module("trinix.jax.rope")
            trinix_rotation = functools.partial(rope.apply_rotary_pos_emb, backend=self.backend)

            def llama(rotate, provider):
                block = functools.partial(llama_block, rotate=rotate, attention=self._attention(dtype, provider))
                return block, rotary_tables(c, dtype)

            return {"jax": lambda: llama(jnp_rotation, "jax"),
                    "jax_trinix": lambda: llama(trinix_rotation, "jax_trinix")}
        slopes = jnp.asarray(import_module("trinix.alibi").alibi_slopes(c.heads), jnp.float32)
        attention = import_module("trinix.jax.attention").attention

        def cudnn_bias():
            bias = causal_alibi_bias(slopes, c.seq_len, dtype)
            return (functools.partial(bloom_block, heads=c.heads,
                                      attention=self._attention(dtype, "jax_cudnn_bias", bias.shape)), (bias,))

        def trinix():
            attend = functools.partial(attention, causal=True, backend=self.backend)
            return functools.partial(bloom_block, heads=c.heads,
                                     attention=lambda q, k, v, slopes: attend(q, k, v, alibi=slopes)), (slopes,)

        return {"jax_cudnn_bias": cudnn_bias, "jax_trinix": trinix}

    def reference(self) -> tuple:
        """(output, gradients) of the plain block in float32, matrix products in full float32."""
        with jax.default_matmul_precision("highest"):
            fn, constants = next(iter(self.providers(jnp.float32).values()))()
            call = _fwd_bwd(fn, self.leaves32, constants, self.grad32)
            return call.fn(*call.args)

    def call(self, provider: str, op: str) -> Call:
        dtype = jnp.dtype(self.dtype)
        fn, constants = self.providers(dtype)[provider]()
        leaves = tuple(t.astype(dtype) for t in self.leaves32)
        if op == "fwd":
            return Call(jax.jit(fn), (*leaves, *constants))
        return _fwd_bwd(fn, leaves, constants, self.grad32.astype(dtype))

    @staticmethod
    def error(out, reference: tuple) -> float:
        """The largest relative error of the output (and gradients) against the reference's."""
        outs = out if isinstance(out, tuple) else (out,)
        return max(float(jnp.linalg.norm(o.astype(jnp.float32) - r) / jnp.linalg.norm(r))
                   for o, r in zip(outs, reference))


def _fwd_bwd(fn, leaves: tuple, constants: tuple, grad) -> Call:
    """Forward and backward through jax.vjp from the leaves (x and the weights), jitted; returns
    (output, gradients of the leaves)."""
    n = len(leaves)

    def fwd_bwd(grad, *arrays):
        out, vjp = jax.vjp(lambda *leaves: fn(*leaves, *arrays[n:]), *arrays[:n])
        return (out, *vjp(grad))

    return Call(jax.jit(fwd_bwd), (grad, *leaves, *constants))
