"""Hostile source files: whatever a file holds, reading it takes bounded memory and time, and each problem is refused
in one line naming the file, row and field. The byte scanner that makes this cheap is checked against `json`."""

import json
import random
import time

import pytest

from prep import reader
from prep.reader import StructureScanner, iter_rows
from prep.schema import ValidationError


def rows_text(*rows: str) -> bytes:
    return ("[" + ", ".join(rows) + "]").encode()


OK = '{"prompt_count": 1, "paraphrases": [{"paraphrase": "a"}, {"paraphrase": "b"}]}'


def refused(tmp_path, content: bytes) -> ValidationError:
    path = tmp_path / "alpaca_hostile.json"
    path.write_bytes(content)
    start = time.monotonic()
    with pytest.raises(ValidationError) as info:
        list(iter_rows(path))
    assert time.monotonic() - start < 5 and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


@pytest.mark.parametrize(
    "content, message",
    [
        # 200 KB that took ~24 GB: ijson keeps a path string per level, so its memory grows with the depth squared
        (b"[" * 100_000 + b"]" * 100_000, "row 0: " + "[0]" * 30 + ": nested deeper than 32 levels"),
        (
            rows_text(OK, OK, '{"paraphrases": [{"x": 1}, {"extra": ' + "[" * 40 + "]" * 40 + "}]}"),
            "row 2: paraphrases[1].extra" + "[0]" * 27 + ": nested deeper than 32 levels",
        ),
        (
            rows_text(
                OK,
                '{"prompt_count": 2, "paraphrases": [{"a": 1}, {"a": 1}, {"a": 1}, '
                '{"bucket": 1, "x": 2, "bucket": 5}]}',
            ),
            "row 1: paraphrases[3].bucket: key 'bucket' appears twice in one object",
        ),
        (
            rows_text('{"paraphrases": [], "prompt_count": 1, "paraphrases": [{"a": 1}]}'),
            "row 0: paraphrases: key 'paraphrases' appears twice in one object",
        ),
        (
            rows_text(OK, '{"paraphrases": [{"task_score": 1}, {"x": "y", "task_score": NaN}]}'),
            "row 1: paraphrases[1].task_score: NaN is not a JSON number",
        ),
        (rows_text('{"task_score": Infinity}'), "row 0: task_score: Infinity is not a JSON number"),
        (rows_text('{"task_score": -Infinity}'), "row 0: task_score: -Infinity is not a JSON number"),
        (
            rows_text(OK, '{"paraphrases": [{"paraphrase": "caf\\ud800e"}]}'),
            "row 1: paraphrases[0].paraphrase: lone surrogate \\ud800 (half of a UTF-16 pair, not a character)",
        ),
        (rows_text(OK, OK, '{"output": "\\udc00 alone"}'), "row 2: output: lone surrogate \\udc00"),
        (rows_text(OK, '{"output": "\\ud83d\\ud83d\\ude00"}'), "row 1: output: lone surrogate \\ud83d"),
        (b'[{"output": "ok"}, {"output": "\xed\xa0\x80"}]', "row 1: output: not UTF-8 (invalid byte sequence)"),
        (rows_text(OK, '{"prompt_count": 1,, "x": 2}'), "row 1: invalid JSON: parse error"),
    ],
)
def test_hostile_files_are_refused_in_one_line(tmp_path, content, message):
    assert message in str(refused(tmp_path, content))


def test_rows_of_other_shapes_are_checked_key_by_key(tmp_path):
    """Rows with objects deeper than the schema's take the exact path: nothing to refuse, or the deep duplicate."""
    fine = '{"meta": {"a": {"b": 1}}, "paraphrases": [{"x": {"y": 2}}, "text"], "n": [{"k": 1}]}'
    path = tmp_path / "alpaca_shapes.json"
    path.write_bytes(rows_text(OK, fine, OK))
    assert [row for _, row in iter_rows(path)][1] == json.loads(fine)
    deep = '{"meta": {"a": {"b": 1, "c": 2, "b": 3}}, "paraphrases": []}'
    assert str(refused(tmp_path, rows_text(OK, fine, deep))).endswith(
        "row 2: meta.a.b: key 'b' appears twice in one object"
    )


