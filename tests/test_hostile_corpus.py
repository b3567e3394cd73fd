"""The hostile-input corpus (``tests/_hostile.py``) through ``index images``, ``index texts``,
``sync`` and ``worker``: 0 crashes, 0 hangs, each bad item recorded with its reason, every
good item stored, peak RSS of every process (the CLI and its decoder processes) <= 512 MB.

One run per command covers the whole corpus (module fixtures); each parametrized test then
checks one attack in every run that sees it. The last tests put a worker in its worst
states: a URL that drips one byte at a time (SIGTERM must stop it at once; a deadline
must fail that row alone), and a decoder process killed mid-item (a crash counts as one
attempt, the row is given up, the rest is stored).
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

import _hostile
from jointembed_pg.ingest.readers import printable
from jointembed_pg.ingest.sources import URL_MAX_BYTES
from test_reliability_support import cli, cli_env, cli_popen, flickr_images, scenario, stored_items

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

#: Peak resident memory allowed for any process of a run (the CLI/worker, each decoder).
MAX_RSS_MB = 512
#: A run that takes longer than this is a hang.
RUN_TIMEOUT_S = 600


class Measured:
    """A finished CLI run: ``rc``, ``out``, ``err``, peak RSS (MB) of the main process
    and of its decoder processes, wall time."""

    def __init__(self, rc, out, err, main_mb, child_mb, seconds):
        self.rc, self.out, self.err = rc, out, err
        self.main_mb, self.child_mb, self.seconds = main_mb, child_mb, seconds

    @property
    def peak_mb(self) -> int:
        return max(self.main_mb, self.child_mb)


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def run_measured(args, env=None, *, during=None, timeout=RUN_TIMEOUT_S) -> Measured:
    """Run ``jointembed ARGS`` and sample the peak RSS (``VmHWM``) of it and its children.

    ``during(proc)`` is called once the process runs (e.g. to signal it). A run over
    ``timeout`` seconds is killed and the test fails (a hang).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = cli_popen(args, env=env, stdout=out, stderr=err)
        main = child = 0
        ps = psutil.Process(proc.pid)
        if during is not None:
            threading.Thread(target=during, args=(proc,), daemon=True).start()
        while proc.poll() is None:
            main = max(main, _hwm_kb(proc.pid))
            try:
                kids = ps.children(recursive=True)
            except psutil.Error:
                kids = []
            for k in kids:
                child = max(child, _hwm_kb(k.pid))
            if time.monotonic() - t0 > timeout:
                proc.kill()
                pytest.fail(f"hang: {args[:2]} still running after {timeout} s")
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, out.read(), err.read(), main // 1024, child // 1024, time.monotonic() - t0)


def _no_crash(m: Measured, rc=3):
    assert m.rc == rc, (m.rc, m.out[-2000:], m.err[-3000:])
    assert "Traceback" not in m.err, m.err[-3000:]
    assert m.peak_mb <= MAX_RSS_MB, (m.main_mb, m.child_mb)


# -- the corpus and one run per command ---------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, flickr8k_dir):
    base = tmp_path_factory.mktemp("hostile")
    cases = _hostile.build_images(base / "images", flickr_images(flickr8k_dir, 3, start=300))
    return base, cases, _hostile.caption_files(base / "captions")


@pytest.fixture(scope="module")
def scan_run(corpus, module_pg_dsn, bundle_dir):
    base, _cases, _ = corpus
    m = run_measured(["index", "images", base / "images", "--collection", "hostile", "--dsn", module_pg_dsn,
                      "--bundle", bundle_dir, "--json", "--no-progress"])
    rep = json.loads(m.out)
    failed = {f["key"]: f["error"] for f in rep["failed"]}
    stored = {k for k, _h, _m, _e in stored_items(module_pg_dsn, "hostile")}
    ignored = {i["path"]: i["kind"] for i in rep["ignored"]}
    return m, rep, failed, stored, ignored


@pytest.fixture(scope="module")
def text_runs(corpus, module_pg_dsn, bundle_dir):
    _base, _cases, files = corpus
    runs = {}
    for fmt, path in files.items():
        m = run_measured(["index", "texts", path, "--collection", f"hostile_{fmt}", "--dsn", module_pg_dsn,
                          "--bundle", bundle_dir, "--json", "--no-progress"])
        rep = json.loads(m.out)
        stored = {k for k, _h, _m, _e in stored_items(module_pg_dsn, f"hostile_{fmt}", "text")}
        runs[fmt] = (m, rep, [(f["key"], f["error"]) for f in rep["failed"]], stored)
    return runs


