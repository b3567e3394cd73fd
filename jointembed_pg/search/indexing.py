"""HNSW index builds that never block writers, and the storage types an index can use.

:func:`ensure_hnsw` builds one partial HNSW index with ``CREATE INDEX CONCURRENTLY``:

* **Writers are never blocked.** A concurrent build takes ``SHARE UPDATE EXCLUSIVE`` on
  the table, which conflicts with no ``INSERT`` / ``UPDATE`` / ``DELETE``; a plain
  ``CREATE INDEX`` takes ``SHARE`` and blocks every writer for the whole build (and, queued
  behind a long transaction, from the moment it starts waiting).
* **Interrupted builds are repaired.** A failed or killed concurrent build leaves an index
  with ``pg_index.indisvalid = false`` (never used by the planner, still maintained by
  writes). The next call finds it, drops it (``DROP INDEX CONCURRENTLY``) and builds it
  again. A session-level advisory lock per index tells a live build (wait for it) from a
  dead one's leftover (repair it); waiting polls ``pg_try_advisory_lock`` so the waiter
  never holds a snapshot the build would wait for.
* **Memory.** ``maintenance_work_mem`` is raised for the build to what pgvector's in-memory
  graph needs (:func:`hnsw_graph_bytes`), within a cap (:data:`MEMORY_CAP_ENV`, default
  :data:`DEFAULT_MEMORY_CAP`); a graph that outgrows it makes pgvector finish on disk,
  ~2.5x slower here. The server's value is never lowered.
* **Visibility.** Progress from ``pg_stat_progress_create_index`` (a tqdm bar, or one log
  line every :data:`LOG_EVERY_S` seconds), read on a second connection opened with the
  building connection's parameters; server notices (e.g. pgvector's "hnsw graph no longer
  fits into maintenance_work_mem") go to the ``jointembed_pg.search.indexing`` logger.

``CREATE INDEX CONCURRENTLY`` cannot run inside a transaction block: on a connection with
an open transaction (the caller's) the index is built with a plain ``CREATE INDEX`` inside
it, and a warning says that writers wait meanwhile.

What an index is and needs (storage types, index kinds, the ``binary-ivf`` lists rule,
the memory sizing, :class:`IndexSpec`) is :mod:`jointembed_pg.search.index_specs`; its
public names are importable from here too.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .. import progress as _progress
from ..errors import DatabaseError
from .index_specs import (  # noqa: F401  (re-exported: the API of index builds)
    DEFAULT_MEMORY_CAP, INDEXES, MAX_HNSW_DIM, MEMORY_CAP_ENV, METHOD, MIN_PGVECTOR, MIN_PGVECTOR_INDEX, OPCLASS,
    STORAGES, IndexSpec, MemoryPlan, check_index, check_storage, hnsw_element_bytes, hnsw_graph_bytes,
    ivf_build_bytes, ivf_lists, memory_cap, parse_memory, plan_memory)

log = logging.getLogger(__name__)

#: Seconds between progress log lines when no progress bar is shown.
LOG_EVERY_S = 10.0
#: Seconds between polls of ``pg_stat_progress_create_index`` / of a busy build lock.
POLL_S = 0.5
#: ``lock_timeout`` of the best-effort drop of an index a failed build just left.
CLEANUP_LOCK_TIMEOUT = "2s"

#: First key of the advisory locks of index builds (the bytes of "jeix").
_LOCK_CLASS = int.from_bytes(b"jeix", "big", signed=True)

_STATE_SQL = """
SELECT i.indexrelid, i.indisvalid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_index i ON i.indexrelid = c.oid
WHERE n.nspname = %(schema)s AND c.relname = %(name)s
"""
_PROGRESS_SQL = """
SELECT phase, tuples_done, blocks_done, blocks_total, lockers_total, lockers_done
FROM pg_stat_progress_create_index WHERE pid = %s
"""


#: An IVFFlat index is outgrown when the lists rule asks for this many times the lists it has.
IVF_OUTGROWN = 4


def ivf_outgrown(conn: psycopg.Connection, spec: IndexSpec) -> str | None:
    """Why the existing IVFFlat index ``spec.name`` no longer fits its rows, or ``None``.

    Its lists were fixed at the build (:func:`ivf_lists` of the rows then: 1 for a collection
    indexed while small or empty); once :func:`ivf_lists` of the rows now is at least
    :data:`IVF_OUTGROWN` times that, every search probes lists :data:`IVF_OUTGROWN` x fuller
    (with 1 list: a Hamming scan of every row), silently. Lists from the index's
    ``reloptions`` (pgvector's default 100 when absent); rows by ``count(*)`` of the modality.
    """
    row = conn.execute(
        # qualified throughout: this runs under the session's search_path (public may hold shadows)
        "SELECT (SELECT CAST(pg_catalog.substring(o, '^lists=([0-9]+)$') AS pg_catalog.int4) "
        "        FROM pg_catalog.unnest(c.reloptions) o "
        "        WHERE pg_catalog.starts_with(o, 'lists=') LIMIT 1) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_am a ON a.oid OPERATOR(pg_catalog.=) c.relam "
        "WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(%s) "
        "AND c.relname OPERATOR(pg_catalog.=) CAST(%s AS pg_catalog.name) "
        "AND a.amname OPERATOR(pg_catalog.=) CAST('ivfflat' AS pg_catalog.name)",
        [spec.schema, spec.name]).fetchone()
    if row is None:
        return None
    lists = row[0] or 100
    rows = conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {} WHERE modality OPERATOR(pg_catalog.=) "
                                "CAST(%s AS pg_catalog.text)").format(spec.table_ident), [spec.modality]).fetchone()[0]
    want = ivf_lists(rows)
    if want < IVF_OUTGROWN * lists:
        return None
    return (f"index {spec.name} has {lists} IVFFlat lists, built for far fewer rows than its {rows} now "
            f"(the rule gives {want}): searches scan ~{rows // lists} rows per probed list; rebuild it: "
            f"DROP INDEX jointembed.{spec.name}, then `jointembed index` / Collection.ensure_index")


# -- the build -------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What :func:`ensure_hnsw` did for one index (``None`` is returned when it existed)."""

    name: str
    concurrent: bool
    rows: int
    memory: MemoryPlan
    repaired: bool = False        # an invalid index left by an interrupted build was dropped
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


def index_state(conn: psycopg.Connection, schema: str, name: str) -> bool | None:
    """``True`` valid, ``False`` invalid (an interrupted or running concurrent build), ``None`` absent.

    A catalog lookup: takes no lock on the table.
    """
    row = conn.execute(_STATE_SQL, {"schema": schema, "name": name}).fetchone()
    return None if row is None else bool(row[1])


def ensure_hnsw(conn: psycopg.Connection, spec: IndexSpec, *, maintenance_work_mem: int | str | None = None,
                cap: int | str | None = None, progress: bool = False) -> BuildReport | None:
    """Build ``spec`` unless a valid index of that name exists (see the module doc).

    Args:
        conn: a prepared connection, idle (build ``CONCURRENTLY``; its autocommit mode is
            switched on for the build and restored) or inside the caller's transaction
            (plain ``CREATE INDEX`` in a savepoint).
        maintenance_work_mem: use exactly this (bytes or ``"2GB"``) instead of the plan.
        cap: upper bound of the planned ``maintenance_work_mem`` (:func:`memory_cap`).
        progress: a tqdm bar on stderr; otherwise progress goes to the log every
            :data:`LOG_EVERY_S` seconds (INFO).
    Returns:
        A :class:`BuildReport`, or ``None`` when a valid index already existed (also when
        another process finished building it while this one waited).
    Raises:
        DatabaseError: the build failed (one line, the psycopg error chained; a best-effort
            drop removes the invalid index it leaves, else the message says the next call
            repairs it).
        psycopg.Error: a catalog lookup or setting failed (e.g. the connection was lost).
        ArgumentError: a bad memory size.
    """
    fixed = None if maintenance_work_mem is None else parse_memory(maintenance_work_mem)
    limit = memory_cap(cap)
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    valid = index_state(conn, spec.schema, spec.name)
    if idle and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.rollback()   # end the read-only transaction the lookup opened, not the caller's
    if valid is True:
        return None
    if not idle:
        log.warning("building %s inside an open transaction: plain CREATE INDEX, writers to %s wait "
                    "until that transaction ends (call from an idle connection to build concurrently)",
                    spec.name, spec.table)
        with conn.transaction():
            return _build(conn, spec, fixed, limit, progress, concurrent=False)
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        if not _lock(conn, spec):
            return None
        try:
            return _build(conn, spec, fixed, limit, progress, concurrent=True)
        finally:
            _quietly(conn, "SELECT pg_catalog.pg_advisory_unlock(%s, pg_catalog.hashtext(%s))", [_LOCK_CLASS, _lock_name(spec)])
    finally:
        if not conn.broken and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.autocommit = autocommit


def _lock_name(spec: IndexSpec) -> str:
    return f"{spec.schema}.{spec.name}"


def _lock(conn: psycopg.Connection, spec: IndexSpec) -> bool:
    """Take the build lock of ``spec``; False when another process built the index meanwhile.

    Polls ``pg_try_advisory_lock``: a waiter blocked in ``pg_advisory_lock`` would hold a
    snapshot that the other session's concurrent build waits for (a deadlock).
    """
    said = False
    while not conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s, pg_catalog.hashtext(%s))",
                           [_LOCK_CLASS, _lock_name(spec)]).fetchone()[0]:
        if not said:
            log.info("index %s: another session is building it; waiting", spec.name)
            said = True
        time.sleep(POLL_S)
    if index_state(conn, spec.schema, spec.name) is True:
        conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, pg_catalog.hashtext(%s))", [_LOCK_CLASS, _lock_name(spec)])
        return False
    return True


