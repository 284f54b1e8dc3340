"""Attention with ALiBi for PyTorch: the FlashAttention-2 style Triton kernels
(kernels/attention.py) under autograd and torch.library, and a plain torch fallback.

Shapes: q (batch, seqlen_q, heads, head_dim) and k, v (batch, seqlen_k, kv_heads, head_dim),
kv_heads dividing heads, in layout "bshd"; (batch, heads, seq, head_dim) in "bhsd"; packed
(tokens, heads, head_dim) in "thd" with int32 cu_seqlens. Query i sits at key position
q_offset + i (default seqlen_k - seqlen_q, per sequence when packed). The options are checked
and planned once, in trinix.attention.
"""

from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op

from trinix import attention as planner
from trinix.attention import ARGUMENTS, INPUTS, Options
from trinix.kernels.attention import attention_bwd_calls, attention_fwd_calls
from trinix import fallback
from trinix.torch import sharding
from trinix.torch.launcher import TorchOps, cached, launch, operand, resolve_backend, through_ops


def _operands(arrays: dict) -> dict:
    return {name: operand(array) for name, array in arrays.items()}


def launch_fwd(arrays: dict, options: Options, interpret: bool, traceable: bool = False):
    """(o, lse) of `arrays` (by `INPUTS` name) by the forward kernels, launched directly (or,
    traceable, as the torch.library op's body): attention's and the ring's (context_parallel)."""
    calls = planner.forward_calls(options, _operands(arrays), builder=cached(attention_fwd_calls))
    return planner.run_forward(
        calls, arrays, lambda call, named: launch(call, named, interpret=interpret, traceable=traceable))


def launch_bwd(arrays: dict, options: Options, interpret: bool, traceable: bool = False):
    """(dq, dk, dv) of `arrays` (`INPUTS` and the forward's "o", "lse" and the gradient "do") by
    the backward kernels, as `launch_fwd`."""
    calls = planner.backward_calls(options, _operands(arrays), builder=cached(attention_bwd_calls))
    return planner.run_backward(
        calls, arrays, lambda call, named: launch(call, named, interpret=interpret, traceable=traceable))


@triton_op("trinix::attention_fwd", mutates_args=())
def _fwd_op(q: Tensor, k: Tensor, v: Tensor, slopes: Optional[Tensor], cu_seqlens_q: Optional[Tensor],
            cu_seqlens_k: Optional[Tensor], alibi: str, causal: bool, scale: float, q_offset: Optional[int],
            layout: str, max_seqlen_q: Optional[int], max_seqlen_k: Optional[int],
            interpret: bool) -> tuple[Tensor, Tensor]:
    arrays = dict(zip(INPUTS, (q, k, v, slopes, cu_seqlens_q, cu_seqlens_k)))
    options = Options(alibi, causal, scale, q_offset, layout, max_seqlen_q, max_seqlen_k)
    return launch_fwd(arrays, options, interpret, traceable=True)


@triton_op("trinix::attention_bwd", mutates_args=())
def _bwd_op(q: Tensor, k: Tensor, v: Tensor, slopes: Optional[Tensor], cu_seqlens_q: Optional[Tensor],
            cu_seqlens_k: Optional[Tensor], o: Tensor, lse: Tensor, do: Tensor, alibi: str, causal: bool,
            scale: float, q_offset: Optional[int], layout: str, max_seqlen_q: Optional[int],
            max_seqlen_k: Optional[int], interpret: bool) -> tuple[Tensor, Tensor, Tensor]:
    arrays = dict(zip(INPUTS, (q, k, v, slopes, cu_seqlens_q, cu_seqlens_k)), o=o, lse=lse, do=do)
    options = Options(alibi, causal, scale, q_offset, layout, max_seqlen_q, max_seqlen_k)
    return launch_bwd(arrays, options, interpret, traceable=True)


sharding.register("attention_fwd", sharding.attention_axes, len(INPUTS), layout_at=10)
sharding.register("attention_bwd", sharding.attention_axes, len(INPUTS) + 3, layout_at=13)


