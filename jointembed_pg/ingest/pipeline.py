"""Batch ingest: decode -> encode -> write, overlapped, resumable, one bad item never fatal.

``index_images`` and ``index_texts`` take records from :mod:`jointembed_pg.ingest.readers`, skip
items whose content hash is already stored for the collection's model (so a rerun after
a crash resumes instead of starting over), embed the rest in batches with the bundle's
ONNX encoders, and upsert each batch in one transaction. Images are read, hashed and
decoded in decoder processes (:class:`jointembed_pg.ingest.sandbox.ImageLoader`: per-item time
and memory limits, a crash or hang fails that item only), fed by a thread pool at most
:data:`AHEAD_BATCHES` batches ahead of the encoder (:func:`decode_ahead`, a bounded queue);
writes run on a writer thread behind it, so the encoder stays busy. How many decoders and
onnxruntime threads share the cores: :mod:`jointembed_pg.model.threads`.
Every key and caption is checked before it reaches a batch (:func:`readers.check_key`,
:func:`readers.clean_text`), so one unstorable item (a NUL, a file name that is not
UTF-8, an overlong key) fails alone instead of failing its batch's transaction.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import InputError, ItemError, JointEmbedError
from ..limits import Limits
from .readers import Ignored, PathRecord, TextRecord, check_key, clean_text, ignored_summary, printable
from .sandbox import ImageJob, ImageLoader, shared_loader
from ..model.threads import ThreadBudget

T = TypeVar("T")

IMAGE_BATCH = 32
TEXT_BATCH = 256
#: Captions are sorted by token length within windows of this many batches
#: (:meth:`Bundle.encode_texts_by_length`).
TEXT_SORT_WINDOW = 8
#: Images decoded ahead of the encoder, in batches (bounds the pixels held in memory:
#: ``AHEAD_BATCHES * batch_size * 3*S*S*4`` bytes, ~40 MB at 32 x 224 px).
AHEAD_BATCHES = 2


@dataclass(frozen=True)
class Failure:
    """An item that could not be embedded, with the reason (one line).

    Both fields are made printable (:func:`readers.printable`): a key that is not valid
    UTF-8 shows its bytes as escapes."""

    key: str
    error: str

    def __post_init__(self):
        object.__setattr__(self, "key", printable(self.key, 1000))
        object.__setattr__(self, "error", printable(self.error).replace("\n", " "))


@dataclass
class IngestReport:
    """What a batch job did. Times in seconds.

    ``unchanged``: items whose content hash was already stored for this model (not
    re-embedded), the same word as in sync reports.
    """

    modality: str
    total: int = 0
    written: int = 0
    unchanged: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    ignored: list[Ignored] = field(default_factory=list)
    interrupted: bool = False

    def ignored_summary(self) -> str:
        """``"3 files ignored: 2 .heic (no decoder), 1 .txt"`` (``""`` when none)."""
        return ignored_summary(self.ignored)

    def to_dict(self) -> dict:
        """JSON-ready form (``failed`` as a list of ``{key, error}``, ``ignored`` as a
        list of ``{path, kind}``: files of scanned folders that are not images;
        ``"interrupted": true`` only in the partial report of a run stopped by Ctrl-C)."""
        out = {
            "modality": self.modality, "total": self.total, "written": self.written,
            "unchanged": self.unchanged, "failed": [f.__dict__ for f in self.failed],
            "ignored": [{"path": printable(i.path, 1000), "kind": i.kind} for i in self.ignored],
            "seconds": round(self.seconds, 3),
        }
        if self.interrupted:
            out["interrupted"] = True
        return out


@dataclass(frozen=True)
class Row:
    """One embedded item ready to write. ``embedding``: ``(D,) float32``, L2 space."""

    modality: str
    key: str
    source: str | None
    text: str | None
    content_hash: str
    embedding: np.ndarray


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the content hash stored beside each embedding."""
    return hashlib.sha256(data).hexdigest()


