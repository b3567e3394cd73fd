"""Hostile inputs to the Python API (Store / Collection / Attached / db / bulk), on a real
PostgreSQL and the real bundle: identifiers, collection names, query values, DSNs with
passwords, given connections in odd states, and what a Store must never close."""
from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from jointembed_pg import ArgumentError, DatabaseError, InputError, ModelMismatchError, Store
from jointembed_pg import db
from jointembed_pg.search import bulk

D = 8
SECRET = "s3cr3t-Pa55"


def _vecs(n=10):
    return np.random.default_rng(1).standard_normal((n, D)).astype(np.float32)


@pytest.fixture
def store(pg_dsn):
    with Store(pg_dsn) as s:
        yield s


@pytest.fixture
def coll(store):
    c = store.collection("c", model_id="m", dim=D, create=True)
    c.upsert([("image", f"k{i}", None, None, None, v) for i, v in enumerate(_vecs())])
    return c


# -- hostile collection names ------------------------------------------------------------
@pytest.mark.parametrize("name", ['a"; DROP TABLE jointembed.collections; --', "x'y", "ü.ñ.😀",
                                  "schema.table", "%(name)s {items}", "n" * 200])
def test_hostile_collection_names_are_data(store, name):
    c = store.collection(name, model_id="m", dim=D, create=True)
    c.upsert([("text", "k", None, "t", None, _vecs(1)[0])])
    assert store.collection(name).count() == 1
    assert name in [i.name for i in store.collections()]
    assert c.ensure_index() and bulk.drop_indexes(c) == [c.index_name("image"), c.index_name("text")]
    assert store.drop_collection(name) is True


@pytest.mark.parametrize("name", ["", "a\x00b", "n" * 201, 5, None])
def test_bad_collection_names_refused(store, name):
    with pytest.raises(ArgumentError):
        store.collection(name, model_id="m", dim=D, create=True)


# -- hostile query values -----------------------------------------------------------------
@pytest.mark.parametrize("vec, err", [
    (np.full(D, np.nan, np.float32), InputError),
    (np.full(D, np.inf, np.float32), InputError),
    (np.full(D, 1e39, np.float64), InputError),           # finite float64, inf as float32
    (np.zeros(D + 1, np.float32), ModelMismatchError),
    (np.zeros((1, D), np.float32), InputError),
    (np.zeros(D, np.complex64) + 1j, InputError),        # imaginary part must not be dropped silently
    (np.array(["1"] * D), InputError),                   # strings are not a vector
])
def test_hostile_vectors(coll, vec, err):
    with pytest.raises(err):
        coll.search(vec, k=3)


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True, 2 ** 40])
def test_bad_k_refused_with_value_error(coll, k):
    with pytest.raises(ValueError):
        coll.search(_vecs(1)[0], k=k)


def test_huge_valid_k_returns_all(coll):
    assert len(coll.search(_vecs(1)[0], k=2 ** 31 - 1, exact=True)) == 10
    assert len(coll.search(_vecs(1)[0], k=np.int64(3))) == 3            # numpy ints are ints
    with pytest.raises(ValueError):
        coll.search(_vecs(1)[0], k=3, ef_search=2.5)


def test_list_query_is_refused(coll):
    with pytest.raises(ArgumentError):
        coll.search([0.0] * D, k=3)


def _timeout(fn, seconds=60):
    out: dict = {}

    def run():
        try:
            out["r"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung"
    return out


def test_image_query_from_device_fifo_or_bomb_fails_alone(store, bundle, tmp_path):
    c = store.collection("img", bundle=bundle)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for q in (Path("/dev/zero"), "/dev/zero", fifo, str(fifo), tmp_path):
        out = _timeout(lambda: c.search(q, k=1, image=True if isinstance(q, str) else None))
        assert isinstance(out.get("e"), InputError), (q, out)
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (30000, 30000)).save(buf, "PNG")         # 900 Mpx decompression bomb, ~1 MB
    out = _timeout(lambda: c.search(buf.getvalue(), k=1))
    assert isinstance(out.get("e"), InputError), out
    # a str query is a text, never a file: "/dev/zero" is embedded as a caption
    out = _timeout(lambda: c.search("/dev/zero", k=1))
    assert out.get("r") == [], out


