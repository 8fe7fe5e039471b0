"""Stream the rows of one paraphrase JSON file without loading it whole (ijson's C backend, yajl2_c).

A 1.8 GB file never sits in memory: ijson reads it in chunks and yields one top-level row at a time. The same pass
hashes the bytes (the card records each input's sha256) and advances a byte progress bar. File-level problems
(not UTF-8, empty, not a list, broken JSON) raise `ValidationError` naming the file and, for broken JSON, the row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import ijson

from prep.schema import ValidationError

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def source_name(path: str | Path) -> str:
    """`data/alpaca_gemma-2-2b-it.json` -> `alpaca`: the file name's prefix before the first `_`, lowercased."""
    return Path(path).name.split("_", 1)[0].removesuffix(".json").lower()


class _HashingReader:
    """A file wrapper for ijson: hashes every byte read, reports progress, and skips a UTF-8 byte-order mark."""

    def __init__(self, f, head: bytes, progress=None):
        self.f, self.head, self.progress = f, head, progress
        self.sha256 = hashlib.sha256(head)
        self.offset = len(head)
        if head.startswith(_BOM):
            self.head = head[len(_BOM) :]

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read(0) to learn whether the file gives bytes or str
            return b""
        if self.head:
            data, self.head = self.head, b""
            return data
        data = self.f.read(_CHUNK if size is None or size < 0 else max(size, _CHUNK))
        self.sha256.update(data)
        self.offset += len(data)
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


def _json_error(path: str, row: int, error: Exception, offset: int) -> ValidationError:
    message = str(error)
    if message.startswith("b'") or message.startswith('b"'):
        message = message[2:]
    first = message.replace("\\n", "\n").strip().splitlines()[0] if message.strip() else "invalid JSON"
    if "invalid bytes in UTF8" in first:
        return ValidationError(
            f"not UTF-8 (invalid byte sequence before byte {offset})", path=path, row=row, kind="not UTF-8"
        )
    return ValidationError(f"invalid JSON before byte {offset}: {first}", path=path, row=row, kind="invalid JSON")


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
        reader = _HashingReader(f, head, progress)
        done = 0
        try:
            for value in ijson.items(reader, "item", use_float=True):
                yield done, value
                done += 1
        except ijson.JSONError as e:
            raise _json_error(path, done, e, reader.offset) from None
        if digest is not None:
            digest["sha256"] = reader.sha256.hexdigest()
