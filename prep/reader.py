"""Stream the rows of one paraphrase JSON file without loading it whole (ijson's C backend, yajl2_c).

A 1.8 GB file never sits in memory: ijson reads it in chunks and yields one top-level row at a time. The same pass
hashes the bytes (the card records each input's sha256) and advances a byte progress bar. File-level problems
(not UTF-8, empty, not a list, broken JSON) raise `ValidationError` naming the file and, for broken JSON, the row.

Memory and time stay bounded whatever the file holds (paraphrx/limits.py). Before the parser sees a chunk,
`StructureScanner` measures it with a few vectorised passes: nesting depth (ijson keeps a path string per level, so
its memory grows with the square of the depth: 100k brackets took 24 GB), the bytes of each top-level row, and
escaped lone surrogates (yajl turns `\\ud800` into `?`, or fails to decode it). Duplicate keys in an object are
refused while parsing. Every problem inside a row is then located by walking that row's JSON events again
(`locate`), so the error names the field, e.g. `row 3: paraphrases[2].task_score: NaN is not a JSON number`.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import ijson
import numpy as np

from paraphrx.limits import MAX_JSON_DEPTH, MAX_ROW_BYTES
from prep.schema import ValidationError

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_NUMBERS = re.compile(r"-?Infinity|NaN")  # Python's json writes them; JSON has no such numbers
_HIGH, _LOW = re.compile(rb"\\u[dD][89abAB]"), re.compile(rb"\\u[dD][c-fC-F]")


def source_name(path: str | Path) -> str:
    """`data/alpaca_gemma-2-2b-it.json` -> `alpaca`: the file name's prefix before the first `_`, lowercased."""
    return Path(path).name.split("_", 1)[0].removesuffix(".json").lower()


class StructureProblem(ValueError):
    """A limit or encoding problem at byte `offset`, found before the parser read that far."""

    def __init__(self, offset: int, message: str, kind: str):
        super().__init__(message)
        self.offset, self.message, self.kind = offset, message, kind


