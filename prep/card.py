"""The dataset card (README.md): a `configs:` YAML header naming each split's parquet files, then what a reader needs
to trust and reuse the data: counts per split, bucket and source, the columns, which prompts are held out, and the
exact command, seed and input checksums that built it. No timestamps: the same inputs and flags give the same card.
"""

from __future__ import annotations

import yaml

from prep.writer import CARD_MARKER

COLUMN_DOCS = {
    "prompt": ("string", "template filled with the paraphrase and `input` (no `<bos>`; the tokenizer adds it)"),
    "completion": (
        "string",
        "training target: the source `output`, or the paraphrase's `answer` with `--use_paraphrase_answer`",
    ),
    "reference": ("string", "the source row's `output`: the reference answer for evaluation"),
    "source": ("string", "input file name prefix before the first `_` (`alpaca`, `gsm8k`, `mmlu`)"),
    "prompt_count": ("int64", "id within a source; (source, prompt_count) identifies a prompt"),
    "instruct_type": ("string", "paraphrase style; the original wording is `instruction_original`"),
    "paraphrase": ("string", "the raw paraphrase text"),
    "input": ("string", "the source row's `input` ('' if none)"),
    "bucket": ("int64", "1 (the model did best) .. 5 (worst), as ranked upstream"),
    "task_score": ("float64", "judge score 0..10"),
}


def _header(split_files: dict[str, dict], pretty_name: str) -> str:
    # `dataset_info` as push_to_hub writes it. Besides documenting sizes, it feeds the hash `datasets` keys its cache
    # on: without it, a rebuilt folder of the same name would load the previous build from ~/.cache.
    info = {
        "features": [{"name": name, "dtype": COLUMN_DOCS[name][0]} for name in COLUMN_DOCS],
        "splits": [
            {"name": s, "num_bytes": f["num_bytes"], "num_examples": f["num_examples"]} for s, f in split_files.items()
        ],
        "download_size": sum(f["download_size"] for f in split_files.values()),
        "dataset_size": sum(f["num_bytes"] for f in split_files.values()),
    }
    meta = {
        "pretty_name": pretty_name,
        "task_categories": ["text-generation"],
        "tags": ["paraphrase-robustness", "sft", CARD_MARKER],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in split_files],
            }
        ],
        "dataset_info": info,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _held_out_list(ids_by_source: dict[str, list[int]], limit: int = 60) -> str:
    parts = []
    for source, ids in ids_by_source.items():
        shown = ", ".join(map(str, ids[:limit])) + (f", … ({len(ids) - limit} more)" if len(ids) > limit else "")
        parts.append(f"`{source}` ({len(ids)}): {shown}")
    return "; ".join(parts) or "none"


def render_card(*, name: str, command: str, config, bucket_splits: dict[str, tuple[int, ...]], split_files: dict[str, dict],
                stats: dict[str, dict], held_out: dict[str, dict[str, list[int]]], inputs: list[dict], skipped: dict[str, int],
                versions: dict[str, str], empty: list[str] = ()) -> str:  # fmt: skip
    """`stats[split]` has `rows`, `prompts`, `by_bucket` {1..5: n}, `by_source` {source: n}."""
    stats = {split: st for split, st in stats.items() if split in split_files}
    sources = sorted({s for st in stats.values() for s in st["by_source"]})
    count_rows = [
        [
            f"`{split}`",
            st["prompts"],
            st["rows"],
            *(st["by_bucket"].get(b, 0) for b in range(1, 6)),
            *(st["by_source"].get(s, 0) for s in sources),
        ]
        for split, st in stats.items()
    ]
    what = {split: f"training prompts, buckets {', '.join(map(str, b))}" for split, b in bucket_splits.items()}
    what |= {"validation": "held-out prompts, every bucket", "test": "held-out prompts, every bucket"}
    first_split = next(iter(split_files))
    fractions = config.split_fractions()
    target = "the paraphrase's own `answer`" if config.use_paraphrase_answer else "the source row's `output`"
    lines = [
        _header(split_files, name),
        f"# {name}",
        "",
        "Paraphrase-robustness SFT data for gemma-2-2b-it, prepared by paraphrx (`python -m prep`). "
        "Each source instruction comes with many paraphrases that the model answered and a judge scored; per prompt the "
        "paraphrases were ranked into five buckets (1 = the model did best, 5 = worst). One row per paraphrase, in TRL's "
        f"prompt/completion form (template `{config.template}`, completion = {target}).",
        "",
        "## Splits",
        "",
        "Prompts are split once, by (source, prompt_count), seeded: every paraphrase of a prompt is on one side, and the "
        "held-out prompts are the same for every bucket range. Training splits hold the training prompts' paraphrases "
        "in the named buckets; `validation` and `test` hold every paraphrase (all buckets) of the held-out prompts.",
        "",
        _table(["split", "holds"], [[f"`{s}`", what[s]] for s in stats]),
        "",
        "Rows per split, bucket and source (prompts = distinct (source, prompt_count)):",
        "",
        _table(["split", "prompts", "rows", *(f"bucket {b}" for b in range(1, 6)), *sources], count_rows),
        "",
        *(
            [
                f"Empty, so not written (`datasets` cannot load an empty split): {', '.join(f'`{s}`' for s in empty)}.",
                "",
            ]
            if empty
            else []
        ),
        "Held-out prompts (prompt_count by source), also in `prompt_split.json`:",
        f"- validation: {_held_out_list(held_out['validation'])}",
        f"- test: {_held_out_list(held_out['test'])}",
        "",
        "## Columns",
        "",
        _table(["column", "type", "meaning"], [[f"`{c}`", t, d] for c, (t, d) in COLUMN_DOCS.items()]),
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("<this repo id or folder>", split="{first_split}")',
        "# or, as paraphrx training and evaluation do:",
        "from paraphrx.dataset_io import load_prepared",
        f'ds = load_prepared("<this repo id or folder>", split="{first_split}")',
        "```",
        "",
        "## Provenance",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- seed: {config.seed}; split fractions train/validation/test by prompt: "
        + "/".join(f"{f:.4g}" for f in fractions),
        f"- template: `{config.template}`; use_paraphrase_answer: {config.use_paraphrase_answer}; skip_invalid: {config.skip_invalid}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        _table(
            ["input", "source", "rows", "bytes", "sha256"],
            [[f"`{i['path']}`", i["source"], i["rows"], i["bytes"], f"`{i['sha256']}`"] for i in inputs],
        ),
        "",
    ]
    if skipped:
        lines += ["Rows dropped by `--skip_invalid`: " + "; ".join(f"{n} × {why}" for why, n in skipped.items()), ""]
    return "\n".join(lines)
