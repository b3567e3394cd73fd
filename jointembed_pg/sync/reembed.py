"""Switching an attached table to another model (``jointembed reembed``).

1. ``jointembed._sync_begin_version`` creates a side table for the new model (its own
   dimension) beside the active one and enqueues every row for it. Triggers enqueue
   changes for both versions from then on, so workers of the old model keep the
   searchable side table fresh meanwhile.
2. The queue of the new version is drained with the new bundle (other workers started
   with the new bundle help: they serve a version being built).
3. ``jointembed._sync_activate_version`` switches searches over in one transaction once
   no row of the new version is waiting; if rows arrived meanwhile, they are drained and
   the switch is tried again. It refuses to switch to a model that failed: one that
   embedded nothing while rows the old model had embedded failed, or that failed more of
   those rows than ``max_failed`` allows (default none; rows failing with both models do
   not count). Then :class:`ReembedRefused` is raised, the old model stays active with its
   side table, and the new version stays *building*: running ``reembed`` again retries its
   failed rows and tries the switch again; ``abort`` drops it. Failed rows within the
   limit carry over and keep retrying.
4. The old side table is dropped in a later transaction (and by the next ``reembed``
   if this one died before that).

Claims die with the session that made them, so a killed ``reembed`` is resumed at once
by running it again: the building version, its side table and the embeddings already
written are reused, and the rows that failed are retried.

The new side table is created as the owner of schema ``jointembed`` whoever runs this
(:func:`jointembed_pg.sync.catalog.as_owner`), so the owner's queue functions can use it.

Searches keep answering from the old model until step 3 and from the new one after it;
they never mix the two. Workers still running the old bundle log ``model_mismatch``
for the table afterwards (restart them with the new bundle).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg

from .. import db
from ..errors import ArgumentError, DatabaseError
from ..ingest.readers import printable
from .catalog import Version, _call, _row, as_owner, find, versions
from .drain import SyncConfig, SyncReport, Target, connect, drain

#: Seconds the switch waits for rows held by other workers before giving up.
SWITCH_WAIT_S = 60.0
#: Seconds between switch attempts while waiting.
SWITCH_POLL_S = 0.5
#: SQLSTATE of ``_sync_activate_version``'s refusal to switch to a model that failed.
FAILED_MODEL_SQLSTATE = "JE001"

#: ASCII digits only (\d also takes "١٢" or "５"), and at most 18 of them: int() of a
#: 5000-digit count raised ValueError (a traceback, not a usage error)
_MAX_FAILED = re.compile(r"\s*([0-9]{1,18})\s*|\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)\s*%\s*")


def parse_max_failed(value: int | str) -> tuple[int | None, float | None]:
    """``--max-failed``: a count of rows (``10``) or a percentage (``"5%"``, of the rows x
    modalities the old model has embedded, rounded down). Returns ``(count, None)`` or
    ``(None, percent)``.

    Raises:
        ArgumentError: anything else (a negative or fractional count, a percentage over 100).
    """
    if isinstance(value, bool):
        raise ArgumentError(f"--max-failed must be a count of rows or a percentage, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < 10**18:
            raise ArgumentError(f"--max-failed must be >= 0 and < 10^18, got {str(value)[:40]}")
        return value, None
    m = _MAX_FAILED.fullmatch(str(value))
    if m is None:
        raise ArgumentError(f"--max-failed must be a count of rows (e.g. 10) or a percentage (e.g. 5%), "
                            f"got {printable(str(value), 40)!r}")
    if m.group(1) is not None:
        return int(m.group(1)), None
    pct = float(m.group(2))
    if pct > 100:
        raise ArgumentError(f"--max-failed percentage must be at most 100%, got {value}")
    return None, pct


class ReembedRefused(DatabaseError):
    """The new model failed (see :func:`reembed`'s ``max_failed``): searches were not
    switched. ``report``: the :class:`ReembedReport` of the run (``switched`` False)."""

    def __init__(self, message: str, report: "ReembedReport"):
        super().__init__(message)
        self.report = report


@dataclass
class ReembedReport:
    """What :func:`reembed` did."""

    table: str
    old_model_id: str
    new_model_id: str
    old_dim: int
    new_dim: int
    switched: bool
    sync: SyncReport | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"table": self.table, "old_model_id": self.old_model_id, "new_model_id": self.new_model_id,
                "old_dim": self.old_dim, "new_dim": self.new_dim, "switched": self.switched,
                "sync": self.sync.to_dict() if self.sync else None, "seconds": round(self.seconds, 3)}


def reembed(conn, table: str, bundle, *, schema: str | None = None, cfg: SyncConfig = SyncConfig(),
            progress: bool = False, switch: bool = True, max_failed: int | str = 0) -> ReembedReport:
    """Build ``table``'s embeddings with ``bundle`` beside the old ones, then switch.

    Args:
        conn: DSN (an autocommit connection is opened) or an autocommit connection.
        bundle: the new model (any ``model_id``; ``dim`` at most 2000).
        switch: False: build only (a later call with the same bundle resumes and switches).
        max_failed: how many of the rows (x modalities) the old model has embedded may
            fail with the new one and the switch still happen: a count (``10``) or a
            percentage of them (``"5%"``); default 0. A new model that embedded nothing
            is never switched to while such rows failed. See :func:`parse_max_failed`.
    Returns:
        :class:`ReembedReport`; ``switched`` is False when the table already used this
        model or ``switch`` was False. ``sync.failed`` lists the rows that failed in this
        run (within ``max_failed`` when switched).
    Raises:
        ArgumentError: a bad ``max_failed`` (before anything is done).
        ReembedRefused: the new model failed beyond ``max_failed``: not switched, the old
            model and its side table stay; the build stays for a rerun (which retries its
            failed rows) or :func:`abort`.
        DatabaseError: not attached, another model's build in progress (see
            :func:`abort`), a dimension over 2000, a caller that is neither the owner of
            schema jointembed nor a member of its role, or the new version was still
            incomplete after :data:`SWITCH_WAIT_S` seconds (rows held by other live
            workers, or changing faster than embedded); the message says which.
    """
    limit = parse_max_failed(max_failed)
    if conn is None or isinstance(conn, str):
        with connect(conn) as c:
            return reembed(c, table, bundle, schema=schema, cfg=cfg, progress=progress, switch=switch,
                           max_failed=max_failed)
    t0 = time.perf_counter()
    att = find(conn, table, schema)
    # a run that crashed after the switch left the retired side table behind: finish it
    _call(conn, "SELECT jointembed._sync_drop_retired(%s)", [att.id])
    report = ReembedReport(att.qualified, att.model_id, bundle.model_id, att.dim, int(bundle.dim), False)
    if att.model_id == bundle.model_id and att.dim == int(bundle.dim):
        report.seconds = time.perf_counter() - t0
        return report
    with as_owner(conn):  # its side table must be the owner's, whoever runs this
        ver = _row(Version, _call(conn, "SELECT * FROM jointembed._sync_begin_version(%s, %s, %s)",
                                  [att.id, bundle.model_id, int(bundle.dim)]))
    # a resumed build: the rows that failed before get their chance again now
    _call(conn, "SELECT jointembed.sync_retry_failed(%s, %s)", [att.id, ver.version])
    target = Target(att, ver)
    from .text_encoder import load_if_possible

    load_if_possible(conn, bundle)  # the new model's SQL text encoder (the old one goes with its version)
    report.sync = drain(conn, target, bundle, cfg, progress=progress)
    if switch:
        deadline = time.monotonic() + SWITCH_WAIT_S
        while not _try_activate(conn, att.id, ver.version, limit, report, max_failed, t0):
            more = drain(conn, target, bundle, cfg, progress=False)
            _merge(report.sync, more)
            if more.batches:
                continue                 # new rows arrived and were embedded: try again
            st = _building_counts(conn, att.id)
            if time.monotonic() > deadline:
                raise DatabaseError(_not_switched(att.qualified, st))
            time.sleep(SWITCH_POLL_S)    # rows held by other running workers, or in backoff
        report.switched = True
        _call(conn, "SELECT jointembed._sync_drop_retired(%s)", [att.id])
        _merge(report.sync, drain(conn, target, bundle, cfg, progress=False))
    report.seconds = time.perf_counter() - t0
    return report


def _building_counts(conn, attachment_id: int) -> dict:
    st = _call(conn, "SELECT jointembed.sync_status(%s, 0, 0)", [attachment_id])[0]
    return st.get("building") or {}


def _not_switched(table: str, st: dict) -> str:
    """Why the switch did not happen, from the building version's counts."""
    claimed, pending = int(st.get("claimed", 0)), int(st.get("pending", 0))
    if claimed:
        why = (f"{claimed} of its queued rows are being embedded by other running workers "
               f"(sessions that are still connected)")
    else:
        why = f"{pending} rows are still queued for it (rows keep changing faster than they are embedded)"
    return (f"table {table}: the new model's embeddings are not complete after {SWITCH_WAIT_S:.0f} s: {why}; "
            "searches still use the old model. Run `jointembed reembed` again to resume "
            "(work already done is kept), or `jointembed reembed --abort` to give up")