class _Attention(torch.autograd.Function):
    """o by the forward kernel; dq, dk, dv by the three backward kernels from (q, k, v, o, lse).
    Through the torch.library ops or launched directly (see `through_ops`)."""

    @staticmethod
    def forward(ctx, q, k, v, slopes, cu_seqlens_q, cu_seqlens_k, options, interpret):
        arrays = (q, k, v, slopes, cu_seqlens_q, cu_seqlens_k)
        if through_ops():
            o, lse = _fwd_op(*arrays, *options, interpret)
        else:
            o, lse = launch_fwd(dict(zip(INPUTS, arrays)), options, interpret)
        ctx.save_for_backward(*arrays, o, lse)
        ctx.options, ctx.interpret = options, interpret
        return o

    @staticmethod
    def backward(ctx, do):
        *arrays, o, lse = ctx.saved_tensors
        if through_ops():
            dq, dk, dv = _bwd_op(*arrays, o, lse, do, *ctx.options, ctx.interpret)
        else:
            named = dict(zip(INPUTS, arrays), o=o, lse=lse, do=do)
            dq, dk, dv = launch_bwd(named, ctx.options, ctx.interpret)
        return dq, dk, dv, None, None, None, None, None


def planned(q, k, v, alibi, cu_seqlens_q, cu_seqlens_k, **options) -> tuple[dict, Options]:
    """The arrays of `INPUTS` (slopes from `alibi`, constants on q's device) and the checked
    Options (trinix.attention.plan's keyword arguments) of an attention call."""
    arrays = dict(zip(INPUTS, (q, k, v, planner.slopes_of(alibi), cu_seqlens_q, cu_seqlens_k)))
    for name, array in zip(ARGUMENTS, arrays.values()):
        if array is not None and not isinstance(array, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(array).__name__}")
    if arrays["slopes"] is not None:
        arrays["slopes"] = arrays["slopes"].detach().to(q.device)
    return arrays, planner.plan(_operands(arrays), builder=cached(attention_fwd_calls), **options)


def attention(q: Tensor, k: Tensor, v: Tensor, *, alibi=None, causal: bool = False, scale: float | None = None,
              layout: str = "bshd", cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
              max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, q_offset: int | None = None,
              backend: str = "auto") -> Tensor:
    """softmax(scale * q k^T + ALiBi bias) v, like q, in one kernel with its backward.

    `alibi`: a FastALiBiPositionEmbedding (its slopes) or float32 slopes (heads,) or (batch,
    heads); None: no bias. With slopes, causal=False adds the symmetric bias -m |p_i - j|,
    causal=True the causal one -m (p_i - j) and masks the keys after each query (also without
    slopes). `scale` defaults to head_dim ** -0.5. Packed ("thd"): int32 cu_seqlens_q and
    cu_seqlens_k (n_seqs + 1,) and the longest sequences max_seqlen_q, max_seqlen_k.
    `backend`: "auto" (on CUDA trinix.backend.AUTO's choice, Triton; else torch), "triton", "interpret" or "torch".
    Gradients flow to q, k and v; slopes are constants.
    """
    arrays, options = planned(q, k, v, alibi, cu_seqlens_q, cu_seqlens_k, causal=causal, scale=scale,
                              q_offset=q_offset, layout=layout, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
    arrays = tuple(arrays.values())
    placed = sharding.sharding(ARGUMENTS, arrays, sharding.attention_axes, layout,
                               hint="; over the sequence, use context_parallel_attention")
    if placed is not None:  # DTensors: each rank attends on its shards (trinix.torch.sharding)
        return placed.run_local(lambda q, k, v, slopes, cu_seqlens_q, cu_seqlens_k: attention(
            q, k, v, alibi=slopes, causal=causal, scale=scale, layout=layout, cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, q_offset=q_offset,
            backend=backend), arrays)
    backend = resolve_backend(backend, True, q.device, "attention")
    if backend == "torch":
        return fallback.attention(TorchOps, *arrays, options)
    return _Attention.apply(*arrays, options, backend == "interpret")


def alibi_attention(module, q: Tensor, k: Tensor, v: Tensor, *, causal: bool | None = None,
                    backend: str | None = None, **options) -> Tensor:
    """`attention` with a FastALiBiPositionEmbedding's slopes, its causal flag and backend
    unless given: the body of the module's `attention` method."""
    causal, backend = planner.module_defaults(module, causal, backend, "torch")
    return attention(q, k, v, alibi=module, causal=causal, backend=backend, **options)
