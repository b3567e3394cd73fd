"""``halfvec`` against ``vector`` storage: bytes, build time, recall@10 and query latency.

    python -m benchmarks.storage [--rows 100000] [--dim 256] [--queries 200] [--dsn DSN] [--out PATH]

The same ``--rows`` synthetic unit vectors (:func:`benchmarks.index_build.vectors`) go into
one collection per storage type (``Store.collection(..., storage=...)``, written with
``Collection.upsert``), each gets its image HNSW index (``ensure_index``, m=16,
ef_construction=64), and the same ``--queries`` query vectors (held-out vectors of the
same distribution) are searched with ``Collection.search_vector`` (SQL round trip) at
``ef_search`` 40 and 100. recall@10 is against the exact top 10 of the float32 vectors
(numpy), so halfvec's rounding counts against it. Needs pgvector >= 0.7. Writes
``docs/BENCHMARKS_STORAGE.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import index_bench, machine, synth  # noqa: E402
from benchmarks.env import Database  # noqa: E402
from benchmarks.index_build import vectors  # noqa: E402
from benchmarks import timing  # noqa: E402
from benchmarks.timing import percentiles_ms  # noqa: E402

OUT = REPO / "docs" / "BENCHMARKS_STORAGE.md"
K, EF = 10, (40, 100)
UPSERT_BATCH = 5000


def run(rows: int, dim: int, n_queries: int, dsn: str | None) -> dict:
    data = vectors(rows + n_queries, dim, seed=1)
    stored, queries = data[:rows], data[rows:]
    truth = synth.exact_topk(queries, stored, K)
    database = Database.open(dsn)
    try:
        conn = database.conn
        out = {"rows": rows, "dim": dim, "queries": n_queries, "k": K,
               "machine": {**machine.facts(), **machine.postgres(conn)}, "storages": []}
        if database.store.vector_version < (0, 7):
            raise SystemExit(f"halfvec needs pgvector >= 0.7; this server has {database.store.vector_version}")
        for storage in ("vector", "halfvec"):
            coll = database.store.collection(database.prefix + storage, model_id="synthetic", dim=dim,
                                             create=True, storage=storage)
            database._made.append(coll.name)
            t = time.perf_counter()
            for i in range(0, rows, UPSERT_BATCH):
                coll.upsert([("image", synth.key("image", j), None, None, None, stored[j])
                             for j in range(i, min(rows, i + UPSERT_BATCH))])
            load_s = time.perf_counter() - t
            coll.ensure_index(modalities=["image"])
            build = coll.last_builds[0]
            sizes = index_bench.table_sizes(conn, coll)
            row = {"storage": storage, "load_s": load_s, "build_s": build.seconds,
                   "maintenance_work_mem": build.memory.setting, "heap_bytes": sizes["heap"] + sizes["toast"],
                   "hnsw_bytes": sizes["hnsw"]["image"], "search": []}
            for ef in EF:
                for q in queries[:20]:   # warm-up
                    coll.search_vector(q, k=K, ef_search=ef)
                lat, hits = [], []
                for q in queries:
                    t = time.perf_counter()
                    res = coll.search_vector(q, k=K, ef_search=ef)
                    lat.append(time.perf_counter() - t)
                    hits.append([synth.index_of(h.key) for h in res])
                recall = float(np.mean([len(set(h) & set(tr)) / K for h, tr in zip(hits, truth)]))
                row["search"].append({"ef_search": ef, "recall": recall, "latency_ms": percentiles_ms(lat)})
            out["storages"].append(row)
            print(json.dumps(row), flush=True)
            database.drop(coll)
        out["load_average_after"] = machine.load_average()
        return out
    finally:
        database.close()


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# `halfvec` vs `vector` storage (`python -m benchmarks.storage`)",
        "",
        f"{r['rows']:,} synthetic unit vectors x {r['dim']} (Gaussian clusters), one collection per storage, "
        f"image HNSW m=16, ef_construction=64 built by `ensure_index`; {r['queries']} held-out queries through "
        f"`Collection.search_vector` (SQL round trip), recall@{r['k']} against the exact float32 top {r['k']}. "
        f"PostgreSQL {m.get('postgresql')}, pgvector {m.get('pgvector')}, {m.get('cores')} cores ({m.get('cpu')}), "
        "shared machine.",
        "",
        "| storage | table MB | HNSW MB | build s | `ef_search` | recall@10 | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["storages"]:
        for q in s["search"]:
            lines.append(f"| `{s['storage']}` | {s['heap_bytes'] / 2**20:.0f} | {s['hnsw_bytes'] / 2**20:.0f} | "
                         f"{s['build_s']:.1f} | {q['ef_search']} | {q['recall']:.3f} | "
                         f"{q['latency_ms']['p50']:.2f} | {q['latency_ms']['p99']:.2f} |")
    v, h = r["storages"]
    lines += ["", f"halfvec: HNSW index {h['hnsw_bytes'] / v['hnsw_bytes']:.2f}x and table "
              f"{h['heap_bytes'] / v['heap_bytes']:.2f}x the bytes of vector; recall@10 at ef_search={EF[0]} "
              f"{h['search'][0]['recall']:.3f} vs {v['search'][0]['recall']:.3f}."]
    if r["rows"] < 1_000_000:
        slow = max(x["build_s"] for x in r["storages"])
        lines += ["", f"Not measured at 1,000,000 rows: one {r['rows']:,}-row build took up to {slow:.0f} s on this "
                  "shared 2-core machine, and a 1M build is more than 10x that, twice (one per storage): beyond "
                  "the ~5-minute build budget. Run `python -m benchmarks.storage --rows 1000000` where it fits."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded server; needs pgvector >= 0.7)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    a = p.parse_args(argv)
    r = run(a.rows, a.dim, a.queries, a.dsn)
    timing.emit(r, render(r), a.out, a.json)


if __name__ == "__main__":
    main()
