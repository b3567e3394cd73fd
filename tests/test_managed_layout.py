"""A database laid out like Supabase's (issue 14.2): pgvector installed by a superuser in
schema ``extensions``; the app role has no CREATE on the database (an admin made schema
``jointembed`` for it) and its ``search_path`` is just ``public``.

Everything must work as that role: migrations, the CLI (init, index, search), the Python
API on a connection we did not configure, the SQL functions called with ``public`` on
the path, an attached table with triggers and sync; and no second copy of the extension.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import psycopg
import pytest
from psycopg import sql

from jointembed_pg import db
from jointembed_pg.sync import catalog as sync
from jointembed_pg.search.store import Store

D, K = 16, 5


@pytest.fixture(scope="module")
def managed(pg_admin_dsn):
    """``(app_dsn, admin_dsn_of_that_db, role)`` for a fresh Supabase-like database."""
    name = "m_" + uuid.uuid4().hex[:10]
    role = "app_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name)
    with psycopg.connect(admin, autocommit=True) as c:
        r = sql.Identifier(role)
        c.execute("CREATE SCHEMA extensions")
        c.execute("CREATE EXTENSION vector SCHEMA extensions")
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA extensions TO {}").format(r))
        c.execute(sql.SQL("CREATE SCHEMA jointembed AUTHORIZATION {}").format(r))
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(r))
        c.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = public").format(r, sql.Identifier(name)))
        assert not c.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')", [role]).fetchone()[0]
    app = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name, user=role)
    return app, admin, role


def _plain(dsn: str) -> psycopg.Connection:
    """A connection as the app would open it: no help from jointembed_pg."""
    conn = psycopg.connect(dsn, autocommit=True)
    assert conn.execute("SHOW search_path").fetchone()[0] == "public"
    assert conn.execute("SELECT to_regtype('vector')").fetchone()[0] is None  # not visible
    return conn


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_python_api_and_sql_functions_as_app_role(managed):
    app, admin, role = managed
    rng = np.random.default_rng(5)
    emb = (rng.standard_normal((300, D))).astype(np.float32)
    with _plain(app) as conn:
        store = Store(conn)  # migrations + pgvector types on a connection with search_path = public
        coll = store.collection("photos", model_id="synthetic", dim=D, create=True)
        assert coll.upsert([("image", f"k{i}", f"/p/{i % 3}/{i}", None, None, e) for i, e in enumerate(emb)]) == 300
        assert coll.ensure_index() == [coll.index_name("image"), coll.index_name("text")]
        assert conn.execute("SHOW search_path").fetchone()[0] == "public"  # left as it was
        ref = [h.id for h in coll.search_vector(emb[3], k=K, exact=True)]
        assert [h.id for h in coll.search_vector(emb[3], k=K)] == ref
        hits = coll.search_vector(emb[3], k=K, where="i.source LIKE %(p)s", params={"p": "/p/0/%"})
        assert len(hits) == K and all(h.source.startswith("/p/0/") for h in hits)
        # the SQL functions, called with public on the path
        got = conn.execute("SELECT id FROM jointembed.search('photos', %s, %s, 'image')", [emb[3], K]).fetchall()
        assert [r[0] for r in got] == ref
        assert len(conn.execute("SELECT * FROM jointembed.more_like_this('photos', %s, %s)", [ref[0], K]).fetchall()) == K
        got = conn.execute(sql.SQL("SELECT (r.item).id FROM jointembed.knn(NULL::{}, %s, %s, 'image', "
                                   "p_filter => 'i.source LIKE $3->>''p''', p_args => '{{\"p\": \"/p/0/%%\"}}') r")
                           .format(coll.table_ident), [emb[3], K]).fetchall()
        assert [r[0] for r in got] == [h.id for h in hits]
        # a filter naming the app's own table in public: it runs with the caller's search_path
        conn.execute("CREATE TABLE shop (path text PRIMARY KEY)")
        conn.execute("INSERT INTO shop SELECT '/p/1/' || n FROM generate_series(1, 299, 3) n")
        hits = coll.search_vector(emb[3], k=K, where="EXISTS (SELECT 1 FROM shop s WHERE s.path = i.source)")
        assert len(hits) == K and all(h.source.startswith("/p/1/") for h in hits)
    with psycopg.connect(admin) as c:
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 1
        assert c.execute("SELECT to_regtype('public.vector')").fetchone()[0] is None  # no second copy
        paths = dict(c.execute("""
            SELECT p.oid::regprocedure::text, (SELECT s FROM unnest(p.proconfig) s WHERE s LIKE 'search\\_path=%%')
            FROM pg_proc p WHERE p.pronamespace = 'jointembed'::regnamespace
        """).fetchall())
        assert [f for f, path in paths.items() if path is None] == []  # every function pins one
        ours = "search_path=pg_catalog, jointembed, pg_temp"
        for f in ["jointembed.search(text,extensions.vector,integer,text)", "jointembed.create_collection(text,text,integer,text)",
                  "jointembed.search_attached(regclass,extensions.vector,integer,text)"]:
            assert paths[f] == ours, (f, paths.get(f))
        assert c.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'jointembed'::regnamespace").fetchone()[0] > 10


def test_db_connect_sees_vector_and_registers_types(managed):
    app, _, _ = managed
    with db.connect(app) as conn:
        # our own connections append the extension's schema, so plain SQL finds vector and <->
        assert conn.execute("SHOW search_path").fetchone()[0] == "public, extensions"
        d = conn.execute("SELECT %s::vector(3) <-> '[0,0,0]'", [np.array([3, 4, 0], dtype=np.float32)]).fetchone()[0]
        assert d == pytest.approx(5.0)
        v = conn.execute("SELECT '[1,2]'::vector").fetchone()[0]
        assert v.to_numpy().tolist() == [1.0, 2.0]  # loaded by the registered loader
    with _plain(app) as conn:
        db.register_vector(conn)  # pgvector-python's own register_vector would not find the type
        assert conn.execute("SELECT %s", [np.ones(3, dtype=np.float32)]).fetchone()[0].to_numpy().tolist() == [1, 1, 1]


def test_cli_and_attached_table_as_app_role(managed, bundle, bundle_dir, tmp_path):
    app, _, _ = managed
    env = {"DATABASE_URL": ""}
    p = _cli("init", "--dsn", app, "--json", env=env)
    assert p.returncode == 0, p.stderr
    captions = tmp_path / "caps.csv"
    captions.write_text("id,text\nc1,a dog runs on the beach\nc2,a red car in the street\n"
                        "c3,two children play football\nc4,a dog jumps over a fence\n", encoding="utf-8")
    p = _cli("index", "texts", captions, "--collection", "caps", "--dsn", app, "--bundle", bundle_dir, env=env)
    assert p.returncode == 0, p.stderr
    p = _cli("search", "text", "a dog", "--target", "texts", "-k", "3", "--collection", "caps", "--dsn", app,
             "--bundle", bundle_dir, "--json", env=env)
    assert p.returncode == 0, p.stderr
    keys = [json.loads(line)["key"] for line in p.stdout.splitlines()]
    assert len(keys) == 3 and set(keys[:2]) == {"c1", "c4"}

    with _plain(app) as conn:
        db.register_vector(conn)
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, caption text)")
        conn.execute("INSERT INTO notes VALUES (1, 'a dog runs on the beach'), (2, 'a red car in the street'), "
                     "(3, 'a cat sleeps on a sofa')")
        sync.attach(conn, "notes", bundle, key="id", text_column="caption")
        from jointembed_pg.sync.drain import sync_table
        assert sync_table(conn, "notes", bundle).written == 3
        conn.execute("UPDATE notes SET caption = 'a dog plays in the snow' WHERE id = 3")  # trigger, public path
        assert sync_table(conn, "notes", bundle).written == 1
        q = bundle.encode_texts(["a dog"])[0]
        got = conn.execute("SELECT key FROM jointembed.search_attached('notes', %s, 3, 'text')", [q]).fetchall()
        assert len(got) == 3 and got[-1][0] == "2"
        assert [key for key, _ in sync.search_attached(conn, "notes", q, k=3, target="text")] == \
            [int(r[0]) for r in got]
