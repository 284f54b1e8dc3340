"""The framework-op backends ("torch", "xla"), written once for both bindings.

Each function takes `xp`, the binding's array namespace (trinix.torch.launcher.TorchOps,
trinix.jax.launcher.JaxOps): NumPy's names where torch and jax.numpy share them (where,
floor, cos, sin, abs, clip, maximum, stack, concatenate, broadcast_to, searchsorted, einsum,
swapaxes), and arange(start, stop, like), cast(x, dtype), expand_dims(x, axis), repeat(x, n,
axis), softmax(x, axis), the dtypes float32 and float64, angle_dtype() (float64 in torch; jax's
float64 only with x64), and float32_math: whether a compiler computes 16-bit elementwise math in
float32 and rounds once where it stores (Inductor), so that casts up and back would only add
nodes to its graph.
"""

import math

from trinix.rope import split_bshd

def compute_dtype(xp, dtype):
    """The dtype the fallbacks compute in: float32, float64 for float64 inputs."""
    return xp.float64 if dtype == xp.float64 else xp.float32


# RoPE: q, k in their layout; cos/sin per token, (batch or 1, seq, rotary_dim), or
# (tokens, rotary_dim) for "thd".


def pairs(x, interleaved: bool):
    """The two members of each rotated pair of x's columns (all of them rotate): its two halves,
    by slicing as transformers' rotate_half takes them, or its even and odd columns."""
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def rotate(xp, q, k, cos, sin, layout: str, interleaved: bool):
    """(q_rot, k_rot) by per-token cos and sin; the columns past rotary_dim pass through.

    Written as x * cos + partner * sin, x first, as transformers writes it (partner: each
    column's pair member with the rotation's sign): the result then keeps x's memory layout, as
    torch and Inductor give an elementwise result its first operand's strides. A concatenation
    of the two rotated halves would be contiguous instead, and attention on a transposed view
    (q of transformers' (batch, heads, seq, head_dim) views) would copy it once more. x * cos is
    formed before the pairs are taken, as transformers does, so that autograd sums x's gradient
    in transformers' order: torch.compile then makes transformers' backward, which writes that
    gradient once, in the projection's layout."""
    compute = None if xp.float32_math else compute_dtype(xp, q.dtype)
    head_axis = -3 if layout == "bhsd" else -2  # where cos/sin broadcast over heads
    width = cos.shape[-1]
    cos, sin = (xp.expand_dims(table if compute is None else xp.cast(table, compute), head_axis)
                for table in (cos, sin))

    def rotate_one(x):
        columns = x[..., :width] if width < x.shape[-1] else x
        columns = columns if compute is None else xp.cast(columns, compute)
        scaled = columns * cos
        x1, x2 = pairs(columns, interleaved)
        if interleaved:
            partner = xp.stack((-x2, x1), axis=-1).reshape(*x1.shape[:-1], width)
        else:
            partner = xp.concatenate((-x2, x1), axis=-1)
        rotated = scaled + partner * sin
        rotated = rotated if rotated.dtype == x.dtype else xp.cast(rotated, x.dtype)
        return rotated if width == x.shape[-1] else xp.concatenate((rotated, x[..., width:]), axis=-1)

    return rotate_one(q), rotate_one(k)


def token_positions(xp, q, layout: str, position_ids, offsets, cu_seqlens, offset: int):
    """Position of each token, (batch or 1, seq), or (tokens,) for "thd", and the batch
    (sequence) index to read per-batch tables at, broadcastable to it. Packed tokens find their
    sequence by a search of cu_seqlens on the device: no host read, traceable."""
    if layout == "thd":
        tokens = xp.arange(0, q.shape[0], like=q)
        sequence = xp.searchsorted(cu_seqlens[1:], tokens, side="right")
        if position_ids is not None:
            return position_ids, sequence
        positions = tokens - cu_seqlens[sequence] + offset
        if offsets is not None:
            positions = positions + xp.broadcast_to(offsets, cu_seqlens[1:].shape)[sequence]
        return positions, sequence
    batch, seq_len = split_bshd(q.shape, layout)[:2]
    positions = position_ids
    if positions is None:
        positions = xp.arange(offset, offset + seq_len, like=q)[None]
        if offsets is not None:
            positions = positions + offsets[:, None]
    return positions, xp.arange(0, batch, like=q)[:, None]


