"""Database faults: PostgreSQL stopped and restarted mid-run (on a dedicated pgserver
cluster, never the session's), and index creation cancelled or cut off.

* the long-running worker reconnects with bounded, growing backoff and finishes;
* one-shot commands (``index``, ``sync``) fail with one clear line and exit 1, and a
  rerun completes with every item stored once;
* a statement timeout or a lost connection during ``CREATE INDEX`` leaves the table
  with its previous index (valid, used by searches) and no INVALID index.
"""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from test_reliability_support import (cli, cli_env, cli_popen, flickr_images, link_dir, new_database,
                                      one_line_error, scenario, stored_items, wait_for)
from test_sync_support import flickr_rows, make_photos

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

OUTAGE_S = 4.0
#: Put into the DSNs (trust auth ignores it) to prove that no output ever shows it.
SECRET = "Sekr3t-in-dsn"


def _with_password(dsn: str) -> str:
    return dsn.replace("postgres:@", f"postgres:{SECRET}@")


def _attach_photos(dsn: str, bundle_dir, flickr8k_dir, n: int) -> sql.Identifier:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_photos(conn, flickr_rows(str(flickr8k_dir), n))
    p = cli(["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
             "image_path", "--image-root", flickr8k_dir / "images", "--dsn", dsn, "--bundle", bundle_dir])
    assert p.returncode == 0, p.stderr
    with psycopg.connect(dsn) as c:
        aid = c.execute("SELECT id FROM jointembed.attachments").fetchone()[0]
    return aid


def _count(dsn: str, ident: sql.Composable) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as c:
            return c.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0]
    except psycopg.Error:
        return -1


