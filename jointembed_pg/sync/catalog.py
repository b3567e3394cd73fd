"""Attached tables: keep the embeddings of a user's own table in sync (catalog side).

``attach`` records a user table (``schema.table`` with a unique key column and an image
and/or text column) in ``jointembed.attachments`` and lets the database do the rest: the
SQL function ``jointembed.attach`` (``sql/functions/30_sync_attach.sql``) creates a side table of
embeddings and a work queue in schema ``jointembed`` and row triggers on the user's table
that enqueue changed rows; it also enqueues every existing row (backfill). The user's
table is never altered; :func:`detach` removes all of it again.

The queue is drained by :mod:`jointembed_pg.sync.drain` (``jointembed sync`` /
``jointembed worker``); a model change is :mod:`jointembed_pg.sync.reembed`.

Every stored embedding carries its model id; each model version has its own side table,
and searches read only the *active* one, so results never mix models.

Table and schema names are plain names (``My "Photos"; drop table x`` is a valid table
name), never parsed as SQL: they are passed as parameters and quoted with
``format('%I')`` / :class:`psycopg.sql.Identifier`.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .. import db
from ..db import one_line  # noqa: F401  (re-exported for sync.worker)
from ..errors import DatabaseError, InputError, ModelMismatchError
from ..ingest.sources import SOURCES, ImageSource

MODALITIES = ("image", "text")
#: Marks an argument that was not given (the deprecated ``modality=`` of :func:`search_attached`).
_UNSET: Any = object()
#: Latest errors shown by :func:`status`.
STATUS_ERRORS = 5


class TableDropped(DatabaseError):
    """The attached table was dropped without ``detach`` (its catalog row remains)."""


def check_table(conn: psycopg.Connection, att: "Attachment") -> None:
    """Raise :class:`TableDropped` when ``att``'s table (by oid) no longer exists."""
    gone = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = %s "
                        "AND c.relkind IN ('r', 'p'))", [att.table_oid]).fetchone()[0]
    if gone:
        e = TableDropped(f"table {att.qualified} (attachment {att.id}) no longer exists: it was dropped "
                         "without `jointembed detach`, which removes what was attached")
        e.table = att.qualified
        raise e


@dataclass(frozen=True)
class Attachment:
    """One row of ``jointembed.attachments`` (see ``sql/functions/30_sync_attach.sql``)."""

    id: int
    schema_name: str
    table_name: str
    table_oid: int
    key_column: str
    key_type: str
    image_column: str | None
    text_column: str | None
    image_source: str | None
    image_root: str | None
    model_id: str
    dim: int
    active_version: int
    queue_table: str
    created_at: Any = None

    @property
    def qualified(self) -> str:
        """``schema.table`` quoted as SQL would print it (for messages only)."""
        return f"{_quote(self.schema_name)}.{_quote(self.table_name)}"

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities embedded: a subset of ``("image", "text")``."""
        return tuple(m for m, c in (("image", self.image_column), ("text", self.text_column)) if c)

    def image_reader(self) -> ImageSource:
        """The :class:`ImageSource` of the image column (``path`` when none is set)."""
        return ImageSource(self.image_source or "path", self.image_root)


@dataclass(frozen=True)
class Version:
    """One row of ``jointembed.attachment_versions``: a model's side table."""

    attachment_id: int
    version: int
    model_id: str
    dim: int
    side_table: str
    state: str
    created_at: Any = None
    activated_at: Any = None

    @property
    def table_name(self) -> str:
        """The side table's name in schema ``jointembed``, derived from the ids (the
        stored ``side_table`` text is never used to build SQL)."""
        return f"a{int(self.attachment_id)}_v{int(self.version)}"


def _quote(name: str) -> str:
    """A name as SQL would print it, for messages only; control characters escaped
    (a name holding a newline never breaks a one-line message or a log record)."""
    if name.isidentifier() and name == name.lower() and name.isascii():
        return name
    if not name.isprintable():
        name = name.encode("unicode_escape").decode("ascii")
    return '"' + name.replace('"', '""') + '"'


def _row(cls, row) -> Any:
    return cls(*row[: len(fields(cls))])