def table_rows(xp, table, positions, sequence):
    """Rows `positions` of a (rows, dim) table, or of sequence `sequence` (broadcastable to
    positions) of a (batch, rows, dim) one, as (*positions.shape, dim); NaN rows for positions
    outside the table, as the kernel gives."""
    table = table if table.ndim == 3 else table[None]
    inside = (positions >= 0) & (positions < table.shape[1])
    rows = table[sequence if table.shape[0] > 1 else 0, xp.where(inside, positions, 0)]
    # A factor of 1 or NaN rather than where(inside, rows, NaN): Inductor in torch 2.11 fails to
    # compile that select of a row against a scalar on the CPU.
    return rows * xp.cast(xp.where(inside, 1.0, math.nan), rows.dtype)[..., None]


def cos_sin(xp, frequencies, positions, dtype, interleaved: bool):
    """cos and sin (*positions.shape, rotary_dim) of `dtype`, times the amplitude, from the
    kernels' frequency operand (3, rotary_dim / 2).

    The angle 2pi * frac(position * turns) is formed in xp.angle_dtype(): float64 in torch, as in
    the kernels; jax's float32 without x64 (as Flax and transformers), which loses bits at long
    context."""
    angle_dtype = xp.angle_dtype()
    positions = xp.cast(positions, angle_dtype)[..., None]
    high, low, amplitude = xp.cast(frequencies, angle_dtype)
    turns = positions * high
    turns = turns - xp.floor(turns) + positions * low
    angle = (2 * math.pi) * (turns - xp.floor(turns))

    def in_both_columns(x):
        """Each frequency's value in both columns of its pair (see pairs)."""
        x = xp.repeat(x, 2, axis=-1) if interleaved else xp.concatenate((x, x), axis=-1)
        return xp.cast(x, dtype)

    return in_both_columns(amplitude * xp.cos(angle)), in_both_columns(amplitude * xp.sin(angle))


def rope_rotate(xp, q, k, *, cos, sin, frequencies, position_ids, offsets, cu_seqlens, offset: int,
                layout: str, interleaved: bool):
    """(q_rot, k_rot) by cos/sin tables (rows indexed by position) or by frequencies."""
    if cos is not None and position_ids is None and offsets is None and layout != "thd" and offset == 0 \
            and cos.shape[-2] == split_bshd(q.shape, layout)[1]:
        # Positions 0 .. seq_len - 1 of a table of seq_len rows (transformers' per-token cos and
        # sin): the table itself, with no gather, which a compiler would not fuse.
        cos, sin = (table if table.ndim == 3 else table[None] for table in (cos, sin))
        return rotate(xp, q, k, cos, sin, layout, interleaved)
    positions, sequence = token_positions(xp, q, layout, position_ids, offsets, cu_seqlens, offset)
    if cos is None:
        cos, sin = cos_sin(xp, frequencies, positions, compute_dtype(xp, q.dtype), interleaved)
    else:
        cos, sin = table_rows(xp, cos, positions, sequence), table_rows(xp, sin, positions, sequence)
    return rotate(xp, q, k, cos, sin, layout, interleaved)


def rope_table(xp, frequencies, seq_len: int, offset: int, dtype, interleaved: bool):
    """cos and sin (seq_len, rotary_dim) of `dtype` for positions offset .. offset + seq_len - 1."""
    positions = xp.arange(offset, offset + seq_len, like=frequencies)
    return cos_sin(xp, frequencies, positions, dtype, interleaved)


# ALiBi: scores (batch, heads, seqlen_q, seqlen_k); slopes (heads,) or (batch or 1, heads).


def distance(xp, seqlen_q: int, seqlen_k: int, q_offset: int, like):
    """(seqlen_q, seqlen_k) integer key position - query position."""
    keys = xp.arange(0, seqlen_k, like=like)
    queries = xp.arange(q_offset, q_offset + seqlen_q, like=like)
    return keys[None, :] - queries[:, None]


def from_nearest_key(xp, distance, causal: bool):
    """distance less, per row, that of the row's nearest visible key: the softmax's bias then
    keeps its precision far from the keys (kernels/alibi.py, _from_nearest_key)."""
    seqlen_k = distance.shape[-1]
    query = -distance[:, :1]
    if causal:
        return distance - xp.clip(seqlen_k - 1 - query, max=0)
    return xp.abs(distance) - xp.clip(xp.maximum(query - (seqlen_k - 1), -query), min=0)


def bias(xp, slopes, distance, causal: bool, dtype):
    """The bias (*slopes.shape, seqlen_q, seqlen_k) in `dtype`: causal m(j - i'), symmetric
    -m|j - i'|."""
    m = xp.cast(slopes, dtype)[..., None, None]
    d = xp.cast(distance, dtype)
    return m * d if causal else -m * xp.abs(d)


