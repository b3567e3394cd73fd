"""Input readers: image paths and caption files (the Flickr8K layout: :mod:`jointembed_pg.ingest.flickr8k`).

Caption files (``jointembed index text FILE``) come in three formats, chosen by suffix:

* ``.jsonl`` / ``.ndjson``: one JSON object per line with ``id`` and ``text``;
* ``.csv``: a header row with ``id`` and ``text`` columns;
* anything else: a Flickr8K token file, ``<image>.jpg#<n><TAB><caption>`` per line.

Readers never stop at a bad line: each one yields a :class:`TextRecord` with ``error``
set (invalid UTF-8, a NUL byte or a lone surrogate, a missing field, an empty or overlong
caption, an empty or whitespace-only id, a line over the line limit, a JSON line Python
cannot parse -- bad syntax, nesting too deep, an integer over 4300 digits --, a CSV row
that breaks the quoting rules, named by its line numbers), so the batch job records it and
goes on. Caption files are opened as regular files only (:mod:`jointembed_pg.files`) and
read line by line, so a device, a FIFO or a huge line cannot hang or exhaust the reader.

Folders given to ``index image`` are walked by :func:`scan_images`: files whose suffix
is one Pillow can decode (:func:`image_extensions`, the same list the decoder accepts)
become items; every other file is *ignored* and reported by kind
(``2 .heic (no decoder), 1 .txt``).
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .. import files
from ..errors import InputError
from ..limits import MAX_KEY_BYTES, MAX_TEXT_CHARS

#: Image file suffixes Pillow (as installed here) cannot decode: reported as
#: ``.heic (no decoder)`` when a folder scan meets them.
KNOWN_IMAGE_SUFFIXES = frozenset({
    ".heic", ".heif", ".hif", ".avif", ".avifs", ".svg", ".svgz", ".jxl", ".jp2", ".j2k", ".webp", ".eps", ".ps",
    ".ai", ".pdf", ".psb", ".xcf", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf",
    ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".ico", ".icns", ".tga", ".exr",
    ".hdr", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff",
})
#: Longest line read from a caption file, bytes (room for a caption of
#: ``MAX_TEXT_CHARS`` characters JSON-escaped, plus its id).
MAX_LINE_BYTES = 8 * MAX_TEXT_CHARS + 64 * 1024


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


@dataclass(frozen=True)
class Ignored:
    """A file a folder scan did not take as an image: ``kind`` is what the summary counts
    (``.heic (no decoder)``, ``.txt``, ``(no suffix)``, ``symlink to a directory``)."""

    path: str
    kind: str


@dataclass
class ImageScan:
    """What :func:`scan_images` found: image ``records`` and the ``ignored`` files."""

    records: list[PathRecord] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)

    def ignored_summary(self) -> str:
        """``"3 files ignored: 2 .heic (no decoder), 1 .txt"`` or ``""``."""
        return ignored_summary(self.ignored)


def ignored_summary(ignored: Iterable[Ignored]) -> str:
    """One line counting ignored files by kind, most frequent first (``""`` when none)."""
    counts = Counter(i.kind for i in ignored)
    if not counts:
        return ""
    n = sum(counts.values())
    kinds = ", ".join(f"{c} {k}" for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{n} file{'s' if n != 1 else ''} ignored: {kinds}"


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes a folder scan takes as images: those Pillow registers for a
    format that :func:`jointembed_pg.model.preprocess.decode` decodes (so an installed AVIF or
    HEIF plugin adds its suffixes, and EPS, which needs Ghostscript, is left out)."""
    from PIL import Image

    from ..model.preprocess import decodable_formats

    ok = set(decodable_formats())
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in ok)


def _ignored_kind(name: str, images: frozenset[str]) -> str:
    suffix = Path(name).suffix.lower()
    if not suffix:
        return "(no suffix)"
    if suffix in KNOWN_IMAGE_SUFFIXES and suffix not in images:
        return f"{suffix} (no decoder)"
    return files.display(suffix) if len(suffix) <= 12 else "(other suffix)"


