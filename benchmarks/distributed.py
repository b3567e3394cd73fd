"""Distributed ingest throughput (Ray, local workers) next to the single process, and a
single-node ceilings probe (write rate, HNSW build, sizes, query latency vs N).

    python -m benchmarks.distributed [--images 1000] [--captions 5000] [--workers 2]
                                     [--ceilings 20000,50000,100000]

Part 1. Same inputs (the first N Flickr8K images by name, the first N captions of the
token file), same run, same fresh embedded PostgreSQL: ``ingest.index_images`` /
``index_texts`` in this process (as the CLI runs them, and with onnxruntime on one
thread), then ``distributed.index_images_ray`` / ``index_texts_ray`` with a pool of
local Ray workers. Ray's cluster start is timed on its own; the job times include
creating the actors and loading the bundle in each. The stored rows are compared.

Part 2 (``--ceilings``). Synthetic image vectors (real Flickr8K image embeddings plus
isotropic noise, renormalised) are written through ``Collection.upsert`` in batches of
``UPSERT_BATCH``; at each size the HNSW index is (re)built with ``ensure_index`` and
measured: bulk upsert rate (index dropped), build seconds, table and index bytes, query
latency (HNSW, default ``ef_search``, and exact), recall@10 of HNSW against exact, and
the upsert rate of one more batch with the index in place (incremental ingest).

Writes ``docs/BENCHMARKS_DISTRIBUTED.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import machine  # noqa: E402
from jointembed_pg import distributed
from jointembed_pg.ingest import flickr8k, pipeline as ingest, readers  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "flickr8k"
OUT = REPO / "docs" / "BENCHMARKS_DISTRIBUTED.md"
#: Rows per ``Collection.upsert`` call in the ceilings probe.
UPSERT_BATCH = 2000
#: Queries per size (HNSW) and exact scans per size (slow, so fewer).
HNSW_QUERIES, EXACT_QUERIES, K = 200, 20, 10
#: Norm of the noise added to a real embedding to make a synthetic one (unit vectors).
NOISE_NORM = 0.3
MAINTENANCE_WORK_MEM = "1GB"


# -- part 1: distributed vs single process ----------------------------------------------------
def _inputs(data: Path, n_images: int, n_captions: int, tmp: Path) -> tuple[list[Path], Path]:
    images = sorted((data / "images").glob("*.jpg"))[:n_images]
    lines = (data / flickr8k.TOKEN_FILE).read_bytes().splitlines()[:n_captions]
    captions = tmp / "captions.token.txt"
    captions.write_bytes(b"\n".join(lines) + b"\n")
    return images, captions


def _single(dsn: str, bundle_dir: Path, modality: str, name: str, work, threads: int | None = None
            ) -> ingest.IngestReport:
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.search.store import Store

    bundle = Bundle.load(bundle_dir, intra_op_threads=threads)
    with Store(dsn) as store:
        coll = store.collection(name, model_id=bundle.model_id, dim=bundle.dim, create=True)
        if modality == "image":
            return ingest.index_images(coll, bundle, list(readers.iter_image_paths(work)), progress=False)
        return ingest.index_texts(coll, bundle, readers.read_texts(work), progress=False)


def _identical(dsn: str, a: str, b: str) -> bool:
    """Whether collections ``a`` and ``b`` hold the same keys, hashes and embeddings (text form)."""
    from psycopg import sql

    from jointembed_pg.search.store import Store

    with Store(dsn) as store:
        ta, tb = store.collection(a).table_ident, store.collection(b).table_ident
        q = sql.SQL("SELECT count(*) FROM {} x FULL JOIN {} y USING (modality, key) WHERE x.key IS NULL "
                    "OR y.key IS NULL OR x.content_hash <> y.content_hash OR x.embedding::text <> y.embedding::text")
        with store.transaction() as conn:
            return conn.execute(q.format(ta, tb)).fetchone()[0] == 0


def _row(run_id: str, label: str, report: ingest.IngestReport, note: str = "") -> dict:
    n = report.written + report.unchanged
    return {"id": run_id, "run": label, "items": n, "seconds": round(report.seconds, 2),
            "per_s": round(n / report.seconds, 1), "failed": len(report.failed), "note": note}


def measure(dsn: str, bundle_dir: Path, images: list[Path], captions: Path, workers: int) -> dict:
    """Both engines on both modalities, same inputs; rows, Ray start time, equality, load."""
    import ray

    loads = [machine.load_average()]
    rows = [_row("img", "images, single process (`ingest.index_images`)",
                 _single(dsn, bundle_dir, "image", "single_images", images),
                 "as the CLI runs it: 2 decode threads, onnxruntime's default threads"),
            _row("img1", "images, single process, onnxruntime 1 thread",
                 _single(dsn, bundle_dir, "image", "single1_images", images, threads=1),
                 "`Bundle.load(intra_op_threads=1)`"),
            _row("txt", "captions, single process (`ingest.index_texts`)",
                 _single(dsn, bundle_dir, "text", "single_texts", captions), "as the CLI runs it"),
            _row("txt1", "captions, single process, onnxruntime 1 thread",
                 _single(dsn, bundle_dir, "text", "single1_texts", captions, threads=1),
                 "`Bundle.load(intra_op_threads=1)`")]
    loads.append(machine.load_average())
    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    startup = time.perf_counter() - t
    try:
        rows += [_row("img_ray", f"images, Ray, {workers} local workers",
                      distributed.index_images_ray(dsn, "ray_images", bundle_dir, images, workers=workers),
                      "1 CPU and 1 onnxruntime thread per worker"),
                 _row("txt_ray", f"captions, Ray, {workers} local workers",
                      distributed.index_texts_ray(dsn, "ray_texts", bundle_dir, captions, workers=workers))]
    finally:
        ray.shutdown()
    loads.append(machine.load_average())
    same = {"images": _identical(dsn, "single_images", "ray_images"),
            "captions": _identical(dsn, "single_texts", "ray_texts")}
    return {"rows": rows, "ray_startup_s": round(startup, 2), "identical": same, "load": loads, "workers": workers}


# -- part 2: single-node ceilings ------------------------------------------------------------
def _synthetic(base: np.ndarray, n: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, D) float32`` unit vectors: real embeddings (cycled) plus noise of norm ~``NOISE_NORM``."""
    picks = base[(start + np.arange(n)) % len(base)]
    noisy = picks + rng.normal(0, NOISE_NORM / np.sqrt(base.shape[1]), picks.shape).astype(np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def _fill(coll, base: np.ndarray, start: int, stop: int, rng: np.random.Generator) -> float:
    """Upsert synthetic rows ``start..stop`` in ``UPSERT_BATCH`` transactions; return seconds."""
    t = time.perf_counter()
    for lo in range(start, stop, UPSERT_BATCH):
        hi = min(stop, lo + UPSERT_BATCH)
        vecs = _synthetic(base, hi - lo, lo, rng)
        coll.upsert([ingest.Row("image", f"syn/{i:08d}", None, None, "-", v) for i, v in zip(range(lo, hi), vecs)])
    return time.perf_counter() - t


def _sizes(coll) -> tuple[int, int]:
    """(table bytes incl. TOAST, HNSW index bytes)."""
    with coll.store.transaction() as conn:
        table = conn.execute("SELECT pg_table_size(%s::regclass)",
                             (f"jointembed.{coll.info.items_table}",)).fetchone()[0]
        index = conn.execute("SELECT pg_relation_size(%s::regclass)",
                             (f"jointembed.{coll.index_name('image')}",)).fetchone()[0]
    return table, index


def _latency_ms(coll, queries: np.ndarray, **options) -> tuple[list[float], list[list[int]]]:
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        hits = coll.search_vector(q, target="image", k=K, **options)
        times.append((time.perf_counter() - t) * 1000)
        ids.append([h.id for h in hits])
    return times, ids


def _drop_index(coll) -> None:
    from psycopg import sql

    with coll.store.transaction() as conn:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier("jointembed", coll.index_name("image"))))


