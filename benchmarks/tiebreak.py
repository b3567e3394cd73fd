"""``python -m benchmarks.tiebreak [--rows 100000] [--dim 64] [--dsn DSN] [--out FILE]``.

What a tiebreaker in the ranking query costs (docs/SQL.md, issue 14.8). pgvector's HNSW
index can serve ``ORDER BY embedding <-> q LIMIT k`` and nothing else: adding a second sort
key (``ORDER BY embedding <-> q, id``) makes the planner read every row and sort. The
correct pattern ranks with the index in an inner query and breaks ties outside it.

Measured on one synthetic collection (``--rows`` unit vectors of ``--dim`` dimensions in
300 Gaussian clusters, one partial HNSW index, m=16, ef_construction=64, ANALYZEd), k=10,
``--queries`` queries after 3 warm-up queries, each variant timed client-side (one
``execute`` + ``fetchall`` on an autocommit connection). Prints a Markdown table and
writes it to ``--out`` (default: print only). Bounded: ~1-2 min at 100k x 64 on 2 cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from psycopg import sql

from .env import Database
from .machine import load_average, postgres
from .synth import copy_load
from .timing import percentiles_ms

K = 10
WARMUP = 3

VARIANTS = {
    "index order only": "SELECT id, embedding <-> %(q)s AS distance FROM {t} WHERE modality = 'image' "
                        "ORDER BY embedding <-> %(q)s LIMIT 10",
    "tiebreaker in the ranking query": "SELECT id, embedding <-> %(q)s AS distance FROM {t} WHERE modality = 'image' "
                                       "ORDER BY embedding <-> %(q)s, id LIMIT 10",
    "tiebreaker in an outer query": "SELECT * FROM (SELECT id, embedding <-> %(q)s AS distance FROM {t} "
                                    "WHERE modality = 'image' ORDER BY embedding <-> %(q)s LIMIT 10) s "
                                    "ORDER BY distance, id",
    "jointembed.search(...)": "SELECT id, distance FROM jointembed.search({name}, %(q)s, 10, 'image')",
}


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, dim) float32`` unit vectors around 300 random centres."""
    centres = rng.standard_normal((300, dim))
    x = centres[rng.integers(300, size=n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def plan_node(conn, stmt, params) -> str:
    """The plan's nodes, top down: ``Limit → Index Scan using ...`` / ``Limit → Sort → Seq Scan ...``."""
    lines = [r[0].strip() for r in conn.execute(sql.SQL("EXPLAIN ") + stmt, params).fetchall()]
    nodes = [ln.lstrip("-> ").split("  (cost=")[0] for ln in lines if "(cost=" in ln]
    return " → ".join(nodes) or lines[0]


def run(rows: int, dim: int, queries: int, dsn: str | None) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    data = vectors(rows, dim, rng)
    qs = vectors(queries + WARMUP, dim, rng)
    database = Database.open(dsn)
    try:
        coll = database.collection("tiebreak", SimpleNamespace(model_id="synthetic", dim=dim))
        conn = database.conn
        load_s = copy_load(conn, coll, "image", data, "synthetic")
        t = time.perf_counter()
        coll.ensure_index(modalities=["image"])
        build_s = time.perf_counter() - t
        conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
        out = {}
        for label, text in VARIANTS.items():
            stmt = sql.SQL(text).format(t=coll.table_ident, name=sql.Literal(coll.name))
            plan = plan_node(conn, stmt, {"q": qs[0]}) if "jointembed.search" not in text else "jointembed.knn"
            seconds = []
            for i, q in enumerate(qs):
                t = time.perf_counter()
                got = conn.execute(stmt, {"q": q}).fetchall()
                if i >= WARMUP:
                    seconds.append(time.perf_counter() - t)
                assert len(got) == K, (label, len(got))
            out[label] = {"plan": plan, **percentiles_ms(seconds)}
        facts = {"rows": rows, "dim": dim, "queries": queries, "load_s": load_s, "build_s": build_s,
                 **postgres(conn), "load_average": load_average()}
        return out, facts
    finally:
        database.close()


def markdown(out: dict, facts: dict) -> str:
    base = out["index order only"]["p50"]
    lines = [f"{facts['rows']:,} rows x {facts['dim']} dims, k={K}, {facts['queries']} queries; "
             f"PostgreSQL {facts['postgresql']}, pgvector {facts['pgvector']}; HNSW build {facts['build_s']:.1f} s; "
             f"load average {', '.join(f'{x:.1f}' for x in facts['load_average'] or ())}.", "",
             "| query | plan | p50 ms | p95 ms | p50 vs index order only |", "|---|---|---|---|---|"]
    for label, r in out.items():
        lines.append(f"| {label} | {r['plan']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p50'] / base:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiebreak", description=__doc__.split("\n\n")[1])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded pgserver)")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    a = p.parse_args(argv)
    text = markdown(*run(a.rows, a.dim, a.queries, a.dsn))
    print(text)
    if a.out:
        a.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
