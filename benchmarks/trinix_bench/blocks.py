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

from .harness import Harness, Run, failure_note, release_memory, runnable
from .progress import Progress
from .schema import BLOCK_DTYPE, BLOCK_OPS, BLOCKS, Config, row

ROPE_BASE = 500000.0  # Llama 3's
# A block's timed calls: blocks take milliseconds, and the whole block section should take a few
# minutes of a GPU, compilation included. After WARMUP calls each, an op's providers take TURNS
# turns, each timing about TURN_MS of one provider's calls; an even number of turns, so that
# turn_order puts every provider as often early in a turn as late.
WARMUP, TURNS, TURN_MS = 3, 30, 10.0
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
    """The harness of the block rows: at most WARMUP warm-up calls and TURNS turns (its iters)."""
    return Harness(device, min(warmup, WARMUP), min(iters, TURNS))


def framework_providers(method: str, framework: str) -> list[str]:
    return [name for name, (owner, _) in BLOCKS[method]["providers"].items() if owner == framework]


def turn_order(names: list, turn: int) -> list:
    """The order to time `names` in, in turn `turn` (from 0): reversed every other turn, since a
    row timed later in a turn can read a few percent slower than the same row timed earlier."""
    return list(names) if turn % 2 == 0 else list(reversed(names))


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


def timed_in_turns(harness: Harness, framework: str, runs: dict[str, Run]) -> tuple[dict, dict]:
    """({name: per-call ms}, {name: why}) of `runs`, timed in turns that alternate them: after
    harness.warmup calls of each, harness.iters turns, in each of which every run, in turn_order,
    times about TURN_MS of its calls (one a turn off a GPU). The GPU's drift over the second or so
    this takes (its clocks, its temperature) then falls on every run alike, as it would not on rows
    timed one after another. A run that raises is timed no more: `why` holds its failure note.
    Python's garbage collector is paused throughout."""
    times, failures, calls = {}, {}, {}
    with gc_paused():
        for name, run in runs.items():
            try:
                for _ in range(harness.warmup):
                    run.wait(run.start())
                estimate = statistics.median(harness.call_ms(framework, run, 1))
                calls[name] = max(1, round(TURN_MS / max(estimate, 1e-6))) if harness.cuda else 1
                times[name] = []
            except Exception as failure:  # a provider that fails or does not fit is a row with why
                failures[name] = failure_note(failure)
        for turn in range(harness.iters):
            for name in turn_order(list(times), turn):
                try:
                    times[name] += harness.call_ms(framework, runs[name], calls[name])
                except Exception as failure:
                    failures[name] = failure_note(failure)
                    del times[name]
    if failures:
        release_memory()  # after the except clauses, whose tracebacks held the failed calls' arrays
    return times, failures


def make_block(method: str, config: Config, framework: str, dtype: str, backend: str, device: torch.device):
    if framework == "torch":
        from .torch_blocks import TorchBlock

        return TorchBlock(method, config, dtype, backend, device)
    from .jax_blocks import JaxBlock

    return JaxBlock(method, config, dtype, backend)


def block_rows(harness: Harness, method: str, config: Config, framework: str, *, dtype: str = BLOCK_DTYPE,
               backend: str = "auto", providers: list[str] | None = None, progress: Progress | None = None,
               note: str | None = None) -> list[dict]:
    """Rows of `framework`'s providers of one block configuration, each op checked, then its
    providers timed in turns (timed_in_turns), each row's time the median of its calls.
    providers: those to run (default all; the others get a row saying so); note: why none runs."""
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
        checked = {}
        for name in names:
            if note or (providers is not None and name not in providers):
                results[name, op] = (None, None, note or "not selected")
                continue
            if progress:
                progress.start(f"{method} {config.name} {op} {name} (check)")
            outcome = _checked_run(block, reference, name, op, on_gpu=harness.cuda)
            if isinstance(outcome, str):
                results[name, op] = (None, None, outcome)
            else:
                checked[name] = outcome
        if progress:
            progress.start(f"{method} {config.name} {op} ({len(checked)} providers in {harness.iters} turns)")
        times, failures = timed_in_turns(harness, framework,
                                         {name: run for name, (run, _, _) in checked.items()})
        for name, why in failures.items():
            results[name, op] = (None, None, why)
        for name in times:
            run, call, row_note = checked[name]
            try:
                peak = harness.peak_mb(block.framework, call, run)
            except Exception as failure:
                results[name, op] = (None, None, failure_note(failure))
            else:
                results[name, op] = (statistics.median(times[name]), peak, row_note)
        del checked
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
