"""The long-running sync worker (``jointembed worker``).

Drains the queues of attached tables (:func:`jointembed_pg.sync.drain.drain`), then
sleeps until a trigger's ``NOTIFY jointembed_sync`` arrives or ``poll_s`` seconds pass
(polling also picks up rows whose retry time has come, and attachments created later).
SIGTERM / SIGINT stop it: between batches at once, and within a fraction of a second
while a batch's images load (the batch's claim is released, no attempt is counted).
Images are decoded in decoder processes owned by the worker (:mod:`jointembed_pg.ingest.sandbox`),
so a hostile row can neither hang, crash nor exhaust the worker. Every event is one JSON line on
stderr: ``{"ts", "level", "event", "worker", ...}``; the DSN never appears in them.

Any number of workers (processes or threads, each with its own :class:`Worker`) can run
at once: claims use ``FOR UPDATE SKIP LOCKED`` with a lease, so each row is embedded by
one of them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from typing import IO, Sequence

import psycopg
from psycopg import sql

from .. import db
from ..errors import DatabaseError, ModelMismatchError
from .catalog import TableDropped, list_attachments, one_line
from ..ingest.sandbox import Interrupted, shared_loader
from .drain import BatchResult, SyncConfig, Target, connect, drain

CHANNEL = "jointembed_sync"
#: Seconds between polls when no notification arrives.
POLL_S = 5.0
#: Longest single wait, so a stop request is noticed quickly.
_WAIT_SLICE_S = 0.5
#: Batches of one table before the worker turns to the next (tables take turns).
ROUND_BATCHES = 4
#: Seconds to wait before reconnecting after a lost connection (doubles, at most 60).
RECONNECT_S = 1.0


class JsonLog:
    """Writes one JSON object per line: ``log("batch", table=..., written=3)``."""

    def __init__(self, stream: IO[str] | None = None, **static):
        self.stream = stream if stream is not None else sys.stderr
        self.static = static
        self._lock = threading.Lock()

    def __call__(self, event: str, level: str = "info", **fields) -> None:
        rec = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
               "level": level, "event": event, **self.static, **fields}
        line = json.dumps(rec, default=str, ensure_ascii=False)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class Worker:
    """Keeps attached tables embedded with one bundle until stopped.

    Args:
        dsn: database (None: ``$DATABASE_URL`` / embedded server).
        bundle: the model; only tables (or reembed builds) of this model are served.
        tables: ``[(table, schema or None)]`` to serve; None: every attachment of the
            bundle's model, including ones attached later.
        cfg: batch size, lease, retry policy.
        poll_s: seconds between polls without notifications.
        log: a :class:`JsonLog` (default: stderr).
    """

    def __init__(self, dsn: str | None, bundle, *, tables: Sequence[tuple[str, str | None]] | None = None,
                 cfg: SyncConfig = SyncConfig(), poll_s: float = POLL_S, log: JsonLog | None = None,
                 name: str | None = None):
        self.dsn, self.bundle, self.tables, self.cfg, self.poll_s = dsn, bundle, tables, cfg, poll_s
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10000}"
        self.log = log or JsonLog(worker=self.name)
        self._stop = threading.Event()
        self._skipped: set[str] = set()
        self._started = False
        self._connected = False  # set on each successful (re)connect; resets the backoff
        self.totals = {"batches": 0, "written": 0, "unchanged": 0, "failed": 0}

    def stop(self, *_args) -> None:
        """Ask the worker to stop after the batch in hand (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, until_idle: bool = False, handle_signals: bool = True) -> dict:
        """Serve until stopped (or, with ``until_idle``, until every queue is drained once).

        Returns the totals ``{batches, written, unchanged, failed}``.
        Raises:
            ModelMismatchError: named tables and none is of the bundle's model (at start,
                before any write, or after a reembed switched all of them).
            DatabaseError: the database cannot be reached at start.
        """
        old = self._install_signals() if handle_signals else {}
        try:
            delay = RECONNECT_S
            while not self.stopping:
                try:
                    self._serve(until_idle)
                    break
                except ModelMismatchError:
                    raise
                except (psycopg.OperationalError, DatabaseError) as e:
                    if not self._started:
                        raise  # unreachable at start: fail loudly, not retry forever
                    if self._connected:  # a fresh outage after a good connection: start over
                        delay, self._connected = RECONNECT_S, False
                    self.log("db_error", "error", error=one_line(e, self.dsn), retry_in_s=delay)
                    self._stop.wait(delay)
                    delay = min(60.0, delay * 2)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if self._started:  # a worker that never started has nothing to report
                self.log("stop", **self.totals)
        return dict(self.totals)

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _serve(self, until_idle: bool) -> None:
        with connect(self.dsn) as conn, \
                db.connect(self.dsn, autocommit=True, migrate=False) as listen:
            loader = shared_loader(self.bundle.image_spec, self.cfg.limits, workers=self.cfg.load_threads)
            listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            targets = self._targets(conn, strict=True)
            self._started = self._connected = True
            self.log("start", model_id=self.bundle.model_id, dim=int(self.bundle.dim),
                     tables=[t.attachment.qualified for t in targets], database=conn.info.dbname)
            while not self.stopping:
                busy = 0
                for t in targets:
                    if self.stopping:
                        break
                    try:
                        rep = drain(conn, t, self.bundle, self.cfg, stop=lambda: self.stopping,
                                    on_batch=lambda r, t=t: self._on_batch(t, r), loader=loader,
                                    max_batches=ROUND_BATCHES)
                    except Interrupted:  # a stop request cut a batch short; its claim is released
                        return
                    except DatabaseError as e:  # this table only (dropped, switched model...)
                        self.log("table_error", "error", table=t.attachment.qualified, error=str(e))
                        continue
                    busy += rep.batches
                if until_idle and not busy:
                    return
                if not busy:
                    self._wait(listen)
                targets = self._targets(conn, strict=True)

    def _targets(self, conn, *, strict: bool) -> list[Target]:
        if self.tables is None:
            pairs = [(a.table_name, a.schema_name) for a in list_attachments(conn)]
        else:
            pairs = list(self.tables)
        out = []
        for table, schema in pairs:
            try:
                out.append(Target.resolve(conn, table, self.bundle, schema))
                self._skipped.discard(f"{schema}.{table}")
            except (ModelMismatchError, DatabaseError) as e:
                if f"{schema}.{table}" not in self._skipped:
                    self._skipped.add(f"{schema}.{table}")
                    if isinstance(e, TableDropped):  # skipped until it is detached (logged once)
                        self.log("table_error", "error", table=e.table, error=str(e))
                        continue
                    kind = "model_mismatch" if isinstance(e, ModelMismatchError) else "not_attached"
                    self.log(kind, "error" if self.tables is not None else "warning", table=table,
                             schema=schema, error=str(e))
        if strict and self.tables is not None and not out:
            raise ModelMismatchError(f"none of the tables {', '.join(t for t, _ in self.tables)} can be "
                                     f"served with model {self.bundle.model_id} (dim {self.bundle.dim})")
        return out

    def _on_batch(self, target: Target, res: BatchResult) -> None:
        self.totals["batches"] += 1
        self.totals["written"] += res.written
        self.totals["unchanged"] += res.unchanged
        self.totals["failed"] += len(res.failed)
        self.log("batch", table=target.attachment.qualified, version=target.version.version,
                 claimed=res.claimed, written=res.written, unchanged=res.unchanged, gone=res.gone,
                 failed=len(res.failed))
        for f in res.failed:
            self.log("row_failed", "warning", table=target.attachment.qualified, **f)

    def _wait(self, listen: psycopg.Connection) -> None:
        """Return on a notification, after ``poll_s``, or soon after a stop request."""
        deadline = time.monotonic() + self.poll_s
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            got = any(True for _ in listen.notifies(timeout=min(_WAIT_SLICE_S, left), stop_after=1))
            if got:
                # more may be queued (one per committed transaction): take them, then work.
                # (Not inside the loop above: the generator holds the connection's lock.)
                for _ in listen.notifies(timeout=0.01):
                    pass
                return
