"""What follows from the result rows: speedups, time / roofline, GB/s, crossovers, and the
numbers and names as the report writes them. Every ratio is of two rows of the same run."""

import math

from .schema import METHODS, PROVIDERS, providers_of


class Rows:
    """The result rows by (method, config, op, provider), and what follows from them."""

    def __init__(self, results: dict):
        self.meta = results["meta"]
        self.by_key = {(r["method"], r["config"], r["op"], r["provider"]): r for r in results["rows"]}

    def get(self, method, config, op, provider, field):
        row = self.by_key.get((method, config, op, provider))
        return row[field] if row else None

    def ms(self, method, config, op, provider) -> float | None:
        return self.get(method, config, op, provider, "ms")

    def note(self, method, config, op, provider) -> str | None:
        return self.get(method, config, op, provider, "note")

    def roofline(self, method, config, op) -> float | None:
        """The op's roofline, which each provider's row carries."""
        return self.get(method, config, op, next(iter(providers_of(method))), "roofline_ms")

    def speedup(self, method, config, op, provider) -> float | None:
        """PyTorch's time / the provider's."""
        mine, theirs = self.ms(method, config, op, provider), self.ms(method, config, op, "pytorch")
        return theirs / mine if mine and theirs else None

    def over_roofline(self, method, config, op, provider) -> float | None:
        """Time / roofline."""
        ms, roofline = self.ms(method, config, op, provider), self.roofline(method, config, op)
        return ms / roofline if ms and roofline else None

    def jax_over_torch(self, method, config, op) -> float | None:
        """JAX Triton's time / Triton's through torch timed by bursts as the JAX rows are
        (burst_ms, a GPU run only): the kernels are the same, so this is what launching
        from JAX costs."""
        jax_ms, torch_ms = self.ms(method, config, op, "jax_triton"), self.get(method, config, op, "triton", "burst_ms")
        return jax_ms / torch_ms if jax_ms and torch_ms else None

    def copy_gbps(self, method) -> float:
        """The copy bandwidth of the run that measured `method`'s rows (meta.runs of a report
        merged from several runs), at which its rooflines are."""
        return next((run["copy_gbps"] for run in self.meta.get("runs", []) if method in run["methods"]),
                    self.meta["copy_gbps"])

    def gbps(self, method, config, op, provider) -> float | None:
        """Bytes moved / time: the roofline is those bytes at the copy bandwidth."""
        ratio = self.over_roofline(method, config, op, provider)
        return self.copy_gbps(method) / ratio if ratio else None


def _fmt(value: float | None, formats: tuple, suffix: str = "") -> str:
    """value in the format of the first (threshold, format) of `formats` it reaches; None as —."""
    if value is None:
        return "—"
    return next(f"{value:{spec}}" for threshold, spec in formats if value >= threshold) + suffix


def fmt_ms(ms: float | None) -> str:
    return _fmt(ms, ((100, ".0f"), (10, ".1f"), (1, ".2f"), (-math.inf, "#.3g")))


def fmt_x(ratio: float | None) -> str:
    return _fmt(ratio, ((100, ",.0f"), (10, ".1f"), (-math.inf, ".2f")), "×")


def fmt_amount(value: float | None) -> str:
    """MB or GB/s."""
    return _fmt(value, ((10, ",.0f"), (-math.inf, ".2g")))


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def label(method: str, op: str) -> str:
    return METHODS[method]["labels"][op]


def row_label(method: str, op: str) -> str:
    """An op's label in a table, Total in bold as in the original benchmark report."""
    return f"**{label(method, op)}**" if op == "total" else label(method, op)


def dims(method: str, config) -> str:
    head_dim = f", HeadDim={config.head_dim}" if method == "rope" else ""
    return f"Heads={config.heads}{head_dim}, SeqLen={config.seq_len}, Batch={config.batch}"


def size_text(method: str, config) -> str:
    """A configuration in the terms of the original benchmark report's threshold."""
    width = f"hidden_size {config.heads * config.head_dim}" if method == "rope" else f"heads {config.heads}"
    return f"{config.name} ({width}, seq_len {config.seq_len})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def why_not(rows: Rows, method: str, configs: list, op: str, provider: str) -> str:
    """The note of the provider's first row of `op` without a time."""
    notes = (rows.note(method, c.name, op, provider) for c in configs if not rows.ms(method, c.name, op, provider))
    return next((n for n in notes if n), "not measured in this run")


def speedups(rows: Rows, configs: dict, provider: str = "triton") -> list[tuple[str, str, str, float]]:
    """(method, config, op, speedup over PyTorch) wherever both were measured."""
    return [(m, c.name, op, s) for m, cs in configs.items() for c in cs for op in METHODS[m]["ops"]
            if (s := rows.speedup(m, c.name, op, provider)) is not None]


def crossover(rows: Rows, method: str, configs: list, op: str = "total") -> str:
    """Where Triton starts to beat PyTorch on `op`, over the configurations smallest first."""
    measured = [(c, s) for c in configs if (s := rows.speedup(method, c.name, op, "triton")) is not None]
    if not measured:
        return f"not measured ({why_not(rows, method, configs, op, 'triton')})"
    faster = [s > 1 for _, s in measured]
    if all(faster):
        return f"faster than PyTorch at every size measured, from {size_text(method, measured[0][0])} up"
    if not faster[-1]:
        wins = [c.name for (c, _), f in zip(measured, faster) if f]
        return f"faster than PyTorch at {', '.join(wins)} only" if wins else \
            f"slower than PyTorch at every size measured, up to {size_text(method, measured[-1][0])}"
    first = max(i for i, f in enumerate(faster) if not f) + 1
    return (f"faster than PyTorch from {size_text(method, measured[first][0])} up, "
            f"slower at {size_text(method, measured[first - 1][0])}")


def fastest(rows: Rows, method: str, config: str, op: str) -> tuple[float, str] | None:
    """(ms, provider) of the fastest provider, or None."""
    timed = [(ms, p) for p in PROVIDERS if (ms := rows.ms(method, config, op, p))]
    return min(timed) if timed else None


def fastest_peer(rows: Rows, method: str, config: str) -> tuple[float | None, str | None]:
    """(ms, provider) of the fastest provider that is not trinix on `total`."""
    timed = [(ms, p) for p in PROVIDERS if p not in ("triton", "jax_triton")
             if (ms := rows.ms(method, config, "total", p))]
    return min(timed) if timed else (None, None)
