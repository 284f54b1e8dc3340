"""Where RoPE's time goes on a CUDA GPU: host time per call, and kernel time per tile variant.

    python benchmarks/probe_rope.py [--profile] [--items 1 2 3 4 5]

1. Host: the original small configuration (fp16 q and k, 4x512x32x64), called back to back
   without synchronising (the GPU finishes each kernel faster than the host issues the next),
   so wall time / calls is the host's cost of one call: trinix's rotate, the same KernelCall
   launched straight through Triton, and an empty torch op for scale; then the forward alone
   with q and k needing grad, forward + backward through autograd, trinix's and two torch
   multiplications' for scale (as torch ops and in a Python autograd.Function), and the
   benchmark's apply and fwd_bwd rows of PyTorch, trinix and Liger; then each forward +
   backward again with autograd's multithreading off (the backward on the calling thread,
   not autograd's device thread). --profile adds the functions that take the host's time
   (cProfile), in rotate, in forward + backward, and in the Python autograd.Function's
   forward + backward.
2. Kernel: the rotate kernel (cos/sin computed in the kernel, and the table path) at the
   large and xl configurations, and large in BHSD layout and with GQA (k of 8 heads), for
   tile limits x num_warps, each checked against the torch fallback first, timed by
   CUDA-graph replay (no host time inside), against the roofline at the copy bandwidth as the
   benchmark measures it. (A copy timed by graph replay reads
   2.7 TB/s on the H200, against 4.2 TB/s timed by events: not a usable ceiling.)
3. Variants at large through the public API, default tiles: GQA (k with 8 heads), BHSD, bf16,
   fp32, interleaved pairs, partial rotation (32 of 128 columns, as Pythia; 64 interleaved,
   as GPT-J), forward + backward (all columns, and 32); timed by triton.testing.do_bench
   (autograd does not go into a CUDA graph), whose L2 flush before each call hides the
   host's dispatch at this size.
4. Timing methods: the benchmark's `apply` rows at medium, large and xl, trinix through torch
   timed both ways the benchmark times (CUDA events after an L2 flush, its torch rows; wall
   time of bursts, its JAX rows), trinix through JAX and XLA's jnp by bursts: whether the JAX
   rows' gap to torch's is the method or the JAX launch; bursts of 10 calls (the benchmark's
   earlier method) and of about BURST_MS (its method now).
5. Generate cos/sin at every configuration: the table kernel by CUDA-graph replay, as the
   benchmark times it, and the host's time per call: whether those rows are the kernel's
   time or the host's.
"""

import argparse
import cProfile
import dataclasses
import functools
import pstats
import statistics
import time

import torch
import triton.testing

from trinix_bench.harness import BURST_MS, Call, Harness, copy_gbps, runnable
from trinix_bench.jax_providers import JaxInputs, OriginalJax, TrinixJax
from trinix_bench.schema import CONFIGS
from trinix_bench.torch_providers import Liger, OriginalTorch, TorchInputs, TrinixTorch

import trinix.kernels.rope as kernels_rope
from trinix.torch.launcher import launch, operand
from trinix.torch.rope import FastRoPEPositionEmbedding

SMALL = (4, 512, 32, 64)
LARGE = {"large": (1, 8192, 64, 128), "xl": (1, 32768, 128, 128)}
# (heads, tokens) tile limits: kernels.rope's head limit (_HEAD_TILE_ELEMENTS, and
# _BHSD_COMPUTED_HEAD_TILE_ELEMENTS for "bhsd" computing cos/sin) and _TILE_ELEMENTS.
TILES = ((2048, 2048), (4096, 4096), (8192, 4096), (8192, 8192), (16384, 16384))
# BHSD keeps a head's tokens contiguous: tiles of few heads and many tokens too.
BHSD_TILES = ((64, 4096), (128, 4096), (512, 4096), (2048, 4096), (8192, 4096))
# name: (layout, tile limits, k's heads (None: q's))
TILE_CASES = {"large": ("bshd", TILES, None), "xl": ("bshd", TILES, None),
              "large-bhsd": ("bhsd", BHSD_TILES, None), "large-gqa": ("bshd", TILES, 8)}
