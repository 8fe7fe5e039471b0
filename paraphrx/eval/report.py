"""The results folder: generations.jsonl (every answer with its scores), summary.json, report.md and two plots.

The folder is built under a temporary name beside the target and swapped in at the end, so a failed run never
leaves half a report.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from paraphrx.atomic_folder import atomic_folder
from paraphrx.buckets import BUCKETS
from paraphrx.eval.metrics import corpus_bleu_by_group, metrics_for, primary_metric
from paraphrx.eval.robustness import consistency, robustness_report

GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
BUCKET_PLOT = "score_by_bucket.png"
GAP_PLOT = "bucket_gap.png"
CONSISTENCY_SOURCES = ("gsm8k", "mmlu")
METRIC_LABELS = {
    "exact_match": "EM", "rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "sentence_bleu": "sent. BLEU",
    "corpus_bleu": "BLEU", "gsm8k_strict": "GSM8K strict", "gsm8k_flexible": "GSM8K flexible",
    "mmlu_letter": "MMLU letter",
}


# --- numbers ---------------------------------------------------------------------------------------------------------
def build_summary(records: list[dict], models: list[str], context: dict) -> dict:
    """Per model and source: mean of every metric, corpus BLEU overall and per bucket, robustness on every metric."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["model"], record["source"])].append(record)
    bleu = corpus_bleu_by_group(records, ("model", "source"))
    bleu_by_bucket = corpus_bleu_by_group(records, ("model", "source", "bucket"))
    sources = sorted({source for _, source in groups})
    scores: dict = {m: {} for m in models}
    robustness: dict = {m: {} for m in models}
    for (model, source), rows in sorted(groups.items()):
        names = metrics_for(source)
        scores[model][source] = {
            "n": len(rows),
            **{k: statistics.fmean(r[k] for r in rows) for k in names},
            "corpus_bleu": bleu[(model, source)],
            "corpus_bleu_by_bucket": {b: bleu_by_bucket.get((model, source, b)) for b in BUCKETS},
        }
        robustness[model][source] = {
            "primary_metric": primary_metric(source),
            "metrics": {k: robustness_report(rows, k) for k in names},
            "consistency": consistency(rows) if source in CONSISTENCY_SOURCES else None,
        }
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": context,
        "models": models,
        "sources": sources,
        "scores": scores,
        "robustness": robustness,
    }


# --- writing ---------------------------------------------------------------------------------------------------------
def write_results(out_dir: Path, records: list[dict], summary: dict) -> Path:
    """Write all result files into a temporary sibling folder, then swap it in place of `out_dir`."""
    with atomic_folder(out_dir) as tmp:
        with (tmp / GENERATIONS_FILE).open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        (tmp / SUMMARY_FILE).write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
        plot_score_by_bucket(summary, tmp / BUCKET_PLOT)
        plot_bucket_gap(summary, tmp / GAP_PLOT)
        (tmp / REPORT_FILE).write_text(render_markdown(summary), encoding="utf-8")
    return Path(out_dir)