def scan_images(paths: Iterable[str | Path]) -> ImageScan:
    """Expand files and directories (recursively, sorted) into image records and ignored files.

    A file named explicitly is always an item (its content decides). In a directory, a
    file is an item when its suffix is in :func:`image_extensions` (whatever the file
    type: a FIFO or a device named ``x.jpg`` becomes an item that fails with its reason);
    other files are ignored by kind. Symlinks to files are followed; symlinks to
    directories are not (no loops) and are reported as ignored. A subdirectory that
    cannot be listed becomes a failed item. The key of an image is its resolved absolute
    path; a file reached twice is one item. A path that does not exist or cannot be
    looked at (too long, a parent without search permission) is an item with ``error`` set.
    """
    scan, seen = ImageScan(), set()  # the same file named twice (or via ../) is one item
    images = image_extensions()

    def add(f: Path, error: str | None = None):
        # realpath, not Path.resolve(): a symlink loop (a.jpg -> b.jpg -> a.jpg) is an item
        # that fails when read ("too many levels of symbolic links"), not a RuntimeError
        key = os.path.realpath(f) if error is None else str(f)
        if key not in seen:
            seen.add(key)
            scan.records.append(PathRecord(key, Path(key), error))

    for p in paths:
        path = Path(p)
        try:
            # before Python 3.12 exists()/is_dir() raise on ENAMETOOLONG or EACCES (a path
            # too long, a parent we may not search): that path fails, the others go on
            path = path.expanduser()
            is_dir = path.is_dir()
            missing = not is_dir and not path.exists() and not path.is_symlink()
        except (OSError, ValueError, RuntimeError) as e:  # ValueError: NUL; RuntimeError: no home for ~
            add(path, f"{path}: cannot use this path ({getattr(e, 'strerror', None) or e})")
            continue
        if missing:
            add(path, f"{path}: no such file or directory")
            continue
        if not is_dir:
            add(path)
            continue
        found: list[Path] = []
        errors: list[tuple[Path, str]] = []

        def onerror(e: OSError, errors=errors):
            errors.append((Path(e.filename), f"{e.filename}: cannot list directory ({e.strerror or e})"))

        for top, dirs, names in _walk(str(path), onerror):
            for d in dirs:
                if os.path.islink(os.path.join(top, d)):
                    scan.ignored.append(Ignored(os.path.join(top, d), "symlink to a directory (not followed)"))
            for n in names:
                f = Path(top, n)
                if Path(n).suffix.lower() in images:
                    found.append(f)
                else:
                    scan.ignored.append(Ignored(str(f), _ignored_kind(n, images)))
        for f in sorted(found):
            add(f)
        for d, err in errors:
            add(d, err)
    return scan