def _probe(coll, base: np.ndarray, queries: np.ndarray, loaded: int, n: int, rng: np.random.Generator) -> dict:
    """Bulk-fill ``loaded..n`` without the index, build it, query, then time one indexed upsert batch."""
    _drop_index(coll)
    bulk_s = _fill(coll, base, loaded, n, rng)
    t = time.perf_counter()
    coll.ensure_index(modalities=["image"], maintenance_work_mem=MAINTENANCE_WORK_MEM)
    build_s = time.perf_counter() - t
    table, index = _sizes(coll)
    hnsw_ms, hnsw_ids = _latency_ms(coll, queries[:HNSW_QUERIES])
    exact_ms, exact_ids = _latency_ms(coll, queries[:EXACT_QUERIES], exact=True)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(hnsw_ids, exact_ids)])
    indexed_s = _fill(coll, base, n, n + UPSERT_BATCH, rng)
    return {"n": n, "bulk_rows_per_s": round((n - loaded) / bulk_s), "build_s": round(build_s, 1),
            "indexed_rows_per_s": round(UPSERT_BATCH / indexed_s),
            "table_mb": round(table / 2**20, 1), "index_mb": round(index / 2**20, 1),
            "hnsw_p50_ms": round(float(np.percentile(hnsw_ms, 50)), 2),
            "hnsw_p95_ms": round(float(np.percentile(hnsw_ms, 95)), 2),
            "exact_p50_ms": round(float(np.percentile(exact_ms, 50)), 1), "recall_at_10": round(float(recall), 3)}


