"""What the embedded server's code trusts, and how it proves it (issue 23.2).

The home, data and socket directories may sit where other users can reach them
(``JOINTEMBED_HOME`` under ``/tmp``; as root the data directory belongs to the server's
OS user ``pgserver``, which any PostgreSQL superuser can write files as). So:

* :func:`check_dir`: a directory jointembed reads or writes is refused, before anything
  in it is read, unless it and its ancestors are safe (:func:`jointembed_pg.files.dir_problem`:
  right owner, not writable by others; ancestors owned by root or us and not writable by
  others unless sticky);
* files in them are opened with :func:`jointembed_pg.files.open_own` (no link followed,
  regular, right owner, one link): :func:`read`, :func:`write`, :func:`replace`;
* :func:`prove_postmaster`: the pid in ``postmaster.pid`` is signalled, and its server
  connected to, only once ``/proc`` shows it is the postmaster of this data directory:
  owned by the server's OS user, running a ``postgres`` binary of the installed server
  package, with the data directory as its working directory (the postmaster ``chdir``s
  there at start); :func:`signal_proven` pins the process (``pidfd_open``) before the
  proof and signals through that descriptor, so a reused pid is never hit;
* the OS users (:func:`_service_user`: as root, :data:`SERVICE_USER`) and the private
  socket directory (:func:`runtime_dir`, :func:`_make_private_dir`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .. import files, settings
from ..errors import DatabaseError, InputError

#: OS user the server runs as when jointembed runs as root (the pgserver packages' name).
SERVICE_USER = "pgserver"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS

#: Largest ``postmaster.pid`` / ``PG_VERSION`` / ``clients.json`` / password file read.
SMALL_FILE_BYTES = 64 * 1024


def check_dir(path: Path, owners: tuple[int, ...], what: str, fix: str) -> None:
    """Refuse ``path`` (``what``: "home directory", "data directory", ...) unless
    :func:`jointembed_pg.files.dir_problem` finds it safe.

    Raises:
        DatabaseError: one line: the directory, what is wrong, and ``fix``.
    """
    problem = files.dir_problem(path, owners)
    if problem:
        raise DatabaseError(f"refusing the embedded server's {what} {path}: {problem}; {fix}")


@contextlib.contextmanager
def _as_database_error() -> Iterator[None]:
    try:
        yield
    except InputError as e:
        raise DatabaseError(str(e)) from None


def read(path: Path, owners: tuple[int, ...], where: str, *, max_bytes: int = SMALL_FILE_BYTES,
         tail: bool = False, private: bool = False) -> bytes | None:
    """:func:`jointembed_pg.files.read_own` (None when missing), errors as :class:`DatabaseError`."""
    with _as_database_error():
        return files.read_own(path, max_bytes, owners, where, tail=tail, private=private)


def write(path: Path, data: bytes, owners: tuple[int, ...], where: str, *, create: bool = True,
          chown: tuple[int, int] | None = None) -> None:
    """:func:`jointembed_pg.files.write_own`, errors as :class:`DatabaseError`."""
    with _as_database_error():
        files.write_own(path, data, owners, where, create=create, chown=chown)


def replace(path: Path, data: bytes, where: str) -> None:
    """:func:`jointembed_pg.files.replace_own`, errors as :class:`DatabaseError`."""
    with _as_database_error():
        files.replace_own(path, data, where)


def open_fd(path: Path, flags: int, owners: tuple[int, ...], where: str) -> int:
    """:func:`jointembed_pg.files.open_own`, errors as :class:`DatabaseError`."""
    with _as_database_error():
        return files.open_own(path, flags, owners, where)


def prove_postmaster(pid: int, uid: int, bin_dirs: Iterable[Path], pgdata: Path) -> str | None:
    """Why process ``pid`` is not proven to be the postmaster of ``pgdata``, or None if it is.

    Proof (Linux ``/proc``): ``/proc/<pid>`` owned by ``uid``; ``/proc/<pid>/exe`` is
    ``postgres`` in one of ``bin_dirs`` (real paths); ``/proc/<pid>/cwd`` is ``pgdata``.
    Elsewhere (macOS) ``ps``: the uid, ``argv[0]`` and ``-D <pgdata>`` of its command line.
    A process we may not inspect is not proven.
    """
    bins = {os.path.realpath(b) for b in bin_dirs}
    data = os.path.realpath(pgdata)
    if os.path.isdir("/proc/self"):
        proc = f"/proc/{int(pid)}"
        try:
            owner = os.stat(proc).st_uid
            exe = os.readlink(f"{proc}/exe")
            cwd = os.readlink(f"{proc}/cwd")
        except FileNotFoundError:
            return f"process {pid} does not exist"
        except OSError as e:
            return f"process {pid} cannot be inspected ({e.strerror or e})"
        exe = exe.removesuffix(" (deleted)")  # the package was reinstalled under it
        cwd_ok = cwd == data
    else:
        try:
            out = subprocess.run(["ps", "-ww", "-o", "uid=,command=", "-p", str(int(pid))], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            uid_text, command = out.split(None, 1)
            owner, argv = int(uid_text), shlex.split(command)
        except (OSError, ValueError, subprocess.SubprocessError):
            return f"process {pid} cannot be inspected"
        exe = argv[0] if argv else ""
        cwd_ok = any(a == "-D" and b == data for a, b in zip(argv, argv[1:]))
    if owner != uid:
        return f"process {pid} belongs to uid {owner}, not the server's OS user (uid {uid})"
    real = os.path.realpath(exe)
    if os.path.basename(real) != "postgres" or os.path.dirname(real) not in bins:
        return f"process {pid} runs {exe}, not the installed server's postgres"
    if not cwd_ok:
        return f"process {pid} does not serve the data directory {pgdata}"
    return None



def signal_proven(pid: int, sig: int, uid: int, bin_dirs: Iterable[Path], pgdata: Path) -> str | None:
    """Send ``sig`` to ``pid`` only if :func:`prove_postmaster` proves it, with no window for
    the pid to be reused in between: the process is pinned first (Linux ``pidfd_open``),
    then proven, then signalled through that descriptor. Returns why it was not signalled
    (not proven, or gone), or None once signalled."""
    import signal as _signal

    fd = None
    if hasattr(os, "pidfd_open") and hasattr(_signal, "pidfd_send_signal"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return f"process {pid} does not exist"
        except OSError:
            fd = None  # an old kernel: prove, then kill() (a tiny reuse window remains)
    try:
        why = prove_postmaster(pid, uid, bin_dirs, pgdata)
        if why is not None:
            return why
        try:
            if fd is not None:
                _signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return f"process {pid} exited"
        return None
    finally:
        if fd is not None:
            os.close(fd)


# -- OS users and private directories ---------------------------------------------------
@dataclass(frozen=True)
class _User:
    uid: int
    gid: int
    name: str
    as_root: bool  # jointembed runs as root and the server as this other user


def _current_user() -> _User:
    import pwd

    uid = os.geteuid()
    return _User(uid, os.getegid(), pwd.getpwuid(uid).pw_name, False)


def _service_uid() -> int | None:
    """uid the server runs as (this user; as root :data:`SERVICE_USER`, None if missing)."""
    import pwd

    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def _service_user(pgdata: Path) -> _User:
    """The OS user the server runs as: the current user, or, as root, :data:`SERVICE_USER`
    (created with ``useradd`` if missing). A data directory of another owner is refused
    (:meth:`EmbeddedServer._check_dirs`), never adopted."""
    import pwd

    if os.geteuid() != 0:
        return _current_user()
    try:
        e = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True)
        e = pwd.getpwnam(SERVICE_USER)
    return _User(e.pw_uid, e.pw_gid, e.pw_name, True)


def _can_traverse(path: Path, user: _User) -> Path | None:
    """First directory among ``path``'s ancestors (and ``path``) ``user`` cannot enter."""
    import pwd

    groups = {user.gid} | {g for g in os.getgrouplist(pwd.getpwuid(user.uid).pw_name, user.gid)}
    for d in [*reversed(path.parents), path]:
        try:
            st = os.stat(d)
        except FileNotFoundError:
            return None
        if st.st_uid == user.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def _check_private_dir(d: Path, user: _User) -> None:
    """Refuse ``d`` unless it is a real directory owned by ``user`` with no group/other access,
    in a safe parent (:func:`jointembed_pg.files.dir_problem`)."""
    problem = files.dir_problem(d, (user.uid,))
    if problem:
        raise DatabaseError(f"refusing to use {d} for the server's socket: {problem}; set TMPDIR to a safe "
                            f"directory")
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DatabaseError(f"refusing to use {d} for the server's socket: it is not a directory (a link?)")
    if st.st_uid != user.uid:
        raise DatabaseError(f"refusing to use {d} for the server's socket: owned by uid {st.st_uid}, "
                            f"not {user.name} (created by someone else?); remove it")
    if st.st_mode & 0o077:
        raise DatabaseError(f"refusing to use {d} for the server's socket: mode {oct(st.st_mode & 0o777)} "
                            f"lets other users in; remove it")


