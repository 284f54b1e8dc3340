"""Probe of trinix's attention kernels on a CUDA GPU, launched as KernelCalls: correctness
against SDPA with the ALiBi bias materialized (medium), then forward and forward + backward
times beside FlexAttention with an ALiBi score_mod and SDPA without a bias, and trinix without
ALiBi (the same kernels, alibi "none"). Config "decode": one query per sequence over 8192 keys,
causal, beside the time to read K and V at the copy bandwidth measured here.

    python benchmarks/probe_attention.py [--configs medium large decode] [--skip-flex]
    ncu ... python benchmarks/probe_attention.py --once large   # one forward + backward per form
    ncu ... python benchmarks/probe_attention.py --once large --once-of flex  # Flex's: compiling, then one

fp16, head_dim 128, BSHD. TFLOP/s counts 4·B·H·Sq·Sk·D forward (half when causal) and 3.5x
that forward + backward.
"""

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from trinix.alibi import alibi_slopes
from trinix.attention import run_backward, run_forward
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix.torch.launcher import launch, operand

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from trinix_bench.attention import alibi_score_mod  # noqa: E402

CONFIGS = {"medium": (2, 64, 2048), "large": (1, 128, 8192), "xl": (1, 128, 32768)}
DECODE = (16, 64, 8192)  # batch, heads, keys; one query


def trinix_fwd(q, k, v, slopes, alibi, causal=None):
    calls = attention_fwd_calls(operand(q), operand(k), operand(v), operand(slopes), alibi=alibi, causal=causal)
    return run_forward(calls, dict(q=q, k=k, v=v, slopes=slopes),
                       lambda call, named: launch(call, named, interpret=False))


def trinix_fwd_bwd(q, k, v, slopes, alibi, do, causal=None):
    o, lse = trinix_fwd(q, k, v, slopes, alibi, causal)
    calls = attention_bwd_calls(operand(q), operand(k), operand(v), operand(o), operand(do), operand(slopes),
                                alibi=alibi, causal=causal)
    return run_backward(calls, dict(q=q, k=k, v=v, o=o, do=do, lse=lse, slopes=slopes),
                        lambda call, named: launch(call, named, interpret=False))


def dense_bias(slopes, seq, alibi):
    """(H, S, S) float32: -m|i - j|, or -m(i - j) with -inf above the diagonal."""
    pos = torch.arange(seq, device=slopes.device, dtype=torch.float32)
    distance = pos[:, None] - pos[None, :]
    if alibi == "symmetric":
        return -slopes[:, None, None] * distance.abs()
    return (-slopes[:, None, None] * distance).masked_fill(distance < 0, float("-inf"))


def decode():
    batch, heads, keys = DECODE
    q = torch.randn(batch, 1, heads, 128, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(batch, keys, heads, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    slopes = torch.from_numpy(alibi_slopes(heads)).float().cuda()
    copy = torch.empty(2**28, device="cuda", dtype=torch.float32)
    copy_gbps = 2 * copy.numel() * 4 / do_bench(lambda: copy.clone(), warmup=10, rep=50) / 1e6
    roofline = 2 * k.numel() * 2 / copy_gbps / 1e6
    rows = {"trinix fwd": lambda: trinix_fwd(q, k, v, slopes, "causal"),
            "sdpa no bias fwd": lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))}
    for row, fn in rows.items():
        ms = do_bench(fn, warmup=25, rep=100)
        print(f"decode {DECODE} {row:18s} {ms:9.4f} ms, {ms / roofline:.2f}x K+V at {copy_gbps:.0f} GB/s "
              f"({roofline:.4f} ms)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["medium", "large", "decode"])
    parser.add_argument("--skip-flex", action="store_true")
    parser.add_argument("--once", choices=list(CONFIGS), help="one forward + backward per form, for ncu")
    parser.add_argument("--once-of", choices=("trinix", "flex"), default="trinix",
                        help="whose forward + backward --once runs: Flex's (static shapes, symmetric ALiBi) runs "
                             "twice, the first compiling")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    torch.manual_seed(0)
    if args.once:
        b, h, s = CONFIGS[args.once]
        q, k, v, do = (torch.randn(b, s, h, 128, device="cuda", dtype=torch.float16) for _ in range(4))
        slopes = torch.from_numpy(alibi_slopes(h)).float().cuda()
        if args.once_of == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
            qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
            for _ in range(2):
                o = flex(qt, kt, vt, score_mod=alibi_score_mod(slopes, causal=False, q_offset=0))
                o.backward(do.transpose(1, 2))
        else:
            for alibi in ("symmetric", "causal"):
                trinix_fwd_bwd(q, k, v, slopes, alibi, do)
        torch.cuda.synchronize()
        return
    b, h, s = CONFIGS["medium"]
    q, k, v = (torch.randn(b, 512, 8, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    slopes = torch.from_numpy(alibi_slopes(8)).float().cuda()
    for alibi in ("symmetric", "causal"):
        o, _ = trinix_fwd(q, k, v, slopes, alibi)
        bias = dense_bias(slopes, 512, alibi).to(torch.float16)
        want = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=bias)
        error = (o.float() - want.transpose(1, 2).float()).abs().max().item()
        print(f"check {alibi}: max |trinix - SDPA(materialized bias)| = {error:.2e}")

    if not args.skip_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        # Static shapes, as the report compiles it: reused across configurations, a default
        # compile recompiles with dynamic shapes and runs slower (benchmarks/NOTES.md).
        flex = torch.compile(flex_attention, dynamic=False)
    for name in args.configs:
        if name == "decode":
            decode()
            continue
        b, h, s = CONFIGS[name]
        q, k, v, do = (torch.randn(b, s, h, 128, device="cuda", dtype=torch.float16) for _ in range(4))
        slopes = torch.from_numpy(alibi_slopes(h)).float().cuda()
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        flops = 4 * b * h * s * s * 128
        for alibi in ("symmetric", "causal"):
            causal = alibi == "causal"
            work = flops / 2 if causal else flops
            rows = {
                "trinix fwd": lambda: trinix_fwd(q, k, v, slopes, alibi),
                "trinix fwd+bwd": lambda: trinix_fwd_bwd(q, k, v, slopes, alibi, do),
                "trinix no bias fwd": lambda: trinix_fwd(q, k, v, None, "none", causal),
                "sdpa no bias fwd": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),
            }
            if not args.skip_flex:
                score_mod = alibi_score_mod(slopes, causal, q_offset=0)
                mask = create_block_mask(lambda bi, hi, qi, ki: qi >= ki, None, None, s, s) if causal else None
                rows["flex alibi fwd"] = lambda: flex(qt, kt, vt, score_mod=score_mod, block_mask=mask)
            for row, fn in rows.items():
                ms = do_bench(fn, warmup=25, rep=100)
                tflops = work * (3.5 if "bwd" in row else 1) / ms / 1e9
                print(f"{name} {alibi:9s} {row:18s} {ms:9.3f} ms {tflops:6.0f} TFLOP/s")


if __name__ == "__main__":
    main()