# -- hostile identifiers in attach --------------------------------------------------------
@pytest.mark.parametrize("schema, table, key, text", [
    ('we"ird', 'ta"ble; DROP TABLE x; --', 'i"d', "bo'dy"),
    ("ü😀", "t.a.b", "K", "Body Text"),
    ("s", "t" * 63, "k" * 63, "b" * 63),
])
def test_attach_hostile_identifiers(pg_dsn, bundle, schema, table, key, text):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text)").format(
            psycopg.sql.Identifier(schema, table), psycopg.sql.Identifier(key), psycopg.sql.Identifier(text)))
        conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1, 'a dog on a beach'), (2, 'two cats')").format(
            psycopg.sql.Identifier(schema, table)))
    with Store(pg_dsn) as store:
        att = store.attach((schema, table), key=key, text=text, bundle=bundle)
        assert att.sync().written == 2
        assert store.attachment(table, schema=schema).status()["done"] == 2
        assert att.search("a dog on a beach", k=1, target="text")[0][0] == 1
        for bad_k in (0, 2.5, True, "1", 2 ** 40):
            with pytest.raises(ArgumentError):
                att.search("a dog", k=bad_k)
        att.detach()


@pytest.mark.parametrize("table, schema", [("t", ""), ("", "s"), (("s", "t"), "s"), (("s",), None),
                                           ("a..b", None), (".t", None), (b"s.t", None)])
def test_split_table_refuses_malformed(table, schema):
    from jointembed_pg.search.attached import split_table
    with pytest.raises(ArgumentError):
        split_table(table, schema)


# -- DSNs with passwords ------------------------------------------------------------------
@pytest.mark.parametrize("dsn", [f"postgresql://u:{SECRET}@127.0.0.1:1/db",
                                 f"host=127.0.0.1 port=1 user=u password={SECRET} dbname=db",
                                 f"postgresql://u:{SECRET}@127.0.0.1:1/db?password={SECRET}",
                                 f"postgresql://u:{SECRET}@/db?host=/nonexistent"])
def test_dsn_password_never_shown(dsn, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseError) as ei:
        Store(dsn)
    text = str(ei.value) + repr(ei.value) + "".join(str(c) for c in _chain(ei.value)) + caplog.text
    assert SECRET not in text
    with pytest.raises(DatabaseError) as ei:
        db.open_pool(dsn, connect_timeout=1)
    assert SECRET not in str(ei.value) + caplog.text


def _chain(e):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def test_store_repr_hides_password(pg_dsn, caplog):
    caplog.set_level(logging.DEBUG)
    dsn = pg_dsn + ("&" if "?" in pg_dsn else "?") + f"password={SECRET}"   # trust auth: ignored
    with Store(dsn) as store:
        c = store.collection("c", model_id="m", dim=D, create=True)
        assert SECRET not in repr(store) + repr(c) + str(store.info()) + caplog.text


