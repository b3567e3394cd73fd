"""Distributed backfill on Ray Data: the single-machine ingest, run per partition on a worker pool.

The work (image paths or captions) is cut, in order, into partitions of
``batches_per_call(modality) * batch_size`` items (whole caption sort windows), and becomes a Ray Dataset of one row per
partition (``keys``, ``values``: the resolved paths, or the captions). ``map_batches``
hands partitions to a pool of :class:`IngestWorker` actors. Each actor loads the ONNX
bundle once and opens one database connection, then calls
:func:`jointembed_pg.ingest.pipeline.index_images` / :func:`~jointembed_pg.ingest.pipeline.index_texts` on
every partition it gets. So the keys, content hashes, model id, the skipping of
unchanged items, the per-batch transactions (``Collection.upsert``) and the recorded
:class:`~jointembed_pg.ingest.pipeline.Failure` entries are those of the single-machine path.
Partitions start on the single-machine path's batch boundaries, so every encoder batch
holds the same items as there, and the stored float32 embeddings are byte-identical
(this matters for captions: they are padded per batch, and a different padded length
moves the last bits).

A job killed part-way leaves whole committed batches behind. A rerun skips them by
content hash, and the upsert by ``(modality, key)`` never writes a key twice. Ray
retries the batch of an actor that died, which is safe for the same reasons.

Ray is an optional extra (``pip install 'jointembed-pg[ray]'``), imported only when a
job starts.

>>> report = index_images_ray(dsn, "photos", "/models/default", ["/data/photos"], workers=8)
>>> report.written, report.failed
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .. import errors
from ..ingest import pipeline as ingest, readers
from ..errors import JointEmbedError, ModelMismatchError
from ..limits import Limits

#: What to install when Ray is missing.
RAY_EXTRA = "pip install 'jointembed-pg[ray]'  (or: pip install 'ray[data]')"
#: Encoder batches per Ray batch and per input block: one ``ingest.index_*`` call decodes
#: ahead and writes behind within it, and commits each encoder batch in its own transaction.
BATCHES_PER_CALL = 4
MODALITIES = ("image", "text")


def batches_per_call(modality: str) -> int:
    """Encoder batches per ingest call: :data:`BATCHES_PER_CALL` for images, one caption
    sort window (:data:`ingest.TEXT_SORT_WINDOW`) for captions, so that a call holds whole
    windows and captions are batched exactly as on a single machine."""
    return ingest.TEXT_SORT_WINDOW if modality == "text" else BATCHES_PER_CALL


@dataclass(frozen=True)
class RayConfig:
    """How a job runs on Ray.

    Attributes:
        workers: actors in the pool; each holds one loaded bundle and one connection.
        batch_size: items per encoder batch and per write transaction.
        cpus_per_worker: Ray CPUs reserved per actor; also onnxruntime's intra-op threads.
        address: Ray cluster to join (``"auto"``, ``"ray://head:10001"``); ``None`` joins
            the cluster this process is already connected to, else starts a local one
            with ``workers * cpus_per_worker`` CPUs for the job's duration.
        progress: a progress bar on stderr (items done).
    """

    workers: int = 2
    batch_size: int = ingest.IMAGE_BATCH
    cpus_per_worker: float = 1.0
    address: str | None = None
    progress: bool = False

    def __post_init__(self):
        if int(self.workers) != self.workers or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")


@dataclass(frozen=True)
class Job:
    """Where a job writes and with which model; sent to every worker (small, picklable).

    ``dsn`` must be reachable from the workers; ``bundle_dir`` must exist on every node
    (a shared file system, or the same path baked into the image).
    """

    #: never in ``repr`` (Ray prints task and actor arguments in its logs and errors)
    dsn: str = field(repr=False)
    collection: str
    bundle_dir: str
    model_id: str
    dim: int
    #: the driver's per-item limits (``Limits.from_env()`` there), applied on every node
    limits: Limits = field(default_factory=Limits)


def require_ray():
    """Import and return ``ray`` (with Ray Data).

    Raises:
        JointEmbedError: Ray is not installed; the message says what to install.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise JointEmbedError(f"the Ray engine needs Ray Data, which is not installed: {RAY_EXTRA}") from e
    return ray


