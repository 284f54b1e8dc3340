"""Runs a `KernelCall` on torch tensors: compiled Triton on CUDA, Triton's interpreter on CPU."""

import functools
import threading
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import wrap_triton

from trinix import backend as backend_rule
from trinix.kernels import triton_compat
from trinix.kernels.call import KernelCall, Operand
from trinix.rope import FLOAT_DTYPES

DTYPES = {name: getattr(torch, name) for name in FLOAT_DTYPES}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype) or str(dtype).removeprefix("torch.")


def cached(function):
    """`function`, a functools cache; under torch.compile the function it caches, since Dynamo
    warns at a cache and traces the function anyway."""
    return function.__wrapped__ if torch.compiler.is_compiling() else function


def operand(t: torch.Tensor | None) -> Operand | None:
    if t is None:
        return None
    return Operand(tuple(t.shape), t.stride(), dtype_name(t.dtype))


@functools.cache
def _placeholder(device: torch.device) -> torch.Tensor:
    """What the kernel gets for an input it never reads (its constexprs say so)."""
    return torch.empty(1, device=device)


def may_synchronize(device: torch.device) -> bool:
    """Whether a check may read tensor values to the host: not while torch.compile traces, nor
    while a CUDA graph captures (a copy to the host would end the capture with an error)."""
    if torch.compiler.is_compiling():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def through_ops() -> bool:
    """Whether a launch goes through trinix's torch.library ops: under torch.compile, which traces
    them. Eager launches go straight to the kernels (an op's dispatch costs tens of microseconds),
    DTensors' too: the public functions run on their local shards (trinix.torch.sharding)."""
    return torch.compiler.is_compiling()


def resolve_backend(backend: str, use_triton: bool, device: torch.device, op: str) -> str:
    """The backend a call of `op` ("rope", "alibi", "attention") on tensors on `device` runs on:
    "triton", "interpret" or "torch"; "auto" by trinix.backend.AUTO, in the context "compile"
    while torch.compile traces, else "eager"."""
    context = "compile" if torch.compiler.is_compiling() else "eager"
    return backend_rule.resolve_backend(backend, use_triton, framework="torch", context=context, op=op,
                                        on_gpu=device.type == "cuda", where=str(device))


def read(tensor: torch.Tensor | None, bounds: bool = False):
    """The values of `tensor` as numpy, or only its (min, max) if `bounds` (a smaller copy);
    None where reading them is not allowed now. A DTensor's are its global values: a check of
    positions or a plan by the longest one holds for every shard alike."""
    if tensor is None or not may_synchronize(tensor.device):
        return None
    from trinix.torch.sharding import is_dtensor  # here: sharding imports this module

    if is_dtensor(tensor):
        tensor = tensor.full_tensor()
    if bounds and tensor.numel():
        tensor = torch.stack(torch.aminmax(tensor))
    return tensor.detach().cpu().numpy()