def ceilings(dsn: str, bundle_dir: Path, images: list[Path], sizes: list[int]) -> list[dict]:
    """Grow one collection through ``sizes`` and probe it at each (see the module docstring)."""
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.search.store import Store

    rng = np.random.default_rng(0)
    bundle = Bundle.load(bundle_dir)
    base = bundle.encode_images([str(p) for p in images])
    queries = _synthetic(base, HNSW_QUERIES, 7, rng)
    out, loaded = [], 0
    with Store(dsn) as store:
        coll = store.collection("ceilings", model_id=bundle.model_id, dim=bundle.dim, create=True)
        for n in sorted(sizes):
            out.append(_probe(coll, base, queries, loaded, n, rng))
            loaded = n + UPSERT_BATCH
            print(json.dumps(out[-1]), flush=True)
    return out


# -- report ----------------------------------------------------------------------------------
def _reading(result: dict) -> str:
    """What part 1 says, computed from its numbers."""
    r = {row["id"]: row["per_s"] for row in result["rows"]}
    return (f"Reading it: on these 2 shared cores the Ray job ran images at **{r['img_ray'] / r['img']:.2f}x** "
            f"and captions at **{r['txt_ray'] / r['txt']:.2f}x** the single process's rate (CLI settings). "
            f"The single process with onnxruntime on 1 thread ran images at {r['img1'] / r['img']:.2f}x and "
            f"captions at {r['txt1'] / r['txt']:.2f}x: on these oversubscribed cores, much of any gain comes from "
            "single-threaded encoders (no contention between onnxruntime's threads and other jobs), not from "
            "distribution. "
            "Ray adds a cluster start, an object store, one bundle load and one connection per worker; its point "
            "is many machines, where throughput grows with workers until PostgreSQL's write rate (part 2, "
            "docs/SCALING.md) is the limit.")


