"""Bounded image items: read, hash and decode each one in a decoder process with a deadline.

Every runtime decode goes through here: ``index image``, ``sync``, ``worker``, the Ray
backfill (:mod:`jointembed_pg.ingest.sandbox` re-exports this module), and the query image
of ``search image`` / ``Collection.search(Path | bytes)`` / ``Bundle.encode_images`` and
the thumbnails of the ``--html`` gallery.

An image item is untrusted: its file may be on a hung mount, its URL may drip bytes, its
header may lie about its size, and a decoder bug may crash or hang on it. So batch jobs
(``index image``, ``sync``, ``worker``, the Ray backfill) never decode in their own
process. :class:`ImageLoader` keeps a few long-lived decoder processes
(``python -m jointembed_pg.ingest.sandbox``, which imports the image sources and runs
:func:`serve`); each item goes to one of them and the calling
thread waits for the answer in short slices:

* **time**: an item that runs over ``Limits.timeout_s`` (read + hash + decode) is
  failed with ``timed out`` and its decoder process is killed and replaced;
* **memory**: a decoder process's resident memory stays within ``Limits.memory_mb``
  (``JOINTEMBED_DECODE_MEMORY_MB``, default 512 MiB): the memory an image needs is
  estimated from its header and refused over the limit before decoding
  (:func:`jointembed_pg.model.preprocess.decode_bytes`), and the process caps its own
  address space (``RLIMIT_AS``) at its start-up size plus ``memory_mb`` less what is
  already resident, so its peak RSS cannot pass ``memory_mb`` and an allocation beyond
  fails the item (``out of memory``); each answer reports the process's peak RSS
  (``VmHWM``: :attr:`ImageLoader.peak_rss`);
* **crashes**: a decoder process that dies (a signal, the OOM killer) fails the item
  with ``decoder process died`` and is replaced; the caller goes on;
* **stop requests**: ``stop()`` is polled while waiting (SIGTERM of a worker, an
  interrupted ``index``), and :meth:`ImageLoader.close` kills the decoders, so a waiting
  caller returns within a fraction of a second with :class:`Interrupted` (the decoder of
  an interrupted item is killed and replaced).

:func:`shared_loader` gives one loader per (spec, limits) for the whole process, so
repeated ``index_images`` / ``sync_table`` calls do not start new decoder processes.

Messages to a decoder are pickled (the parent is trusted); answers are a JSON header plus
raw float32 bytes, never pickle, so a decoder subverted by a hostile file cannot run code
in its parent. A decoder exits when its parent does (EOF on its stdin) and, if stuck in an item, by its
own alarm a few seconds after the item's deadline. (``PR_SET_PDEATHSIG`` is not used: it
fires when the spawning *thread* ends, and decoders outlive the threads that start them.)
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, JointEmbedError
from ..limits import Limits

_HEADER = struct.Struct(">Q")
#: Longest answer header accepted from a decoder process (bytes).
_MAX_HEADER = 64 * 1024
#: Seconds between checks of ``stop()`` and of the deadline while waiting.
_SLICE_S = 0.1
#: Seconds a new decoder process may take to start and report ready.
_START_TIMEOUT_S = 60.0


class Interrupted(JointEmbedError):
    """A stop was requested (or the loader closed) while an item was being loaded."""


@dataclass(frozen=True)
class ImageJob:
    """One image item to load.

    Exactly one of ``path`` (a local file: ``index image``, ``search image``), ``data``
    (encoded bytes: a query image) and ``source`` (an attached table's
    :class:`~jointembed_pg.ingest.sources.ImageSource` with its column ``value``) is set.
    ``thumbnail``: answer a JPEG thumbnail of that many pixels (longer side) instead of
    the encoder's input (the ``--html`` gallery).

    Attributes:
        where: names the item in error messages.
        known: content hash already stored for the item; when the read bytes hash to it,
            nothing is decoded (:attr:`Loaded.pixels` is None).
    """

    where: str
    path: str | None = None
    source: object | None = None
    value: object | None = None
    known: str | None = None
    thumbnail: int | None = None
    data: bytes | None = None


def bytes_job(data: bytes, where: str = "<bytes>", **kw) -> ImageJob:
    """An :class:`ImageJob` for encoded image bytes held by the caller (a query image)."""
    return ImageJob(where=where, data=bytes(data), **kw)


@dataclass(frozen=True)
class Loaded:
    """A loaded item: ``digest`` (hex sha256 of the bytes) and ``pixels``
    (``(3, S, S) float32``, or None when ``digest`` equals the job's ``known`` or for a
    thumbnail job); ``jpeg``: the JPEG thumbnail of a job with ``thumbnail`` set."""

    digest: str
    pixels: np.ndarray | None
    jpeg: bytes | None = None


def load_item(job: ImageJob, spec, limits: Limits) -> Loaded:
    """Read, hash and decode one item in this process (what a decoder process runs).

    Raises:
        InputError: the item cannot be read or decoded (``retry`` attribute: may a later
            attempt succeed).
    """
    from .. import files
    from . import preprocess

    if job.path is not None:
        data = files.read_regular(job.path, limits.max_file_bytes, job.where)
    elif job.data is not None:
        data = job.data
        if not data:
            raise files.refuse(f"{job.where}: empty image data (0 bytes)")
        if len(data) > limits.max_file_bytes:
            raise files.refuse(f"{job.where}: {len(data)} bytes, over the {limits.max_file_bytes}-byte limit")
    else:
        data = job.source.read(job.value, job.where, limits.max_file_bytes,  # type: ignore[union-attr]
                               allow_hosts=limits.url_allow_hosts)
    digest = hashlib.sha256(data).hexdigest()
    if job.known is not None and digest == job.known:
        return Loaded(digest, None)
    try:
        if job.thumbnail:
            return Loaded(digest, None, _thumbnail(data, job, limits))
        return Loaded(digest, preprocess.load(data, spec, name=job.where, limits=limits))
    except InputError as e:
        # a file or URL may be replaced by a good image later; bytea changes only by UPDATE
        e.retry = getattr(job.source, "kind", "path") != "bytea"  # type: ignore[attr-defined]
        raise


#: Largest JPEG thumbnail accepted back from a decoder process, bytes.
_MAX_THUMBNAIL_BYTES = 4 << 20


def _thumbnail(data: bytes, job: ImageJob, limits: Limits) -> bytes:
    """JPEG bytes of a ``job.thumbnail``-pixel thumbnail (longer side) of the image ``data``."""
    import io

    from . import preprocess

    im = preprocess.decode(data, name=job.where, limits=limits)
    im.thumbnail((int(job.thumbnail), int(job.thumbnail)))  # type: ignore[arg-type]
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class ImageLoader:
    """Loads image items in up to ``workers`` decoder processes (see the module docstring).

    Thread-safe: each calling thread uses one decoder process at a time, so ``workers``
    threads calling :meth:`load` run in parallel. Processes start on first use.

    Args:
        spec: the bundle's :class:`~jointembed_pg.model.preprocess.ImageSpec`.
        limits: per-item bounds (default :meth:`Limits.from_env`).
        workers: decoder processes.
    """

    def __init__(self, spec, limits: Limits | None = None, workers: int = 2):
        self.spec, self.limits, self.workers = spec, limits or Limits.from_env(), max(1, int(workers))
        self._idle: queue.LifoQueue[_Decoder] = queue.LifoQueue()
        self._live: set[_Decoder] = set()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.workers)
        self._closed = False
        self._pid = os.getpid()
        #: Highest peak RSS (``VmHWM``) any decoder process of this loader reported, bytes.
        self.peak_rss = 0

    def grow(self, workers: int) -> None:
        """Allow up to ``workers`` decoder processes (never fewer than now)."""
        with self._lock:
            for _ in range(int(workers) - self.workers):
                self._slots.release()
            self.workers = max(self.workers, int(workers))

    def __enter__(self) -> "ImageLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, job: ImageJob, stop: Callable[[], bool] | None = None) -> Loaded:
        """Load one item within the limits.

        Raises:
            InputError: the item failed (unreadable, undecodable, over a limit, timed out,
                or its decoder process died); ``retry`` says whether a later attempt may help.
            Interrupted: ``stop()`` became true or the loader was closed meanwhile.
        """
        stop = stop or (lambda: False)
        self._slots.acquire()
        try:
            dec = self._checkout()
            try:
                return dec.call(job, self.limits.timeout_s, lambda: stop() or self._closed)
            finally:
                self.peak_rss = max(self.peak_rss, dec.peak_rss)
                self._checkin(dec)
        finally:
            self._slots.release()

    def _checkout(self) -> "_Decoder":
        if self._closed:
            raise Interrupted("loader closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            dec = _Decoder(self.spec, self.limits)
            with self._lock:
                self._live.add(dec)
            return dec

    def _checkin(self, dec: "_Decoder") -> None:
        if dec.alive and not self._closed:
            self._idle.put(dec)
        else:
            dec.kill()
            with self._lock:
                self._live.discard(dec)

    def pids(self) -> list[int]:
        """Process ids of the live decoder processes (for tests and monitoring)."""
        with self._lock:
            return [d.proc.pid for d in self._live if d.alive]

    def close(self) -> None:
        """Kill every decoder process; loads in progress raise :class:`Interrupted`."""
        self._closed = True
        with self._lock:
            live, self._live = list(self._live), set()
        for dec in live:
            dec.kill()


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_loader(spec, limits: Limits | None = None, workers: int = 2) -> ImageLoader:
    """The process-wide :class:`ImageLoader` of ``(spec, limits)`` (created on first use,
    grown to ``workers``, closed at exit; a forked child gets its own). Do not close it;
    interrupt a caller's loads with their ``stop`` instead."""
    limits = limits or Limits.from_env()
    key = (spec, limits)
    with _SHARED_LOCK:
        loader = _SHARED.get(key)
        if loader is None or loader._closed or loader._pid != os.getpid():
            loader = _SHARED[key] = ImageLoader(spec, limits, workers)
        elif loader.workers < workers:
            loader.grow(workers)
        return loader


