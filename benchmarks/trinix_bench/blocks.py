"""Whole blocks, what a model gains (schema.BLOCKS): every provider's block is checked against the
float32 reference of its framework's plain block (output and, for fwd_bwd, the gradients of x and
the weights), then timed forward and forward + backward with its peak memory. torch_blocks and
jax_blocks build the blocks; this module runs them.
"""

import contextlib
import gc
import statistics
import sys

import torch

from trinix import backend as backend_rule

from .harness import Harness, failure_note, release_memory, runnable
from .progress import Progress
from .schema import BLOCK_DTYPE, BLOCK_OPS, BLOCKS, Config, row

ROPE_BASE = 500000.0  # Llama 3's
# A block's timed calls: blocks take milliseconds, and the whole block section should take a few
# minutes of a GPU, compilation included. Each round times a row within ROW_BUDGET_S; an even
# number of rounds, so that round_order puts every provider as often early in a round as late.
WARMUP, ITERS, ROW_BUDGET_S, ROUNDS = 3, 30, 0.2, 4
# Largest relative error (norm of the difference / norm of the float32 reference) of a block's
# output or a gradient: 16-bit blocks round at about 1%; a wrong rotation, slope or mask is tens of
# percent.
TOLERANCE = {"bfloat16": 5e-2, "float16": 5e-2, "float32": 1e-3}
# Where each trinix provider calls trinix, for the note of what backend="auto" chose.
_TRINIX_CONTEXT = {"eager_trinix": "eager", "compile_trinix": "compile", "trinix": "eager", "jax_trinix": "jit"}


def kv_heads(config: Config) -> int:
    """Key/value heads of the Llama-style block: a quarter of the query heads (8 of 32)."""
    return config.heads // 4


def block_harness(device: torch.device, warmup: int, iters: int) -> Harness:
    """The harness of the block rows: at most WARMUP warm-up and ITERS timed calls a row."""
    return Harness(device, min(warmup, WARMUP), min(iters, ITERS), ROW_BUDGET_S)


def framework_providers(method: str, framework: str) -> list[str]:
    return [name for name, (owner, _) in BLOCKS[method]["providers"].items() if owner == framework]


def round_order(names: list, round_: int) -> list:
    """The order to time `names` in, in round `round_` (from 0): reversed every other round, since a
    row timed later in a round can read a few percent slower than the same row timed earlier."""
    return list(names) if round_ % 2 == 0 else list(reversed(names))


@contextlib.contextmanager
def gc_paused():
    """Python's garbage collector off (after one collection), as timeit times: a collection during
    a row, of the objects autograd leaves behind, would land on whichever provider runs then."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def make_block(method: str, config: Config, framework: str, dtype: str, backend: str, device: torch.device):
    if framework == "torch":
        from .torch_blocks import TorchBlock

        return TorchBlock(method, config, dtype, backend, device)
    from .jax_blocks import JaxBlock

    return JaxBlock(method, config, dtype, backend)


def block_rows(harness: Harness, method: str, config: Config, framework: str, *, dtype: str = BLOCK_DTYPE,
               backend: str = "auto", providers: list[str] | None = None, progress: Progress | None = None,
               note: str | None = None) -> list[dict]:
    """Rows of `framework`'s providers of one block configuration, each op checked, then timed.
    providers: those to run (default all; the others get a row saying so); note: why none runs.

    The providers of an op are timed in ROUNDS rounds, in round_order, each row's time the median
    of its rounds, so that the GPU's drift over the seconds between rows, and a row's place in a
    round, fall on every provider alike."""
    names = framework_providers(method, framework)
    block = reference = None
    if note is None:
        try:
            block = make_block(method, config, framework, dtype, backend,
                               torch.device("cuda" if harness.cuda else "cpu"))
            reference = block.reference()
        except Exception as error:  # a reference that fails leaves its block unchecked: not timed
            note = "not run: its float32 reference " + failure_note(error)
    results = {}  # (provider, op) -> (ms, peak MB, note)
    for op in BLOCK_OPS:
        timed = {}
        for name in names:
            if note or (providers is not None and name not in providers):
                results[name, op] = (None, None, note or "not selected")
                continue
            if progress:
                progress.start(f"{method} {config.name} {op} {name} (check)")
            checked = _checked_run(block, reference, name, op, on_gpu=harness.cuda)
            if isinstance(checked, str):
                results[name, op] = (None, None, checked)
            else:
                timed[name] = checked
        times = {name: [] for name in timed}
        for round_ in range(ROUNDS):
            for name in round_order(list(timed), round_):
                if progress:
                    progress.start(f"{method} {config.name} {op} {name} (round {round_ + 1} of {ROUNDS})")
                try:
                    with gc_paused():
                        times[name].append(harness.median_ms(block.framework, timed[name][0]))
                    continue
                except Exception as failure:  # a provider that fails or does not fit is a row with why
                    results[name, op] = (None, None, failure_note(failure))
                del timed[name]
                release_memory()  # after the except clause, whose traceback held the failed call's arrays
        for name, (run, call, row_note) in timed.items():
            try:
                peak = harness.peak_mb(block.framework, call, run)
            except Exception as failure:
                results[name, op] = (None, None, failure_note(failure))
            else:
                results[name, op] = (statistics.median(times[name]), peak, row_note)
        del timed
        release_memory()
        if progress:
            for _ in names:
                progress.finish_row()
    del block, reference
    if framework == "torch":
        torch.compiler.reset()
    release_memory()
    return [row(method, config.name, op, name, ms=results[name, op][0], peak_mb=results[name, op][1],
                note=results[name, op][2]) for name in names for op in BLOCK_OPS]


def _checked_run(block, reference: tuple, name: str, op: str, on_gpu: bool):
    """(run, call, note) of one provider's op, checked against the reference, or the note of a
    row that is not timed. The framework's plain block is timed whatever its error (it is the
    baseline); another that is wrong is not timed, and says so on stderr too."""
    tolerance = TOLERANCE[block.dtype]
    plain = framework_providers(block.method, block.framework)[0]
    try:
        call = block.call(name, op)
        error = block.error(call.fn(*call.args), reference if op == "fwd_bwd" else reference[:1])
    except Exception as failure:  # a provider that fails or does not fit is a row with why, not a crash
        note = failure_note(failure)
        release_memory()  # after the except clause, whose traceback held the failed call's arrays
        return note
    if not error <= tolerance and name != plain:
        note = f"wrong: relative error {error:.2g} against the float32 reference (tolerance {tolerance:g})"
        print(f"{block.method} {block.config.name} {op} {name}: {note}", file=sys.stderr)
        return note
    notes = [_trinix_note(block, name, on_gpu), getattr(block, "notes", {}).get(name)]
    if not error <= tolerance:
        notes.append(f"relative error {error:.2g} against its own math in float32 (timed: the baseline)")
    return runnable(block.framework, call), call, "; ".join(n for n in notes if n) or None


def _trinix_note(block, name: str, on_gpu: bool) -> str | None:
    """What backend a trinix provider ran: its `backend`, and for "auto" what the rule chose."""
    if name not in _TRINIX_CONTEXT:
        return None
    if block.backend != "auto":
        return f"trinix backend {block.backend!r}"
    context, op = _TRINIX_CONTEXT[name], "rope" if block.method == "llama_block" else "attention"
    chosen = (backend_rule.AUTO[block.framework, context, op] if on_gpu
              else backend_rule.FALLBACKS[block.framework])
    return f"trinix backend 'auto': {chosen} ({context})"