def prepare_job(dsn: str | None, collection: str, bundle_dir: str | Path) -> Job:
    """Resolve the DSN, validate the bundle and create the collection if needed (in the driver).

    Raises:
        BundleError: bad bundle. ModelMismatchError: the collection holds another model.
        DatabaseError: the database is unreachable.
    """
    from .. import db
    from ..model.bundle import Bundle, resolve
    from ..search.store import Store

    path = resolve(bundle_dir).resolve()
    bundle = Bundle.load(path)
    dsn = db.resolve_dsn(dsn)
    with Store(dsn) as store:
        store.collection(collection, model_id=bundle.model_id, dim=bundle.dim, create=True)
    return Job(dsn, collection, str(path), bundle.model_id, bundle.dim, Limits.from_env())


class IngestWorker:
    """A Ray Data callable class: one loaded bundle and a Store (at most 2 connections) per actor.

    ``__call__`` takes a numpy batch of partitions ``{"keys", "values", "errors": (P,)
    object}`` (each element a sequence: str keys; image paths or captions; ``None`` or
    the reason a path is unusable) and runs one ingest call per partition; or a batch of
    rows ``{"key": (B,) str, "value": (B,) str}``, taken as one partition. It returns a
    one-row summary of what it did: ``{"total", "written", "unchanged": (1,) int64,
    "failed": (1,) JSON [[key, error], ...]}``.
    """

    def __init__(self, job: Job, modality: str, batch_size: int, threads: int | None = None):
        from ..model.bundle import Bundle
        from ..search.store import Store

        guard_secrets(job.dsn)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality, self.batch_size = modality, batch_size
        self.bundle = Bundle.load(job.bundle_dir, intra_op_threads=threads)
        if self.bundle.model_id != job.model_id:
            raise ModelMismatchError(f"{job.bundle_dir} on this worker holds model {self.bundle.model_id!r}, "
                                     f"the job's is {job.model_id!r}: the nodes see different bundle files")
        self.store = Store(job.dsn, max_size=2)   # the ingest writer thread + this one
        self.collection = self.store.collection(job.collection, model_id=job.model_id, dim=job.dim)
        self.limits = job.limits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "keys" in batch:
            parts = zip(batch["keys"], batch["values"], batch["errors"])
        else:
            parts = [(batch["key"], batch["value"], [None] * len(batch["key"]))]
        report = ingest.IngestReport(self.modality)
        for keys, values, errors in parts:
            _add(report, self._index([str(k) for k in keys], [str(v) for v in values], [e or None for e in errors]))
        return summarize(report)

    def _index(self, keys: list[str], values: list[str], errors: list[str | None]) -> ingest.IngestReport:
        if self.modality == "image":
            records = [readers.PathRecord(k, Path(v), e) for k, v, e in zip(keys, values, errors)]
            return ingest.index_images(self.collection, self.bundle, records, batch_size=self.batch_size,
                                       decode_threads=1, progress=False, limits=self.limits)
        records = [readers.TextRecord(k, v, e) for k, v, e in zip(keys, values, errors)]
        return ingest.index_texts(self.collection, self.bundle, records, batch_size=self.batch_size, progress=False,
                                  limits=self.limits)


def _add(report: ingest.IngestReport, other: ingest.IngestReport) -> None:
    report.total += other.total
    report.written += other.written
    report.unchanged += other.unchanged
    report.failed += other.failed


def summarize(report: ingest.IngestReport) -> dict[str, np.ndarray]:
    """An :class:`~jointembed_pg.ingest.pipeline.IngestReport` as the one-row batch a worker returns."""
    failed = json.dumps([[f.key, f.error] for f in report.failed])
    return {"total": np.array([report.total], np.int64), "written": np.array([report.written], np.int64),
            "unchanged": np.array([report.unchanged], np.int64), "failed": np.array([failed], dtype=object)}


def merge_summary(report: ingest.IngestReport, summary: dict[str, np.ndarray]) -> int:
    """Add a batch of worker summaries into ``report``; return the number of items they cover."""
    report.written += int(np.sum(summary["written"]))
    report.unchanged += int(np.sum(summary["unchanged"]))
    for failed in summary["failed"]:
        report.failed.extend(ingest.Failure(str(k), str(e)) for k, e in json.loads(failed))
    return int(np.sum(summary["total"]))