def _table_rows(cases):
    return [c for c in cases if "table" in c.where]


@pytest.fixture(scope="module")
def table_run(corpus, module_pg_dsn, bundle_dir):
    """``sync`` of an attached table whose path column names every corpus entry
    (image root = the corpus folder) and whose text column holds hostile captions."""
    base, cases, _ = corpus
    rows = _table_rows(cases) + _hostile.table_only_cases(base / "images")
    texts = {0: "a dog runs on the beach", 1: "x" * 1_000_000, 2: "\x01\x02 bell \u202e bidi"}
    with psycopg.connect(module_pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hostile_paths (id int PRIMARY KEY, image_path text, caption text)")
        conn.cursor().executemany("INSERT INTO hostile_paths VALUES (%s, %s, %s)",
                                  [(i, c.name, texts.get(i)) for i, c in enumerate(rows)])
    args = ["--dsn", module_pg_dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "hostile_paths", "--key", "id", "--image-column", "image_path",
             "--text-column", "caption", "--image-root", base / "images", *args])
    assert p.returncode == 0, p.stderr
    m = run_measured(["sync", "--table", "hostile_paths", "--json", "--no-progress", *args])
    rep = json.loads(m.out)
    failed = {(f["key"], f["modality"]): f["error"] for f in rep["failed"]}
    return m, rep, {str(i): c for i, c in enumerate(rows)}, failed, _side_keys(module_pg_dsn, "hostile_paths")


@pytest.fixture(scope="module")
def worker_run(corpus, module_pg_dsn, bundle_dir):
    """``worker --until-idle`` on an attached table whose bytea column holds every corpus file."""
    base, cases, _ = corpus
    rows = [c for c in cases if "bytea" in c.where]
    with psycopg.connect(module_pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hostile_blobs (id int PRIMARY KEY, image bytea)")
        conn.cursor().executemany("INSERT INTO hostile_blobs VALUES (%s, %s)",
                                  [(i, (base / "images" / c.name).read_bytes()) for i, c in enumerate(rows)])
        conn.execute("INSERT INTO hostile_blobs VALUES (%s, %s)", [len(rows), b"\xff" * (URL_MAX_BYTES + 1)])
    args = ["--dsn", module_pg_dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "hostile_blobs", "--key", "id", "--image-column", "image",
             "--image-source", "bytea", *args])
    assert p.returncode == 0, p.stderr
    m = run_measured(["worker", "--table", "hostile_blobs", "--until-idle", "--poll", "0.5", *args])
    events = [json.loads(ln) for ln in m.err.splitlines() if ln.startswith("{")]
    failed = {e["key"]: e["error"] for e in events if e["event"] == "row_failed"}
    return m, events, {str(i): c for i, c in enumerate(rows)}, failed, _side_keys(module_pg_dsn, "hostile_blobs"),\
        str(len(rows))


def _side_keys(dsn, table) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        side = conn.execute("SELECT v.side_table FROM jointembed.attachments a JOIN jointembed.attachment_versions v "
                            "ON v.attachment_id = a.id WHERE a.table_name = %s", [table]).fetchone()[0]
        return set(conn.execute(sql.SQL("SELECT key::text, modality FROM {}").format(
            sql.Identifier("jointembed", side))).fetchall())


# -- whole runs ---------------------------------------------------------------------------

@scenario("Hostile-input corpus: `index images` of a folder holding every attack (44 kinds)",
          "exit 3, no traceback, no hang; every bad file failed with its reason, every good file stored, "
          f"non-images ignored by kind; peak RSS of the CLI and of each decoder process <= {MAX_RSS_MB} MB",
          "security")
def test_scan_run(scan_run, observe):
    m, rep, failed, stored, ignored = scan_run
    _no_crash(m)
    observe(f"exit {m.rc} in {m.seconds:.0f} s; written {rep['written']}, failed {len(failed)}, "
            f"ignored {len(ignored)}; peak RSS: CLI {m.main_mb} MB, decoder processes {m.child_mb} MB")


@scenario("Hostile-input corpus: `sync` of an attached table (path column under --image-root, text column)",
          f"exit 3, no traceback; every bad row failed alone with its reason; peak RSS <= {MAX_RSS_MB} MB",
          "security")
def test_table_run(table_run, observe):
    m, rep, rows, failed, stored = table_run
    _no_crash(m)
    assert "character limit" in failed[("1", "text")] and ("2", "text") in stored and ("0", "text") in stored
    observe(f"exit {m.rc} in {m.seconds:.0f} s; {len(rows)} rows: written {rep['written']}, failed {len(failed)}; "
            f"peak RSS: sync {m.main_mb} MB, decoder processes {m.child_mb} MB")


