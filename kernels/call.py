"""A kernel call as data: what a framework launcher needs to run one Triton kernel.

Builders in this package turn shapes, strides and options into a `KernelCall`; they never
touch a tensor. Each framework has one launcher that runs a `KernelCall` (trinix.torch,
trinix.jax). Every kernel takes its arguments in one fixed order, because jax-triton binds
them positionally: input pointers, runtime scalars and strides, output pointers, constexprs.
"""

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import triton.language as tl


class Operand(NamedTuple):
    """Shape, strides (in elements) and dtype name ("float16", ...) of one array."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str


class Output(NamedTuple):
    """An array the kernel writes.

    `shape` and `dtype` describe a row-major array to allocate; `alias` names the input
    operand the kernel writes into instead (in-place), in which case nothing is allocated.
    """

    shape: tuple[int, ...]
    dtype: str
    alias: str | None = None


@dataclass(frozen=True)
class KernelCall:
    """One launch: `kernel[grid](*inputs, *scalars, *outputs, **constexprs)`.

    `inputs` names the input arrays in kernel order; the launcher looks them up by name in
    what the caller passes, and a name the caller maps to None gets a one-element
    placeholder (the kernel's constexprs guarantee it is never read).
    """

    kernel: Any
    grid: tuple[int, ...]
    inputs: tuple[str, ...]
    scalars: tuple[int, ...]
    outputs: tuple[Output, ...]
    constexprs: Mapping[str, Any]
    num_warps: int = 4
    num_stages: int = 2


def row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides, in elements, of a C-contiguous array of `shape`."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def batched_strides(array: Operand | None, ndim: int) -> tuple[int, ...]:
    """Strides of `array` as `ndim` dims whose first is batch: 0 for a missing or size-1 batch,
    so that e.g. (rows, dim) and (1, rows, dim) tables or (1, seq) positions serve every batch."""
    if array is None:
        return (0,) * ndim
    strides = (0,) * (ndim - len(array.shape)) + tuple(array.strides)
    if array.shape[0] == 1 and len(array.shape) == ndim:
        strides = (0, *strides[1:])
    return strides


def compute_dtype(dtype: str):
    """The kernels' register dtype: float32, float64 only for float64 inputs (gradient checks)."""
    return tl.float64 if dtype == "float64" else tl.float32


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def largest_power_of_2(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (n.bit_length() - 1)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
