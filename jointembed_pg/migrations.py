"""Schema upgrades, as pgai does them: run-once migrations plus idempotent definitions.

* ``sql/migrations/NNN_name.sql``: tables, indexes, data changes. Applied in order, each
  once; each applied version is recorded in ``jointembed.schema_version``.
* ``sql/functions/NN_name.sql``: functions, views, comments, grants, written with
  ``CREATE OR REPLACE`` (a signature change drops the old function first). Re-applied, all
  of them in name order, whenever their combined SHA-256 differs from the one recorded in
  ``jointembed.definitions`` -- so a bug fix in a function reaches existing databases
  without a migration. An older package never overwrites definitions written by a newer
  one (``package_version`` is recorded with the hash).

**Names of the vector extension.** The SQL files write pgvector's objects qualified with the
placeholder ``@vector@`` (``@vector@.vector``, ``OPERATOR(@vector@.<->)``,
``@vector@.vector_dims(x)``); :func:`render` replaces it with the quoted name of the schema
the extension lives in (``public``, ``extensions``, ...) before a file runs. So no function
needs that schema on its ``search_path``: every function pins ``pg_catalog`` first and no
schema that another role may ``CREATE`` in (docs/DESIGN.md, "search_path rule").

The SQL files ship as package data (``jointembed_pg.sql``); in a source checkout that is
not installed they are read from ``<repo>/sql``. :func:`apply` is idempotent and safe to
call from several processes at once: the work runs in one transaction holding a
transaction-level advisory lock. When everything is current it returns after one
catalog query, without taking the lock (so a read-only replica can be used).

:func:`queries` exposes the named query templates of ``sql/queries.sql``.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from .errors import DatabaseError

#: Advisory lock key serialising migrations (the bytes of "jointemb" as a signed bigint).
LOCK_KEY = int.from_bytes(b"jointemb", "big", signed=True)

_MIGRATION_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_DEFINITION_RE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.sql$")
_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

_STATE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'vector'),
       pg_catalog.to_regclass('jointembed.schema_version') IS NOT NULL,
       pg_catalog.to_regclass('jointembed.definitions') IS NOT NULL
"""
_DEFS_SQL = "SELECT sha256, package_version FROM jointembed.definitions"
_RECORD_DEFS_SQL = """
INSERT INTO jointembed.definitions (id, sha256, package_version) VALUES (true, %s, %s)
ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256,
    package_version = excluded.package_version, applied_at = pg_catalog.now()
"""
#: pg_catalog-qualified: the owner runs these on a connection whose path may hold public, where a
#: better-matching overload (say an aggregate public.array_agg(integer)) would win over
#: pg_catalog's polymorphic one (docs/DESIGN.md, "search_path rule")
_VERSION_SQL = "SELECT coalesce(pg_catalog.max(version), 0) FROM jointembed.schema_version"
_APPLIED_SQL = "SELECT coalesce(pg_catalog.array_agg(version), '{}') FROM jointembed.schema_version"
#: The vector extension's schema when it is not on the search_path (else no row).
_HIDDEN_VECTOR_SQL = """
SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector' AND NOT n.nspname = ANY (pg_catalog.current_schemas(true))
"""
_APPEND_PATH_SQL = ("SELECT pg_catalog.set_config('search_path', pg_catalog.concat_ws(', ', "
                    "NULLIF(pg_catalog.current_setting('search_path'), ''), "
                    "pg_catalog.quote_ident(%s)), %s)")
_VECTOR_SCHEMA_SQL = """
SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector'
"""
#: The search_path of every jointembed function, and of the transaction applying the SQL files.
SEARCH_PATH = "pg_catalog, jointembed, pg_temp"
_SET_PATH_SQL = "SELECT pg_catalog.set_config('search_path', %s, true)"
#: The placeholder the SQL files use for the vector extension's schema (see :func:`render`).
VECTOR_PLACEHOLDER = "@vector@"
_RECORD_SQL = "INSERT INTO jointembed.schema_version (version, name) VALUES (%s, %s)"


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class Definitions:
    """The idempotent definition files, in apply order, and their combined SHA-256."""

    files: tuple[tuple[str, str], ...]   # (file name, SQL text)
    sha256: str


def _sql_dir():
    """The directory (Traversable) holding the SQL files."""
    try:
        return resources.files("jointembed_pg.sql")
    except ModuleNotFoundError:  # source checkout, not installed: <repo>/sql
        return Path(__file__).resolve().parent.parent / "sql"


