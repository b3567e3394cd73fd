"""Search on ≥ 10,000 synthetic embedding-like vectors: HNSW use, recall vs exact, SQL
functions vs the Python API, ef_search control, filtered queries that return exactly k.

Vectors mimic real joint embeddings: unit-norm, clustered, and each text near "its" image.
"""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg import sql

from jointembed_pg.search import knn as search
from jointembed_pg.search.store import Store

D = 128
N_IMAGES, N_TEXTS = 10_000, 2_000
N_QUERIES, K = 40, 10


LATENT = 32  # real embeddings have a low intrinsic dimension; isotropic noise would not


def embedding_like(n: int, rng: np.random.Generator, centres: np.ndarray, noise: float = 0.05) -> np.ndarray:
    """``(n, D) float32`` unit vectors: clustered latent points mapped into D plus small noise."""
    z = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, LATENT))
    x = z @ _MIX + noise * rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


_MIX = np.random.default_rng(0).standard_normal((LATENT, D)) / np.sqrt(LATENT)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synth(module_pg_dsn):
    rng = np.random.default_rng(42)
    centres = rng.standard_normal((300, LATENT))
    img = embedding_like(N_IMAGES, rng, centres)
    txt = _unit(img[:N_TEXTS] + 0.1 * rng.standard_normal((N_TEXTS, D)))
    store = Store(module_pg_dsn)
    coll = store.collection("synth", model_id="synthetic", dim=D, create=True)
    rows = [("image", f"img{i}", f"/photos/{i}.jpg", None, None, img[i]) for i in range(N_IMAGES)]
    rows += [("text", f"txt{i}", f"/photos/{i}.jpg", f"caption {i}", None, txt[i]) for i in range(N_TEXTS)]
    for s in range(0, len(rows), 4000):
        coll.upsert(rows[s:s + 4000])
    coll.ensure_index()
    with store.transaction() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
    queries = embedding_like(N_QUERIES, rng, centres)
    yield store, coll, queries
    store.close()


def recall_at_k(approx, exact) -> float:
    hits = [len({h.id for h in a} & {h.id for h in e}) / len(e) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


#: A plain filtered HNSW query (what search ran before jointembed.knn): a filter on top
#: of an index scan that sees only hnsw.ef_search candidates.
PLAIN_INDEX_QUERY = sql.SQL("""
SELECT i.id, i.key, i.modality, i.embedding <-> %(je_q)s AS distance, i.source, i.text{extra}
FROM {items} i
WHERE i.modality = {target} AND ({where})
ORDER BY i.embedding <-> %(je_q)s
LIMIT %(je_k)s""")


def _explain(conn, composed, params) -> str:
    rows = conn.execute(sql.SQL("EXPLAIN ") + composed, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_python_query_uses_hnsw_index_and_exact_does_not(synth):
    """Index scans counted inside the transaction (pg_stat_get_xact_numscans) per call."""
    store, coll, queries = synth
    scans = sql.SQL("SELECT pg_stat_get_xact_numscans({}::regclass)").format(
        sql.Literal(f"jointembed.{coll.index_name('image')}"))
    with store.transaction() as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE modality = 'image'")
                            .format(coll.table_ident)).fetchone()[0] >= 10_000
        for exact, expected in [(False, 1), (True, 0)]:
            before = conn.execute(scans).fetchone()[0]
            assert len(search.run(conn, coll.table_ident, queries[0], targets=["image"], k=K, exact=exact)) == K
            assert conn.execute(scans).fetchone()[0] - before == expected


def test_sql_functions_use_hnsw_index(synth):
    """Index scans counted inside the transaction (pg_stat_get_xact_numscans) per call."""
    store, coll, queries = synth
    scans_sql = sql.SQL("SELECT pg_stat_get_xact_numscans({}::regclass), pg_stat_get_xact_numscans({}::regclass)")
    idx = [sql.Literal(f"jointembed.{coll.index_name(m)}") for m in ("image", "text")]
    item = coll.search_vector(queries[0], k=1)[0].id
    calls = [
        ("SELECT * FROM jointembed.search('synth', %s, 10, 'image')", [queries[0]], (1, 0)),
        ("SELECT * FROM jointembed.search('synth', %s, 10, 'text')", [queries[0]], (0, 1)),
        ("SELECT * FROM jointembed.search('synth', %s, 10)", [queries[0]], (1, 1)),
        ("SELECT * FROM jointembed.more_like_this('synth', %s, 10)", [item], (1, 0)),
    ]
    for stmt, args, expected in calls:
        with store.transaction() as conn:
            before = conn.execute(scans_sql.format(*idx)).fetchone()
            assert len(conn.execute(stmt, args).fetchall()) == 10
            after = conn.execute(scans_sql.format(*idx)).fetchone()
        assert (after[0] - before[0], after[1] - before[1]) == expected, stmt


@pytest.mark.parametrize("target", ["image", "text"])
def test_recall_at_default_ef_search(synth, target):
    store, coll, queries = synth
    approx = [coll.search_vector(q, target=target, k=K) for q in queries]
    exact = [coll.search_vector(q, target=target, k=K, exact=True) for q in queries]
    assert all(len(a) == K for a in approx)
    r = recall_at_k(approx, exact)
    print(f"synthetic recall@{K} -> {target} at ef_search 40: {r:.3f}")
    assert r >= 0.95


def test_ef_search_control(synth):
    store, coll, queries = synth
    hi = [coll.search_vector(q, k=K, ef_search=400) for q in queries[:10]]
    exact = [coll.search_vector(q, k=K, exact=True) for q in queries[:10]]
    assert recall_at_k(hi, exact) >= 0.99
    big = coll.search_vector(queries[0], k=150)  # k above the default ef_search of 40
    assert len(big) == 150 and [h.distance for h in big] == sorted(h.distance for h in big)
    with pytest.raises(ValueError):
        coll.search_vector(queries[0], ef_search=5000)
    with store.transaction() as conn:
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0] == "40"


