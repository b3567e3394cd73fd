"""Text queries in plain SQL (issue 25): jointembed.embed_text and search_text latency.

``python -m benchmarks.text_sql [--dsn DSN] [--rows 100000] [--repeat 300] [--out FILE]``

One collection of ``--rows`` random unit vectors (image modality, HNSW index) for the
bundle's model, with the bundle's SQL text encoder loaded. Measured from the client
(psycopg, one autocommit connection, local socket), each statement ``--repeat`` times,
interleaved so that load on the machine hits all of them alike:

* ``embed_text`` of 12-word queries (every word a vocabulary piece: the fast path) and of
  12-word queries with rare/compound words (the WordPiece slow path);
* ``search_text(collection, query, 10)`` against ``search(collection, vector, 10)`` with
  the same query embedded beforehand: the ratio is the cost of embedding in SQL;
* for reference, the ONNX text tower's embedding of the same query in this process.

Writes a markdown report (stdout and ``--out``, default docs/BENCHMARKS_TEXT_SQL.md,
carried into docs/BENCHMARKS.md as an appendix by benchmarks/report.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .env import Database, publish, report_parser, resolve_bundle
from .machine import load_average

QUERIES = [  # 12 words, all whole vocabulary pieces
    "a black dog is running on the beach near the blue water",
    "two young children are playing soccer in a park on sunny day",
    "a man in a red jacket climbs a rock with a rope",
    "a woman is riding a bicycle down a busy street in town",
]
SLOW_QUERIES = [  # 12 words, several split into word pieces
    "a snowboarder somersaults over moguls while paragliders drift above snowcapped mountaintops in sunshine",
    "toddlers splashing happily inside inflatable paddling pools beside flowerbeds under cloudless skies today",
]


def _p50_ms(xs: list[float]) -> float:
    return float(np.percentile(np.array(xs) * 1000, 50))


def _p95_ms(xs: list[float]) -> float:
    return float(np.percentile(np.array(xs) * 1000, 95))


def _server_ms(conn, stmt: str, name: str, queries: list[str], repeat: int, vecs: dict | None = None) -> float:
    """Mean milliseconds per call of ``stmt`` run ``repeat`` times inside the server (a DO
    loop over EXECUTE: no client round trip, no client scheduling)."""
    from psycopg import sql

    calls = [sql.SQL(stmt).format(n=sql.Literal(name), q=sql.Literal(q),
                                  v=sql.Literal("[" + ",".join(map(repr, map(float, vecs[q]))) + "]") if vecs else
                                  sql.Literal(None)).as_string(conn) for q in queries]
    notes: list[str] = []
    handler = lambda d: notes.append(d.message_primary or "")  # noqa: E731
    conn.add_notice_handler(handler)
    try:
        conn.execute(sql.SQL(
            "DO $$ DECLARE t0 timestamptz; x bigint; c text[] := {c}; "
            "BEGIN FOR i IN 1 .. cardinality(c) LOOP EXECUTE c[i]; END LOOP; t0 := clock_timestamp(); "
            "FOR i IN 1 .. {r} LOOP EXECUTE c[1 + i % cardinality(c)]; END LOOP; "
            "RAISE NOTICE 'jointembed-bench %', extract(epoch FROM clock_timestamp() - t0) * 1000 / {r}; END $$"
        ).format(c=sql.Literal(calls), r=sql.Literal(repeat)))
    finally:
        conn.remove_notice_handler(handler)
    return float(next(n for n in notes if n.startswith("jointembed-bench")).split()[1])


def run(dsn: str | None, bundle_path: Path | None, rows: int, repeat: int) -> dict:
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.search import text_sql

    bundle = Bundle.load(resolve_bundle(bundle_path))
    database = Database.open(dsn)
    try:
        conn = database.conn
        coll = database.collection("text_sql", bundle)
        t0 = time.perf_counter()
        assert text_sql.ensure_loaded(conn, bundle, required=True)
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for s in range(0, rows, 20_000):
            e = rng.standard_normal((min(20_000, rows - s), bundle.dim)).astype(np.float32)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            coll.upsert([("image", f"i{s + i}", None, None, None, v) for i, v in enumerate(e)])
        coll.ensure_index()
        build_s = time.perf_counter() - t0
        name = coll.name
        vecs = {q: text_sql.embed(conn, name, q) for q in QUERIES + SLOW_QUERIES}
        times: dict[str, list[float]] = {"embed_fast": [], "embed_slow": [], "search_text": [], "search": [],
                                         "onnx": []}
        cur = conn.cursor()
        for q in QUERIES:  # warm: plans, regex cache, buffers
            cur.execute("SELECT jointembed.search_text(%s, %s, 10)", [name, q]).fetchall()
            cur.execute("SELECT jointembed.search(%s, %s, 10, 'image')", [name, vecs[q]]).fetchall()
        bundle.encode_texts(QUERIES[0])
        for r in range(repeat):
            q, sq = QUERIES[r % len(QUERIES)], SLOW_QUERIES[r % len(SLOW_QUERIES)]
            stmts = [("embed_fast", "SELECT jointembed.embed_text(%s, %s)", [name, q]),
                     ("embed_slow", "SELECT jointembed.embed_text(%s, %s)", [name, sq]),
                     ("search_text", "SELECT * FROM jointembed.search_text(%s, %s, 10)", [name, q]),
                     ("search", "SELECT * FROM jointembed.search(%s, %s, 10, 'image')", [name, vecs[q]])]
            for j in rng.permutation(len(stmts)):  # no statement always first after a pause
                key, stmt, args = stmts[j]
                t = time.perf_counter()
                cur.execute(stmt, args).fetchall()
                times[key].append(time.perf_counter() - t)
            if r % 5 == 0:
                t = time.perf_counter()
                bundle.encode_texts(q)
                times["onnx"].append(time.perf_counter() - t)
        out = {k: {"p50_ms": _p50_ms(v), "p95_ms": _p95_ms(v), "n": len(v)} for k, v in times.items()}
        out["server_mean_ms"] = {
            "embed_fast": _server_ms(conn, "SELECT jointembed.embed_text({n}, {q})", name, QUERIES, repeat),
            "embed_slow": _server_ms(conn, "SELECT jointembed.embed_text({n}, {q})", name, SLOW_QUERIES, repeat),
            "search_text": _server_ms(conn, "SELECT count(*) FROM jointembed.search_text({n}, {q}, 10)", name,
                                      QUERIES, repeat),
            "search": _server_ms(conn, "SELECT count(*) FROM jointembed.search({n}, {v}, 10, 'image')", name,
                                 QUERIES, repeat, vecs),
        }
        out["ratio_p50"] = out["search_text"]["p50_ms"] / out["search"]["p50_ms"]
        out["rows"], out["repeat"], out["load_s"], out["build_s"] = rows, repeat, load_s, build_s
        out["model_id"], out["load_average"] = bundle.model_id, load_average()
        out["pgvector"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        out["server"] = conn.info.server_version
        return out
    finally:
        database.close()


def markdown(r: dict) -> str:
    la = r.get("load_average")
    lines = [
        "# Text queries in plain SQL (`python -m benchmarks.text_sql`)", "",
        f"Model {r['model_id']}, {r['rows']:,} random unit vectors (image, HNSW m=16), PostgreSQL "
        f"{r['server']}, pgvector {r['pgvector']}; {r['repeat']} runs per statement, interleaved, measured "
        f"at the client (local socket), in a random order each round. The machine (2 cores) was shared with other work during the run"
        + (f" (load average {la[0]:.1f} at the end)" if la else "") + ": absolute figures are noisy, the "
        "ratio was measured in one run under the same load. Loading the encoder (30,522 pieces, COPY BINARY) "
        f"took {r['load_s']:.1f} s.", "",
        "| statement | p50 (ms) | p95 (ms) | aim |", "|---|---:|---:|---|",
        f"| `embed_text`, 12-word query, whole-word pieces | {r['embed_fast']['p50_ms']:.2f} | "
        f"{r['embed_fast']['p95_ms']:.2f} | p50 <= 2 ms |",
        f"| `embed_text`, 12-word query with compound words (WordPiece slow path) | {r['embed_slow']['p50_ms']:.2f} | "
        f"{r['embed_slow']['p95_ms']:.2f} | |",
        f"| `search(collection, vector, 10)`, query embedded beforehand | {r['search']['p50_ms']:.2f} | "
        f"{r['search']['p95_ms']:.2f} | |",
        f"| `search_text(collection, text, 10)` | {r['search_text']['p50_ms']:.2f} | "
        f"{r['search_text']['p95_ms']:.2f} | <= 1.5x search |",
        f"| (reference) ONNX text tower in Python, one query | {r['onnx']['p50_ms']:.2f} | {r['onnx']['p95_ms']:.2f} | |",
        "", f"`search_text` / `search` at p50: **{r['ratio_p50']:.2f}x**.", "",
        "The same statements timed inside the server (mean of the runs of a DO loop over EXECUTE: no client "
        "round trip or client scheduling):", "",
        "| statement | mean (ms) |", "|---|---:|",
        *(f"| `{k}` | {v:.3f} |" for k, v in r["server_mean_ms"].items()),
        "", f"`search_text` / `search` inside the server: **{r['server_mean_ms']['search_text'] / r['server_mean_ms']['search']:.2f}x**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = report_parser("text_sql", __doc__, Path("docs/BENCHMARKS_TEXT_SQL.md"))
    ap.add_argument("--bundle", type=Path, default=None, help="bundle with text_static.npy (default: the tests')")
    ap.add_argument("--rows", type=int, default=100_000, help="stored vectors (default 100,000)")
    ap.add_argument("--repeat", type=int, default=300, help="runs per statement (default 300)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return publish(markdown(run(args.dsn, args.bundle, args.rows, args.repeat)), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
