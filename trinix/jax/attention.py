"""Attention with ALiBi for JAX: the FlashAttention-2 style Triton kernels
(kernels/attention.py) under custom_vjp and custom_vmap, and a plain jax.numpy fallback.

Shapes: q (batch, seqlen_q, heads, head_dim) and k, v (batch, seqlen_k, kv_heads, head_dim),
kv_heads dividing heads, in layout "bshd"; (batch, heads, seq, head_dim) in "bhsd"; packed
(tokens, heads, head_dim) in "thd" with int32 cu_seqlens. Query i sits at key position
q_offset + i (default seqlen_k - seqlen_q, per sequence when packed). The options are checked
and planned once, in trinix.attention.

Backends: "triton" (jax-triton, GPU), "interpret" (the same kernels through Triton's
interpreter on the CPU), "xla" (jax.numpy), "auto" (on a GPU by
trinix.backend.AUTO: "triton", eager or under jit; else "xla"). Under vmap
the mapped axis joins the batch (one launch); packed sequences are mapped with lax.map.
"""

import functools

import jax
import jax.numpy as jnp

from trinix import attention as planner
from trinix.attention import ARGUMENTS, INPUTS, Options
from trinix import fallback
from trinix.jax.launcher import JaxOps, as_arrays, launch, operand, resolve_backend
from trinix.jax.sharding import shard_local

_BACKWARD_INPUTS = (*INPUTS, "o", "lse", "do")


def _fwd_on_shard(*arrays, options: Options, backend: str):
    """(o, lse) of arrays in `INPUTS` order."""
    named = dict(zip(INPUTS, arrays))
    calls = planner.forward_calls(options, {name: operand(array) for name, array in named.items()})
    return planner.run_forward(calls, named, functools.partial(launch, backend=backend))


def _bwd_on_shard(*arrays, options: Options, backend: str):
    """(dq, dk, dv) of arrays in `_BACKWARD_INPUTS` order."""
    named = dict(zip(_BACKWARD_INPUTS, arrays))
    calls = planner.backward_calls(options, {name: operand(array) for name, array in named.items()})
    return planner.run_backward(calls, named, functools.partial(launch, backend=backend))


def _dims(layout: str, arrays) -> tuple[dict[str, str | None], dict]:
    """The sharding factors of each array of `_BACKWARD_INPUTS` (see trinix.jax.sharding) and
    the other arguments of `shard_local`: batch "b" and KV heads "h" may be split; q's heads
    are "(h g)", g queries per KV head, and follow h (a split of g alone would give a shard
    queries of some KV heads only); with one KV head they are g, and may be split; sequences
    stay whole."""
    q, k = arrays[:2]
    heads, kv_heads = q.shape[-2 if layout != "bhsd" else 1], k.shape[-2 if layout != "bhsd" else 1]
    # Shardy takes no factor of size 1 in a compound dim: one KV head is "one", q's heads g.
    q_heads = "h" if heads == kv_heads else ("g" if kv_heads == 1 else "(h g)")
    kv = "one" if kv_heads == 1 < heads else "h"
    rows = {"bshd": "b {s} {h} d", "bhsd": "b {h} {s} d", "thd": "{s} {h} d"}[layout]
    slopes = arrays[3]
    dims = dict(q=rows.format(s="s", h=q_heads), k=rows.format(s="t", h=kv), v=rows.format(s="t", h=kv),
                slopes=None if slopes is None else (q_heads if slopes.ndim == 1 else
                                                    f"{'n' if layout == 'thd' else 'b'} {q_heads}"),
                cu_seqlens_q="nq", cu_seqlens_k="nk", lse=f"{q_heads} s" if layout == "thd" else f"b {q_heads} s")
    dims.update(o=dims["q"], do=dims["q"])
    if q_heads == "(h g)":
        return dims, dict(shardable=("b", "h"))
    return dims, dict(shardable=("b", "h", "g"))


def _launch_fwd(*arrays, options: Options, backend: str):
    """(o, lse), each device on its shard of batch and heads."""
    dims, sharding = _dims(options.layout, arrays)
    run = functools.partial(_fwd_on_shard, options=options, backend=backend)
    return shard_local(run, arrays, [dims[name] for name in INPUTS], (dims["o"], dims["lse"]), **sharding)


def _launch_bwd(*arrays, options: Options, backend: str):
    """(dq, dk, dv), each device on its shard of batch and heads."""
    dims, sharding = _dims(options.layout, arrays)
    run = functools.partial(_bwd_on_shard, options=options, backend=backend)
    # dk and dv sum over the query heads of their KV head: a split g (one KV head) sums shards.
    return shard_local(run, arrays, [dims[name] for name in _BACKWARD_INPUTS], (dims["q"], dims["k"], dims["v"]),
                       summed=("g",), **sharding)


@functools.cache
def _batchable(launch_kernels, options: Options, backend: str):
    """A launch with a vmap rule (jax-triton and the interpreter's FFI call have none we want)."""
    run = jax.custom_batching.custom_vmap(functools.partial(launch_kernels, options=options, backend=backend))
    run.def_vmap(functools.partial(_vmap_rule, run, options.varlen))
    return run


