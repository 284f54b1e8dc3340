"""Every piece of Triton that is not its public API, each found by detection with a fallback to
the public API. A Triton that lacks a piece makes trinix slower, never wrong.

- `rowwise_max` / `rowwise_sum`: reductions over axis 1 by triton.language's own combine functions,
  which Triton's interpreter runs as NumPy reductions; elsewhere by combine functions of ours,
  which compile to the same code but run element by element in the interpreter.
- `dot`: tl.dot, which Triton's interpreter runs on bfloat16 operands as their uint16 bit
  patterns: `interpreted` kernels get a stand-in that multiplies them in float32.
- `interpreted`: a kernel for Triton's interpreter without TRITON_INTERPRET set before import,
  its loops' runtime bounds read as NumPy 2.5 allows.
- `launch_compiled`: a launch of an already compiled kernel straight through its launcher,
  skipping the JITFunction's argument binding; the fallback is `kernel[grid](...)`.

TRINIX_TRITON_PUBLIC_API=1 (read at import) takes every fallback: tests compare the two.
"""

import os
import types

import triton
import triton.language as tl
from triton.runtime import driver
from triton.runtime.jit import JITFunction

PUBLIC_API_ONLY = os.environ.get("TRINIX_TRITON_PUBLIC_API") == "1"


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add(a, b):
    return a + b


# Each reduction is defined once under its own name, with no alias: torch.compile's Inductor
# copies a user kernel's jit helpers into its own module by their names.
if not PUBLIC_API_ONLY and hasattr(tl.standard, "_elementwise_max") and hasattr(tl.standard, "_sum_combine"):
    @triton.jit
    def rowwise_max(x):
        return tl.reduce(x, 1, tl.standard._elementwise_max)

    @triton.jit
    def rowwise_sum(x):
        return tl.reduce(x, 1, tl.standard._sum_combine)
else:
    @triton.jit
    def rowwise_max(x):
        return tl.reduce(x, 1, _maximum)

    @triton.jit
    def rowwise_sum(x):
        return tl.reduce(x, 1, _add)


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, OUT: tl.constexpr):
    """a @ b with input_precision PRECISION, accumulated in OUT."""
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=OUT)


@triton.jit
def _interpreted_dot(a, b, PRECISION: tl.constexpr, OUT: tl.constexpr):
    """`dot` in the interpreter: bfloat16 operands widened to float32 first (their products
    are exact there, as on tensor cores)."""
    if a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee", out_dtype=OUT)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=OUT)


# --- Triton's interpreter -------------------------------------------------------------------

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # no interpreter entry point: only TRITON_INTERPRET=1 can start it
    InterpretedFunction = None


def _rebind(fn: types.FunctionType, namespace: dict) -> types.FunctionType:
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


def _interpreted_namespace(module_globals: dict, namespaces: dict) -> dict:
    """A copy of a module's globals in which each @triton.jit function of trinix runs in the
    interpreter, in a namespace made alike from its own module's globals. Triton's own jit
    functions stay as they are: the interpreter knows them (tl.standard's combine functions)."""
    key = id(module_globals)
    if key not in namespaces:
        namespace = namespaces[key] = {**module_globals, "range": _interpreter_range}
        for name, value in module_globals.items():
            value = _interpreter_stand_in(value)
            if isinstance(value, JITFunction) and not value.__module__.startswith("triton."):
                inner = _interpreted_namespace(value.fn.__globals__, namespaces)
                namespace[name] = InterpretedFunction(_rebind(value.fn, inner))
    return namespaces[key]


def _scalar(value):
    """An interpreter scalar (a tl.tensor holding a 1-element array) as a Python number."""
    handle = getattr(value, "handle", None)
    return value if handle is None else handle.data.reshape(-1)[0].item()


def _interpreter_range(*bounds):
    """range() over the interpreter's scalars: Triton 3.6 turns them into ints by a conversion
    of 1-element arrays that NumPy 2.5 refuses."""
    return range(*map(_scalar, bounds))


def _interpreter_stand_in(value):
    """What the interpreter runs in place of a helper it gets wrong: `dot`'s stand-in."""
    return _interpreted_dot if value is dot else value


def interpreted(kernel):
    """`kernel` for Triton's interpreter, the @triton.jit helpers it calls included.

    The interpreter runs a kernel's Python source, where a call to a @triton.jit helper fails
    unless TRITON_INTERPRET was set before import; so the kernel runs in copies of its modules'
    namespaces in which those helpers are interpreted too. With TRITON_INTERPRET=1 set,
    every kernel already is interpreted and is returned as it is.
    """
    if not isinstance(kernel, JITFunction):
        return kernel
    if InterpretedFunction is None or PUBLIC_API_ONLY:
        raise RuntimeError("this Triton's interpreter can be started only by setting "
                           "TRITON_INTERPRET=1 before triton is imported")
    return InterpretedFunction(_rebind(kernel.fn, _interpreted_namespace(kernel.fn.__globals__, {})))


# --- Launching a compiled kernel ------------------------------------------------------------

def launch_hooks_set() -> bool:
    """Whether a profiler has given Triton launch hooks, which only Triton's own launch calls.
    Triton keeps each hook as a HookChain, empty (its `calls`) when none is set."""
    runtime = triton.knobs.runtime
    hooks = (getattr(runtime, "launch_enter_hook", None), getattr(runtime, "launch_exit_hook", None))
    return any(hook is not None and getattr(hook, "calls", True) for hook in hooks)


def can_launch_directly(compiled) -> bool:
    """Whether `compiled` (what `kernel[grid](...)` returns) exposes the launcher that
    `launch_compiled` calls."""
    return not PUBLIC_API_ONLY and all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata"))


def launch_compiled(compiled, grid: tuple[int, int, int], device: int, arguments: list,
                    constexprs: tuple) -> None:
    """Launch `compiled` on `grid` (three sizes), on the current stream of `device`, with its
    runtime arguments (pointers as integers) and constexpr values, in signature order."""
    if launch_hooks_set():  # Triton's own launch calls them
        compiled[grid](*arguments, *constexprs)
        return
    stream = driver.active.get_current_stream(device)
    compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *arguments, *constexprs)
