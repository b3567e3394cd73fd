"""Crash safety: ``jointembed index images`` over 2,000 real Flickr8K images, and
``jointembed sync`` / ``worker`` on an attached table, are SIGKILLed at random points
(seeded), then rerun: the end state has every item embedded exactly once, with the same
embedding a clean run gives (the bundle's own encode of that file) and the right content
hash.

Kill points are drawn per run as progress targets (a random fraction of the remaining
items, plus a random delay), so they spread over the whole run on a slow or a fast
machine; one kill lands in start-up (before the first write) and one after the last
write (while the HNSW index is built).
"""
from __future__ import annotations

import hashlib
import json
import random
import signal
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from test_reliability_support import (cli, cli_popen, flickr_images, items_table, link_dir, scenario, wait_for,
                                      stored_items)
from test_sync_support import flickr_rows, make_photos, side_rows

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

SEED = 20261129
N_IMAGES = 2000
KILLS = 10
#: Items whose stored embedding is compared with an in-process encode (seeded sample).
CHECK_SAMPLE = 400
SAME = 1e-3


def _count(dsn: str, ident_sql: sql.Composable, where: str = "") -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as c:
            return c.execute(sql.SQL("SELECT count(*) FROM {}").format(ident_sql)).fetchone()[0]
    except psycopg.Error:
        return 0


