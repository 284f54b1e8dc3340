"""Facts about a launch that the Triton compiler needs and not every launcher passes on."""

import triton

# Triton's own launcher specializes each integer argument that is a multiple of 16, so the
# compiler knows that rows at such strides start 16-element aligned (and that a mask against
# such a row length is uniform over 16 columns) and vectorizes loads and stores along a
# contiguous axis. jax-triton (0.3) specializes no integer argument: the same kernel launched
# from JAX would move one element per instruction (compiled for sm_90 offline: RoPE at the
# seed's xl size, 0 of 261 global loads vectorized, against 38 of 54 as torch launches it).
# Kernels therefore take a constexpr ALIGNED, set by the call builder when all their row
# strides and row lengths are multiples of 16, and pass those values through multiple_of_16.
ALIGNMENT = 16


@triton.jit
def multiple_of_16(value):
    """`value`, a multiple of 16, in a form whose divisibility the compiler can see."""
    return (value // 16) * 16


def strides_aligned(*values: int) -> bool:
    """Whether every stride (or length) is a multiple of 16 elements (ALIGNED may be set)."""
    return all(value % ALIGNMENT == 0 for value in values)
