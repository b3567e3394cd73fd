"""Collections with a binary IVFFlat search index (issue 26, item 4): ``--index binary-ivf``.

An IVFFlat index with ``bit_hamming_ops`` on ``binary_quantize(embedding)::bit(D)`` per
modality (``indexing.ivf_lists(rows)`` lists, named ``..._bit_ivf``); ``jointembed.knn``
sets ``ivfflat.probes`` from ``jointembed._knn_ivf_probes(lists, rows, pool)``, takes the
Hamming pool from the index and re-ranks it by exact L2, returning exactly k rows (probes
x4 on pgvector < 0.8, iterative scan on >= 0.8, then the exact scan). Refused with the
reason on pgvector < 0.7.
"""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg import sql

from jointembed_pg.errors import DatabaseError, ModelMismatchError
from jointembed_pg.search import indexing
from jointembed_pg.search.store import Store

from _pg import exact_image_ids, knn_debug_lines, unit  # noqa: E402

D, N, K, LISTS = 32, 4000, 10, 100


@pytest.fixture(scope="module")
def ivf(module_pg_dsn, pgvector_version):
    """4,000 unit images (200 clusters of 20) + 30 captions in collection 'ivf' (index binary-ivf).

    ``ensure_index`` builds both modalities' indexes by the rule (4 lists for the images);
    the image index is then rebuilt with 100 lists, so that the probes rule (50 of 100 for a
    pool of 1000) probes a part of them. ``enable_sort = off`` on the Store's connection: the
    planner takes the index as on a large table. ``source`` is ``/r/<i>`` with ``/x/<i>``
    for every 50th row (a selective filter).
    """
    from _pg import version_tuple
    if version_tuple(pgvector_version) < (0, 7):
        pytest.skip(f"binary-ivf needs pgvector >= 0.7; the test server has {pgvector_version}")
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((N // 20, D))
    emb = unit(np.repeat(centres, 20, axis=0) + 0.3 * rng.standard_normal((N, D)))
    txt = unit(rng.standard_normal((30, D)))
    store = Store(module_pg_dsn)
    with store.transaction() as conn:
        conn.execute("SET enable_sort = off")
    coll = store.collection("ivf", model_id="synthetic", dim=D, create=True, index="binary-ivf")
    coll.upsert([("image", f"k{i}", f"/{'x' if i % 50 == 0 else 'r'}/{i}", None, None, emb[i]) for i in range(N)]
                + [("text", f"t{i}", None, f"caption {i}", None, txt[i]) for i in range(30)])
    built = coll.ensure_index()
    with store.transaction() as conn:
        defs = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                                 [coll.info.items_table]).fetchall())
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("jointembed", coll.index_name("image"))))
    with store.connection() as conn:
        indexing.ensure_hnsw(conn, indexing.IndexSpec(
            "jointembed", coll.info.items_table, coll.index_name("image"), "image", "vector", D, 16, 64,
            store.vector_schema, binary=True, method="ivfflat", lists=LISTS))
    with store.transaction() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
    yield store, coll, emb, built, defs
    store.close()


def test_lists_rule():
    assert [indexing.ivf_lists(n) for n in (0, 999, 4000, 100_000, 1_000_000, 4_000_000)] == [1, 1, 4, 100, 1000, 2000]


def test_catalog_row_and_ivfflat_bit_indexes_by_the_rule(ivf):
    store, coll, _, built, defs = ivf
    assert coll.info.index == "binary-ivf"
    assert [c.index for c in store.collections() if c.name == "ivf"] == ["binary-ivf"]
    assert sorted(built) == sorted(coll.index_name(m) for m in ("image", "text"))
    for modality, lists in (("image", 4), ("text", 1)):
        d = defs[coll.index_name(modality)]
        assert coll.index_name(modality).endswith(f"_{modality}_bit_ivf")
        assert "USING ivfflat" in d and "binary_quantize(embedding)" in d and f"bit({D})" in d, d
        assert "bit_hamming_ops" in d and f"lists='{lists}'" in d, d
    assert not any("hnsw" in name for name in defs)