def _kill_at(proc, progress, target: int, delay: float, timeout: float = 120) -> str:
    """SIGKILL ``proc`` once ``progress() >= target`` plus ``delay`` s; returns what happened."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if progress() >= target:
            time.sleep(delay)
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        return f"finished (rc {proc.returncode}) before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return f"killed at {progress()} items"


def _check_embeddings(bundle, rows, sample: int, seed: int) -> float:
    """Largest L2 difference between stored and freshly encoded embeddings of a sample."""
    rng = random.Random(seed)
    picked = rng.sample(rows, min(sample, len(rows)))
    fresh = bundle.encode_images([k for k, *_ in picked])
    return max(float(np.linalg.norm(e - f)) for (_k, _h, _m, e), f in zip(picked, fresh))


@scenario(f"SIGKILL `jointembed index images` {KILLS} times at random points of a run over "
          f"{N_IMAGES} real Flickr8K images, then rerun",
          "rerun exits 0; every image stored exactly once, content hash = sha256 of the file, embedding = "
          "a clean encode; HNSW index present and valid", "crash safety")
def test_index_images_survives_sigkill(tmp_path, pg_dsn, bundle, bundle_dir, flickr8k_dir, observe):
    rng = random.Random(SEED)
    files = flickr_images(flickr8k_dir, N_IMAGES)
    corpus = link_dir(tmp_path / "corpus", files)
    cmd = ["index", "images", corpus, "--dsn", pg_dsn, "--bundle", bundle_dir, "--no-progress", "--json"]
    table = None

    def progress() -> int:
        nonlocal table
        if table is None:
            try:
                with psycopg.connect(pg_dsn) as c:
                    table = items_table(c, "default")
            except (AssertionError, psycopg.Error):
                return 0
        return _count(pg_dsn, table)

    outcomes = []
    for k in range(KILLS):
        proc = cli_popen(cmd, stdout=None, stderr=None)
        done = progress()
        if k == 0:      # during start-up: bundle load, migrations, collection creation
            time.sleep(rng.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            outcomes.append(f"killed in start-up at {progress()}")
        elif k == KILLS - 1:    # after the last write: during ensure_index
            outcomes.append(_kill_at(proc, progress, N_IMAGES, rng.uniform(0.0, 0.5)))
        else:
            target = done + int(rng.uniform(0.05, 0.35) * (N_IMAGES - done))
            outcomes.append(_kill_at(proc, progress, target, rng.uniform(0.0, 0.3)))
    p = cli(cmd)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert rep["total"] == N_IMAGES and rep["failed"] == [] and rep["written"] + rep["unchanged"] == N_IMAGES
    rows = stored_items(pg_dsn)
    keys = [k for k, *_ in rows]
    assert len(rows) == N_IMAGES and len(set(keys)) == N_IMAGES and set(keys) == {str(f) for f in files}
    for key, h, model_id, e in rows:
        assert model_id == bundle.model_id and e.shape == (bundle.dim,)
        assert h == hashlib.sha256(open(key, "rb").read()).hexdigest(), key
    worst = _check_embeddings(bundle, rows, CHECK_SAMPLE, SEED)
    assert worst < SAME
    with psycopg.connect(pg_dsn) as c:
        idx = c.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw'").fetchall()
    assert any(name.endswith("_image_hnsw") and valid for name, valid in idx) and all(v for _, v in idx), idx
    observe(f"kills: {'; '.join(outcomes)}. Rerun: exit 0, written {rep['written']}, unchanged {rep['unchanged']}; "
            f"{len(rows)} rows, {len(set(keys))} distinct keys; hashes all match; max L2 vs clean encode "
            f"({CHECK_SAMPLE} sampled) {worst:.1e}; HNSW valid")


N_ROWS = 150
SYNC_KILLS = 6


@scenario(f"SIGKILL `jointembed sync` and `jointembed worker` {SYNC_KILLS} times on an attached table "
          f"({N_ROWS} rows, image + text), then rerun",
          "the killed claims are free as soon as its session ends (no lease wait); a rerun completes; every (row, modality) embedded exactly "
          "once, equal to a clean encode; queue empty", "crash safety")
def test_sync_and_worker_survive_sigkill(pg_dsn, bundle, bundle_dir, flickr8k_dir, observe):
    rng = random.Random(SEED + 1)
    rows = flickr_rows(str(flickr8k_dir), N_ROWS)
    root = flickr8k_dir / "images"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        make_photos(conn, rows)
    args = ["--table", "photos", "--dsn", pg_dsn, "--bundle", bundle_dir, "--batch-size", "8"]
    p = cli(["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
             "image_path", "--image-root", root, "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert p.returncode == 0, p.stderr
    with psycopg.connect(pg_dsn) as c:
        aid = c.execute("SELECT id FROM jointembed.attachments").fetchone()[0]
    side, queue = sql.Identifier("jointembed", f"a{aid}_v1"), sql.Identifier("jointembed", f"a{aid}_queue")

    def progress() -> int:
        return _count(pg_dsn, side)

    outcomes, expired, released = [], 0, 0.0
    for k in range(SYNC_KILLS):
        cmd = ["sync", *args, "--no-progress"] if k % 2 == 0 else ["worker", *args, "--until-idle"]
        proc = cli_popen(cmd, stdout=None, stderr=None)
        done = progress()
        target = done + int(rng.uniform(0.05, 0.4) * (2 * N_ROWS - done))
        outcomes.append(f"{cmd[0]} " + _kill_at(proc, progress, target, rng.uniform(0.0, 0.3)))
        # the killed process's claims are free as soon as its session ends (not after the
        # 10-minute lease): count them, wait for the server to notice the closed socket
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            expired += c.execute(sql.SQL("SELECT count(*) FROM {} WHERE lease_until > now()").format(queue)
                                 ).fetchone()[0]
            t_kill = time.monotonic()
            assert wait_for(lambda: c.execute("SELECT jointembed.sync_status(%s, 0, 0)->>'claimed'", [aid]
                                              ).fetchone()[0] == "0", 10)
            released = max(released, time.monotonic() - t_kill)
    p = cli(["sync", *args, "--no-progress", "--json"])
    assert p.returncode == 0, p.stderr[-3000:]
    from jointembed_pg import db

    with db.connect(pg_dsn) as conn:     # pgvector types registered
        stored = side_rows(conn, aid)
        left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(queue)).fetchone()[0]
        n_side = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(side)).fetchone()[0]
    assert left == 0 and n_side == len(stored) == 2 * N_ROWS
    assert set(stored) == {(str(i), m) for i, _c, _p in rows for m in ("image", "text")}
    sample = random.Random(SEED).sample(rows, 40)
    img = bundle.encode_images([root / name for _i, _c, name in sample])
    txt = bundle.encode_texts([cap for _i, cap, _n in sample])
    worst = max(max(float(np.linalg.norm(stored[(str(i), "image")][2] - a)),
                    float(np.linalg.norm(stored[(str(i), "text")][2] - b)))
                for (i, _c, _n), a, b in zip(sample, img, txt))
    assert worst < SAME
    observe(f"{'; '.join(outcomes)}; {expired} claimed queue rows were free {released:.2f} s after the kill "
            "at most (lease not waited for). Rerun: exit 0, "
            f"{n_side} embeddings = 2 x {N_ROWS} rows, queue empty, max L2 vs clean encode (40 rows) {worst:.1e}")