def _build(conn: psycopg.Connection, spec: IndexSpec, fixed: int | None, limit: int, progress: bool, *,
           concurrent: bool) -> BuildReport | None:
    state = index_state(conn, spec.schema, spec.name)
    if state is True:
        return None
    repaired = state is False
    if repaired:
        log.info("index %s is INVALID (left by an interrupted build): dropping and rebuilding it", spec.name)
        try:
            conn.execute(sql.SQL("DROP INDEX {} IF EXISTS {}").format(
                sql.SQL("CONCURRENTLY" if concurrent else ""), spec.index_ident))
        except psycopg.Error as e:
            raise _failed(spec, e, left=True) from e
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE modality = %s").format(spec.table_ident),
                        [spec.modality]).fetchone()[0]
    server = parse_memory(conn.execute("SELECT setting::bigint * 1024 FROM pg_settings "
                                       "WHERE name = 'maintenance_work_mem'").fetchone()[0])
    if spec.method == "ivfflat" and spec.lists is None:
        spec.lists = ivf_lists(rows)
    if fixed is not None:
        plan = MemoryPlan(fixed, server, fixed, fixed)
    elif spec.method == "ivfflat":
        need = ivf_build_bytes(spec.lists, spec.dim)
        plan = MemoryPlan(need, server, limit, max(server, min(need, limit)))
    else:
        plan = plan_memory(rows, spec.dim, spec.m, "bit" if spec.binary else spec.storage, server=server, cap=limit)
    if not plan.fits and spec.method == "hnsw":
        log.warning("index %s: the HNSW graph of %d rows needs ~%d MB of maintenance_work_mem, capped at %d MB; "
                    "the build finishes on disk, several times slower (raise the cap: --memory-cap or $%s)",
                    spec.name, rows, plan.needed >> 20, plan.chosen >> 20, MEMORY_CAP_ENV)
    report = BuildReport(spec.name, concurrent, rows, plan, repaired)
    settings = {"maintenance_work_mem": plan.setting}
    if concurrent and conn.info.server_version >= 140000:
        settings["client_connection_check_interval"] = "1s"   # a killed client stops its build
    old = {k: conn.execute("SELECT current_setting(%s)", [k]).fetchone()[0] for k in settings}
    for k, v in settings.items():
        conn.execute("SELECT set_config(%s, %s, %s)", [k, v, not concurrent])

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        text = " ".join(p for p in (diag.message_primary, diag.message_detail, diag.message_hint) if p)
        report.notices.append(text)
        level = logging.WARNING if diag.severity_nonlocalized in ("WARNING", "NOTICE") else logging.INFO
        log.log(level, "server (index %s): %s", spec.name, text)

    monitor = _Monitor(conn, spec.name, rows, progress)
    conn.add_notice_handler(on_notice)
    t0 = time.perf_counter()
    monitor.start()
    try:
        if concurrent:
            conn.execute(spec.create(True))
        else:
            with conn.transaction():   # savepoint: a name race leaves the caller's transaction usable
                conn.execute(spec.create(False))
    except psycopg.errors.DuplicateTable:
        return None   # made meanwhile by a session that does not take the build lock
    except psycopg.Error as e:
        raise _failed(spec, e, left=concurrent and _drop_invalid(conn, spec)) from e
    finally:
        monitor.stop()
        conn.remove_notice_handler(on_notice)
        for k, v in old.items():
            _quietly(conn, "SELECT set_config(%s, %s, %s)", [k, v, not concurrent])
    report.seconds = time.perf_counter() - t0
    log.info("index %s built in %.1f s (%d rows, maintenance_work_mem=%s%s)", spec.name, report.seconds,
             rows, plan.setting, ", concurrently" if concurrent else "")
    return report


