"""Image sources of attached tables: where a row's image bytes come from.

An attached table names its images in one column, read in one of three ways
(``jointembed attach --image-source``):

* ``path``: a file path, read only if it is a regular file (no device, FIFO, socket or
  directory) of at most the file-size limit (:mod:`jointembed_pg.files`). With an image
  root (``--image-root``) a path must be relative, without ``..``, and its real path
  (every symlink resolved) must stay inside the root's real path; absolute paths are
  refused. Without a root, paths are used as written (relative to the worker's current
  directory) and may name any regular file the worker can read.
* ``url``: an ``http://`` or ``https://`` URL fetched under a timeout, a byte limit and a
  bounded number of redirects. The URL and every redirect hop are checked against
  server-side request forgery (:mod:`jointembed_pg.urls`): no credentials, ports
  80/443, the host resolved once and refused if any address is loopback, private,
  link-local, reserved or otherwise not public, and the connection pinned to the checked
  addresses. Trusted internal servers are named by an allow list (``allow_hosts``:
  ``--allow-url-host``, ``$JOINTEMBED_URL_ALLOW_HOSTS``, :attr:`Limits.url_allow_hosts`).
  Other schemes (``file:``, ``ftp:``, ``data:``) are refused.
* ``bytea``: the column holds the encoded image itself.

Every failure is an :class:`~jointembed_pg.errors.InputError` whose message names the
value; :attr:`InputError.retry` (set here as an attribute) says whether trying again
later can help (a missing file or a network error can; a NULL value cannot).
"""
from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import urls
from .. import files
from ..errors import InputError
from ..files import refuse as _error
from ..limits import MAX_FILE_BYTES
from .readers import printable

SOURCES = ("path", "url", "bytea")

#: Seconds to wait for a URL's connection and for each read.
URL_TIMEOUT_S = 10.0
#: Largest image accepted from a URL, in bytes.
URL_MAX_BYTES = 20 * 1024 * 1024
#: Redirects followed per URL.
URL_MAX_REDIRECTS = 3
_USER_AGENT = "jointembed-pg (image sync)"


@dataclass(frozen=True)
class ImageSource:
    """How to read an attached table's image column.

    Attributes:
        kind: ``"path"``, ``"url"`` or ``"bytea"``.
        root: base directory of relative paths (``kind == "path"``), or None.
        timeout_s: URL connect/read timeout, seconds.
        max_bytes: largest image accepted, bytes.
        max_redirects: redirects followed per URL.
        allow_hosts: trusted ``HOST`` / ``HOST:PORT`` entries that URLs may reach although
            they are not public (:func:`jointembed_pg.urls.parse_allow`).
    """

    kind: str = "path"
    root: str | None = None
    timeout_s: float = URL_TIMEOUT_S
    max_bytes: int = URL_MAX_BYTES
    max_redirects: int = URL_MAX_REDIRECTS
    allow_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in SOURCES:
            raise InputError(f"image source must be one of {', '.join(SOURCES)}, got {self.kind!r}")
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        urls.parse_allow(self.allow_hosts)  # a bad entry fails here, not per row

    def read(self, value: str | bytes | memoryview | None, where: str = "<image>",
             max_bytes: int = MAX_FILE_BYTES, allow_hosts: Iterable[str] = ()) -> bytes:
        """The encoded image bytes of one column value.

        Args:
            value: the column value (path / URL text, or bytes for ``bytea``).
            where: names the row in error messages, e.g. ``"photos[42].image_path"``.
            max_bytes: the file-size limit (``Limits.max_file_bytes``); the smaller of it
                and :attr:`max_bytes` applies.
            allow_hosts: more trusted URL hosts (``Limits.url_allow_hosts``), added to
                :attr:`allow_hosts`.
        Raises:
            InputError: NULL or empty value, missing/unreadable/oversized file, a path
                outside the root, a refused URL (scheme, credentials, port, a non-public
                address: not retryable), an HTTP or network error.
        """
        if value is None:
            raise _error(f"{where}: image is NULL", retry=False)
        if self.kind == "bytea":
            if isinstance(value, str):
                raise _error(f"{where}: expected bytea, got text", retry=False)
            data = bytes(value)
            if not data:
                raise _error(f"{where}: empty image data (0 bytes)", retry=False)
            cap = min(self.max_bytes, max_bytes)
            if len(data) > cap:
                raise _error(f"{where}: {len(data)} bytes, over the {cap}-byte limit", retry=False)
            return data
        if not isinstance(value, str):
            raise _error(f"{where}: expected a {self.kind}, got {type(value).__name__}", retry=False)
        if not value.strip():
            raise _error(f"{where}: empty {self.kind}", retry=False)
        if "\x00" in value:
            raise _error(f"{where}: {self.kind} contains a NUL byte", retry=False)
        if self.kind == "url":
            return fetch_url(value, timeout_s=self.timeout_s, max_bytes=min(self.max_bytes, max_bytes),
                             max_redirects=self.max_redirects, where=where,
                             allow_hosts=(*self.allow_hosts, *allow_hosts))
        cap = min(self.max_bytes, max_bytes)
        return files.read_regular(resolve_path(value, self.root, where), cap, where, root=self.root)


