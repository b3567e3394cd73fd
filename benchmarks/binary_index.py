"""Float HNSW vs binary (bit) HNSW at scale: build time, index bytes, t2i p50, recall@10.

    python -m benchmarks.binary_index [--sizes 100000 300000] [--base EMB.npz] [--queries 200]
                                      [--dsn DSN] [--out PATH] [--json PATH]

At each size N one collection holds N image vectors (D = 256). Stored vectors are grown
from real embeddings when ``--base`` is given (an ``.npz`` with ``images (N0, D)`` and
``queries (Q0, D)`` float32, e.g. the shipped model's Flickr8K embeddings: the real rows
first, then real rows plus noise shaped by their covariance, :func:`benchmarks.synth.generate`),
else synthetic Gaussian clusters (:func:`benchmarks.index_build.vectors`). Queries are the
base's caption embeddings (text -> image) or held-out cluster points.

Per index kind (``float``: HNSW ``vector_l2_ops`` on the embedding; ``binary``: HNSW
``bit_hamming_ops`` on ``binary_quantize(embedding)::bit(D)``, searched by
``jointembed.knn`` with a Hamming pool of ``jointembed._knn_binary_pool(k)`` re-ranked by exact L2), both
m = 16, ef_construction = 64, plain ``CREATE INDEX`` with ``maintenance_work_mem`` 2 GB:

* build seconds, index bytes (``pg_relation_size``);
* top-10 latency of ``jointembed.search(collection, q, 10, 'image')`` per query (p50, p95),
  one warm-up pass first;
* recall@10 against the exact float top 10 (numpy).

Writes a markdown table (``--out``, default: print only) and raw JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import index_build, machine, synth, timing  # noqa: E402
from benchmarks.env import Database  # noqa: E402
from jointembed_pg.search import indexing  # noqa: E402

M, EF_CONSTRUCTION, K = 16, 64, 10
MEM = "2GB"


def _base(path: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N0, D), queries (n_queries, D))`` float32 from ``path`` (module doc)."""
    z = np.load(path)
    q = z["queries"].astype(np.float32)
    rng = np.random.default_rng(seed)
    return z["images"].astype(np.float32), q[rng.permutation(len(q))[:n_queries]]


