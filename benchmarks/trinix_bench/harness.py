"""One way to time a call and read its memory, the same for every provider.

A call is run `warmup` times, then timed `iters` times, and the median is reported. On a GPU,
torch calls as triton.testing.do_bench times them: L2 flushed before each, CUDA events around
it, the host dispatching ahead (so the time is the GPU's unless dispatch is slower); JAX calls,
whose stream torch's events cannot see, by the wall time of bursts of back-to-back calls. On a
CPU, each call by the wall clock.
"""

import copy
import gc
import math
import statistics
import time
from typing import Any, Callable, NamedTuple

import torch

FLUSH_BYTES = 256 * 2**20  # larger than any L2 cache
ROW_BUDGET_S = 2.0  # timed iterations of one row are cut to fit this (by default), but never below MIN_ITERS
MIN_ITERS = 10
CAPPED_MIN_ITERS = 3  # the timed calls of a row under a cap (Harness.capped), at least
# A burst of JAX calls lasts about this long (and at least one call): its first dispatch and
# its last wait, which no other call overlaps, are then a small part of it.
BURST_MS = 10.0
MIN_BURSTS = 3


class Call(NamedTuple):
    """One op as fn(*args). JAX fns are jitted, so their compiled memory can be read; one
    that `donates_first` consumes its first argument, and its result is the next call's."""

    fn: Callable
    args: tuple
    donates_first: bool = False


class Run(NamedTuple):
    """One call of a row: `start()` dispatches it and returns its output; `wait(out)` returns
    once that output is ready (torch on the CPU and JAX's async dispatch need it)."""

    start: Callable[[], Any]
    wait: Callable[[Any], Any]