def _quietly(conn: psycopg.Connection, query: str, params: list) -> None:
    """Run a clean-up statement if the connection can still take one; never raise."""
    ok = (psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS)
    if conn.broken or conn.closed or conn.info.transaction_status not in ok:
        return
    try:
        conn.execute(query, params)
    except psycopg.Error as e:
        log.debug("clean-up statement failed: %s", type(e).__name__)


def _failed(spec: IndexSpec, e: psycopg.Error, *, left: bool) -> DatabaseError:
    return DatabaseError(f"building HNSW index {spec.name}: {type(e).__name__}: {_one_line(e)}"
                         + ("; an INVALID index is left, which the next build drops and rebuilds" if left else ""))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _drop_invalid(conn: psycopg.Connection, spec: IndexSpec) -> bool:
    """Best effort: drop the invalid index a failed concurrent build left.

    Returns True when an index may be left behind (the next build repairs it).
    """
    if conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return True
    old = None
    try:
        if index_state(conn, spec.schema, spec.name) is False:
            old = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
            conn.execute("SELECT set_config('lock_timeout', %s, false)", [CLEANUP_LOCK_TIMEOUT])
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(spec.index_ident))
        return False
    except psycopg.Error as e:
        log.debug("index %s: dropping the INVALID index failed: %s", spec.name, _one_line(e))
        return True
    finally:
        if old is not None:
            _quietly(conn, "SELECT set_config('lock_timeout', %s, false)", [old])


