"""Context-parallel attention for PyTorch: ring attention over a torch.distributed process
group, on q, k and v sharded over the sequence, forward and backward, ALiBi at global
positions. Where each rank's chunks sit in the sequence: trinix.attention (ring_chunks,
chunk_offset).

Each rank keeps its queries; keys and values pass around the ring (each rank sends to the next
and receives from the previous), one step per rank. Each step runs the attention kernels on the
chunks the rank holds, with the q_offset of their global positions, and merges the partial
results by their log-sum-exp. The backward runs the kernels' backward with the merged o and lse
and passes each key chunk's dk and dv around the ring with it, back to the rank that owns it.
"""

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from trinix import attention as planner
from trinix import fallback
from trinix.attention import ARGUMENTS, INPUTS, SEQ_AXIS, Options
from trinix.rope import split_bshd
from trinix.torch.attention import attention, launch_bwd, launch_fwd, planned
from trinix.torch import sharding
from trinix.torch.launcher import TorchOps, resolve_backend


class _Ring:
    """The ranks of `group` in a ring: each sends to the next and receives from the previous."""

    def __init__(self, group):
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.previous = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def pass_on(self, tensors: tuple[Tensor, ...]) -> "_Transfer":
        """Start sending `tensors` to the next rank and receiving the previous rank's."""
        sent = tuple(tensor.contiguous() for tensor in tensors)
        received = tuple(torch.empty_like(tensor) for tensor in sent)
        requests = dist.batch_isend_irecv(
            [dist.P2POp(dist.isend, tensor, self.next, self.group) for tensor in sent]
            + [dist.P2POp(dist.irecv, tensor, self.previous, self.group) for tensor in received])
        return _Transfer(requests, sent, received)


class _Transfer(NamedTuple):
    """Transfers in flight: their requests, the tensors sent (kept until the transfers end) and
    those being received."""

    requests: list
    sent: tuple[Tensor, ...]
    received: tuple[Tensor, ...]

    def wait(self) -> tuple[Tensor, ...]:
        for request in self.requests:
            request.wait()
        return self.received


def _forward(arrays: dict, options: Options, backend: str):
    """(o, lse) of one pair of chunks."""
    if backend == "torch":
        return fallback.attention(TorchOps, *(arrays[name] for name in INPUTS), options, with_lse=True)
    return launch_fwd(arrays, options, backend == "interpret")


def _backward(arrays: dict, options: Options, backend: str):
    """(dq, dk, dv) of one pair of chunks, from the merged o and lse."""
    if backend == "torch":
        return fallback.attention_backward(TorchOps, *(arrays[name] for name in (*INPUTS, "o", "lse", "do")), options)
    return launch_bwd(arrays, options, backend == "interpret")


def _rows(x: Tensor, layout: str) -> Tensor:
    """Per-row values (batch, heads, seq) broadcast against a tensor like q."""
    return (x.transpose(1, 2) if layout == "bshd" else x).unsqueeze(-1)


def _merge(o: Tensor, lse: Tensor, o_chunk: Tensor, lse_chunk: Tensor, layout: str) -> None:
    """o and lse (in place) become the softmax over their keys and the chunk's: each part
    weighted by exp(its lse - the merged lse). A row no key has reached yet (lse -inf) weighs 0."""
    merged = torch.logaddexp(lse, lse_chunk)
    finite = torch.where(merged == -math.inf, 0.0, merged)
    o.mul_(_rows(torch.exp(lse - finite), layout)).add_(o_chunk * _rows(torch.exp(lse_chunk - finite), layout))
    lse.copy_(merged)


def _part(x: Tensor, chunk: tuple[int, int, int], axis: int) -> Tensor:
    """The rows of `chunk` (of trinix.attention.ring_chunks) of x along its sequence axis."""
    return x.narrow(axis, chunk[0], chunk[2])


def _chunk_inputs(q: Tensor, held: tuple[Tensor, Tensor], slopes, q_chunk, k_chunk, axis: int) -> dict:
    """The kernels' inputs (by `INPUTS` name) of a query chunk of q against a key chunk of the
    held k and v."""
    k, v = (_part(x, k_chunk, axis) for x in held)
    return dict(zip(INPUTS, (_part(q, q_chunk, axis), k, v, slopes, None, None)))


