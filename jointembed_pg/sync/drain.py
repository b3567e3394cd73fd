"""Draining the queue of an attached table: claim -> read -> embed -> write.

One *batch* (:func:`process_batch`):

1. **claim** up to ``batch_size`` ready queue rows of one model version with
   ``FOR UPDATE SKIP LOCKED`` and a lease (``jointembed._sync_claim``, its own short
   transaction), so any number of workers share a queue and each row goes to one of
   them; a crashed worker's rows return when the lease runs out;
2. **read** the user's current content of those rows (``jointembed._sync_fetch``), each
   value capped on the server (:mod:`jointembed_pg.sync.caps`: an oversized key, text,
   path / URL or ``bytea`` comes back as NULL and its size, never whole, and its row
   fails); the claim size is bounded so one batch's values fit ``batch_bytes``;
3. **embed** what changed: a row whose content hash equals the stored one is only
   dequeued; images are read (:mod:`jointembed_pg.ingest.sources`) and decoded in decoder
   processes with a per-item deadline and memory cap (:mod:`jointembed_pg.ingest.sandbox`);
4. **write** the embeddings and delete the queue rows, and record the failures, in one
   transaction (``_sync_complete`` / ``_sync_fail``), retried on serialization failures
   and deadlocks. A row deleted since is removed from the side table instead; a row
   with a newer queued change is left to that change (see sql/functions/40_sync_queue.sql).

The queue holds change *events* appended by the user's triggers (several per row are
collapsed by the claim); claims are tied to this session, so a killed worker's rows are
claimable again at once.

A row that fails (NULL value, a key or value over its size cap, missing file, bad image,
URL error, a timeout, a crash of its decoder process, any unexpected error on its value)
is recorded with its error as one attempt and retried with exponential backoff up to
``max_attempts`` (NULL and oversized values, undecodable bytea and decoder crashes are
not retried); it never blocks the rest of the queue. A stop request (``stop()``, SIGTERM
of a worker) interrupts the batch in hand within a fraction of a second and releases its
claim without counting an attempt.
The long-running loop (LISTEN/NOTIFY, signals, JSON logs) is :mod:`jointembed_pg.sync.worker`.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import psycopg

from .. import db
from ..errors import InputError, ItemError, JointEmbedError, ModelMismatchError
from ..ingest.pipeline import sha256
from ..limits import Limits
from ..ingest.readers import clean_text, printable
from ..ingest.sandbox import ImageJob, ImageLoader, Interrupted, shared_loader
from ..ingest.sources import ImageSource, is_retryable
from .caps import BATCH_BYTES, Fetched, FetchCaps
from .catalog import Attachment, Version, _call, check_table, find, version_for

#: Transient errors retried around a transaction (then re-raised).
RETRYABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
             psycopg.errors.LockNotAvailable)
TX_RETRIES = 5


@dataclass(frozen=True)
class SyncConfig:
    """Knobs of queue draining. Times in seconds.

    Attributes:
        batch_size: queue rows claimed per batch (images + texts), at most.
        batch_bytes: most bytes the values of one claimed batch may take at their caps:
            fewer than ``batch_size`` rows are claimed when ``batch_size`` rows at
            their caps could exceed it (:meth:`FetchCaps.claim_limit`).
        lease_s: how long a claim is kept before others may take it (must exceed the
            time to embed one batch).
        retry_base_s / retry_max_s: backoff after a failure: ``base * 2^(attempts-1)``,
            at most ``max``.
        max_attempts: failures after which a row is given up (``sync --retry-failed``).
        load_threads: decoder processes (and threads feeding them) reading and decoding images.
        limits: per-item limits (None: :meth:`Limits.from_env`).
    """

    batch_size: int = 32
    batch_bytes: int = BATCH_BYTES
    lease_s: float = 600.0
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0
    max_attempts: int = 5
    load_threads: int = 2
    limits: Limits | None = None


@dataclass
class SyncReport:
    """What draining did. ``failed``: ``[{key, modality, error}]`` of this run."""

    table: str
    model_id: str
    version: int
    written: int = 0
    unchanged: int = 0
    gone: int = 0
    failed: list[dict] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0

    def add(self, other: "BatchResult") -> None:
        self.written += other.written
        self.unchanged += other.unchanged
        self.gone += other.gone
        self.failed.extend(other.failed)
        self.batches += 1

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"table": self.table, "model_id": self.model_id, "version": self.version,
                "written": self.written, "unchanged": self.unchanged, "gone": self.gone,
                "failed": self.failed, "batches": self.batches, "seconds": round(self.seconds, 3)}


@dataclass
class BatchResult:
    """One batch: counts of written / unchanged / gone rows and the failures."""

    claimed: int = 0
    written: int = 0
    unchanged: int = 0
    gone: int = 0
    failed: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One attachment version a bundle writes: what :func:`process_batch` works on."""

    attachment: Attachment
    version: Version

    @classmethod
    def resolve(cls, conn, table: str, bundle, schema: str | None = None) -> "Target":
        """The live version of ``table`` matching ``bundle``.

        Raises:
            DatabaseError: not attached. TableDropped: the table was dropped without
            detach. ModelMismatchError: no version of this model.
        """
        att = find(conn, table, schema)
        check_table(conn, att)
        return cls(att, version_for(conn, att, bundle))


