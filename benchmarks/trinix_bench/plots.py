"""The report's plots: time against the roofline, and speedup over the original PyTorch path."""

from pathlib import Path

from .analysis import Rows, label
from .schema import METHODS, PROVIDERS, operation_configs

PLOTS = ("embeddings_time.png", "embeddings_speedup.png")


def write_plots(results: dict, configs: dict, output: Path) -> tuple[list[Path], str | None]:
    """Time against roofline, and speedup over PyTorch: a panel per (method, op), a bar per
    provider and configuration, for the operations (OPERATIONS). Returns (the files written, None)
    or ([], why none)."""
    configs = operation_configs(configs)
    if not configs:
        return [], "this run measured no operation (RoPE or ALiBi)"
    try:
        import matplotlib
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = Rows(results)
    n_cols = max(len(METHODS[m]["ops"]) for m in configs)
    written = []
    for filename, speedup in zip(PLOTS, (False, True)):
        providers = list(PROVIDERS)[1:] if speedup else list(PROVIDERS)
        width = 0.8 / len(providers)
        fig, axes = plt.subplots(len(configs), n_cols, figsize=(4.2 * n_cols, 3.4 * len(configs)), squeeze=False)
        for panels, (method, cs) in zip(axes, configs.items()):
            names = [c.name for c in cs]
            for ax in panels[len(METHODS[method]["ops"]):]:
                ax.axis("off")
            for ax, op in zip(panels, METHODS[method]["ops"]):
                ax.set_yscale("log")
                for i, p in enumerate(providers):
                    bars = [(j + (i - (len(providers) - 1) / 2) * width, value) for j, n in enumerate(names)
                            if (value := (rows.speedup if speedup else rows.ms)(method, n, op, p))]
                    # A speedup bar grows from 1, up when faster than PyTorch, down when slower.
                    base = 1.0 if speedup else 0.0
                    ax.bar([x for x, _ in bars], [v - base for _, v in bars], width, bottom=base or None,
                           label=PROVIDERS[p], color=f"C{list(PROVIDERS).index(p)}")
                if speedup:
                    ax.axhline(1.0, color="black", linewidth=0.8)
                    ax.set_ylabel("× over PyTorch")
                else:
                    ax.set_ylabel("ms")
                    for j, n in enumerate(names):
                        if roofline := rows.roofline(method, n, op):
                            ax.hlines(roofline, j - 0.45, j + 0.45, color="black", linewidth=2,
                                      label="roofline" if j == 0 else None)
                ax.set_xticks(range(len(names)), names)
                ax.set_xlim(-0.5, len(names) - 0.5)
                ax.set_title(f"{METHODS[method]['name']}: {label(method, op)}", fontsize=10)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
        fig.text(0.5, 0.005, f"{rows.meta['gpu']}, {rows.meta['dtype']}, {rows.meta['date']}",
                 ha="center", va="bottom", fontsize=9)
        fig.tight_layout(rect=(0, 0.03, 1, 0.93))
        fig.savefig(output / filename, dpi=110)
        plt.close(fig)
        written.append(output / filename)
    return written, None