class StructureScanner:
    """Depth, row boundaries, keys per row and lone surrogate escapes of a JSON text fed chunk by chunk, at numpy
    speed: only quotes, backslashes and the characters `[]{},:` are looked at one by one. Memory stays bounded:
    rows are remembered only until the parser has finished them (`forget_rows_before`)."""

    def __init__(self):
        self.offset = 0  # absolute position of the next chunk
        self.in_string = False
        self.backslashes = 0  # length of the backslash run that ended the previous chunk
        self.depth = 0
        self.closed = False  # the top-level list has ended
        self.tail = b""  # the previous chunks' last bytes, for escapes cut by a chunk boundary
        self.first_row = 0  # the row whose start is row_starts[0]
        self.row_starts = np.zeros(0, np.int64)  # where each top-level row begins (after `[` or `,`)
        self.row_keys = np.zeros(0, np.int64)  # keys (colons outside strings) in each row, all depths
        self.row_objects = np.zeros(0, np.int64)  # objects (`{` outside strings) in each row, itself included

    def row_start(self, row: int) -> int | None:
        index = row - self.first_row
        return int(self.row_starts[index]) if 0 <= index < len(self.row_starts) else None

    def row_counts(self, row: int) -> tuple[int, int]:
        """(keys, objects) of a row the scanner has read to its end."""
        index = row - self.first_row
        return int(self.row_keys[index]), int(self.row_objects[index])

    def row_at(self, offset: int) -> int:
        return self.first_row + max(int(np.searchsorted(self.row_starts, offset, side="right")) - 1, 0)

    def forget_rows_before(self, row: int) -> None:
        drop = row - self.first_row
        if drop > 4096:
            self.row_starts, self.row_keys, self.row_objects = (
                self.row_starts[drop:],
                self.row_keys[drop:],
                self.row_objects[drop:],
            )
            self.first_row = row

    def feed(self, chunk: bytes) -> None:
        start, self.offset = self.offset, self.offset + len(chunk)
        if not chunk:
            return self._surrogates(b"", final=True)
        a = np.frombuffer(chunk, np.uint8)
        quotes = self._unescaped_quotes(np.flatnonzero(a == _QUOTE), np.flatnonzero(a == _BACKSLASH), len(a))
        folded = a | 0x20  # [ -> {, ] -> }: one comparison each (comparisons are SIMD; a table lookup is not)
        marks = np.flatnonzero((folded == ord("{")) | (folded == ord("}")) | (a == ord(",")) | (a == ord(":")))
        outside = (np.searchsorted(quotes, marks) + self.in_string) % 2 == 0
        self.in_string = bool((len(quotes) + self.in_string) % 2)
        marks = marks[outside]
        chars = a[marks]
        depth = self.depth + np.cumsum(_DEPTH_STEP[chars], dtype=np.int64)  # after each mark
        before = np.concatenate(([self.depth], depth[:-1]))
        if not self.closed:
            self._rows(start, marks, chars, before, depth)
        if len(depth) and depth.max() > MAX_JSON_DEPTH:
            where = start + int(marks[np.argmax(depth > MAX_JSON_DEPTH)])
            raise StructureProblem(where, f"nested deeper than {MAX_JSON_DEPTH} levels", "too deep")
        if len(depth):
            self.depth = int(depth[-1])
        self._surrogates(chunk)

    def _rows(self, start: int, marks: np.ndarray, chars: np.ndarray, before: np.ndarray, depth: np.ndarray) -> None:
        """Record where rows start (after the list's `[` and after each comma between rows) and what they hold, and
        refuse a row longer than MAX_ROW_BYTES as soon as it is, before the parser builds it."""
        close = np.flatnonzero((chars == ord("]")) & (depth == 0))
        end = self.offset
        if len(close):
            self.closed, end = True, start + int(marks[close[0]])
        opens = ((chars == ord("[")) & (before == 0)) | ((chars == ord(",")) & (depth == 1))
        starts = start + marks[opens] + 1
        starts = starts[starts <= end]
        open_row = self.row_starts[-1:]  # the row the previous chunk ended in, if any
        firsts = np.concatenate((open_row, starts))
        lasts = np.concatenate((starts - 1, [end]))[1 - len(open_row) :]
        self.row_starts = np.concatenate((self.row_starts, starts))
        self.row_keys = np.concatenate((self.row_keys, np.zeros(len(starts), np.int64)))
        self.row_objects = np.concatenate((self.row_objects, np.zeros(len(starts), np.int64)))
        for counts, char in ((self.row_keys, ord(":")), (self.row_objects, ord("{"))):
            at = start + marks[chars == char]
            row = np.searchsorted(self.row_starts, at[at <= end], side="right") - 1
            np.add.at(counts, row[row >= 0], 1)
        too_long = np.flatnonzero(lasts - firsts > MAX_ROW_BYTES)
        if len(too_long):
            raise StructureProblem(
                int(firsts[too_long[0]]) + MAX_ROW_BYTES,
                f"more than {MAX_ROW_BYTES:,} bytes of JSON in one row",
                "row too large",
            )

    def _unescaped_quotes(self, quotes: np.ndarray, slashes: np.ndarray, size: int) -> np.ndarray:
        """The `"` positions not escaped, i.e. not preceded by an odd run of backslashes (this chunk's or carried)."""
        carried, escaped = self.backslashes, np.zeros(len(quotes), bool)
        self.backslashes = 0
        if len(slashes):
            index = np.arange(len(slashes))
            run_begins = np.flatnonzero(np.diff(slashes, prepend=-2) != 1)  # index of each run's first backslash
            first = run_begins[np.searchsorted(run_begins, index, side="right") - 1]
            run = index - first + 1 + (slashes[first] == 0) * carried  # backslashes up to and including this one
            last = np.maximum(np.searchsorted(slashes, quotes) - 1, 0)  # the backslash nearest before each quote
            escaped = (slashes[last] == quotes - 1) & (run[last] % 2 == 1)
            if slashes[-1] == size - 1:
                self.backslashes = int(run[-1])
        if carried % 2 and len(quotes) and quotes[0] == 0:
            escaped[0] = True
        return quotes[~escaped]

    def _surrogates(self, chunk: bytes, final: bool = False) -> None:
        """Refuse an escaped UTF-16 surrogate that is not half of a high+low pair."""
        text = self.tail + chunk
        base = self.offset - len(text)
        at = max(len(self.tail) - 12, 0)  # where the previous call stopped judging
        judged = len(text) if final else len(text) - 12  # the rest waits for the next chunk (its partner may be there)
        while (match := _SURROGATE_ESCAPE.search(text, at)) and (at := match.start()) < judged:
            run = 0
            while at - run - 1 >= 0 and text[at - run - 1] == _BACKSLASH:
                run += 1
            paired = (_HIGH.match(text, at) and _LOW.match(text, at + 6)) or (
                _LOW.match(text, at) and at >= 6 and _HIGH.match(text, at - 6)
            )
            if not paired and run % 2 == 0:  # (after an odd run of backslashes it is plain text: `\\ud800`)
                escape = text[at : at + 6].decode(errors="replace")
                raise StructureProblem(
                    base + at, f"lone surrogate {escape} (half of a UTF-16 pair, not a character)", "lone surrogate"
                )
            at += 6
        self.tail = text[-24:]