def _sql_error(e: psycopg.Error) -> DatabaseError:
    """A one-line :class:`DatabaseError` from a psycopg error (no DSN, no password)."""
    diag = getattr(e, "diag", None)
    msg = (diag.message_primary if diag is not None and diag.message_primary else None) or str(e)
    return DatabaseError(" ".join(msg.split())[:500])


def _call(conn: psycopg.Connection, query: str, params=(), *, fetch: str = "one"):
    """Run one catalog call in its own transaction (a savepoint inside an open one)."""
    try:
        with conn.transaction():
            cur = conn.execute(query, params)
            return cur.fetchone() if fetch == "one" else cur.fetchall()
    except (psycopg.errors.DataError, psycopg.errors.ProgrammingError, psycopg.errors.IntegrityError,
            psycopg.errors.InternalError, psycopg.errors.ObjectNotInPrerequisiteState,
            psycopg.errors.ObjectInUse, psycopg.errors.ProgramLimitExceeded) as e:
        raise _sql_error(e) from e


#: The owner of schema jointembed, whether the caller is it, and whether it may become it.
_OWNER_SQL = """
SELECT o.rolname, o.rolname = current_user, pg_catalog.pg_has_role(current_user, o.oid, 'MEMBER')
FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles o ON o.oid = n.nspowner
WHERE n.nspname = 'jointembed'
"""


@contextmanager
def as_owner(conn: psycopg.Connection):
    """One transaction in which the caller acts as the owner of schema ``jointembed``.

    Tables that ``attach`` / ``reembed`` create in schema jointembed must belong to its
    owner: the queue functions run as the owner (``SECURITY DEFINER``) and the default
    privileges that ``grant`` set up are the owner's. A superuser (or any member of the
    owner role) running them on another role's table therefore does the DDL under
    ``SET LOCAL ROLE owner`` (restored before the transaction ends); any other caller is
    refused by ``jointembed._sync_create_side`` before anything is created.
    """
    with conn.transaction():
        row = conn.execute(_OWNER_SQL).fetchone()
        switch = row is not None and not row[1] and row[2]
        if switch:
            before = conn.execute("SELECT current_user").fetchone()[0]
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(row[0])))
        try:
            yield conn
        finally:
            if switch:
                try:
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(before)))
                except psycopg.Error:
                    pass  # a failed transaction: its rollback undoes the SET LOCAL anyway


def attach(conn, table: str, bundle, *, key: str, image_column: str | None = None,
           text_column: str | None = None, image_source: str = "path", image_root: str | None = None,
           schema: str | None = None) -> Attachment:
    """Attach ``schema.table``: side table, queue, triggers, catalog row; enqueue every row.

    Args:
        conn: DSN, ``psycopg.Connection`` or SQLAlchemy engine (see :func:`db.borrow`).
        table: the table's name as stored (not SQL: no quoting needed or allowed).
        bundle: the model the table is embedded with (``.model_id``, ``.dim``).
        key: a column with a primary key or unique index on it alone.
        image_column / text_column: what to embed (at least one).
        image_source: ``path`` | ``url`` | ``bytea`` (how the image column is read).
        image_root: base directory of relative image paths (stored absolute).
        schema: the table's schema; default the first on ``search_path`` holding it.
    Returns:
        The new :class:`Attachment`.
    Raises:
        InputError: neither column given, an unknown image source.
        DatabaseError: no such table or column, wrong column type, key not unique, the
            table already attached (nothing is created then).
    """
    if image_column is None and text_column is None:
        raise InputError("attach needs --image-column, --text-column or both")
    if image_source not in SOURCES:
        raise InputError(f"image source must be one of {', '.join(SOURCES)}, got {image_source!r}")
    if image_root is not None:
        image_root = str(Path(image_root).expanduser().resolve())
    with db.borrow(conn) as c:
        schema = schema or _find_schema(c, table)
        with as_owner(c):
            row = _call(c, "SELECT * FROM jointembed.attach(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [schema, table, key, image_column, text_column,
                         image_source if image_column else None, image_root, bundle.model_id, int(bundle.dim)])
        return _row(Attachment, row)


