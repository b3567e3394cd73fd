"""Opening untrusted paths: regular files only, size-capped, optionally confined to a root.

Every image or caption file jointembed reads goes through :func:`open_regular`:

1. ``os.stat`` the path (symlinks followed) and refuse, before opening, anything that is
   not a regular file: directories, devices (``/dev/zero``), FIFOs, sockets, and the
   pseudo-files of kernel file systems (``/proc``, ``/sys``, debugfs, cgroup, ...: they
   claim a size of 0 or 4096 whatever they hold, and some block or are consumed when
   read, like ``/proc/kmsg``);
2. refuse a file over ``max_bytes`` before reading it;
3. ``os.open`` with ``O_NONBLOCK | O_NOCTTY`` (a FIFO swapped in after step 1 cannot
   block the open), ``fstat`` the descriptor and require the very file of step 1 (same
   device and inode, still regular): a swap between the check and the open is refused;
4. with a ``root``: the opened file's real path (``/proc/self/fd``, or a re-``stat`` of
   the real path elsewhere) must lie inside the root's real path, so neither ``..`` nor
   a symlink (in any path component, even one swapped in late) leads out of it.

:func:`read_regular` then reads at most ``max_bytes + 1`` bytes (a file that grew past
the cap while being read is refused). Errors are :class:`InputError` with a ``retry``
attribute: whether trying again later can help (a missing file: yes; a FIFO: no).

jointembed's *own* files (the home, the bundles directory, the embedded server's data and
socket directories) are guarded the other way round: :func:`dir_problem` says whether a
directory is safe to trust (owner, modes, every parent), and :func:`open_own` /
:func:`read_own` / :func:`write_own` / :func:`replace_own` open files in it without
following a link planted in their place (``O_NOFOLLOW``, then ``fstat``: regular, the
right owner, one link).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePath
from typing import NamedTuple

from .errors import InputError

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")]
#: errno values after which a retry cannot help (the path itself is unusable).
_FINAL_ERRNO = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.ENODEV}


def refuse(message: str, *, retry: bool = False) -> InputError:
    """An :class:`InputError` carrying ``retry`` (may a later attempt succeed?)."""
    err = InputError(message)
    err.retry = retry  # type: ignore[attr-defined]
    return err


#: File system types whose files are kernel interfaces, not data (``/proc/self/mountinfo``).
_PSEUDO_FS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs",
                        "pstore", "bpf", "efivarfs", "fusectl", "binfmt_misc", "devpts", "mqueue", "rpc_pipefs",
                        "nsfs", "autofs", "selinuxfs", "hugetlbfs"})


def _pseudo_devices() -> dict[int, str]:
    """``st_dev`` -> file system type of the mounted pseudo file systems (Linux; else empty).
    Read on each call: mounts change, and a check must not trust a stale list."""
    found: dict[int, str] = {}
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read(1 << 22).decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if not sep or len(parts) < 3 or not rest or rest[0] not in _PSEUDO_FS:
            continue
        try:
            major, minor = (int(x) for x in parts[2].split(":"))
        except ValueError:
            continue
        found[os.makedev(major, minor)] = rest[0]
    for where, fstype in (("/proc", "proc"), ("/sys", "sysfs")):  # even without mountinfo
        try:
            found.setdefault(os.stat(where).st_dev, fstype)
        except OSError:
            pass
    return found


def kind_of(mode: int) -> str:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, ... for ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _named(where: str, path) -> str:
    """``"where: path"``, or just the path when ``where`` already is it (no ``a.jpg: a.jpg: ...``)."""
    try:
        name = os.fsdecode(path)
        if name == str(where):
            return name
        # the caller's own spelling of the same file (a relative path it made absolute)
        same = "\x00" not in str(where) and os.path.isabs(name) and os.path.abspath(str(where)) == name
    except (TypeError, ValueError):  # not a path at all: name both
        same = False
    return str(where) if same else f"{where}: {path}"


def _os_error(where: str, path, e: OSError) -> InputError:
    if isinstance(e, FileNotFoundError):
        return refuse(f"{_named(where, path)}: no such file", retry=True)
    return refuse(f"{_named(where, path)}: cannot read ({e.strerror or e})", retry=e.errno not in _FINAL_ERRNO)


def inside(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute, real paths)."""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives, or a mix of absolute and relative
        return False


