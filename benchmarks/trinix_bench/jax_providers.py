"""The JAX providers: the original path in jax.numpy under jax.jit ("jax_xla") and trinix
through JAX ("jax_triton")."""

import functools

import torch

from . import original
from .harness import Call
from .providers import NEEDS_GPU, Inputs, Provider, Unavailable, import_module, trinix_encoding
from .schema import Config
from .torch_providers import TrinixTorch


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
        return original.jax_inv_freq(self.config.head_dim)

    @functools.cached_property
    def tables(self):
        return original.jax_rope_cos_sin(self.inv_freq, self.config.seq_len, self.dtype)

    @functools.cached_property
    def slopes(self):
        return original.jax_alibi_slopes(self.config.heads)


def jax_fwd_bwd(apply, x: JaxInputs) -> Call:
    """Forward and backward through jax.vjp. The outputs are returned beside the cotangents:
    the backward of a linear op needs no forward value, and XLA drops an unused forward."""
    import jax

    def fwd_bwd(q, k, cos, sin, grads):
        out, vjp = jax.vjp(lambda q, k: apply(q, k, cos, sin), q, k)
        return out, vjp(grads)

    return Call(jax.jit(fwd_bwd), (x.q, x.k, *x.tables, x.grads))


def require_jax_gpu() -> None:
    """Raise Unavailable unless JAX runs on a CUDA GPU."""
    import jax

    if jax.default_backend() not in ("gpu", "cuda"):
        raise Unavailable(NEEDS_GPU if not torch.cuda.is_available()
                          else f"needs JAX on a CUDA GPU; JAX here runs on {jax.default_backend()}")


def require_jax_triton() -> None:
    """Raise Unavailable unless trinix's kernels can launch from JAX (a GPU and jax_triton)."""
    require_jax_gpu()
    try:  # through trinix, which keeps jax_triton's import from unsetting Triton's cache dir
        import_module("trinix.jax.launcher").jax_triton()
    except ImportError as error:
        raise Unavailable(f"jax_triton cannot be imported ({error})") from None


def _jit(fn, *static_argnums):
    import jax

    return jax.jit(fn, static_argnums=static_argnums)


class OriginalJax(Provider):
    """The original path in plain jax.numpy under jax.jit (XLA)."""

    name = "jax_xla"
    framework = "jax"
    notes = {"rope_total": "generate + apply, jitted together",
             "alibi_bias": "writes every batch copy of the bias (a JAX array has no stride-0 view)",
             "alibi_add_to_scores": "in place: the scores are donated to the jit; bias fused in by XLA",
             "alibi_softmax": "softmax in float32, bias fused in by XLA"}

    def rope_generate(self):
        return Call(_jit(original.jax_rope_cos_sin, 1, 2), (self.x.inv_freq, self.config.seq_len, self.x.dtype))

    def rope_apply(self):
        return Call(_jit(original.jax_rope_apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(_jit(original.jax_rope_total), (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return jax_fwd_bwd(original.jax_rope_apply, self.x)

    def alibi_slopes(self):
        return Call(_jit(original.jax_alibi_slopes, 0), (self.config.heads,))

    def alibi_bias(self):
        c = self.config
        return Call(_jit(original.jax_alibi_bias, 1, 2), (self.x.slopes, c.seq_len, c.batch))

    def alibi_total(self):
        c = self.config
        return Call(_jit(original.jax_alibi_total, 0, 1, 2), (c.heads, c.seq_len, c.batch))

    def alibi_add_to_scores(self):
        import jax

        return Call(jax.jit(original.jax_add_to_scores, donate_argnums=0), (self.x.new_scores(), self.x.slopes),
                    donates_first=True)

    def alibi_softmax(self):
        return Call(_jit(original.jax_softmax), (self.x.scores, self.x.slopes))


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
        super().__init__(x, method)
        if self.backend == "triton":
            require_jax_triton()
        # module: trinix.jax.rope or .alibi; encoding: its FastRoPE- or FastALiBiPositionEmbedding
        self.module, self.encoding = trinix_encoding("jax", method, self.config, self.backend)

    def apply(self, q, k, cos, sin):
        return self.encoding.apply_rotary_pos_emb(q, k, cos, sin)

    def rope_generate(self):
        return Call(_jit(lambda x: self.encoding(x)), (self.x.q,))

    def rope_apply(self):
        return Call(_jit(self.apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(_jit(lambda q, k: self.encoding.rotate(q, k)), (self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return jax_fwd_bwd(self.apply, self.x)

    def alibi_slopes(self):
        return Call(_jit(functools.partial(self.module.alibi_slopes, backend=self.backend), 0), (self.config.heads,))

    def alibi_bias(self):
        c = self.config
        return Call(_jit(lambda seq_len, batch: self.encoding(seq_len, batch), 0, 1), (c.seq_len, c.batch))

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

        return Call(jax.jit(lambda scores: self.encoding.add_to_scores(scores), donate_argnums=0),
                    (self.x.new_scores(),), donates_first=True)

    def alibi_softmax(self):
        return Call(_jit(lambda scores: self.encoding.softmax(scores)), (self.x.scores,))