def read_sql(filename: str) -> str:
    """Text of one file of the SQL directory (e.g. ``"queries.sql"``)."""
    return (_sql_dir() / filename).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def available() -> tuple[Migration, ...]:
    """All migrations shipped with the package, sorted by version.

    Raises:
        RuntimeError: two files share a version number (a packaging bug).
    """
    found: dict[int, Migration] = {}
    for entry in (_sql_dir() / "migrations").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if not m:
            continue
        version = int(m.group(1))
        if version in found:
            raise RuntimeError(f"duplicate migration version {version}: {entry.name}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


@functools.lru_cache(maxsize=1)
def definitions() -> Definitions:
    """The files of ``sql/functions`` in name order, and the SHA-256 over all of them.

    Raises:
        RuntimeError: two files share an order number (a packaging bug).
    """
    found: dict[int, tuple[str, str]] = {}
    for entry in (_sql_dir() / "functions").iterdir():
        m = _DEFINITION_RE.match(entry.name)
        if not m:
            continue
        order = int(m.group(1))
        if order in found:
            raise RuntimeError(f"duplicate definitions order {order}: {entry.name}")
        found[order] = (entry.name, entry.read_text(encoding="utf-8"))
    files = tuple(found[k] for k in sorted(found))
    h = hashlib.sha256()
    for name, text in files:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return Definitions(files, h.hexdigest())


def _package_version() -> str:
    from . import __version__
    return __version__


def _version_tuple(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", v)[:3])


def latest_version() -> int:
    """Highest migration version shipped with the package (0 when none)."""
    migs = available()
    return migs[-1].version if migs else 0


@functools.lru_cache(maxsize=1)
def queries() -> dict[str, str]:
    """Named query templates from ``sql/queries.sql``: ``{name: sql text}``."""
    text = read_sql("queries.sql")
    parts = _NAME_RE.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str) -> sql.SQL:
    """The named template as a :class:`psycopg.sql.SQL` (``.format`` it for identifiers)."""
    return sql.SQL(queries()[name])


def vector_schema(conn: psycopg.Connection) -> str:
    """Name of the schema the ``vector`` extension is installed in.

    Raises:
        DatabaseError: the extension is not installed.
    """
    row = conn.execute(_VECTOR_SCHEMA_SQL).fetchone()
    if row is None:
        raise DatabaseError("the vector extension is not installed in this database")
    return row[0]


def render(text: str, schema: str) -> str:
    """``text`` with every ``@vector@`` replaced by ``schema`` as a quoted identifier.

    The identifier is quoted by psycopg's own rules (``"public"``, ``"my ""odd"" schema"``),
    so a schema name can never end the identifier and inject SQL. A schema name holding NUL
    cannot exist in PostgreSQL.
    """
    return text.replace(VECTOR_PLACEHOLDER, '"' + schema.replace('"', '""') + '"')


def current_version(conn: psycopg.Connection) -> int:
    """Schema version recorded in the database (0 when the schema is absent)."""
    has_vector, has_table, _has_defs = conn.execute(_STATE_SQL).fetchone()
    if not has_table:
        return 0
    return conn.execute(_VERSION_SQL).fetchone()[0]


def apply(conn: psycopg.Connection) -> list[int]:
    """Create the ``vector`` extension and apply pending migrations; return their versions.

    Runs in ``conn.transaction()`` (a savepoint when a transaction is already open).

    Raises:
        DatabaseError: the database records a version newer than this package knows
            (an older library talking to a newer schema).
        psycopg.Error: a migration failed (the transaction is rolled back).
    """
    latest = latest_version()
    defs = definitions()
    with conn.transaction():
        has_vector, has_table, has_defs = conn.execute(_STATE_SQL).fetchone()
        if has_vector and has_table:
            have = set(conn.execute(_APPLIED_SQL).fetchone()[0])
            _check_not_newer(max(have, default=0), latest)
            if have >= {m.version for m in available()} and has_defs and not _defs_outdated(conn, defs):
                return []
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", [LOCK_KEY])
        conn.execute(read_sql("_bootstrap.sql"))
        done = set(conn.execute(_APPLIED_SQL).fetchone()[0])
        _check_not_newer(max(done, default=0), latest)
        applied = []
        vs = vector_schema(conn)
        # the SQL files run under the functions' own search_path (the rule, see the module
        # docstring): nothing of a schema another role may CREATE in (the session's path may
        # hold public) can stand in for a built-in used by a DO block or a DEFAULT
        # expression, and a name that is neither pg_catalog's nor qualified fails loudly.
        old_path = conn.execute("SELECT pg_catalog.current_setting('search_path')").fetchone()[0]
        conn.execute(_SET_PATH_SQL, [SEARCH_PATH])
        for mig in available():
            if mig.version in done:   # each file once, gaps included (branches merged out of order)
                continue
            conn.execute(render(mig.sql, vs))
            conn.execute(_RECORD_SQL, [mig.version, mig.name])
            applied.append(mig.version)
        if applied or _defs_outdated(conn, defs):
            for _name, text in defs.files:
                conn.execute(render(text, vs))
            conn.execute(_RECORD_DEFS_SQL, [defs.sha256, _package_version()])
        conn.execute(_SET_PATH_SQL, [old_path])
    return applied


def add_vector_schema_to_path(conn: psycopg.Connection, *, local: bool) -> str | None:
    """Append the ``vector`` extension's schema to ``search_path`` when it is not on it.

    Managed servers install pgvector in its own schema (Supabase: ``extensions``) while
    an app role's ``search_path`` may be just ``public``. ``local``: for the current
    transaction only (``SET LOCAL``), else for the session. Returns the schema appended,
    or ``None`` when nothing was needed (or the extension is not installed).
    """
    row = conn.execute(_HIDDEN_VECTOR_SQL).fetchone()
    if row is None:
        return None
    conn.execute(_APPEND_PATH_SQL, [row[0], local])
    return row[0]


def _defs_outdated(conn: psycopg.Connection, defs: Definitions) -> bool:
    """True when the recorded definitions differ from ours and were not written by a newer package."""
    row = conn.execute(_DEFS_SQL).fetchone()
    if row is None:
        return True
    sha, pkg = row
    if sha == defs.sha256:
        return False
    return _version_tuple(_package_version()) >= _version_tuple(pkg or "0")


def _check_not_newer(have: int, latest: int) -> None:
    if have > latest:
        raise DatabaseError(
            f"database schema version {have} is newer than this jointembed_pg knows ({latest}); "
            "upgrade the package")