def resolve_under(value: str, root: str, where: str = "<image>") -> str:
    """The real path of ``root / value``, refusing every way out of ``root``.

    Refused (not retryable): an absolute path, any ``..`` component (even one that would
    come back: ``..`` after a symlink does not mean what it seems), and a path whose real
    path (symlinks resolved) is outside the root's real path.
    """
    if "\x00" in value:
        raise refuse(f"{where}: path contains a NUL byte")
    if PurePath(value).is_absolute() or value.startswith("~"):
        raise refuse(f"{where}: absolute path {value!r} refused (image root is {root})")
    if ".." in PurePath(value).parts:
        raise refuse(f"{where}: path {value!r} leaves the image root {root} ('..' components are refused)")
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, value))
    if not inside(real_root, full):
        raise refuse(f"{where}: path {value!r} leaves the image root {root}: it resolves to {full} (symlink)")
    return full


def open_regular(path: str | os.PathLike, max_bytes: int | None, where: str = "<file>", *,
                 root: str | None = None):
    """Open a regular file for binary reading (steps 1-4 of the module docstring).

    Args:
        path: the file (symlinks are followed).
        max_bytes: largest size accepted, or None for no cap.
        where: names the item in error messages.
        root: a real directory path the file must be inside, or None.
    Returns:
        A buffered binary file object (close it).
    Raises:
        InputError: missing (retryable), not a regular file, over ``max_bytes``, outside
            ``root``, swapped after the check, unreadable.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):  # an int would be a file descriptor
        raise refuse(f"{where}: expected a path, got {type(path).__name__}")
    try:
        st = os.stat(path)
    except ValueError as e:  # embedded NUL
        raise refuse(f"{where}: invalid path ({e})") from e
    except OSError as e:
        raise _os_error(where, path, e) from e
    if not stat.S_ISREG(st.st_mode):
        raise refuse(f"{_named(where, path)} is {kind_of(st.st_mode)}, not a regular file (refused before opening)")
    pseudo = _pseudo_devices().get(st.st_dev)
    if pseudo:
        raise refuse(f"{_named(where, path)} is a {pseudo} pseudo-file (a kernel interface, not a data file; "
                      "refused before opening)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise refuse(f"{_named(where, path)} is {st.st_size} bytes, over the {max_bytes}-byte limit")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise _os_error(where, path, e) from e
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise refuse(f"{_named(where, path)} changed between its check and its opening "
                         f"(now {kind_of(fst.st_mode)}); refused")
        if max_bytes is not None and fst.st_size > max_bytes:
            raise refuse(f"{_named(where, path)} is {fst.st_size} bytes, over the {max_bytes}-byte limit")
        if root is not None:
            real = _fd_path(fd) or os.path.realpath(path)
            if not inside(os.path.realpath(root), real):
                raise refuse(f"{_named(where, path)} leaves the image root {root}: the opened file is {real}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (Linux ``/proc``), or None where unknown."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("/") and not target.endswith(" (deleted)") else None


def read_regular(path: str | os.PathLike, max_bytes: int, where: str = "<file>", *,
                 root: str | None = None) -> bytes:
    """All bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`).

    Raises:
        InputError: as :func:`open_regular`; also an empty file (retryable: it may be
            being written) and a file that grew past ``max_bytes`` while read.
    """
    with open_regular(path, max_bytes, where, root=root) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise _os_error(where, path, e) from e
        if data is None:  # O_NONBLOCK: a file that would block is not a data file
            raise refuse(f"{where}: {path}: reading it would block (not a data file)")
    if len(data) > max_bytes:
        raise refuse(f"{_named(where, path)} grew over the {max_bytes}-byte limit while being read")
    if not data:
        raise refuse(f"{_named(where, path)}: empty file (0 bytes)", retry=True)
    return data


_NO_FOLLOW_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                    | getattr(os, "O_CLOEXEC", 0))


class _Refusals(NamedTuple):
    """How :func:`_open_no_follow` words its refusals: ``verb`` in "cannot <verb> (reason)",
    and the tail after "is a symlink", after "is a FIFO (named pipe), not a regular file"
    and after "is <kind>, not a regular file"."""
    verb: str
    symlink: str
    fifo: str
    not_regular: str


#: an output the user named (:func:`write_regular`)
_WRITE_REFUSALS = _Refusals("write", "; refused (write to the file itself)", "", " (refused before writing)")
#: one of jointembed's own files (:func:`open_own`)
_OWN_REFUSALS = _Refusals("open", " (planted?); refused: remove it", "; refused: remove it", "; refused: remove it")


def _open_no_follow(path: str | os.PathLike, flags: int, mode: int, name: str, says: _Refusals, *,
                    missing_raises: bool = False) -> tuple[int, os.stat_result]:
    """``os.open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, mode)``, then
    ``fstat``: ``(fd, stat)`` of a regular file, the descriptor still non-blocking. A symlink
    as the last component fails the open (ELOOP), a FIFO without a reader fails at once
    (ENXIO) instead of blocking, and anything else that is not a regular file (a FIFO with a
    reader, a device, a directory) is refused after ``fstat``, before any read or write.

    Args:
        name: the file as the messages name it (``"where: path"``).
        says: the wording of the refusals (:class:`_Refusals`).
        missing_raises: a missing file raises ``FileNotFoundError`` instead of an InputError.
    Raises:
        InputError: a symlink, a FIFO, not a regular file, or the operating system's reason.
        FileNotFoundError: with ``missing_raises``, when ``path`` does not exist.
    """
    try:
        fd = os.open(path, flags | _NO_FOLLOW_FLAGS, mode)
    except FileNotFoundError as e:
        if missing_raises:
            raise
        raise refuse(f"{name}: cannot {says.verb} ({e.strerror or e})") from e
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise refuse(f"{name} is a symlink{says.symlink}") from e
        if e.errno == errno.ENXIO:
            raise refuse(f"{name} is a FIFO (named pipe), not a regular file{says.fifo}") from e
        raise refuse(f"{name}: cannot {says.verb} ({e.strerror or e})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"{name} is {kind_of(st.st_mode)}, not a regular file{says.not_regular}")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def write_regular(path: str | os.PathLike, data: bytes, where: str = "<output>") -> None:
    """Create or overwrite the regular file ``path`` with ``data`` (an output the user named,
    e.g. ``--html``), never writing through anything else.

    ``os.open`` with ``O_NOFOLLOW | O_NONBLOCK``: a symlink as the last path component is
    refused (a link planted in a shared directory cannot redirect the write), and a FIFO
    without a reader fails at once instead of blocking forever; a FIFO with a reader, a
    device or a directory is refused (``fstat``) before anything is written or truncated.

    Raises:
        InputError: ``path`` is a symlink, a FIFO, a device, a socket or a directory, or
            cannot be written (the reason from the operating system).
    """
    fd, _ = _open_no_follow(path, os.O_WRONLY | os.O_CREAT, 0o666, _named(where, path), _WRITE_REFUSALS)
    try:
        os.set_blocking(fd, True)
        _overwrite(fd, data)
    finally:
        os.close(fd)


def _overwrite(fd: int, data: bytes) -> None:
    """Truncate the open (blocking) file ``fd`` and write all of ``data`` (partial writes resumed)."""
    os.ftruncate(fd, 0)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def display(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 shown as ``\\xNN``."""
    raw = os.fsencode(Path(path))
    return raw.decode("utf-8", "backslashreplace")


# -- directories and files jointembed keeps for itself (home, bundles, server data) --------
def _private_group(gid: int, owner: int) -> bool:
    """Whether group ``gid`` holds nobody but ``owner`` (a user-private group, umask 002)."""
    import grp
    import pwd

    try:
        g = grp.getgrgid(gid)
        u = pwd.getpwuid(owner)
    except KeyError:
        return False
    return u.pw_gid == gid and set(g.gr_mem) <= {u.pw_name}


def _writable_by_others(st: os.stat_result) -> str | None:
    """Why others than the owner may write the directory of ``st``, or None."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return f"mode {mode:04o} lets every user write in it"
    if mode & 0o020 and not _private_group(st.st_gid, st.st_uid):
        return f"mode {mode:04o} lets group {st.st_gid} write in it"
    return None


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def dir_problem(path: str | os.PathLike, owners: tuple[int, ...]) -> str | None:
    """Why the directory ``path`` cannot be trusted with jointembed's own files, or None.

    Checked (on the real path, before anything in it is read): every existing ancestor is
    owned by root or one of ``owners`` and writable by no one else unless it has the
    sticky bit (``/tmp`` is fine: nobody can rename or delete our entries in it); ``path``
    itself, if it exists, is a directory owned by one of ``owners`` that neither group
    (unless a user-private group) nor others may write. A missing ``path`` (or missing
    ancestors) is fine: it will be created by us.

    Returns:
        e.g. ``"it is owned by alice (uid 1001), not root (uid 0)"`` or
        ``"its parent /shared has mode 0777 (every user may replace what is inside)"``.
    """
    real = Path(os.path.realpath(path))
    trusted = {0, *owners}
    for d in [*reversed(real.parents)]:
        try:
            st = os.stat(d)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"its parent {d} cannot be examined ({e.strerror or e})"
        if st.st_uid not in trusted:
            return f"its parent {d} belongs to {_owner_name(st.st_uid)}, who may replace what is inside"
        why = _writable_by_others(st)
        if why and not st.st_mode & stat.S_ISVTX:
            return f"its parent {d} is not safe: {why} (and no sticky bit), so others may replace what is inside"
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"it cannot be examined ({e.strerror or e})"
    if not stat.S_ISDIR(st.st_mode):
        return f"it is {kind_of(st.st_mode)}, not a directory"
    if st.st_uid not in owners:
        want = " or ".join(_owner_name(o) for o in owners)
        return f"it belongs to {_owner_name(st.st_uid)}, not {want}"
    why = _writable_by_others(st)
    if why:
        return why
    return None




def open_own(path: str | os.PathLike, flags: int, owners: tuple[int, ...], where: str, *,
             mode: int = 0o600, private: bool = False) -> int:
    """Open one of jointembed's own files (in a directory that :func:`dir_problem` passed)
    without following a link planted in its place; return the descriptor (blocking).

    ``os.open`` with ``O_NOFOLLOW | O_NONBLOCK`` (a symlink as the last component fails,
    a FIFO cannot block), then ``fstat``: a regular file, owned by one of ``owners``, with
    a single link (a hard link to another file is refused), and with ``private`` no
    group/other permission bits. Nothing is read, written or truncated before that.

    Raises:
        FileNotFoundError: missing (and ``flags`` has no ``O_CREAT``).
        InputError: a symlink, not a regular file, foreign owner, hard-linked, too open.
    """
    fd, st = _open_no_follow(path, flags, mode, f"{where}: {path}", _OWN_REFUSALS, missing_raises=True)
    try:
        problem = None
        if st.st_uid not in owners:
            problem = f"belongs to {_owner_name(st.st_uid)}, not {' or '.join(_owner_name(o) for o in owners)}"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links (a link to another file?)"
        elif private and st.st_mode & 0o077:
            problem = f"has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600"
        if problem:
            raise refuse(f"{where}: {path} {problem}; refused: remove it")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_own(path: str | os.PathLike, max_bytes: int, owners: tuple[int, ...], where: str, *,
             tail: bool = False, private: bool = False) -> bytes | None:
    """The bytes of one of jointembed's own files (:func:`open_own`), or None when missing.

    At most ``max_bytes``: the first ones, or with ``tail`` the last ones (a log).

    Raises:
        InputError: as :func:`open_own`; also a file over ``max_bytes`` (without ``tail``).
    """
    try:
        fd = open_own(path, os.O_RDONLY, owners, where, private=private)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if tail:
            f.seek(max(0, os.fstat(fd).st_size - max_bytes))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        if tail:
            return data[-max_bytes:]
        raise refuse(f"{where}: {path} is over {max_bytes} bytes; refused")
    return data


def write_own(path: str | os.PathLike, data: bytes, owners: tuple[int, ...], where: str, *,
              create: bool = True, chown: tuple[int, int] | None = None) -> None:
    """Overwrite (or create, 0600) one of jointembed's own files in place (:func:`open_own`;
    a file of this user is accepted besides ``owners``). A file of this user is given to
    ``chown`` = ``(uid, gid)`` if set (the server's OS user, when running as root).

    Raises:
        FileNotFoundError: missing and not ``create``.
        InputError: as :func:`open_own`.
    """
    fd = open_own(path, os.O_WRONLY | (os.O_CREAT if create else 0), (*owners, os.geteuid()), where)
    try:
        if chown is not None and os.fstat(fd).st_uid != chown[0]:
            os.fchown(fd, *chown)
        _overwrite(fd, data)
    finally:
        os.close(fd)


def replace_own(path: str | os.PathLike, data: bytes, where: str) -> None:
    """Replace ``path`` atomically with a new 0600 file of this user holding ``data``
    (``O_EXCL`` temp file, then ``rename``, which replaces a planted link, not its target)."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crashed process with our pid (unlink never follows links)
    fd = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (os.geteuid(),), where)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def is_own_file(path: str | os.PathLike, owners: tuple[int, ...]) -> bool:
    """Whether ``path`` is a regular file (not a link) owned by one of ``owners``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid in owners
