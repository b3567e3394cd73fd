"""Issue 23.2: the embedded server trusts no file it did not make (real embedded server).

An attacker who can write the home or data directory (a home under /tmp; as root, the
data directory belongs to the server's OS user ``pgserver``, which any PostgreSQL
superuser writes files as) plants links and a ``postmaster.pid``. jointembed must refuse
unsafe directories before reading anything, never write through a planted link, never
signal or connect to a process it has not proven to be the data directory's postmaster,
and never restart a server that ``server stop`` stopped.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _pg import reachable
from jointembed_pg.errors import BundleError, DatabaseError
from jointembed_pg.server import embedded
from test_reliability_support import scenario
from test_server import env_for, jointembed, ready_count

pytest_plugins = ["_reliability"]


def _chown_like(path: Path, ref: Path) -> None:
    """Give ``path`` (not following a link) the owner of ``ref``: the data directory's owner
    plants files there (as root: ``pgserver``)."""
    st = os.stat(ref)
    os.lchown(path, st.st_uid, st.st_gid)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real, stopped cluster made once; tests work on copies (``cp -a`` keeps owners)."""
    base = reachable(tmp_path_factory.mktemp("trust-template"))
    srv = embedded.server(base / "pgdata")
    srv.start(hold=False)
    srv.stop()
    return base / "pgdata"


@pytest.fixture
def cluster(template, tmp_path):
    home = reachable(tmp_path) / "home"
    home.mkdir(mode=0o711)
    reachable(home)
    subprocess.run(["cp", "-a", str(template), str(home / "pgdata")], check=True)
    for leftover in ("postmaster.pid", "log"):
        (home / "pgdata" / leftover).unlink(missing_ok=True)
    yield home / "pgdata"
    os.chmod(home, 0o711)
    os.chown(home, os.geteuid(), os.getegid())
    with contextlib.suppress(DatabaseError):
        embedded.server(home / "pgdata").stop()


# -- links planted in the data and socket directories ------------------------------------
@pytest.mark.parametrize("name", ["log", "pg_hba.conf"])
@scenario("Symlinks `log` / `pg_hba.conf` planted in the data directory (to a file root would create / a "
          "root-only file with a `host ... trust` line), then `start`",
          "refused with one line naming the link; nothing created, the target unchanged", "security")
def test_planted_link_in_the_data_dir_is_refused(cluster, tmp_path, name, observe):
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir(mode=0o700)
    created = victim_dir / "created-by-jointembed"        # a file root would create
    secret = victim_dir / "root-only.conf"                # a file root would rewrite
    secret.write_text("host all all 0.0.0.0/0 trust\n")
    os.chmod(secret, 0o600)
    target = created if name == "log" else secret
    path = cluster / name
    path.unlink(missing_ok=True)
    os.symlink(target, path)
    _chown_like(path, cluster)
    with pytest.raises(DatabaseError) as e:
        embedded.server(cluster).start(hold=False)
    assert not created.exists()
    assert secret.read_text() == "host all all 0.0.0.0/0 trust\n"
    assert f"{name} is a symlink" in str(e.value)
    observe(f"{name}: {str(e.value).split(': ', 1)[1]}")
    assert not embedded.server(cluster).is_running()


@scenario("Symlink `held` planted in the socket directory, then `server start`",
          "refused; the link's target is not created", "security")
def test_planted_link_in_the_socket_dir_is_refused(cluster, tmp_path, observe):
    victim = tmp_path / "held-victim"
    srv = embedded.server(cluster)
    srv.start(hold=False)  # makes the socket dir
    srv.stop()
    held = srv.run_dir / "held"
    held.unlink(missing_ok=True)
    os.symlink(victim, held)
    _chown_like(held, srv.run_dir)
    try:
        with pytest.raises(DatabaseError, match="held is a symlink") as e:
            srv.start(hold=True)
        assert not victim.exists()
        observe(f"{str(e.value).split(': ', 1)[1]}; target not created")
    finally:
        held.unlink(missing_ok=True)


# -- home and data directories others may write -------------------------------------------
def _nobody() -> tuple[int, int]:
    import pwd

    try:
        e = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    return e.pw_uid, e.pw_gid


@scenario("JOINTEMBED_HOME of mode 0777 holding a cluster: `server status` and the API",
          "exit 1, one line naming the home and what to do; nothing in it read or written", "security")
def test_world_writable_home_is_refused_before_reading(cluster, observe):
    home = cluster.parent
    os.chmod(home, 0o777)
    with pytest.raises(DatabaseError, match=r"refusing the embedded server's home directory .*lets every user write"):
        embedded.server(cluster)
    p = jointembed(["server", "status"], env_for(home), check=False)
    assert p.returncode == 1 and "refusing the embedded server's home directory" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (cluster / "postmaster.pid").exists() and not (cluster / "log").exists()
    observe(f"exit {p.returncode}: {p.stderr.strip().split(': ', 2)[-1]}")
    os.chmod(home, 0o711)


