"""Retrieval evaluation through the database (``jointembed eval``).

The split's images and captions are written with the same code path as
``jointembed index``, then every image and caption is ranked against the other modality
by SQL ``<->`` (L2 distance) over the stored vectors, exactly (no index). The ranks
follow docs/METHOD.md's evaluation protocol (``1 + #(wrong items strictly closer than the
closest right one)``); R@K, medr and rsum come from :mod:`jointembed_pg.metrics`, the same
code training uses, with :func:`jointembed_pg.metrics.ranks` as the in-memory reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psycopg import sql

from .. import db
from ..ingest import flickr8k, pipeline as ingest, readers
from ..metrics import ranks_to_metrics

#: Built-ins pg_catalog-qualified and pgvector's operator qualified with its schema ({vs}):
#: the connection's search_path may hold public (docs/DESIGN.md, "search_path rule").
_RANK_SQL = """
WITH img AS MATERIALIZED (
    SELECT key, embedding FROM {items} WHERE modality = 'image' AND key = ANY(%(img_keys)s)
), cap AS MATERIALIZED ({cap}), pos AS MATERIALIZED (
    SELECT cap.key AS cap_key, img.key AS img_key, img.embedding OPERATOR({vs}.<->) cap.embedding AS dist
    FROM img JOIN cap ON cap.img_key = img.key
), best AS (
    SELECT img_key, pg_catalog.min(dist) AS dist FROM pos GROUP BY img_key
)
SELECT 'i2t' AS dir, img.key,
       1 + (SELECT pg_catalog.count(*) FROM cap
            WHERE cap.img_key <> img.key AND (img.embedding OPERATOR({vs}.<->) cap.embedding) < best.dist)
FROM img JOIN best ON best.img_key = img.key
UNION ALL
SELECT 't2i', cap.key,
       1 + (SELECT pg_catalog.count(*) FROM img
            WHERE img.key <> cap.img_key AND (img.embedding OPERATOR({vs}.<->) cap.embedding) < pos.dist)
FROM cap JOIN pos ON pos.cap_key = cap.key
"""
#: Captions as stored (embedded by the ONNX text tower at index time).
_CAP_STORED = """
    SELECT c.key, c.embedding, g.img_key
    FROM {items} c
    JOIN ROWS FROM (pg_catalog.unnest(%(cap_keys)s::text[]), pg_catalog.unnest(%(cap_imgs)s::text[]))
         AS g(cap_key, img_key) ON c.key = g.cap_key
    WHERE c.modality = 'text'"""
#: Captions embedded in SQL by the collection's static text encoder (jointembed.embed_text).
_CAP_SQL = """
    SELECT g.cap_key AS key, CAST(jointembed.embed_text(%(collection)s, g.text) AS {vector}) AS embedding, g.img_key
    FROM ROWS FROM (pg_catalog.unnest(%(cap_keys)s::text[]), pg_catalog.unnest(%(cap_texts)s::text[]),
                   pg_catalog.unnest(%(cap_imgs)s::text[])) AS g(cap_key, text, img_key)"""


def sql_ranks(collection, image_keys: list[str], caption_keys: list[str],
              caption_image_keys: list[str], caption_texts: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranks computed in Postgres with ``<->`` over the stored vectors.

    With ``caption_texts``, captions are embedded in SQL by ``jointembed.embed_text`` (the
    collection's static text encoder, issue 25) instead of read from the items table.

    Returns ``(i2t (N,) int64, t2i (M,) int64)`` in the order of the given keys.
    """
    cap = sql.SQL(_CAP_STORED if caption_texts is None else _CAP_SQL).format(
        items=collection.table_ident, vector=sql.Identifier(collection.store.vector_schema, collection.storage))
    params = {"img_keys": image_keys, "cap_keys": caption_keys, "cap_imgs": caption_image_keys,
              "cap_texts": caption_texts, "collection": collection.name}
    with collection.store.transaction() as conn:
        query = sql.SQL(_RANK_SQL).format(items=collection.table_ident, cap=cap, vs=sql.Identifier(db.vector_schema(conn)))
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
                   progress: bool = True, text_encoder: str = "onnx") -> EvalResult:
    """Index a Flickr8K split into ``collection`` and rank it in SQL (see module docstring).

    ``text_encoder="sql"``: captions are (also) embedded in SQL by ``jointembed.embed_text``
    (the static text encoder, loaded from ``bundle``); the metrics are those of the SQL
    encoder, and ``tower_t2i_rsum`` / ``sql_t2i_ratio`` compare its t2i R@1+R@5+R@10 with
    the ONNX text tower's on the same split.

    Raises:
        InputError: ``data_dir`` is not a Flickr8K-layout directory, or an item failed to embed
            (the protocol needs every image and caption).
    """
    from ..errors import InputError

    data = flickr8k.load_split(data_dir, split)
    img_recs = [readers.PathRecord(str(p), p) for p in data.image_paths]
    cap_recs = [readers.TextRecord(k, t) for k, t in data.captions]
    rep_i = ingest.index_images(collection, bundle, img_recs, progress=progress)
    rep_t = ingest.index_texts(collection, bundle, cap_recs, progress=progress)
    if rep_i.failed or rep_t.failed:
        first = (rep_i.failed + rep_t.failed)[0]
        raise InputError(f"{len(rep_i.failed) + len(rep_t.failed)} items failed to embed, e.g. {first.key}: {first.error}")
    image_keys = [r.key for r in img_recs]
    cap_img_keys = [image_keys[i] for i in data.caption_image_ids]
    cap_keys = [k for k, _ in data.captions]
    i2t, t2i = sql_ranks(collection, image_keys, cap_keys, cap_img_keys)
    metrics = ranks_to_metrics(i2t, t2i)
    if text_encoder == "sql":
        from ..search import text_sql

        with collection.store.connection() as conn:
            text_sql.ensure_loaded(conn, bundle, required=True)
        i2t, t2i = sql_ranks(collection, image_keys, cap_keys, cap_img_keys, [t for _, t in data.captions])
        tower = metrics
        metrics = ranks_to_metrics(i2t, t2i)
        metrics["tower_t2i_rsum"] = tower["t2i_R@1"] + tower["t2i_R@5"] + tower["t2i_R@10"]
        metrics["sql_t2i_ratio"] = (metrics["t2i_R@1"] + metrics["t2i_R@5"] + metrics["t2i_R@10"]) \
            / metrics["tower_t2i_rsum"]
    elif text_encoder != "onnx":
        raise ValueError(f"text_encoder must be 'onnx' or 'sql', got {text_encoder!r}")
    return EvalResult(metrics, rep_i, rep_t)