def alibi_bias(xp, slopes, seqlen_q: int, seqlen_k: int, q_offset: int, causal: bool, dtype):
    """The bias (heads, seqlen_q, seqlen_k) of `dtype` for slopes (heads,)."""
    d = distance(xp, seqlen_q, seqlen_k, q_offset, slopes)
    return xp.cast(bias(xp, slopes, d, causal, compute_dtype(xp, dtype)), dtype)


def _per_batch(slopes):
    """(heads,) or (batch or 1, heads) slopes as (batch or 1, heads)."""
    return slopes if slopes.ndim == 2 else slopes[None]


def alibi_add(xp, scores, slopes, q_offset: int, causal: bool):
    """scores + bias, like scores."""
    d = distance(xp, *scores.shape[-2:], q_offset, scores)
    added = bias(xp, _per_batch(slopes), d, causal, compute_dtype(xp, scores.dtype))
    return xp.cast(xp.cast(scores, added.dtype) + added, scores.dtype)


def alibi_softmax(xp, scores, slopes, scale: float, q_offset: int, causal: bool):
    """softmax over keys of scale * scores + bias, like scores; a row with no visible key is 0."""
    compute = compute_dtype(xp, scores.dtype)
    d = distance(xp, *scores.shape[-2:], q_offset, scores)
    z = scale * xp.cast(scores, compute) + bias(xp, _per_batch(slopes), from_nearest_key(xp, d, causal),
                                                causal, compute)
    if causal:
        z = xp.where(d > 0, -math.inf, z)
    hidden = z == -math.inf  # keys causal masking or the caller's -inf scores hide
    # Filling a row with no key left with 0 before softmax keeps its gradient finite.
    z = xp.where(hidden.all(axis=-1, keepdims=True), 0.0, z)
    return xp.cast(xp.where(hidden, 0.0, xp.softmax(z, axis=-1)), scores.dtype)


def softmax_backward(xp, y, grad, scale: float):
    """The fused softmax's backward from its output: scale * y * (g - sum_k g * y), in float32
    (float64 for float64)."""
    compute = compute_dtype(xp, y.dtype)
    y32, g32 = xp.cast(y, compute), xp.cast(grad, compute)
    return xp.cast(scale * y32 * (g32 - (g32 * y32).sum(axis=-1, keepdims=True)), y.dtype)


# Attention: q (batch, seqlen_q, heads, head_dim), k and v (batch, seqlen_k, kv_heads, head_dim)
# in `layout`; options: trinix.attention.Options.


def _as_bshd(xp, x, layout: str):
    return xp.swapaxes(x, 1, 2) if layout == "bhsd" else x[None] if layout == "thd" else x


def _from_bshd(xp, x, layout: str):
    return xp.swapaxes(x, 1, 2) if layout == "bhsd" else x[0] if layout == "thd" else x


def _attention_positions(rows_q, rows_k, slopes, cu_seqlens_q, cu_seqlens_k, options):
    """What attention's fallback needs beside the scores (batch, heads, seqlen_q, seqlen_k):
    the distance j - p_i (seqlen_q, seqlen_k), the keys each query sees (bool, same shape; None:
    all) and the slopes broadcasting against the scores (None without ALiBi). rows_q, rows_k:
    the query and key row indices, an arange of the framework's; packed tokens are one batch row
    of sequences that see only themselves.

    Operators and indexing only, so that torch tensors and jax arrays (traced too) serve alike.
    """
    m = None if slopes is None else slopes[..., None, None]
    visible = None
    if not options.varlen:
        distance = rows_k[None, :] - (rows_q + options.q_offset)[:, None]
    else:
        seq_q = (rows_q[:, None] >= cu_seqlens_q[None, 1:]).sum(-1)
        seq_k = (rows_k[:, None] >= cu_seqlens_k[None, 1:]).sum(-1)
        pos_q = rows_q - cu_seqlens_q[seq_q]
        if options.q_offset is None:  # per sequence: its seqlen_k - seqlen_q
            lengths_q, lengths_k = (cu[1:] - cu[:-1] for cu in (cu_seqlens_q, cu_seqlens_k))
            pos_q = pos_q + (lengths_k - lengths_q)[seq_q]
        else:
            pos_q = pos_q + options.q_offset
        distance = (rows_k - cu_seqlens_k[seq_k])[None, :] - pos_q[:, None]
        visible = seq_q[:, None] == seq_k[None, :]
        if slopes is not None and slopes.ndim == 2:  # sequence b's slopes, per query row
            m = slopes[seq_q].T[:, :, None]
    if options.causal:
        visible = distance <= 0 if visible is None else visible & (distance <= 0)
    return distance, visible, m


