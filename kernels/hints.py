"""Facts about a launch that the Triton compiler needs and not every launcher passes on."""

import inspect

import triton
import triton.language as tl  # noqa: F401 (Triton's interpreter wants it among a jit function's globals)

# Triton's own launcher specializes each integer argument that is a multiple of 16, so the
# compiler knows that rows at such strides start 16-element aligned (and that a mask against
# such a row length is uniform over 16 columns) and vectorizes loads and stores along a
# contiguous axis. jax-triton (0.3) specializes no integer argument: the same kernel launched
# from JAX would move one element per instruction (benchmarks/NOTES.md, "2026-12-06: moved
# from code comments").
# Kernels therefore take a constexpr ALIGNED, set by the call builder when all their row
# strides and row lengths are multiples of 16, and pass those values through multiple_of_16.
# ALIGNED is then the compiler's only source of divisibility: a launched kernel is declared
# with `kernel`, which turns Triton's own integer specialization off, so that both launchers
# compile the same code for the same call: a softmax compiled for other divisibility sums in
# another order, so its last bits would differ between the frameworks.
ALIGNMENT = 16


def kernel(fn):
    """triton.jit for a kernel that trinix launches: its scalar arguments (lower-case names;
    pointers and constexprs are upper case) are not specialized on divisibility by 16. An
    argument equal to 1 is still compiled in, by both launchers."""
    scalars = [name for name in inspect.signature(fn).parameters if name.islower()]
    return triton.jit(do_not_specialize_on_alignment=scalars)(fn)


@triton.jit
def multiple_of_16(value):
    """`value`, a multiple of 16, in a form whose divisibility the compiler can see."""
    return (value // 16) * 16


def strides_aligned(*values: int) -> bool:
    """Whether every stride (or length) is a multiple of 16 elements (ALIGNED may be set)."""
    return all(value % ALIGNMENT == 0 for value in values)
