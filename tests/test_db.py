"""db.connect / migrations / embedded server against a real PostgreSQL (pgserver)."""
from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest

from jointembed_pg import db, migrations
from jointembed_pg.errors import DatabaseError


def test_connect_registers_vector_and_migrates(pg_dsn):
    with db.connect(pg_dsn) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert migrations.current_version(conn) == migrations.latest_version() >= 2
        v = np.array([1.5, -2.0, 0.25], np.float32)
        got = conn.execute("SELECT %s::vector(3)", [v]).fetchone()[0]
        np.testing.assert_array_equal(got.to_numpy(), v)
        assert db.vector_version(conn) >= (0, 6)


def test_migrations_idempotent_and_fast(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        assert migrations.apply(conn) == []
        assert time.perf_counter() - t0 < 0.5
        rows = conn.execute("SELECT version FROM jointembed.schema_version ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == [m.version for m in migrations.available()]


_STUB = ("CREATE OR REPLACE FUNCTION jointembed.items_table(p_name text) RETURNS regclass "
         "LANGUAGE sql AS $$ SELECT 'pg_class'::regclass $$")


def test_changed_definitions_are_reapplied_on_upgrade(pg_dsn):
    """A database whose recorded definitions differ (an older package) gets ours again."""
    with db.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_STUB)
        conn.execute("UPDATE jointembed.definitions SET sha256 = 'old', package_version = '0.0.1'")
        assert migrations.apply(conn) == []   # no migration, but the definitions run again
        src = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'items_table'").fetchone()[0]
        assert "pg_class" not in src
        sha = conn.execute("SELECT sha256 FROM jointembed.definitions").fetchone()[0]
        assert sha == migrations.definitions().sha256


def test_older_package_never_overwrites_newer_definitions(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_STUB)
        conn.execute("UPDATE jointembed.definitions SET sha256 = 'newer', package_version = '99.0.0'")
        migrations.apply(conn)
        src = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'items_table'").fetchone()[0]
        assert "pg_class" in src


def test_definitions_table_missing_means_old_layout_upgraded(pg_dsn):
    """A database made by the one-file-per-version layout (no jointembed.definitions)."""
    with db.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_STUB)
        conn.execute("DROP TABLE jointembed.definitions")
        migrations.apply(conn)
        src = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'items_table'").fetchone()[0]
        assert "pg_class" not in src


def test_concurrent_first_use_is_safe(pg_dsn):
    errors, barrier = [], threading.Barrier(4)

    def worker():
        try:
            barrier.wait()
            db.connect(pg_dsn).close()
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute("SELECT count(*) FROM jointembed.schema_version").fetchone()[0]
    assert n == len(migrations.available())


@pytest.mark.parametrize("dsn", [
    "postgresql://alice:s3cret-pw@127.0.0.1:1/nodb",
    "host=127.0.0.1 port=1 user=alice password=s3cret-pw dbname=nodb",
    "postgresql://alice@127.0.0.1:1/nodb?password=s3cret-pw",
])
def test_unreachable_dsn_raises_redacted_database_error(dsn):
    t0 = time.perf_counter()
    with pytest.raises(DatabaseError) as info:
        db.connect(dsn)
    msg = str(info.value)
    assert "s3cret-pw" not in msg and "***" in msg
    assert "\n" not in msg and msg.startswith("cannot connect to PostgreSQL at ")
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert time.perf_counter() - t0 < 10


def test_redact_forms():
    assert db.redact("postgresql://u:p%40ss@h:5432/d?sslmode=require") == "postgresql://u:***@h:5432/d?sslmode=require"
    assert db.redact("postgresql://u@h/d") == "postgresql://u@h/d"
    kv = db.redact("dbname=x password='a b\\'c' host=h")
    assert sorted(kv.split()) == ["dbname=x", "host=h", "password=***"]
    assert "pw" not in db.redact("postgresql:///d?host=/tmp&password=pw")


def test_malformed_dsn_is_database_error():
    with pytest.raises(DatabaseError):
        db.connect("host=h password=secret bogus_option=1")


def test_database_url_environment(pg_dsn, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    with db.connect() as conn:
        assert conn.info.dbname == psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]


def test_embedded_server_used_without_dsn(tmp_path, monkeypatch):
    from _pg import reachable
    from jointembed_pg.server import embedded

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("JOINTEMBED_PGDATA", str(reachable(tmp_path) / "pg"))
    try:
        with db.connect() as conn:
            assert migrations.current_version(conn) == migrations.latest_version()
            pid = conn.info.backend_pid and embedded.server(tmp_path / "pg").postmaster().pid
        with db.connect() as conn:  # reused, not started again
            assert conn.execute("SELECT 1").fetchone()[0] == 1
            assert embedded.server(tmp_path / "pg").postmaster().pid == pid
    finally:
        embedded.release(tmp_path / "pg")
    assert not embedded.server(tmp_path / "pg").is_running()  # the last user released it


def test_borrow_accepts_psycopg_and_sqlalchemy(pg_dsn):
    from jointembed_pg.search.sqla import create_engine

    engine = create_engine(pg_dsn)
    with db.borrow(engine) as conn:
        assert conn.execute("SELECT '[1,2]'::vector").fetchone()[0].to_numpy().tolist() == [1, 2]
    with engine.connect() as sa_conn, db.borrow(sa_conn) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    with psycopg.connect(pg_dsn) as raw, db.borrow(raw) as conn:
        assert conn is raw and conn.adapters.types.get("vector") is not None
    with pytest.raises(TypeError):
        with db.borrow(42):
            pass
    engine.dispose()


def test_prepare_joins_callers_open_transaction(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE mine (x int)")
        db.prepare(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.execute("SELECT to_regclass('mine')").fetchone()[0] is None