def _stale_claims(dsn: str, aid: int) -> int:
    """Claims whose lease still runs but whose session is gone (claimable at once: not waited for)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(sql.SQL("SELECT count(*) FROM {} q WHERE q.lease_until > now() AND NOT coalesce("
                                 "((q.claim_pid::bigint << 32) | q.claim_lock) = ANY (jointembed._sync_live_claims()), "
                                 "false)").format(sql.Identifier("jointembed", f"a{aid}_queue"))).fetchone()[0]


def _outage(server, seconds: float = OUTAGE_S) -> None:
    server.stop()
    time.sleep(seconds)
    server.start()


@scenario("PostgreSQL stopped for 4 s and restarted while `jointembed worker` runs",
          "worker logs db_error with bounded, growing retry delays (<= 60 s), reconnects and embeds every "
          "row once; no traceback, no password in its log", "database faults")
def test_worker_reconnects_after_restart(own_server, bundle_dir, flickr8k_dir, tmp_path, observe):
    dsn = new_database(own_server.admin_dsn)
    n = 60
    aid = _attach_photos(dsn, bundle_dir, flickr8k_dir, n)
    side = sql.Identifier("jointembed", f"a{aid}_v1")
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        proc = cli_popen(["worker", "--table", "photos", "--dsn", _with_password(dsn), "--bundle", bundle_dir, "--poll", "1",
                          "--batch-size", "8"], stderr=err, stdout=err)
        try:
            assert wait_for(lambda: _count(dsn, side) >= 16, 120), log.read_text()
            _outage(own_server)
            done_before = _count(dsn, side)
            # rows the worker had claimed when the server went away: their session is gone,
            # so they are claimable at once (no waiting for the 10-minute lease)
            expired = _stale_claims(dsn, aid)
            assert wait_for(lambda: _count(dsn, side) == 2 * n, 60), log.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = log.read_text()
    events = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and "Traceback" not in text and SECRET not in text, text[-3000:]
    delays = [e["retry_in_s"] for e in events if e["event"] == "db_error"]
    assert delays and all(d <= 60 for d in delays) and delays == sorted(delays), delays
    assert [e["event"] for e in events].count("start") >= 2           # reconnected
    with psycopg.connect(dsn) as c:
        dup = c.execute(sql.SQL("SELECT count(*) - count(DISTINCT (key, modality)) FROM {}").format(side)).fetchone()[0]
    assert dup == 0
    observe(f"{len(delays)} db_error events, retry delays {delays} s; {done_before} of {2 * n} done at restart; "
            f"{expired} rows claimed at the crash were free at once (session gone, lease not waited for); then all "
            f"{2 * n} embedded once; exit 0 on SIGTERM")


def _claimed(dsn: str, aid: int) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as c:
            return c.execute(sql.SQL("SELECT count(*) FROM {} WHERE lease_until > now()").format(
                sql.Identifier("jointembed", f"a{aid}_queue"))).fetchone()[0]
    except psycopg.Error:
        return 0


@scenario("PostgreSQL stopped during one-shot `index images` and `sync`; also down at start",
          "each exits 1 with one line (no traceback, the DSN's password masked); after restart a rerun "
          "completes: every item stored exactly once", "database faults")
def test_one_shot_commands_fail_cleanly_and_rerun_completes(own_server, bundle_dir, flickr8k_dir, tmp_path,
                                                            observe):
    dsn = new_database(own_server.admin_dsn)
    n_rows = 400  # both commands must still be running when the server stops (60 rows synced in 1.8 s)
    aid = _attach_photos(dsn, bundle_dir, flickr8k_dir, n_rows)
    side = sql.Identifier("jointembed", f"a{aid}_v1")
    files = flickr_images(flickr8k_dir, 300, start=1000)
    corpus = link_dir(tmp_path / "corpus", files)
    index_cmd = ["index", "images", corpus, "--dsn", _with_password(dsn), "--bundle", bundle_dir, "--no-progress", "--json"]
    sync_cmd = ["sync", "--table", "photos", "--dsn", _with_password(dsn), "--bundle", bundle_dir, "--batch-size", "8",
                "--no-progress", "--json"]
    procs = [cli_popen(index_cmd), cli_popen(sync_cmd)]
    assert wait_for(lambda: _items(dsn) >= 32 and _count(dsn, side) >= 8, 120)
    own_server.stop()
    try:
        lines = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            lines.append(one_line_error(_Done(p.returncode, out, err)))
            assert SECRET not in out + err
        p = cli(index_cmd)
        down = one_line_error(p)
        assert SECRET not in p.stdout + p.stderr and "***" in down
    finally:  # a failure here must not leave the shared own_server down for later modules
        if not own_server.is_up():
            own_server.start()
    expired = _stale_claims(dsn, aid)
    p1, p2 = cli(index_cmd), cli(sync_cmd)
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr[-2000:], p2.stderr[-2000:])
    rows = stored_items(dsn)
    assert len(rows) == len({k for k, *_ in rows}) == len(files)
    with psycopg.connect(dsn) as c:
        n_side, n_keys = c.execute(sql.SQL("SELECT count(*), count(DISTINCT (key, modality)) FROM {}")
                                   .format(side)).fetchone()
    assert n_side == n_keys == 2 * n_rows
    observe(f"index: exit 1 '{lines[0][:120]}'; sync: exit 1 '{lines[1][:120]}'; server down at start: "
            f"'{down[:100]}'; rerun after restart ({expired} claims of the dead session, free at once): both exit 0, "
            f"{len(rows)} images and {n_side} row embeddings, each once")


def _items(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as c:
            row = c.execute("SELECT items_table FROM jointembed.collections").fetchone()
            return -1 if row is None else c.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("jointembed", row[0]))).fetchone()[0]
    except psycopg.Error:
        return -1


class _Done:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


# -- index creation cut off ----------------------------------------------------------------

def _indexes(dsn: str) -> list[tuple[str, bool]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                         "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'jointembed' "
                         "AND c.relname LIKE '%%hnsw' ORDER BY 1").fetchall()


def _image_ok_text_unusable(dsn: str, table: str, image_index: str, dim: int) -> bool:
    """The image index is valid and planned; the text index is absent or INVALID (never used)."""
    text_index = image_index.replace("_image_", "_text_")
    idx = _indexes(dsn)
    assert idx in ([(image_index, True)], [(image_index, True), (text_index, False)]), idx
    return _plan_uses_index(dsn, table, image_index, dim)


def _plan_uses_index(dsn: str, table: str, index: str, dim: int) -> bool:
    with psycopg.connect(dsn) as c:
        c.execute("SET enable_seqscan = off")   # 1,500 rows: show the index is usable, not the cheapest
        c.execute("SET enable_bitmapscan = off")
        plan = c.execute(sql.SQL("EXPLAIN SELECT id FROM {} WHERE modality = 'image' "
                                 "ORDER BY embedding <-> %s::vector LIMIT 5").format(sql.Identifier("jointembed", table)),
                         [str([0.1] * dim)]).fetchall()
    return any(index in row[0] for row in plan)


@scenario("Statement timeout, then a terminated connection, while `index texts` builds the text HNSW index",
          "exit 1 with one line each time (saying when an INVALID index is left); the image index stays "
          "present, valid and used; the text index is absent or INVALID (never used); a rerun repairs it",
          "database faults")
def test_index_creation_cut_off_keeps_previous_index(pg_dsn, pg_admin_dsn, bundle, bundle_dir, flickr8k_dir,
                                                     tmp_path, observe):
    from jointembed_pg.search.store import Store

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((1500, bundle.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with Store(pg_dsn) as store:
        coll = store.collection("default", model_id=bundle.model_id, dim=bundle.dim, create=True)
        coll.upsert([("image", f"img{i}", None, None, f"h{i}", e) for i, e in enumerate(emb)])
        coll.ensure_index(modalities=["image"])
        table, image_index = coll.info.items_table, coll.index_name("image")
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("jointembed", table)))
    assert _indexes(pg_dsn) == [(image_index, True)] and _plan_uses_index(pg_dsn, table, image_index, bundle.dim)
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"id": f"c{i}", "text": f"a dog number {i} runs"}) for i in range(40)))
    cmd = ["index", "texts", caps, "--dsn", pg_dsn, "--bundle", bundle_dir, "--no-progress"]
    blocker = psycopg.connect(pg_dsn)
    blocker.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.Identifier("jointembed", table)))
    try:
        timeout_line = one_line_error(cli(cmd, env=cli_env(PGOPTIONS="-c statement_timeout=4000")))
        assert "statement timeout" in timeout_line, timeout_line
        assert _image_ok_text_unusable(pg_dsn, table, image_index, bundle.dim)
        proc = cli_popen(cmd)
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            def waiting_pid():
                row = admin.execute("SELECT pid FROM pg_stat_activity WHERE query ~ '^(CREATE|DROP) INDEX' "
                                    "AND query LIKE '%%text_hnsw%%' "
                                    "AND wait_event_type = 'Lock'").fetchone()
                return row[0] if row else None
            assert wait_for(lambda: waiting_pid() is not None, 60)
            admin.execute("SELECT pg_terminate_backend(%s)", [waiting_pid()])
        out, err = proc.communicate(timeout=60)
        lost_line = one_line_error(_Done(proc.returncode, out, err))
        assert "INVALID index" in lost_line, lost_line   # the killed build could not clean up
        assert _image_ok_text_unusable(pg_dsn, table, image_index, bundle.dim)
    finally:
        blocker.close()
    p = cli(cmd)
    assert p.returncode == 0, p.stderr
    idx = _indexes(pg_dsn)
    assert idx == sorted([(image_index, True), (image_index.replace("_image_", "_text_"), True)]), idx
    observe(f"statement timeout: exit 1 '{timeout_line[:110]}'; terminated: exit 1 '{lost_line[:110]}'; "
            f"image index valid and in the plan after each; rerun: exit 0, indexes {[n for n, _ in idx]}")