def test_a_row_over_the_size_limit_is_refused_before_it_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_ROW_BYTES", 5_000)
    big = '{"paraphrases": [' + ", ".join(['{"paraphrase": "%s"}' % ("x" * 100)] * 100) + "]}"
    error = refused(tmp_path, rows_text(OK, OK, big, OK))
    assert str(error).endswith("row 2: more than 5,000 bytes of JSON in one row")


def test_escapes_that_are_fine(tmp_path):
    """A surrogate pair (an emoji as Python's json.dump writes it), an escaped backslash before `ud800`, quotes and
    brackets inside strings: none of them is a problem, and the values come out as written."""
    values = ["😀 smile", "\\ud800 is text here", 'say "[{" and }]', "back\\slash\\", ""]
    path = tmp_path / "alpaca_fine.json"
    path.write_text(json.dumps([{"output": v} for v in values]))  # ensure_ascii: the emoji as \ud83d\ude00
    assert "\\ud83d\\ude00" in path.read_text()
    assert [row["output"] for _, row in iter_rows(path)] == values


@pytest.mark.parametrize("seed", range(6))
def test_the_scanner_agrees_with_json_at_any_chunk_boundary(seed, monkeypatch):
    """Row starts and the deepest nesting match what `json` wrote, for strings full of quotes, backslashes,
    brackets, commas and surrogate pairs, fed in chunks cut anywhere (escape runs and pairs split across chunks)."""
    rng = random.Random(seed)
    alphabet = ['"', "\\", "[", "]", "{", "}", ",", "a", " ", "😀", "é"]

    def value(depth):
        kind = rng.random()
        if depth > 6 or kind < 0.4:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        if kind < 0.7:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randrange(4))}

    def nesting(v):
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(nesting, children), default=0)

    rows, ascii_only = [value(2) for _ in range(40)], rng.random() < 0.5
    text = json.dumps(rows, ensure_ascii=ascii_only).encode()
    expected_starts, value_at = [1], 1  # each row begins after the list's "[" or a comma
    for row in rows[:-1]:  # json.dumps separates rows with ", "
        value_at += len(json.dumps(row, ensure_ascii=ascii_only).encode()) + 2
        expected_starts.append(value_at - 1)

    def scan(limit):
        monkeypatch.setattr(reader, "MAX_JSON_DEPTH", limit)
        cuts, scanner, position = random.Random(seed), StructureScanner(), 0
        while position < len(text):
            size = cuts.choice([1, 2, 3, 7, 64, 1000])
            scanner.feed(text[position : position + size])
            position += size
        scanner.feed(b"")
        return scanner

    def keys_and_objects(v):
        if isinstance(v, (list, dict)):
            inner = [keys_and_objects(x) for x in (v.values() if isinstance(v, dict) else v)]
            own = (len(v), 1) if isinstance(v, dict) else (0, 0)
            return own[0] + sum(k for k, _ in inner), own[1] + sum(o for _, o in inner)
        return 0, 0

    deepest = nesting(rows)
    scanner = scan(deepest)  # at the limit: accepted
    assert list(scanner.row_starts) == expected_starts
    assert [scanner.row_counts(i) for i in range(len(rows))] == [keys_and_objects(r) for r in rows]
    assert scanner.depth == 0 and scanner.closed and not scanner.in_string
    with pytest.raises(reader.StructureProblem, match=f"nested deeper than {deepest - 1} levels"):
        scan(deepest - 1)


def test_rows_that_are_not_objects_still_locate(tmp_path):
    """Scalars and lists as rows (the schema refuses them later, row by row) do not confuse the locator."""
    error = refused(tmp_path, b'[1, "two", [3], {"a": 1, "a": 2}]')
    assert str(error).endswith("row 3: a: key 'a' appears twice in one object")