def _jsonable(value):
    """NaN is not JSON: store it as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- report.md -------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    run = summary.get("run", {})
    out = ["# paraphrx robustness report", ""]
    dataset = run.get("dataset", {})
    facts = [f"dataset `{dataset.get('dataset', '?')}`" + (f" @ {dataset['revision']}" if dataset.get("revision") else ""),
             f"split `{run.get('split', '?')}`", f"base `{run.get('base_model', '?')}`"]
    settings = run.get("settings")
    if settings:
        facts.append("4-bit NF4" if settings.get("load_in_4bit") else f"dtype {settings.get('dtype')}")
        facts.append("merged adapters" if settings.get("merged") else "unmerged adapters")
        facts.append(f"greedy, max {settings.get('max_new_tokens')} new tokens")
    out += ["; ".join(facts) + f". Created {summary['created']}.", ""]
    models = summary["models"]
    for source in summary["sources"]:
        metric = primary_metric(source)
        names = [k for k in metrics_for(source) if k != "sentence_bleu"]
        out += [f"## {source}", "", f"### Scores (mean per answer; BLEU is corpus BLEU, 0-100)", ""]
        rows = []
        for model in models:
            s = summary["scores"][model].get(source)
            if s:
                rows.append([model, str(s["n"]), *(_fmt(s[k]) for k in names), _fmt(s["corpus_bleu"], 2)])
        out += [_table(["model", "answers", *(METRIC_LABELS[k] for k in names), "BLEU"], rows), ""]

        out += [f"### {METRIC_LABELS[metric]} by bucket (1 = phrasings the base model handled best)", ""]
        rows = []
        for model in models:
            r = summary["robustness"][model].get(source)
            if r:
                rep = r["metrics"][metric]
                rows.append([model, *(_fmt(rep["mean_by_bucket"].get(b)) for b in BUCKETS), _fmt(rep["bucket_gap"])])
        out += [_table(["model", *(f"bucket {b}" for b in BUCKETS), "gap 1−5"], rows), ""]

        out += [f"### Robustness on {METRIC_LABELS[metric]}", ""]
        header = ["model", "mean", "spread", "std", "worst case", "PDR", "CPS"]
        with_consistency = source in CONSISTENCY_SOURCES
        header += ["consistency"] if with_consistency else []
        rows = []
        for model in models:
            r = summary["robustness"][model].get(source)
            if r:
                rep = r["metrics"][metric]
                row = [model, *(_fmt(rep[k]) for k in ("mean", "spread", "std", "worst_case", "pdr", "cps"))]
                rows.append(row + ([_fmt(r["consistency"])] if with_consistency else []))
        out += [_table(header, rows), ""]
    out += ["## Plots", "", f"![score by bucket]({BUCKET_PLOT})", "", f"![bucket gap]({GAP_PLOT})", "",
            "Definitions: docs/evaluation.md in the paraphrx repository. Every answer with its scores: "
            f"`{GENERATIONS_FILE}`; all numbers (every metric's robustness too): `{SUMMARY_FILE}`.", ""]
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------------------------------------------
def _styles(models: list[str]) -> dict[str, dict]:
    """One colour per model: the adapters along viridis (ordered like their bucket ranges), the base in black."""
    from matplotlib import colormaps

    adapters = [m for m in models if m != "base"]
    cmap = colormaps["viridis"]
    styles = {m: {"color": cmap(0.85 * i / max(1, len(adapters) - 1)), "linestyle": "-", "marker": "o"}
              for i, m in enumerate(adapters)}
    styles["base"] = {"color": "black", "linestyle": "--", "marker": "s"}
    return styles


def _plot_per_source(summary: dict, path: Path, draw) -> None:
    """One panel per source, `draw(ax, source, metric, styles)` fills it; saved as a PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = summary["sources"]
    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(5.5 * max(1, len(sources)), 4.2), squeeze=False)
    styles = _styles(summary["models"])
    for ax, source in zip(axes[0], sources):
        draw(ax, source, primary_metric(source), styles)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_by_bucket(summary: dict, path: Path) -> None:
    def draw(ax, source, metric, styles):
        for model in summary["models"]:
            r = summary["robustness"][model].get(source)
            if not r:
                continue
            means = r["metrics"][metric]["mean_by_bucket"]
            xs = [b for b in BUCKETS if means.get(b) is not None]
            ax.plot(xs, [means[b] for b in xs], label=model, linewidth=2.4 if model == "base" else 1.8,
                    zorder=3 if model == "base" else 2, **styles[model])
        ax.set_title(f"{source}: {METRIC_LABELS[metric]} by bucket")
        ax.set_xlabel("bucket (1 = easiest phrasings for the base model, 5 = hardest)")
        ax.set_ylabel(f"mean {METRIC_LABELS[metric]}")
        ax.set_xticks(BUCKETS)
        ax.grid(alpha=0.3)
        ax.legend(title="model", fontsize=8)

    _plot_per_source(summary, path, draw)


def plot_bucket_gap(summary: dict, path: Path) -> None:
    def draw(ax, source, metric, styles):
        shown = [m for m in summary["models"] if summary["robustness"][m].get(source)]
        gaps = [summary["robustness"][m][source]["metrics"][metric]["bucket_gap"] for m in shown]
        # the base bar: light grey with hatching, so it reads as the reference, not as one more adapter
        bars = ax.bar(shown, [0.0 if g is None else g for g in gaps],
                      color=["0.8" if m == "base" else styles[m]["color"] for m in shown], edgecolor="black",
                      hatch=["//" if m == "base" else "" for m in shown])
        for bar, gap in zip(bars, gaps):
            ax.annotate(_fmt(gap), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom" if bar.get_height() >= 0 else "top", fontsize=8)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{source}: gap bucket 1 − bucket 5 ({METRIC_LABELS[metric]})")
        ax.set_xlabel("model")
        ax.set_ylabel("gap (lower = more robust)")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)

    _plot_per_source(summary, path, draw)