def render(result: dict, probe: list[dict], facts: dict) -> str:
    """The markdown report."""
    lines = ["# Distributed ingest (Ray Data, local workers) vs the single process", "",
             "Generated by `python -m benchmarks.distributed` (do not edit by hand). Same inputs, same run, "
             "same fresh embedded PostgreSQL + pgvector (jointembed's embedded server, default settings); "
             "throughput = items written / job seconds.", "",
             "| run | items | seconds | items/s | failed | note |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['run']} | {r['items']} | {r['seconds']} | {r['per_s']} | {r['failed']} | {r['note']} |"
              for r in result["rows"]]
    load = ", ".join("/".join(f"{x:.1f}" for x in la) if la else "n/a" for la in result["load"])
    lines += ["", f"- Ray local cluster start (`ray.init`, timed apart, paid once per cluster): "
              f"**{result['ray_startup_s']} s**; add it for a one-off job on a fresh cluster.",
              f"- Stored rows identical to the single process (keys, content hashes, embeddings): "
              f"images **{result['identical']['images']}**, captions **{result['identical']['captions']}**.",
              f"- Machine: {facts['cpu']}, {facts['cores']} usable cores, {facts['ram_gib']} GiB RAM; load "
              f"average (1/5/15 min) before / after the single-process runs / after the Ray runs: {load}. "
              "The cores were shared with other jobs, so rates move by tens of percent between runs.",
              "", _reading(result), ""]
    if probe:
        lines += ["## Single-node ceilings probe (one PostgreSQL, same machine)", "",
                  f"Synthetic unit vectors (D = {facts.get('dim', '?')}; real image embeddings + noise of norm "
                  f"{NOISE_NORM}) written through `Collection.upsert`, {UPSERT_BATCH} rows per transaction, "
                  "with the index dropped (bulk), then one batch more with it in place (incremental); "
                  f"HNSW m=16, ef_construction=64, maintenance_work_mem={MAINTENANCE_WORK_MEM}; queries "
                  f"k={K}, default ef_search (40), {HNSW_QUERIES} HNSW / {EXACT_QUERIES} exact per size, "
                  f"sequential, one connection; recall@10 over the {EXACT_QUERIES} exact queries only (noisy, "
                  "about ±0.05).", "",
                  "| N | upsert rows/s, no index | HNSW build s | upsert rows/s, HNSW present | table MiB | "
                  "index MiB | HNSW p50 ms | HNSW p95 ms | exact p50 ms | recall@10 |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['n']:,} | {p['bulk_rows_per_s']:,} | {p['build_s']} | {p['indexed_rows_per_s']:,} "
                  f"| {p['table_mb']} | {p['index_mb']} "
                  f"| {p['hnsw_p50_ms']} | {p['hnsw_p95_ms']} | {p['exact_p50_ms']} | {p['recall_at_10']} |"
                  for p in probe]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--captions", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ceilings", default="", help="comma-separated sizes for part 2 (empty: skip it)")
    p.add_argument("--bundle", type=Path, default=REPO / ".jointembed" / "test-bundle")
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from jointembed_pg.server.embedded import EmbeddedServer

    sizes = [int(s) for s in args.ceilings.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="je_bench_dist_") as tmp:
        if os.geteuid() == 0:
            os.chmod(tmp, 0o711)  # our own temp dir: the server's OS user must traverse it
        srv = EmbeddedServer(Path(tmp) / "pgdata")
        uri = srv.start(hold=True)
        try:
            images, captions = _inputs(args.data_dir, args.images, args.captions, Path(tmp))
            result = measure(uri, args.bundle.resolve(), images, captions, args.workers)
            print(json.dumps(result), flush=True)
            probe = ceilings(uri, args.bundle.resolve(), images[:500], sizes) if sizes else []
        finally:
            srv.stop()
    facts = {"cpu": machine.cpu_model(), "cores": machine.usable_cores(), "ram_gib": round(machine.ram_gib(), 1),
             "dim": json.loads((args.bundle / "manifest.json").read_text())["dim"]}
    args.out.write_text(render(result, probe, facts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