# -- given connections --------------------------------------------------------------------
def test_given_connection_in_failed_transaction(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        Store(conn).collection("c", model_id="m", dim=D, create=True)
        conn.commit()
        store = Store(conn)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(DatabaseError):
            store.collection("c").count()
        conn.rollback()                                 # the caller's to end, and then it works
        assert store.collection("c").count() == 0
        store.close()
        assert not conn.closed


def test_store_on_failed_transaction_connection_raises_database_error(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(DatabaseError):
            Store(conn)
        assert not conn.closed


def test_given_pool_not_closed_and_shared_connection_threads(pg_dsn):
    pool = ConnectionPool(pg_dsn, min_size=1, max_size=2, open=True)
    try:
        with Store(pool) as store:
            store.collection("c", model_id="m", dim=D, create=True)
        assert not pool.closed
        with pool.connection() as c:
            c.execute("SELECT 1")
    finally:
        pool.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        store = Store(conn)
        c = store.collection("c")
        v = _vecs(40)
        errors = []

        def work(i):
            try:
                for j in range(5):
                    c.upsert([("image", f"t{i}-{j}", None, None, None, v[i * 5 + j])])
                    c.search(v[i * 5 + j], k=1, exact=True)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert errors == [] and c.count() == 40
        store.close()
        assert not conn.closed


def test_int8_bundle_missing_is_bundle_error(bundle_dir, tmp_path):
    from jointembed_pg.errors import BundleError
    import shutil
    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d, symlinks=True)
    with pytest.raises(BundleError, match="no int8 variant"):
        bulk.load_bundle(d, int8=True)
    (tmp_path / "b-int8").write_text("not a dir")
    with pytest.raises(BundleError):
        bulk.load_bundle(d, int8=True)


@pytest.mark.parametrize("given", ["same psycopg connection", "SQLAlchemy Connection and its driver connection"])
def test_two_stores_on_one_connection_never_share_a_transaction(pg_dsn, given):
    """Two Stores given the same connection serialise on it: one Store's rolled-back
    transaction never takes another thread's committed write with it. A SQLAlchemy
    Connection and the psycopg connection under it are one connection too."""
    import contextlib

    with contextlib.ExitStack() as stack:
        if given.startswith("same"):
            conn = stack.enter_context(psycopg.connect(pg_dsn))
            s1, s2 = Store(conn), Store(conn)
        else:
            from jointembed_pg.search.sqla import create_engine

            engine = create_engine(pg_dsn)
            stack.callback(engine.dispose)
            sa_conn = stack.enter_context(engine.connect())
            conn = sa_conn.connection.driver_connection
            s1, s2 = Store(sa_conn), Store(conn)
        c1 = s1.collection("c", model_id="m", dim=D, create=True)
        conn.commit()
        c2 = s2.collection("c")
        v = _vecs(2)
        inside, done = threading.Event(), threading.Event()

        def other():
            inside.wait(30)
            c2.upsert([("image", "b", None, None, None, v[1])])   # "committed" when it returns
            done.set()
        t = threading.Thread(target=other)
        t.start()
        with pytest.raises(RuntimeError):
            with s1.transaction():
                c1.upsert([("image", "a", None, None, None, v[0])])
                inside.set()
                done.wait(2)                       # without one lock per connection, b joins this transaction
                raise RuntimeError("roll back")
        t.join(30)
        assert done.is_set()
        conn.commit()
        assert c1.existing_keys("image", ["a", "b"]) == {"b"}


def test_add_with_hostile_keys_fails_alone(store, bundle, flickr8k_dir, tmp_path):
    c = store.collection("h", bundle=bundle)
    rep = c.add_texts(["a dog", "a cat", "a bird", "a fish", "a cow"],
                      keys=[1, "x\x00y", "k" * 5000, "", "good"], index=False)
    assert rep.written == 1 and len(rep.failed) == 4, rep
    img = sorted((flickr8k_dir / "images").glob("*.jpg"))[0]
    rep = c.add_images([img, img, img, img], keys=[None, "a\x00", "k" * 5000, "ok"], index=False)
    assert rep.written == 1 and len(rep.failed) == 3, rep
    assert c.count() == 2


def test_closed_or_foreign_targets(pg_dsn):
    conn = psycopg.connect(pg_dsn)
    store = Store(conn)
    conn.close()
    with pytest.raises(DatabaseError):
        store.collection("c", model_id="m", dim=D, create=True)
    with pytest.raises(DatabaseError):
        Store(conn)
    for bad in (42, b"postgresql://x", object()):
        with pytest.raises(TypeError):
            Store(bad)


def test_names_with_control_characters_stay_one_line(pg_dsn, bundle):
    name = "ta\nble\r\x1b[31m"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
            psycopg.sql.Identifier("public", name)))
    with Store(pg_dsn) as store:
        with pytest.raises(DatabaseError) as ei:
            store.attachment(name, schema="we\nird")
        assert "\n" not in str(ei.value) and "\x1b" not in str(ei.value)
        att = store.attach(("public", name), key="id", text="body", bundle=bundle)
        assert "\n" not in repr(att) and "\x1b" not in repr(att) and att.table == name
        att.detach()


