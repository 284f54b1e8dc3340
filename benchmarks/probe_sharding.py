"""Probe of trinix's sharded code paths on one device: each call on plain tensors beside the same
call on DTensors of a mesh of one device (the DTensor dispatch and trinix's placement checks
around the same kernels), and context_parallel_attention on a group of one beside attention.
Eager, median ms of forward, or forward + backward where marked.

    python benchmarks/probe_sharding.py [--seq 4096] [--backend auto]

A process group of one (nccl on a GPU, gloo on the CPU) is made here: run it without torchrun.
On the CPU "auto" is the torch fallback; give --backend interpret for the kernels (slow).
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from trinix.torch import FastALiBiPositionEmbedding, FastRoPEPositionEmbedding, context_parallel_attention


def median_ms(function, device: str, repeats: int = 20) -> float:
    """Median wall time of function() in ms, after one warm-up call, synchronized on a GPU."""
    function()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def forward_backward(attend, q, k, v):
    def step():
        o = attend(q, k, v)
        o.backward(torch.ones_like(o))
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{tempfile.mktemp()}",
                            rank=0, world_size=1)
    mesh = init_device_mesh(device, (1,))
    dtype = torch.float16 if device == "cuda" else torch.float32
    batch, heads, head_dim = 2, 16, 128
    q, k, v = (torch.randn(batch, args.seq, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    scores = torch.randn(batch, heads, 1024, 1024, device=device, dtype=dtype)
    rope = FastRoPEPositionEmbedding(dim=head_dim, backend=args.backend)
    alibi = FastALiBiPositionEmbedding(num_heads=heads, backend=args.backend, device=device)

    def attend(q, k, v):
        return alibi.attention(q, k, v, causal=True, backend=args.backend)

    def ring(q, k, v):
        return context_parallel_attention(q, k, v, alibi=alibi, causal=True, backend=args.backend)

    by_heads = [distribute_tensor(x, mesh, [Shard(2)]) for x in (q, k, v)]
    sharded_scores = distribute_tensor(scores, mesh, [Shard(1)])
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    sharded_leaves = [x.detach().clone().requires_grad_() for x in by_heads]
    rows = [
        ("rope.rotate", lambda: rope.rotate(q, k), lambda: rope.rotate(*by_heads[:2])),
        ("alibi.add_to_scores (1024 x 1024)", lambda: alibi.add_to_scores(scores),
         lambda: alibi.add_to_scores(sharded_scores)),
        ("attention, causal ALiBi, fwd + bwd", forward_backward(attend, *leaves),
         forward_backward(attend, *sharded_leaves)),
        ("context_parallel_attention (1 rank), fwd + bwd", forward_backward(attend, *leaves),
         forward_backward(ring, *leaves)),
    ]
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, torch {torch.__version__}, "
          f"{dtype}, batch {batch}, seq {args.seq}, heads {heads}, head_dim {head_dim}, backend {args.backend}")
    print("| call | unsharded ms | sharded ms | ratio |\n|---|---|---|---|")
    for name, plain, other in rows:
        plain_ms, other_ms = median_ms(plain, device), median_ms(other, device)
        print(f"| {name} | {plain_ms:.3f} | {other_ms:.3f} | {other_ms / plain_ms:.2f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
