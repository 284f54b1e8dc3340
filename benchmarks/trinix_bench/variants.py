"""RoPE variants (schema.ROPE_VARIANTS): the apply op at one configuration, changed one way at a
time (GQA, BHSD layout, bf16, fp32, partial and interleaved rotation), each call checked against
the original rotation generalised to the variant before it is timed."""

import functools

import torch

from . import original
from .harness import Call, Harness, release_memory, runnable
from .progress import Progress
from .providers import NEEDS_GPU, Unavailable, import_module
from .schema import ROPE_VARIANTS, VARIANT_PROVIDERS, Config, row, variant_config


def rope_variant_apply(q, k, cos, sin, layout: str = "bshd", interleaved: bool = False):
    """The original rotation, generalised: the first cos.shape[-1] columns of each head of q and
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
            turned = original.rotate_half(x_rot)
        return torch.cat((x_rot * cos + turned * sin, x[..., rotary:]), dim=-1)

    return rotate(q), rotate(k)


def variant_inputs(base: Config, options: dict, device: torch.device) -> tuple:
    """q, k (in the variant's layout) and its cos, sin tables (seq_len, rotary_dim), for
    `base` changed by `options` (ROPE_VARIANTS)."""
    dtype = getattr(torch, options.get("dtype", "float16"))
    rotary = options.get("rotary_dim", base.head_dim)
    q = torch.randn(base.batch, base.seq_len, base.heads, base.head_dim, dtype=dtype, device=device)
    k = torch.randn(base.batch, base.seq_len, options.get("k_heads", base.heads), base.head_dim, dtype=dtype,
                    device=device)
    if options.get("layout") == "bhsd":
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    cos, sin = original.torch_rope_cos_sin(original.torch_inv_freq(rotary, device), base.seq_len, dtype)
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
            liger = import_module("liger_kernel.ops.rope").LigerRopeFunction
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
        trinix_rope = import_module("trinix.torch.rope")
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
            rows.append(row("rope", variant_config(variant, base.name), "apply", name, ms=ms, roofline_ms=roofline,
                            note=note))
            if progress:
                progress.finish_row()
        del q, k, cos, sin, calls, expected
        torch.compiler.reset()
        release_memory()
    return rows
