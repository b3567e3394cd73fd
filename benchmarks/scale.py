"""Stored-vector scales: COPY load, HNSW build, sizes and query sweeps at N vectors.

At each size N of ``cfg.sizes`` one collection holds N image and N text vectors (the
product layout: one items table, a partial HNSW index per modality), so both directions
are measured: text -> image searches the image vectors, image -> text the text vectors.
The optional 1M step holds image vectors only (text -> image).
"""
from __future__ import annotations

import numpy as np

from . import index_bench, query_bench, synth
from .config import BenchConfig

#: Query modality that searches each stored modality.
QUERY_OF = {"image": "text", "text": "image"}
DIRECTION = {"image": "text->image", "text": "image->text"}
MILLION = 1_000_000


def _load(database, coll, modality: str, base: np.ndarray, n: int, noise: synth.Noise, bundle,
          rng: np.random.Generator, queries: dict, k: int) -> tuple[dict, np.ndarray]:
    """Generate and COPY ``n`` vectors of ``modality``; return load stats and the reference top-k."""
    vecs = synth.generate(base, n, noise, bundle.normalized, rng)
    seconds = synth.copy_load(database.conn, coll, modality, vecs, bundle.model_id)
    truth = synth.exact_topk(queries[QUERY_OF[modality]]["vectors"], vecs, k)
    return {"copy_s": seconds, "copy_rows_per_s": n / seconds}, truth


def run_size(database, bundle, cfg: BenchConfig, n: int, base: dict, noise: dict, queries: dict,
             rng: np.random.Generator, deadline: float = float("inf")) -> dict:
    """Everything at N stored vectors per modality (see module doc).

    ``deadline`` (``time.perf_counter`` seconds): extra index builds that would end later are skipped.
    """
    conn = database.conn
    coll = database.collection(f"q{n}", bundle)
    out: dict = {"n": n, "load": {}, "build_s": {}, "sweeps": {}}
    truth = {}
    for modality in ("image", "text"):
        out["load"][modality], truth[modality] = _load(database, coll, modality, base[modality], n,
                                                       noise[modality], bundle, rng, queries, cfg.k)
    for modality in ("image", "text"):
        out["build_s"][modality] = index_bench.build(conn, coll, modality, cfg.index, cfg.maintenance_work_mem)
    out["sizes"] = index_bench.table_sizes(conn, coll)
    for modality in ("image", "text"):
        out["sweeps"][DIRECTION[modality]] = query_bench.sweep(
            coll, modality, queries[QUERY_OF[modality]], truth[modality], cfg.ef_values, cfg.k)
    if n == cfg.index_size:
        base_row = index_bench.compare(conn, coll, cfg.index, out["build_s"]["image"], queries["text"],
                                       truth["image"], cfg.k)
        rows, out["index_sweep_skipped"] = index_bench.sweep(
            conn, coll, cfg.index_sweep, cfg.maintenance_work_mem, queries["text"], truth["image"], cfg.k,
            ref=cfg.index, ref_s=out["build_s"]["image"], deadline=deadline)
        out["index_sweep"] = [base_row] + rows
    database.drop(coll)
    return out


def run_million(database, bundle, cfg: BenchConfig, base: np.ndarray, noise: synth.Noise, queries: dict,
                rng: np.random.Generator, *, build_hnsw: bool) -> dict:
    """1M image vectors: COPY, sizes, exact-scan latency; with ``build_hnsw`` also HNSW + sweep."""
    conn = database.conn
    coll = database.collection("q1m", bundle)
    out: dict = {"n": MILLION, "hnsw": build_hnsw}
    out["load"], truth = _load(database, coll, "image", base, MILLION, noise, bundle, rng, queries, cfg.k)
    out["sizes_no_hnsw"] = index_bench.table_sizes(conn, coll)
    m = cfg.exact_queries_1m
    q = {"vectors": queries["text"]["vectors"][:m], "seconds": queries["text"]["seconds"][:m]}
    sql_s, rec = query_bench.run_queries(coll, "image", q["vectors"], truth[:m], cfg.k, exact=True)
    out["exact"] = query_bench.latency_row("exact", None, sql_s, q["seconds"], rec)
    if build_hnsw:
        out["build_s"] = index_bench.build(conn, coll, "image", cfg.index, cfg.maintenance_work_mem)
        out["sizes"] = index_bench.table_sizes(conn, coll)
        out["sweep"] = query_bench.sweep(coll, "image", queries["text"], truth, cfg.ef_values, cfg.k,
                                         exact_queries=0)
    database.drop(coll)
    return out


#: Real embeddings per synthetic base in the fidelity check (about the replication of 100k).
FIDELITY_REPLICATION = 20


def _fidelity_one(database, bundle, cfg: BenchConfig, name: str, vecs: np.ndarray, queries: dict,
                  rng: np.random.Generator) -> dict:
    coll = database.collection(f"fidelity_{name}", bundle)
    synth.copy_load(database.conn, coll, "text", vecs, bundle.model_id)
    index_bench.build(database.conn, coll, "text", cfg.index, cfg.maintenance_work_mem)
    qv = queries["image"]["vectors"]
    truth = synth.exact_topk(qv, vecs, cfg.k)
    d1 = np.linalg.norm(qv - vecs[truth[:, 0]], axis=1)  # query -> its nearest stored vector
    rows = query_bench.sweep(coll, "text", queries["image"], truth, cfg.ef_values[:3], cfg.k, exact_queries=0)
    database.drop(coll)
    return {"n": len(vecs), "median_nn": synth.median_nn_distance(vecs, rng),
            "median_query_nn": float(np.median(d1)),
            "recall": {r["ef_search"]: r["recall"] for r in rows}}


def fidelity(database, bundle, cfg: BenchConfig, real: np.ndarray, queries: dict,
             rng: np.random.Generator) -> dict:
    """Synthetic vs real at equal size: all real caption embeddings of the run against a
    synthetic set of the same size grown from 1/``FIDELITY_REPLICATION`` of them, both
    searched image -> text with the default index. Shows how far the synthetic data's
    neighbour structure (and so HNSW recall) is from real data's."""
    n_base = max(2, len(real) // FIDELITY_REPLICATION)
    base = real[:n_base]
    noise = synth.noise_model(base, cfg.noise * synth.median_nn_distance(base, rng), cfg.noise_shape)
    fake = synth.generate(base, len(real), noise, bundle.normalized, rng)
    return {"bases": n_base, "real": _fidelity_one(database, bundle, cfg, "real", real, queries, rng),
            "synthetic": _fidelity_one(database, bundle, cfg, "synthetic", fake, queries, rng)}