#: Schema of the first table named %s on the caller's search_path. Run as a plain query,
#: not through a jointembed function: those pin their own search_path (95_search_path.sql).
_FIND_SCHEMA_SQL = """
SELECT (SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = %s AND c.relkind IN ('r', 'p') AND n.nspname = ANY (pg_catalog.current_schemas(false))
        ORDER BY pg_catalog.array_position(pg_catalog.current_schemas(false), n.nspname) LIMIT 1)
"""


def _find_schema(conn: psycopg.Connection, table: str) -> str:
    row = _call(conn, _FIND_SCHEMA_SQL, [table])
    if row[0] is None:
        raise DatabaseError(f"no table named {_quote(table)} on the search_path (pass --schema)")
    return row[0]


def find(conn, table: str, schema: str | None = None) -> Attachment:
    """The attachment of ``table`` (in ``schema``, or in the only schema attaching it).

    Raises:
        DatabaseError: the table is not attached, or attached in several schemas and
            ``schema`` is None.
    """
    with db.borrow(conn) as c:
        rows = _call(c, "SELECT * FROM jointembed.find_attachment(%s, %s)", [table, schema], fetch="all")
    if not rows:
        where = f"{_quote(schema)}.{_quote(table)}" if schema else _quote(table)
        raise DatabaseError(f"table {where} is not attached (see `jointembed attach`)")
    if len(rows) > 1:
        names = ", ".join(_quote(r[1]) for r in rows)
        raise DatabaseError(f"table {_quote(table)} is attached in several schemas ({names}); pass --schema")
    return _row(Attachment, rows[0])


def list_attachments(conn) -> list[Attachment]:
    """Every attachment, ordered by schema and table."""
    with db.borrow(conn) as c:
        return [_row(Attachment, r) for r in _call(c, "SELECT * FROM jointembed.list_attachments()", fetch="all")]


def versions(conn, attachment: Attachment) -> list[Version]:
    """The attachment's model versions, the active one first."""
    with db.borrow(conn) as c:
        rows = _call(c, "SELECT * FROM jointembed.sync_versions(%s)", [attachment.id], fetch="all")
    return [_row(Version, r) for r in rows]


def active_version(conn, attachment: Attachment) -> Version:
    """The version searches read. Raises DatabaseError if the attachment is gone."""
    vs = [v for v in versions(conn, attachment) if v.state == "active"]
    if not vs:
        raise DatabaseError(f"table {attachment.qualified} is not attached any more")
    return vs[0]


def version_for(conn, attachment: Attachment, bundle) -> Version:
    """The live version (active, or being built by a reembed) of ``bundle``'s model.

    Raises:
        ModelMismatchError: no live version has ``bundle.model_id`` and ``bundle.dim``;
            the message names both models. Raised before any write.
    """
    with db.borrow(conn) as c:
        row = _call(c, "SELECT * FROM jointembed._sync_version_for(%s, %s, %s)",
                    [attachment.id, bundle.model_id, int(bundle.dim)])
    if row is None:
        raise ModelMismatchError(
            f"table {attachment.qualified} is embedded with model {attachment.model_id} "
            f"(dim {attachment.dim}), but the bundle is {bundle.model_id} (dim {bundle.dim}); "
            "use the matching bundle, or `jointembed reembed` to switch models")
    return _row(Version, row)


def detach(conn, table: str, schema: str | None = None) -> Attachment:
    """Remove the triggers, queue, side tables and catalog rows of ``table``'s attachment.

    The user's table and its data are left exactly as before :func:`attach`.

    Raises:
        DatabaseError: the table is not attached.
    """
    with db.borrow(conn) as c:
        att = find(c, table, schema)
        _call(c, "SELECT jointembed.detach(%s)", [att.id])
        return att