def _keys_and_objects(row) -> tuple[int, int] | None:
    """(keys, objects) of a row shaped like the schema (an object whose `paraphrases` is a list of flat objects),
    counted at C speed; None for any other shape, whose keys only `locate` can check."""
    if type(row) is not dict:
        return None
    paraphrases = row.get("paraphrases")
    paraphrases = paraphrases if type(paraphrases) is list else []
    if set(map(type, paraphrases)) - {dict}:
        return None
    return len(row) + sum(map(len, paraphrases)), 1 + len(paraphrases)


class _HashingReader:
    """A file wrapper for ijson: hashes and scans every byte read, reports progress, skips a UTF-8 byte-order mark."""

    def __init__(self, f, head: bytes, scanner: StructureScanner, progress=None):
        self.f, self.head, self.scanner, self.progress = f, head, scanner, progress
        self.sha256 = hashlib.sha256(head)
        scanner.feed(head)
        if head.startswith(_BOM):
            self.head = head[len(_BOM) :]

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read(0) to learn whether the file gives bytes or str
            return b""
        if self.head:
            data, self.head = self.head, b""
            return data
        data = self.f.read(_CHUNK if size is None or size < 0 else max(size, _CHUNK))
        self.scanner.feed(data)
        self.sha256.update(data)
        if self.progress is not None:
            self.progress.update(len(data))
        return data


def _check_start(path: str, head: bytes) -> None:
    text = head.removeprefix(_BOM).lstrip(b" \t\r\n")
    if not text:
        raise ValidationError("empty file (expected a JSON list of prompt objects)", path=path)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:4]:
        raise ValidationError("not UTF-8 (looks like UTF-16); save the file as UTF-8", path=path)
    if text[:1] != b"[":
        kind = {b"{": "an object"}.get(text[:1], "not a list")
        raise ValidationError(f"top level is {kind}; expected a JSON list of prompt objects", path=path)


