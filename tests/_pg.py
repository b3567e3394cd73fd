"""Database helpers shared by conftest and the test helper modules (holds no tests)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import sql


def with_dbname(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` (URL DSNs stay URLs)."""
    if dsn.lower().startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def new_database(admin_dsn: str) -> str:
    """Create a fresh database ``t_<random>`` on the server of ``admin_dsn``; return its DSN."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin_dsn, name)


def reachable(path: Path) -> Path:
    """Let the embedded server's OS user (``pgserver``, when tests run as root) traverse
    ``path``, a directory the test made itself (pytest makes them 0700). jointembed never
    loosens a directory it did not create, so tests that put a cluster under ``tmp_path``
    call this."""
    if os.geteuid() == 0:
        os.chmod(path, 0o711)
    return path


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` (..., D) scaled to unit L2 norm along its last axis, as float32."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def exact_image_ids(conn, table: sql.Composable, q, k: int = 10, cond: str = "TRUE", params=None) -> list:
    """Reference for the search tests: ids (a collection's ``items`` table) or keys (an
    attached table's side table) of the ``k`` live images nearest ``q`` by an exact scan,
    ties by id / key; ``cond`` is an extra SQL condition on alias ``i`` with ``params``."""
    col = sql.Identifier("id") if "items" in table.as_string(conn) else sql.Identifier("key")
    return [r[0] for r in conn.execute(
        sql.SQL("SELECT {} FROM {} i WHERE i.modality = 'image' AND ({}) "
                "ORDER BY l2_distance(i.embedding, %(q)s), i.{} LIMIT %(k)s").format(col, table, sql.SQL(cond), col),
        {"q": q, "k": k, **(params or {})}).fetchall()]


def knn_debug_lines(conn, stmt, params) -> tuple[list, list[str]]:
    """Run ``stmt`` with ``client_min_messages = debug1``: (its rows, the ``jointembed.knn``
    debug messages it raised, in order)."""
    notes: list[str] = []
    handler = lambda d: notes.append(d.message_primary or "")  # noqa: E731
    conn.add_notice_handler(handler)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL client_min_messages = debug1")
            rows = conn.execute(stmt, params).fetchall()
    finally:
        conn.remove_notice_handler(handler)
    return rows, [n for n in notes if n.startswith("jointembed.knn")]


def hnsw_store(dsn: str):
    """A ``Store`` on ``dsn`` whose own connection has ``enable_sort = off`` (session-wide), so
    the planner takes the HNSW index as it does on large tables (at a few hundred rows
    pgvector 0.8 would prefer a sequential scan and a sort). Close it."""
    from jointembed_pg.search.store import Store

    store = Store(dsn)
    with store.transaction() as conn:
        conn.execute("SET enable_sort = off")
    return store


def analyze(store, coll) -> None:
    """``ANALYZE`` the items table of collection ``coll`` (planner statistics after a load)."""
    with store.transaction() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
