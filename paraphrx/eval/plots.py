"""The report's figures, drawn from summary.json's `analysis`: one panel per source and reported metric.

Missing values stay missing: an empty bucket has no point, a gap that cannot be measured has no bar but a
"no data" label, and a style a model has no rows for is a grey cell. Error bars are the 95% bootstrap intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paraphrx.buckets import BUCKETS
from paraphrx.eval.analysis import BASE
from paraphrx.eval.metrics import METRIC_LABELS
from paraphrx.eval.robustness import ORIGINAL

BUCKET_PLOT = "score_by_bucket.png"
GAP_PLOT = "bucket_gap.png"
STYLE_PLOT = "style_drop.png"
MISSING_COLOUR = "0.55"  # darker than the colour map's near-white 0


def _panels(summary: dict) -> list[tuple[str, str, dict]]:
    return [
        (source, metric, result)
        for source, analysis in summary["analysis"].items()
        for metric, result in analysis["metrics"].items()
    ]


def _colours(models: list[str]) -> dict[str, dict]:
    """One style per model: the adapters along viridis (in the order given), the base black and dashed."""
    from matplotlib import colormaps

    adapters = [m for m in models if m != BASE]
    cmap = colormaps["viridis"]
    styles = {
        m: {"color": cmap(0.85 * i / max(1, len(adapters) - 1)), "linestyle": "-", "marker": "o"}
        for i, m in enumerate(adapters)
    }
    styles[BASE] = {"color": "black", "linestyle": "--", "marker": "s"}
    return styles


def _error(stat: dict | None) -> tuple[float, float]:
    """(below, above) the value for an error bar; (0, 0) without an interval. A percentile interval need not hold
    the sample's value (a skewed statistic): the bar then stops at the value, as matplotlib takes no negative."""
    if stat is None or stat["value"] is None or not stat["ci"]:
        return 0.0, 0.0
    return max(0.0, stat["value"] - stat["ci"][0]), max(0.0, stat["ci"][1] - stat["value"])


def _plot_panels(summary: dict, path: Path, draw, width: float = 5.5, height: float = 4.2) -> None:
    """One panel per source and reported metric, `draw(ax, fig, source, metric, result, colours)` fills each; saved
    as a PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(summary)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(width * max(1, len(panels)), height), squeeze=False)
    for ax, (source, metric, result) in zip(axes[0], panels):
        draw(ax, fig, source, metric, result, _colours(list(result["models"])))
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_by_bucket(summary: dict, path: Path) -> None:
    """Mean score per bucket, one line per model (shifted a little so the error bars stay apart)."""

    def draw(ax, fig, source, metric, result, colours):
        models = list(result["models"])
        for i, model in enumerate(models):
            by_bucket = result["models"][model]["by_bucket"]
            shown = [b for b in BUCKETS if by_bucket[b] is not None and by_bucket[b]["value"] is not None]
            if not shown:
                continue
            shift = 0.06 * (i - (len(models) - 1) / 2)
            ax.errorbar(
                [b + shift for b in shown],
                [by_bucket[b]["value"] for b in shown],
                yerr=np.array([_error(by_bucket[b]) for b in shown]).T,
                label=model,
                capsize=2,
                linewidth=2.4 if model == BASE else 1.6,
                zorder=3 if model == BASE else 2,
                **colours[model],
            )
        empty = summary["analysis"][source]["empty_buckets"]
        note = f" (no rows: bucket {', '.join(map(str, empty))})" if empty else ""
        ax.set_title(f"{source}: {METRIC_LABELS[metric]} by bucket{note}", fontsize=9)
        ax.set_xlabel("bucket (1 = easiest phrasings for the base model, 5 = hardest)")
        ax.set_ylabel(f"mean {METRIC_LABELS[metric]} (95% interval)")
        ax.set_xticks(BUCKETS)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(title="model", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.4")

    _plot_panels(summary, path, draw)


def plot_bucket_gap(summary: dict, path: Path) -> None:
    """The gap per model as bars with error bars; a model whose gap cannot be measured gets a label, not a bar."""

    def draw(ax, fig, source, metric, result, colours):
        models = list(result["models"])
        for x, model in enumerate(models):
            gap = result["models"][model]["gap"]
            if gap is None or gap["value"] is None:
                ax.annotate("no data", (x, 0), ha="center", va="bottom", rotation=90, fontsize=8, color="0.4")
                continue
            # the base bar: light grey with hatching, so it reads as the reference, not as one more adapter
            ax.bar(
                x,
                gap["value"],
                yerr=np.array([_error(gap)]).T,
                capsize=3,
                edgecolor="black",
                color="0.8" if model == BASE else colours[model]["color"],
                hatch="//" if model == BASE else "",
            )
        worst = summary["analysis"][source]["gap_bucket"]
        ax.set_xticks(range(len(models)), models)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        title = f"gap bucket 1 − bucket {worst}" if worst else "no gap: only one bucket has rows"
        ax.set_title(f"{source}: {title} ({METRIC_LABELS[metric]})", fontsize=9)
        ax.set_ylabel("gap, 95% interval (lower = more robust)")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)

    _plot_panels(summary, path, draw)


def plot_style_heatmap(summary: dict, path: Path) -> None:
    """Drop against the original wording per style (rows, sorted by the base model's drop) and model (columns)."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    cmap = colormaps["RdBu_r"].with_extremes(bad=MISSING_COLOUR)

    def draw(ax, fig, source, metric, result, colours):
        models = list(result["models"])
        styles = [s for s in result["style_order"] if s != ORIGINAL]
        drops = np.array(
            [[_value(result["models"][m]["by_style"][s]["drop"]) for m in models] for s in styles], dtype=np.float64
        ).reshape(len(styles), len(models))
        limit = float(np.nanmax(np.abs(drops))) if np.isfinite(drops).any() else 1.0
        image = ax.imshow(
            np.ma.masked_invalid(drops),
            aspect="auto",
            cmap=cmap,
            interpolation="nearest",
            norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit or -1.0, vmax=limit or 1.0),
        )
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(styles)), styles, fontsize=5)
        ax.set_title(f"{source}: {METRIC_LABELS[metric]} drop vs the original wording\n(grey: no rows)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.6, label="drop (positive: the style does worse)")

    rows = max([len(result["style_order"]) for _, _, result in _panels(summary)] + [1])
    _plot_panels(summary, path, draw, width=6.5, height=max(3.5, 1.5 + 0.13 * rows))


def _value(stat: dict | None) -> float:
    return np.nan if stat is None or stat["value"] is None else stat["value"]
