"""Switching an attached table to another model (``jointembed reembed``).

1. ``jointembed._sync_begin_version`` creates a side table for the new model (its own
   dimension) beside the active one and enqueues every row for it. Triggers enqueue
   changes for both versions from then on, so workers of the old model keep the
   searchable side table fresh meanwhile.
2. The queue of the new version is drained with the new bundle (other workers started
   with the new bundle help: they serve a version being built).
3. ``jointembed._sync_activate_version`` switches searches over in one transaction once
   no row of the new version is waiting (rows that failed carry over and keep retrying);
   if rows arrived meanwhile, they are drained and the switch is tried again.
4. The old side table is dropped in a later transaction (and by the next ``reembed``
   if this one died before that).

Claims die with the session that made them, so a killed ``reembed`` is resumed at once
by running it again: the building version, its side table and the embeddings already
written are reused.

Searches keep answering from the old model until step 3 and from the new one after it;
they never mix the two. Workers still running the old bundle log ``model_mismatch``
for the table afterwards (restart them with the new bundle).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from .. import db
from ..errors import DatabaseError
from .catalog import Version, _call, _row, find, versions
from .drain import SyncConfig, SyncReport, Target, connect, drain

#: Seconds the switch waits for rows held by other workers before giving up.
SWITCH_WAIT_S = 60.0
#: Seconds between switch attempts while waiting.
SWITCH_POLL_S = 0.5


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
            progress: bool = False, switch: bool = True) -> ReembedReport:
    """Build ``table``'s embeddings with ``bundle`` beside the old ones, then switch.

    Args:
        conn: DSN (an autocommit connection is opened) or an autocommit connection.
        bundle: the new model (any ``model_id`` / ``dim``).
        switch: False: build only (a later call with the same bundle resumes and switches).
    Returns:
        :class:`ReembedReport`; ``switched`` is False when the table already used this
        model or ``switch`` was False.
    Raises:
        DatabaseError: not attached, another model's build in progress (see
            :func:`abort`), or the new version was still incomplete after
            :data:`SWITCH_WAIT_S` seconds (rows held by other live workers, or changing
            faster than embedded); the message says which.
    """
    if conn is None or isinstance(conn, str):
        with connect(conn) as c:
            return reembed(c, table, bundle, schema=schema, cfg=cfg, progress=progress, switch=switch)
    t0 = time.perf_counter()
    att = find(conn, table, schema)
    # a run that crashed after the switch left the retired side table behind: finish it
    _call(conn, "SELECT jointembed._sync_drop_retired(%s)", [att.id])
    report = ReembedReport(att.qualified, att.model_id, bundle.model_id, att.dim, int(bundle.dim), False)
    if att.model_id == bundle.model_id and att.dim == int(bundle.dim):
        report.seconds = time.perf_counter() - t0
        return report
    ver = _row(Version, _call(conn, "SELECT * FROM jointembed._sync_begin_version(%s, %s, %s)",
                              [att.id, bundle.model_id, int(bundle.dim)]))
    target = Target(att, ver)
    from .text_encoder import load_if_possible

    load_if_possible(conn, bundle)  # the new model's SQL text encoder (the old one goes with its version)
    report.sync = drain(conn, target, bundle, cfg, progress=progress)
    if switch:
        deadline = time.monotonic() + SWITCH_WAIT_S
        while not _try_activate(conn, att.id, ver.version):
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


def _try_activate(conn, attachment_id: int, version: int) -> bool:
    try:
        with conn.transaction():
            conn.execute("SELECT jointembed._sync_activate_version(%s, %s)", [attachment_id, version])
        return True
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return False  # rows still waiting for the new model: drain them first


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
