"""The ``jointembed`` CLI as a user runs it: real subprocesses, real Postgres, real bundle."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


def run(args, *, env_extra=None, home=None, check_rc=None):
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    if home is not None:
        env["JOINTEMBED_HOME"] = str(home)
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


def assert_one_line_error(p, *needles):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_help_lists_commands():
    p = run(["--help"], check_rc=0)
    for cmd in ("index", "search", "eval", "demo", "model", "init"):
        assert cmd in p.stdout


def test_missing_data_dir_is_one_line_error(tmp_path, bundle_dir, pg_dsn):
    p = run(["eval", "--data-dir", tmp_path / "nope", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert_one_line_error(p, "does not exist", "--data-dir")


def test_empty_caption_file_is_one_line_error(tmp_path, bundle_dir, pg_dsn):
    (tmp_path / "caps.csv").write_text("")
    p = run(["index", "texts", tmp_path / "caps.csv", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert_one_line_error(p, "empty caption file")


def test_unreachable_dsn_is_one_line_error_without_password(tmp_path, bundle_dir):
    dsn = "postgresql://bob:s3cretpw@127.0.0.1:1/nodb?connect_timeout=2"
    p = run(["search", "text", "a dog", "--dsn", dsn, "--bundle", bundle_dir])
    assert_one_line_error(p)
    assert "s3cretpw" not in p.stderr + p.stdout


def test_index_continues_past_bad_files_and_reports_them(tmp_path, flickr8k_dir, bundle_dir, pg_dsn):
    imgs = sorted((flickr8k_dir / "images").glob("*.jpg"))[:6]
    for f in imgs:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "notes.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    p = run(["index", "images", tmp_path, "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"])
    assert p.returncode == 3, p.stderr
    rep = json.loads(p.stdout)
    assert rep["written"] == 6 and rep["total"] == 8
    failed = {os.path.basename(f["key"]): f["error"] for f in rep["failed"]}
    assert set(failed) == {"notes.jpg", "empty.png"}
    assert "not a readable image" in failed["notes.jpg"] and "empty file" in failed["empty.png"]
    # search finds the indexed images; json has id, distance and the stored path
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"id": "c1", "text": "a dog runs on the grass"}) + "\n")
    run(["index", "texts", caps, "--dsn", pg_dsn, "--bundle", bundle_dir], check_rc=0)
    p = run(["search", "text", "a dog", "-k", "3", "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"], check_rc=0)
    hits = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(hits) == 3 and all({"id", "distance", "source"} <= h.keys() for h in hits)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    p = run(["search", "image", imgs[0], "--target", "texts", "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"],
            check_rc=0)
    assert json.loads(p.stdout.splitlines()[0])["text"] == "a dog runs on the grass"
    html = tmp_path / "hits.html"
    run(["search", "text", "a dog", "--dsn", pg_dsn, "--bundle", bundle_dir, "--html", html], check_rc=0)
    assert html.read_text().count("<img") >= 3


def test_duplicate_caption_ids_are_reported_and_first_kept(tmp_path, bundle_dir, pg_dsn):
    caps = tmp_path / "caps.csv"
    caps.write_text("id,text\nd1,a dog on the grass\nd1,a cat on a sofa\n")
    p = run(["index", "texts", caps, "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"])
    rep = json.loads(p.stdout)
    assert p.returncode == 3 and rep["written"] == 1
    assert "duplicate id" in rep["failed"][0]["error"]
    p = run(["search", "text", "dog", "--target", "texts", "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"],
            check_rc=0)
    assert json.loads(p.stdout.splitlines()[0])["text"] == "a dog on the grass"


def test_bad_html_path_and_bad_collection_name_are_one_line_errors(tmp_path, bundle_dir, pg_dsn, flickr8k_dir):
    img = sorted((flickr8k_dir / "images").glob("*.jpg"))[0]
    run(["index", "images", img, "--dsn", pg_dsn, "--bundle", bundle_dir], check_rc=0)
    (tmp_path / "file").write_text("x")
    p = run(["search", "text", "a dog", "--dsn", pg_dsn, "--bundle", bundle_dir, "--html", tmp_path / "file" / "x.html"])
    assert_one_line_error(p)
    p = run(["search", "text", "a dog", "--collection", "", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert_one_line_error(p, "collection name")
    p = run(["index", "images", tmp_path / "missing.jpg", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert p.returncode == 1  # nothing written at all: an error, not a partial success


def test_sigterm_unwinds_with_a_message_and_rerun_resumes(tmp_path, flickr8k_dir, bundle_dir, pg_dsn):
    import signal
    import time

    imgs = sorted((flickr8k_dir / "images").glob("*.jpg"))[:1500]
    args = [sys.executable, "-m", "jointembed_pg", "index", "images", *map(str, imgs), "--dsn", pg_dsn,
            "--bundle", str(bundle_dir), "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived (fast machine)")
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    rep = json.loads(run(args[3:], check_rc=0).stdout)
    assert rep["written"] + rep["unchanged"] == 1500 and not rep["failed"]
