"""Where a run's files go, and writing them: latest.json (its shape checked), EMBEDDINGS.md
and the plots, all from the result rows; and the console table printed at the end of a run."""

import json
from pathlib import Path
from typing import NamedTuple

from .analysis import Rows, fmt_amount, fmt_ms
from .markdown import render_markdown
from .plots import write_plots
from .schema import (BLOCKS, KERNEL_PROVIDERS, PROVIDERS, configs_of_rows, on_gpu, operation_configs, row_order,
                     validate_results)

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
    plots, plot_note = write_plots(results, operation_configs(configs), files.folder)
    report = files.folder / "EMBEDDINGS.md"
    json_link = files.json.relative_to(files.folder).as_posix()
    report.write_text(render_markdown(results, configs, run_info, plot_note, json_link))
    return [report, files.json, *plots]


def _run_of(meta: dict, method: str) -> dict:
    """The run that measured `method`'s rows, as meta.runs writes one (without its methods)."""
    run = next((r for r in meta.get("runs", []) if method in r["methods"]), None)
    if run is not None:
        return {k: v for k, v in run.items() if k != "methods"}
    return {"date": meta["date"], "gpu": meta["gpu"], "copy_gbps": meta["copy_gbps"],
            "command": meta.get("run", {}).get("command")}


def merge_results(parts: list[dict]) -> dict:
    """One latest.json from several runs' (each checked): the first one's meta, each method's rows
    from the first run that has them, and, where they come from more than one run (or not from
    the first), meta.runs: which methods each run gave, with its date, device, copy bandwidth and
    command."""
    for part in parts:
        validate_results(part)
    rows, taken, dtypes = [], {}, set()  # taken: method -> its run
    for part in parts:
        own = {}
        for r in part["rows"]:
            if r["method"] not in taken:
                own.setdefault(r["method"], _run_of(part["meta"], r["method"]))
                rows.append(r)
        if own:
            dtypes.add(part["meta"]["dtype"])
        taken.update(own)
    if len(dtypes) > 1:
        raise ValueError(f"the runs measured different dtypes ({sorted(dtypes)}): their rows do not make one report")
    meta = {k: v for k, v in parts[0]["meta"].items() if k != "runs"}
    runs: list[dict] = []
    for method, run in taken.items():
        same = next((r for r in runs if {k: v for k, v in r.items() if k != "methods"} == run), None)
        if same is None:
            runs.append({"methods": [method], **run})
        else:
            same["methods"].append(method)
    if [{k: v for k, v in r.items() if k != "methods"} for r in runs] != [_run_of(meta, "")]:
        meta["runs"] = runs
    results = {"meta": meta, "rows": sorted(rows, key=row_order(configs_of_rows(rows)))}
    validate_results(results)
    return results


def render_from(paths: list[Path], output: Path | None, command: str) -> list[Path]:
    """Write latest.json, the plots and EMBEDDINGS.md (as a run does, where layout() says) from
    the rows of the latest.json files at `paths` (merge_results); on any machine, measuring
    nothing. command: the one that rendered, named in the report."""
    results = merge_results([json.loads(Path(path).read_text()) for path in paths])
    run = results["meta"].get("run", {})
    run_info = {"warmup": run.get("warmup", "(not recorded)"), "iters": run.get("iters", "(not recorded)"),
                "command": command}
    return write_outputs(results, configs_of_rows(results["rows"]), run_info, output)


def console_table(results: dict) -> str:
    """The rows as text: a line per (method, config, op), the roofline and each provider's
    median time in ms, and what "—" and a CPU run mean; then a line per block row."""
    rows = Rows(results)
    table_rows = [r for r in results["rows"] if r["method"] not in BLOCKS]  # the operations' and attention's
    keys = dict.fromkeys((r["method"], r["config"], r["op"]) for r in table_rows)
    providers = list(dict.fromkeys(r["provider"] for r in table_rows))
    header = ["method", "config", "op", "roofline ms", *(f"{p} ms" for p in providers)]
    lines = [[method, config, op, fmt_ms(rows.roofline(method, config, op)),
              *(fmt_ms(rows.ms(method, config, op, p)) for p in providers)] for method, config, op in keys]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def text(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    framework = [p for p in PROVIDERS if p not in KERNEL_PROVIDERS]
    out = [f"Device: {rows.meta['gpu']}. Median ms per call; roofline ms: the op's bytes at this run's "
           f"copy bandwidth, {rows.meta['copy_gbps']:,.1f} GB/s"]
    if lines:
        out += [text(header), *map(text, lines),
                "—: not run here (no GPU, provider not installed or not selected, does not fit, or failed; "
                "each row's note in latest.json says which)"]
        if not on_gpu(rows.meta):
            out.append(f"CPU run: only the framework paths ({', '.join(framework)}) are timed; kernel numbers "
                       f"({', '.join(KERNEL_PROVIDERS)}) come from a GPU run (benchmarks/EMBEDDINGS.md).")
    blocks = [r for r in results["rows"] if r["method"] in BLOCKS]
    if blocks:
        out.append("Blocks: ms and peak MB per call, or why not timed")
        out += [f"  {r['method']}  {r['config']}  {r['op']}  {r['provider']}  "
                + (f"{fmt_ms(r['ms'])} ms  {fmt_amount(r['peak_mb'])} MB" if r["ms"] else r["note"]) for r in blocks]
    return "\n".join(out)