def test_pool_and_probes_rules(pg_dsn, pgvector_version):
    """Pool max(100 k, 1000) <= 10000; probes ceil(2 lists^0.6), >= 2 pool lists / rows, >= 8, <= lists."""
    from _pg import version_tuple
    if version_tuple(pgvector_version) < (0, 7):
        pytest.skip("the rules ship with the binary index functions (any pgvector); checked once on >= 0.7")
    with Store(pg_dsn) as store, store.transaction() as conn:
        pools = [conn.execute("SELECT jointembed._knn_ivf_pool(%s)", [k]).fetchone()[0] for k in (1, 10, 50, 500)]
        got = [conn.execute("SELECT jointembed._knn_ivf_probes(%s, %s, %s)", a).fetchone()[0]
               for a in ((100, 4000, 1000), (100, 1e5, 1000), (300, 3e5, 1000), (1000, 1e6, 1000), (4, 4000, 1000),
                         (100, 1, 1000), (1, 0, 1000))]
    assert pools == [1000, 1000, 5000, 10000]
    assert got == [50, 32, 62, 127, 4, 100, 1]


def test_the_ivf_index_answers_and_results_equal_exact_l2(ivf):
    store, coll, emb, _, _ = ivf
    for qi in (0, 17, 1234, 3999):
        q = emb[qi]
        with store.transaction() as conn:
            ref = exact_image_ids(conn, coll.table_ident, q)
            plan = "\n".join(r[0] for r in conn.execute(sql.SQL(
                "EXPLAIN SELECT id FROM {} i WHERE modality = 'image' ORDER BY "
                "CAST(binary_quantize(i.embedding) AS bit({})) <~> binary_quantize(%s::vector) LIMIT 1000"
            ).format(coll.table_ident, sql.Literal(D)), [q]).fetchall())
            assert coll.index_name("image") in plan, plan
            rows, notes = knn_debug_lines(conn, "SELECT id, distance FROM jointembed.search('ivf', %s, %s, 'image')", [q, K])
            assert conn.execute("SELECT current_setting('ivfflat.probes')").fetchone()[0] == "1"  # restored
        assert [r[0] for r in rows] == ref
        assert len(rows) == K and all(a[1] <= b[1] for a, b in zip(rows, rows[1:]))
        assert notes[0] == f"jointembed.knn: binary-ivf index: 1000 Hamming candidates from 50 of {LISTS} lists " \
                           "re-ranked by L2", notes
        assert notes[1] == "jointembed.knn: 10 rows of 10 at ivfflat.probes 50", notes
        assert not any("exact scan" in n for n in notes), notes
        assert [h.id for h in coll.search_vector(q, k=K)] == ref  # Python path, same function


def test_k_is_exact_for_every_k(ivf):
    store, coll, emb, _, _ = ivf
    for k in (1, 5, 150, 1000, N, N + 7):
        assert len(coll.search_vector(emb[3], k=k)) == min(k, N)
    assert len(coll.search_vector(emb[3], k=5, target="text")) == 5
    assert len(coll.search_vector(emb[3], k=40, target="text")) == 30


def test_a_selective_filter_stays_exact_k(ivf):
    """80 rows match; the probed lists hold few of them: pgvector >= 0.8 scans on
    (iterative), older versions raise the probes; k rows that match, never the exact scan."""
    store, coll, emb, _, _ = ivf
    with store.transaction() as conn:
        rows, notes = knn_debug_lines(conn, sql.SQL(
            "SELECT (k.item).id FROM jointembed.knn(NULL::{}, %s::vector, %s, 'image', "
            "p_filter => $f$i.source LIKE '/x/%%'$f$, p_exact_below => 0) k").format(coll.table_ident), [emb[7], K])
        ref = exact_image_ids(conn, coll.table_ident, emb[7], cond="i.source LIKE '/x/%%'")
    assert [r[0] for r in rows] == ref
    assert not any("exact scan" in n for n in notes), notes


