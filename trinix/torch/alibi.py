"""ALiBi for PyTorch: torch.library ops over the Triton kernels, autograd, functional forms
and the original API's `FastALiBiPositionEmbedding` module. Checks and plans: trinix.alibi;
the "torch" backend: trinix.fallback.

Shapes (any strides), positions and bias forms: trinix.alibi.

Gradients: adding ALiBi passes the scores' gradient through unchanged; the fused softmax's
backward, scale * y * (g - sum(g * y)), is torch ops (not a kernel). Slopes are constants.
"""

import functools

import torch
from torch import Tensor
from torch.library import triton_op

from trinix import alibi as host
from trinix import fallback
from trinix.alibi import AlibiSpec, BiasPlan, ScoresPlan
from trinix.kernels.alibi import alibi_slopes_call
from trinix.torch import sharding
from trinix.torch.launcher import DTYPES, TorchOps, cached, dtype_name, launch, operand, resolve_backend, through_ops


def _launch_slopes(max_bias, num_heads, head_offset, total_heads, interpret, traceable=False):
    call = cached(alibi_slopes_call)(num_heads, head_offset=head_offset, total_heads=total_heads)
    return launch(call, dict(max_bias=max_bias), interpret=interpret, traceable=traceable)[0]


def _launch_bias(slopes, plan: BiasPlan, interpret, traceable=False):
    call = cached(host.bias_call)(plan, operand(slopes))
    return launch(call, dict(slopes=slopes), interpret=interpret, traceable=traceable)[0]


def _launch_scores(scores, slopes, plan: ScoresPlan, interpret, inplace=False, traceable=False):
    call = cached(host.scores_call)(plan, operand(scores), operand(slopes), inplace)
    return launch(call, dict(scores=scores, slopes=slopes), interpret=interpret, traceable=traceable)[0]


@triton_op("trinix::alibi_slopes", mutates_args=())
def _slopes_op(max_bias: Tensor, num_heads: int, head_offset: int, total_heads: int,
               interpret: bool) -> Tensor:
    return _launch_slopes(max_bias, num_heads, head_offset, total_heads, interpret, traceable=True)


@triton_op("trinix::alibi_bias", mutates_args=())
def _bias_op(slopes: Tensor, seqlen_q: int, seqlen_k: int, q_offset: int, causal: bool,
             dtype: torch.dtype, interpret: bool) -> Tensor:
    plan = BiasPlan(seqlen_q, seqlen_k, q_offset, causal, dtype_name(dtype))
    return _launch_bias(slopes, plan, interpret, traceable=True)


@triton_op("trinix::alibi_add", mutates_args=())
def _add_op(scores: Tensor, slopes: Tensor, q_offset: int, causal: bool, interpret: bool) -> Tensor:
    return _launch_scores(scores, slopes, ScoresPlan(q_offset, causal), interpret, traceable=True)


@triton_op("trinix::alibi_add_", mutates_args=("scores",))
def _add_inplace_op(scores: Tensor, slopes: Tensor, q_offset: int, causal: bool, interpret: bool) -> None:
    _launch_scores(scores, slopes, ScoresPlan(q_offset, causal), interpret, inplace=True, traceable=True)


@triton_op("trinix::alibi_softmax", mutates_args=())
def _softmax_op(scores: Tensor, slopes: Tensor, scale: float, q_offset: int, causal: bool,
                interpret: bool) -> Tensor:
    return _launch_scores(scores, slopes, ScoresPlan(q_offset, causal, scale), interpret, traceable=True)


sharding.register("alibi_slopes", sharding.slopes_axes, 1)
sharding.register("alibi_bias", sharding.bias_axes, 1)
sharding.register("alibi_add", sharding.scores_axes, 2)
sharding.register("alibi_add_", sharding.scores_axes, 2)
sharding.register("alibi_softmax", sharding.scores_axes, 2)


def _scores_by_kernel(scores, slopes, plan: ScoresPlan, interpret: bool, inplace: bool):
    """The kernel, through the torch.library ops or launched directly (see `through_ops`)."""
    if not through_ops():
        return _launch_scores(scores, slopes, plan, interpret, inplace)
    if plan.scale is not None:
        return _softmax_op(scores, slopes, plan.scale, plan.q_offset, plan.causal, interpret)
    if inplace:
        _add_inplace_op(scores, slopes, plan.q_offset, plan.causal, interpret)
        return scores
    return _add_op(scores, slopes, plan.q_offset, plan.causal, interpret)


