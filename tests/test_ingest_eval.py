"""Ingest and evaluation on real Flickr8K through a real Postgres and real ONNX sessions."""
from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from jointembed_pg.ingest import flickr8k, pipeline as ingest, readers
from jointembed_pg.evaluation.evaluate import evaluate_split, sql_ranks
from jointembed_pg.metrics import ranks as in_memory_ranks, ranks_to_metrics
from jointembed_pg.search.store import Store

N_IMAGES = 120


def _vec(v) -> np.ndarray:
    """A pgvector value (``Vector`` or ndarray) as ``(D,) float32``."""
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, np.float32)  # a real subset of the test split: 120 images, 600 captions


@pytest.fixture(scope="module")
def subset(flickr8k_dir):
    split = flickr8k.load_split(flickr8k_dir, "test")
    keep = set(range(N_IMAGES))
    caps = [(c, i) for c, i in zip(split.captions, split.caption_image_ids) if i in keep]
    return split.image_paths[:N_IMAGES], [c for c, _ in caps], np.array([i for _, i in caps])


@pytest.fixture(scope="module")
def filled(module_pg_dsn, bundle, subset):
    paths, caps, _ = subset
    store = Store(module_pg_dsn)
    coll = store.collection("sub", model_id=bundle.model_id, dim=bundle.dim, create=True)
    rep_i = ingest.index_images(coll, bundle, [readers.PathRecord(str(p), p) for p in paths], progress=False)
    rep_t = ingest.index_texts(coll, bundle, [readers.TextRecord(k, t) for k, t in caps], progress=False)
    assert not rep_i.failed and not rep_t.failed
    return store, coll, rep_i, rep_t


def test_ranks_to_metrics_on_hand_computed_ranks():
    m = ranks_to_metrics(np.array([1, 2, 6, 11]), np.array([1, 1, 5, 20]))
    assert m["i2t_R@1"] == 25.0 and m["i2t_R@5"] == 50.0 and m["i2t_R@10"] == 75.0
    assert m["t2i_R@1"] == 50.0 and m["t2i_R@5"] == 75.0 and m["t2i_R@10"] == 75.0
    assert m["i2t_medr"] == 4.0 and m["rsum"] == 350.0


def test_in_memory_ranks_match_naive_argsort():
    rng = np.random.default_rng(0)
    img, cap = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(21, 5)).astype(np.float32)
    ids = np.repeat(np.arange(7), 3)
    i2t, t2i = in_memory_ranks(img, cap, ids)
    for i in range(7):  # naive: full argsort of each row
        order = np.argsort(np.linalg.norm(cap - img[i], axis=1))
        assert i2t[i] == 1 + np.flatnonzero(ids[order] == i)[0]
    for j in range(21):
        order = np.argsort(np.linalg.norm(img - cap[j], axis=1))
        assert t2i[j] == 1 + np.flatnonzero(order == ids[j])[0]


def test_ingest_writes_every_item_once_and_rerun_skips(filled, bundle, subset):
    store, coll, rep_i, rep_t = filled
    paths, caps, _ = subset
    assert (rep_i.written, rep_t.written) == (N_IMAGES, len(caps))
    assert coll.count("image") == N_IMAGES and coll.count("text") == len(caps)
    again = ingest.index_images(coll, bundle, [readers.PathRecord(str(p), p) for p in paths[:10]], progress=False)
    assert (again.written, again.unchanged) == (0, 10)


def test_sql_ranks_equal_numpy_ranks_on_stored_vectors(filled, subset):
    store, coll, _, _ = filled
    paths, caps, ids = subset
    image_keys = [str(p) for p in paths]
    with store.transaction() as conn:
        rows = dict(conn.execute(sql.SQL("SELECT key, embedding FROM {}").format(coll.table_ident)).fetchall())
    img = np.stack([_vec(rows[k]) for k in image_keys])
    cap = np.stack([_vec(rows[k]) for k, _ in caps])
    ref_i2t, ref_t2i = in_memory_ranks(img, cap, ids)
    got_i2t, got_t2i = sql_ranks(coll, image_keys, [k for k, _ in caps], [image_keys[i] for i in ids])
    np.testing.assert_array_equal(got_i2t, ref_i2t)
    np.testing.assert_array_equal(got_t2i, ref_t2i)


def test_stored_vectors_are_the_encoder_outputs(filled, bundle, subset):
    store, coll, _, _ = filled
    paths, caps, _ = subset
    want = bundle.encode_images(paths[:8])
    with store.transaction() as conn:
        q = sql.SQL("SELECT embedding FROM {} WHERE key = %s").format(coll.table_ident)
        got = [_vec(conn.execute(q, (str(p),)).fetchone()[0]) for p in paths[:8]]
    np.testing.assert_array_equal(np.stack(got), want)


def test_retrieval_far_above_chance_on_real_subset(filled, subset):
    store, coll, _, _ = filled
    paths, caps, ids = subset
    image_keys = [str(p) for p in paths]
    i2t, t2i = sql_ranks(coll, image_keys, [k for k, _ in caps], [image_keys[i] for i in ids])
    m = ranks_to_metrics(i2t, t2i)
    # chance: t2i R@10 = 10/120 = 8.3 %, i2t R@10 ~ 1-(1-5/600)^10 * ... ~ 35 % at most
    assert m["t2i_R@10"] > 60.0 and m["i2t_R@10"] > 70.0, m


@pytest.mark.slow
def test_eval_full_test_split_matches_training_metrics(pg_dsn, bundle, flickr8k_dir):
    coll = Store(pg_dsn).collection("flickr8k_test", model_id=bundle.model_id, dim=bundle.dim, create=True)
    res = evaluate_split(coll, bundle, flickr8k_dir, "test", progress=False)
    assert res.images.written == 1000 and res.texts.written == 5000
    assert res.metrics["rsum"] >= 220.0, res.metrics
    recorded = bundle.manifest.get("metrics", {}).get("test", {})
    if "rsum" in recorded:  # the checkpoint's own in-memory (PyTorch) evaluation
        assert abs(res.metrics["rsum"] - recorded["rsum"]) <= 0.1 + 1e-9, (res.metrics, recorded)
