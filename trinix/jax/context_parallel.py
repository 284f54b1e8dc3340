"""Context parallelism for attention with ALiBi in JAX: the sequence split over a mesh axis, K
and V passed around the ring of its devices (jax.lax.ppermute), forward and backward.

Called inside jax.shard_map: each device holds one chunk of the sequence (or two, zigzag), and
attends to every chunk as it passes, each chunk pair by the attention kernel with its query
offset (key position of the first query in the key chunk), so ALiBi sees global distances. The
partial results merge by their log-sum-exp. The backward passes K and V around again with their
gradients, which arrive home after a full turn; each chunk pair's gradients come from the
kernels' backward with the merged log-sum-exp and the final output.

Causal attention gives the last chunks the most work: with zigzag=True device i holds chunks i
and 2N - 1 - i of 2N, so that every device has the same work (`zigzag_order` puts a sequence in
that order, `zigzag_restore` back); a chunk pair whose keys all follow its queries is skipped.
Where each device's chunks sit in the sequence, and each pair's offset: trinix.attention
(ring_chunks, chunk_offset, zigzag_chunks), shared with the PyTorch ring.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from trinix import attention as planner
from trinix import fallback
from trinix.attention import INPUTS, SEQ_AXIS
from trinix.jax.attention import attention, backward_launch, forward_launch
from trinix.jax.launcher import JaxOps, as_arrays, operand, resolve_backend


class _Ring(NamedTuple):
    """Static configuration of one context-parallel attention: the mesh axis and its size, the
    length of each device's part of the sequence, the chunk order, the resolved options and the
    backend."""

    axis_name: str
    size: int
    seq_len: int
    zigzag: bool
    causal: bool
    scale: float
    layout: str
    backend: str

    def chunks(self, device: int) -> tuple[tuple[int, int, int], ...]:
        """The chunks `device` holds, in order: trinix.attention.ring_chunks, (start in its part,
        start in the whole sequence, length)."""
        return planner.ring_chunks(device, self.size, self.seq_len, self.zigzag)

    def pieces(self, x: jax.Array, axis: int | None = None) -> list[jax.Array]:
        """x (q, k, v, o, do or, with axis=-1, lse) split into its chunks (placed alike in every
        device's part)."""
        starts = [start for start, _, _ in self.chunks(0)[1:]]
        return jnp.split(x, starts, axis=SEQ_AXIS[self.layout] if axis is None else axis)

    def join(self, pieces: list[jax.Array], axis: int | None = None) -> jax.Array:
        return jnp.concatenate(pieces, axis=SEQ_AXIS[self.layout] if axis is None else axis)

    def pass_on(self, arrays):
        """`arrays` (a pytree) sent to the next device of the ring, received from the previous."""
        return jax.lax.ppermute(arrays, self.axis_name, [(i, (i + 1) % self.size) for i in range(self.size)])

    def by_offset(self, step: int, a: int, b: int, block, hidden):
        """block(q_offset) for query chunk a of this device and key chunk b of the device `step`
        places back along the ring: offsets differ by device, so each distinct one is a branch
        (jax.lax.switch on the device index); a causal pair whose keys all follow its queries
        (trinix.attention.chunk_offset None) is `hidden()`, without a launch."""
        offsets = [planner.chunk_offset(self.chunks(i)[a], self.chunks((i - step) % self.size)[b], self.causal)
                   for i in range(self.size)]
        distinct = sorted(set(offsets), key=lambda offset: (offset is not None, offset or 0))  # hidden first
        branches = [hidden if offset is None else functools.partial(block, offset) for offset in distinct]
        if len(branches) == 1:
            return branches[0]()
        index = jnp.asarray([distinct.index(offset) for offset in offsets])[jax.lax.axis_index(self.axis_name)]
        return jax.lax.switch(index, branches)


def _options(ring: _Ring, q, k, v, slopes, q_offset: int) -> planner.Options:
    operands = dict(zip(INPUTS, map(operand, (q, k, v, slopes, None, None))))
    return planner.plan(operands, causal=ring.causal, scale=ring.scale, q_offset=q_offset, layout=ring.layout)


def _block(ring: _Ring, q, k, v, slopes, q_offset: int):
    """(o, lse) of one chunk pair."""
    options = _options(ring, q, k, v, slopes, q_offset)
    if ring.backend == "xla":
        return fallback.attention(JaxOps, q, k, v, slopes, None, None, options, with_lse=True)
    return forward_launch(options, ring.backend)(q, k, v, slopes, None, None)


def _block_grads(ring: _Ring, q, k, v, slopes, o, lse, do, q_offset: int):
    """(dq, dk, dv) of one chunk pair, by the kernels' backward with the final o and lse."""
    options = _options(ring, q, k, v, slopes, q_offset)
    return backward_launch(options, ring.backend)(q, k, v, slopes, None, None, o, lse, do)


def _merge(layout: str, merged, block):
    """(o float32, lse) of two partial softmaxes over disjoint keys; a side with lse -inf (no
    visible key) adds nothing, and the merge stays differentiable there (XLA backend)."""
    (o_a, lse_a), (o_b, lse_b) = merged, block
    top = jnp.maximum(lse_a, lse_b)
    top = jnp.where(jnp.isneginf(top), 0.0, top)
    w_a, w_b = jnp.exp(lse_a - top), jnp.exp(lse_b - top)
    total = w_a + w_b
    seen = total > 0
    total = jnp.where(seen, total, 1.0)

    def per_row(w):  # (batch, heads, seq) -> broadcastable against o in its layout
        return (w if layout == "bhsd" else jnp.swapaxes(w, 1, 2))[..., None]

    o = o_a * per_row(w_a / total) + o_b.astype(jnp.float32) * per_row(w_b / total)
    return o, jnp.where(seen, top + jnp.log(total), -jnp.inf)


def _forward(q, k, v, slopes, ring: _Ring):
    """(o, lse) of this device's queries over the whole sequence, K and V going round the ring."""
    q_pieces = ring.pieces(q)
    merged = [_no_keys(ring.layout, piece, jnp.float32) for piece in q_pieces]
    kv = (k, v)
    for step in range(ring.size):
        for b, (k_piece, v_piece) in enumerate(zip(*map(ring.pieces, kv))):
            for a, q_piece in enumerate(q_pieces):
                block = functools.partial(_block, ring, q_piece, k_piece, v_piece, slopes)
                hidden = functools.partial(_no_keys, ring.layout, q_piece)
                merged[a] = _merge(ring.layout, merged[a], ring.by_offset(step, a, b, block, hidden))
        if step < ring.size - 1:
            kv = ring.pass_on(kv)
    return ring.join([o.astype(q.dtype) for o, _ in merged]), ring.join([lse for _, lse in merged], axis=-1)


def _no_keys(layout: str, q, dtype=None):
    """(o, lse) of queries q that see no key: zeros and -inf (made from q, so that inside
    shard_map they vary over the same axes as a kernel's results)."""
    lse = jnp.full_like(q[..., 0], -jnp.inf, dtype=jnp.float32)
    return jnp.zeros_like(q, dtype=dtype), (lse if layout == "bhsd" else jnp.swapaxes(lse, 1, 2))


def _zeros_like(*arrays) -> tuple:
    return tuple(map(jnp.zeros_like, arrays))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_attention(q, k, v, slopes, ring: _Ring):
    return _forward(q, k, v, slopes, ring)[0]


def _ring_attention_fwd(q, k, v, slopes, ring):
    o, lse = _forward(q, k, v, slopes, ring)
    return o, (q, k, v, slopes, o, lse)


def _ring_attention_bwd(ring, residuals, do):
    """dq stays; dk and dv travel with K and V and are home after a full turn of the ring."""
    q, k, v, slopes, o, lse = residuals
    rows = [ring.pieces(x) for x in (q, o, do)] + [ring.pieces(lse, axis=-1)]
    dq = [jnp.zeros(piece.shape, jnp.float32) for piece in rows[0]]
    kv, dkv = (k, v), (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    for step in range(ring.size):
        k_pieces, v_pieces = map(ring.pieces, kv)
        dk_pieces, dv_pieces = map(ring.pieces, dkv)
        for b in range(len(k_pieces)):
            for a, (q_piece, o_piece, do_piece, lse_piece) in enumerate(zip(*rows)):
                block = functools.partial(_block_grads, ring, q_piece, k_pieces[b], v_pieces[b], slopes, o_piece,
                                          lse_piece, do_piece)
                hidden = functools.partial(_zeros_like, q_piece, k_pieces[b], v_pieces[b])
                grads = ring.by_offset(step, a, b, block, hidden)
                dq[a] = dq[a] + grads[0]
                dk_pieces[b], dv_pieces[b] = dk_pieces[b] + grads[1], dv_pieces[b] + grads[2]
        dkv = ring.pass_on((ring.join(dk_pieces), ring.join(dv_pieces)))
        if step < ring.size - 1:
            kv = ring.pass_on(kv)
    return ring.join(dq).astype(q.dtype), dkv[0].astype(k.dtype), dkv[1].astype(v.dtype), None


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def _axis_size(axis_name) -> int:
    try:
        return jax.lax.axis_size(axis_name)
    except NameError as error:
        raise ValueError(f"axis_name {axis_name!r} is not a mesh axis of the enclosing jax.shard_map: "
                         "context_parallel_attention runs inside shard_map, over the axis that splits "
                         "the sequence") from error


def context_parallel_attention(q, k, v, *, axis_name: str, alibi=None, causal: bool = False,
                               scale: float | None = None, layout: str = "bshd", zigzag: bool = False,
                               backend: str = "auto"):
    """`trinix.jax.attention` of a sequence split over mesh axis `axis_name`, inside jax.shard_map.

    q (batch, seq, heads, head_dim), k and v (batch, seq, kv_heads, head_dim) in "bshd", or
    (batch, heads, seq, head_dim) in "bhsd": this device's part of the sequence: chunk i of N
    (the devices along the axis), or with zigzag=True chunks i and 2N - 1 - i of 2N, in that
    order (`zigzag_order`). Queries and keys share positions: query j of the whole sequence sits
    at key j. alibi, causal, scale, backend: as in `attention`; slopes (heads,) of this device's
    heads. Returns this device's part of the output, like q; differentiable in q, k and v. On an
    axis of one device, which holds the whole sequence (zigzag's order of one part is the
    sequence's own), it is `attention` on it, without the ring's steps and merges.
    """
    q, k, v, slopes = as_arrays(q=q, k=k, v=v, alibi=planner.slopes_of(alibi))
    if layout not in SEQ_AXIS:
        raise ValueError(f"layout must be one of {tuple(SEQ_AXIS)} (packed sequences are not split), got {layout!r}")
    size = _axis_size(axis_name)
    seq, kv_seq = q.shape[SEQ_AXIS[layout]], k.shape[SEQ_AXIS[layout]]
    if seq != kv_seq:
        raise ValueError(f"q and k must hold the same part of the sequence, got {seq} and {kv_seq} positions")
    if zigzag and seq % 2:
        raise ValueError(f"zigzag=True: q's part of the sequence ({seq} positions) must be two equal chunks")
    if slopes is not None:
        slopes = jax.lax.stop_gradient(slopes)
    options = planner.plan(dict(zip(INPUTS, map(operand, (q, k, v, slopes, None, None)))), causal=causal,
                           scale=scale, q_offset=0, layout=layout)
    if size == 1:  # the whole sequence here (zigzag's one part in order): plain attention, one call
        return attention(q, k, v, alibi=slopes, causal=causal, scale=options.scale, layout=layout, q_offset=0,
                         backend=backend)
    ring = _Ring(axis_name, size, seq, zigzag, causal, options.scale, layout,
                 resolve_backend(backend, True, "attention", q))
    if ring.backend == "xla":  # jax.numpy all through: JAX differentiates the ring itself
        return _forward(q, k, v, slopes, ring)[0]
    return _ring_attention(q, k, v, slopes, ring)


def _reorder(x, parts: int, axis: int, restore: bool) -> jax.Array:
    """x with its 2 * parts chunks along `axis` taken in the order of trinix.attention.zigzag_reorder."""
    (x,) = as_arrays(x=x)
    order = planner.zigzag_reorder(parts, x.shape[axis], axis, restore)
    chunks = jnp.split(x, 2 * parts, axis=axis)
    return jnp.concatenate([chunks[c] for c in order], axis=axis)


def zigzag_order(x, parts: int, *, axis: int = 1) -> jax.Array:
    """x with its sequence (dim `axis`) cut into 2 * parts chunks and reordered so that `parts`
    equal shards of it hold chunks i and 2 * parts - 1 - i: the order of zigzag=True. Reorder
    inputs (and RoPE's position ids) before splitting them over the devices."""
    return _reorder(x, parts, axis, restore=False)


def zigzag_restore(x, parts: int, *, axis: int = 1) -> jax.Array:
    """The inverse of `zigzag_order`: the sequence back in its order."""
    return _reorder(x, parts, axis, restore=True)