def _pairs(ring: _Ring, step: int, seq_len: int, zigzag: bool, causal: bool):
    """(query chunk, key chunk, q_offset) of each pair of chunks that ring step `step` runs: this
    rank's queries against the keys of the rank `step` places before it, where a key is visible."""
    keys = planner.ring_chunks((ring.rank - step) % ring.size, ring.size, seq_len, zigzag)
    for q_chunk in planner.ring_chunks(ring.rank, ring.size, seq_len, zigzag):
        for k_chunk in keys:
            offset = planner.chunk_offset(q_chunk, k_chunk, causal)
            if offset is not None:
                yield q_chunk, k_chunk, offset


class _RingAttention(torch.autograd.Function):
    """o of this rank's queries against the keys of every rank; dq, dk, dv by the ring backward."""

    @staticmethod
    def forward(ctx, q, k, v, slopes, options: Options, ring: _Ring, zigzag: bool, backend: str):
        batch, seq_len, heads, _ = split_bshd(q.shape, options.layout)
        axis = SEQ_AXIS[options.layout]
        o = torch.zeros(q.shape, dtype=_compute(q), device=q.device)
        lse = torch.full((batch, heads, seq_len), -math.inf, dtype=torch.float32, device=q.device)
        held = (k, v)
        for step in range(ring.size):
            transfer = ring.pass_on(held) if step < ring.size - 1 else None
            for q_chunk, k_chunk, offset in _pairs(ring, step, seq_len, zigzag, options.causal):
                arrays = _chunk_inputs(q, held, slopes, q_chunk, k_chunk, axis)
                o_chunk, lse_chunk = _forward(arrays, options._replace(q_offset=offset), backend)
                _merge(_part(o, q_chunk, axis), _part(lse, q_chunk, 2), o_chunk, lse_chunk, options.layout)
            held = transfer.wait() if transfer else held
        o = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, slopes, o, lse)
        ctx.options, ctx.ring, ctx.zigzag, ctx.backend = options, ring, zigzag, backend
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, slopes, o, lse = ctx.saved_tensors
        options, ring = ctx.options, ctx.ring
        seq_len, axis = split_bshd(q.shape, options.layout)[1], SEQ_AXIS[options.layout]
        dq = torch.zeros(q.shape, dtype=_compute(q), device=q.device)
        grads = tuple(torch.zeros(x.shape, dtype=_compute(q), device=x.device) for x in (k, v))
        held = (k, v)
        for step in range(ring.size):
            transfer = ring.pass_on(held) if step < ring.size - 1 else None
            for q_chunk, k_chunk, offset in _pairs(ring, step, seq_len, ctx.zigzag, options.causal):
                arrays = dict(_chunk_inputs(q, held, slopes, q_chunk, k_chunk, axis), o=_part(o, q_chunk, axis),
                              lse=_part(lse, q_chunk, 2).contiguous(), do=_part(do, q_chunk, axis))
                dq_chunk, dk_chunk, dv_chunk = _backward(arrays, options._replace(q_offset=offset), ctx.backend)
                _part(dq, q_chunk, axis).add_(dq_chunk)
                _part(grads[0], k_chunk, axis).add_(dk_chunk)
                _part(grads[1], k_chunk, axis).add_(dv_chunk)
            if ring.size > 1:  # the held keys' gradients follow them: after the last step, home
                grads = ring.pass_on(grads).wait()
            held = transfer.wait() if transfer else held
        return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype), None, None, None, None, None


