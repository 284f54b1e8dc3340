"""Triton's interpreter as an XLA FFI target on the CPU: how the "interpret" backend launches a
`KernelCall` from a jax computation there.

Why not jax.pure_callback: a host callback belongs to the executable of the module it is lowered
in, and custom_partitioning lowers each shard's computation in a module of its own, whose
callbacks are dropped (the executable crashes when it reaches one). An FFI target is global:
XLA calls it by name from any module, once per device on that device's shard. The handler is a
ctypes function that reads XLA's FFI call frame (the C API of xla/ffi/api/c_api.h); each launch
names its KernelCall by an index into a registry, the attribute "call".
"""

import ctypes
import functools
import threading
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from trinix.kernels.call import KernelCall

TARGET = "trinix_interpreted_kernel"

_size, _pointer = ctypes.c_size_t, ctypes.c_void_p


class _Api(ctypes.Structure):
    """The head of XLA_FFI_Api: its version, then the functions, XLA_FFI_Error_Create first."""

    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("version_struct_size", _size),
                ("version_extension_start", _pointer), ("major", ctypes.c_int), ("minor", ctypes.c_int),
                ("internal_api", _pointer), ("error_create", _pointer)]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("message", ctypes.c_char_p),
                ("errc", ctypes.c_int)]


class _Values(ctypes.Structure):
    """XLA_FFI_Args and XLA_FFI_Rets: `size` pointers to buffers."""

    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("size", ctypes.c_int64),
                ("types", _pointer), ("values", ctypes.POINTER(_pointer))]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("size", ctypes.c_int64),
                ("types", _pointer), ("names", _pointer), ("values", ctypes.POINTER(_pointer))]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("api", ctypes.POINTER(_Api)),
                ("ctx", _pointer), ("stage", ctypes.c_int), ("args", _Values), ("rets", _Values),
                ("attrs", _Attrs), ("future", _pointer)]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", _size), ("extension_start", _pointer), ("dtype", ctypes.c_int),
                ("data", _pointer), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Scalar(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("value", ctypes.POINTER(ctypes.c_int64))]


class _MetadataExtension(ctypes.Structure):
    """XLA_FFI_Metadata_Extension: XLA asks a handler for its API version when registering it."""

    _fields_ = [("struct_size", _size), ("type", ctypes.c_int), ("next", _pointer), ("metadata", _pointer)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", _size), ("version_struct_size", _size), ("version_extension_start", _pointer),
                ("major", ctypes.c_int), ("minor", ctypes.c_int), ("traits", ctypes.c_uint32)]


# XLA_FFI_DataType values (XLA's PrimitiveType) of the dtypes kernels take.
_DTYPES = {1: np.bool_, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.uint8, 7: np.uint16,
           8: np.uint32, 9: np.uint64, 10: np.float16, 11: np.float32, 12: np.float64, 16: jnp.bfloat16}
_EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE; the other stages have nothing to do here
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL

_calls: list[KernelCall] = []
_index_of: dict[int, int] = {}
_registry_lock = threading.Lock()


def _register(call: KernelCall) -> int:
    """The registry index of `call` (KernelCalls are cached by their builders, so the registry
    grows with the distinct launches of a process, as those caches do)."""
    with _registry_lock:
        if id(call) not in _index_of:
            _index_of[id(call)] = len(_calls)
            _calls.append(call)
        return _index_of[id(call)]


def _array(buffer_pointer: int) -> np.ndarray:
    """The buffer XLA passes, as a numpy array on its memory (no copy)."""
    buffer = ctypes.cast(buffer_pointer, ctypes.POINTER(_Buffer)).contents
    shape = tuple(buffer.dims[i] for i in range(buffer.rank))
    dtype = np.dtype(_DTYPES[buffer.dtype])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((ctypes.c_char * nbytes).from_address(buffer.data), dtype).reshape(shape)


def _run(frame: _CallFrame) -> None:
    from trinix.jax.launcher import _as_numpy, _as_torch
    from trinix.torch.launcher import launch as torch_launch

    call = _calls[ctypes.cast(frame.attrs.values[0], ctypes.POINTER(_Scalar)).contents.value[0]]
    aliased = {out.alias for out in call.outputs}
    inputs = {}
    for i, name in enumerate(call.inputs):
        array = _array(frame.args.values[i])
        # An in-place kernel writes its input: give it a copy, XLA's buffer is not ours to change.
        inputs[name] = _as_torch(array.copy() if name in aliased else array)
    for i, result in enumerate(torch_launch(call, inputs, interpret=True)):
        np.copyto(_array(frame.rets.values[i]), _as_numpy(result))


def _error(frame: _CallFrame, message: str) -> int:
    """An XLA_FFI_Error made by XLA's own XLA_FFI_Error_Create, which fails the computation."""
    create = ctypes.CFUNCTYPE(_pointer, ctypes.POINTER(_ErrorCreateArgs))(frame.api.contents.error_create)
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), _INTERNAL)
    return create(ctypes.byref(args))


@ctypes.CFUNCTYPE(_pointer, ctypes.POINTER(_CallFrame))
def _handler(frame_pointer):
    """XLA_FFI_Handler: NULL on success, else an error (a Python exception must not escape)."""
    frame = frame_pointer.contents
    if frame.extension_start:  # registration asks for the API version this handler speaks
        extension = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents
        metadata = ctypes.cast(extension.metadata, ctypes.POINTER(_Metadata)).contents
        metadata.major, metadata.minor = 0, 1
        return None
    if frame.stage != _EXECUTE:
        return None
    try:
        _run(frame)
    except Exception:  # noqa: BLE001 - reported through XLA, which raises it in the caller
        return _error(frame, traceback.format_exc())
    return None


@functools.cache
def _registered() -> None:
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [_pointer, ctypes.c_char_p, _pointer]
    capsule = new_capsule(ctypes.cast(_handler, _pointer), b"xla._CUSTOM_CALL_TARGET", None)
    jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu")


def interpret(call: KernelCall, inputs: list[jax.Array]) -> tuple[jax.Array, ...]:
    """The outputs of `call` on `inputs` (in the kernel's input order), by Triton's interpreter on
    the host, one call per device shard."""
    _registered()
    out_types = [jax.ShapeDtypeStruct(out.shape, out.dtype) for out in call.outputs]
    return tuple(jax.ffi.ffi_call(TARGET, out_types)(*inputs, call=np.int64(_register(call))))