@atexit.register
def _close_shared() -> None:
    with _SHARED_LOCK:
        loaders = [ld for ld in _SHARED.values() if ld._pid == os.getpid()]
        _SHARED.clear()
    for ld in loaders:
        ld.close()


def _printable(text: object, limit: int = 4000) -> str:
    """``text`` on one line, safe to print and store (as :func:`jointembed_pg.ingest.readers.printable`)."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = f"{s[:limit // 2]}...{s[-(limit // 2):]}"
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class _Decoder:
    """One decoder process and its pipes (used by one thread at a time)."""

    def __init__(self, spec, limits: Limits):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "jointembed_pg.ingest.sandbox"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
                                     start_new_session=True)
        self.alive = True
        self._ready = False
        self._init = pickle.dumps((spec, limits))
        self.peak_rss = 0

    def kill(self) -> None:
        self.alive = False
        try:
            self.proc.kill()
        except OSError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            pass

    def call(self, job: ImageJob, timeout_s: float, stop: Callable[[], bool]) -> Loaded:
        try:
            if not self._ready:
                self._send(self._init)
                self._recv(time.monotonic() + _START_TIMEOUT_S, stop, job.where, starting=True)
                self._ready = True
            self._send(pickle.dumps(job))
            head, payload = self._recv(time.monotonic() + timeout_s, stop, job.where, timeout_s=timeout_s)
        except (OSError, ValueError, EOFError, struct.error) as e:  # pipe closed, bad answer
            if stop():
                self.kill()
                raise Interrupted("stopped while loading an image") from e
            raise self._died(job.where) from e
        try:
            self.peak_rss = max(self.peak_rss, int(head.get("peak_rss", 0)))
        except (TypeError, ValueError):
            pass
        if not head.get("ok"):
            err = InputError(_printable(head.get("error", "decoder failed")))
            err.retry = bool(head.get("retry", True))  # type: ignore[attr-defined]
            raise err
        digest = str(head.get("digest", ""))
        if len(digest) != 64:
            raise self._died(job.where)
        if head.get("jpeg"):
            if not job.thumbnail or len(payload) > _MAX_THUMBNAIL_BYTES or not payload.startswith(b"\xff\xd8"):
                raise self._died(job.where)
            return Loaded(digest, None, payload)
        if head.get("shape") is None:
            return Loaded(digest, None)
        shape = tuple(int(x) for x in head["shape"])
        if len(shape) != 3 or int(np.prod(shape)) * 4 != len(payload):
            self.kill()
            raise self._died(job.where)
        return Loaded(digest, np.frombuffer(payload, np.float32).reshape(shape).copy())

    def _died(self, where: str) -> InputError:
        self.kill()
        rc = self.proc.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        err = InputError(f"{where}: the decoder process died on this item ({how}); item skipped")
        err.retry = False  # type: ignore[attr-defined]
        return err

    def _send(self, data: bytes) -> None:
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def _recv(self, deadline: float, stop, where: str, *, timeout_s: float = 0.0,
              starting: bool = False) -> tuple[dict, bytes]:
        n = _HEADER.unpack(self._read(_HEADER.size, deadline, stop, where, timeout_s, starting))[0]
        hlen = _HEADER.unpack(self._read(_HEADER.size, deadline, stop, where, timeout_s, starting))[0]
        if hlen > min(n, _MAX_HEADER):
            raise ValueError("bad answer header")
        body = self._read(n, deadline, stop, where, timeout_s, starting)
        return json.loads(body[:hlen]), body[hlen:]

    def _read(self, n: int, deadline: float, stop, where: str, timeout_s: float, starting: bool) -> bytes:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        chunks, got = [], 0
        while got < n:
            if stop():
                self.kill()
                raise Interrupted("stopped while loading an image")
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                if starting:
                    raise JointEmbedError(f"a decoder process did not start within {_START_TIMEOUT_S:g} s")
                err = InputError(f"{where}: timed out after {timeout_s:g} s reading and decoding the image "
                                 "(limit JOINTEMBED_ITEM_TIMEOUT_S); its decoder process was stopped")
                err.retry = True  # type: ignore[attr-defined]
                raise err
            ready, _, _ = select.select([fd], [], [], min(_SLICE_S, left))
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError("decoder process closed its output")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


# -- the decoder process ---------------------------------------------------------------

def _status(field: str) -> int:
    """A size field of ``/proc/self/status`` (``VmSize``, ``VmRSS``, ``VmHWM``) in bytes
    (Linux), or 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return 0


