"""The results folder: generations.jsonl (every answer with its scores), summary.json, report.md and three plots.

summary.json is the machine-readable source of every number in report.md. The folder is built under a temporary
name beside the target and swapped in at the end, so a failed run never leaves half a report.
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
from paraphrx.eval.analysis import analyse, report_metrics
from paraphrx.eval.bootstrap import LEVEL, MIN_PROMPTS
from paraphrx.eval.judge import CRITERIA, FAILED, JUDGE_METRIC, SCORED, UNPARSEABLE
from paraphrx.eval.metrics import METRIC_LABELS, corpus_bleu_by_group, metrics_for, primary_metric
from paraphrx.eval.plots import (
    BUCKET_PLOT,
    GAP_PLOT,
    STYLE_PLOT,
    plot_bucket_gap,
    plot_score_by_bucket,
    plot_style_heatmap,
)
from paraphrx.eval.robustness import robustness_report

GENERATIONS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
DEFAULT_REPLICATES = 1000
ROBUSTNESS_COLUMNS = {
    "mean": "mean",
    "spread": "spread",
    "std": "std",
    "worst_case": "worst case",
    "pdr": "PDR",
    "cps": "CPS",
    "consistency": "consistency",
}


# --- numbers ---------------------------------------------------------------------------------------------------------
def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def judge_counts(records: list[dict]) -> dict | None:
    """{model: {source: answers, scored, unparseable, failed}} of judged records; None when nothing was judged."""
    counts: dict = defaultdict(dict)
    for record in records:
        if record.get("judge_status"):
            cell = counts[record["model"]].setdefault(
                record["source"], {"answers": 0, SCORED: 0, UNPARSEABLE: 0, FAILED: 0}
            )
            cell["answers"] += 1
            cell[record["judge_status"]] += 1
    return dict(counts) or None


def build_summary(
    records: list[dict], models: list[str], context: dict, replicates: int = DEFAULT_REPLICATES, seed: int = 0
) -> dict:
    """Per model and source: mean of every metric, corpus BLEU overall and per bucket, robustness on every metric
    (point estimates); and `analysis`: the reported metrics with bootstrap intervals, paired differences against
    the base, the breakdown by style and seed averages (`paraphrx.eval.analysis`; `context["seed_groups"]`:
    {model name: {run: seed}} of runs that differ only in seed)."""
    seed_groups = context.get("seed_groups") or {}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["model"], record["source"])].append(record)
    bleu = corpus_bleu_by_group(records, ("model", "source"))
    bleu_by_bucket = corpus_bleu_by_group(records, ("model", "source", "bucket"))
    sources = sorted({source for _, source in groups})
    judge = judge_counts(records)
    scores: dict = {m: {} for m in models}
    robustness: dict = {m: {} for m in models}
    for (model, source), rows in sorted(groups.items()):
        judged = JUDGE_METRIC in report_metrics(source, rows)
        names = metrics_for(source) + ((JUDGE_METRIC,) if judged else ())
        scores[model][source] = {
            "n": len(rows),
            "n_prompts": len({r["prompt_count"] for r in rows}),
            **{k: _mean_of(rows, k) for k in names},
            "corpus_bleu": bleu[(model, source)],
            "corpus_bleu_by_bucket": {b: bleu_by_bucket.get((model, source, b)) for b in BUCKETS},
        }
        if judged:
            scored = [r for r in rows if r.get("judge_scores")]
            scores[model][source]["judge_criteria"] = {
                c: statistics.fmean(r["judge_scores"][c] for r in scored) if scored else None for c in CRITERIA
            }
        robustness[model][source] = {
            "primary_metric": primary_metric(source),
            "metrics": {k: robustness_report(rows, k) for k in names},
        }
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": context,
        "models": models,
        "sources": sources,
        "bootstrap": {
            "unit": "prompt",
            "replicates": replicates,
            "seed": seed,
            "level": LEVEL,
            "interval": "percentile",
            "min_prompts": MIN_PROMPTS,
        },
        "seed_groups": seed_groups,
        "scores": scores,
        "robustness": robustness,
        "judge": None if judge is None else {**context.get("judge", {}), "counts": judge},
        "analysis": analyse(records, models, seed_groups, replicates, seed),
    }


# --- writing ---------------------------------------------------------------------------------------------------------
def write_results(out_dir: Path, records: list[dict], summary: dict) -> Path:
    """Write all result files into a temporary sibling folder, then swap it in place of `out_dir`."""
    with atomic_folder(out_dir) as tmp:
        with (tmp / GENERATIONS_FILE).open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        (tmp / SUMMARY_FILE).write_text(
            json.dumps(_jsonable(summary), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        plot_score_by_bucket(summary, tmp / BUCKET_PLOT)
        plot_bucket_gap(summary, tmp / GAP_PLOT)
        plot_style_heatmap(summary, tmp / STYLE_PLOT)
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


def _cell(stat: dict | None, counts: bool = True) -> str:
    """`value ± sd across seeds [95% interval] (answers/prompts)`, bold when a paired interval excludes 0."""
    if stat is None:
        return "–"
    text = _fmt(stat["value"])
    if stat["value"] is not None:
        if stat.get("sd") is not None:
            text += f" ± {_fmt(stat['sd'])}"
        if stat["ci"]:
            text += f" [{_fmt(stat['ci'][0])}, {_fmt(stat['ci'][1])}]"
        if stat.get("excludes_zero"):
            text = f"**{text}**"
    return text + (f" ({stat['answers']}/{stat['prompts']})" if counts else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _label(model: str, summary: dict) -> str:
    runs = summary["seed_groups"].get(model)
    return f"{model} ({len(runs)} seeds)" if runs else model


def _header(summary: dict) -> list[str]:
    run = summary.get("run", {})
    dataset = run.get("dataset", {})
    facts = [
        f"dataset `{dataset.get('dataset', '?')}`" + (f" @ {dataset['revision']}" if dataset.get("revision") else ""),
        f"split `{run.get('split', '?')}`",
        f"base `{run.get('base_model', '?')}`",
    ]
    settings = run.get("settings")
    if settings:
        facts.append("4-bit NF4" if settings.get("load_in_4bit") else f"dtype {settings.get('dtype')}")
        facts.append("merged adapters" if settings.get("merged") else "unmerged adapters")
        facts.append(f"greedy, max {settings.get('max_new_tokens')} new tokens")
    boot = summary["bootstrap"]
    lines = [
        "# paraphrx robustness report",
        "",
        "; ".join(facts) + f". Created {summary['created']}.",
        "",
        f"Cells read `value [95% interval] (answers/prompts)`: the interval is a percentile bootstrap over "
        f"prompts ({boot['replicates']} replicates, seed {boot['seed']}), none where a number rests on fewer "
        f"than {boot['min_prompts']} prompts; answers/prompts are the scored answers and the prompts the number "
        "rests on. Paired tables give adapter − base on the same resampled prompts; **bold**: the interval "
        "excludes 0.",
    ]
    if summary["seed_groups"]:
        lines += [
            "",
            "Runs that differ only in `seed` are averaged: `mean ± sd across seeds [interval of the "
            "seed average]`; each seed's numbers are listed under Seeds.",
        ]
    return lines + [""]


def _bucket_note(source: str, analysis: dict) -> list[str]:
    empty, worst = analysis["empty_buckets"], analysis["gap_bucket"]
    notes = []
    if empty:
        notes.append(f"No test rows in bucket {', '.join(map(str, empty))} for {source}.")
    if worst is None:
        notes.append("No gap: it needs rows in bucket 1 and in a later bucket.")
    elif worst != 5:
        notes.append(f"The gap is bucket 1 − bucket {worst}, the worst bucket with rows.")
    return [" ".join(notes), ""] if notes else []


def _metric_sections(summary: dict, source: str, metric: str, result: dict) -> list[str]:
    analysis = summary["analysis"][source]
    name, worst = METRIC_LABELS[metric], analysis["gap_bucket"]
    title = name[:1].upper() + name[1:]
    gap = f"gap 1−{worst}" if worst else "gap"
    models = list(result["models"])
    out = [f"### {title} by bucket (1 = phrasings the base model handled best)", ""]
    rows = [
        [
            _label(m, summary),
            *(_cell(result["models"][m]["by_bucket"][b]) for b in BUCKETS),
            _cell(result["models"][m]["gap"]),
        ]
        for m in models
    ]
    out += [_table(["model", *(f"bucket {b}" for b in BUCKETS), gap], rows), ""]
    if result["vs_base"]:
        out += [f"### {title} by bucket: adapter − base, paired", ""]
        rows = [
            [_label(m, summary), *(_cell(d["by_bucket"][b]) for b in BUCKETS), _cell(d["gap"])]
            for m, d in result["vs_base"].items()
        ]
        out += [
            _table(["adapter", *(f"Δ bucket {b}" for b in BUCKETS), f"Δ {gap}"], rows),
            "",
            "A negative Δ gap: the adapter narrowed the gap between easy and hard phrasings.",
            "",
        ]
    columns = [k for k in ROBUSTNESS_COLUMNS if k in result["models"][models[0]]]
    out += [f"### Robustness on {name}", ""]
    rows = [[_label(m, summary), *(_cell(result["models"][m][k]) for k in columns)] for m in models]
    out += [_table(["model", *(ROBUSTNESS_COLUMNS[k] for k in columns)], rows), ""]
    if result["vs_base"]:
        out += [f"### Robustness on {name}: adapter − base, paired", ""]
        rows = [[_label(m, summary), *(_cell(d[k]) for k in columns)] for m, d in result["vs_base"].items()]
        out += [_table(["adapter", *(f"Δ {ROBUSTNESS_COLUMNS[k]}" for k in columns)], rows), ""]
    out += [
        f"### {title} by paraphrase style",
        "",
        "Cells read `mean / drop [interval of the drop] (answers/prompts of the style)`; drop = mean(original "
        "wording) − mean(style) on the prompts that have both (positive: the style does worse). Sorted by the "
        f"base model's drop, largest first; figure: `{STYLE_PLOT}`.",
        "",
    ]
    rows = []
    for style in result["style_order"]:
        cells = []
        for m in models:
            mean, drop = result["models"][m]["by_style"][style]["mean"], result["models"][m]["by_style"][style]["drop"]
            counts = "" if mean is None else f" ({mean['answers']}/{mean['prompts']})"
            cells.append("–" if mean is None else f"{_fmt(mean['value'])} / {_cell(drop, counts=False)}{counts}")
        rows.append([f"`{style}`", *cells])
    out += [_table(["style", *(_label(m, summary) for m in models)], rows), ""]
    return out


def _scores_section(summary: dict, source: str) -> list[str]:
    names = [k for k in metrics_for(source) if k != "sentence_bleu"]
    rows = []
    for model in summary["models"]:
        s = summary["scores"][model].get(source)
        if s:
            rows.append(
                [model, str(s["n"]), str(s["n_prompts"]), *(_fmt(s[k]) for k in names), _fmt(s["corpus_bleu"], 2)]
            )
    return [
        "### Scores per run (mean per answer; BLEU is corpus BLEU, 0-100)",
        "",
        _table(["run", "answers", "prompts", *(METRIC_LABELS[k] for k in names), "BLEU"], rows),
        "",
    ]


def _judge_section(summary: dict, source: str) -> list[str]:
    counts = summary["judge"]["counts"]
    rows = [
        [m, *(str(counts[m][source][k]) for k in ("answers", SCORED, UNPARSEABLE, FAILED))]
        for m in summary["models"]
        if source in counts.get(m, {})
    ]
    out = [
        f"### Judge `{summary['judge'].get('judge', '?')}`: answers it could not score",
        "",
        "Unparseable: the reply held no valid JSON scores; failed: no reply after the retries (asked again on the "
        "next run). Both are left out of the judge's numbers; each is in `generations.jsonl` with its reason.",
        "",
        _table(["run", "answers", "scored", "unparseable", "failed"], rows),
        "",
        "### Judge: mean of each criterion (0–10, scored answers)",
        "",
    ]
    rows = [
        [m, *(_fmt(summary["scores"][m][source]["judge_criteria"][c], 2) for c in CRITERIA)]
        for m in summary["models"]
        if "judge_criteria" in summary["scores"][m].get(source, {})
    ]
    return out + [_table(["run", *CRITERIA], rows), ""]


def _seeds_section(summary: dict) -> list[str]:
    out = ["## Seeds", "", "Each seed's own value (the tables above show their average).", ""]
    rows = []
    for source, analysis in summary["analysis"].items():
        for metric, result in analysis["metrics"].items():
            for model, runs in summary["seed_groups"].items():
                stats = result["models"].get(model)
                if stats is None:
                    continue
                for run, seed in runs.items():
                    mean, gap = stats["mean"], stats["gap"]
                    rows.append(
                        [
                            source,
                            METRIC_LABELS[metric],
                            model,
                            run,
                            _fmt(seed),
                            _fmt(mean["per_seed"].get(run)) if mean else "–",
                            _fmt(gap["per_seed"].get(run)) if gap else "–",
                        ]
                    )
    return out + [_table(["source", "metric", "model", "run", "seed", "mean", "gap"], rows), ""]


def render_markdown(summary: dict) -> str:
    out = _header(summary)
    for source in summary["sources"]:
        analysis = summary["analysis"][source]
        out += [
            f"## {source}",
            "",
            f"{analysis['prompts']} test prompts, {analysis['answers_per_model']} answers per run.",
            "",
        ]
        out += _bucket_note(source, analysis)
        out += _scores_section(summary, source)
        for metric, result in analysis["metrics"].items():
            out += _metric_sections(summary, source, metric, result)
        if summary["judge"] and any(source in c for c in summary["judge"]["counts"].values()):
            out += _judge_section(summary, source)
    if summary["seed_groups"]:
        out += _seeds_section(summary)
    out += [
        "## Plots",
        "",
        f"![score by bucket]({BUCKET_PLOT})",
        "",
        f"![bucket gap]({GAP_PLOT})",
        "",
        f"![drop by style]({STYLE_PLOT})",
        "",
        "Definitions: docs/evaluation.md in the paraphrx repository. Every answer with its scores: "
        f"`{GENERATIONS_FILE}`; all numbers (every metric's robustness too): `{SUMMARY_FILE}`.",
        "",
    ]
    return "\n".join(out)
