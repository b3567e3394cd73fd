"""Float HNSW vs the binary (bit) indexes at scale: build time, index bytes, t2i p50, recall@10.

    python -m benchmarks.binary_index --base EMB.npz [--sizes 100000 300000 1000000]
        [--kinds float binary binary-ivf] [--float-max 300000] [--queries 200]
        [--json STATE.json [--resume]] [--out PATH] [--dsn DSN]
    python -m benchmarks.binary_index --base EMB.npz --tune [--sizes 100000] ...   # dev sweep

At each size N one collection holds N image vectors (D = 256). Stored vectors are grown
from real embeddings when ``--base`` is given (an ``.npz`` from ``python -m
benchmarks.embed_base``: ``images (N0, D)``, ``queries (Qt, D)`` test-caption and
``queries_dev (Qd, D)`` dev-caption embeddings, float32; the real rows first, then real rows
plus noise shaped by their covariance, :func:`benchmarks.synth.generate`), else synthetic
Gaussian clusters (:func:`benchmarks.index_build.vectors`). Reported queries are the base's
test captions (text -> image); ``--tune`` uses its dev captions only.

Index kinds, each built with a plain ``CREATE INDEX`` at ``maintenance_work_mem`` 2 GB
from the product's :class:`jointembed_pg.search.indexing.IndexSpec` and searched through
``jointembed.search`` (``jointembed.knn``), as a collection of that kind is:

* ``float``: HNSW ``vector_l2_ops``, m = 16, ef_construction = 64, ``hnsw.ef_search`` 40;
* ``binary``: HNSW ``bit_hamming_ops`` on ``binary_quantize(embedding)::bit(D)`` (same m /
  ef_construction); the Hamming pool ``jointembed._knn_binary_pool(k)`` re-ranked by L2;
* ``binary-ivf``: IVFFlat ``bit_hamming_ops`` on the same bits, ``indexing.ivf_lists(N)``
  lists, a pool of ``jointembed._knn_ivf_pool(k)`` with ``ivfflat.probes`` =
  ``jointembed._knn_ivf_probes(lists, N, pool)``.

``float`` and ``binary`` are built only at sizes <= ``--float-max`` (a 1M float HNSW build
does not fit a run on 2 cores); the report extrapolates the float index to larger sizes
from its two largest measured sizes (power law per quantity) and says so.

Per (size, kind): build seconds, index bytes (``pg_relation_size``), top-10 latency of
``jointembed.search(collection, q, 10, 'image')`` per query (p50, p95; 20 warm-up queries
first), recall@10 against the exact float top 10 (numpy). Each finished (size, kind) is
saved to ``--json`` at once; ``--resume`` skips what that file already holds, so a run
that was stopped continues where it was. Every collection is dropped when the run ends
(also on SIGTERM / SIGHUP / Ctrl-C); on ``--dsn`` a leftover ``binidx_<N>`` collection of a
killed run is dropped before loading.

``--tune`` (choose settings on dev captions, never on the reported ones): at each size,
builds the IVFFlat bit index with the lists of each ``--tune-lists`` rule and measures
recall@10 / p50 of the dev queries for every ``--pools`` x ``--probes`` pair (fixed values
set in the run's throw-away database), plus the exact Hamming pool (no index: the recall
ceiling of a pool).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
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
KINDS = ("float", "binary", "binary-ivf")
T0 = time.perf_counter()


def say(msg: str) -> None:
    """Progress line on stderr with the run's elapsed time."""
    print(f"[{time.perf_counter() - T0:7.0f} s] {msg}", file=sys.stderr, flush=True)