@scenario("Home directory owned by another user (nobody), data directory owned by another user",
          "both refused before anything in them is read", "security")
def test_home_of_another_user_is_refused(cluster, observe):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the home to another user")
    home = cluster.parent
    os.chown(home, *_nobody())
    try:
        with pytest.raises(DatabaseError, match="home directory .* belongs to nobody") as e:
            embedded.server(cluster)
        observe(str(e.value).split(": ", 1)[1].split(";")[0])
    finally:
        os.chown(home, 0, 0)
    os.chown(cluster, *_nobody())
    with pytest.raises(DatabaseError, match="data directory .* belongs to nobody") as e:
        embedded.server(cluster)
    observe(str(e.value).split(": ", 1)[1].split(";")[0])


@scenario("Home inside a directory of mode 0777 without the sticky bit; then with it (like /tmp)",
          "refused without the sticky bit (others could swap the home); accepted with it", "security")
def test_parent_writable_by_others_is_refused_but_sticky_tmp_is_fine(tmp_path, observe):
    shared = reachable(tmp_path) / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # no sticky bit: anyone may rename our home away and plant theirs
    with pytest.raises(DatabaseError, match=r"its parent .*shared is not safe: mode 0777") as e:
        embedded.server(shared / "home" / "pgdata")
    observe(str(e.value).split(": ", 1)[1].split(";")[0] + "; mode 1777: accepted")
    os.chmod(shared, 0o1777)  # like /tmp: our 0711 home in it is fine
    embedded.server(shared / "home" / "pgdata")


@scenario("Bundles directory of mode 0777 (a planted bundle would be loaded)", "refused by name lookup",
          "security")
def test_unsafe_bundles_dir_is_refused(tmp_path, monkeypatch, observe):
    from jointembed_pg.model.bundle import resolve

    home = reachable(tmp_path) / "home"
    (home / "bundles" / "default").mkdir(parents=True)
    os.chmod(home / "bundles", 0o777)
    monkeypatch.setenv("JOINTEMBED_HOME", str(home))
    monkeypatch.delenv("JOINTEMBED_BUNDLES", raising=False)
    with pytest.raises(BundleError, match="refusing the bundles directory .*lets every user write") as e:
        resolve("default")
    observe(str(e.value).split(": ", 1)[1].split(";")[0])


# -- a planted postmaster.pid --------------------------------------------------------------
_CATCHER = """
import signal, sys, time
out = sys.argv[1]
def note(n, f):
    open(out, "a").write(f"{n}\\n")
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, note)
open(out + ".ready", "w").close()
time.sleep(600)
"""


@scenario("postmaster.pid planted in the data directory naming a live foreign process (catching every signal) and "
          "an attacker's listening socket: `server stop`, `server status`, then a real start and stop",
          "the process receives no signal, nobody connects to that socket; stop/status say why the pid is not "
          "trusted; the real server starts and stops normally", "security")
