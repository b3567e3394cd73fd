"""HNSW index builds and writers: how long writers stall, how long the build takes.

    python -m benchmarks.index_build [--rows 100000] [--dim 256] [--dsn DSN] [--out PATH]

One collection of ``--rows`` synthetic unit vectors (:func:`vectors`: Gaussian clusters,
renormalised) in a fresh embedded PostgreSQL (or ``--dsn``), then three builds of the
image HNSW index (m=16, ef_construction=64, the server's parallel-worker defaults):

1. **reference**: plain ``CREATE INDEX`` with ``maintenance_work_mem`` = 2 GB (the graph
   fits), no writer: the fastest this server builds it;
2. **before**: plain ``CREATE INDEX`` at the session's ``maintenance_work_mem`` (the
   server default), as ``Collection.ensure_index`` did before issue 14, while a writer
   inserts one row every :data:`WRITE_EVERY_S` s on its own connection;
3. **after**: ``Collection.ensure_index()`` (``CREATE INDEX CONCURRENTLY``,
   ``maintenance_work_mem`` sized from the row count within the default 1 GB cap), with
   the same writer.

Reported per build: seconds, the writer's longest single-row ``INSERT`` during the build
(its stall), rows it wrote meanwhile, ``maintenance_work_mem`` and pgvector's notices.
Aims (issue 14): stall 0 s, ``after`` <= 1.1x ``reference``. Bounded: ~2-3 minutes at
100k x 256 on 2 cores. Writes ``docs/BENCHMARKS_INDEX_BUILD.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import machine, synth, timing  # noqa: E402
from benchmarks.env import Database  # noqa: E402
from jointembed_pg.search import indexing  # noqa: E402

OUT = REPO / "docs" / "BENCHMARKS_INDEX_BUILD.md"
#: Seconds between the writer's single-row inserts.
WRITE_EVERY_S = 0.01
REFERENCE_MEM = "2GB"
#: Build order: reference and after twice, interleaved (best of two is compared: the
#: machine is shared, so single timings are noisy), before once (its stall is the point).
SEQUENCE = ("reference", "after", "before", "reference", "after")
M, EF_CONSTRUCTION = 16, 64


def vectors(n: int, dim: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    """``(n, dim) float32`` unit vectors: Gaussian clusters around random unit centres.

    Each row is a centre plus isotropic noise of expected norm 0.5, renormalised, so
    near neighbours exist as in real embeddings (pure noise has none).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * (0.5 / dim ** 0.5)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


class Writer(threading.Thread):
    """Inserts one row every :data:`WRITE_EVERY_S` s; records (monotonic end time, seconds) per insert."""

    def __init__(self, dsn: str, coll, dim: int):
        super().__init__(daemon=True)
        self.dsn, self.coll, self.dim = dsn, coll, dim
        self.stop, self.lat, self.error = threading.Event(), [], None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                q = sql.SQL("INSERT INTO {} (modality, key, model_id, embedding) VALUES ('image', %s, 'synthetic', %s::vector)"
                            ).format(self.coll.table_ident)
                v = "[" + ",".join(["0.0625"] * self.dim) + "]"
                i = 0
                while not self.stop.is_set():
                    t = time.perf_counter()
                    c.execute(q, [f"writer-{time.time_ns()}-{i}", v])
                    self.lat.append((time.monotonic(), time.perf_counter() - t))
                    i += 1
                    time.sleep(WRITE_EVERY_S)
        except Exception as e:  # noqa: BLE001 - reported
            self.error = repr(e)

    def during(self, t0: float, t1: float) -> list[float]:
        """Seconds of each insert that overlapped ``[t0, t1]`` (a blocked one ends after t1)."""
        return [s for at, s in self.lat if at >= t0 and at - s <= t1]


def _drop(conn, coll) -> None:
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier("jointembed", coll.index_name("image"))))


def _plain(conn, coll, mem: str | None) -> tuple[float, list[str], str]:
    notices: list[str] = []
    handler = lambda d: notices.append(d.message_primary)  # noqa: E731
    conn.add_notice_handler(handler)
    try:
        if mem:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [mem])
        used = conn.execute("SHOW maintenance_work_mem").fetchone()[0]
        spec = indexing.IndexSpec("jointembed", coll.info.items_table, coll.index_name("image"), "image",
                                  "vector", coll.dim, M, EF_CONSTRUCTION)
        t = time.perf_counter()
        conn.execute(spec.create(False))
        return time.perf_counter() - t, notices, used
    finally:
        conn.remove_notice_handler(handler)
        conn.execute("RESET maintenance_work_mem")