class _AlibiScores(torch.autograd.Function):
    """scores + bias, or softmax(scale * scores + bias), by the kernel. The gradient of added
    scores is the output's, unchanged; the softmax's comes from its output by torch ops."""

    @staticmethod
    def forward(ctx, scores, slopes, plan: ScoresPlan, interpret, inplace):
        out = _scores_by_kernel(scores, slopes, plan, interpret, inplace)
        if inplace:
            ctx.mark_dirty(scores)
        if plan.scale is not None:
            ctx.save_for_backward(out)
        ctx.scale = plan.scale
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.scale is not None:
            grad = fallback.softmax_backward(TorchOps, *ctx.saved_tensors, grad, ctx.scale)
        return grad, None, None, None, None


def _check_tensor(name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _check_constant(slopes: Tensor) -> None:
    if slopes.requires_grad:
        raise ValueError("slopes must not require grad: trinix applies ALiBi with constant slopes")


@functools.cache
def _device_memory_bytes(device: torch.device) -> int | None:
    """All the memory of `device`: a CUDA GPU's, the host's for the CPU, None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return host.host_memory_bytes() if device.type == "cpu" else None


def _refuse_bias_out_of_memory(shape, dtype: torch.dtype, device: torch.device,
                               error: torch.OutOfMemoryError):
    """Raise the ValueError of a bias that does not fit the CUDA memory free now, or `error`.
    The free memory is read only here: reading it costs a driver call and two passes over the
    allocator's statistics, as much as a small bias takes."""
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        host.check_bias_fits(shape, dtype_name(dtype), available)
    except ValueError as too_big:
        raise too_big from error
    raise error


def _check_dtype(dtype) -> None:
    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be one of {list(DTYPES.values())}, got {dtype}")


def alibi_slopes(num_heads: int, *, max_bias: float = 8.0, head_offset: int = 0,
                 total_heads: int | None = None, device=None, backend: str = "auto",
                 use_triton: bool = True) -> Tensor:
    """ALiBi slopes of heads head_offset .. head_offset + num_heads - 1 of a model with
    `total_heads` heads (default num_heads), (num_heads,) float32; one kernel launch on the
    Triton backends."""
    spec = AlibiSpec.of(num_heads, max_bias=max_bias, head_offset=head_offset, total_heads=total_heads)
    device = torch.device(device) if device is not None else torch.get_default_device()
    backend = resolve_backend(backend, use_triton, device, "alibi")
    if backend == "torch":
        return torch.from_numpy(spec.slopes()).to(device=device, dtype=torch.float32)
    max_bias = torch.full((1,), float(max_bias), dtype=torch.float32, device=device)
    interpret = backend == "interpret"
    if torch.compiler.is_compiling():
        return _slopes_op(max_bias, num_heads, head_offset, spec.total_heads, interpret)
    return _launch_slopes(max_bias, num_heads, head_offset, spec.total_heads, interpret)


def alibi_bias(slopes: Tensor, seq_len: int, key_len: int | None = None, *, causal: bool = False,
               q_offset: int | None = None, dtype: torch.dtype = torch.float32, backend: str = "auto",
               use_triton: bool = True) -> Tensor:
    """The ALiBi bias (heads, seq_len, key_len) of `dtype` for slopes (heads,), key_len
    defaulting to seq_len, on the slopes' device. A bias too big for that device's memory is
    refused (ValueError): before anything is allocated if it exceeds all of it, when its
    allocation fails if it exceeds what is free."""
    _check_tensor("slopes", slopes)
    _check_dtype(dtype)
    compiling = torch.compiler.is_compiling()  # no memory query while torch.compile traces
    plan = host.plan_bias(operand(slopes), seq_len, key_len, q_offset=q_offset, causal=causal,
                          dtype=dtype_name(dtype), available_bytes=None if compiling else
                          _device_memory_bytes(slopes.device))
    _check_constant(slopes)
    placed = sharding.sharding(("slopes",), (slopes,), sharding.bias_axes)
    if placed is not None:  # a DTensor: each rank makes the bias of its slopes (trinix.torch.sharding)
        return placed.run_local(lambda slopes: alibi_bias(slopes, seq_len, key_len, causal=causal, q_offset=q_offset,
                                                          dtype=dtype, backend=backend, use_triton=use_triton),
                                (slopes,))
    backend = resolve_backend(backend, use_triton, slopes.device, "alibi")
    try:
        if backend == "torch":
            return fallback.alibi_bias(TorchOps, slopes, plan.seqlen_q, plan.seqlen_k, plan.q_offset, causal, dtype)
        if through_ops():
            return _bias_op(slopes, plan.seqlen_q, plan.seqlen_k, plan.q_offset, plan.causal, dtype,
                            backend == "interpret")
        return _launch_bias(slopes, plan, backend == "interpret")
    except torch.OutOfMemoryError as error:
        _refuse_bias_out_of_memory((slopes.shape[0], plan.seqlen_q, plan.seqlen_k), dtype, slopes.device, error)


def _planned_scores(scores, slopes, q_offset, causal, scale=None, num_heads=None) -> ScoresPlan:
    _check_tensor("scores", scores)
    _check_tensor("slopes", slopes)
    plan = host.plan_scores(operand(scores), operand(slopes), q_offset=q_offset, causal=causal, scale=scale,
                            num_heads=num_heads)
    _check_constant(slopes)
    return plan


def alibi_add(scores: Tensor, slopes: Tensor, *, causal: bool = False, q_offset: int | None = None,
              inplace: bool = False, backend: str = "auto", use_triton: bool = True) -> Tensor:
    """scores + ALiBi bias, without a bias tensor: one kernel reads and writes each score once.

    Returns a new tensor like scores (row-major), or scores itself when `inplace` (refused for
    a leaf that requires grad). The gradient of scores passes through unchanged.
    """
    plan = _planned_scores(scores, slopes, q_offset, causal)
    if inplace and torch.is_grad_enabled() and scores.is_leaf and scores.requires_grad:
        raise ValueError("inplace=True cannot add to a leaf tensor that requires grad (scores); "
                         "use inplace=False or add to a non-leaf (e.g. q @ k^T)")
    return _run_scores(scores, slopes, plan, backend, use_triton, inplace)


def alibi_softmax(scores: Tensor, slopes: Tensor, *, scale: float = 1.0, causal: bool = False,
                  q_offset: int | None = None, backend: str = "auto", use_triton: bool = True) -> Tensor:
    """softmax over keys of scale * scores + ALiBi bias in one kernel, like scores (row-major).

    causal=False adds the symmetric bias; causal=True masks the keys after each query (either
    form then gives the same) and returns 0 for a query before every key. `scale` is compiled
    into the kernel (one compilation per value).
    """
    plan = _planned_scores(scores, slopes, q_offset, causal, scale)
    return _run_scores(scores, slopes, plan, backend, use_triton, inplace=False)


def _run_scores(scores, slopes, plan: ScoresPlan, backend, use_triton, inplace):
    slopes = slopes.to(scores.device)
    placed = sharding.sharding(("scores", "slopes"), (scores, slopes), sharding.scores_axes)
    if placed is not None:  # DTensors: each rank runs on its shards by the plan (trinix.torch.sharding)
        out = placed.run_local(lambda scores, slopes: _run_scores(scores, slopes, plan, backend, use_triton,
                                                                  inplace=False), (scores, slopes))
        return scores.copy_(out) if inplace else out
    backend = resolve_backend(backend, use_triton, scores.device, "alibi")
    if backend != "torch":
        return _AlibiScores.apply(scores, slopes, plan, backend == "interpret", inplace)
    if plan.scale is not None:
        return fallback.alibi_softmax(TorchOps, scores, slopes, plan.scale, plan.q_offset, plan.causal)
    out = fallback.alibi_add(TorchOps, scores, slopes, plan.q_offset, plan.causal)
    return scores.copy_(out) if inplace else out


class FastALiBiPositionEmbedding(torch.nn.Module):
    """ALiBi (attention with linear biases, Press et al.) on Triton kernels.

    Example::

        alibi = FastALiBiPositionEmbedding(num_heads=64, max_seq_len=32768, use_triton=True)
        bias = alibi(seq_len, batch_size)        # (batch, 64, seq, seq), batch a stride-0 view
        scores = alibi.add_to_scores(scores)     # scores (batch, 64, seq_q, seq_k) + ALiBi
        probs = alibi.softmax(scores, scale=head_dim ** -0.5, causal=True)

    Args: those of `trinix.alibi.AlibiSpec.of` (the module's `spec`), and
        use_triton: False runs plain torch ops (the "torch" backend).
        backend: "auto" (for CUDA tensors trinix.backend.AUTO's choice, Triton; torch ops
            otherwise), "triton", "interpret" (the Triton kernels on the CPU through Triton's
            interpreter) or "torch".
        dtype: dtype of the bias `forward` returns (float32; float16/bfloat16 lose the
            difference between neighbouring keys at long context).
        device: where the slopes (and so the biases) live; moves with the module.

    `slopes` is a (num_heads,) float32 buffer; it stays float32 when the module is cast.
    """

    def __init__(self, num_heads: int, max_seq_len: int = 2048, use_triton: bool = True, *,
                 backend: str = "auto", causal: bool = False, dtype: torch.dtype = torch.float32,
                 max_bias: float = 8.0, head_offset: int = 0, total_heads: int | None = None,
                 device=None):
        super().__init__()
        self.spec = AlibiSpec.of(num_heads, max_seq_len, causal, max_bias, head_offset, total_heads)
        resolve_backend(backend, use_triton, torch.device("cuda"), "alibi")
        _check_dtype(dtype)
        self.use_triton, self.backend, self.dtype = use_triton, backend, dtype
        self.register_buffer("slopes", self._slopes(device), persistent=False)

    num_heads = property(lambda self: self.spec.num_heads)
    max_seq_len = property(lambda self: self.spec.max_seq_len)
    causal = property(lambda self: self.spec.causal)
    max_bias = property(lambda self: self.spec.max_bias)
    head_offset = property(lambda self: self.spec.head_offset)
    total_heads = property(lambda self: self.spec.total_heads)

    def _slopes(self, device) -> Tensor:
        return alibi_slopes(self.num_heads, max_bias=self.max_bias, head_offset=self.head_offset,
                            total_heads=self.total_heads, device=device, backend=self.backend,
                            use_triton=self.use_triton)
    def _apply(self, fn, recurse=True):
        # Follow the module's moves, but not its casts (model.half()): slopes rounded to
        # float16 would misplace far keys, so they are recomputed in float32.
        super()._apply(fn, recurse)
        self.slopes = self._slopes(self.slopes.device)
        return self

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, max_seq_len={self.max_seq_len}, backend={self.backend!r}, "
                f"causal={self.causal}, dtype={self.dtype}, max_bias={self.max_bias}, "
                f"head_offset={self.head_offset}, total_heads={self.total_heads}")

    def forward(self, seq_len: int, batch_size: int = 1, *, key_len: int | None = None,
                q_offset: int | None = None) -> Tensor:
        """The bias (batch_size, num_heads, seq_len, key_len) of the module's dtype, key_len
        defaulting to seq_len; the batch dim is a broadcast (stride 0) view of one bias."""
        host.check_size("batch_size", batch_size)
        bias = alibi_bias(self.slopes, seq_len, key_len, causal=self.causal, q_offset=q_offset,
                          dtype=self.dtype, backend=self.backend, use_triton=self.use_triton)
        return bias.expand(batch_size, *bias.shape)

    def add_to_scores(self, scores: Tensor, *, q_offset: int | None = None, inplace: bool = False,
                      backend: str | None = None) -> Tensor:
        """scores (batch, num_heads, seqlen_q, seqlen_k) + ALiBi, in one pass and no bias
        tensor (see `alibi_add`)."""
        _planned_scores(scores, self.slopes, q_offset, self.causal, num_heads=self.num_heads)
        return alibi_add(scores, self.slopes, causal=self.causal, q_offset=q_offset, inplace=inplace,
                         backend=backend or self.backend, use_triton=self.use_triton)

    def softmax(self, scores: Tensor, *, scale: float = 1.0, causal: bool | None = None,
                q_offset: int | None = None, backend: str | None = None) -> Tensor:
        """softmax(scale * scores + ALiBi) over keys in one kernel (see `alibi_softmax`);
        causal (masking the keys after each query) defaults to the module's."""
        _planned_scores(scores, self.slopes, q_offset, self.causal, scale, self.num_heads)
        return alibi_softmax(scores, self.slopes, scale=scale,
                             causal=self.causal if causal is None else causal, q_offset=q_offset,
                             backend=backend or self.backend, use_triton=self.use_triton)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool | None = None, **options) -> Tensor:
        """Attention with this module's ALiBi inside the kernel, forward and backward (see
        `trinix.torch.attention`); causal defaults to the module's."""
        from trinix.torch.attention import alibi_attention

        return alibi_attention(self, q, k, v, causal=causal, **options)