def is_retryable(err: BaseException) -> bool:
    """Whether a failed item may succeed later (default True for errors not from here)."""
    return bool(getattr(err, "retry", True))


def resolve_path(value: str, root: str | None, where: str = "<image>") -> Path:
    """The file a path value names: the real path of ``root / value``, refusing escapes.

    Raises:
        InputError: with a root set, ``value`` is absolute, has a ``..`` component, or
            resolves (symlinks included) outside the root's real path (not retryable).
            :func:`jointembed_pg.files.open_regular` checks the opened file again.
    """
    if root is None:
        return Path(value).expanduser()
    return Path(files.resolve_under(value, root, where))


def read_file(path: Path, max_bytes: int, where: str = "<image>") -> bytes:
    """Bytes of a regular image file of at most ``max_bytes`` (:func:`files.read_regular`)."""
    return files.read_regular(path, max_bytes, where)


_REDIRECTS = (301, 302, 303, 307, 308)


def fetch_url(url: str, *, timeout_s: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES,
              max_redirects: int = URL_MAX_REDIRECTS, where: str = "<image>",
              allow_hosts: Iterable[str] = ()) -> bytes:
    """GET an http(s) URL and return its body (at most ``max_bytes``), safe against SSRF.

    The URL and every redirect hop pass :func:`jointembed_pg.urls.check` (scheme,
    no credentials, port, host syntax; the host resolved once and refused if any address
    is not public, unless ``allow_hosts`` names it); the connection goes to exactly the
    checked addresses. Redirects are followed here, not by :mod:`urllib`. No proxy from
    the environment is used (the address check needs a direct connection).

    Args:
        allow_hosts: trusted ``HOST`` / ``HOST:PORT`` entries (:func:`urls.parse_allow`).
    Raises:
        InputError: a refused URL or redirect (not retryable), more than ``max_redirects``
            redirects (not retryable), an HTTP error status (4xx not retryable except
            408/429; 5xx retryable), an unresolvable host, a timeout or network error
            (retryable), a body over ``max_bytes`` (not retryable). Messages never show
            user-info or the query string.
    """
    allow = urls.parse_allow(allow_hosts)
    current, what = url, "URL"
    for hop in range(max_redirects + 1):
        target = urls.check(current, allow, where, what)
        current = current.strip(" \t\r\n\f\v")  # as checked: the base of a relative redirect
        status, reason, location, data = _get(target, timeout_s, max_bytes, where)
        if status in _REDIRECTS and location is not None:
            if hop == max_redirects:
                raise _error(f"{where}: {target.shown}: HTTP {status}: more than {max_redirects} redirects",
                             retry=False)
            try:
                current = urllib.parse.urljoin(current, location)
            except ValueError:
                raise _error(f"{where}: {target.shown}: HTTP {status} to an invalid URL", retry=False) from None
            what = f"redirect {hop + 1} (HTTP {status} from {target.shown}) to"
            continue
        if not 200 <= status < 300:
            retry = status >= 500 or status in (408, 429)
            raise _error(f"{where}: {target.shown}: HTTP {status} {reason}".rstrip(), retry=retry)
        if len(data) > max_bytes:
            raise _error(f"{where}: {target.shown} is over the {max_bytes}-byte limit", retry=False)
        if not data:
            raise _error(f"{where}: {target.shown}: empty response", retry=True)
        return data
    raise AssertionError("unreachable")


def _get(target: urls.Target, timeout_s: float, max_bytes: int, where: str
         ) -> tuple[int, str, str | None, bytes]:
    """One GET on a pinned connection: ``(status, reason, Location or None, body)``; the
    body is read only for a 2xx status, at most ``max_bytes + 1`` bytes."""
    conn = urls.connection(target, timeout_s)
    try:
        conn.request("GET", target.request_path, headers={"User-Agent": _USER_AGENT, "Accept": "image/*, */*;q=0.5",
                                                          "Connection": "close"})
        resp = conn.getresponse()
        status, reason = resp.status, printable(resp.reason or "", 100)
        location = resp.getheader("Location")
        data = b""
        if 200 <= status < 300:
            length = resp.getheader("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise _error(f"{where}: {target.shown} is {length} bytes, over the {max_bytes}-byte limit",
                             retry=False)
            data = resp.read(max_bytes + 1)
        return status, reason, location, data
    except InputError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as e:  # timeouts, resets, TLS, bad answers
        raise _error(f"{where}: {target.shown}: {printable(e, 200) or type(e).__name__}", retry=True) from e
    finally:
        conn.close()