def _try_activate(conn, attachment_id: int, version: int, limit: tuple[int | None, float | None],
                  report: ReembedReport, max_failed: int | str, t0: float) -> bool:
    """Switch (True), or False while rows of the new version still wait.

    Raises:
        ReembedRefused: the new model failed beyond ``limit`` (see :func:`reembed`).
    """
    count, pct = limit
    try:
        with conn.transaction():
            conn.execute("SELECT jointembed._sync_activate_version(%s, %s, %s, %s)",
                         [attachment_id, version, count, pct])
        return True
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return False  # rows still waiting for the new model: drain them first
    except psycopg.Error as e:
        if e.sqlstate != FAILED_MODEL_SQLSTATE:
            raise
    loss = _call(conn, "SELECT jointembed._sync_version_loss(%s, %s)", [attachment_id, version])[0]
    report.seconds = time.perf_counter() - t0
    raise ReembedRefused(_refusal(report, loss, count, pct, max_failed), report)


def _refusal(report: ReembedReport, loss: dict, count: int | None, pct: float | None,
             max_failed: int | str) -> str:
    """The one line saying why the switch was refused and what to do."""
    old_done, new_done, lost = int(loss["old_done"]), int(loss["new_done"]), int(loss["lost"])
    new, old = f"model {report.new_model_id}", f"the old model {report.old_model_id}"
    if new_done == 0:
        why = (f"it embedded 0 of the {old_done} rows (x modalities) {old} has embedded "
               f"({lost} failed)")
    else:
        allowed = count if pct is None else int(pct * old_done // 100)
        why = (f"{lost} of the {old_done} rows (x modalities) {old} has embedded failed with it, more than "
               f"--max-failed {max_failed} allows ({allowed})")
    first = next(iter(report.sync.failed), None) if report.sync else None
    example = f"; e.g. [{first['key']}] {first['modality']}: {first['error']}" if first else ""
    return (f"table {report.table}: not switched to {new}: {why}{example}. Searches still use {old}; "
            "the build is kept: fix the cause and run `jointembed reembed` again (failed rows are retried), "
            "accept the failures with --max-failed, or give up with `jointembed reembed --abort`")


def _merge(into: SyncReport, more: SyncReport) -> None:
    into.written += more.written
    into.unchanged += more.unchanged
    into.gone += more.gone
    into.failed.extend(more.failed)
    into.batches += more.batches
    into.seconds += more.seconds


def abort(conn, table: str, schema: str | None = None) -> bool:
    """Abandon a reembed in progress (drop the new side table). False if there was none."""
    with db.borrow(conn) as c:
        att = find(c, table, schema)
        return bool(_call(c, "SELECT jointembed._sync_abort_version(%s)", [att.id])[0])


def building(conn, table: str, schema: str | None = None) -> Version | None:
    """The version a reembed is building for ``table``, or None."""
    with db.borrow(conn) as c:
        att = find(c, table, schema)
        return next((v for v in versions(c, att) if v.state == "building"), None)