def test_image_query_symlink_to_device_and_huge_sparse_file(store, bundle, tmp_path):
    c = store.collection("img", bundle=bundle)
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        f.truncate(20 * 2 ** 30)                    # 20 GiB of holes: never read whole
    for q in (link, sparse, str(sparse)):
        out = _timeout(lambda: c.search(q, k=1, image=True), 60)
        assert isinstance(out.get("e"), InputError), (q, out)


@pytest.mark.parametrize("dim", [True, 8.0, "8", 0, 16001, -8])
def test_bad_dim_refused(store, dim):
    with pytest.raises(ArgumentError):
        store.collection("d", model_id="m", dim=dim, create=True)
    assert store.collections() == []


@pytest.mark.parametrize("where", [None, {"key": ["k1", "k2", "k3"]}])
def test_huge_k_through_the_index(coll, where):
    coll.ensure_index()
    hits = coll.search(_vecs(1)[0], k=2 ** 31 - 1, where=where)
    assert len(hits) == (10 if where is None else 3)
    assert [h.key for h in hits] == [h.key for h in coll.search(_vecs(1)[0], k=50, exact=True, where=where)]


def test_lone_surrogates_are_refused_cleanly(store, bundle, coll):
    with pytest.raises((ArgumentError, DatabaseError)):
        store.collection("bad\udc80", model_id="m", dim=D, create=True)
    with pytest.raises((ArgumentError, DatabaseError)):
        store.attachment("t\udc80", schema="s")
    with pytest.raises((ArgumentError, InputError, DatabaseError)):
        store.collection("img", bundle=bundle).search("a dog \udc80", k=1)
    rep = store.collection("img", bundle=bundle).add_texts(["fine text", "bad \udc80", "ok"],
                                                           keys=["a", "b", "c\udc80"], index=False)
    assert rep.written == 1 and len(rep.failed) == 2, rep
    assert coll.search(_vecs(1)[0], k=1)


@pytest.mark.parametrize("emb", [np.zeros(D, np.complex64) + 1j, np.array(["1"] * D), np.full(D, 1e39),
                                 np.array([None] * D)])
def test_upsert_refuses_unreal_embeddings(coll, emb):
    with pytest.raises(InputError):
        coll.upsert([("image", "bad", None, None, None, emb)])
    assert coll.count() == 10


def test_attached_without_bundle_and_bad_reembed_argument(pg_dsn, bundle):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO t VALUES (1, 'a dog on a beach')")
    with Store(pg_dsn) as store:
        att = store.attach("t", key="id", text="body", bundle=bundle)
        att.sync()
        bare = store.attachment("public.t")
        with pytest.raises(ArgumentError):
            bare.sync()
        with pytest.raises(ArgumentError):
            bare.search("a dog")
        v = bundle.encode_texts("a dog on a beach")
        assert bare.search(v, k=1, target="text")[0][0] == 1
        with pytest.raises((ArgumentError, InputError)):
            bare.search(np.full(bundle.dim, np.nan, np.float32))
        for bad in (None, "default", 42):
            with pytest.raises(ArgumentError):
                att.reembed(bad)
        assert att.bundle is bundle
        att.detach()


@pytest.mark.parametrize("bad", ["default", 42, Path("/nonexistent")])
def test_collection_and_attach_refuse_a_bundle_that_is_not_loaded(store, bad):
    with pytest.raises(ArgumentError):
        store.collection("c", bundle=bad)
    with pytest.raises(ArgumentError):
        store.attach("t", key="id", text="body", bundle=bad)
    assert store.collections() == []
