"""The torch blocks (schema.BLOCKS): a Llama-style block as transformers writes it, eager and
compiled, with its rotation or trinix's; a BLOOM-style block with transformers' BLOOM attention,
FlexAttention, SDPA with a bias, or trinix's attention.

Layouts as in transformers: weights (out, in); q, k, v (batch, heads, seq, head_dim).
"""

import functools

import torch
import torch.nn.functional as F

from .blocks import ROPE_BASE, kv_heads
from .harness import Call
from .providers import import_module
from .schema import Config


def rotate_half(x):
    """transformers' rotate_half: the halves by slicing."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def transformers_rotation(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb: q, k (batch, heads, seq, head_dim), cos and sin
    (batch, seq, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotary_tables(config: Config, dtype, device):
    """cos, sin (batch, seq, head_dim) at position_ids 0..seq-1, as transformers' rotary
    embedding makes them: angles in float32, then cast."""
    d = config.head_dim
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    positions = torch.arange(config.seq_len, device=device).expand(config.batch, -1)
    freqs = positions[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def llama_block(x, wq, wk, wv, wo, cos, sin, *, rotate):
    """x (batch, seq, hidden) -> projections -> rotate(q, k, cos, sin) -> causal SDPA (grouped
    kv heads) -> output projection, like x."""
    b, s, _ = x.shape
    q, k, v = (F.linear(x, w).view(b, s, -1, cos.shape[-1]).transpose(1, 2) for w in (wq, wk, wv))
    q, k = rotate(q, k, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.linear(o.transpose(1, 2).reshape(b, s, -1), wo)


def bloom_block(x, wqkv, bqkv, wd, bd, *constants, heads: int, attend):
    """x (batch, seq, hidden) -> fused qkv projection, split per head as BloomAttention._reshape
    does -> attend(q, k, v, *constants) -> dense projection, like x."""
    b, s, _ = x.shape
    fused = F.linear(x, wqkv, bqkv).view(b, s, heads, 3, -1)
    q, k, v = (fused[..., i, :].transpose(1, 2) for i in range(3))
    return F.linear(attend(q, k, v, *constants).transpose(1, 2).reshape(b, s, -1), wd, bd)


def bloom_alibi_and_mask(slopes, config: Config, dtype):
    """transformers' BLOOM constants in `dtype`: the ALiBi tensor (batch * heads, 1, seq),
    slope * key position, and the causal mask (batch, 1, seq, seq), finfo.min above the diagonal."""
    b, s = config.batch, config.seq_len
    positions = torch.arange(s, device=slopes.device)
    alibi = (slopes[:, None] * positions).expand(b, -1, -1).reshape(-1, 1, s).to(dtype)
    mask = torch.full((s, s), torch.finfo(dtype).min, dtype=dtype, device=slopes.device).triu(1)
    return alibi, mask.expand(b, 1, s, s)


def transformers_attention(q, k, v, alibi, mask):
    """BloomAttention's: q k^T / sqrt(head_dim) by baddbmm onto the ALiBi tensor, the mask
    added, softmax in float32 cast back, bmm with v; (batch, heads, seq, head_dim)."""
    b, h, s, d = q.shape
    scores = alibi.baddbmm(q.reshape(b * h, s, d), k.reshape(b * h, s, d).transpose(-1, -2), beta=1.0,
                           alpha=d ** -0.5)
    probs = F.softmax(scores.view(b, h, s, s) + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.bmm(probs.view(b * h, s, s), v.reshape(b * h, s, d)).view(b, h, s, d)


def causal_alibi_bias(slopes, seq_len: int, dtype):
    """(1, heads, seq, seq): slope * (j - i) up to the diagonal, -inf after it. Relative
    distances stay small where softmax weighs them, so 16 bits hold them."""
    positions = torch.arange(seq_len, device=slopes.device)
    distance = (positions[None, :] - positions[:, None]).float()
    bias = (slopes[:, None, None] * distance).masked_fill_(distance > 0, float("-inf"))
    return bias.to(dtype)[None]


def sdpa_attention(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@functools.cache
def _compiled_flex():
    flex_attention = import_module("torch.nn.attention.flex_attention").flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_constants(slopes, config: Config):
    """(ALiBi score_mod, causal block mask) of FlexAttention."""
    flex = import_module("torch.nn.attention.flex_attention")

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    s = config.seq_len
    return alibi, flex.create_block_mask(causal, None, None, s, s, device=slopes.device)


def flex_attention(q, k, v, score_mod, block_mask):
    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)


def trinix_attention(q, k, v, slopes, *, backend: str):
    attention = import_module("trinix.torch.attention").attention
    return attention(q, k, v, alibi=slopes, causal=True, layout="bhsd", backend=backend)


def _compiled(fn):
    return torch.compile(fn, dynamic=False, fullgraph=True)


def llama_providers(config: Config, dtype, device, backend: str) -> dict:
    """Provider -> () -> (block, its constants)."""
    hf = import_module("trinix.torch.hf")
    plain = functools.partial(llama_block, rotate=transformers_rotation)
    with_trinix = functools.partial(llama_block, rotate=functools.partial(hf.apply_rotary_pos_emb, backend=backend))

    def tables():
        return rotary_tables(config, dtype, device)

    return {"eager": lambda: (plain, tables()), "eager_trinix": lambda: (with_trinix, tables()),
            "compile": lambda: (_compiled(plain), tables()),
            "compile_trinix": lambda: (_compiled(with_trinix), tables())}


def bloom_providers(config: Config, dtype, device, backend: str) -> dict:
    """Provider -> () -> (block, its constants)."""
    slopes = torch.from_numpy(import_module("trinix.alibi").alibi_slopes(config.heads)).float().to(device)

    def block(attend):
        return functools.partial(bloom_block, heads=config.heads, attend=attend)

    return {"eager": lambda: (block(transformers_attention), bloom_alibi_and_mask(slopes, config, dtype)),
            "flex": lambda: (block(flex_attention), flex_constants(slopes, config)),
            "sdpa_bias": lambda: (block(sdpa_attention), (causal_alibi_bias(slopes, config.seq_len, dtype),)),
            "trinix": lambda: (block(functools.partial(trinix_attention, backend=backend)), (slopes,))}


class TorchBlock:
    """One block configuration in torch: x and the weights (seeded), the output cotangent, and
    each provider's calls. fwd returns the output; fwd_bwd (output, gradients of x and the
    weights)."""

    framework = "torch"

    def __init__(self, method: str, config: Config, dtype: str, backend: str, device: torch.device):
        self.method, self.config, self.dtype, self.backend, self.device = method, config, dtype, backend, device
        generator = torch.Generator(device).manual_seed(0)
        hidden = config.heads * config.head_dim

        def randn(*shape, scale=1.0):
            return torch.randn(*shape, generator=generator, device=device) * scale

        if method == "llama_block":
            kv = kv_heads(config) * config.head_dim
            weights = [randn(out, hidden, scale=hidden ** -0.5) for out in (hidden, kv, kv, hidden)]
        else:
            weights = [randn(3 * hidden, hidden, scale=hidden ** -0.5), randn(3 * hidden, scale=0.02),
                       randn(hidden, hidden, scale=hidden ** -0.5), randn(hidden, scale=0.02)]
        x = randn(config.batch, config.seq_len, hidden)
        self.leaves32 = (x, *weights)  # float32; the timed calls get them in `dtype`
        self.grad32 = randn(*x.shape)

    def providers(self, dtype) -> dict:
        build = llama_providers if self.method == "llama_block" else bloom_providers
        return build(self.config, dtype, self.device, self.backend)

    def reference(self) -> tuple:
        """(output, gradients) of the plain block in float32."""
        fn, constants = next(iter(self.providers(torch.float32).values()))()
        call = _fwd_bwd(fn, self.leaves32, constants, self.grad32)
        return tuple(t.detach() for t in call.fn(*call.args))

    def call(self, provider: str, op: str) -> Call:
        dtype = getattr(torch, self.dtype)
        fn, constants = self.providers(dtype)[provider]()
        leaves = tuple(t.to(dtype) for t in self.leaves32)
        if op == "fwd":
            return Call(torch.no_grad()(fn), (*leaves, *constants))
        return _fwd_bwd(fn, leaves, constants, self.grad32.to(dtype))

    @staticmethod
    def error(out, reference: tuple) -> float:
        """The largest relative error of the output (and gradients) against the reference's."""
        outs = out if isinstance(out, tuple) else (out,)
        return max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(outs, reference))


def _fwd_bwd(fn, leaves: tuple, constants: tuple, grad) -> Call:
    """Forward and backward through autograd from leaves (x and the weights); returns (output,
    gradients of the leaves), not accumulated into .grad."""
    leaves = tuple(t.detach().requires_grad_() for t in leaves)

    def fwd_bwd(grad, *arrays):
        out = fn(*arrays)
        return (out.detach(), *torch.autograd.grad(out, arrays[:len(leaves)], grad))

    return Call(fwd_bwd, (grad, *leaves, *constants))