class TorchOps:
    """torch as the array namespace of trinix.fallback."""

    where, floor, cos, sin, abs = torch.where, torch.floor, torch.cos, torch.sin, torch.abs
    clip, maximum, stack, concatenate = torch.clip, torch.maximum, torch.stack, torch.concatenate
    broadcast_to, searchsorted, softmax = torch.broadcast_to, torch.searchsorted, torch.softmax
    einsum, swapaxes, exp, logsumexp = torch.einsum, torch.swapaxes, torch.exp, torch.logsumexp
    float32, float64 = torch.float32, torch.float64
    float32_math = False

    @staticmethod
    def angle_dtype() -> torch.dtype:
        return torch.float64

    @staticmethod
    def arange(start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(start, stop, device=like.device)

    @staticmethod
    def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.to(dtype)

    @staticmethod
    def expand_dims(x: torch.Tensor, axis: int) -> torch.Tensor:
        return x.unsqueeze(axis)

    @staticmethod
    def repeat(x: torch.Tensor, repeats: int, axis: int) -> torch.Tensor:
        return x.repeat_interleave(repeats, dim=axis)


class InductorOps(TorchOps):
    """TorchOps while torch.compile traces: Inductor computes 16-bit math in float32."""

    float32_math = True


# Triton's interpreter keeps global state while it runs (the program id, a patched
# triton.language): launches through it from several threads must take turns.
_INTERPRETER_LOCK = threading.Lock()
_interpreted = functools.cache(triton_compat.interpreted)


def launch(call: KernelCall, arrays: dict[str, torch.Tensor | None], *, interpret: bool,
           traceable: bool = False):
    """Run `call` on `arrays` (by input name; None for an input the call does not read).

    `traceable` launches through torch.library.wrap_triton, as the body of a triton_op must
    for torch.compile to trace it. Eager launches go straight to the kernel: through
    wrap_triton they pass a higher-order op that costs hundreds of microseconds per call.
    Returns the outputs: new tensors, or the aliased inputs for in-place outputs.
    """
    inputs = [arrays.get(name) for name in call.inputs]
    device = next(tensor for tensor in inputs if tensor is not None).device
    # A traced launch gets a placeholder of its own: a cached one would enter the graph as a
    # constant, or the cache would keep a tensor of the trace.
    placeholder = torch.empty(1, device=device) if traceable else _placeholder(device)
    inputs = [placeholder if tensor is None else tensor for tensor in inputs]
    outputs = [
        arrays[out.alias] if out.alias else torch.empty(out.shape, dtype=DTYPES[out.dtype], device=device)
        for out in call.outputs
    ]
    # Nothing to launch for an empty tensor, nor through the interpreter for fake tensors (shapes
    # only, as DTensor propagates a strategy's): it would read them.
    if 0 in call.grid or (interpret and isinstance(outputs[0], FakeTensor)):
        return tuple(outputs)
    if interpret:
        with _INTERPRETER_LOCK:  # Python ints: the interpreter refuses numpy integers
            _interpreted(call.kernel)[call.grid](*inputs, *map(int, call.scalars), *outputs, **_options(call))
    elif traceable:
        wrap_triton(call.kernel)[call.grid](*inputs, *call.scalars, *outputs, **_options(call))
    else:
        _launch_compiled(call, inputs, outputs)
    return tuple(outputs)


def _options(call: KernelCall) -> dict:
    """The keyword arguments of a launch through Triton's JITFunction: constexprs and config."""
    return dict(call.constexprs, num_warps=call.num_warps, num_stages=call.num_stages)


# Compiled kernels by (KernelCall, device, 16-byte alignment of each input): what Triton's
# JITFunction.run specializes a launch on, since a KernelCall fixes every scalar, constexpr and
# dtype, and outputs are new (aligned) tensors or aliased inputs. JITFunction.run binds and
# specializes each argument again on every launch; a cached kernel is launched straight through
# its launcher instead, pointers as integers (the bindings have checked that every tensor is on
# the kernel's CUDA device). A cached call is kept alive beside its kernel, so that its id is
# not reused.
_COMPILED: dict[tuple, tuple[KernelCall, Any, tuple]] = {}
_COMPILED_MAX = 4096


def _launch_compiled(call: KernelCall, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    """Launch `call` on the device of its tensors, compiled by its first launch on that device
    and input alignment."""
    device = inputs[0].device.index
    if device != torch.cuda.current_device():  # e.g. a model split over GPUs in one process
        with torch.cuda.device(device):
            return _launch_compiled(call, inputs, outputs)
    pointers = [tensor.data_ptr() for tensor in inputs]
    key = (id(call), device, *(pointer % 16 == 0 for pointer in pointers))
    cached = _COMPILED.get(key)
    if cached is None:
        arguments = (*inputs, *call.scalars, *outputs)
        compiled = call.kernel[call.grid](*arguments, **_options(call))
        if not triton_compat.can_launch_directly(compiled):
            return None
        names = call.kernel.arg_names[len(arguments):]
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = (call, compiled, tuple(call.constexprs[name] for name in names))
        return None
    _, compiled, constexprs = cached
    grid = (*call.grid, 1, 1)[:3]  # the launcher reads all three grid sizes
    arguments = [*pointers, *call.scalars, *(tensor.data_ptr() for tensor in outputs)]
    triton_compat.launch_compiled(compiled, grid, device, arguments, constexprs)
    return None
