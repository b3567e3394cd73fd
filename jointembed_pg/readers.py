"""Input readers: image paths and caption files (the Flickr8K layout: :mod:`jointembed_pg.flickr8k`).

Caption files (``jointembed index texts FILE``) come in three formats, chosen by suffix:

* ``.jsonl`` / ``.ndjson``: one JSON object per line with ``id`` and ``text``;
* ``.csv``: a header row with ``id`` and ``text`` columns;
* anything else: a Flickr8K token file, ``<image>.jpg#<n><TAB><caption>`` per line.

Readers never stop at a bad line: each one yields a :class:`TextRecord` with ``error``
set (invalid UTF-8, a missing field, an empty caption), so the batch job records it and
goes on.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

#: File suffixes taken when a directory is walked (an explicitly named file is always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class TextRecord:
    """One caption to embed. ``error`` is set (and ``text`` may be empty) for a bad line."""

    key: str
    text: str
    error: str | None = None


@dataclass(frozen=True)
class PathRecord:
    """One image path to embed. ``error`` is set when the path cannot be used at all."""

    key: str
    path: Path
    error: str | None = None


def iter_image_paths(paths: Iterable[str | Path]) -> Iterator[PathRecord]:
    """Expand files and directories (recursively, sorted) into image path records.

    The key of an image is its resolved absolute path; a file reached twice is yielded
    once. A path that does not exist is yielded with ``error`` set rather than raised.
    """
    seen: set[str] = set()  # the same file named twice (or via ../) is one item
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            yield PathRecord(str(path), path, f"{path}: no such file or directory")
            continue
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) \
            if path.is_dir() else [path]
        for f in files:
            key = str(f.resolve())
            if key not in seen:
                seen.add(key)
                yield PathRecord(key, f.resolve())


def clean_text(text: object, key: str = "<text>") -> str:
    """Validate one caption: a non-blank ``str``; returns it stripped.

    Raises:
        InputError: not a string, or empty / whitespace-only.
    """
    if not isinstance(text, str):
        raise InputError(f"{key}: caption is {type(text).__name__}, not text")
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{key}: empty caption")
    return stripped


def read_texts(path: str | Path) -> Iterator[TextRecord]:
    """Yield the captions of a JSONL, CSV or Flickr8K token file (see module docstring).

    Raises:
        InputError: the file is missing, a directory, or holds no caption at all.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such caption file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a caption file")
    lines = path.read_bytes().splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"{path}: empty caption file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(path, lines)
    elif suffix == ".csv":
        yield from _read_csv(path, lines)
    else:
        yield from _read_token_file(path, lines)


def _decode(path: Path, lineno: int, raw: bytes) -> str | TextRecord:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a BOM (Excel CSV)
    except UnicodeDecodeError as e:
        key = f"{path.name}:{lineno}"
        return TextRecord(key, "", f"{key}: invalid UTF-8 ({e.reason} at byte {e.start})")


def _lines(path: Path, lines: list[bytes]) -> Iterator[tuple[int, str | TextRecord]]:
    """``(lineno, text)`` of the non-blank lines; ``text`` is an error record if not UTF-8."""
    for lineno, raw in enumerate(lines, 1):
        if raw.strip():
            yield lineno, _decode(path, lineno, raw)


def _read_token_file(path: Path, lines: list[bytes]) -> Iterator[TextRecord]:
    for lineno, line in _lines(path, lines):
        if isinstance(line, TextRecord):
            yield line
            continue
        key, sep, text = line.rstrip("\r\n").partition("\t")
        if not sep:
            yield TextRecord(f"{path.name}:{lineno}", "", f"{path.name}:{lineno}: no TAB between key and caption")
        else:
            yield _checked(key.strip(), text)


def _read_jsonl(path: Path, lines: list[bytes]) -> Iterator[TextRecord]:
    for lineno, line in _lines(path, lines):
        if isinstance(line, TextRecord):
            yield line
            continue
        where = f"{path.name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield TextRecord(where, "", f"{where}: invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
            yield TextRecord(where, "", f"{where}: needs the fields 'id' and 'text'")
            continue
        if obj["id"] is None or str(obj["id"]).strip() == "":
            yield TextRecord(where, "", f"{where}: 'id' is empty or null")
            continue
        yield _checked(str(obj["id"]), obj["text"])


def _read_csv(path: Path, lines: list[bytes]) -> Iterator[TextRecord]:
    decoded: list[str] = []
    for lineno, raw in enumerate(lines, 1):
        line = _decode(path, lineno, raw)
        if isinstance(line, TextRecord):
            yield line
            decoded.append("")
        else:
            decoded.append(line)
    reader = csv.DictReader(io.StringIO("\n".join(decoded)))
    if not reader.fieldnames or not {"id", "text"} <= set(reader.fieldnames):
        raise InputError(f"{path}: CSV needs a header with 'id' and 'text' columns, found {reader.fieldnames}")
    for n, row in enumerate(reader, 2):
        if row.get("id") in (None, "") and not row.get("text"):
            continue
        if row.get("id") in (None, ""):
            yield TextRecord(f"{path.name}:{n}", "", f"{path.name}:{n}: empty id")
            continue
        if row.get("text") is None:
            yield TextRecord(str(row["id"]), "", f"{row['id']}: missing text column (unbalanced quotes?)")
            continue
        yield _checked(str(row["id"]), row.get("text"))


def _checked(key: str, text: object) -> TextRecord:
    try:
        return TextRecord(key, clean_text(text, key))
    except InputError as e:
        return TextRecord(key, "", str(e))
