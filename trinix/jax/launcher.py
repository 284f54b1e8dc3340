"""Runs a `KernelCall` on jax arrays: jax-triton on a GPU, Triton's interpreter on the CPU.

jax-triton imports only beside a CUDA jaxlib and torch is needed only by the interpreter, so
both are imported on first use; `import trinix.jax` needs neither.
"""

import functools
import importlib.util
import inspect
import os

import jax
import jax.numpy as jnp
import numpy as np

from trinix import backend as backend_rule
from trinix.jax import host_call
from trinix.kernels.call import KernelCall, Operand, row_major_strides
from trinix.rope import FLOAT_DTYPES

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def as_arrays(**arrays) -> list:
    """The arguments as jax arrays (None stays None). TypeError naming one that is not an
    array; ValueError naming a numpy integer array whose values the jax integer dtype it
    becomes cannot hold (int64 ids past 2**31 would wrap to other positions without x64)."""
    converted = []
    for name, value in arrays.items():
        if value is not None and not isinstance(value, (jax.Array, np.ndarray)):
            raise TypeError(f"{name} must be a jax or numpy array, got {type(value).__name__}")
        array = None if value is None else jnp.asarray(value)
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.size:
            bounds = np.iinfo(array.dtype)
            if value.min() < bounds.min or value.max() > bounds.max:
                raise ValueError(f"{name} holds values in [{value.min()}, {value.max()}], outside "
                                 f"{array.dtype}, the integer dtype JAX gives it here")
        converted.append(array)
    return converted


def dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def float_dtype_name(dtype) -> str:
    """The name of `dtype`, the `dtype` argument of tables and biases: a float dtype, else
    TypeError naming it (None too, which NumPy would read as float64)."""
    try:
        name = None if dtype is None else dtype_name(dtype)
    except TypeError:
        name = None
    if name not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    return name


def operand(x: jax.Array | None) -> Operand | None:
    """Shape, row-major strides and dtype name of `x` (JAX arrays have no other strides)."""
    if x is None:
        return None
    return Operand(tuple(x.shape), row_major_strides(tuple(x.shape)), dtype_name(x.dtype))


def platform_of(x: jax.Array | None) -> str:
    """The platform `x` lives on, or the default one for a traced (or absent) array."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return next(iter(x.devices())).platform
    return jax.default_backend()


def resolve_backend(backend: str, use_triton: bool, op: str, x: jax.Array | None = None, *,
                    platform: str | None = None) -> str:
    """The backend a call of `op` ("rope", "alibi", "attention") on `x` runs on: "triton",
    "interpret" or "xla"; "auto" by trinix.backend.AUTO, in the context "jit" when x is traced,
    else "eager". platform: where the call runs, default x's (see platform_of)."""
    platform = platform or platform_of(x)
    context = "jit" if isinstance(x, jax.core.Tracer) else "eager"
    backend = backend_rule.resolve_backend(backend, use_triton, framework="jax", context=context, op=op,
                                           on_gpu=platform in _GPU_PLATFORMS, where=platform)
    if backend == "interpret" and importlib.util.find_spec("torch") is None:
        raise ImportError("backend='interpret' runs Triton's interpreter, which needs torch "
                          "(pip install torch); backend='xla' needs nothing more")
    return backend


def read(x, bounds: bool = False) -> np.ndarray | None:
    """The values of `x` as numpy (all of them: a reduction on the device would be traced
    inside a jit of constants, so `bounds` changes nothing); None for a traced array."""
    return None if x is None or isinstance(x, jax.core.Tracer) else np.asarray(x)


class JaxOps:
    """jax.numpy as the array namespace of trinix.fallback."""

    where, floor, cos, sin, abs = jnp.where, jnp.floor, jnp.cos, jnp.sin, jnp.abs
    clip, maximum, stack, concatenate = jnp.clip, jnp.maximum, jnp.stack, jnp.concatenate
    broadcast_to, searchsorted, repeat, expand_dims = jnp.broadcast_to, jnp.searchsorted, jnp.repeat, jnp.expand_dims
    softmax, logsumexp = staticmethod(jax.nn.softmax), staticmethod(jax.nn.logsumexp)
    swapaxes = jnp.swapaxes
    # float32 products in full precision: on a GPU XLA's default multiplies in TF32.
    einsum = staticmethod(functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST))
    float32, float64 = jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)
    float32_math = False

    @staticmethod
    def angle_dtype():
        return jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is on

    @staticmethod
    def arange(start: int, stop: int, like=None) -> jax.Array:
        return jnp.arange(start, stop)

    @staticmethod
    def cast(x: jax.Array, dtype) -> jax.Array:
        return x.astype(dtype)