def index_images_ray(dsn: str | None, collection: str, bundle_dir: str | Path, paths: Iterable[str | Path], *,
                     workers: int = 2, batch_size: int = ingest.IMAGE_BATCH, **options: Any) -> ingest.IngestReport:
    """Embed image files or directories into ``collection`` on a Ray worker pool.

    Same contract as :func:`jointembed_pg.ingest.pipeline.index_images` (key = resolved path,
    content hash = sha256 of the file bytes, unchanged items skipped, bad files in
    ``failed``), with the bundle loaded once per worker.

    Args:
        dsn: PostgreSQL DSN reachable from every worker (``None``: ``$DATABASE_URL``,
            else the embedded server, which only local workers can reach).
        collection: created with the bundle's model if it does not exist.
        bundle_dir: bundle directory or name; it must exist on every node.
        paths: files and directories (expanded in the driver, recursively).
        workers, batch_size, options: see :class:`RayConfig` (``cpus_per_worker``,
            ``address``, ``progress``).
    Returns:
        The merged :class:`~jointembed_pg.ingest.pipeline.IngestReport`.
    Raises:
        JointEmbedError: Ray is missing, the bundle or database is unusable, or a batch
            failed on the database (committed batches stay; a rerun resumes).
    """
    cfg = RayConfig(workers=workers, batch_size=batch_size, **options)
    scan = readers.scan_images(paths)
    report = _run("image", dsn, collection, bundle_dir, scan.records, cfg)
    report.ignored = scan.ignored
    return report


def index_texts_ray(dsn: str | None, collection: str, bundle_dir: str | Path, file: str | Path, *,
                    workers: int = 2, batch_size: int = ingest.TEXT_BATCH, **options: Any) -> ingest.IngestReport:
    """Embed the captions of ``file`` (CSV, JSONL or Flickr8K tokens) on a Ray worker pool.

    Same contract as :func:`jointembed_pg.ingest.pipeline.index_texts`; other arguments as
    :func:`index_images_ray`. The file is read in the driver; bad lines go to ``failed``.
    """
    cfg = RayConfig(workers=workers, batch_size=batch_size, **options)
    return _run("text", dsn, collection, bundle_dir, list(readers.read_texts(file)), cfg)


def _run(modality: str, dsn: str | None, collection: str, bundle_dir: str | Path,
         records: Sequence[readers.PathRecord | readers.TextRecord], cfg: RayConfig) -> ingest.IngestReport:
    t0 = time.perf_counter()
    ray = require_ray()
    report = ingest.IngestReport(modality, total=len(records))
    items = _work_items(modality, records, report)
    job = prepare_job(dsn, collection, bundle_dir)
    if items:
        parts = partitions(items, cfg.batch_size * batches_per_call(modality))
        with ray_session(ray, cfg):
            ds = ray.data.from_items(parts, override_num_blocks=len(parts))
            _execute(ds, job, modality, cfg, report, rows_per_call=1, total=len(items))
    report.seconds = time.perf_counter() - t0
    return report


def _work_items(modality: str, records, report: ingest.IngestReport) -> list[tuple[str, str, str | None]]:
    """``(key, value, error)`` in the order and with the members of the single path's batches.

    ``index_images`` batches every record (an unusable path fails inside its batch);
    ``index_texts`` reports bad lines first and batches the good ones.
    """
    if modality == "image":
        return [(r.key, str(r.path), r.error) for r in records]
    report.failed.extend(ingest.Failure(r.key, r.error) for r in records if r.error)
    return [(r.key, r.text, None) for r in records if not r.error]


def partitions(items: Sequence[tuple[str, str, str | None]], size: int) -> list[dict[str, list]]:
    """``(key, value, error)`` items cut in order into rows ``{"keys", "values", "errors"}`` of ``size``."""
    return [{"keys": [k for k, _, _ in part], "values": [v for _, v, _ in part], "errors": [e for _, _, e in part]}
            for part in (items[i:i + size] for i in range(0, len(items), size))]


