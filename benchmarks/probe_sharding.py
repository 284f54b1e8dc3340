"""Probe of trinix's sharded code paths on one device: each call on plain arrays beside the same
call sharded over a mesh of one device, and context_parallel_attention on a ring of one beside
attention. Forward, or forward + backward where marked.

    python benchmarks/probe_sharding.py [--framework torch|jax] [--seq 4096] [--backend auto]

torch: eager calls on DTensors (the DTensor dispatch and trinix's placement checks around the
same kernels), torch's own rotation on DTensors for scale, and on a GPU a Llama-like attention
block tensor-parallel over heads beside it plain, eager and under torch.compile; a process group
of one (nccl on a GPU, gloo on the CPU) is made here: run it without torchrun. Two times per
call, after five warm-up calls: "one call", the median wall time of a call waited for alone
(what the host adds shows here), and "in a row", the median over five bursts of the mean of 20
calls dispatched back to back (what a model whose GPU is busy sees). JAX: jitted calls on
arrays placed on one device beside the same arrays with a NamedSharding over a mesh of one
device (heads split), the ring inside shard_map, timed alike. On the CPU "auto" is the
framework's fallback; give --backend interpret for the kernels (slow).
"""

import argparse
import statistics
import tempfile
import time


def times_ms(function, wait, repeats: int = 20, bursts: int = 5) -> tuple[float, float]:
    """(median wall ms of one call waited for alone, median over `bursts` of the mean ms of
    `repeats` calls in a row), after five warm-up calls (compilation, the allocator's growth)."""
    for _ in range(5):
        wait(function())
    alone = []
    for _ in range(repeats):
        start = time.perf_counter()
        wait(function())
        alone.append((time.perf_counter() - start) * 1e3)
    in_a_row = []
    for _ in range(bursts):
        start = time.perf_counter()
        for _ in range(repeats - 1):
            function()
        wait(function())
        in_a_row.append((time.perf_counter() - start) * 1e3 / repeats)
    return statistics.median(alone), statistics.median(in_a_row)


def print_rows(title: str, rows, wait) -> None:
    print(title)
    print("| call | unsharded: one call / in a row, ms | sharded: one call / in a row, ms | ratio in a row |")
    print("|---|---|---|---|")
    for name, plain, other in rows:
        (plain_one, plain_row), (other_one, other_row) = times_ms(plain, wait), times_ms(other, wait)
        print(f"| {name} | {plain_one:.3f} / {plain_row:.3f} | {other_one:.3f} / {other_row:.3f} | "
              f"{other_row / plain_row:.2f} |", flush=True)


def attention_block(hidden: int, heads: int, rotate):
    """A Llama-like attention block, x (batch, seq, hidden) -> (batch, seq, hidden): q, k, v
    projections, rotate(q, k), causal SDPA, the output projection."""
    import torch

    class AttentionBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(hidden, hidden, bias=False) for _ in range(4))

        def forward(self, x):
            batch, seq, _ = x.shape
            q, k, v = (project(x).view(batch, seq, heads, -1) for project in (self.q, self.k, self.v))
            q, k = rotate(q, k)
            o = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                                                 is_causal=True)
            return self.o(o.transpose(1, 2).reshape(batch, seq, -1))

    return AttentionBlock()


def torch_rotation(cos, sin):
    """transformers' rotation of (batch, seq, heads, head_dim) q and k by (seq, 1, head_dim) tables."""
    from trinix_bench.torch_blocks import rotate_half  # benchmarks/ is this script's folder

    return lambda q, k: (q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)