def _walk(top: str, onerror) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, onerror=onerror, followlinks=False)`` without recursion.

    Python before 3.12 walks recursively, so a tree deeper than the recursion limit
    (~1000 levels: a few ``mkdir`` in a loop) ended a scan with ``RecursionError``; this
    one keeps its own stack. ``dirs`` holds the subdirectories and symlinks to directories
    (as ``os.walk``); symlinks are not descended into. ``onerror`` gets each ``OSError``
    of a directory that cannot be listed (a path over ``PATH_MAX`` included).
    """
    stack = [top]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as e:
            onerror(e)
            continue
        dirs, names = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else names).append(entry.name)
        yield current, dirs, names
        for d in reversed(dirs):
            sub = os.path.join(current, d)
            if not os.path.islink(sub):
                stack.append(sub)


def iter_image_paths(paths: Iterable[str | Path]) -> Iterator[PathRecord]:
    """The image records of :func:`scan_images` (ignored files are dropped)."""
    yield from scan_images(paths).records


def check_text(value: str, what: str, *, max_chars: int | None = None) -> str:
    """Refuse text PostgreSQL cannot store or that is over a length limit.

    Raises:
        InputError: ``value`` holds a NUL character, a lone surrogate (text decoded from
            invalid UTF-8 with ``surrogateescape``, or a JSON ``\\ud800`` escape), or more
            than ``max_chars`` characters.
    """
    at = value.find("\x00")
    if at >= 0:
        raise InputError(f"{what} contains a NUL character (at {at}); PostgreSQL text cannot hold it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid Unicode: lone surrogate "
                         f"{value[e.start]!r} at {e.start} (invalid UTF-8 or a bad \\u escape)") from None
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{what} is {len(value)} characters, over the {max_chars}-character limit "
                         "(JOINTEMBED_MAX_TEXT_CHARS)")
    return value


def check_key(key: str, what: str = "key", max_bytes: int = MAX_KEY_BYTES) -> str:
    """Validate an item key (a resolved path or a caption id): storable, at most ``max_bytes``.

    Raises:
        InputError: not text, empty or whitespace only (in every caption format and the
            API alike), a NUL or lone surrogate (e.g. a file name that is not valid UTF-8),
            or longer than ``max_bytes`` UTF-8 bytes.
    """
    if not isinstance(key, str) or not key.strip():
        raise InputError(f"{what}: empty key" + (f" ({key!r}: whitespace only)" if isinstance(key, str) and key
                                                  else ""))
    check_text(key, f"{printable(key)}: {what}")
    n = len(key.encode("utf-8"))
    if n > max_bytes:
        raise InputError(f"{printable(key[:80])}...: {what} is {n} bytes, over the {max_bytes}-byte limit "
                         "(JOINTEMBED_MAX_KEY_BYTES)")
    return key


def printable(text: object, limit: int = 2000) -> str:
    """``text`` made safe to print, log, store as text and put in JSON: lone surrogates
    and NULs become escapes, and the middle of a text over ``limit`` characters is cut."""
    s = str(text)
    if len(s) > limit:  # keep both ends: a message's reason is at its end
        s = f"{s[:limit // 2]}...({len(s) - limit} characters)...{s[-(limit // 2):]}"
    return s.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def clean_text(text: object, key: str = "<text>", *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Validate one caption: a non-blank ``str`` that PostgreSQL can store, of at most
    ``max_chars`` characters; returns it stripped.

    Raises:
        InputError: not a string, empty / whitespace-only, a NUL or lone surrogate, too long.
    """
    where = printable(key, 200)
    if not isinstance(text, str):
        raise InputError(f"{where}: caption is {type(text).__name__}, not text")
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{where}: empty caption")
    return check_text(stripped, f"{where}: caption", max_chars=max_chars)


