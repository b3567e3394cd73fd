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
  there at start).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from pathlib import Path
from typing import Iterable, Iterator

from .. import files
from ..errors import DatabaseError, InputError

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


__all__ = ["check_dir", "read", "write", "replace", "open_fd", "prove_postmaster", "SMALL_FILE_BYTES"]
