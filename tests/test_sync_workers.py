"""Sync workers and model switches on a real PostgreSQL with real Flickr8K rows and the
real bundle: parallel workers embed each row once, the worker process wakes on NOTIFY
and stops on SIGTERM with JSON logs, reembed to another dimension keeps search answering.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jointembed_pg import db
from jointembed_pg.sync import catalog as sync
from jointembed_pg.errors import ModelMismatchError
from jointembed_pg.sync.worker import JsonLog, Worker
from jointembed_pg.sync.reembed import reembed
from jointembed_pg.sync.drain import SyncConfig, sync_table
from test_sync_support import Counting, LogLines, Projected, flickr_rows, make_photos, queue, side_rows

pytestmark = pytest.mark.flickr8k
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def conn(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as c:
        yield c


def test_three_parallel_workers_embed_each_of_500_rows_once(conn, pg_dsn, bundle, flickr8k_dir):
    n = 500
    rows = flickr_rows(str(flickr8k_dir), n)
    make_photos(conn, rows)
    att = sync.attach(conn, "photos", bundle, key="id", image_column="image_path", text_column="caption",
                      image_root=str(flickr8k_dir / "images"))
    assert len(queue(conn, att.id)) == 2 * n
    counting = Counting(bundle)
    logs = LogLines()
    workers = [Worker(pg_dsn, counting, tables=[("photos", None)], cfg=SyncConfig(batch_size=16, load_threads=1),
                      log=JsonLog(logs, worker=f"w{i}"), name=f"w{i}") for i in range(3)]
    errors = []

    def run(w):
        try:
            w.run(until_idle=True, handle_signals=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors and not any(t.is_alive() for t in threads)
    assert counting.images == n                                   # every image encoded exactly once
    assert sum(counting.texts.values()) == n and set(counting.texts.values()) == {1}
    assert len(side_rows(conn, att.id)) == 2 * n and queue(conn, att.id) == []
    per_worker = [w.totals["written"] for w in workers]
    assert sum(per_worker) == 2 * n and min(per_worker) > 0        # all three took part
    events = [json.loads(line) for line in logs.lines]
    assert {e["event"] for e in events} >= {"start", "batch", "stop"}
    assert all({"ts", "level", "event", "worker"} <= set(e) for e in events)


def test_worker_process_wakes_on_notify_and_stops_on_sigterm(conn, pg_dsn, bundle_dir, flickr8k_dir):
    rows = flickr_rows(str(flickr8k_dir), 3)
    make_photos(conn, rows[:1])
    sync.attach(conn, "photos", _BundleInfo(bundle_dir), key="id", text_column="caption",
                image_column="image_path", image_root=str(flickr8k_dir / "images"))
    secret = "s3cr3t-pw"
    dsn = pg_dsn.replace("postgres:@", f"postgres:{secret}@")
    code = "from jointembed_pg.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "worker", "--table", "photos", "--dsn", dsn,
                             "--bundle", str(bundle_dir), "--poll", "60"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: sync.status(conn, "photos")[0]["done"] == 2, 60), "backfill not embedded"
        # only NOTIFY can wake it now (poll is 60 s)
        conn.execute("INSERT INTO photos (id, caption, image_path) VALUES (%s, %s, %s)", rows[1])
        assert _wait_for(lambda: sync.status(conn, "photos")[0]["done"] == 4, 15), "NOTIFY did not wake it"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "stop"
    assert sum(e.get("written", 0) for e in events if e["event"] == "batch") == 4
    assert secret not in out + err


def test_reembed_to_another_dimension_keeps_search_answering(conn, pg_dsn, bundle, flickr8k_dir):
    rows = flickr_rows(str(flickr8k_dir), 30)
    make_photos(conn, rows)
    att = sync.attach(conn, "photos", bundle, key="id", image_column="image_path", text_column="caption",
                      image_root=str(flickr8k_dir / "images"))
    sync_table(conn, "photos", bundle)
    new = Projected(bundle, 48, "projected-48")
    bundles = {bundle.model_id: bundle, new.model_id: new}
    probe = rows[6][1]
    queries = {mid: b.encode_texts([probe])[0] for mid, b in bundles.items()}
    answers, failures, stop = [], [], threading.Event()

    def searcher():
        with db.connect(pg_dsn, autocommit=True) as c:
            while not stop.is_set():
                model = sync.find(c, "photos").model_id
                try:
                    hits = sync.search_attached(c, "photos", queries[model], k=3, target="text", model_id=model)
                    answers.append((model, hits[0][0], len(hits)))
                except ModelMismatchError:
                    continue  # switched between reading the model and searching: ask again
                except Exception as e:  # noqa: BLE001
                    failures.append(e)
                    return

    t = threading.Thread(target=searcher)
    t.start()
    try:
        time.sleep(0.2)
        rep = reembed(conn, "photos", new, switch=False)           # build beside the old one
        assert not rep.switched and sync.find(conn, "photos").model_id == bundle.model_id
        conn.execute("UPDATE photos SET caption = 'a red bicycle' WHERE id = 2")  # reaches both versions
        assert sync_table(conn, "photos", bundle).written == 1     # old model's worker keeps up
        rep = reembed(conn, "photos", new)                         # resume, switch
        assert rep.switched
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not failures, failures
    models = [m for m, _, _ in answers]
    assert models[0] == bundle.model_id and models[-1] == new.model_id
    assert models == sorted(models, key=lambda m: m == new.model_id)  # one switch, never back
    assert all(key == 7 and k == 3 for _, key, k in answers)

    now = sync.find(conn, "photos")
    assert (now.model_id, now.dim, now.active_version) == (new.model_id, 48, 2)
    stored = side_rows(conn, att.id, version=2)
    assert len(stored) == 60 and {mid for _, mid, _ in stored.values()} == {new.model_id}
    assert np.allclose(stored[("2", "text")][2], new.encode_texts(["a red bicycle"])[0], atol=1e-5)
    gone = conn.execute("SELECT to_regclass(%s)", [f"jointembed.a{att.id}_v1"]).fetchone()[0]
    assert gone is None
    with pytest.raises(ModelMismatchError):
        sync_table(conn, "photos", bundle)                         # the old model is refused now
    with pytest.raises(ModelMismatchError):
        Worker(pg_dsn, bundle, tables=[("photos", None)], log=JsonLog(LogLines())).run(
            until_idle=True, handle_signals=False)
    hits = conn.execute("SELECT key FROM jointembed.search_attached('photos', %s, 1, 'text')",
                        [queries[new.model_id]]).fetchall()
    assert hits == [("7",)]


class _BundleInfo:
    """model_id / dim of a bundle directory without loading its ONNX sessions."""

    def __init__(self, path):
        manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else None
        if manifest is None:
            from jointembed_pg.model.bundle import Bundle

            b = Bundle.load(path)
            self.model_id, self.dim = b.model_id, b.dim
        else:
            self.model_id, self.dim = manifest["model_id"], int(manifest["dim"])


def _wait_for(pred, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False