def _base(path: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(images (N0, D), test queries (n, D), dev queries (n, D) or None)`` float32 (module doc)."""
    z = np.load(path)
    rng = np.random.default_rng(seed)

    def pick(key):
        q = z[key].astype(np.float32)
        return q[rng.permutation(len(q))[:n_queries]]
    return z["images"].astype(np.float32), pick("queries"), pick("queries_dev") if "queries_dev" in z else None


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


def _spec(coll, kind: str, lists: int | None) -> indexing.IndexSpec:
    return indexing.IndexSpec("jointembed", coll.info.items_table, coll.index_name("image"), "image", "vector",
                              coll.dim, M, EF_CONSTRUCTION, binary=kind != "float", method=indexing.METHOD[kind],
                              lists=lists if kind == "binary-ivf" else None)


def _build(conn, spec: indexing.IndexSpec, rows: int) -> tuple[float, int]:
    """Plain CREATE INDEX of ``spec`` at ``maintenance_work_mem`` MEM; ``(seconds, bytes)``."""
    say(f"building {spec.name} ({spec.method}{f', lists {spec.lists}' if spec.lists else ''})")
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [MEM])
    monitor = indexing._Monitor(conn, spec.name, rows, False)  # progress to the log every 10 s
    monitor.start()
    t = time.perf_counter()
    try:
        conn.execute(spec.create(False))
    finally:
        monitor.stop()
    seconds = time.perf_counter() - t
    conn.execute("RESET maintenance_work_mem")
    size = conn.execute("SELECT pg_relation_size(%s::regclass)", [spec.index_ident.as_string(conn)]).fetchone()[0]
    say(f"built {spec.name} in {seconds:.1f} s, {size / 2**20:.1f} MB")
    return seconds, int(size)


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


def _fix(conn, function: str, value: int | None) -> None:
    """Pin ``jointembed._knn_binary_pool`` / ``_knn_ivf_pool`` / ``_knn_ivf_probes`` to ``value`` in this throw-away
    database (``None``: restore the shipped definition saved by :func:`_saved`)."""
    args = {"_knn_binary_pool": "p_k integer", "_knn_ivf_pool": "p_k integer",
            "_knn_ivf_probes": "p_lists integer, p_rows float8, p_pool integer"}
    if value is None:
        conn.execute(_SAVED[function])
        return
    conn.execute(f"CREATE OR REPLACE FUNCTION jointembed.{function}({args[function]}) RETURNS integer "
                 f"LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, jointembed, pg_temp AS 'SELECT {int(value)}'")


_SAVED: dict[str, str] = {}


def _saved(conn) -> None:
    for f in ("_knn_binary_pool", "_knn_ivf_pool", "_knn_ivf_probes"):
        _SAVED[f] = conn.execute("SELECT pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname = %s AND "
                                 "p.pronamespace = 'jointembed'::regnamespace", [f]).fetchone()[0]


def _load(database, n: int, vecs: np.ndarray):
    conn = database.conn
    name = f"binidx_{n}"
    database.store.drop_collection(name)   # a killed run's leftover (--dsn)
    database._made.append(name)
    coll = database.store.collection(name, model_id="synthetic", dim=vecs.shape[1], create=True)
    say(f"loading {n:,} vectors into {name}")
    load_s = synth.copy_load(conn, coll, "image", vecs, "synthetic")
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(coll.table_ident))
    table_bytes = conn.execute("SELECT pg_total_relation_size(%s::regclass)",
                               [coll.table_ident.as_string(conn)]).fetchone()[0]
    say(f"loaded in {load_s:.0f} s, table {table_bytes / 2**20:.0f} MB")
    return name, coll, load_s, int(table_bytes)


def run_size(database, n: int, kinds: list[str], vecs: np.ndarray, queries: np.ndarray, state: dict,
             save, pools: tuple[int, ...] = ()) -> None:
    """Measure ``kinds`` at ``n`` rows on the test ``queries``; each result goes into
    ``state["sizes"][str(n)]`` and is saved at once."""
    conn = database.conn
    truth = synth.exact_topk(queries, vecs, K)
    name, coll, load_s, table_bytes = _load(database, n, vecs)
    entry = state["sizes"].setdefault(str(n), {"n": n, "kinds": {}})
    entry.update(load_s=load_s, table_bytes=table_bytes)
    try:
        for kind in kinds:
            conn.execute("SELECT jointembed.set_collection_index(%s, %s)", [name, kind])
            coll = database.store.collection(name)
            spec = _spec(coll, kind, indexing.ivf_lists(n))
            seconds, size = _build(conn, spec, n)
            say(f"{kind}: {len(queries)} queries")
            row = {"build_s": seconds, "index_bytes": size, "lists": spec.lists,
                   **_queries(conn, name, queries, truth), "load_average": machine.load_average()}
            if kind != "float" and pools:
                row["pools"] = {}
                f = "_knn_ivf_pool" if kind == "binary-ivf" else "_knn_binary_pool"
                for pool in pools:   # fixed pools (reported for the reader; the default was chosen on dev)
                    _fix(conn, f, pool)
                    row["pools"][str(pool)] = _queries(conn, name, queries, truth)
                    say(f"{kind} pool {pool}: {json.dumps(row['pools'][str(pool)])}")
                _fix(conn, f, None)
            entry["kinds"][kind] = row
            save()
            print(json.dumps({"n": n, "kind": kind, **row}), flush=True)
            conn.execute(sql.SQL("DROP INDEX {}").format(spec.index_ident))
    finally:
        database.drop(coll)


def tune_size(database, n: int, vecs: np.ndarray, dev: np.ndarray, lists_rules: list[str], pools: list[int],
              probes: list[int]) -> list[dict]:
    """The dev sweep of ``--tune`` at ``n`` rows (module doc); returns one dict per setting."""
    conn = database.conn
    truth = synth.exact_topk(dev, vecs, K)
    name, coll, _, _ = _load(database, n, vecs)
    out = []
    try:
        conn.execute("SELECT jointembed.set_collection_index(%s, 'binary-ivf')", [name])
        coll = database.store.collection(name)
        for pool in pools:   # no index: the exact Hamming pool (seq scan), the ceiling of this pool
            _fix(conn, "_knn_binary_pool", pool)
            r = _queries(conn, name, dev[:50], truth[:50])
            out.append({"n": n, "index": "none (exact Hamming)", "pool": pool, **r})
            say(json.dumps(out[-1]))
        for rule in lists_rules:
            lists = indexing.ivf_lists(n) if rule == "rows/1000" else max(1, round(math.sqrt(n)))
            spec = _spec(coll, "binary-ivf", lists)
            build_s, size = _build(conn, spec, n)
            for pool in pools:
                _fix(conn, "_knn_ivf_pool", pool)
                for p in [*probes, None]:
                    _fix(conn, "_knn_ivf_probes", p)
                    shipped = p is None
                    if shipped:
                        p = conn.execute("SELECT jointembed._knn_ivf_probes(%s, %s, %s)", [lists, n, pool]).fetchone()[0]
                    if p > lists:
                        continue
                    r = _queries(conn, name, dev, truth)
                    out.append({"n": n, "index": f"ivfflat lists {lists} ({rule})", "build_s": build_s,
                                "index_bytes": size, "pool": pool, "probes": p, "rule": shipped, **r})
                    say(json.dumps(out[-1]))
                _fix(conn, "_knn_ivf_probes", None)
            conn.execute(sql.SQL("DROP INDEX {}").format(spec.index_ident))
        _fix(conn, "_knn_binary_pool", None)
        _fix(conn, "_knn_ivf_pool", None)
    finally:
        database.drop(coll)
    return out


# -- report ---------------------------------------------------------------------------
def extrapolate(sizes: dict, kind: str, n: int) -> dict | None:
    """``kind``'s build_s / index_bytes / p50 at ``n`` rows by a power law through its two
    largest measured sizes below ``n`` (``None`` when fewer than two)."""
    have = sorted((int(s), v["kinds"][kind]) for s, v in sizes.items() if kind in v["kinds"] and int(s) < n)
    if len(have) < 2:
        return None
    (n1, a), (n2, b) = have[-2:]

    def grow(x1, x2):
        e = math.log(x2 / x1) / math.log(n2 / n1)
        return x2 * (n / n2) ** e, e
    build, eb = grow(a["build_s"], b["build_s"])
    size, es = grow(a["index_bytes"], b["index_bytes"])
    p50, el = grow(a["latency_ms"]["p50"], b["latency_ms"]["p50"])
    return {"build_s": build, "index_bytes": size, "latency_ms": {"p50": p50}, "exponents": [eb, es, el],
            "from": [n1, n2]}


def render(r: dict) -> str:
    m = r["machine"]
    cmd = " ".join(["python -m benchmarks.binary_index", *r.get("argv", [])])
    loads = [v.get("load_average") for s in r["sizes"].values() for v in s["kinds"].values() if v.get("load_average")]
    lines = ["## Float HNSW vs binary indexes by size (`python -m benchmarks.binary_index`, issue 26)", "",
             f"Generated by `{cmd}` on {time.strftime('%Y-%m-%d', time.gmtime())} (machine 1-minute load average "
             f"after each measurement: {', '.join(f'{x[0]:.1f}' for x in loads) or 'n/a'}). Methods: the module "
             "docstring of benchmarks/binary_index.py; settings chosen on dev captions: docs/BENCHMARKS.md.", "",
             "| rows | index | build s | index MB | t2i top-10 p50 ms | p95 ms | recall@10 vs exact |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    sizes = r["sizes"]
    notes = []
    for key in sorted(sizes, key=int):
        s = sizes[key]
        n = s["n"]
        for kind, row in s["kinds"].items():
            lat = row["latency_ms"]
            label = kind + (f" (lists {row['lists']})" if row.get("lists") else "")
            lines.append(f"| {n:,} | {label} | {row['build_s']:.1f} | {row['index_bytes'] / 2**20:.1f} | "
                         f"{lat['p50']:.2f} | {lat['p95']:.2f} | {row['recall_at_10']:.3f} |")
            for pool, pr in row.get("pools", {}).items():
                lines.append(f"| {n:,} | {kind}, pool {pool} | | | {pr['latency_ms']['p50']:.2f} | "
                             f"{pr['latency_ms']['p95']:.2f} | {pr['recall_at_10']:.3f} |")
        f = s["kinds"].get("float")
        if f is None and "float" in r.get("kinds", KINDS):
            f = extrapolate(sizes, "float", n)
            if f is not None:
                e = f["exponents"]
                lines.append(f"| {n:,} | float, **extrapolated** | {f['build_s']:.0f} | {f['index_bytes'] / 2**20:.0f} | "
                             f"{f['latency_ms']['p50']:.2f} | | not measured |")
                notes.append(f"float at {n:,} rows: not built; extrapolated from {f['from'][0]:,} and {f['from'][1]:,} "
                             f"rows by a power law per quantity (exponents: build {e[0]:.2f}, bytes {e[1]:.2f}, "
                             f"p50 {e[2]:.2f}).")
        for kind in ("binary", "binary-ivf"):
            b = s["kinds"].get(kind)
            if f is not None and b is not None:
                lines.append(f"| {n:,} | {kind} / float | {f['build_s'] / b['build_s']:.1f}x faster | "
                             f"{f['index_bytes'] / b['index_bytes']:.1f}x smaller | "
                             f"x{b['latency_ms']['p50'] / f['latency_ms']['p50']:.2f} | | |")
    lines += ["", *notes, "", f"Base: {r['base']}; {r['queries']} test-caption queries; D = {r['dim']}; HNSW m = {M}, "
              f"ef_construction = {EF_CONSTRUCTION}; plain CREATE INDEX at maintenance_work_mem {MEM}; PostgreSQL "
              f"{m.get('postgresql')}, pgvector {m.get('pgvector')}, {m.get('cores')} cores ({m.get('cpu')}). Float "
              "searches: jointembed.knn at hnsw.ef_search 40; binary kinds: the Hamming pool "
              "jointembed._knn_binary_pool(10) = 400 re-ranked by L2 (binary-ivf: jointembed._knn_ivf_pool(10) = 1000 at "
              "ivfflat.probes = jointembed._knn_ivf_probes(lists, rows, pool)); \"pool P\" rows: a fixed pool.", ""]
    return "\n".join(lines)


def render_tune(rows: list[dict]) -> str:
    lines = ["| rows | index | build s | index MB | pool | probes | dev recall@10 | p50 ms | p95 ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in rows:
        lat = t["latency_ms"]
        lines.append(f"| {t['n']:,} | {t['index']} | {t.get('build_s', 0):.1f} | {t.get('index_bytes', 0) / 2**20:.1f} | "
                     f"{t['pool']} | {t.get('probes', '-')}{' (rule)' if t.get('rule') else ''} | "
                     f"{t['recall_at_10']:.3f} | {lat['p50']:.2f} | {lat['p95']:.2f} |")
    return "\n".join(lines) + "\n"


def _stop(signum, frame):  # noqa: ARG001
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.binary_index", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--float-max", type=int, default=300_000, help="build float and binary HNSW only up to this size")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--base", type=Path, help=".npz of python -m benchmarks.embed_base (real embeddings)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--pools", type=int, nargs="*", default=[], help="also measure binary kinds at these fixed "
                   "Hamming pools (with --tune: the pools swept)")
    p.add_argument("--tune", action="store_true", help="dev sweep of the IVFFlat settings (dev captions)")
    p.add_argument("--tune-lists", nargs="+", default=["rows/1000", "sqrt"], choices=["rows/1000", "sqrt"])
    p.add_argument("--probes", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="--tune: fixed probes swept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded server)")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, help="results (the run's state: written after each measurement)")
    p.add_argument("--resume", action="store_true", help="skip the (size, kind) pairs --json already holds")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    base, queries, dev = (None, None, None) if a.base is None else _base(a.base, a.queries, a.seed)
    dim = a.dim if base is None else base.shape[1]
    if a.tune and dev is None:
        p.error("--tune needs --base with queries_dev (python -m benchmarks.embed_base)")
    state = {"dim": dim, "queries": a.queries, "kinds": a.kinds, "argv": sys.argv[1:] if argv is None else list(argv),
             "base": str(a.base) if a.base else "synthetic Gaussian clusters", "sizes": {}}
    if a.resume and a.json and a.json.exists():
        state = json.loads(a.json.read_text())
        state["argv"] = sys.argv[1:] if argv is None else list(argv)   # the report names the finishing run
        say(f"resuming: {a.json} holds " + ", ".join(f"{k}: {sorted(v['kinds'])}" for k, v in state["sizes"].items()))

    def save():
        if a.json:
            tmp = a.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, a.json)

    database = Database.open(a.dsn)
    say(f"database ready ({'--dsn' if a.dsn else 'embedded, ' + str(database._tmp)})")
    try:
        state["machine"] = {**machine.facts(), **machine.postgres(database.conn)}
        _saved(database.conn)
        tuned = []
        for n in a.sizes:
            vecs = stored_vectors(base, n, dim, a.seed)
            if a.tune:
                tuned += tune_size(database, n, vecs, dev, a.tune_lists, a.pools or [400, 1000, 2000], a.probes)
                continue
            q = queries if queries is not None else synthetic_queries(n, dim, a.seed, a.queries)
            done = state["sizes"].get(str(n), {}).get("kinds", {})
            todo = [k for k in a.kinds if k not in done and (k == "binary-ivf" or n <= a.float_max)]
            if todo:
                run_size(database, n, todo, vecs, q, state, save, tuple(a.pools))
            del vecs
    finally:
        database.close()
    if a.tune:
        text = render_tune(tuned)
        state["tune"] = tuned
    else:
        text = render(state)
    save()
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