WARPS = (4, 8)


def host_us_per_call(fn, calls=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e6 * host / calls


def graph_ms(fn):
    """Median GPU time of fn by CUDA-graph replay (host launch cost excluded)."""
    return triton.testing.do_bench_cudagraph(fn, rep=200)


class _Doubled(torch.autograd.Function):
    """q * 2, k * 2 with a Python backward: the cost of a Python autograd node, for scale."""

    @staticmethod
    def forward(ctx, q, k):
        return q * 2, k * 2

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        return grad_q * 2, grad_k * 2


def probe_host(profile: bool):
    batch, seq, heads, head_dim = SMALL
    q = torch.randn(batch, seq, heads, head_dim, dtype=torch.float16, device="cuda")
    k = torch.randn_like(q)
    rope = FastRoPEPositionEmbedding(head_dim).cuda()
    frequencies = rope.frequencies(q.device)
    call = kernels_rope.rope_apply_call(operand(q), operand(k))
    arrays = dict(q=q, k=k, frequencies=frequencies)
    q_leaf, k_leaf = q.detach().requires_grad_(), k.detach().requires_grad_()
    grads = (torch.randn_like(q), torch.randn_like(k))
    cases = {
        "trinix rope.rotate(q, k)": lambda: rope.rotate(q, k),
        "launch(KernelCall) alone": lambda: launch(call, arrays, interpret=False),
        "torch.empty_like(q) (scale)": lambda: torch.empty_like(q),
        "trinix rotate forward, q and k need grad": lambda: rope.rotate(q_leaf, k_leaf),
        "trinix rotate fwd+bwd (autograd.grad)": lambda: torch.autograd.grad(rope.rotate(q_leaf, k_leaf), (q_leaf, k_leaf), grads),
        "torch q*2, k*2 fwd+bwd (scale)": lambda: torch.autograd.grad((q_leaf * 2, k_leaf * 2), (q_leaf, k_leaf), grads),
        "Python autograd.Function q*2, k*2 fwd+bwd": lambda: torch.autograd.grad(
            _Doubled.apply(q_leaf, k_leaf), (q_leaf, k_leaf), grads),
    }
    # The benchmark's apply and forward + backward rows at small, each provider's whole call.
    inputs = TorchInputs(CONFIGS["rope"][0], "float16", torch.device("cuda"))
    for provider in (OriginalTorch, TrinixTorch, Liger):
        for op in ("apply", "fwd_bwd"):
            row = getattr(provider(inputs, "rope"), f"rope_{op}")()
            cases[f"benchmark {op} row: {provider.name}"] = functools.partial(row.fn, *row.args)
    for name, fn in cases.items():
        print(f"host  {name:40s} {host_us_per_call(fn):8.1f} us/call")
    # Autograd runs the backward of CUDA tensors on a device thread of its own: the same steps
    # with the backward on the calling thread show what that hand-over costs.
    with torch.autograd.set_multithreading_enabled(False):
        for name, fn in cases.items():
            if "bwd" in name:
                print(f"host  {name + ', backward on this thread':40s} {host_us_per_call(fn):8.1f} us/call")
    if profile:  # the host's time in trinix's rotate, its forward + backward, and a bare node's
        for name in ("trinix rope.rotate(q, k)", "trinix rotate fwd+bwd (autograd.grad)",
                     "Python autograd.Function q*2, k*2 fwd+bwd"):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(500):
                cases[name]()
            profiler.disable()
            torch.cuda.synchronize()
            print(f"\n{name}, 500 calls under cProfile:")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def probe_tiles(gbps: float):
    limits = ("_HEAD_TILE_ELEMENTS", "_BHSD_COMPUTED_HEAD_TILE_ELEMENTS", "_TILE_ELEMENTS")
    defaults = {name: getattr(kernels_rope, name) for name in limits}
    for name, (layout, tiles, k_heads) in TILE_CASES.items():
        batch, seq, heads, head_dim = LARGE[name.split("-")[0]]
        q = torch.randn(batch, seq, heads, head_dim, dtype=torch.float16, device="cuda")
        k = torch.randn(batch, seq, k_heads or heads, head_dim, dtype=torch.float16, device="cuda")
        if layout == "bhsd":
            q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        rope = FastRoPEPositionEmbedding(head_dim, max_position_embeddings=seq, layout=layout).cuda()
        cos, sin = rope(q, seq)
        frequencies = rope.frequencies(q.device)
        expected = rope.rotate(q, k, backend="torch")
        roofline_ms = 2 * (q.numel() + k.numel()) * q.element_size() / gbps / 1e6
        print(f"\n{name} q {tuple(q.shape)} k {tuple(k.shape)} fp16: roofline {roofline_ms:.4f} ms at {gbps:.0f} GB/s")
        for source in ("computed", "table"):
            for head_tile, tile in tiles:
                for limit, value in zip(limits, (head_tile, head_tile, tile)):
                    setattr(kernels_rope, limit, value)
                kernels_rope.rope_apply_call.cache_clear()
                table = source == "table"
                call = kernels_rope.rope_apply_call(operand(q), operand(k), layout=layout,
                                                   cos=operand(cos) if table else None,
                                                   sin=operand(sin) if table else None)
                arrays = dict(q=q, k=k, cos=cos if table else None, sin=sin if table else None,
                              frequencies=None if table else frequencies)
                for warps in WARPS:
                    variant = dataclasses.replace(call, num_warps=warps)
                    out = launch(variant, arrays, interpret=False)
                    ok = all(torch.allclose(o.float(), e.float(), atol=2e-3, rtol=2e-3) for o, e in zip(out, expected))
                    ms = graph_ms(lambda: launch(variant, arrays, interpret=False)) if ok else float("nan")
                    c = variant.constexprs
                    print(f"{name:10s} {source:8s} tiles {head_tile:5d} {tile:5d} (S{c['BLOCK_S']:3d} H{c['BLOCK_H']:3d}"
                          f" k S{c['BLOCK_S_K']:3d} H{c['BLOCK_H_K']:3d}) "
                          f"warps {warps}: {ms:.4f} ms  {ms / roofline_ms:.3f}x roofline  {'ok' if ok else 'WRONG'}")
        for limit, value in defaults.items():
            setattr(kernels_rope, limit, value)
        kernels_rope.rope_apply_call.cache_clear()


def probe_variants(gbps: float):
    """GQA, BHSD, bf16, fp32, interleaved pairs, partial rotation and forward + backward at
    large, each checked first (item 3)."""
    batch, seq, heads, head_dim = LARGE["large"]
    variants = {"gqa-64-8": dict(k_heads=8), "bhsd": dict(layout="bhsd"), "bf16": dict(dtype=torch.bfloat16),
                "fp32": dict(dtype=torch.float32), "rotary-32": dict(rotary_dim=32),
                "interleaved": dict(interleaved=True), "rotary-64-interleaved": dict(rotary_dim=64, interleaved=True),
                "fwd+bwd": dict(backward=True),
                "rotary-32 fwd+bwd": dict(rotary_dim=32, backward=True)}
    print()
    for name, variant in variants.items():
        dtype, layout = variant.get("dtype", torch.float16), variant.get("layout", "bshd")
        q = torch.randn(batch, seq, heads, head_dim, dtype=dtype, device="cuda")
        k = torch.randn(batch, seq, variant.get("k_heads", heads), head_dim, dtype=dtype, device="cuda")
        if layout == "bhsd":
            q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
        rope = FastRoPEPositionEmbedding(variant.get("rotary_dim", head_dim), max_position_embeddings=seq,
                                         layout=layout, interleaved=variant.get("interleaved", False)).cuda()
        moved = 2 * (q.numel() + k.numel()) * q.element_size()
        if variant.get("backward"):
            q.requires_grad_(), k.requires_grad_()
            grads = (torch.randn_like(q), torch.randn_like(k))

            def run():
                return torch.autograd.grad(rope.rotate(q, k), (q, k), grads)

            moved *= 2
            expected = torch.autograd.grad(rope.rotate(q, k, backend="torch"), (q, k), grads)
        else:
            def run():
                return rope.rotate(q, k)

            expected = rope.rotate(q, k, backend="torch")
        tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3
        ok = all(torch.allclose(o.float(), e.float(), atol=tolerance, rtol=tolerance) for o, e in zip(run(), expected))
        ms = triton.testing.do_bench(run) if ok else float("nan")
        roofline_ms = moved / gbps / 1e6
        print(f"large {name:21s} q {tuple(q.shape)} k {tuple(k.shape)}: {ms:.4f} ms, roofline {roofline_ms:.4f} "
              f"ms, {ms / roofline_ms:.3f}x  {'ok' if ok else 'WRONG'}")


def probe_timing():
    """Item 4."""
    harness = Harness(torch.device("cuda"), warmup=3, iters=30)
    print()
    for config in CONFIGS["rope"][1:]:
        torch_inputs = TorchInputs(config, "float16", torch.device("cuda"))
        jax_inputs = JaxInputs(config, "float16")
        runs = {
            "torch": runnable("torch", TrinixTorch(torch_inputs, "rope").rope_apply()),
            "jax-triton": runnable("jax", TrinixJax(jax_inputs, "rope").rope_apply()),
            "jax-xla": runnable("jax", OriginalJax(jax_inputs, "rope").rope_apply()),
        }
        for run in runs.values():
            for _ in range(harness.warmup):
                run.wait(run.start())
        times = {"torch, events": statistics.median(harness._torch_gpu_ms(runs["torch"], harness.iters))}
        for name, run in runs.items():
            times[f"{name}, bursts of 10"] = statistics.median(harness._burst_ms(run, harness.iters, calls=10))
            times[f"{name}, {BURST_MS:g} ms bursts"] = harness.median_ms("torch", run, bursts=True)
        print(f"{config.name:6s} apply: " + ", ".join(f"{name} {ms:.4f} ms" for name, ms in times.items()))
        del runs, torch_inputs, jax_inputs


def probe_generate():
    """Item 5."""
    harness = Harness(torch.device("cuda"), warmup=3, iters=100)
    print()
    for config in CONFIGS["rope"]:
        q = torch.randn(config.batch, config.seq_len, config.heads, config.head_dim, dtype=torch.float16,
                        device="cuda")
        rope = FastRoPEPositionEmbedding(config.head_dim, max_position_embeddings=config.seq_len).cuda()
        run = runnable("torch", Call(rope, (q, config.seq_len)))
        kernel_ms = graph_ms(lambda: rope(q, config.seq_len))
        print(f"{config.name:6s} generate: kernel {kernel_ms:.4f} ms (graph replay), as the benchmark times it "
              f"{harness.median_ms('torch', run):.4f} ms, host {host_us_per_call(run.start):.1f} us/call")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the host path")
    parser.add_argument("--items", type=int, nargs="+", choices=range(1, 6), default=range(1, 6),
                        help="which of the items above to run (default: all)")
    args = parser.parse_args()
    device = torch.device("cuda")
    gbps = copy_gbps(Harness(device, warmup=3, iters=20), device)
    print(f"copy bandwidth {gbps:.0f} GB/s (the benchmark's measurement)")
    items = {1: lambda: probe_host(args.profile), 2: lambda: probe_tiles(gbps), 3: lambda: probe_variants(gbps),
             4: probe_timing, 5: probe_generate}
    for item in sorted(set(args.items)):
        items[item]()


if __name__ == "__main__":
    main()