def _conninfo(conn: psycopg.Connection) -> str:
    """A conninfo string with the parameters ``conn`` was opened with (never logged)."""
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
    params.pop("replication", None)
    params["application_name"] = "jointembed index progress"
    return psycopg.conninfo.make_conninfo("", **params)


class _Monitor:
    """Polls ``pg_stat_progress_create_index`` for the building backend on its own connection."""

    def __init__(self, conn: psycopg.Connection, name: str, rows: int, bar: bool):
        self.pid, self.name, self.rows, self.bar = conn.info.backend_pid, name, rows, bar
        try:
            self.conninfo = _conninfo(conn)
        except Exception:  # noqa: BLE001 - progress is optional
            self.conninfo = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress {name}", daemon=True)

    def start(self) -> None:
        if self.conninfo is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as mon:
                self._poll(mon)
        except Exception as e:  # noqa: BLE001 - progress is optional, the build goes on
            log.debug("index %s: no progress (%s)", self.name, type(e).__name__)

    def _poll(self, mon: psycopg.Connection) -> None:
        bar = None
        if self.bar and _progress._is_tty(sys.stderr):  # not a terminal: the periodic log lines below
            from tqdm import tqdm

            bar = tqdm(total=self.rows, desc=f"index {self.name}", unit="rows", leave=False, file=sys.stderr)
        t0 = last_log = time.monotonic()
        try:
            while not self._stop.wait(POLL_S):
                row = mon.execute(_PROGRESS_SQL, [self.pid]).fetchone()
                if row is None:
                    continue
                phase, tuples, blocks, blocks_total, lockers, lockers_done = row
                if bar is not None:
                    bar.set_postfix_str(phase or "", refresh=False)
                    bar.n = min(int(tuples or 0), self.rows)
                    bar.refresh()
                elif time.monotonic() - last_log >= _progress._interval():
                    last_log = time.monotonic()
                    waiting = f", {lockers_done}/{lockers} transactions" if phase and "waiting" in phase else ""
                    log.info("index %s: %s, %d/%d rows%s, %.0f s", self.name, phase, tuples or 0, self.rows,
                             waiting, last_log - t0)
        finally:
            if bar is not None:
                bar.close()