def status(conn, table: str | None = None, schema: str | None = None,
           errors: int = STATUS_ERRORS) -> list[dict]:
    """Queue and embedding counts per attachment (all, or ``table``'s).

    Each dict has ``schema``, ``table``, ``model_id``, ``dim`` and the active version's
    counts: ``pending`` (queued changes, not yet tried), ``failed`` (last attempt failed:
    retrying or given up), ``gave_up``, ``ready``, ``claimed`` (held by a connected
    worker), ``done`` (embeddings stored, one per row and modality), ``missing`` (rows x
    modalities with neither an embedding nor a queued change: rows that arrived without
    triggers; ``missing_exact`` False when estimated from a sample of a large table);
    ``errors`` (the latest, each with ``key``, ``modality``, ``error``, ``attempts``,
    ``next_attempt_at``), ``building`` (the counts of a reembed in progress, or None) and
    ``retired`` (old side tables not dropped yet).

    Listing all attachments, one whose table cannot be read (dropped without ``detach``)
    gives ``{id, schema, table, error}`` and the others their counts; asked for by name,
    it raises.

    Raises:
        DatabaseError: ``table`` not attached, or its status cannot be read.
    """
    with db.borrow(conn) as c:
        if table is not None:
            return [_call(c, "SELECT jointembed.sync_status(%s, %s)", [find(c, table, schema).id, errors])[0]]
        out = []
        for a in list_attachments(c):
            try:
                out.append(_call(c, "SELECT jointembed.sync_status(%s, %s)", [a.id, errors])[0])
            except DatabaseError as e:
                out.append({"id": a.id, "schema": a.schema_name, "table": a.table_name,
                            "error": f"{e} (`jointembed detach` removes what was attached)"})
        return out


def search_attached(conn, table: str, vector, k: int = 10, target: str | None = "image", *,
                    schema: str | None = None, model_id: str | None = None,
                    modality: Any = _UNSET) -> list[tuple[Any, float]]:
    """The ``k`` rows of an attached table nearest to ``vector``.

    Args:
        vector: ``(D,)`` float32 query embedding from the table's active model.
        k: number of results (>= 1).
        target: ``"image"`` / ``"text"``: which embeddings of the rows to search;
            None: both (a row may then appear twice).
        model_id: if given, refuse unless it is the active model.
        modality: deprecated spelling of ``target`` (DeprecationWarning).
    Returns:
        ``[(key, distance), ...]`` nearest first: ``key`` is the user's key value with
        its own type (e.g. ``int``), ``distance`` the L2 distance (float, >= 0).
    Raises:
        ModelMismatchError: ``vector`` has another dimension than the active model, or
            ``model_id`` is not the active model.
        DatabaseError: the table is not attached.
    """
    if modality is not _UNSET:
        warnings.warn("search_attached(modality=...) is deprecated: use target=", DeprecationWarning, stacklevel=2)
        target = modality
    modality = target
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"target must be 'image', 'text' or None, got {modality!r}")
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    with db.borrow(conn) as c:
        att = find(c, table, schema)
        for attempt in range(3):
            ver = active_version(c, att)
            _check_query(att, ver, q, model_id)
            try:
                with c.transaction():
                    rows = [r for m in (MODALITIES if modality is None else (modality,))
                            for r in c.execute(_search_query(ver), {"q": q, "k": k, "m": m}).fetchall()]
                rows = sorted(rows, key=lambda r: r[1])[:k]
                return [(key, float(d)) for key, d in rows]
            except psycopg.errors.UndefinedTable:
                time.sleep(0.05 * (attempt + 1))  # a reembed switched models meanwhile: look again
        raise DatabaseError(f"table {att.qualified}: its embeddings kept changing during the search")


def _check_query(att: Attachment, ver: Version, q: np.ndarray, model_id: str | None) -> None:
    if model_id is not None and model_id != ver.model_id:
        raise ModelMismatchError(f"table {att.qualified} is searchable with model {ver.model_id} "
                                 f"(dim {ver.dim}), not {model_id}")
    if q.shape[0] != ver.dim:
        raise ModelMismatchError(f"query vector has {q.shape[0]} dimensions but table {att.qualified} "
                                 f"is embedded with model {ver.model_id} (dim {ver.dim})")


def _search_query(ver: Version) -> sql.Composed:
    """``SELECT key, distance`` of one modality of the side table, by ``jointembed.knn``.

    ``jointembed.knn`` (``sql/functions/15_knn.sql``) holds the one rule that makes the
    result exactly k rows (ef_search escalation or iterative scan, then exact).
    """
    return sql.SQL("SELECT (r.item).key, r.distance FROM jointembed.knn(NULL::{side}, %(q)s, %(k)s, %(m)s) AS r"
                   ).format(side=sql.Identifier("jointembed", ver.table_name))