def test_sql_functions_match_python_api(synth):
    store, coll, queries = synth
    with store.transaction() as conn:
        for q in queries[:10]:
            for target in ("image", "text", None):
                py = [(h.id, h.key, h.modality, h.source, h.text) for h in coll.search_vector(q, target=target, k=K)]
                got = conn.execute("SELECT id, key, modality, source, text, distance "
                                   "FROM jointembed.search('synth', %s, %s, %s)", [q, K, target]).fetchall()
                assert [r[:5] for r in got] == py
                assert [r[5] for r in got] == sorted(r[5] for r in got)
        item = coll.search_vector(queries[0], k=1)[0].id
        for target in ("image", "text", None):
            py = [h.id for h in coll.more_like_this(item, target=target, k=K)]
            got = conn.execute("SELECT id FROM jointembed.more_like_this('synth', %s, %s, %s)",
                               [item, K, target]).fetchall()
            assert [r[0] for r in got] == py and item not in py
        many = conn.execute("SELECT count(*) FROM jointembed.search('synth', %s, 150, 'image')", [queries[0]])
        assert many.fetchone()[0] == 150  # k above ef_search: raised for the call...
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone()[0] == "40"  # ...and restored
        assert "embedding" not in [c.name for c in conn.execute(
            "SELECT * FROM jointembed.search('synth', %s, 1)", [queries[0]]).description]
        with pytest.raises(psycopg.errors.UndefinedTable):
            with conn.transaction():
                conn.execute("SELECT * FROM jointembed.search('nope', %s, 1)", [queries[0]])


# --- filtered queries: exactly k rows ---------------------------------------------

@pytest.fixture(scope="module")
def filtered(synth):
    """A 5,000-image collection where 1% (50 rows) carry source '/shop/...'."""
    store, _, queries = synth
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((100, LATENT))
    emb = embedding_like(5000, rng, centres)
    shop = set(rng.choice(5000, size=50, replace=False).tolist())
    rows = [("image", f"p{i}", f"/shop/{i}.jpg" if i in shop else f"/other/{i}.jpg", None, None, emb[i])
            for i in range(5000)]
    coll = store.collection("filtered", model_id="synthetic", dim=D, create=True)
    coll.upsert(rows)
    coll.ensure_index()
    with store.transaction() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
        conn.execute("CREATE TABLE products (id serial PRIMARY KEY, title text, image_path text, in_stock bool)")
        conn.execute("INSERT INTO products (title, image_path, in_stock) "
                     "SELECT 'product ' || n, '/shop/' || n || '.jpg', n %% 2 = 0 FROM unnest(%s::int[]) n",
                     [sorted(shop)])
    return store, coll, embedding_like(10, rng, centres)


