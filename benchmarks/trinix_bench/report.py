"""Where a run's files go, and writing them: latest.json (its shape checked), EMBEDDINGS.md
and the plots, all from the result rows; and the console table printed at the end of a run."""

import json
from pathlib import Path
from typing import NamedTuple

from .analysis import Rows, fmt_ms
from .markdown import render_markdown
from .plots import write_plots
from .schema import KERNEL_PROVIDERS, PROVIDERS, on_gpu, validate_results

BENCH_DIR = Path(__file__).resolve().parent.parent


class Layout(NamedTuple):
    """A run's files: EMBEDDINGS.md and the plots in `folder`, the rows in `json`."""

    folder: Path
    json: Path


def layout(output: Path | None, gpu: bool) -> Layout:
    """Where a run writes, the one rule. A GPU run keeps the committed layout: `output`
    (default benchmarks/) holds EMBEDDINGS.md and the plots, and the rows in results/latest.json.
    A CPU run writes all of them into `output` (default benchmarks/results/cpu/, which git
    ignores), latest.json beside the report, so it replaces the committed GPU report only
    when --output asks it to."""
    folder = Path(output) if output is not None else BENCH_DIR if gpu else BENCH_DIR / "results" / "cpu"
    return Layout(folder, folder / "results" / "latest.json" if gpu else folder / "latest.json")


def write_outputs(results: dict, configs: dict, run_info: dict, output: Path | None) -> list[Path]:
    """Write latest.json, the plots and EMBEDDINGS.md where layout() says; return their paths.
    configs: method -> its configurations, smallest first (schema.Config); run_info: warmup,
    iters and the command that ran."""
    validate_results(results)
    files = layout(output, on_gpu(results["meta"]))
    files.json.parent.mkdir(parents=True, exist_ok=True)
    files.json.write_text(json.dumps(results, indent=1) + "\n")
    plots, plot_note = write_plots(results, configs, files.folder)
    report = files.folder / "EMBEDDINGS.md"
    json_link = files.json.relative_to(files.folder).as_posix()
    report.write_text(render_markdown(results, configs, run_info, plot_note, json_link))
    return [report, files.json, *plots]


def console_table(results: dict) -> str:
    """The rows as text: a line per (method, config, op), the roofline and each provider's
    median time in ms, and what "—" and a CPU run mean."""
    rows = Rows(results)
    keys = dict.fromkeys((r["method"], r["config"], r["op"]) for r in results["rows"])
    providers = list(dict.fromkeys(r["provider"] for r in results["rows"]))
    header = ["method", "config", "op", "roofline ms", *(f"{p} ms" for p in providers)]
    lines = [[method, config, op, fmt_ms(rows.roofline(method, config, op)),
              *(fmt_ms(rows.ms(method, config, op, p)) for p in providers)] for method, config, op in keys]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def text(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    framework = [p for p in PROVIDERS if p not in KERNEL_PROVIDERS]
    out = [f"Device: {rows.meta['gpu']}. Median ms per call; roofline ms: the op's bytes at this run's "
           f"copy bandwidth, {rows.meta['copy_gbps']:,.1f} GB/s",
           text(header), *map(text, lines),
           "—: not run here (no GPU, provider not installed or not selected, does not fit, or failed; "
           "each row's note in latest.json says which)"]
    if not on_gpu(rows.meta):
        out.append(f"CPU run: only the framework paths ({', '.join(framework)}) are timed; kernel numbers "
                   f"({', '.join(KERNEL_PROVIDERS)}) come from a GPU run (benchmarks/EMBEDDINGS.md).")
    return "\n".join(out)