def forward_launch(options: Options, backend: str):
    """The forward kernels of `options` on `backend` ("triton" or "interpret") as a function of
    the arrays of `INPUTS` returning (o, lse), sharded and vmappable: attention's and the
    context-parallel ring's (trinix.jax.context_parallel)."""
    return _batchable(_launch_fwd, options, backend)


def backward_launch(options: Options, backend: str):
    """The backward kernels of `options` on `backend`, as `forward_launch`: a function of the
    arrays of `INPUTS` and o, lse, do returning (dq, dk, dv)."""
    return _batchable(_launch_bwd, options, backend)


def _vmap_rule(run, varlen: bool, axis_size: int, in_batched, *arrays):
    """vmap of a launch: the mapped axis (leading) joins the batch of q, k, v, o, lse and do
    (their first axis) and slopes become (joint batch, heads), so one launch serves all; packed
    sequences have no batch axis to join, and are mapped one at a time."""
    if varlen:
        mapped = [i for i, batched in enumerate(in_batched) if batched]

        def one(slices):
            sliced = list(arrays)
            for i, array in zip(mapped, slices):
                sliced[i] = array
            return run(*sliced)

        outputs = jax.lax.map(one, [arrays[i] for i in mapped])
        return outputs, tuple(True for _ in outputs)
    batch = arrays[0].shape[1] if in_batched[0] else arrays[0].shape[0]
    folded = []
    for name, array, batched in zip(_BACKWARD_INPUTS, arrays, in_batched):
        if name == "slopes" and array is not None and (batched or array.ndim == 2):
            heads = array.shape[-1]
            array = array if batched else array[None]  # (axis_size or 1, [batch,] heads)
            array = jnp.broadcast_to(array.reshape(array.shape[0], -1, heads), (axis_size, batch, heads))
            array = array.reshape(axis_size * batch, heads)
        elif name in ("q", "k", "v", "o", "lse", "do"):
            array = array if batched else jnp.broadcast_to(array, (axis_size, *array.shape))
            array = array.reshape(-1, *array.shape[2:])
        folded.append(array)
    outputs = tuple(out.reshape(axis_size, -1, *out.shape[1:]) for out in run(*folded))
    return outputs, tuple(True for _ in outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attention(q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options: Options, backend: str):
    return forward_launch(options, backend)(q, k, v, slopes, cu_seqlens_q, cu_seqlens_k)[0]


def _attention_fwd(q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options, backend):
    arrays = (q, k, v, slopes, cu_seqlens_q, cu_seqlens_k)
    o, lse = forward_launch(options, backend)(*arrays)
    return o, (*arrays, o, lse)


def _attention_bwd(options, backend, residuals, do):
    dq, dk, dv = backward_launch(options, backend)(*residuals, do)
    return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, alibi=None, causal: bool = False, scale: float | None = None, layout: str = "bshd",
              cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: int | None = None,
              max_seqlen_k: int | None = None, q_offset: int | None = None, backend: str = "auto"):
    """softmax(scale * q k^T + ALiBi bias) v, like q, in one kernel with its backward.

    `alibi`: a FastALiBiPositionEmbedding (its slopes) or float32 slopes (heads,) or (batch,
    heads); None: no bias. With slopes, causal=False adds the symmetric bias -m |p_i - j|,
    causal=True the causal one -m (p_i - j) and masks the keys after each query (also without
    slopes). `scale` defaults to head_dim ** -0.5. Packed ("thd"): int32 cu_seqlens_q and
    cu_seqlens_k (n_seqs + 1,) and the longest sequences max_seqlen_q, max_seqlen_k.
    `backend`: "auto" (on a GPU trinix.backend.AUTO's choice, Triton; else xla), "triton", "interpret" or "xla".
    Differentiable in q, k and v (slopes are constants); works under jit, grad and vmap.
    """
    arrays = as_arrays(**dict(zip(ARGUMENTS, (q, k, v, planner.slopes_of(alibi), cu_seqlens_q, cu_seqlens_k))))
    if arrays[3] is not None:
        arrays[3] = jax.lax.stop_gradient(arrays[3])
    options = planner.plan({name: operand(array) for name, array in zip(INPUTS, arrays)}, causal=causal,
                           scale=scale, q_offset=q_offset, layout=layout, max_seqlen_q=max_seqlen_q,
                           max_seqlen_k=max_seqlen_k)
    backend = resolve_backend(backend, True, "attention", arrays[0])
    if backend == "xla":
        return fallback.attention(JaxOps, *arrays, options)
    return _attention(*arrays, options, backend)


def alibi_attention(module, q, k, v, *, causal: bool | None = None, backend: str | None = None, **options):
    """`attention` with a FastALiBiPositionEmbedding's slopes, its causal flag and backend
    unless given: the body of the module's `attention` method (NNX and Linen)."""
    causal, backend = planner.module_defaults(module, causal, backend, "xla")
    return attention(q, k, v, alibi=module, causal=causal, backend=backend, **options)
