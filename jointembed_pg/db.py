"""Connections: DSN resolution, the embedded server, pgvector registration, migrations.

Thin glue over psycopg 3 and :func:`pgvector.psycopg.register_vector`: after
:func:`connect` (or :func:`prepare` on a connection you opened yourself) numpy
``(D,) float32`` arrays bind as ``vector`` parameters and ``vector`` columns load as
numpy arrays.

Anything that takes "conn" in this package accepts a DSN string, ``None`` (see
:func:`resolve_dsn`), a ``psycopg.Connection``, a ``psycopg_pool.ConnectionPool``, or a
SQLAlchemy ``Engine`` / ``Connection`` using the ``postgresql+psycopg`` driver (see
:func:`borrow`). :func:`open_pool` makes the pool a :class:`~jointembed_pg.search.store.Store`
opens for a DSN: ``psycopg_pool.ConnectionPool(configure=configure_connection)``, which
checks each connection before lending it (a connection lost to a server restart is
replaced, not handed out).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator

import psycopg
import psycopg_pool
from pgvector.psycopg.bit import register_bit_info
from pgvector.psycopg.halfvec import register_halfvec_info
from pgvector.psycopg.sparsevec import register_sparsevec_info
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.types import TypeInfo

from .server import embedded
from . import migrations, settings
from .errors import DatabaseError, ambiguous_url, libpq_message, redact_dsn, register_dsn, scrub

# psycopg_pool logs each failed reconnection as a warning; our callers get one DatabaseError
# instead (with libpq's reason), so keep those records off stderr unless the app logs them.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

#: Seconds to wait for a server before giving up (unless the DSN sets connect_timeout).
DEFAULT_CONNECT_TIMEOUT = 5
#: Environment variable naming the database when no DSN is passed.
DSN_ENV = settings.DSN_ENV

#: A DSN fit to show (password masked); the one implementation is in :mod:`.errors`.
redact = redact_dsn


def resolve_dsn(dsn: str | None = None) -> str:
    """``dsn``, else ``$DATABASE_URL``, else the embedded server's URI (started on demand).

    Raises:
        DatabaseError: the embedded server cannot start.
    """
    if dsn:
        return dsn
    env = settings.get().database_url
    if env:
        return env
    return embedded.get_uri()


def check_dsn(dsn: str) -> dict[str, str]:
    """Parse ``dsn`` with libpq's parser; register its password for redaction.

    Returns:
        The DSN's parameters (``conninfo_to_dict``).

    Raises:
        DatabaseError: the DSN cannot be parsed, or it is a URL whose password holds an
            un-encoded ``@`` or ``/`` (libpq would take part of the password for the host
            or database name). The message never quotes the DSN.
    """
    register_dsn(dsn)
    problem = None
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as e:
        problem = libpq_message(e)
    if problem is not None:  # raised outside the handler: libpq's message is not even __context__
        raise DatabaseError(f"invalid DSN: {problem} (the DSN is not shown: it may hold a password)")
    if ambiguous_url(dsn):
        raise DatabaseError("invalid DSN: its user:password part contains a raw '@' or '/'; "
                            "percent-encode the user name and password (e.g. urllib.parse.quote(pw, safe='')) "
                            "(the DSN is not shown)")
    return params  # type: ignore[return-value]


def connect(dsn: str | None = None, *, autocommit: bool = False,
            connect_timeout: int = DEFAULT_CONNECT_TIMEOUT, migrate: bool = True) -> psycopg.Connection:
    """Open a connection ready for jointembed: pgvector registered, schema migrated.

    Args:
        dsn: libpq DSN or URI; ``None`` → ``$DATABASE_URL`` → embedded pgserver.
        autocommit: psycopg autocommit mode of the returned connection.
        connect_timeout: seconds, used unless the DSN sets its own.
        migrate: create the ``vector`` extension and apply pending migrations.

    Returns:
        An idle ``psycopg.Connection`` (caller closes it; usable as a context manager).

    Raises:
        DatabaseError: the server is unreachable or refuses the login, the DSN is
            malformed (see :func:`check_dsn`), or the migrations fail. The message is one
            line and never shows the password; the psycopg error of a failed connection
            is chained as ``__cause__``.
    """
    target = resolve_dsn(dsn)
    kwargs: dict[str, Any] = {"autocommit": autocommit}
    if "connect_timeout" not in check_dsn(target):
        kwargs["connect_timeout"] = connect_timeout
    try:
        conn = psycopg.connect(target, **kwargs)
    except psycopg.Error as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(target)}: "
                            f"{one_line(e, target)}") from e
    try:
        prepare(conn, migrate=migrate)
        # our own connection: let plain SQL (and the user's, via the CLI) see `vector`
        # and `<->` when pgvector lives in a schema off the role's search_path
        with conn.transaction():
            migrations.add_vector_schema_to_path(conn, local=False)
    except psycopg.Error as e:
        conn.close()
        raise DatabaseError(f"cannot prepare the connection: {one_line(e)}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def configure_connection(conn: psycopg.Connection) -> None:
    """What :func:`connect` does to a new connection besides migrating, for pooled ones.

    Registers the pgvector types (:func:`register_vector`) and appends the ``vector``
    extension's schema to the session's ``search_path`` when it is off it; leaves the
    connection idle. The ``configure`` callback of :func:`open_pool`.

    Raises:
        DatabaseError: the ``vector`` extension is not installed.
        psycopg.Error: the catalog lookup failed (the pool then discards the connection).
    """
    register_vector(conn)
    with conn.transaction():
        migrations.add_vector_schema_to_path(conn, local=False)
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        conn.commit()  # the type lookup's implicit transaction (non-autocommit connections)


def open_pool(dsn: str | None = None, *, min_size: int = 1, max_size: int = 4,
              connect_timeout: int = DEFAULT_CONNECT_TIMEOUT, timeout: float = 15.0,
              migrate: bool = True) -> psycopg_pool.ConnectionPool:
    """A ``psycopg_pool.ConnectionPool`` of connections ready for jointembed.

    One connection is opened first with :func:`connect` (so an unreachable server or a
    bad DSN fails here, at once, with libpq's reason and the password masked, and the
    migrations run once); then the pool opens its own connections with
    :func:`configure_connection` as ``configure`` and ``ConnectionPool.check_connection``
    as ``check`` (a broken connection is replaced before it is lent).

    Args:
        dsn: as :func:`connect` (``None`` → ``$DATABASE_URL`` → embedded server).
        min_size / max_size: connections kept open / most open at once.
        connect_timeout: seconds per connection attempt, unless the DSN sets its own.
        timeout: seconds :meth:`~psycopg_pool.ConnectionPool.connection` waits for a
            free connection before raising ``psycopg_pool.PoolTimeout``.
    Returns:
        An open pool; the caller closes it (``pool.close()`` or ``with pool:``).
    Raises:
        DatabaseError: as :func:`connect`.
    """
    target = resolve_dsn(dsn)
    connect(target, connect_timeout=connect_timeout, migrate=migrate).close()
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in check_dsn(target):
        kwargs["connect_timeout"] = connect_timeout
    pool = psycopg_pool.ConnectionPool(target, kwargs=kwargs, min_size=min_size, max_size=max_size,
                                       configure=configure_connection,
                                       check=psycopg_pool.ConnectionPool.check_connection,
                                       timeout=timeout, name="jointembed", open=True)
    try:  # the first borrow then takes the pool's connection instead of growing the pool
        pool.wait(timeout=max(float(connect_timeout), 1.0) * 2)
    except psycopg_pool.PoolTimeout as e:
        pool.close()
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(target)}: {one_line(e, target)}") from e
    return pool


def prepare(conn: psycopg.Connection, *, migrate: bool = True) -> psycopg.Connection:
    """Make a connection you opened yourself ready: migrations, ``register_vector``.

    Idempotent and cheap when already done. Leaves an idle connection idle and an open
    transaction open (the work then joins it).

    Raises:
        DatabaseError: the ``vector`` extension or a migration cannot be created.
    """
    was_idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        if migrate:
            migrations.apply(conn)
        if conn.adapters.types.get("vector") is None:
            register_vector(conn)
            if was_idle and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                conn.commit()  # end the transaction the type lookup opened, not the caller's
    except psycopg.Error as e:
        raise DatabaseError(f"cannot prepare the jointembed schema: {one_line(e)}") from e
    return conn


def vector_schema(conn: psycopg.Connection) -> str | None:
    """Schema holding the ``vector`` extension (``public``, ``extensions``...); ``None`` if not installed."""
    return conn.execute(migrations.queries()["vector_schema"]).fetchone()[0]


def register_vector(conn: psycopg.Connection) -> None:
    """:func:`pgvector.psycopg.register_vector`, finding the types in whatever schema holds them.

    pgvector-python looks ``vector`` up through the ``search_path``, which fails where the
    extension lives in a schema the role does not search (Supabase: ``extensions``).
    Numpy ``(D,) float32`` arrays then bind as ``vector`` (by type OID, so no cast or
    search_path is needed) and ``vector`` values load as ``pgvector.Vector``
    (``.to_numpy()`` gives the ``(D,) float32`` array).

    Raises:
        DatabaseError: the ``vector`` extension is not installed.
        psycopg.Error: the catalog lookup failed.
    """
    schema = vector_schema(conn)
    if schema is None:
        raise DatabaseError("the vector extension is not installed in this database "
                            "(CREATE EXTENSION vector, or ask your provider to enable pgvector)")
    info = TypeInfo.fetch(conn, sql.Identifier(schema, "vector"))
    register_vector_info(conn, info)
    register_bit_info(conn, TypeInfo.fetch(conn, "bit"))
    for name, register in (("halfvec", register_halfvec_info), ("sparsevec", register_sparsevec_info)):
        info = TypeInfo.fetch(conn, sql.Identifier(schema, name))  # pgvector >= 0.7
        if info is not None:
            register(conn, info)


def vector_version(conn: psycopg.Connection) -> tuple[int, ...]:
    """Installed pgvector version as a tuple, e.g. ``(0, 6, 2)``; ``()`` if not installed."""
    with conn.transaction():
        row = conn.execute(migrations.queries()["vector_version"]).fetchone()
    if row is None:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", row[0]))


@contextlib.contextmanager
def borrow(target: Any = None) -> Iterator[psycopg.Connection]:
    """Yield a prepared ``psycopg.Connection`` for ``target``; close it only if opened here.

    ``target``: a ``psycopg.Connection`` (yielded as is), a ``psycopg_pool.ConnectionPool``
    (one connection, returned to the pool afterwards: its transaction is committed, or
    rolled back on an exception), a SQLAlchemy ``Engine`` (one pooled connection,
    returned to the pool afterwards), a SQLAlchemy ``Connection`` (its driver connection,
    inside its transaction if one is open), or a DSN / ``None`` (a new connection via
    :func:`connect`, closed afterwards).

    Raises:
        TypeError: ``target`` is none of these, or a SQLAlchemy one with another driver.
        DatabaseError: as :func:`connect`; the pool is closed or had no free connection
            within its timeout.
    """
    if isinstance(target, psycopg.Connection):
        yield _ensure_registered(target)
        return
    if isinstance(target, psycopg_pool.ConnectionPool):
        with pool_connection(target) as conn:
            yield _ensure_registered(conn)
        return
    if target is None or isinstance(target, str):
        with connect(target) as conn:
            yield conn
        return
    kind = type(target).__module__ + "." + type(target).__name__
    if kind == "sqlalchemy.engine.base.Engine":
        raw = target.raw_connection()
        try:
            yield _ensure_registered(_driver(raw.driver_connection, kind))
        finally:
            raw.close()
        return
    if kind == "sqlalchemy.engine.base.Connection":
        yield _ensure_registered(_driver(target.connection.driver_connection, kind))
        return
    raise TypeError(f"expected a DSN, psycopg.Connection, psycopg_pool.ConnectionPool or SQLAlchemy "
                    f"Engine/Connection, got {kind}")


@contextlib.contextmanager
def pool_connection(pool: psycopg_pool.ConnectionPool) -> Iterator[psycopg.Connection]:
    """``pool.connection()``, its own failures (closed pool, no free connection in time)
    raised as :class:`DatabaseError`; errors of the caller's block pass unchanged."""
    cm = pool.connection()
    try:
        conn = cm.__enter__()
    except psycopg_pool.PoolTimeout as e:
        reason = _why_unreachable(pool)   # libpq's reason (server down, login refused), if that is it
        raise DatabaseError(reason or f"connection pool {pool.name!r}: {one_line(e)}") from e
    except psycopg_pool.PoolClosed as e:
        raise DatabaseError(f"connection pool {pool.name!r}: {one_line(e)}") from e
    with contextlib.ExitStack() as stack:
        stack.push(cm)
        yield conn


def _why_unreachable(pool: psycopg_pool.ConnectionPool) -> str | None:
    """One line saying why a new connection to the pool's server fails, or None if it works."""
    try:
        psycopg.connect(pool.conninfo, **{"connect_timeout": DEFAULT_CONNECT_TIMEOUT, **pool.kwargs}).close()
    except psycopg.Error as e:
        return f"cannot connect to PostgreSQL at {redact(pool.conninfo)}: {one_line(e, pool.conninfo)}"
    return None


def _driver(conn: Any, kind: str) -> psycopg.Connection:
    if not isinstance(conn, psycopg.Connection):
        raise TypeError(f"{kind} must use the psycopg 3 driver (postgresql+psycopg://...), "
                        f"got a {type(conn).__module__}.{type(conn).__name__}")
    return conn


def _ensure_registered(conn: psycopg.Connection) -> psycopg.Connection:
    if conn.adapters.types.get("vector") is None:
        prepare(conn)
    return conn


def one_line(err: BaseException, dsn: str | None = None) -> str:
    """First non-empty line of an error message, every known password masked
    (:func:`jointembed_pg.errors.scrub`; ``dsn``'s password is registered first)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return scrub(text, dsn)[:500]