#: MiB of the memory limit kept back for pages that become resident without growing the
#: address space (shared-library code first touched while decoding).
_RSS_MARGIN_MB = 16


def _cap_memory(memory_mb: int) -> None:
    """Cap this process's address space so that its resident memory cannot pass
    ``memory_mb``: every new resident page needs new address space, so the cap is the
    current address space plus ``memory_mb`` less what is already resident (and a margin)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    base, rss = _status("VmSize"), _status("VmRSS")
    if not base:
        return
    limit = base + max(0, (int(memory_mb) - _RSS_MARGIN_MB) * 1024 * 1024 - rss)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    global _AS_CAP
    _AS_CAP = limit


#: The address-space cap set by :func:`_cap_memory`, bytes (0: none).
_AS_CAP = 0


def _hit_cap() -> bool:
    """Whether this process's address space came within 16 MiB of its cap (an allocation
    then failed: decoders report that as "could not create decoder object" and the like)."""
    return bool(_AS_CAP) and _status("VmPeak") >= _AS_CAP - (16 << 20)


def _read_msg(stream) -> bytes | None:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    body = stream.read(n)
    return body if len(body) == n else None


def _answer(stream, head: dict, payload: bytes = b"") -> None:
    h = json.dumps(head, ensure_ascii=True).encode()
    stream.write(_HEADER.pack(len(h) + len(payload)) + _HEADER.pack(len(h)) + h + payload)
    stream.flush()


def _serve(stdin, stdout) -> None:
    """The decoder process's loop (the caller has imported what the jobs' sources need)."""
    import io  # noqa: F401  (imports done before the memory cap)

    from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin  # noqa: F401

    from . import preprocess  # noqa: F401

    Image.init()  # every format plugin imported before the cap

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    init = _read_msg(stdin)
    if init is None:
        return
    spec, limits = pickle.loads(init)
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # also checked for frames inside ICO/ICNS containers
    _cap_memory(limits.memory_mb)
    _answer(stdout, {"ok": True, "ready": True})
    while True:
        msg = _read_msg(stdin)
        if msg is None:
            return
        job = pickle.loads(msg)
        signal.setitimer(signal.ITIMER_REAL, float(limits.timeout_s) + 5.0)  # SIGALRM ends a stuck decoder
        try:
            loaded = load_item(job, spec, limits)
        except InputError as e:
            error = str(e)
            if _hit_cap():
                error += (f" (the decoder process reached its {limits.memory_mb} MiB memory limit, "
                          "JOINTEMBED_DECODE_MEMORY_MB)")
            head, payload = {"ok": False, "error": error, "retry": bool(getattr(e, "retry", True))}, b""
        except MemoryError:
            head, payload = {"ok": False, "error": f"{job.where}: out of memory while reading or decoding "
                             f"(decoder limit {limits.memory_mb} MiB, JOINTEMBED_DECODE_MEMORY_MB)",
                             "retry": False}, b""
        except Exception as e:  # noqa: BLE001 - any bug on a hostile item fails that item only
            reason = " ".join(str(e).split())[:300]
            head, payload = {"ok": False, "error": f"{job.where}: {type(e).__name__}: {reason}", "retry": False}, b""
        else:
            shape = None if loaded.pixels is None else list(loaded.pixels.shape)
            payload = b"" if loaded.pixels is None else np.ascontiguousarray(loaded.pixels, np.float32).tobytes()
            head = {"ok": True, "digest": loaded.digest, "shape": shape}
            if loaded.jpeg is not None:
                head, payload = {"ok": True, "digest": loaded.digest, "jpeg": True}, loaded.jpeg
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        head["peak_rss"] = _status("VmHWM")
        _answer(stdout, head, payload)


def serve() -> None:
    """Run as a decoder process: answers on a duplicate of fd 1, stray prints to nowhere."""
    out = os.fdopen(os.dup(1), "wb")  # answers go here; stray prints to fd 1 go nowhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    _serve(sys.stdin.buffer, out)
