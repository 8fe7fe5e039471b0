"""Validation of one source row (one original instruction with its paraphrases) against the seed schema.

Every check raises `ValidationError` naming the file, the row index in the file's top-level list (0-based, as in
`jq '.[3]'`) and the field (`paraphrases[17].bucket`), so the CLI can print one line and stop. Buckets are trusted,
not recomputed from scores, but `count_in_buckets` must agree with them.
"""

from __future__ import annotations

import math
import re

from paraphrx.errors import UserError
from paraphrx.limits import MAX_LABEL_CHARS, MAX_TEXT_CHARS

ROW_FIELDS = {
    "prompt_count": int,
    "instruction_original": str,
    "output": str,
    "count_in_buckets": list,
    "paraphrases": list,
}
OPTIONAL_ROW_FIELDS = {"input": str}  # missing means no input; null or another type is still an error
PARAPHRASE_FIELDS = {
    "instruct_type": str,
    "paraphrase": str,
    "answer": str,
    "task_score": float,
    "ranking_for_buckets": int,
    "bucket": int,
}
# Longest text accepted per field (README "Input limits"): evaluation memory grows with the square of a prompt.
MAX_CHARS = {"instruct_type": MAX_LABEL_CHARS}  # every other text field: MAX_TEXT_CHARS
_INDEX = re.compile(r"\[\d+\]")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}


class ValidationError(UserError):
    """Bad input, located: `file: row N: field: what is wrong` (row and field when known)."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
        kind: str | None = None,
    ):
        self.message, self.path, self.row, self.field = " ".join(str(message).split()), path, row, field
        self.kind = kind or self.message
        super().__init__(str(self))

    def locate(self, path: str, row: int | None = None) -> ValidationError:
        self.path = path
        if row is not None:
            self.row = row
        self.args = (str(self),)
        return self

    @property
    def reason(self) -> str:
        """The kind of problem without indices or values, to tally what `--skip_invalid` dropped."""
        field = _INDEX.sub("[*]", self.field or "row")
        return f"{field}: {self.kind}"

    def __str__(self) -> str:
        where = [p for p in (self.path, None if self.row is None else f"row {self.row}", self.field) if p]
        return ": ".join([*where, self.message])


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_ok(value, expected: type) -> bool:
    if isinstance(value, bool):  # JSON true/false are not numbers here
        return False
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _check(obj: dict, fields: dict, prefix: str = "") -> None:
    for name, expected in fields.items():
        if name not in obj:
            raise ValidationError("missing", field=prefix + name)
        value = obj[name]
        if value is None:
            raise ValidationError("is null", field=prefix + name, kind="null")
        if not _type_ok(value, expected):
            raise ValidationError(
                f"expected {_TYPE_NAMES[expected]}, got {type(value).__name__} {_short(value)}",
                field=prefix + name,
                kind="wrong type",
            )
        limit = MAX_CHARS.get(name, MAX_TEXT_CHARS)
        if expected is str and len(value) > limit:
            raise ValidationError(
                f"{len(value):,} characters, more than the limit of {limit:,}", field=prefix + name, kind="too long"
            )


def validate_row(row) -> None:
    """Raise ValidationError (field set, file and row left to the caller) if `row` breaks the schema."""
    if not isinstance(row, dict):
        raise ValidationError(
            f"expected an object, got {type(row).__name__ if row is not None else 'null'}", kind="not an object"
        )
    _check(row, ROW_FIELDS)
    if "input" in row:
        _check(row, OPTIONAL_ROW_FIELDS)
    if not -(2**63) <= row["prompt_count"] < 2**63:  # stored as int64
        raise ValidationError(
            f"{row['prompt_count']} does not fit in 64 bits", field="prompt_count", kind="out of range"
        )
    counts = row["count_in_buckets"]
    if len(counts) != 5 or not all(_type_ok(c, int) and c >= 0 for c in counts):
        raise ValidationError(
            f"expected 5 non-negative integers, got {_short(counts)}", field="count_in_buckets", kind="not 5 counts"
        )
    paraphrases = row["paraphrases"]
    if not paraphrases:
        raise ValidationError("is empty", field="paraphrases", kind="empty")
    seen = [0, 0, 0, 0, 0]
    for i, p in enumerate(paraphrases):
        if not isinstance(p, dict):
            raise ValidationError(
                f"expected an object, got {type(p).__name__ if p is not None else 'null'}",
                field=f"paraphrases[{i}]",
                kind="not an object",
            )
        _check(p, PARAPHRASE_FIELDS, prefix=f"paraphrases[{i}].")
        bucket, score = p["bucket"], p["task_score"]
        if not 1 <= bucket <= 5:
            raise ValidationError(f"{bucket} outside 1-5", field=f"paraphrases[{i}].bucket", kind="outside 1-5")
        if not (0 <= score <= 10) or not math.isfinite(score):
            raise ValidationError(f"{score} outside 0-10", field=f"paraphrases[{i}].task_score", kind="outside 0-10")
        seen[bucket - 1] += 1
    if seen != counts:
        raise ValidationError(
            f"{counts} disagrees with the paraphrases' buckets {seen}",
            field="count_in_buckets",
            kind="disagrees with paraphrases",
        )