def _chunks(items: Iterable[T], n: int) -> Iterator[list[T]]:
    buf: list[T] = []
    for it in items:
        buf.append(it)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def decode_ahead(pool: ThreadPoolExecutor, fn: Callable[[T], object], items: Iterable[T],
                 depth: int) -> Iterator[tuple[T, Future]]:
    """Submit ``fn(item)`` to ``pool`` at most ``depth`` items ahead of the consumer.

    Yields ``(item, future)`` in the order of ``items``, every item exactly once: a failing
    ``fn`` fails only its own future (the consumer reads the error from ``future.result()``).
    Items are submitted lazily, so at most ``depth`` results are held (a bounded queue).

    Raises:
        ValueError: ``depth < 1``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    window: collections.deque[tuple[T, Future]] = collections.deque()
    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) >= depth:
            yield window.popleft()
    while window:
        yield window.popleft()


def _load_image(loader: ImageLoader, rec: PathRecord, known: dict,
                stop=None) -> tuple[PathRecord, str, np.ndarray | None]:
    """Read, hash and (unless ``known`` already holds that hash for the key) decode one file."""
    if rec.error:
        raise InputError(rec.error)
    check_key(rec.key, "file name")
    loaded = loader.load(ImageJob(where=str(rec.path), path=str(rec.path), known=known.get(rec.key)), stop)
    return rec, loaded.digest, loaded.pixels  # pixels None: unchanged, a resumed run skips it


class _Writer:
    """Runs ``write(rows)`` on one background thread, one batch in flight at a time."""

    def __init__(self, write: Callable[[list[Row]], None]):
        self._write = write
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jointembed-writer")
        self._pending: Future | None = None
        self.saved = 0  # rows whose write returned (committed), updated on the writer thread

    def _run(self, rows: list[Row]) -> None:
        self._write(rows)
        self.saved += len(rows)

    def submit(self, rows: list[Row]) -> None:
        self.wait()
        if rows:
            self._pending = self._pool.submit(self._run, sorted(rows, key=lambda r: r.key))

    def wait(self) -> None:
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _progress(total: int | None, desc: str, enabled: bool):
    from ..progress import progress

    return progress(total, desc, unit="item", enabled=enabled)


def index_images(collection, bundle, records: Sequence[PathRecord], *, batch_size: int = IMAGE_BATCH,
                 decode_threads: int | None = None, progress: bool = True, ignored: Sequence[Ignored] = (),
                 limits: Limits | None = None, loader: ImageLoader | None = None) -> IngestReport:
    """Embed image files into ``collection`` (modality ``image``, key = resolved path).

    Args:
        collection: a :class:`jointembed_pg.search.store.Collection` (its model must be ``bundle``'s).
        bundle: a :class:`jointembed_pg.model.bundle.Bundle`; images become ``(D,) float32``.
        records: image paths (from :func:`readers.scan_images`).
        decode_threads: decoder processes (and feeding threads); default
            :meth:`ThreadBudget.auto` ``.decode``. They decode up to
            :data:`AHEAD_BATCHES` batches ahead of the encoder.
        ignored: files the folder scan did not take as images (copied into the report).
        limits: per-item limits (default :meth:`Limits.from_env`).
        loader: the :class:`ImageLoader` to use (default: the process's shared one).
    Returns:
        an :class:`IngestReport`; unreadable, corrupt, oversized, timed-out files and
        unstorable keys are in ``failed``.
    Raises:
        DatabaseError / ModelMismatchError: the database write failed (nothing of that
        batch is committed; a rerun resumes).
    """
    report, t0 = IngestReport("image", total=len(records), ignored=list(ignored)), time.perf_counter()
    decode_threads = decode_threads or ThreadBudget.auto().decode
    known = collection.content_hashes("image", [r.key for r in records if not r.error and _storable(r.key)])
    writer, bar = _Writer(collection.upsert), _progress(len(records), "images", progress)
    loader = loader or shared_loader(bundle.image_spec, limits, workers=decode_threads)
    halt = threading.Event()  # set on the way out: loads still running stop at once
    pool = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="jointembed-decode")
    try:
        load = lambda r: _load_image(loader, r, known, halt.is_set)  # noqa: E731
        for chunk in _chunks(decode_ahead(pool, load, records, AHEAD_BATCHES * batch_size), batch_size):
            loaded = []
            for rec, fut in chunk:
                try:
                    loaded.append(fut.result())
                except (InputError, OSError) as e:
                    report.failed.append(Failure(rec.key, str(e)))
            fresh = [(r, h, a) for r, h, a in loaded if known.get(r.key) != h]
            report.unchanged += len(loaded) - len(fresh)
            rows = _embed_images(bundle, fresh, report)
            writer.submit(rows)
            report.written += len(rows)
            bar.update(len(chunk))
        writer.wait()
    except KeyboardInterrupt as e:
        _interrupted(e, report, writer, t0)
        raise
    finally:
        halt.set()  # first: threads waiting on a decoder return at once
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        bar.close()
        report.written = writer.saved  # what was committed (all of it, unless interrupted)
    report.seconds = time.perf_counter() - t0
    return report


def _interrupted(e: KeyboardInterrupt, report: IngestReport, writer: _Writer, t0: float) -> None:
    """Ctrl-C: the report rides on the interrupt (``e.report``; ``written`` is set to the
    rows committed once the writer's batch in flight finished, in the caller's ``finally``)."""
    report.interrupted = True
    report.seconds = time.perf_counter() - t0
    e.report = report  # type: ignore[attr-defined]


def _storable(key: str) -> bool:
    try:
        check_key(key)
        return True
    except InputError:
        return False


def _embed_images(bundle, items, report: IngestReport) -> list[Row]:
    if not items:
        return []
    try:
        emb = bundle.encode_pixels(np.stack([a for _, _, a in items]))
    except JointEmbedError:
        if len(items) == 1:
            raise
        return [row for it in items for row in _embed_images(bundle, [it], report)]
    return [Row("image", r.key, str(r.path), None, h, e) for (r, h, _), e in zip(items, emb)]


def index_texts(collection, bundle, records: Iterable[TextRecord], *, batch_size: int = TEXT_BATCH,
                progress: bool = True, limits: Limits | None = None) -> IngestReport:
    """Embed captions into ``collection`` (modality ``text``, key = the record's id).

    Records with ``error`` set (bad lines) and captions the encoder refuses are reported
    in ``failed``; the rest is written. Same contract as :func:`index_images`. Captions are
    embedded in windows of :data:`TEXT_SORT_WINDOW` batches, sorted by token length inside
    each window (:meth:`Bundle.encode_texts_by_length`; same embeddings, less padding).
    """
    records = list(records)
    report, t0 = IngestReport("text", total=len(records)), time.perf_counter()
    good, seen = [], set()
    max_chars = (limits or Limits.from_env()).max_text_chars
    for r in records:
        if r.error is None:  # records built by callers (not readers) are checked here too
            try:
                check_key(r.key, "id")
                clean_text(r.text, r.key, max_chars=max_chars)
            except InputError as e:
                r = TextRecord(r.key, "", str(e))
        if r.error is not None:
            report.failed.append(Failure(r.key, r.error))
        elif r.key in seen:  # one id, two captions: keep the first, say so
            report.failed.append(Failure(r.key, f"{r.key}: duplicate id (its first caption was kept)"))
        else:
            seen.add(r.key)
            good.append(r)
    known = collection.content_hashes("text", [r.key for r in good])
    writer, bar = _Writer(collection.upsert), _progress(len(records), "texts", progress)
    bar.update(len(records) - len(good))
    try:
        for chunk in _chunks(good, batch_size * TEXT_SORT_WINDOW):
            hashed = [(r, sha256(r.text.encode("utf-8"))) for r in chunk]
            fresh = [(r, h) for r, h in hashed if known.get(r.key) != h]
            report.unchanged += len(chunk) - len(fresh)
            rows = _embed_texts(bundle, fresh, report, batch_size)
            writer.submit(rows)
            report.written += len(rows)
            bar.update(len(chunk))
        writer.wait()
    except KeyboardInterrupt as e:
        _interrupted(e, report, writer, t0)
        raise
    finally:
        writer.close()
        bar.close()
        report.written = writer.saved  # what was committed (all of it, unless interrupted)
    report.seconds = time.perf_counter() - t0
    return report


def _embed_texts(bundle, items, report: IngestReport, batch_size: int = TEXT_BATCH) -> list[Row]:
    """Embed ``(record, hash)`` pairs; a caption the encoder refuses goes to ``report.failed``
    and the others are embedded without it (refusals come from tokenising, before encoding)."""
    pending, done = list(items), []
    while pending:
        try:
            emb = bundle.encode_texts_by_length([r.text for r, _ in pending], batch_size=batch_size)
            return done + [Row("text", r.key, None, r.text, h, e) for (r, h), e in zip(pending, emb)]
        except InputError as e:
            bad = getattr(e, "index", None)
            if len(pending) == 1 or not (isinstance(bad, int) and 0 <= bad < len(pending)):
                if len(pending) == 1:
                    key = pending[0][0].key  # name the user's item (its id), not its place in our batch
                    report.failed.append(Failure(key, e.for_item(key) if isinstance(e, ItemError) else str(e)))
                    return done
                return done + [row for it in pending for row in _embed_texts(bundle, [it], report, 1)]
            done += _embed_texts(bundle, [pending[bad]], report, 1)  # records the refused item
            pending = pending[:bad] + pending[bad + 1:]
    return done