def run(rows: int, dim: int, dsn: str | None) -> dict:
    database = Database.open(dsn)
    try:
        conn = database.conn
        coll = database.store.collection(database.prefix + "build", model_id="synthetic", dim=dim, create=True)
        database._made.append(coll.name)
        load_s = synth.copy_load(conn, coll, "image", vectors(rows, dim), "synthetic")
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(coll.table_ident))
        out = {"rows": rows, "dim": dim, "m": M, "ef_construction": EF_CONSTRUCTION, "load_s": load_s,
               "machine": {**machine.facts(), **machine.postgres(conn)}, "builds": []}
        for label in SEQUENCE:
            _drop(conn, coll)
            writer = None
            if label != "reference":
                writer = Writer(database.dsn, coll, dim)
                writer.start()
                time.sleep(1.0)
            t0 = time.monotonic()
            if label == "after":
                coll.ensure_index(M, EF_CONSTRUCTION, modalities=["image"])
                b = coll.last_builds[0]
                seconds, notices, mem = b.seconds, b.notices, b.memory.setting
            else:
                seconds, notices, mem = _plain(conn, coll, REFERENCE_MEM if label == "reference" else None)
            t1 = time.monotonic()
            row = {"build": label, "seconds": seconds, "maintenance_work_mem": mem, "notices": notices}
            if writer is not None:
                time.sleep(1.0)
                writer.stop.set()
                writer.join(120)
                lat = writer.during(t0, t1)
                row.update(writer_inserts=len(lat), writer_max_stall_s=max(lat) if lat else None,
                           writer_error=writer.error)
            out["builds"].append(row)
            print(json.dumps(row), flush=True)
        ref = min(b["seconds"] for b in out["builds"] if b["build"] == "reference")
        for b in out["builds"]:
            b["vs_reference"] = b["seconds"] / ref
        out["after_vs_reference"] = min(b["seconds"] for b in out["builds"] if b["build"] == "after") / ref
        out["load_average_after"] = machine.load_average()
        return out
    finally:
        database.close()


def render(r: dict) -> str:
    m = r["machine"]
    names = {"reference": "reference: plain `CREATE INDEX`, 2 GB, no writer",
             "before": "before: plain `CREATE INDEX`, server default, writer",
             "after": "after: `ensure_index()` (CONCURRENTLY, sized), writer"}
    lines = [
        "# Index builds and writers (`python -m benchmarks.index_build`)",
        "",
        f"{r['rows']:,} synthetic unit vectors x {r['dim']} (Gaussian clusters), image HNSW index m={r['m']}, "
        f"ef_construction={r['ef_construction']}; PostgreSQL {m.get('postgresql')}, pgvector {m.get('pgvector')}, "
        f"{m.get('cores')} cores ({m.get('cpu')}), server defaults otherwise "
        f"(`max_parallel_maintenance_workers` = {m.get('max_parallel_maintenance_workers', '?')}). "
        f"A writer inserts one row every {WRITE_EVERY_S * 1000:.0f} ms on its own connection during the "
        "`before` and `after` builds; its stall is its longest single-row INSERT that overlapped the build.",
        "",
        "| build | seconds | x reference | `maintenance_work_mem` | writer's max stall | writer rows during build | pgvector notice |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for b in r["builds"]:
        stall = "-" if "writer_max_stall_s" not in b else f"{b['writer_max_stall_s']:.2f} s"
        rows = "-" if "writer_inserts" not in b else f"{b['writer_inserts']:,}"
        notice = "graph did not fit" if any("no longer fits" in n for n in b["notices"]) else "-"
        lines.append(f"| {names[b['build']]} | {b['seconds']:.1f} | {b['vs_reference']:.2f} | "
                     f"{b['maintenance_work_mem']} | {stall} | {rows} | {notice} |")
    stall = max(b["writer_max_stall_s"] or 0 for b in r["builds"] if b["build"] == "after")
    la = r.get("load_average_after")
    lines += ["", f"Aims (issue 14): writers' max stall 0 s (measured at most {stall:.2f} s during `after` builds: "
              "ordinary INSERTs); build time <= 1.1x the reference "
              f"(measured {r['after_vs_reference']:.2f}x, best of two each; x reference column: against the "
              f"best reference). Load: {r['load_s']:.1f} s (binary COPY)."
              + (f" Machine load average at the end: {la[0]:.1f} (shared machine)." if la else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded server)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    a = p.parse_args(argv)
    r = run(a.rows, a.dim, a.dsn)
    timing.emit(r, render(r), a.out, a.json)


if __name__ == "__main__":
    main()
