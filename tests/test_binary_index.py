"""Collections with a binary search index (issue 26): ``--index binary``.

An HNSW index with ``bit_hamming_ops`` on ``binary_quantize(embedding)::bit(D)`` per
modality; ``jointembed.knn`` (every search path) takes a Hamming candidate pool from it and
re-ranks the pool by exact L2, returning exactly k rows. Refused with the reason on
pgvector < 0.7.
"""
from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg import sql

from _pg import analyze, exact_image_ids, hnsw_store, knn_debug_lines, unit, version_tuple
from jointembed_pg.errors import DatabaseError, ModelMismatchError
from jointembed_pg.search import indexing
from jointembed_pg.search.store import Store

D, N, K = 32, 600, 10


@pytest.fixture(scope="module")
def binary(module_pg_dsn, pgvector_version):
    """600 unit images (60 clusters of 10) + 50 random captions in collection 'bin' (index binary), indexed.

    The Store's connection has ``enable_sort = off`` so the planner takes the HNSW index
    as on a large table.
    """
    if version_tuple(pgvector_version) < (0, 7):
        pytest.skip(f"binary index needs pgvector >= 0.7; the test server has {pgvector_version}")
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((N // 10, D))
    emb = unit(np.repeat(centres, 10, axis=0) + 0.3 * rng.standard_normal((N, D)))
    txt = unit(rng.standard_normal((50, D)))
    store = hnsw_store(module_pg_dsn)
    coll = store.collection("bin", model_id="synthetic", dim=D, create=True, index="binary")
    coll.upsert([("image", f"k{i}", f"/{i}.jpg", None, None, emb[i]) for i in range(N)]
                + [("text", f"t{i}", None, f"caption {i}", None, txt[i]) for i in range(50)])
    coll.ensure_index()
    analyze(store, coll)
    yield store, coll, emb
    store.close()


def test_catalog_row_and_bit_indexes(binary):
    store, coll, _ = binary
    assert coll.info.index == "binary"
    assert [c.index for c in store.collections() if c.name == "bin"] == ["binary"]
    with store.transaction() as conn:
        defs = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                                 [coll.info.items_table]).fetchall())
    for modality in ("image", "text"):
        d = defs[coll.index_name(modality)]
        assert coll.index_name(modality).endswith(f"_{modality}_bit_hnsw")
        assert "binary_quantize(embedding)" in d and f"bit({D})" in d and "bit_hamming_ops" in d, d
    assert not any(name.endswith("_image_hnsw") and "bit" not in name for name in defs)  # no float index


def test_the_bit_index_answers_and_results_equal_exact_l2(binary):
    """Pool max(40 k, 400) = 400 of 600 rows re-ranked: k rows, the exact L2 top k."""
    store, coll, emb = binary
    for qi in (0, 17, 123):
        q = emb[qi]
        with store.transaction() as conn:
            ref = exact_image_ids(conn, coll.table_ident, q)
            plan = "\n".join(r[0] for r in conn.execute(sql.SQL(
                "EXPLAIN SELECT id FROM {} i WHERE modality = 'image' ORDER BY "
                "CAST(binary_quantize(i.embedding) AS bit({})) <~> binary_quantize(%s::vector) LIMIT 400"
            ).format(coll.table_ident, sql.Literal(D)), [q]).fetchall())
            assert coll.index_name("image") in plan, plan
            rows, notes = knn_debug_lines(conn, "SELECT id, distance FROM jointembed.search('bin', %s, %s, 'image')", [q, K])
        assert [r[0] for r in rows] == ref
        assert len(rows) == K and all(a[1] <= b[1] for a, b in zip(rows, rows[1:]))
        assert notes[0] == "jointembed.knn: binary index: 400 Hamming candidates re-ranked by L2", notes
        assert not any("exact scan" in n for n in notes), notes  # the bit index answered
        assert [h.id for h in coll.search_vector(q, k=K)] == ref  # Python path, same function


def test_k_is_exact_for_every_k(binary):
    store, coll, emb = binary
    for k in (1, 5, 50, 150, N, N + 7):
        hits = coll.search_vector(emb[3], k=k)
        assert len(hits) == min(k, N)
    assert len(coll.search_vector(emb[3], k=5, target="text")) == 5


def test_filtered_search_stays_exact_k(binary):
    store, coll, emb = binary
    with store.transaction() as conn:
        rows, notes = knn_debug_lines(conn, sql.SQL(
            "SELECT (k.item).source FROM jointembed.knn(NULL::{}, %s::vector, %s, 'image', "
            "p_filter => $f$i.source LIKE '/1%%'$f$, p_exact_below => 0) k").format(coll.table_ident), [emb[9], K])
    assert len(rows) == K and all(r[0].startswith("/1") for r in rows)
    assert not any("exact scan" in n for n in notes), notes