def read_texts(path: str | Path) -> Iterator[TextRecord]:
    """Yield the captions of a JSONL, CSV or Flickr8K token file (see module docstring).

    The file is read line by line; a line over :data:`MAX_LINE_BYTES` becomes an error
    record (the rest of the file is read on).

    Raises:
        InputError: the file is missing, not a regular file (a directory, a device, a
            FIFO), or holds no caption at all.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such caption file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a caption file")
    suffix = path.suffix.lower()
    reader = _read_jsonl if suffix in (".jsonl", ".ndjson") else _read_csv if suffix == ".csv" else _read_token_file
    with files.open_regular(path, None, str(path)) as f:
        seen = False
        for rec in reader(path, _raw_lines(f)):
            seen = True
            yield rec
    if not seen:
        raise InputError(f"{path}: empty caption file")


def _raw_lines(f, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """``(lineno, line without its newline)``; the line is None when over ``max_line`` bytes."""
    lineno = 0
    while True:
        line = f.readline(max_line + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_line:
            while line and not line.endswith(b"\n"):  # skip the rest of the overlong line
                line = f.readline(1 << 20)
            yield lineno, None
            continue
        yield lineno, line.rstrip(b"\r\n")


def _decode(path: Path, lineno: int, raw: bytes | None) -> str | TextRecord:
    key = f"{printable(path.name, 200)}:{lineno}"
    if raw is None:
        return TextRecord(key, "", f"{key}: line longer than {MAX_LINE_BYTES} bytes (skipped)")
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a BOM (Excel CSV)
    except UnicodeDecodeError as e:
        return TextRecord(key, "", f"{key}: invalid UTF-8 ({e.reason} at byte {e.start})")


def _lines(path: Path, lines: Iterable[tuple[int, bytes | None]]) -> Iterator[tuple[int, str | TextRecord]]:
    """``(lineno, text)`` of the non-blank lines; ``text`` is an error record if unusable."""
    for lineno, raw in lines:
        if raw is None or raw.strip():
            yield lineno, _decode(path, lineno, raw)


def _read_token_file(path: Path, lines) -> Iterator[TextRecord]:
    for lineno, line in _lines(path, lines):
        if isinstance(line, TextRecord):
            yield line
            continue
        key, sep, text = line.partition("\t")
        where = f"{printable(path.name, 200)}:{lineno}"
        if not sep:
            yield TextRecord(where, "", f"{where}: no TAB between key and caption")
        else:
            yield _checked(key.strip(), text, where)


def _read_jsonl(path: Path, lines) -> Iterator[TextRecord]:
    for lineno, line in _lines(path, lines):
        if isinstance(line, TextRecord):
            yield line
            continue
        where = f"{printable(path.name, 200)}:{lineno}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            # JSONDecodeError is a ValueError; so is an integer of more than
            # sys.get_int_max_str_digits() digits (4300), anywhere in the object
            why = e.msg if isinstance(e, json.JSONDecodeError) else (
                "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0])
            yield TextRecord(where, "", f"{where}: invalid JSON ({why})")
            continue
        if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
            yield TextRecord(where, "", f"{where}: needs the fields 'id' and 'text'")
            continue
        if obj["id"] is None or str(obj["id"]).strip() == "":
            yield TextRecord(where, "", f"{where}: 'id' is empty or null")
            continue
        if isinstance(obj["id"], (dict, list, bool)):
            yield TextRecord(where, "", f"{where}: 'id' must be a string or a number, got {type(obj['id']).__name__}")
            continue
        yield _checked(str(obj["id"]), obj["text"], where)


def _read_csv(path: Path, lines) -> Iterator[TextRecord]:
    pending: list[TextRecord] = []
    fetched = [0]  # the last line handed to the csv reader (its line_num skips a row that fails)

    def text_lines():
        for lineno, raw in lines:
            fetched[0] = lineno
            line = _decode(path, lineno, raw)
            if isinstance(line, TextRecord):
                pending.append(line)
                line = ""
            yield line + "\n"

    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)  # one caption per field; the line cap bounds it
    # strict: a row that breaks the quoting rules (a quote closed mid-field, a quoted field
    # still open at the end of the file) is a bad row, not silently glued to its neighbours
    reader = csv.DictReader(text_lines(), strict=True)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as e:
        raise InputError(f"{path}: unreadable CSV header ({e})") from e
    if fieldnames is None and not pending:
        raise InputError(f"{path}: empty caption file")
    if not fieldnames or not {"id", "text"} <= set(fieldnames):
        raise InputError(f"{path}: CSV needs a header with 'id' and 'text' columns, found {fieldnames}")
    name = printable(path.name, 200)
    done = fetched[0]  # the last line of the previous row
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield from pending
            pending.clear()
            lines_of_row = f"{done + 1}" if fetched[0] <= done + 1 else f"{done + 1}-{fetched[0]}"
            done = fetched[0]
            yield TextRecord(f"{name}:{lines_of_row}", "", f"{name}:{lines_of_row}: bad CSV row ({e})")
            continue
        done = fetched[0]
        yield from pending
        pending.clear()
        n = reader.line_num
        if row.get("id") in (None, "") and not row.get("text"):
            continue
        if row.get("id") in (None, ""):
            yield TextRecord(f"{name}:{n}", "", f"{name}:{n}: empty id")
            continue
        if row.get("text") is None:
            key = printable(row["id"], 200)
            yield TextRecord(key, "", f"{key}: missing text column (unbalanced quotes?)")
            continue
        yield _checked(str(row["id"]), row.get("text"), f"{name}:{n}")
    yield from pending


def _checked(key: str, text: object, where: str = "") -> TextRecord:
    """A record for ``(key, text)``, or an error record naming the problem (key printable)."""
    try:
        check_key(key, "id")
        return TextRecord(key, clean_text(text, key))
    except InputError as e:
        return TextRecord(printable(key, 200) or where, "", str(e))