def _compute(x: Tensor) -> torch.dtype:
    """The dtype partial results are summed in: float32, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def context_parallel_attention(q: Tensor, k: Tensor, v: Tensor, *, group=None, alibi=None, causal: bool = False,
                               scale: float | None = None, layout: str = "bshd", zigzag: bool = False,
                               backend: str = "auto") -> Tensor:
    """Attention of one sequence split over the ranks of `group` (default: the world): this
    rank's o, like q. Ring attention: keys and values pass from rank to rank, and each rank
    sends and receives (group size - 1) shards of k and v, twice that in the backward.

    q, k, v: this rank's shard of the sequence, (batch, seq, heads, head_dim) in layout "bshd",
    (batch, heads, seq, head_dim) in "bhsd", the same seq on every rank. Rank r holds tokens
    r * seq .. (r + 1) * seq - 1 or, with `zigzag`, chunks r and 2n - 1 - r of the sequence cut
    into 2n (n ranks; see zigzag_order), which evens out the work under a causal mask. Or
    DTensors sharded over the sequence on one mesh dim (the ring, whose group is taken from the
    mesh) and over batch or heads on others, in zigzag order if `zigzag`: o is then a DTensor
    placed like q, and slopes of the model's heads are split with the heads. Queries and keys
    sit at their global positions, for the causal mask and ALiBi alike; `alibi`, `causal`,
    `scale` and `backend` as in trinix.torch.attention. Gradients flow to q, k and v. A ring of
    one rank holds the whole sequence (zigzag's order of one part is the sequence's own): it runs
    trinix.torch.attention on it, without the ring's steps and merges.

    torch.distributed.tensor.experimental.context_parallel(mesh, buffers=...) shards its buffers
    over the sequence and replaces scaled_dot_product_attention, which trinix does not call.
    Inside it, pass the position ids (1, seq) among the buffers, rotate q and k by them (each
    token at its global position), and call this function on its shards with the mesh's group:
    its head-tail load balancing (its default, where the sequence cuts into 2n equal chunks) is
    the zigzag order, so zigzag=True; without it, zigzag=False.
    """
    if layout not in SEQ_AXIS:
        raise ValueError(f"layout must be one of {tuple(SEQ_AXIS)} for context parallelism (packed sequences "
                         f"are not split over ranks), got {layout!r}")
    arrays, options = planned(q, k, v, alibi, None, None, causal=causal, scale=scale, q_offset=0, layout=layout)
    if k.shape[SEQ_AXIS[layout]] != q.shape[SEQ_AXIS[layout]]:
        raise ValueError(f"k and v must hold as many tokens as q (shards of one sequence), got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)} in layout {layout!r}")
    if not isinstance(zigzag, bool):
        raise TypeError(f"zigzag must be a bool, got {type(zigzag).__name__}")
    backend = resolve_backend(backend, True, q.device, "attention")
    arrays = tuple(arrays.values())
    placed = sharding.sharding(ARGUMENTS, arrays, sharding.ring_axes, layout)
    if placed is not None:
        if group is not None or placed.mesh_axes.count("seq") != 1:
            raise ValueError(f"DTensors q, k and v must be sharded over the sequence on exactly one mesh dim, the "
                             f"ring (then group=None), got mesh dims sharding {placed.mesh_axes} and group={group}")
        group = placed.mesh.get_group(placed.mesh_axes.index("seq"))
    ring = _Ring(dist.group.WORLD if group is None else group)

    def by_ring(q, k, v, slopes, *_):
        planner.ring_chunks(ring.rank, ring.size, q.shape[SEQ_AXIS[layout]], zigzag)  # an even shard for zigzag
        if ring.size == 1:  # the whole sequence here (zigzag's one part in order): plain attention, one call
            return attention(q, k, v, alibi=slopes, causal=causal, scale=options.scale, layout=layout, q_offset=0,
                             backend=backend)
        return _RingAttention.apply(q, k, v, slopes, options, ring, zigzag, backend)

    return by_ring(*arrays) if placed is None else placed.run_local(by_ring, arrays)


def _zigzag(x: Tensor, parts: int, axis: int, restore: bool) -> Tensor:
    """x with its 2 * parts chunks along `axis` taken in the order of trinix.attention.zigzag_reorder."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    order = planner.zigzag_reorder(parts, x.shape[axis], axis, restore)
    chunks = x.chunk(2 * parts, axis)
    return torch.cat([chunks[i] for i in order], axis)


def zigzag_order(x: Tensor, parts: int, *, axis: int = 1) -> Tensor:
    """x, a whole sequence along `axis`, cut into 2 * parts chunks and reordered so that its
    `parts` equal shards hold chunks i and 2 * parts - 1 - i: the order of zigzag=True (rank r's
    shard is x.chunk(parts, axis)[r]). Axis 1 for "bshd", 2 for "bhsd"."""
    return _zigzag(x, parts, axis, restore=False)


def zigzag_restore(x: Tensor, parts: int, *, axis: int = 1) -> Tensor:
    """The inverse of `zigzag_order`: the sequence back in its order (e.g. of the outputs of
    every rank concatenated along `axis`)."""
    return _zigzag(x, parts, axis, restore=True)