def test_plain_index_scan_loses_rows_under_a_selective_filter(filtered):
    """The problem being solved: HNSW (pgvector 0.6) filters after the scan."""
    store, coll, queries = filtered
    fmt = dict(items=coll.table_ident, target=sql.Literal("image"),
               where=sql.SQL("i.source LIKE '/shop/%%'"), extra=sql.SQL(""))
    with store.transaction() as conn:
        conn.execute("SET LOCAL enable_sort = off")  # make the planner pick HNSW, as on big tables
        plan = _explain(conn, PLAIN_INDEX_QUERY.format(**fmt), {"je_q": queries[0], "je_k": K})
        assert coll.index_name("image") in plan
        counts = [len(conn.execute(PLAIN_INDEX_QUERY.format(**fmt), {"je_q": q, "je_k": K}).fetchall())
                  for q in queries]
    assert min(counts) < K


@pytest.mark.parametrize("path", ["probe-exact", "index-escalation"])
@pytest.mark.parametrize("where, params", [
    ("i.source LIKE %(prefix)s", {"prefix": "/shop/%"}),
    ("EXISTS (SELECT 1 FROM products p WHERE p.image_path = i.source)", None),
], ids=["item-column", "join-user-table"])
def test_filtered_search_returns_exactly_k(filtered, path, where, params):
    """1% of 5,000 rows match; k=10 must give 10 rows, the exact ones.

    "probe-exact": the default (few matches → exact scan of them). "index-escalation":
    the probe is disabled and sorting discouraged, so the planner scans HNSW and the
    ef_search escalation / exact fallback (pgvector < 0.8) or the strict_order iterative
    scan (>= 0.8; approximate like any HNSW scan) must deliver the k rows.
    """
    store, coll, queries = filtered
    overlap: list[float] = []
    with store.transaction() as conn:
        if path == "index-escalation":
            conn.execute("SET LOCAL enable_sort = off")
            plan = _explain(conn, PLAIN_INDEX_QUERY.format(
                items=coll.table_ident, target=sql.Literal("image"), where=sql.SQL(where), extra=sql.SQL("")),
                {"je_q": queries[0], "je_k": K, **(params or {})})
            assert coll.index_name("image") in plan
        for q in queries:
            got = search.run(conn, coll.table_ident, q, targets=["image"], k=K, where=where, params=params,
                             exact_below=2000 if path == "probe-exact" else 0)  # >= 0.8: strict_order
            ref = search.run(conn, coll.table_ident, q, targets=["image"], k=K, where=where, params=params,
                             exact=True)
            assert len(got) == K and all(h.source.startswith("/shop/") for h in got)
            if path == "index-escalation" and store.iterative_scan:
                overlap.append(len({h.id for h in got} & {h.id for h in ref}) / K)  # ANN, like unfiltered
            else:  # ef_search escalated to 1000 or exact fallback: the exact answer
                assert [h.id for h in got] == [h.id for h in ref]
    assert not overlap or np.mean(overlap) >= 0.95
    got = coll.search_vector(queries[0], k=K, where=where, params=params)  # the public API
    ref = coll.search_vector(queries[0], k=K, where=where, params=params, exact=True)
    assert [h.id for h in got] == [h.id for h in ref]


def test_filter_mapping_and_fewer_matches_than_k(filtered):
    store, coll, queries = filtered
    got = coll.search_vector(queries[0], k=K, where={"source": ["/other/1.jpg", "/other/2.jpg", "/nope"]})
    assert sorted(h.source for h in got) == ["/other/1.jpg", "/other/2.jpg"]
    half = coll.search_vector(queries[0], k=K, where="EXISTS (SELECT 1 FROM products p WHERE "
                              "p.image_path = i.source AND p.in_stock)")
    assert len(half) == K
    with pytest.raises(ValueError):
        coll.search_vector(queries[0], where={"embedding": 1})
