"""Bucket-range specs and the split names they map to: shared by prep (which names the splits), training (which
reads a split's buckets back) and evaluation (which reports per bucket).

A spec selects buckets 1..5: `1`, `1-3`, `1,3,5` or `all`. Its split name uses only letters, digits and `_`
(what `datasets` accepts): a contiguous selection is `bucket<first>` or `bucket<first>_<last>` (`1-4` -> `bucket1_4`,
and `1,2,3,4` is the same split); any other list joins with `and` (`1,3,5` -> `bucket1and3and5`), so names never collide.
"""

from __future__ import annotations

import re

BUCKETS = (1, 2, 3, 4, 5)
DEFAULT_SPECS = ("1", "1-2", "1-3", "1-4", "1-5")


class BucketSpecError(ValueError):
    """A bucket spec or split name that names no valid set of buckets."""


def parse_bucket_spec(spec: str) -> tuple[int, ...]:
    """`"1-3"` -> (1, 2, 3); `"1,3,5"` -> (1, 3, 5); `"all"` -> (1, ..., 5). Raises BucketSpecError otherwise."""
    text = str(spec).strip().lower()
    if text == "all":
        return BUCKETS
    if re.fullmatch(r"[1-5]-[1-5]", text):
        lo, hi = int(text[0]), int(text[2])
        if lo > hi:
            raise BucketSpecError(f"bucket range {spec!r} runs backwards (use {hi}-{lo})")
        return tuple(range(lo, hi + 1))
    if re.fullmatch(r"[1-5](,[1-5])*", text):
        values = [int(v) for v in text.split(",")]
        if len(set(values)) != len(values):
            raise BucketSpecError(f"bucket spec {spec!r} repeats a bucket")
        return tuple(sorted(values))
    raise BucketSpecError(f"bad bucket spec {spec!r}: expected 1-5 as 'N', 'A-B', 'A,B,C' or 'all'")


def split_name(buckets: tuple[int, ...]) -> str:
    """(1, 2, 3, 4) -> 'bucket1_4'; (2,) -> 'bucket2'; (1, 3, 5) -> 'bucket1and3and5'."""
    b = tuple(sorted(buckets))
    if not b or any(x not in BUCKETS for x in b):
        raise BucketSpecError(f"buckets must be a non-empty subset of 1-5, got {buckets!r}")
    if len(b) == 1:
        return f"bucket{b[0]}"
    if b == tuple(range(b[0], b[-1] + 1)):
        return f"bucket{b[0]}_{b[-1]}"
    return "bucket" + "and".join(str(x) for x in b)


def buckets_of_split(name: str) -> tuple[int, ...]:
    """Inverse of `split_name`: 'bucket1_4' -> (1, 2, 3, 4). Raises BucketSpecError for any other name."""
    m = re.fullmatch(r"bucket([1-5])(?:_([1-5])|((?:and[1-5])+))?", name)
    if not m:
        raise BucketSpecError(f"{name!r} is not a bucket split name (e.g. 'bucket1_4')")
    first, last, rest = m.groups()
    if last:
        buckets = parse_bucket_spec(f"{first}-{last}")
    elif rest:
        buckets = parse_bucket_spec(",".join([first, *rest.split("and")[1:]]))
    else:
        buckets = (int(first),)
    if split_name(buckets) != name:
        raise BucketSpecError(f"{name!r} is not the canonical split name; use {split_name(buckets)!r}")
    return buckets