def connect(dsn: str | None) -> psycopg.Connection:
    """An autocommit connection for draining queues, at READ COMMITTED whatever the
    server's ``default_transaction_isolation`` (a worker never takes part in the user's
    serializable conflict checks; each of its statements sees the latest commits)."""
    conn = db.connect(dsn, autocommit=True)
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn


def with_retries(fn: Callable[[], object], retries: int = TX_RETRIES):
    """Call ``fn`` (one whole transaction), retrying serialization failures/deadlocks."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except RETRYABLE:
            if attempt == retries:
                raise
            time.sleep(0.02 * 2 ** attempt * (1 + random.random()))


@dataclass
class _Item:
    qid: int
    key: str
    modality: str
    content: str | bytes | None = None   # cleaned text, or image bytes
    digest: str | None = None
    pixels: np.ndarray | None = None     # (3, S, S) float32
    error: str | None = None
    final: bool = False                  # error not worth retrying


def _prepare(row: Fetched, att: Attachment, reader: ImageSource, loader: ImageLoader, caps: FetchCaps,
             stop: Callable[[], bool] | None = None) -> _Item:
    """Turn one ``_sync_fetch`` row into an item: content, hash, pixels, or an error.

    Any failure on the row's value is the row's own (recorded, counted as an attempt);
    a key or value over its cap (not fetched) fails without retry. Only
    :class:`Interrupted` (a stop request) propagates.
    """
    qid, key, modality, text, image_ref, image_data, stored = (
        row.id, row.key, row.modality, row.text_value, row.image_ref, row.image_data, row.stored_hash)
    item = _Item(qid, key, modality)
    where = f"{att.qualified}[{printable(key, 200)}]"
    refused = caps.refusal(att, row, where)
    if refused is not None:
        item.error, item.final = printable(refused), True
        return item
    try:
        if modality == "text":
            if text is None:
                raise InputError(f"{where}.{att.text_column}: text is NULL")
            limits = loader.limits
            item.content = clean_text(text, f"{where}.{att.text_column}", max_chars=limits.max_text_chars)
            item.digest = sha256(item.content.encode("utf-8"))
        else:
            value = image_data if att.image_source == "bytea" else image_ref
            loaded = loader.load(ImageJob(where=f"{where}.{att.image_column}", source=reader, value=value,
                                          known=stored), stop)
            item.digest, item.pixels = loaded.digest, loaded.pixels
    except Interrupted:
        raise
    except InputError as e:
        # a text (or a NULL) only changes through an UPDATE, which re-enqueues the row
        item.error, item.final = printable(e), modality == "text" or not is_retryable(e)
    except Exception as e:  # noqa: BLE001 - an unexpected error on one value fails that row only
        item.error, item.final = printable(f"{where}: {type(e).__name__}: {e}"), False
    return item


def _encode(bundle, items: list[_Item]) -> list[np.ndarray | None]:
    """Embeddings ``(D,) float32`` per item, None where the encoder refused it alone."""
    if not items:
        return []
    try:
        if items[0].modality == "text":
            emb = bundle.encode_texts([it.content for it in items])
        else:
            emb = bundle.encode_pixels(np.stack([it.pixels for it in items]))
        return list(np.asarray(emb, dtype=np.float32))
    except JointEmbedError as e:
        if len(items) == 1:
            items[0].error, items[0].final = (e.reason if isinstance(e, ItemError) else str(e)), True
            return [None]
        return [v for it in items for v in _encode(bundle, [it])]


def process_batch(conn: psycopg.Connection, target: Target, bundle, cfg: SyncConfig = SyncConfig(),
                  pool: ThreadPoolExecutor | None = None, loader: ImageLoader | None = None,
                  stop: Callable[[], bool] | None = None) -> BatchResult:
    """Claim, embed and write one batch (see the module docstring).

    Args:
        conn: an autocommit connection (each step is its own transaction).
        bundle: must be the target version's model (checked: ModelMismatchError).
        loader: decoder processes to use (default: the process's shared ones).
        stop: polled while images load; when true the batch stops (:class:`Interrupted`).
    Returns:
        :class:`BatchResult`; ``claimed == 0`` means nothing was ready.
    Raises:
        ModelMismatchError, DatabaseError, Interrupted; anything else unexpected after
        releasing the claim (so other workers can take the rows at once).
    """
    att, ver = target.attachment, target.version
    if bundle.model_id != ver.model_id or int(bundle.dim) != ver.dim:
        raise ModelMismatchError(f"version {ver.version} of table {att.qualified} is model {ver.model_id} "
                                 f"(dim {ver.dim}), but the bundle is {bundle.model_id} (dim {bundle.dim})")
    token = uuid.uuid4()
    loader = loader or shared_loader(bundle.image_spec, cfg.limits, workers=cfg.load_threads)
    caps = FetchCaps.of(att, loader.limits)
    limit = caps.claim_limit(att, cfg.batch_size, cfg.batch_bytes)
    claimed = with_retries(lambda: _call(conn, "SELECT jointembed._sync_claim(%s, %s, %s, %s, %s)",
                                         [att.id, ver.version, token, limit, f"{cfg.lease_s} seconds"])[0])
    result = BatchResult(claimed=claimed)
    if not claimed:
        return result
    try:
        rows = [Fetched(*r) for r in _call(
            conn, "SELECT * FROM jointembed._sync_fetch(%s, %s, %s, %s::integer, %s::integer, %s::integer, "
            "%s::bigint)", [att.id, ver.version, token, *caps.sql_args()], fetch="all")]
        _embed_and_write(conn, target, bundle, cfg, token, rows, result, pool, loader, caps, stop)
    except BaseException:
        try:
            _call(conn, "SELECT jointembed._sync_release(%s, %s)", [att.id, token])
        except Exception:  # noqa: BLE001 - the lease returns them anyway
            pass
        raise
    return result


def _embed_and_write(conn, target: Target, bundle, cfg: SyncConfig, token, rows: list[Fetched],
                     result: BatchResult, pool: ThreadPoolExecutor | None, loader: ImageLoader, caps: FetchCaps,
                     stop: Callable[[], bool] | None = None) -> None:
    att, ver = target.attachment, target.version
    reader = att.image_reader()
    present = [r for r in rows if r.present]
    gone = [r.id for r in rows if not r.present]
    prep = (lambda r: _prepare(r, att, reader, loader, caps, stop))
    items = list(pool.map(prep, present)) if pool else [prep(r) for r in present]
    stored = {r.id: r.stored_hash for r in rows}
    same = [it for it in items if it.error is None and it.digest == stored.get(it.qid)]
    fresh = [it for it in items if it.error is None and it.digest != stored.get(it.qid)]
    texts = [it for it in fresh if it.modality == "text"]
    images = [it for it in fresh if it.modality == "image"]  # pixels loaded by _prepare
    done: list[tuple[_Item, np.ndarray]] = []
    for group in (texts, images):
        for it, emb in zip(group, _encode(bundle, group)):
            if emb is not None:
                done.append((it, emb))
    failed = [it for it in items if it.error is not None]
    bad = next((e.shape for _, e in done if e.shape != (ver.dim,)), None)
    if bad is not None:
        raise ModelMismatchError(f"the bundle {bundle.model_id} returned embeddings of shape {bad}, "
                                 f"but table {att.qualified} stores vector({ver.dim})")

    # one _sync_complete call per batch: embeddings, unchanged rows (hash only), gone rows
    finished = ([(it.qid, it.digest, e) for it, e in done] + [(it.qid, it.digest, None) for it in same]
                + [(qid, None, None) for qid in gone])

    def write():
        with conn.transaction():
            n = 0
            if finished:
                hashes = [h for _, h, _ in finished]
                embs = [e for _, _, e in finished]
                n = conn.execute("SELECT jointembed._sync_complete(%s, %s, %s, %s, %s, %s)",
                                 [att.id, ver.version, token, [q for q, _, _ in finished],
                                  hashes if any(h is not None for h in hashes) else None,
                                  embs if any(e is not None for e in embs) else None]).fetchone()[0]
            if failed:
                conn.execute("SELECT jointembed._sync_fail(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                             [att.id, ver.version, token, [it.qid for it in failed],
                              [it.error for it in failed], [it.final for it in failed],
                              cfg.retry_base_s, cfg.retry_max_s, cfg.max_attempts])
            return n

    result.written = with_retries(write)
    result.unchanged, result.gone = len(same), len(gone)
    result.failed = [{"key": it.key, "modality": it.modality, "error": it.error} for it in failed]


def drain(conn: psycopg.Connection, target: Target, bundle, cfg: SyncConfig = SyncConfig(), *,
          progress: bool = False, stop: Callable[[], bool] = lambda: False,
          on_batch: Callable[[BatchResult], None] | None = None,
          loader: ImageLoader | None = None, max_batches: int | None = None) -> SyncReport:
    """Process batches of ``target`` until nothing is ready (or ``stop()`` is true).

    Rows waiting for a retry (backoff) are not waited for. ``loader``: decoder processes
    to use (default: the process's shared ones). ``max_batches``: return after that many
    batches even if more rows are ready (a worker serving several tables takes turns, so
    a table full of slow rows cannot starve the others). Returns a :class:`SyncReport`.

    Raises:
        Interrupted: ``stop()`` turned true while images of a batch were loading (the
            batch's claim is released; nothing of it is written).
    """
    att, ver = target.attachment, target.version
    report, t0 = SyncReport(att.qualified, ver.model_id, ver.version), time.perf_counter()
    total = _ready_count(conn, target) if progress else None
    bar = _bar(total, att.qualified, progress)
    pool = ThreadPoolExecutor(max(1, cfg.load_threads), thread_name_prefix="jointembed-sync")
    loader = loader or shared_loader(bundle.image_spec, cfg.limits, workers=cfg.load_threads)
    halt = threading.Event()  # set on the way out (e.g. SIGTERM): loads in flight stop at once
    try:
        while not stop():
            res = process_batch(conn, target, bundle, cfg, pool, loader, lambda: stop() or halt.is_set())
            if not res.claimed:
                break
            report.add(res)
            bar.update(res.claimed)
            if on_batch is not None:
                on_batch(res)
            if max_batches is not None and report.batches >= max_batches:
                break
    finally:
        halt.set()
        pool.shutdown(wait=True)
        bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _ready_count(conn, target: Target) -> int:
    st = _call(conn, "SELECT jointembed.sync_status(%s, 0, 0)", [target.attachment.id])[0]  # no missing-row scan
    if st.get("version") == target.version.version:
        return int(st["ready"])
    return int((st.get("building") or {}).get("ready", 0))


def _bar(total, desc: str, enabled: bool):
    from ..progress import progress

    return progress(total, desc, unit="row", enabled=enabled)


def sync_table(conn, table: str, bundle, *, schema: str | None = None, cfg: SyncConfig = SyncConfig(),
               progress: bool = False, retry_failed: bool = False, rescan: bool = False) -> SyncReport:
    """Drain ``table``'s queue once with ``bundle`` and return (``jointembed sync``).

    Args:
        conn: DSN / connection / engine (an autocommit connection is opened for a DSN).
        retry_failed: first make given-up rows ready again.
        rescan: first enqueue every row (content hashes skip the unchanged ones).
    Raises:
        ModelMismatchError: ``bundle`` is not the table's model (nor the one a reembed
            is building), before any write. DatabaseError: not attached.
    """
    if conn is None or isinstance(conn, str):
        with connect(conn) as c:
            return sync_table(c, table, bundle, schema=schema, cfg=cfg, progress=progress,
                              retry_failed=retry_failed, rescan=rescan)
    with db.borrow(conn) as c:
        target = Target.resolve(c, table, bundle, schema)
        if rescan:
            _call(c, "SELECT jointembed.sync_rescan(%s)", [target.attachment.id])
        if retry_failed:
            _call(c, "SELECT jointembed.sync_retry_failed(%s, %s)", [target.attachment.id, target.version.version])
        return drain(c, target, bundle, cfg, progress=progress)
