"""The one way training and evaluation load a prepared paraphrx dataset: a Hub id or a local folder.

`make prep` writes a folder in Hub layout (parquet shards + a README card whose `configs:` header names the splits),
so `load_dataset("data/paraphrx-alpaca", split="bucket1_4")` and `load_dataset("user/paraphrx-alpaca",
split="bucket1_4")` read the same thing. The token for private Hub datasets comes from `HF_TOKEN` (huggingface_hub
reads it from the environment itself); nothing here logs it.
"""

from __future__ import annotations

import errno
from pathlib import Path

from datasets import Dataset, load_dataset

from paraphrx.paths import local_folder_problem


def local_splits(folder: Path) -> dict[str, list[str]]:
    """The splits of a prepared folder, from its shard names (`data/<split>-00000-of-00001.parquet`)."""
    splits: dict[str, list[str]] = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        splits.setdefault(shard.name.rsplit("-", 3)[0], []).append(str(shard))
    return splits


def check_local_dataset(dataset: str) -> None:
    """A name that can only be a local folder (paths.py) but is none: FileNotFoundError naming it, never a trip to the
    Hub (which meant ~30 s of retries and "Couldn't reach 'data/nope' on the Hub")."""
    problem = local_folder_problem(dataset)
    if problem is not None:
        hint = "; build it with `make prep`" if problem == "no such folder" else ""
        raise FileNotFoundError(errno.ENOENT, problem + hint, dataset)


def load_prepared(
    dataset: str, split: str, revision: str | None = None, buckets: tuple[int, ...] | None = None
) -> Dataset:
    """Load one split of a prepared dataset by Hub id or local path; optionally keep only some buckets."""
    check_local_dataset(dataset)
    local = Path(dataset)
    if local.exists():
        if not (local / "README.md").exists():
            raise FileNotFoundError(errno.ENOENT, "no README.md dataset card; build it with `make prep`", dataset)
        splits = local_splits(local)
        if split not in splits:
            raise ValueError(f"{dataset}: no split {split!r} (it has: {', '.join(sorted(splits)) or 'none'})")
        # Naming the shard files makes the datasets cache key on their paths and modification times: a folder that
        # `make prep` rebuilt under the same name is read anew instead of served from the old build's cache.
        ds = load_dataset("parquet", data_files={split: splits[split]}, split=split)
    else:
        ds = load_dataset(dataset, split=split, revision=revision)
    if buckets is not None:
        keep = set(buckets)
        ds = ds.filter(lambda b: b in keep, input_columns="bucket", desc=f"buckets {sorted(keep)}")
    return ds


def dataset_fingerprint(dataset: str, revision: str | None = None) -> dict:
    """What a run records about its data: the id or path, the Hub revision if any, and the card's input checksums."""
    info: dict = {"dataset": dataset, "revision": revision}
    card = Path(dataset) / "README.md"
    if card.exists():
        import hashlib

        info["card_sha256"] = hashlib.sha256(card.read_bytes()).hexdigest()
    return info