def test_an_existing_collection_must_match(ivf):
    store, _, _, _, _ = ivf
    with pytest.raises(ModelMismatchError, match="binary-ivf search index, not binary"):
        store.collection("ivf", index="binary")


def test_binary_ivf_is_refused_before_pgvector_0_7_with_the_reason(pg_dsn, pgvector_version):
    from _pg import version_tuple
    with pytest.raises(DatabaseError, match=r"index binary-ivf needs pgvector >= 0\.7 .*has pgvector 0\.6\.2"):
        indexing.check_index("binary-ivf", (0, 6, 2))
    with Store(pg_dsn) as store:
        store.collection("c", model_id="synthetic", dim=D, create=True)
        with store.transaction() as conn:
            if version_tuple(pgvector_version) < (0, 7):
                with pytest.raises(psycopg.errors.FeatureNotSupported,
                                   match="index binary-ivf needs pgvector >= 0.7.0"):
                    conn.execute("SELECT jointembed.set_collection_index('c', 'binary-ivf')")
            else:
                assert conn.execute("SELECT index_kind FROM jointembed.set_collection_index('c', 'binary-ivf')"
                                    ).fetchone() == ("binary-ivf",)


def test_cli_init_index_binary_ivf(pg_dsn, bundle_dir):
    """`init --collection NAME --index binary-ivf` makes a binary-ivf collection (pgvector >= 0.7)
    or exits 1 with the reason (0.6)."""
    import os
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    p = subprocess.run([sys.executable, "-m", "jointembed_pg", "init", "--dsn", pg_dsn, "--collection", "v",
                        "--index", "binary-ivf", "--bundle", str(bundle_dir)],
                       capture_output=True, text=True, env=e, timeout=600)
    with Store(pg_dsn) as store:
        if store.vector_version < (0, 7):
            assert p.returncode == 1 and "index binary-ivf needs pgvector >= 0.7" in p.stderr, p.stderr
            return
        assert p.returncode == 0, p.stderr
        assert store.collection("v").info.index == "binary-ivf"


def test_an_outgrown_ivf_index_is_reported_with_the_fix(pg_dsn, pgvector_version, caplog):
    """Indexed while small (1 list), then grown to 4,010 rows (the rule: 4 lists): every
    search would scan all rows through the one list. ensure_index leaves the index but says
    so, with the rebuild; an index that fits its rows says nothing."""
    from _pg import version_tuple
    if version_tuple(pgvector_version) < (0, 7):
        pytest.skip(f"binary-ivf needs pgvector >= 0.7; the test server has {pgvector_version}")
    emb = unit(np.random.default_rng(3).standard_normal((4010, D)))
    with Store(pg_dsn) as store:
        coll = store.collection("grown", model_id="synthetic", dim=D, create=True, index="binary-ivf")
        coll.upsert([("image", f"k{i}", f"/r/{i}", None, None, emb[i]) for i in range(10)])
        assert coll.ensure_index(modalities=["image"]) == [coll.index_name("image")]
        caplog.clear()
        assert coll.ensure_index(modalities=["image"]) == []
        assert not [r for r in caplog.records if "IVFFlat lists" in r.getMessage()]
        coll.upsert([("image", f"k{i}", f"/r/{i}", None, None, emb[i]) for i in range(10, 4010)])
        assert coll.ensure_index(modalities=["image"]) == []       # left as it is ...
        msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "IVFFlat lists" in r.getMessage()]
        assert len(msgs) == 1, msgs                                 # ... but reported, with the fix
        assert f"index {coll.index_name('image')} has 1 IVFFlat lists" in msgs[0]
        assert "4010 now (the rule gives 4)" in msgs[0] and "DROP INDEX" in msgs[0], msgs[0]
        assert len(coll.search_vector(emb[5], k=7)) == 7