@scenario("Hostile-input corpus: `worker` on an attached bytea table (every corpus file as bytea, "
          "and one over the byte limit)",
          f"drains and exits 3 (rows failed, as sync), no traceback; bad rows logged as row_failed with reasons; peak RSS of the "
          f"worker and its decoder processes <= {MAX_RSS_MB} MB", "security")
def test_worker_run(worker_run, observe):
    m, events, rows, failed, stored, big = worker_run
    _no_crash(m, rc=3)  # worker --until-idle exits 3 when rows failed, as sync does (issue 23.5)
    assert "over the" in failed[big] and "-byte limit" in failed[big], failed.get(big)
    observe(f"exit {m.rc} in {m.seconds:.0f} s; {len(rows) + 1} rows: stored {len(stored)}, failed {len(failed)} "
            f"(e.g. oversized bytea: {failed[big][-60:]}); peak RSS: worker {m.main_mb} MB, "
            f"decoder processes {m.child_mb} MB")


@scenario("Hostile-input corpus: `index texts` of JSONL, CSV and token files with hostile captions and ids",
          "exit 3 each, no traceback; each bad line failed with its reason, the good ones stored", "security")
def test_text_runs(text_runs, observe):
    seen = []
    for fmt, (m, rep, failed, stored) in text_runs.items():
        _no_crash(m)
        seen.append(f"{fmt}: written {rep['written']}, failed {len(failed)}")
    observe("; ".join(seen))


# -- one attack per test ------------------------------------------------------------------

def _expected(case) -> str:
    if case.expect == "stored":
        return "stored"
    if case.expect == "ignored":
        return f"ignored by the folder scan as '{case.needle}'"
    return "failed, reason contains " + " or ".join(f"'{n}'" for n in case.needle.split("|"))


_CASES = _hostile.image_cases() + _hostile.table_only_cases(Path("/nonexistent/images"))


def _ok(case, stored: bool, error: str | None) -> bool:
    if case.expect == "stored":
        return stored and error is None
    return not stored and error is not None and any(n in error for n in case.needle.split("|"))


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=scenario(f"Image: {c.attack}", _expected(c) + " in every run that sees it "
                                   f"({', '.join(c.where)})", "security"), id=printable(c.name[:40]))
    for c in _CASES])
def test_image_attack(case, corpus, scan_run, table_run, worker_run, observe):
    base, _cases, _ = corpus
    root = base / "images"
    seen = []
    if "scan" in case.where:
        _m, _rep, failed, stored, ignored = scan_run
        if case.expect == "ignored":
            kinds = {k for p, k in ignored.items() if Path(p).name == case.name or p.endswith("/" + case.name)}
            assert kinds and all(case.needle in k for k in kinds), (case.name, kinds)
            seen.append(f"scan: ignored as '{case.needle}'")
        else:
            key = printable(str((root / case.name).resolve()), 1000)
            err = failed.get(key)
            assert _ok(case, key in stored, err), (case.name, key in stored, err)
            seen.append(f"scan: {'stored' if err is None else err.replace(str(root) + '/', '')[-120:]}")
    if "table" in case.where:
        _m, _rep, rows, failed, stored = table_run
        key = next(k for k, c in rows.items() if c.attack == case.attack)
        err = failed.get((key, "image"))
        assert _ok(case, (key, "image") in stored, err), (case.name, err)
        seen.append(f"sync: {'stored' if err is None else err.replace(str(root) + '/', '')[-120:]}")
    if "bytea" in case.where:
        _m, _ev, rows, failed, stored, _big = worker_run
        key = next(k for k, c in rows.items() if c.attack == case.attack)
        err = failed.get(key)
        needle_ok = case.expect != "failed" or any(n in (err or "") for n in case.needle.split("|"))
        assert ((key, "image") in stored) == (case.expect == "stored") and needle_ok, (case.name, err)
        seen.append(f"worker (bytea): {'stored' if err is None else err[-100:]}")
    observe("; ".join(seen))


_CAPTIONS = _hostile.caption_cases()


@pytest.mark.parametrize("entry", [
    pytest.param(e, marks=scenario(f"Caption: {e[2]}", ("stored" if e[3] == "stored" else
                                                         f"that line failed, reason contains '{e[4]}'")
                                   + f"; the rest of the file stored ({', '.join(e[5])})", "security"),
                 id=printable(e[0][:20]))
    for e in _CAPTIONS])