def launch(call: KernelCall, arrays: dict[str, jax.Array | None], *, backend: str) -> tuple[jax.Array, ...]:
    """Run `call` on `arrays` (by input name; None for an input the call does not read).

    backend: "triton" (jax-triton) or "interpret" (Triton's interpreter in a host callback).
    Returns the outputs as new arrays; an aliased output reuses its input's buffer on "triton".
    """
    missing = [name for name in call.inputs if arrays.get(name) is None]
    placeholder = jnp.zeros((1,), jnp.float32) if missing else None
    inputs = [placeholder if name in missing else arrays[name] for name in call.inputs]
    if not all(call.grid):
        # Nothing to launch: the outputs have no elements.
        return tuple(inputs[call.inputs.index(out.alias)] if out.alias else jnp.zeros(out.shape, out.dtype)
                     for out in call.outputs)
    if backend == "triton":
        return _launch_triton(call, inputs)
    if backend == "interpret":
        return _launch_interpreted(call, inputs)
    raise ValueError(f"launch needs backend 'triton' or 'interpret', got {backend!r}")


@functools.cache
def _out_keyword(triton_call) -> str:
    """jax-triton 0.4 renamed `out_shape` to `out_type`."""
    return "out_type" if "out_type" in inspect.signature(triton_call).parameters else "out_shape"


@functools.cache
def jax_triton():
    """The jax_triton module. It sets TRITON_CACHE_DIR to "" on import, which leaves Triton,
    and torch's Triton launches in the same process, without a cache directory ("Could not
    create or locate cache dir"): the variable is put back as it was."""
    saved = os.environ.get("TRITON_CACHE_DIR")
    import jax_triton as module

    if saved is None:
        os.environ.pop("TRITON_CACHE_DIR", None)
    else:
        os.environ["TRITON_CACHE_DIR"] = saved
    return module


def _launch_triton(call: KernelCall, inputs: list[jax.Array]) -> tuple[jax.Array, ...]:
    out_types = [jax.ShapeDtypeStruct(out.shape, out.dtype) for out in call.outputs]
    aliases = {call.inputs.index(out.alias): i for i, out in enumerate(call.outputs) if out.alias}
    triton_call = jax_triton().triton_call
    outputs = triton_call(
        *inputs,
        # jax-triton takes only Python scalars as scalars (an np.int64 would be an operand).
        *(int(s) for s in call.scalars),
        kernel=call.kernel,
        grid=call.grid,
        num_warps=call.num_warps,
        num_stages=call.num_stages,
        input_output_aliases=aliases,
        **{_out_keyword(triton_call): out_types},
        **call.constexprs,
    )
    return tuple(outputs)


def _launch_interpreted(call: KernelCall, inputs: list[jax.Array]) -> tuple[jax.Array, ...]:
    """On the CPU an FFI target (trinix.jax.host_call), which also runs inside a sharded
    computation's per-shard module; beside a GPU a host callback, which copies to the host."""
    if platform_of(None) == "cpu":
        return host_call.interpret(call, inputs)
    out_types = [jax.ShapeDtypeStruct(out.shape, out.dtype) for out in call.outputs]

    def run_on_host(*buffers: np.ndarray) -> tuple[np.ndarray, ...]:
        from trinix.torch.launcher import launch as torch_launch

        tensors = {name: _as_torch(buffer) for name, buffer in zip(call.inputs, buffers)}
        return tuple(_as_numpy(t) for t in torch_launch(call, tensors, interpret=True))

    return tuple(jax.pure_callback(run_on_host, out_types, *inputs))


def _as_torch(buffer: np.ndarray):
    """A writable, C-contiguous torch CPU tensor holding `buffer` (copied if needed)."""
    import torch

    buffer = np.require(buffer, requirements="CW")
    if buffer.dtype == jnp.bfloat16:
        # torch.from_numpy cannot take ml_dtypes' bfloat16; reinterpret its bits.
        return torch.from_numpy(buffer.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(buffer)


def _as_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
    return tensor.numpy()
