"""HNSW vs exact on real embeddings: ~300 Flickr8K test images + their captions, embedded
once per module with the real model bundle. Recall@10 of the index at the default
ef_search must be >= 0.95 for every query kind; SQL functions must agree with Python.
"""
from __future__ import annotations

import numpy as np
import pytest

from jointembed_pg.search.store import Store

N_IMAGES, N_QUERIES, K = 300, 60, 10
pytestmark = [pytest.mark.flickr8k]


@pytest.fixture(scope="module")
def real(request, flickr8k_dir, module_pg_dsn):
    try:
        bundle = request.getfixturevalue("bundle")
    except Exception as e:  # noqa: BLE001 - bundle build depends on other packages/weights
        pytest.skip(f"real-data search tests need the model bundle, which cannot be built here: "
                    f"{type(e).__name__}: {e}")
    from jointembed_pg.ingest.flickr8k import load_split

    data = load_split(flickr8k_dir, "test")
    paths = data.image_paths[:N_IMAGES]
    caps = [(key, text) for (key, text), i in zip(data.captions, data.caption_image_ids) if i < N_IMAGES]
    img = bundle.encode_images([str(p) for p in paths])
    txt = bundle.encode_texts([t for _, t in caps])
    store = Store(module_pg_dsn)
    coll = store.collection("flickr8k-test", model_id=bundle.model_id, dim=bundle.dim, create=True)
    coll.upsert([("image", str(p), str(p), None, None, e) for p, e in zip(paths, img)])
    coll.upsert([("text", key, None, text, None, e) for (key, text), e in zip(caps, txt)])
    coll.ensure_index()
    rng = np.random.default_rng(0)
    queries = {
        "text->image": ("image", txt[rng.choice(len(txt), N_QUERIES, replace=False)]),
        "image->text": ("text", img[rng.choice(len(img), N_QUERIES, replace=False)]),
        "image->image": ("image", img[rng.choice(len(img), N_QUERIES, replace=False)]),
        "text->text": ("text", txt[rng.choice(len(txt), N_QUERIES, replace=False)]),
    }
    yield store, coll, queries
    store.close()


@pytest.mark.parametrize("kind", ["text->image", "image->text", "image->image", "text->text"])
def test_index_recall_vs_exact_on_real_embeddings(real, kind):
    store, coll, queries = real
    target, qs = queries[kind]
    approx = [coll.search_vector(q, target=target, k=K) for q in qs]
    exact = [coll.search_vector(q, target=target, k=K, exact=True) for q in qs]
    recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / K for a, e in zip(approx, exact)])
    print(f"Flickr8K real embeddings, {kind}: recall@{K} (HNSW m=16, ef_construction=64, ef_search=40) = {recall:.3f}")
    assert recall >= 0.95


def test_sql_function_matches_python_on_real_embeddings(real):
    store, coll, queries = real
    with store.transaction() as conn:
        for q in queries["text->image"][1][:10]:
            py = [h.id for h in coll.search_vector(q, target="image", k=K)]
            got = [r[0] for r in conn.execute("SELECT id FROM jointembed.search(%s, %s, %s, 'image')",
                                              [coll.name, q, K]).fetchall()]
            assert got == py


def test_more_like_this_on_real_embeddings(real):
    store, coll, queries = real
    item = coll.search_vector(queries["image->image"][1][0], target="image", k=1)[0]
    hits = coll.more_like_this(item.id, k=K)
    assert len(hits) == K and item.id not in {h.id for h in hits}
    assert all(h.modality == "image" for h in hits)