def _scores(xp, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options):
    """(scale q k^T + bias (batch, heads, seqlen_q, seqlen_k), -inf for a hidden key; the keys
    each query sees (None: all); q, k, v as "bshd" in the compute dtype, k and v repeated to
    q's heads)."""
    compute = compute_dtype(xp, q.dtype)
    q4, k4, v4 = (xp.cast(_as_bshd(xp, x, options.layout), compute) for x in (q, k, v))
    heads = q4.shape[2]
    k4, v4 = (xp.repeat(x, heads // x.shape[2], 2) for x in (k4, v4))
    rows_q, rows_k = (xp.arange(0, x.shape[1], like=q) for x in (q4, k4))
    d, visible, m = _attention_positions(rows_q, rows_k, slopes, cu_seqlens_q, cu_seqlens_k, options)
    s = options.scale * xp.einsum("bqhd,bkhd->bhqk", q4, k4)
    if m is not None:
        s = s + xp.cast(m, compute) * (xp.cast(d, compute) if options.causal else -xp.abs(xp.cast(d, compute)))
    if visible is not None:
        s = xp.where(visible, s, -math.inf)
    return s, visible, (q4, k4, v4)


def attention(xp, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options, with_lse: bool = False):
    """softmax(scale q k^T + bias) v like q, by scores and bias materialized in float32 (float64
    for float64); a row with no visible key gives zeros, as the kernel does. with_lse (layouts
    "bshd" and "bhsd", xp with logsumexp(x, axis)): also the log-sum-exp (batch, heads,
    seqlen_q), -inf for a row with no visible key, as the kernel's."""
    s, visible, (_, _, v4) = _scores(xp, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options)
    if visible is not None:
        # Filling a row with no visible key with 0 before softmax keeps its gradient finite.
        s = xp.where(visible.any(axis=-1, keepdims=True), s, 0.0)
    p = xp.softmax(s, axis=-1)
    if visible is not None:
        p = xp.where(visible, p, 0.0)
    o = _from_bshd(xp, xp.cast(xp.einsum("bhqk,bkhd->bqhd", p, v4), q.dtype), options.layout)
    if not with_lse:
        return o
    lse = xp.logsumexp(s, axis=-1)
    return o, lse if visible is None else xp.where(visible.any(axis=-1), lse, -math.inf)


def attention_backward(xp, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, o, lse, do, options):
    """(dq, dk, dv) of attention (layouts "bshd" and "bhsd"; xp with exp) from the forward's o and
    lse (batch, heads, seqlen_q), as the backward kernels compute them: probabilities
    exp(s - lse), so that o and lse may come from more keys than k holds (a chunk of a longer
    sequence, whose softmax the given lse normalizes)."""
    compute = compute_dtype(xp, q.dtype)
    s, _, (q4, k4, v4) = _scores(xp, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options)
    o4, do4 = (xp.cast(_as_bshd(xp, x, options.layout), compute) for x in (o, do))
    lse = xp.cast(lse, compute)
    p = xp.exp(s - xp.where(lse == -math.inf, math.inf, lse)[..., None])  # no visible key: p = 0
    dp = xp.einsum("bqhd,bkhd->bhqk", do4, v4)
    delta = xp.swapaxes((do4 * o4).sum(axis=-1), 1, 2)  # (batch, heads, seqlen_q)
    ds = p * (dp - delta[..., None])
    dq = options.scale * xp.einsum("bhqk,bkhd->bqhd", ds, k4)
    batch, seqlen_k, kv_heads, head_dim = _as_bshd(xp, k, options.layout).shape

    def per_kv_head(x):  # the sum over the query heads that share a key head
        return x.reshape(batch, seqlen_k, kv_heads, -1, head_dim).sum(axis=3)

    dk = per_kv_head(options.scale * xp.einsum("bhqk,bqhd->bkhd", ds, q4))
    dv = per_kv_head(xp.einsum("bhqk,bqhd->bkhd", p, do4))
    return tuple(_from_bshd(xp, xp.cast(g, x.dtype), options.layout) for g, x in ((dq, q), (dk, k), (dv, v)))