def test_caption_attack(entry, text_runs, observe):
    key, _text, _attack, expect, needle, fmts = entry
    seen = []
    for fmt in fmts:
        _m, rep, failed, stored = text_runs[fmt]
        if expect == "stored":
            assert key in stored, (fmt, key, failed)
            seen.append(f"{fmt}: stored")
        else:
            # the record key is the id (made printable), or file:line when the line itself is unusable
            hits = [e for k, e in failed if needle in e and (k == printable(key, 200) or k.startswith("captions."))]
            assert hits and key not in stored, (fmt, key, needle, failed)
            seen.append(f"{fmt}: {hits[0][-90:]}")
        assert any(k in stored for k in ("ok1", "ok2")), fmt
    observe("; ".join(seen))


@scenario("Caption file that is a FIFO, /dev/zero or a directory (`index texts`)",
          "exit 1 at once with one line naming the file type; nothing read, no hang", "security")
def test_caption_file_not_regular(tmp_path, module_pg_dsn, bundle_dir, observe):
    fifo = tmp_path / "caps.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    seen = []
    for path, needle in ((fifo, "FIFO"), (zero, "character device"), (tmp_path, "directory")):
        t0 = time.monotonic()
        p = cli(["index", "texts", path, "--dsn", module_pg_dsn, "--bundle", bundle_dir], timeout=60)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 1 and len(lines) == 1 and needle in lines[0], p.stderr[-2000:]
        seen.append(f"{lines[0].split(': ', 1)[-1][-70:]} ({time.monotonic() - t0:.1f} s)")
    observe("; ".join(seen))


@scenario("Folder with no decodable image (HEIC, SVG, text files) given to `index images`",
          "exit 1; says what it found and ignored by kind; --json lists every ignored file", "security")
def test_empty_input_says_what_it_ignored(tmp_path, module_pg_dsn, bundle_dir, observe):
    for name in ("a.heic", "b.heic", "c.svg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    args = ["index", "images", tmp_path, "--collection", "empty", "--dsn", module_pg_dsn, "--bundle", bundle_dir]
    p = cli(args)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "4 files ignored: 2 .heic (no decoder), 1 .svg (no decoder), 1 .txt" in p.stderr, p.stderr
    assert "nothing to index" in p.stderr
    rep = json.loads(cli([*args, "--json"]).stdout)
    assert sorted(Path(i["path"]).name for i in rep["ignored"]) == ["a.heic", "b.heic", "c.svg", "notes.txt"]
    assert rep["written"] == 0
    observe(f"exit 1; {p.stderr.strip().splitlines()[-2].strip()}")


# -- worst states of a worker: a dripping URL, a killed decoder ---------------------------

class _Drip(http.server.BaseHTTPRequestHandler):
    """``/slow``: headers, then one byte every 0.3 s for ever; ``/img/N``: a real photo."""

    photos: list[bytes] = []
    slow_started = threading.Event()

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/img/"):
            body = self.photos[int(self.path.rsplit("/", 1)[1])]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.slow_started.set()
        try:
            for _ in range(2000):
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass

    def log_message(self, *a):
        pass


@pytest.fixture
def drip_table(pg_dsn, bundle_dir, flickr8k_dir):
    _Drip.photos = [p.read_bytes() for p in flickr_images(flickr8k_dir, 3, start=320)]
    _Drip.slow_started = threading.Event()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE drip (id int PRIMARY KEY, url text)")
        conn.cursor().executemany("INSERT INTO drip VALUES (%s, %s)",
                                  [(1, f"{base}/slow"), (2, f"{base}/img/0"), (3, f"{base}/img/1"),
                                   (4, f"{base}/img/2")])
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "drip", "--key", "id", "--image-column", "url", "--image-source", "url", *args])
    assert p.returncode == 0, p.stderr
    # the local server is not public: sync/worker may reach it only when told (SSRF guard)
    yield [*args, "--allow-url-host", f"127.0.0.1:{srv.server_address[1]}"]
    srv.shutdown()


def _status(args) -> dict:
    return json.loads(cli(["status", "--table", "drip", "--json", *args[:2]]).stdout)


@scenario("SIGTERM to `jointembed worker` while it reads a URL that drips one byte every 0.3 s "
          "(item deadline 120 s)", "the worker exits 0 within 3 s; the row is released, no attempt counted",
          "security")
