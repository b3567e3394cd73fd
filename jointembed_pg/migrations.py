"""Versioned schema migrations: ``sql/NNN_name.sql``, applied in order, each once.

The SQL files ship as package data (``jointembed_pg.sql``); in a source checkout that is
not installed they are read from ``<repo>/sql``. :func:`apply` is idempotent and safe to
call from several processes at once: the work runs in one transaction holding a
transaction-level advisory lock, and each applied version is recorded in
``jointembed.schema_version``. When the schema is already current it returns after one
catalog query, without taking the lock.

:func:`queries` exposes the named query templates of ``sql/queries.sql``.
"""
from __future__ import annotations

import functools
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
_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)

_STATE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector'),
       to_regclass('jointembed.schema_version') IS NOT NULL
"""
_VERSION_SQL = "SELECT coalesce(max(version), 0) FROM jointembed.schema_version"
_RECORD_SQL = "INSERT INTO jointembed.schema_version (version, name) VALUES (%s, %s)"


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str


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
    for entry in _sql_dir().iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if not m:
            continue
        version = int(m.group(1))
        if version in found:
            raise RuntimeError(f"duplicate migration version {version}: {entry.name}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


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


def current_version(conn: psycopg.Connection) -> int:
    """Schema version recorded in the database (0 when the schema is absent)."""
    has_vector, has_table = conn.execute(_STATE_SQL).fetchone()
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
    with conn.transaction():
        has_vector, has_table = conn.execute(_STATE_SQL).fetchone()
        if has_vector and has_table:
            have = conn.execute(_VERSION_SQL).fetchone()[0]
            _check_not_newer(have, latest)
            if have == latest:
                return []
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        conn.execute(read_sql("_bootstrap.sql"))
        done = conn.execute(_VERSION_SQL).fetchone()[0]
        applied = []
        for mig in available():
            if mig.version <= done:
                continue
            conn.execute(mig.sql)
            conn.execute(_RECORD_SQL, [mig.version, mig.name])
            applied.append(mig.version)
        _check_not_newer(done, latest)
    return applied


def _check_not_newer(have: int, latest: int) -> None:
    if have > latest:
        raise DatabaseError(
            f"database schema version {have} is newer than this jointembed_pg knows ({latest}); "
            "upgrade the package")