def run_dataset(ds: Any, job: Job, modality: str, cfg: RayConfig, report: ingest.IngestReport, *,
                total: int | None = None) -> ingest.IngestReport:
    """Run the worker pool over your own Ray Dataset of rows; merge what it did into ``report``.

    For use inside your own Ray pipeline (``ray.init`` done, ``job`` from
    :func:`prepare_job`): ``ds`` has the columns ``key`` (resolved path, or caption id) and
    ``value`` (the path, or the caption); Ray batches it by ``batches_per_call(modality) *
    cfg.batch_size`` rows per ingest call. Caption batches are then composed as Ray cuts
    them, so caption embeddings can differ from a single-machine run's in the last float
    bits (images are not affected); :func:`index_texts_ray` keeps the boundaries.
    """
    return _execute(ds, job, modality, cfg, report, rows_per_call=cfg.batch_size * batches_per_call(modality),
                    total=total)


def _execute(ds: Any, job: Job, modality: str, cfg: RayConfig, report: ingest.IngestReport, *,
             rows_per_call: int, total: int | None) -> ingest.IngestReport:
    out = ds.map_batches(
        IngestWorker, fn_constructor_args=(job, modality, cfg.batch_size, max(1, int(cfg.cpus_per_worker))),
        batch_size=rows_per_call, batch_format="numpy",
        compute=_actor_pool(cfg.workers), num_cpus=cfg.cpus_per_worker)
    bar = ingest._progress(total, f"{modality}s (ray)", cfg.progress)
    try:
        for summary in out.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(merge_summary(report, summary))
    except Exception as e:  # Ray wraps worker errors in its own exception types
        raise job_error(e, job, modality) from e
    finally:
        bar.close()
    return report


def guard_secrets(dsn: str) -> None:
    """In a worker process (a Ray actor, possibly on another node): register the job DSN's
    password and mask it in everything the process writes to stdout/stderr, which Ray
    keeps in its log files and may stream to the driver (the CLI does the same in the
    driver, :func:`jointembed_pg.cli._guard_secrets`)."""
    import sys

    errors.register_dsn(dsn)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, errors.ScrubbingStream):
            setattr(sys, name, errors.ScrubbingStream(stream))


def job_error(e: BaseException, job: Job, modality: str) -> JointEmbedError:
    """The error a failed job raises in the driver: the worker's own error class and
    message (:func:`worker_error`), with the job DSN's password masked, whatever the
    worker's message quoted (a library caller has no scrubbing stream)."""
    kind, message = worker_error(e)
    return kind(errors.scrub(f"distributed {modality} job failed: {message}", job.dsn))


def _actor_pool(workers: int):
    import ray.data

    return ray.data.ActorPoolStrategy(size=workers)


_TRACEBACK_ERROR = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def worker_error(e: BaseException) -> tuple[type[JointEmbedError], str]:
    """The worker's own error inside Ray's wrappers: ``(jointembed error class, "Type: message")``.

    Ray re-raises a worker's exception as its ``cause`` when it can, and otherwise (an
    actor that died in ``__init__``) only as traceback text in its message; the last
    ``Type: message`` line of that text is the worker's error.
    """
    chain, cur = [], e
    while isinstance(cur, BaseException) and cur not in chain:
        chain.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__
    for exc in chain:
        if isinstance(exc, JointEmbedError):
            return type(exc), f"{type(exc).__name__}: {str(exc).strip()}"
    for line in reversed("\n".join(str(exc) for exc in chain).splitlines()):
        if m := _TRACEBACK_ERROR.match(line):
            name = m.group(1).rsplit(".", 1)[-1]
            kind = getattr(errors, name, None)
            ours = isinstance(kind, type) and issubclass(kind, JointEmbedError)
            return (kind if ours else JointEmbedError), f"{name}: {m.group(2).strip()}"
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return JointEmbedError, f"{type(e).__name__}: {lines[0] if lines else ''}"


@contextmanager
def ray_session(ray: Any, cfg: RayConfig) -> Iterator[None]:
    """Use the Ray cluster already joined, or join ``cfg.address``, or start a local one.

    A cluster this function joined or started is left (and a local one stopped) on exit.
    Ray Data's progress bars and INFO logs are turned off; use ``cfg.progress``.
    """
    owned = not ray.is_initialized()
    if owned:
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if cfg.address:
            ray.init(address=cfg.address, **quiet)
        else:
            ray.init(num_cpus=math.ceil(cfg.workers * cfg.cpus_per_worker), **quiet)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        yield
    finally:
        if owned:
            ray.shutdown()