def _make_private_dir(d: Path, user: _User) -> Path:
    """Create ``d`` 0700 for ``user`` (``mkdir`` fails if it exists: no race with a
    pre-created directory, which is then checked like any existing one)."""
    try:
        os.mkdir(d, 0o700)
        if user.as_root:
            os.chown(d, user.uid, user.gid, follow_symlinks=False)
    except FileExistsError:
        st = os.lstat(d)
        if user.as_root and st.st_uid == 0 and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077:
            os.chown(d, user.uid, user.gid, follow_symlinks=False)  # an interrupted earlier mkdir+chown
    _check_private_dir(d, user)
    return d


def runtime_dir(pgdata: Path) -> Path:
    """The private socket/state directory of the server of ``pgdata`` (not created).

    ``<base>/jointembed-<euid>-<sha256(pgdata)[:12]>``, where ``<base>`` is
    ``$XDG_RUNTIME_DIR`` (non-root only, if it is a private directory of this user) or the
    system temp dir, whichever keeps the socket path under the ~104-byte limit.
    """
    euid = os.geteuid()
    name = f"jointembed-{euid}-{hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]}"
    bases: list[Path] = []
    xdg = settings.get().runtime_base
    if euid != 0 and xdg is not None:
        with contextlib.suppress(OSError):
            st = os.stat(xdg)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == euid and not st.st_mode & 0o077:
                bases.append(xdg)
    bases += [Path(tempfile.gettempdir()), Path("/tmp")]
    for base in bases:
        d = base / name
        if len(str(d / ".s.PGSQL.65535").encode()) <= _MAX_SOCKET_PATH:
            return d
    raise DatabaseError("no temp directory short enough for a Unix socket path; set TMPDIR=/tmp")
