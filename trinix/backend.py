"""`backend=`, the one switch between the Triton kernels and the framework's own ops, and
`use_triton`, the original API's alias of it, for both bindings.

"auto" follows one table, AUTO: on a GPU it picks by framework, the context of the call and the
op; off a GPU it is the framework's own ops. The table is set from whole-block measurements
(benchmarks/NOTES.md), so that "auto" never makes a model slower.
"""

FALLBACKS = {"torch": "torch", "jax": "xla"}  # framework -> its own ops' backend
CONTEXTS = {"torch": ("eager", "compile"), "jax": ("eager", "jit")}
OPS = ("rope", "alibi", "attention")

# (framework, context, op) -> what "auto" runs on a GPU. Contexts: "eager"; "compile", while
# torch.compile traces; "jit", when jax arrays are traced (jax.jit or another transformation).
AUTO = {
    # RoPE: the kernel wins where nothing fuses; a compiler fuses its own rotation into the
    # projections around it, which a kernel launch would cut apart.
    ("torch", "eager", "rope"): "triton",
    ("torch", "compile", "rope"): "torch",
    ("jax", "eager", "rope"): "triton",
    ("jax", "jit", "rope"): "xla",
    # ALiBi and attention: no framework op adds ALiBi without a bias tensor.
    ("torch", "eager", "alibi"): "triton",
    ("torch", "compile", "alibi"): "triton",
    ("jax", "eager", "alibi"): "triton",
    ("jax", "jit", "alibi"): "triton",
    ("torch", "eager", "attention"): "triton",
    ("torch", "compile", "attention"): "triton",
    ("jax", "eager", "attention"): "triton",
    ("jax", "jit", "attention"): "triton",
}


def resolve_backend(backend: str, use_triton: bool, *, framework: str, context: str, op: str, on_gpu: bool,
                    where: str) -> str:
    """The backend a call runs on: "triton", "interpret" or the framework's own ("torch", "xla").

    use_triton=False means the framework's own ops (so it goes only with "auto" or those);
    "auto" is AUTO[framework, context, op] on a GPU, else the framework's own. where: the
    arrays' device, for messages."""
    fallback = FALLBACKS[framework]
    names = ("auto", "triton", "interpret", fallback)
    if backend not in names:
        raise ValueError(f"backend must be one of {names}, got {backend!r}")
    if not use_triton:
        if backend not in ("auto", fallback):
            raise ValueError(f"use_triton=False asks for the {fallback} backend, but backend={backend!r}")
        return fallback
    if backend == "auto":
        return AUTO[framework, context, op] if on_gpu else fallback
    if backend == "triton" and not on_gpu:
        raise ValueError(f"backend='triton' needs a GPU (CUDA tensors, jax arrays on a GPU), got "
                         f"arrays on {where}; backend='interpret' runs the same kernel on the CPU")
    return backend
