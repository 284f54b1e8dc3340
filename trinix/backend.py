"""`backend=`, the one switch between the Triton kernels and the framework's own ops, and
`use_triton`, the original API's alias of it, for both bindings."""


def resolve_backend(backend: str, use_triton: bool, *, fallback: str, on_gpu: bool, where: str) -> str:
    """The backend a call runs on: "triton", "interpret" or `fallback` ("torch" or "xla").

    use_triton=False means backend=fallback (so it goes only with "auto" or fallback);
    "auto" is "triton" on a GPU, else fallback. where: the arrays' device, for messages."""
    names = ("auto", "triton", "interpret", fallback)
    if backend not in names:
        raise ValueError(f"backend must be one of {names}, got {backend!r}")
    if not use_triton:
        if backend not in ("auto", fallback):
            raise ValueError(f"use_triton=False asks for the {fallback} backend, but backend={backend!r}")
        return fallback
    if backend == "auto":
        return "triton" if on_gpu else fallback
    if backend == "triton" and not on_gpu:
        raise ValueError(f"backend='triton' needs a GPU (CUDA tensors, jax arrays on a GPU), got "
                         f"arrays on {where}; backend='interpret' runs the same kernel on the CPU")
    return backend