def locate(path: str, start: int, stop: int | None = None) -> tuple[str | None, str | None]:
    """Walk the JSON events of the row that begins at byte `start`, up to byte `stop` or the first syntax error:
    (the field being read there, like `paraphrases[2].task_score`; the first key given twice in one object)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(min(stop - start if stop is not None else MAX_ROW_BYTES, MAX_ROW_BYTES))
    stack: list[list] = []  # per open container: ["list", index] or ["map", key, keys seen]

    def field() -> str | None:
        text = ""
        for kind, at, *_ in stack:
            if kind == "list" and at >= 0:
                text += f"[{at}]"
            elif kind == "map" and at is not None:
                text += ("." if text else "") + at
        return text or None

    try:
        for event, value in ijson.basic_parse(io.BytesIO(data), use_float=True):
            if stack and stack[-1][0] == "list" and event != "end_array":  # a value of the list begins
                stack[-1][1] += 1
            if event == "map_key":
                if value in stack[-1][2]:
                    stack[-1][1] = value
                    return field(), value
                stack[-1][1] = value
                stack[-1][2].add(value)
            elif event in ("start_map", "start_array"):
                stack.append(["map", None, set()] if event == "start_map" else ["list", -1])
            elif event in ("end_map", "end_array"):
                stack.pop()
            if not stack:  # the row's value is complete
                break
            if event not in ("map_key", "start_map", "start_array") and stack[-1][0] == "map":
                stack[-1][1] = None  # a value ended: what follows is between fields
    except (ijson.JSONError, UnicodeDecodeError):
        pass
    return field(), None


def _json_error(path: str, row: int, error: Exception, field: str | None) -> ValidationError:
    message = str(error)
    if message.startswith("b'") or message.startswith('b"'):
        message = message[2:]
    lines = message.replace("\\n", "\n").strip().splitlines()
    first = lines[0].rstrip(".") if lines else "invalid JSON"
    if "invalid bytes in UTF8" in first or isinstance(error, UnicodeDecodeError):
        return ValidationError("not UTF-8 (invalid byte sequence)", path=path, row=row, field=field, kind="not UTF-8")
    near = ""
    if len(lines) >= 3 and "^" in lines[2]:  # yajl shows the text around the error, a caret one past its start
        context, caret = lines[1], lines[2].index("^")
        near = context[max(caret - 1, 0) :][:16]
        for word in _NOT_NUMBERS.finditer(context):
            if word.start() < caret <= word.end():
                return ValidationError(
                    f"{word.group()} is not a JSON number", path=path, row=row, field=field, kind="not a number"
                )
    return ValidationError(
        f"invalid JSON: {first}" + (f" at {near!r}" if near else ""),
        path=path,
        row=row,
        field=field,
        kind="invalid JSON",
    )


def iter_rows(path: str | Path, progress=None, digest: dict | None = None) -> Iterator[tuple[int, object]]:
    """Yield (row index, parsed row) for each element of the file's top-level list; fill `digest['sha256']` at the end."""
    path = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ValidationError(f"cannot read: {e.strerror}", path=path) from None
    with f:
        head = f.read(_CHUNK)
        _check_start(path, head)
        if progress is not None:
            progress.update(len(head))
        scanner, done = StructureScanner(), 0
        try:
            reader = _HashingReader(f, head, scanner, progress)
            for value in ijson.items(reader, "item", use_float=True):
                # A parsed object keeps one value per key, so a duplicate shows as fewer keys than the text has;
                # a row of another shape (deeper objects) is walked key by key.
                if _keys_and_objects(value) != scanner.row_counts(done):
                    field, key = locate(path, scanner.row_start(done))
                    if key is not None:
                        raise ValidationError(
                            f"key {key!r} appears twice in one object",
                            path=path,
                            row=done,
                            field=field,
                            kind="duplicate key",
                        )
                yield done, value
                done += 1
                scanner.forget_rows_before(done)
            scanner.feed(b"")  # the end of the file: judge the escapes its last bytes held back
        except StructureProblem as problem:
            row = scanner.row_at(problem.offset)
            start = scanner.row_start(row)
            field = (
                locate(path, start, problem.offset)[0]
                if start is not None and problem.kind != "row too large"
                else None
            )
            raise ValidationError(problem.message, path=path, row=row, field=field, kind=problem.kind) from None
        except (ijson.JSONError, UnicodeDecodeError) as e:
            start = scanner.row_start(done)
            raise _json_error(path, done, e, None if start is None else locate(path, start)[0]) from None
        if digest is not None:
            digest["sha256"] = reader.sha256.hexdigest()
