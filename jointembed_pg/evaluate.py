"""Retrieval evaluation through the database (``jointembed eval``).

The split's images and captions are written with the same code path as
``jointembed index``, then every image and caption is ranked against the other modality
by SQL ``<->`` (L2 distance) over the stored vectors, exactly (no index). Metrics follow
the evaluation protocol of ``../shared/docs/METHOD.md``:

* i2t R@K: % of images with at least one of their captions in the top K captions;
* t2i R@K: % of captions whose image is in the top K images;
* medr: median rank (1-based) of the first correct item; rsum: the sum of the six R@K.

The rank of a query is ``1 + #(wrong items strictly closer than the closest right one)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psycopg import sql

from . import ingest, readers

KS = (1, 5, 10)


def ranks_to_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 both ways, medr and rsum from 1-based ranks.

    Args:
        i2t_ranks: ``(N,) int`` rank of each image's best caption.
        t2i_ranks: ``(M,) int`` rank of each caption's image.
    Returns:
        flat keys ``i2t_R@1`` ... ``t2i_R@10`` (percent), ``i2t_medr``, ``t2i_medr``, ``rsum``.
    """
    out: dict[str, float] = {}
    for name, r in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        for k in KS:
            out[f"{name}_R@{k}"] = round(100.0 * float(np.mean(r <= k)), 2)
        out[f"{name}_medr"] = float(np.median(r))
    out["rsum"] = round(sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS), 2)
    return out


def in_memory_ranks(img: np.ndarray, cap: np.ndarray, caption_image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference ranks with numpy: ``img (N,D)``, ``cap (M,D)`` float32, ids ``(M,) int64``.

    Returns ``(i2t_ranks (N,), t2i_ranks (M,))`` with the rank rule of this module.
    """
    img64, cap64 = img.astype(np.float64), cap.astype(np.float64)
    d = np.sqrt(np.maximum(((img64[:, None, :] - cap64[None, :, :]) ** 2).sum(-1), 0.0))  # (N, M) L2
    ids = np.asarray(caption_image_ids)
    pos = ids[None, :] == np.arange(len(img))[:, None]
    best_i2t = np.where(pos, d, np.inf).min(1)
    i2t = 1 + ((d < best_i2t[:, None]) & ~pos).sum(1)
    best_t2i = d[ids, np.arange(len(ids))]
    t2i = 1 + (d < best_t2i[None, :]).sum(0)
    return i2t, t2i


_RANK_SQL = """
WITH img AS MATERIALIZED (
    SELECT key, embedding FROM {items} WHERE modality = 'image' AND key = ANY(%(img_keys)s)
), cap AS MATERIALIZED (
    SELECT c.key, c.embedding, g.img_key
    FROM {items} c
    JOIN unnest(%(cap_keys)s::text[], %(cap_imgs)s::text[]) AS g(cap_key, img_key) ON c.key = g.cap_key
    WHERE c.modality = 'text'
), pos AS MATERIALIZED (
    SELECT cap.key AS cap_key, img.key AS img_key, img.embedding <-> cap.embedding AS dist
    FROM img JOIN cap ON cap.img_key = img.key
), best AS (
    SELECT img_key, min(dist) AS dist FROM pos GROUP BY img_key
)
SELECT 'i2t' AS dir, img.key,
       1 + (SELECT count(*) FROM cap WHERE cap.img_key <> img.key AND (img.embedding <-> cap.embedding) < best.dist)
FROM img JOIN best ON best.img_key = img.key
UNION ALL
SELECT 't2i', cap.key,
       1 + (SELECT count(*) FROM img WHERE img.key <> cap.img_key AND (img.embedding <-> cap.embedding) < pos.dist)
FROM cap JOIN pos ON pos.cap_key = cap.key
"""


def sql_ranks(collection, image_keys: list[str], caption_keys: list[str],
              caption_image_keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranks computed in Postgres with ``<->`` over the stored vectors.

    Returns ``(i2t (N,) int64, t2i (M,) int64)`` in the order of the given keys.
    """
    query = sql.SQL(_RANK_SQL).format(items=collection.table_ident)
    params = {"img_keys": image_keys, "cap_keys": caption_keys, "cap_imgs": caption_image_keys}
    with collection.store.transaction() as conn:
        conn.execute("SET LOCAL work_mem = '256MB'")
        rows = conn.execute(query, params).fetchall()
    got = {(d, k): r for d, k, r in rows}
    i2t = np.array([got[("i2t", k)] for k in image_keys], np.int64)
    t2i = np.array([got[("t2i", k)] for k in caption_keys], np.int64)
    return i2t, t2i


@dataclass
class EvalResult:
    """Metrics (flat keys) plus what was ingested on the way."""

    metrics: dict[str, float]
    images: ingest.IngestReport
    texts: ingest.IngestReport


def evaluate_split(collection, bundle, data_dir: str | Path, split: str = "test", *,
                   progress: bool = True) -> EvalResult:
    """Index a Flickr8K split into ``collection`` and rank it in SQL (see module docstring).

    Raises:
        InputError: ``data_dir`` is not a Flickr8K-layout directory, or an item failed to embed
            (the protocol needs every image and caption).
    """
    from .errors import InputError

    data = readers.load_flickr8k(data_dir, split)
    img_recs = [readers.PathRecord(str(p), p) for p in data.image_paths]
    cap_recs = [readers.TextRecord(k, t) for k, t in data.captions]
    rep_i = ingest.index_images(collection, bundle, img_recs, progress=progress)
    rep_t = ingest.index_texts(collection, bundle, cap_recs, progress=progress)
    if rep_i.failed or rep_t.failed:
        first = (rep_i.failed + rep_t.failed)[0]
        raise InputError(f"{len(rep_i.failed) + len(rep_t.failed)} items failed to embed, e.g. {first.key}: {first.error}")
    image_keys = [r.key for r in img_recs]
    cap_img_keys = [image_keys[i] for i in data.caption_image_ids]
    i2t, t2i = sql_ranks(collection, image_keys, [k for k, _ in data.captions], cap_img_keys)
    return EvalResult(ranks_to_metrics(i2t, t2i), rep_i, rep_t)