def torch_rows(args):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from trinix.torch import FastALiBiPositionEmbedding, FastRoPEPositionEmbedding, context_parallel_attention

    def forward_backward(function, *arrays):
        def step():
            outputs = function(*arrays)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            torch.autograd.backward(outputs, [torch.ones_like(out) for out in outputs])
        return step

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
        ("rope.rotate, fwd + bwd", forward_backward(rope.rotate, *leaves[:2]),
         forward_backward(rope.rotate, *sharded_leaves[:2])),
        ("alibi.add_to_scores (1024 x 1024)", lambda: alibi.add_to_scores(scores),
         lambda: alibi.add_to_scores(sharded_scores)),
        ("attention, causal ALiBi, fwd + bwd", forward_backward(attend, *leaves),
         forward_backward(attend, *sharded_leaves)),
        ("context_parallel_attention (1 rank), fwd + bwd", forward_backward(attend, *leaves),
         forward_backward(ring, *leaves)),
    ]
    # DTensor's own dispatch beside trinix's: an aten op, and torch's rotation by tables.
    tables = tuple(table[:, None] for table in rope(q, args.seq))  # (seq, 1, head_dim)
    replicated = [distribute_tensor(table, mesh, [Replicate()]) for table in tables]
    rotation, parallel_rotation = torch_rotation(*tables), torch_rotation(*replicated)
    rows += [
        ("torch.add (an aten op, for scale)", lambda: q + k, lambda: by_heads[0] + by_heads[1]),
        ("torch's rotation (aten ops, for scale)", lambda: rotation(q, k), lambda: parallel_rotation(*by_heads[:2])),
        ("torch's rotation, fwd + bwd", forward_backward(rotation, *leaves[:2]),
         forward_backward(parallel_rotation, *sharded_leaves[:2])),
    ]
    if device == "cuda":  # DTensor has no sharding strategy for the CPU's SDPA
        # The rotation inside a model: a block tensor-parallel over heads (DTensors throughout) beside it
        # plain, with trinix's rotation and with torch's (DTensor's own cost in the block, for scale), eager
        # and compiled.
        x = torch.randn(batch, args.seq, heads * head_dim, device=device, dtype=dtype)
        plan = {**{name: ColwiseParallel(use_local_output=False) for name in ("q", "k", "v")}, "o": RowwiseParallel()}

        def inference(block):
            def forward():
                with torch.no_grad():
                    return block(x)
            return forward

        for name, rotate, parallel_rotate in (("rope.rotate", rope.rotate, rope.rotate),
                                              ("torch's rotation", rotation, parallel_rotation)):
            block = attention_block(heads * head_dim, heads, rotate).to(device, dtype)
            parallel_block = attention_block(heads * head_dim, heads, parallel_rotate).to(device, dtype)
            parallel_block.load_state_dict(block.state_dict())
            parallel_block = parallelize_module(parallel_block, mesh, plan)
            title = f"block: q, k, v projections, {name}, causal SDPA, o projection"
            rows += [(f"{title}, inference", inference(block), inference(parallel_block)),
                     (f"{title}, fwd + bwd", forward_backward(block, x), forward_backward(parallel_block, x))]
            if name == "rope.rotate":  # under torch.compile "auto" rotates by the compiler's own ops
                compiled, parallel_compiled = torch.compile(block), torch.compile(parallel_block)
                rows += [(f"{title}, torch.compile, inference", inference(compiled), inference(parallel_compiled)),
                         (f"{title}, torch.compile, fwd + bwd", forward_backward(compiled, x),
                          forward_backward(parallel_compiled, x))]

    def wait(out):
        if device == "cuda":
            torch.cuda.synchronize()

    print_rows(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, torch {torch.__version__}, "
               f"{dtype}, batch {batch}, seq {args.seq}, heads {heads}, head_dim {head_dim}, backend {args.backend}",
               rows, wait)
    dist.destroy_process_group()


def jax_rows(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from trinix.jax import alibi_add, alibi_slopes, attention, context_parallel_attention, rope_rotate

    device = jax.devices()[0]
    dtype = jnp.float16 if device.platform == "gpu" else jnp.float32
    batch, heads, head_dim = 2, 16, 128
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (batch, args.seq, heads, head_dim), dtype) for key in keys[:3])
    scores = jax.random.normal(keys[3], (batch, heads, 1024, 1024), dtype)
    slopes = alibi_slopes(heads)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    mesh = Mesh(np.array([device]), ("x",))
    by_heads = NamedSharding(mesh, P(None, None, "x", None))
    sharded_q, sharded_k, sharded_v = (jax.device_put(x, by_heads) for x in (q, k, v))
    sharded_scores = jax.device_put(scores, NamedSharding(mesh, P(None, "x", None, None)))

    rotate = jax.jit(lambda q, k: rope_rotate(q, k, inv_freq, backend=args.backend))
    add = jax.jit(lambda scores: alibi_add(scores, slopes, backend=args.backend))

    def loss(attend):
        return jax.jit(jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))

    attend = loss(lambda q, k, v: attention(q, k, v, alibi=slopes, causal=True, backend=args.backend))
    by_sequence = P(None, "x", None, None)
    ring = loss(jax.shard_map(
        lambda q, k, v: context_parallel_attention(q, k, v, axis_name="x", alibi=slopes, causal=True,
                                                   backend=args.backend),
        mesh=mesh, in_specs=(by_sequence,) * 3, out_specs=by_sequence))
    rows = [
        ("rope_rotate", lambda: rotate(q, k), lambda: rotate(sharded_q, sharded_k)),
        ("alibi_add (1024 x 1024)", lambda: add(scores), lambda: add(sharded_scores)),
        ("attention, causal ALiBi, fwd + bwd", lambda: attend(q, k, v),
         lambda: attend(sharded_q, sharded_k, sharded_v)),
        ("context_parallel_attention (1 device), fwd + bwd", lambda: attend(q, k, v), lambda: ring(q, k, v)),
    ]
    print_rows(f"{device.device_kind}, jax {jax.__version__}, {jnp.dtype(dtype).name}, batch {batch}, "
               f"seq {args.seq}, heads {heads}, head_dim {head_dim}, backend {args.backend}",
               rows, jax.block_until_ready)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    torch_rows(args) if args.framework == "torch" else jax_rows(args)


if __name__ == "__main__":
    main()
