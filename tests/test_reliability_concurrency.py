"""Concurrency: 4 ``jointembed worker`` processes on one attached table and 2 concurrent
``jointembed index images`` runs on overlapping inputs, all at once on one fresh database
(so migrations, collection creation and index creation race too).

Each row is embedded exactly once, each image stored once, and no deadlock (or any other
error) reaches the user.
"""
from __future__ import annotations

import json
import random

import numpy as np
import psycopg
import pytest
from psycopg import sql

from test_reliability_support import cli, cli_popen, flickr_images, link_dir, scenario, stored_items
from test_sync_support import flickr_rows, make_photos, side_rows

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

N_ROWS = 80
N_WORKERS = 4
N_IMAGES, OVERLAP = 160, 80


@scenario(f"{N_WORKERS} workers on one attached table ({N_ROWS} rows x image + text) and 2 concurrent "
          f"`index images` runs over overlapping inputs ({N_IMAGES} each, {OVERLAP} shared), "
          "all started together on a fresh database",
          "all exit 0; every row embedded exactly once (sum of workers' writes = rows x modalities); every "
          "image stored once; no deadlock or other error surfaces", "concurrency")
def test_workers_and_index_runs_concurrently(pg_dsn, bundle, bundle_dir, flickr8k_dir, tmp_path, observe):
    rows = flickr_rows(str(flickr8k_dir), N_ROWS)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        make_photos(conn, rows)
    root = flickr8k_dir / "images"
    p = cli(["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
             "image_path", "--image-root", root, "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert p.returncode == 0, p.stderr
    files = flickr_images(flickr8k_dir, 2 * N_IMAGES - OVERLAP, start=3000)
    a = link_dir(tmp_path / "a", files[:N_IMAGES])
    b = link_dir(tmp_path / "b", files[N_IMAGES - OVERLAP:])
    common = ["--dsn", pg_dsn, "--bundle", bundle_dir]
    procs = [cli_popen(["worker", "--table", "photos", "--until-idle", "--batch-size", "4", *common])
             for _ in range(N_WORKERS)]
    procs += [cli_popen(["index", "images", d, "--no-progress", "--json", "--batch-size", "16", *common])
              for d in (a, b)]
    results = [(p.args[3], *p.communicate(timeout=400), p.returncode) for p in procs]
    for cmd, out, err, rc in results:
        assert rc == 0 and "Traceback" not in err and "deadlock" not in (out + err).lower(), (cmd, rc, err[-3000:])
    worker_logs = [[json.loads(x) for x in err.splitlines() if x.startswith("{")] for cmd, _o, err, _r in results
                   if cmd == "worker"]
    writes = [sum(e.get("written", 0) for e in log if e["event"] == "batch") for log in worker_logs]
    assert not any(e["level"] == "error" for log in worker_logs for e in log)
    assert sum(writes) == 2 * N_ROWS, writes
    from jointembed_pg import db

    with db.connect(pg_dsn) as conn:
        aid = conn.execute("SELECT id FROM jointembed.attachments").fetchone()[0]
        stored = side_rows(conn, aid)
        left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("jointembed", f"a{aid}_queue"))).fetchone()[0]
    assert len(stored) == 2 * N_ROWS and left == 0
    items = stored_items(pg_dsn)
    assert len(items) == len({k for k, *_ in items}) == len(files)
    reports = [json.loads(out) for cmd, out, _e, _r in results if cmd == "index"]
    sample = random.Random(5).sample(items, 30)
    fresh = bundle.encode_images([k for k, *_ in sample])
    worst = max(float(np.linalg.norm(e - f)) for (_k, _h, _m, e), f in zip(sample, fresh))
    assert worst < 1e-3
    observe(f"6 processes exit 0; workers wrote {writes} (sum {sum(writes)} = 2 x {N_ROWS}), queue empty; "
            f"index runs wrote {[r['written'] for r in reports]}, unchanged {[r['unchanged'] for r in reports]}; "
            f"{len(items)} images stored once each; max L2 vs clean encode {worst:.1e}; no deadlock/error")


@scenario("Two `ensure_index` calls racing on the same new HNSW index (5 rounds, barrier-synchronised)",
          "both return; exactly one valid index; no UniqueViolation / DuplicateTable surfaces", "concurrency")
def test_concurrent_ensure_index(pg_dsn, observe):
    import threading

    from jointembed_pg.search.store import Store

    dim = 64
    vecs = np.random.default_rng(1).standard_normal((1500, dim)).astype(np.float32)
    stores = [Store(pg_dsn), Store(pg_dsn)]
    try:
        colls = [s.collection("race", model_id="m-race", dim=dim, create=True) for s in stores]
        colls[0].upsert([("image", f"k{i}", None, None, "h", v) for i, v in enumerate(vecs)])
        made, errors = [], []
        for _round in range(5):
            barrier = threading.Barrier(2)

            def run(c):
                barrier.wait()
                try:
                    made.extend(c.ensure_index(modalities=["image"]))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(c,)) for c in colls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            with psycopg.connect(pg_dsn, autocommit=True) as c:
                idx = c.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c "
                                "ON c.oid = i.indexrelid WHERE c.relname LIKE '%%_image_hnsw'").fetchall()
                assert len(idx) == 1 and idx[0][1], idx
                c.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("jointembed", idx[0][0])))
        assert errors == [], errors
    finally:
        for s in stores:
            s.close()
    observe(f"5 rounds: indexes created {len(made)} times in total (the loser of a race skips), 0 errors")
