"""Store / Collection on a real PostgreSQL: writes, model checks, hostile names, indexes."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest

from jointembed_pg.errors import DatabaseError, InputError, ModelMismatchError
from jointembed_pg.search.store import Store

D = 16
HOSTILE = "ph'o\"tos; DROP TABLE jointembed.collections; -- ünï 名前 %s {x}"


def _rows(n, modality="image", seed=0, prefix="k"):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, D)).astype(np.float32)
    return [(modality, f"{prefix}{i}", f"/img/{i}.jpg", None if modality == "image" else f"caption {i}",
             f"h{i}", emb[i]) for i in range(n)]


@pytest.fixture
def store(pg_dsn):
    with Store(pg_dsn) as s:
        yield s


def test_upsert_count_hashes_and_update(store):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    assert coll.upsert(_rows(50)) == 50
    assert coll.upsert(_rows(20, "text")) == 20
    assert coll.count() == 70 and coll.count("image") == 50 and coll.count("text") == 20
    assert coll.content_hashes("image", ["k1", "k2", "nope"]) == {"k1": "h1", "k2": "h2"}
    assert coll.existing_keys("text", ["k0", "k99"]) == {"k0"}
    changed = [("image", "k1", "/new.jpg", None, "h1b", np.ones(D, np.float32))]
    coll.upsert(changed)
    assert coll.count() == 70
    assert coll.content_hashes("image", ["k1"]) == {"k1": "h1b"}
    hit = coll.search_vector(np.ones(D, np.float32), k=1, exact=True)[0]
    assert (hit.key, hit.source, hit.distance) == ("k1", "/new.jpg", 0.0)


def test_upsert_accepts_row_objects_and_last_duplicate_wins(store):
    @dataclass(frozen=True)
    class Row:
        modality: str
        key: str
        source: str | None
        text: str | None
        content_hash: str | None
        embedding: np.ndarray

    coll = store.collection("c", model_id="m1", dim=D, create=True)
    e = np.zeros(D, np.float32)
    assert coll.upsert([Row("text", "a", None, "first", "1", e), Row("text", "a", None, "second", "2", e)]) == 1
    assert coll.content_hashes("text", ["a"]) == {"a": "2"}
    assert coll.get(coll.search_vector(e, target="text", k=1)[0].id).text == "second"


@pytest.mark.parametrize("bad, match", [
    (("video", "a", None, None, None, np.zeros(D)), "modality"),
    (("image", "", None, None, None, np.zeros(D)), "key"),
    (("image", "a", None, None, None, np.zeros(D + 1)), "shape"),
    (("image", "a", None, None, None, np.full(D, np.nan)), "NaN"),
])
def test_bad_rows_write_nothing(store, bad, match):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    with pytest.raises(InputError, match=match):
        coll.upsert(_rows(3) + [bad])
    assert coll.count() == 0


def test_model_mismatch_refused_before_any_write(store, pg_dsn):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    coll.upsert(_rows(5))
    state_sql = ("SELECT (SELECT array_agg(xmin::text || ':' || name ORDER BY id) FROM jointembed.collections), "
                 "(SELECT count(*) FROM pg_class WHERE relnamespace = 'jointembed'::regnamespace)")
    with psycopg.connect(pg_dsn) as c:
        before = c.execute(state_sql).fetchone()
    with pytest.raises(ModelMismatchError, match="m1"):
        store.collection("c", model_id="m2", dim=D, create=True)
    with pytest.raises(ModelMismatchError, match=str(D)):
        store.collection("c", model_id="m1", dim=D + 1)
    with psycopg.connect(pg_dsn) as c:
        assert c.execute(state_sql).fetchone() == before
    assert [c.model_id for c in store.collections()] == ["m1"]
    assert coll.count() == 5


def test_missing_collection_and_create_arguments(store):
    with pytest.raises(DatabaseError, match="no collection"):
        store.collection("absent")
    with pytest.raises(ValueError):
        store.collection("absent", create=True)
    assert store.collections() == []


def test_hostile_collection_name(store):
    coll = store.collection(HOSTILE, model_id="m'1", dim=D, create=True)
    rows = _rows(30)
    coll.upsert(rows)
    coll.ensure_index()
    q = rows[3][5]
    assert coll.search_vector(q, k=1)[0].key == "k3"
    with store.transaction() as conn:
        got = conn.execute("SELECT key FROM jointembed.search(%s, %s, 1, 'image')", [HOSTILE, q]).fetchall()
    assert got == [("k3",)]
    assert store.collection(HOSTILE).model_id == "m'1"
    assert [c.name for c in store.collections()] == [HOSTILE]
    assert store.drop_collection(HOSTILE) and not store.drop_collection(HOSTILE)
    assert store.collections() == []


def test_ensure_index_twice_is_fast_noop_even_while_table_locked(store, pg_dsn):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    coll.upsert(_rows(200))
    assert sorted(coll.ensure_index(m=8, ef_construction=32)) == [coll.index_name("image"), coll.index_name("text")]
    with psycopg.connect(pg_dsn) as other:  # an open writer holds ROW EXCLUSIVE on the table
        other.execute(psycopg.sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(coll.table_ident))
        t0 = time.perf_counter()
        assert coll.ensure_index() == []
        assert time.perf_counter() - t0 < 1.0
        other.rollback()
    with pytest.raises(ValueError):
        coll.ensure_index(m=16, ef_construction=8)


def test_store_on_given_connection_keeps_caller_transaction(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        store = Store(conn)
        coll = store.collection("c", model_id="m1", dim=D, create=True)
        conn.commit()
        with conn.transaction():
            coll.upsert(_rows(4))
            coll.search_vector(np.zeros(D), k=2, ef_search=77)
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"  # restored
            raise_rollback = psycopg.Rollback()
            raise raise_rollback
        assert coll.count() == 0  # rolled back with the caller's transaction


def test_store_on_sqlalchemy_engine(pg_dsn):
    from jointembed_pg.search.sqla import create_engine

    engine = create_engine(pg_dsn)
    store = Store(engine)
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    rows = _rows(20)
    coll.upsert(rows)
    assert coll.search_vector(rows[7][5], k=1)[0].key == "k7"
    engine.dispose()


def test_query_vector_checks(store):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    with pytest.raises(ModelMismatchError):
        coll.search_vector(np.zeros(D + 2))
    with pytest.raises(InputError):
        coll.search_vector(np.full(D, np.inf))
    with pytest.raises(ValueError):
        coll.search_vector(np.zeros(D), target="video")
    with pytest.raises(ValueError):
        coll.search_vector(np.zeros(D), k=0)


def test_more_like_this_and_get(store):
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    coll.upsert(_rows(40) + _rows(40, "text", seed=1))
    item = coll.search_vector(_rows(40)[5][5], k=1)[0]
    hits = coll.more_like_this(item.id, k=5)
    assert len(hits) == 5 and item.id not in {h.id for h in hits}
    assert all(h.modality == "image" for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert all(h.modality == "text" for h in coll.more_like_this(item.id, target="text", k=3))
    full = coll.get(item.id)
    assert full.embedding.shape == (D,) and full.embedding.dtype == np.float32
    with pytest.raises(DatabaseError):
        coll.get(10**9)
    assert coll.delete("image", ["k5"]) == 1


def test_sqlalchemy_orm_model_and_nearest(pg_dsn):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from jointembed_pg.search.sqla import create_engine, item_model, nearest

    engine = create_engine(pg_dsn)
    coll = Store(engine).collection("c", model_id="m1", dim=D, create=True)
    rows = _rows(30) + _rows(10, "text", seed=1)
    coll.upsert(rows)
    Item = item_model(coll)
    assert item_model(coll.info) is Item
    with Session(engine) as session:
        got = session.execute(nearest(Item, rows[4][5], k=3)).all()
        assert [r[0].key for r in got][0] == "k4" and got[0].distance == 0.0
        assert all(r[0].modality == "image" for r in got)
        ref = [h.key for h in coll.search_vector(rows[4][5], k=3, exact=True)]
        assert [r[0].key for r in got] == ref
        item = session.scalars(select(Item).where(Item.key == "k4", Item.modality == "image")).one()
        assert len(item.embedding) == D
    engine.dispose()


def test_owned_connection_reconnects_after_loss(pg_dsn):
    """The Store's own psycopg_pool checks a connection before lending it: one killed by
    the server is replaced, and the next operation succeeds at once."""
    store = Store(pg_dsn, max_size=1)
    coll = store.collection("c", model_id="m1", dim=D, create=True)
    with store.transaction() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert coll.count() == 0  # a new connection, no error
    with store.transaction() as conn:
        assert conn.info.backend_pid != pid
    store.close()
    with pytest.raises(DatabaseError, match="closed"):
        coll.count()