def test_a_pool_covering_the_table_equals_exact_l2_on_random_vectors(binary):
    """k = 30: pool max(1200, 400) covers every image, so re-ranking alone decides: exact order,
    on a query with no structure (random), where the Hamming order differs from L2's."""
    store, coll, emb = binary
    q = unit(np.random.default_rng(99).standard_normal(D))
    with store.transaction() as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM jointembed.search('bin', %s, 30, 'image')",
                                           [q]).fetchall()] == exact_image_ids(conn, coll.table_ident, q, k=30)


def test_more_like_this_over_the_bit_index(binary):
    """More_like_this (SQL) over the bit index: the same ids as an exact L2 scan."""
    store, coll, emb = binary
    with store.transaction() as conn:
        item = exact_image_ids(conn, coll.table_ident, emb[40], k=1)[0]
        got = [r[0] for r in conn.execute("SELECT id FROM jointembed.more_like_this('bin', %s, %s)",
                                          [item, K]).fetchall()]
        ref = [i for i in exact_image_ids(conn, coll.table_ident, emb[40], k=K + 1) if i != item][:K]
    assert got == ref


def test_an_existing_collection_must_match(binary):
    store, _, _ = binary
    with pytest.raises(ModelMismatchError, match="binary search index, not float"):
        store.collection("bin", index="float")
    assert store.collection("bin", index="binary").info.index == "binary"


def test_float_collections_keep_the_float_path(module_pg_dsn, pgvector_version):
    if version_tuple(pgvector_version) < (0, 7):
        pytest.skip("needs the binary module fixture's server")
    with Store(module_pg_dsn) as store:
        coll = store.collection("flt", model_id="synthetic", dim=D, create=True)
        assert coll.info.index == "float" and coll.index_name("image").endswith("_image_hnsw")
        assert "bit" not in coll.index_name("image")


def test_binary_is_refused_before_pgvector_0_7_with_the_reason():
    with pytest.raises(DatabaseError, match=r"index binary needs pgvector >= 0\.7 .*has pgvector 0\.6\.2"):
        indexing.check_index("binary", (0, 6, 2))
    assert indexing.check_index("binary", (0, 7, 0)) == "binary"
    assert indexing.check_index("float", (0, 6, 2)) == "float"


def test_sql_refuses_binary_on_old_pgvector(pg_dsn, pgvector_version):
    """On the server itself: set_collection_index refuses 'binary' on pgvector < 0.7 (the
    PG 16 + pgvector 0.6 line) with the version in the message, and accepts it on >= 0.7."""
    with Store(pg_dsn) as store:
        store.collection("c", model_id="synthetic", dim=D, create=True)
        with store.transaction() as conn:
            if version_tuple(pgvector_version) < (0, 7):
                with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs pgvector >= 0.7.0"):
                    conn.execute("SELECT jointembed.set_collection_index('c', 'binary')")
            else:
                row = conn.execute("SELECT index_kind FROM jointembed.set_collection_index('c', 'binary')").fetchone()
                assert row == ("binary",)
        with store.transaction() as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT jointembed.set_collection_index('c', 'pq')")


def test_cli_index_binary_option(pg_dsn, bundle_dir, tmp_path):
    """`init --collection NAME --index binary` creates a binary collection (pgvector >= 0.7)
    or exits 1 with the reason (0.6); `index texts` into it builds the bit index, and
    `--index float` against it is a mismatch."""
    import json
    import os
    import subprocess
    import sys

    def cli(*args):
        e = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], capture_output=True,
                              text=True, env=e, timeout=600)

    p = cli("init", "--dsn", pg_dsn, "--collection", "b", "--index", "binary", "--bundle", bundle_dir)
    with Store(pg_dsn) as store:
        old = store.vector_version < (0, 7)
    if old:
        assert p.returncode == 1 and "index binary needs pgvector >= 0.7" in p.stderr, p.stderr
        return
    assert p.returncode == 0, p.stderr
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"id": f"c{i}", "text": f"a dog number {i} runs"}) for i in range(20)))
    p = cli("index", "texts", caps, "--collection", "b", "--dsn", pg_dsn, "--bundle", bundle_dir)
    assert p.returncode == 0, p.stderr
    with Store(pg_dsn) as store:
        coll = store.collection("b")
        assert coll.info.index == "binary"
        with store.transaction() as conn:
            names = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                                [coll.info.items_table]).fetchall()]
        assert coll.index_name("text") in names
    p = cli("index", "texts", caps, "--collection", "b", "--dsn", pg_dsn, "--bundle", bundle_dir, "--index", "float")
    assert p.returncode == 1 and "has a binary search index, not float" in p.stderr, p.stderr