def test_planted_postmaster_pid_is_neither_signalled_nor_connected(cluster, tmp_path, observe):
    """A postmaster.pid naming a live foreign process and an attacker's socket: `server
    stop` sends it no signal, status says so, and no client connects to that socket."""
    got = tmp_path / "signals"
    victim = subprocess.Popen([sys.executable, "-c", _CATCHER, str(got)])
    trap_dir = tmp_path / "trap"
    trap_dir.mkdir()
    trap = socket.socket(socket.AF_UNIX)
    trap.bind(str(trap_dir / ".s.PGSQL.5432"))
    trap.listen(5)
    trap.setblocking(False)
    try:
        deadline = time.monotonic() + 30
        while not Path(str(got) + ".ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid_file = cluster / "postmaster.pid"
        pid_file.write_text(f"{victim.pid}\n{cluster}\n{int(time.time())}\n5432\n{trap_dir}\n\n  5432001  1\nready   \n")
        _chown_like(pid_file, cluster)
        env = env_for(cluster.parent)
        stop = jointembed(["server", "stop"], env)
        assert stop.stdout.strip() == "not running"
        assert f"names process {victim.pid}, which is not proven" in stop.stderr
        status = json.loads(jointembed(["server", "status", "--json"], env).stdout)
        assert status["running"] is False and str(victim.pid) in status["refused_pid"]
        srv = embedded.server(cluster)
        with pytest.raises(DatabaseError, match="not running .*not proven"):
            srv.uri()
        # a real start is not fooled either: PostgreSQL replaces the stale file, we connect
        # to our own socket
        uri = srv.start(hold=False)
        assert str(trap_dir) not in uri and srv.postmaster().pid != victim.pid
        srv.stop()
        time.sleep(0.5)
        assert victim.poll() is None, "the foreign process was killed"
        assert not got.exists(), f"the foreign process received signals {got.read_text()!r}"
        with pytest.raises(BlockingIOError):
            trap.accept()  # nobody connected to the attacker's socket
        observe(f"stop: {stop.stdout.strip()!r}, {stop.stderr.strip().split('(', 1)[1].split(')')[0]}; "
                f"no signal received, process alive, 0 connections to the planted socket")
    finally:
        victim.kill()
        victim.wait()
        trap.close()


@scenario("postmaster.pid planted naming a real PostgreSQL process of another cluster (same OS user, same "
          "binary) that is running a query; then `stop`", "not signalled (its working directory is another data "
          "directory): the query completes", "security")
def test_postmaster_pid_of_another_cluster_is_not_signalled(cluster, pg_admin_dsn, observe):
    import threading

    import psycopg

    with psycopg.connect(pg_admin_dsn, autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        if not os.path.exists(f"/proc/{pid}") or os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "postgres":
            pytest.skip("the test server is not a local embedded one")
        result: dict = {}

        def query() -> None:
            try:
                c.execute("SELECT pg_sleep(4)")
                result["ok"] = True
            except psycopg.Error as e:
                result["error"] = str(e)

        t = threading.Thread(target=query)
        t.start()
        time.sleep(0.5)
        pid_file = cluster / "postmaster.pid"
        pid_file.write_text(f"{pid}\n{cluster}\n{int(time.time())}\n5432\n\n\n  5432001  1\nready   \n")
        _chown_like(pid_file, cluster)
        srv = embedded.server(cluster)
        assert srv.stop() is False
        assert "does not serve the data directory" in srv.refused_pid, srv.refused_pid
        t.join(30)
    assert result == {"ok": True}, result
    observe(f"stop() -> False; {srv.refused_pid.split('(', 1)[1].split(')')[0]}; the other cluster's query completed")


# -- a stopped server stays stopped ----------------------------------------------------------
@scenario("`server stop`, then `init`, `sync`, `worker --until-idle` and `Store()` without a DSN",
          "each exits 1 saying the server was stopped and how to start it; the server is not started",
          "security")
def test_server_stopped_by_server_stop_is_not_restarted_implicitly(cluster, bundle_dir, observe):
    env = env_for(cluster.parent)
    jointembed(["server", "start"], env)
    assert jointembed(["server", "stop"], env).stdout.strip() == "stopped"
    starts = ready_count(cluster)
    bundle = str(bundle_dir)
    for args in (["init"], ["sync", "--table", "photos", "--bundle", bundle],
                 ["worker", "--until-idle", "--bundle", bundle]):
        p = jointembed(args, env, check=False)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert "stopped with `jointembed server stop`; start it with `jointembed server start`" in p.stderr
        said = p.stderr.strip()
    code = "from jointembed_pg import Store; Store()"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "jointembed server stop" in p.stderr
    assert ready_count(cluster) == starts and not embedded.server(cluster).is_running()
    status = jointembed(["server", "status"], env).stdout
    assert "no (stopped by server stop)" in status
    observe(f"init/sync/worker exit 1, Store() raises: {said}; 0 server starts")
    # `server start` clears it; after its own stop an implicit user may start it again
    jointembed(["server", "start"], env)
    embedded.server(cluster).stop()  # the Python API's stop keeps it stopped too
    assert jointembed(["init"], env, check=False).returncode == 1
    jointembed(["server", "start"], env)
    jointembed(["init"], env)
    assert embedded.server(cluster).is_running()


@scenario("`jointembed worker` (no DSN) running on the embedded server when `server stop` is run; later "
          "`server start`", "the worker does not restart the server: it logs db_error saying it was stopped and "
          "retries; after `server start` it reconnects; SIGTERM: exit 0", "security")
def test_running_worker_does_not_restart_a_stopped_server(cluster, bundle_dir, observe):
    env = env_for(cluster.parent)
    jointembed(["server", "start"], env)
    worker = subprocess.Popen([sys.executable, "-m", "jointembed_pg", "worker", "--bundle", str(bundle_dir),
                               "--poll", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    srv = embedded.server(cluster)
    try:
        deadline = time.monotonic() + 120
        while srv.postmaster() is not None and not srv._clients():
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)  # the worker is serving (LISTEN)
        assert jointembed(["server", "stop"], env).stdout.strip() == "stopped"
        starts = ready_count(cluster)
        time.sleep(8)  # several reconnection attempts (1 s, 2 s, 4 s)
        assert worker.poll() is None and not srv.is_running() and ready_count(cluster) == starts
        jointembed(["server", "start"], env)
        time.sleep(10)  # the next retry (8 s) reconnects
    finally:
        worker.terminate()
        out, err = worker.communicate(timeout=60)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    errors = [e for e in events if e.get("event") == "db_error"]
    assert worker.returncode == 0, err[-2000:]
    stopped = [e for e in errors if "stopped with `jointembed server stop`" in e["error"]]
    assert len(stopped) >= 2 and errors[-len(stopped):] == stopped, [e["error"] for e in errors]
    assert [e["event"] for e in events].count("start") == 2, [e["event"] for e in events]
    observe(f"{len(stopped)} db_error lines while stopped, e.g. {stopped[0]['error'][:90]!r}; 0 server starts by the "
            f"worker; reconnected after `server start`; exit {worker.returncode} on SIGTERM")
