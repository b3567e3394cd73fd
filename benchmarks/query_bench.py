"""Query latency through the product path, split into encode time and SQL time.

Encode: ``Bundle.encode_texts([caption])`` or ``Bundle.encode_images([path])`` (file read,
decode and preprocess included), one query at a time, exactly as ``Collection.search_text``
/ ``search_image`` do. SQL: ``Collection.search_vector(q, target=..., k=10, ef_search=...)``
(one transaction: set ``hnsw.ef_search``, the ``ORDER BY <-> LIMIT`` query, fetch), or
``exact=True`` for the sequential-scan reference. The end-to-end latency of query ``i`` is
its encode time plus its SQL time. Recall@k is against a numpy brute-force top-k over the
very vectors stored.
"""
from __future__ import annotations

import time

import numpy as np

from . import synth
from .timing import percentiles_ms

#: Queries run (untimed) before each sweep so the index pages are in memory.
WARMUP_QUERIES = 50


def encode_queries(bundle, texts: list[str], image_paths: list) -> dict:
    """One-at-a-time query encodings: vectors ``(Q, D) float32`` and seconds per query."""
    bundle.encode_texts(texts[:2])
    bundle.encode_images(image_paths[:2])
    out = {}
    for name, items, fn in (("text", texts, lambda t: bundle.encode_texts([t])),
                            ("image", image_paths, lambda p: bundle.encode_images([p]))):
        vecs, secs = [], []
        for item in items:
            t = time.perf_counter()
            vecs.append(fn(item)[0])
            secs.append(time.perf_counter() - t)
        out[name] = {"vectors": np.stack(vecs), "seconds": secs}
    return out


def _recall(hits, truth: np.ndarray, k: int) -> float:
    got = {synth.index_of(h.key) for h in hits[:k]}
    return len(got & set(truth[:k].tolist())) / k


def run_queries(coll, target: str, qvecs: np.ndarray, truth: np.ndarray, k: int, *,
                ef_search: int | None = None, exact: bool = False) -> tuple[list[float], float]:
    """All queries once: ``(SQL seconds per query, mean recall@k)``."""
    secs, recalls = [], []
    for q, t in zip(qvecs, truth):
        t0 = time.perf_counter()
        hits = coll.search_vector(q, target=target, k=k, ef_search=ef_search, exact=exact)
        secs.append(time.perf_counter() - t0)
        recalls.append(_recall(hits, t, k))
    return secs, float(np.mean(recalls))


def latency_row(setting: str, ef: int | None, sql_s: list[float], enc_s: list[float], recall: float) -> dict:
    n = len(sql_s)
    total = [a + b for a, b in zip(sql_s, enc_s[:n])]
    return {"setting": setting, "ef_search": ef, "recall": recall, "sql": percentiles_ms(sql_s),
            "encode": percentiles_ms(enc_s[:n]), "total": percentiles_ms(total)}


def sweep(coll, target: str, queries: dict, truth: np.ndarray, ef_values, k: int, *,
          exact_queries: int | None = None) -> list[dict]:
    """HNSW at each ``ef_search``, then the exact scan (on the first ``exact_queries``)."""
    qvecs, enc_s = queries["vectors"], queries["seconds"]
    run_queries(coll, target, qvecs[:WARMUP_QUERIES], truth, k, ef_search=max(ef_values))
    rows = []
    for ef in ef_values:
        sql_s, rec = run_queries(coll, target, qvecs, truth, k, ef_search=ef)
        rows.append(latency_row("hnsw", ef, sql_s, enc_s, rec))
    if exact_queries != 0:
        n = len(qvecs) if exact_queries is None else exact_queries
        sql_s, rec = run_queries(coll, target, qvecs[:n], truth[:n], k, exact=True)
        rows.append(latency_row("exact", None, sql_s, enc_s, rec))
    return rows