class Harness:
    """Times a call and reads its memory, the same way for every provider."""

    def __init__(self, device: torch.device, warmup: int, iters: int, row_budget_s: float = ROW_BUDGET_S):
        self.cuda = device.type == "cuda"
        self.warmup, self.iters, self.row_budget_s = warmup, iters, row_budget_s
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        self.cap_s = None

    def capped(self, seconds: float) -> "Harness":
        """This harness for rows of long calls (up to a second each): after the first warm-up
        call (compilation), warm-up stops once it has taken `seconds`; the estimate takes one
        call; the timed calls fit `seconds`, at least CAPPED_MIN_ITERS of them."""
        harness = copy.copy(self)
        harness.cap_s = harness.row_budget_s = seconds
        return harness

    def _torch_gpu_ms(self, run: Run, iters: int) -> list[float]:
        """Per-call GPU times as triton.testing.do_bench takes them: before each call the L2 is
        flushed, CUDA events bracket the call, and nothing waits in between, so the host
        dispatches ahead of the GPU. The time is the GPU's, unless the host takes longer to
        dispatch a call than the GPU takes to flush and run it: then it is the host's."""
        events = []
        for _ in range(iters):
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run.start()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def _burst_ms(self, run: Run, iters: int, calls: int) -> list[float]:
        """Per-call times from bursts of `calls` back-to-back calls (iters // calls bursts, at
        least one): a burst's wall time (until its last output is ready) / its calls. JAX runs on
        a stream of its own that torch's events do not see; dispatching ahead, like the torch
        rows, its time is the GPU's unless the host's dispatch is longer. A burst also holds its
        first dispatch and its last wait, which BURST_MS makes small beside it. No L2 flush
        between calls (a flush would be a JAX call of its own); at the original configurations' sizes the JAX rows
        are host-bound or move far more than the L2 holds."""
        times = []
        for _ in range(max(1, iters // calls)):
            begin = time.perf_counter()
            for _ in range(calls):
                out = None  # freed before the next call allocates its own (a large bias is 34 GB)
                out = run.start()
            run.wait(out)
            times.append((time.perf_counter() - begin) * 1e3 / calls)
        return times

    def _wall_ms(self, run: Run, iters: int) -> list[float]:
        """Per-call wall times, each call waited for (a CPU run: no flush, no overlap)."""
        times = []
        for _ in range(iters):
            begin = time.perf_counter()
            run.wait(run.start())
            times.append((time.perf_counter() - begin) * 1e3)
        return times

    def median_ms(self, framework: str, run: Run, bursts: bool = False) -> float:
        """Median time of one call, after `warmup` calls (compilation included). On a GPU, torch
        calls by CUDA events, JAX calls (and torch's with `bursts`) by bursts. Fewer calls under
        a cap (`capped`)."""
        for i in range(self.warmup):
            run.wait(run.start())
            if i == 0:
                begin = time.perf_counter()  # after the first call, which compiles
            elif self.cap_s is not None and time.perf_counter() - begin > self.cap_s:
                break
        estimates = 3 if self.cap_s is None else 1
        if self.cuda and (framework != "torch" or bursts):
            estimate = statistics.median(self._burst_ms(run, estimates, calls=estimates))
            calls = max(1, math.ceil(BURST_MS / max(estimate, 1e-6)))
            return statistics.median(self._burst_ms(run, max(self._iters(estimate), MIN_BURSTS * calls), calls))
        timed = self._torch_gpu_ms if self.cuda else self._wall_ms
        estimate = statistics.median(timed(run, estimates))
        return statistics.median(timed(run, self._iters(estimate)))

    def call_ms(self, framework: str, run: Run, calls: int) -> list[float]:
        """Times of `calls` calls, with no warm-up: on a GPU a time per torch call (CUDA events,
        L2 flushed before each) or one per JAX burst of `calls` calls (its wall time / calls);
        on a CPU a time per call by the wall clock."""
        if not self.cuda:
            return self._wall_ms(run, calls)
        if framework == "torch":
            return self._torch_gpu_ms(run, calls)
        return self._burst_ms(run, calls, calls)

    def _iters(self, estimate_ms: float) -> int:
        """Timed calls of a row: `iters`, fewer where they would take over `row_budget_s` (but at
        least MIN_ITERS, or CAPPED_MIN_ITERS under a cap)."""
        least = MIN_ITERS if self.cap_s is None else CAPPED_MIN_ITERS
        estimate_ms = max(estimate_ms, 1e-6)
        return max(min(self.iters, least), min(self.iters, int(self.row_budget_s * 1e3 / estimate_ms)))

    def peak_mb(self, framework: str, call: Call, run: Run) -> float | None:
        """Memory one call needs beyond its inputs (its outputs and temporaries), in MB.

        torch: the CUDA allocator's peak above what was allocated before the call (None on a
        CPU, which keeps no statistics). JAX: outputs + temporaries of the compiled program,
        from XLA's memory analysis, since JAX's own peak statistic cannot be reset per call.
        """
        if framework == "jax":
            import jax

            # Shapes only: a donated argument is gone by now.
            args = [jax.ShapeDtypeStruct(a.shape, a.dtype) if isinstance(a, jax.Array) else a for a in call.args]
            stats = call.fn.lower(*args).compile().memory_analysis()
            if stats is None:
                return None
            return (stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / 1e6
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = run.wait(run.start())
        del out
        return (torch.cuda.max_memory_allocated() - before) / 1e6


def copy_gbps(harness: Harness, device: torch.device) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, in GB/s."""
    nbytes = 4 * 2**30 if device.type == "cuda" else 2**27
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / harness.median_ms("torch", runnable("torch", Call(target.copy_, (source,)))) / 1e6


def failure_note(error: Exception) -> str:
    """A row's note for a call that raised: "does not fit: ..." when the device ran out of memory
    (torch's error, or XLA's RESOURCE_EXHAUSTED), else "failed: ..."."""
    text = str(error).strip()
    message = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    if isinstance(error, torch.OutOfMemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return f"does not fit: out of memory ({message})"[:240]
    return f"failed: {message}"[:240]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def runnable(framework: str, call: Call) -> Run:
    """The call as a Run. A donating JAX call feeds its output back as the next call's
    donated argument."""
    if framework == "torch":
        def wait(out):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return out

        return Run(lambda: call.fn(*call.args), wait)
    import jax

    args = list(call.args)

    def start():
        out = call.fn(*args)
        if call.donates_first:
            args[0] = out
        return out

    return Run(start, jax.block_until_ready)
