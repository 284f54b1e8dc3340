"""The torch providers: the original PyTorch path eager ("pytorch") and compiled
("torch_compile"), trinix through PyTorch ("triton") and Liger-Kernel's RoPE ("liger")."""

import functools

import torch

from . import original
from .harness import Call
from .providers import NEEDS_GPU, Inputs, Provider, Unavailable, import_module, trinix_encoding
from .schema import Config


class TorchInputs(Inputs):
    def __init__(self, config: Config, dtype: str, device: torch.device):
        super().__init__(config)
        self.dtype, self.device = getattr(torch, dtype), device

    def _randn(self, *shape):
        return torch.randn(*shape, dtype=self.dtype, device=self.device)

    @functools.cached_property
    def inv_freq(self):
        return original.torch_inv_freq(self.config.head_dim, self.device)

    @functools.cached_property
    def tables(self):
        """cos, sin (seq_len, head_dim) by the original path, the tables every apply row rotates by."""
        return original.torch_rope_cos_sin(self.inv_freq, self.config.seq_len, self.dtype)

    @functools.cached_property
    def slopes(self):
        return original.torch_alibi_slopes(self.config.heads, self.device)


def torch_fwd_bwd(apply, x: TorchInputs) -> Call:
    """Forward and backward through autograd from leaves q and k; the gradients are returned,
    not accumulated into .grad."""
    q, k = x.q.detach().requires_grad_(), x.k.detach().requires_grad_()

    def fwd_bwd(q, k, cos, sin, grads):
        return torch.autograd.grad(apply(q, k, cos, sin), (q, k), grads)

    return Call(fwd_bwd, (q, k, *x.tables, x.grads))


class OriginalTorch(Provider):
    """The original PyTorch path, eager."""

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
        return Call(self.compiled(original.torch_rope_cos_sin), (self.x.inv_freq, self.config.seq_len, self.x.dtype))

    def rope_apply(self):
        return Call(self.compiled(original.torch_rope_apply), (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.compiled(original.torch_rope_total), (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.compiled(original.torch_rope_apply), self.x)

    def alibi_slopes(self):
        return Call(self.compiled(original.torch_alibi_slopes), (self.config.heads, self.x.device))

    def alibi_bias(self):
        c = self.config
        return Call(self.compiled(original.torch_alibi_bias), (self.x.slopes, c.seq_len, c.batch))

    def alibi_total(self):
        c = self.config
        return Call(self.compiled(original.torch_alibi_total), (c.heads, c.seq_len, c.batch, self.x.device))

    def alibi_add_to_scores(self):
        return Call(self.compiled(original.torch_add_to_scores), (self.x.scores, self.x.slopes))

    def alibi_softmax(self):
        return Call(self.compiled(original.torch_softmax), (self.x.scores, self.x.slopes))


class CompiledTorch(OriginalTorch):
    """torch.compile (default mode, static shapes) of the original PyTorch path."""

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
        # module: trinix.torch.rope or .alibi; encoding: its FastRoPE- or FastALiBiPositionEmbedding
        self.module, self.encoding = trinix_encoding("torch", method, self.config, self.backend, device=x.device)

    def rope_generate(self):
        return Call(self.encoding, (self.x.q, self.config.seq_len))

    def rope_apply(self):
        return Call(self.encoding.apply_rotary_pos_emb, (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.encoding.rotate, (self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.encoding.apply_rotary_pos_emb, self.x)

    def alibi_slopes(self):
        return Call(functools.partial(self.module.alibi_slopes, device=self.x.device, backend=self.backend),
                    (self.config.heads,))

    def alibi_bias(self):
        return Call(self.encoding, (self.config.seq_len, self.config.batch))

    def alibi_total(self):
        alibi = self.module

        def total(num_heads, seq_len, batch):
            slopes = alibi.alibi_slopes(num_heads, device=self.x.device, backend=self.backend)
            bias = alibi.alibi_bias(slopes, seq_len, backend=self.backend)
            return bias.expand(batch, *bias.shape)

        c = self.config
        return Call(total, (c.heads, c.seq_len, c.batch))

    def alibi_add_to_scores(self):
        return Call(functools.partial(self.encoding.add_to_scores, inplace=True), (self.x.scores,))

    def alibi_softmax(self):
        return Call(self.encoding.softmax, (self.x.scores,))


class Liger(Provider):
    """Liger-Kernel's RoPE (liger_kernel.ops.rope), which rotates q and k in place."""

    name = "liger"
    missing = {"rope_generate": "Liger-Kernel has no cos/sin generator"}
    notes = {"rope_apply": "in place", "rope_total": "cos/sin by the original PyTorch path, then Liger in place",
             "rope_fwd_bwd": "in place"}

    def __init__(self, x: TorchInputs, method: str):
        super().__init__(x, method)
        if method != "rope":
            raise Unavailable("Liger-Kernel has no ALiBi")
        if x.device.type != "cuda":
            raise Unavailable(NEEDS_GPU)
        self.rope_function = import_module("liger_kernel.ops.rope").LigerRopeFunction

    def apply(self, q, k, cos, sin):
        """Liger takes (batch, heads, seq, head_dim) views and cos/sin (1, seq, head_dim); a
        transposed BSHD tensor is such a view, so nothing is copied."""
        q_rot, k_rot = self.rope_function.apply(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])[:2]
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    def total(self, inv_freq, q, k):
        return self.apply(q, k, *original.torch_rope_cos_sin(inv_freq, q.shape[1], q.dtype))

    def rope_apply(self):
        return Call(self.apply, (self.x.q, self.x.k, *self.x.tables))

    def rope_total(self):
        return Call(self.total, (self.x.inv_freq, self.x.q, self.x.k))

    def rope_fwd_bwd(self):
        return torch_fwd_bwd(self.apply, self.x)