def stored_vectors(base: np.ndarray | None, n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, D) float32`` stored vectors (module doc)."""
    if base is None:
        return index_build.vectors(n, dim, seed=seed)
    rng = np.random.default_rng(seed)
    noise = synth.noise_model(base, synth.median_nn_distance(base, rng), "cov")
    return synth.generate(base, n, noise, True, rng)


def synthetic_queries(n: int, dim: int, seed: int, count: int) -> np.ndarray:
    """Queries near the stored clusters: fresh draws of :func:`index_build.vectors` (same centres)."""
    return index_build.vectors(n + count, dim, seed=seed)[n:]


def _build(conn, coll, binary: bool) -> tuple[float, int, str]:
    spec = indexing.IndexSpec("jointembed", coll.info.items_table, coll.index_name("image"), "image", "vector",
                              coll.dim, M, EF_CONSTRUCTION, binary=binary)
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [MEM])
    t = time.perf_counter()
    conn.execute(spec.create(False))
    seconds = time.perf_counter() - t
    conn.execute("RESET maintenance_work_mem")
    size = conn.execute("SELECT pg_relation_size(%s::regclass)",
                        [sql.Identifier("jointembed", spec.name).as_string(conn)]).fetchone()[0]
    return seconds, int(size), spec.name


def _queries(conn, name: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    stmt = "SELECT key FROM jointembed.search(%s, %s, %s, 'image')"
    for q in queries[:20]:  # warm-up: index pages into shared buffers
        conn.execute(stmt, [name, q, K]).fetchall()
    secs, hits = [], 0
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        keys = [r[0] for r in conn.execute(stmt, [name, q, K]).fetchall()]
        secs.append(time.perf_counter() - t0)
        assert len(keys) == K, f"{len(keys)} rows"
        hits += len({synth.index_of(k) for k in keys} & set(t.tolist()))
    return {"latency_ms": timing.percentiles_ms(secs), "recall_at_10": hits / (K * len(queries))}


def run_size(database, n: int, dim: int, base: np.ndarray | None, queries: np.ndarray | None, n_queries: int,
             seed: int, pools: tuple[int, ...] = ()) -> dict:
    conn = database.conn
    vecs = stored_vectors(base, n, dim, seed)
    if queries is None:
        queries = synthetic_queries(n, dim, seed, n_queries)
    truth = synth.exact_topk(queries, vecs, K)
    name = database.prefix + f"bin{n}"
    database.store.drop_collection(name)
    database._made.append(name)
    coll = database.store.collection(name, model_id="synthetic", dim=dim, create=True)
    load_s = synth.copy_load(conn, coll, "image", vecs, "synthetic")
    del vecs
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(coll.table_ident))
    table_bytes = conn.execute("SELECT pg_total_relation_size(%s::regclass)",
                               [coll.table_ident.as_string(conn)]).fetchone()[0]
    out = {"n": n, "load_s": load_s, "table_bytes": int(table_bytes), "kinds": {}}
    for kind in ("float", "binary"):
        conn.execute("SELECT jointembed.set_collection_index(%s, %s)", [name, kind])
        coll = database.store.collection(name)
        seconds, size, index = _build(conn, coll, kind == "binary")
        row = {"build_s": seconds, "index_bytes": size, **_queries(conn, name, queries, truth),
               "load_average": machine.load_average()}
        out["kinds"][kind] = row
        print(json.dumps({"n": n, "kind": kind, **row}), flush=True)
        if kind == "binary" and pools:
            out["pools"] = {}
            for pool in pools:  # this throw-away database only: a fixed pool instead of the default
                conn.execute(f"CREATE OR REPLACE FUNCTION jointembed._knn_binary_pool(p_k integer) RETURNS integer "
                             f"LANGUAGE sql IMMUTABLE AS 'SELECT {int(pool)}'")
                out["pools"][pool] = _queries(conn, name, queries, truth)
                print(json.dumps({"n": n, "pool": pool, **out["pools"][pool]}), flush=True)
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("jointembed", index)))
    database.drop(coll)
    return out


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "| rows | index | build s | index MB | t2i top-10 p50 ms | p95 ms | recall@10 vs exact |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in r["sizes"]:
        for kind, row in s["kinds"].items():
            lat = row["latency_ms"]
            lines.append(f"| {s['n']:,} | {kind} | {row['build_s']:.1f} | {row['index_bytes'] / 2**20:.1f} | "
                         f"{lat['p50']:.2f} | {lat['p95']:.2f} | {row['recall_at_10']:.3f} |")
        f, b = s["kinds"]["float"], s["kinds"]["binary"]
        lines.append(f"| {s['n']:,} | binary / float | x{b['build_s'] / f['build_s']:.2f} | "
                     f"x{b['index_bytes'] / f['index_bytes']:.3f} | x{b['latency_ms']['p50'] / f['latency_ms']['p50']:.2f}"
                     " | | |")
        for pool, row in s.get("pools", {}).items():
            lat = row["latency_ms"]
            lines.append(f"| {s['n']:,} | binary, pool {pool} | | | {lat['p50']:.2f} | {lat['p95']:.2f} | "
                         f"{row['recall_at_10']:.3f} |")
    lines += ["", f"Base: {r['base']}; {r['queries']} queries; D = {r['dim']}; m = {M}, ef_construction = "
              f"{EF_CONSTRUCTION}, maintenance_work_mem {MEM}; PostgreSQL {m.get('postgresql')}, pgvector "
              f"{m.get('pgvector')}, {m.get('cores')} cores ({m.get('cpu')}). Float searches: jointembed.knn at "
              "hnsw.ef_search 40 (pgvector >= 0.8: iterative scan); binary: the Hamming pool of jointembed._knn_binary_pool(10) re-ranked by L2 (rows \"pool P\": a fixed pool).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.binary_index", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--base", type=Path, help=".npz with images (N0, D) and queries (Q0, D) real embeddings")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--pools", type=int, nargs="*", default=[], help="also measure the binary index at these fixed "
                   "Hamming pools (redefines jointembed._knn_binary_pool in the run's database)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded server)")
    p.add_argument("--out", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    base, queries = (None, None) if a.base is None else _base(a.base, a.queries, a.seed)
    dim = a.dim if base is None else base.shape[1]
    database = Database.open(a.dsn)
    try:
        r = {"dim": dim, "queries": a.queries, "base": str(a.base) if a.base else "synthetic Gaussian clusters",
             "machine": {**machine.facts(), **machine.postgres(database.conn)},
             "sizes": [run_size(database, n, dim, base, queries, a.queries, a.seed, tuple(a.pools)) for n in a.sizes]}
    finally:
        database.close()
    text = render(r)
    if a.out:
        timing.emit(r, text, a.out, a.json)
    else:
        if a.json:
            a.json.write_text(json.dumps(r, indent=1))
        print(text)


if __name__ == "__main__":
    main()