def test_worker_sigterm_during_slow_read(drip_table, observe):
    env = cli_env(JOINTEMBED_ITEM_TIMEOUT_S="120")
    stopped = {}

    def term(proc):
        assert _Drip.slow_started.wait(120)
        time.sleep(1.0)
        stopped["t"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)

    m = run_measured(["worker", "--table", "drip", "--batch-size", "1", "--poll", "0.5", *drip_table],
                     env=env, during=term, timeout=180)
    took = time.monotonic() - stopped["t"] - 0.05  # minus one sampling interval
    assert m.rc in (0, 3) and "Traceback" not in m.err, m.err[-2000:]
    assert took < 3.0, took
    st = _status(drip_table)
    slow = [e for e in st["errors"] if e["key"] == "1"]
    assert not slow, slow  # released, not failed
    observe(f"exit 0, {took:.1f} s after SIGTERM; row 1 not failed (claim released); status: "
            f"done {st['done']}, failed {st['failed']}")


@scenario("A URL row that never finishes (drip), with the item deadline at 3 s (`sync`)",
          "that row failed 'timed out' as one attempt (retried later); the other rows stored; exit 3",
          "security")
def test_slow_item_times_out_alone(drip_table, observe):
    m = run_measured(["sync", "--table", "drip", "--json", "--no-progress", *drip_table],
                     env=cli_env(JOINTEMBED_ITEM_TIMEOUT_S="3"), timeout=180)
    _no_crash(m)
    rep = json.loads(m.out)
    (f,) = rep["failed"]
    assert f["key"] == "1" and "timed out after 3 s" in f["error"], f
    assert rep["written"] == 3
    (e,) = [e for e in _status(drip_table)["errors"] if e["key"] == "1"]
    assert e["attempts"] == 1 and e["next_attempt_at"] is not None
    observe(f"exit 3 in {m.seconds:.0f} s; {f['error'].split(': ', 1)[-1][:90]}; attempts {e['attempts']}, "
            f"retry scheduled; 3 other rows stored")


@scenario("The decoder process of a row is killed (SIGKILL) mid-item, as a decoder crash would (`sync`)",
          "that row failed 'decoder process died' and is given up (counted as an attempt); the other rows "
          "stored; exit 3", "security")
def test_decoder_crash_fails_only_that_row(drip_table, observe):
    killed = []

    def kill_decoder(proc):
        assert _Drip.slow_started.wait(120)
        time.sleep(0.5)
        for k in psutil.Process(proc.pid).children(recursive=True):
            # the decoder holding the dripping connection (others may be busy with good rows)
            if "jointembed_pg.ingest.sandbox" in " ".join(k.cmdline()) and k.net_connections(kind="tcp"):
                killed.append(k.pid)
                os.kill(k.pid, signal.SIGKILL)

    m = run_measured(["sync", "--table", "drip", "--json", "--no-progress", "--batch-size", "4", *drip_table],
                     env=cli_env(JOINTEMBED_ITEM_TIMEOUT_S="120"), during=kill_decoder, timeout=180)
    _no_crash(m)
    assert len(killed) == 1, killed
    rep = json.loads(m.out)
    (f,) = rep["failed"]
    assert f["key"] == "1" and "decoder process died" in f["error"] and "signal 9" in f["error"], f
    assert rep["written"] == 3
    (e,) = [e for e in _status(drip_table)["errors"] if e["key"] == "1"]
    assert e["attempts"] == 1 and e["next_attempt_at"] is None  # given up: not retried for ever
    observe(f"exit 3; {f['error'].split(': ', 1)[-1][:90]}; attempts 1, given up; 3 other rows stored")


@scenario("`search image` given /dev/zero, a FIFO and a PNG declaring 50,000 x 50,000",
          "exit 1 at once with one line (not a regular file / over the pixel limit); no hang", "security")
def test_search_image_hostile(corpus, module_pg_dsn, bundle_dir, scan_run, observe):
    base, _cases, _ = corpus
    seen = []
    for path, needle in (("/dev/zero", "character device"), (base / "images" / "fifo.jpg", "FIFO"),
                         (base / "images" / "bomb_png_50k.png", "pixel limit")):
        t0 = time.monotonic()
        p = cli(["search", "image", path, "--collection", "hostile", "--dsn", module_pg_dsn, "--bundle", bundle_dir],
                timeout=60)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 1 and len(lines) == 1 and needle in lines[0], p.stderr[-2000:]
        seen.append(f"{Path(path).name}: {lines[0].rsplit(': ', 1)[-1][:60]} ({time.monotonic() - t0:.1f} s)")
    observe("; ".join(seen))
