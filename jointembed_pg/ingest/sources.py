"""Image sources of attached tables: where a row's image bytes come from.

An attached table names its images in one column, read in one of three ways
(``jointembed attach --image-source``):

* ``path``: a file path, read only if it is a regular file (no device, FIFO, socket or
  directory) of at most the file-size limit (:mod:`jointembed_pg.files`). With an image
  root (``--image-root``) a path must be relative, without ``..``, and its real path
  (every symlink resolved) must stay inside the root's real path; absolute paths are
  refused. Without a root, paths are used as written (relative to the worker's current
  directory) and may name any regular file the worker can read.
* ``url``: an ``http://`` or ``https://`` URL fetched with :mod:`urllib` under a timeout,
  a byte limit and a bounded number of redirects (each redirect must stay http/https).
  Other schemes (``file:``, ``ftp:``, ``data:``) are refused.
* ``bytea``: the column holds the encoded image itself.

Every failure is an :class:`~jointembed_pg.errors.InputError` whose message names the
value; :attr:`InputError.retry` (set here as an attribute) says whether trying again
later can help (a missing file or a network error can; a NULL value cannot).
"""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import InputError
from ..files import refuse as _error
from ..limits import MAX_FILE_BYTES

SOURCES = ("path", "url", "bytea")

#: Seconds to wait for a URL's connection and for each read.
URL_TIMEOUT_S = 10.0
#: Largest image accepted from a URL, in bytes.
URL_MAX_BYTES = 20 * 1024 * 1024
#: Redirects followed per URL.
URL_MAX_REDIRECTS = 3
_URL_SCHEMES = ("http", "https")
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
    """

    kind: str = "path"
    root: str | None = None
    timeout_s: float = URL_TIMEOUT_S
    max_bytes: int = URL_MAX_BYTES
    max_redirects: int = URL_MAX_REDIRECTS

    def __post_init__(self):
        if self.kind not in SOURCES:
            raise InputError(f"image source must be one of {', '.join(SOURCES)}, got {self.kind!r}")

    def read(self, value: str | bytes | memoryview | None, where: str = "<image>",
             max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The encoded image bytes of one column value.

        Args:
            value: the column value (path / URL text, or bytes for ``bytea``).
            where: names the row in error messages, e.g. ``"photos[42].image_path"``.
            max_bytes: the file-size limit (``Limits.max_file_bytes``); the smaller of it
                and :attr:`max_bytes` applies.
        Raises:
            InputError: NULL or empty value, missing/unreadable/oversized file, a path
                outside the root, a refused scheme, an HTTP or network error.
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
                             max_redirects=self.max_redirects, where=where)
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


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows at most ``max_redirects`` redirects, each to an http(s) URL."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects
        self.max_repeats = max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in _URL_SCHEMES:
            raise _error(f"redirect to a {scheme or 'relative'}: URL refused ({newurl})", retry=False)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, *, timeout_s: float = URL_TIMEOUT_S, max_bytes: int = URL_MAX_BYTES,
              max_redirects: int = URL_MAX_REDIRECTS, where: str = "<image>") -> bytes:
    """GET an http(s) URL and return its body (at most ``max_bytes``).

    Raises:
        InputError: another scheme, too many redirects, an HTTP error status (4xx not
            retryable except 408/429; 5xx retryable), a timeout or network error
            (retryable), a body over ``max_bytes``.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _URL_SCHEMES:
        raise _error(f"{where}: only http/https URLs are fetched, got {url!r}", retry=False)
    opener = urllib.request.build_opener(_LimitedRedirects(max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _error(f"{where}: {url} is {length} bytes, over the {max_bytes}-byte limit", retry=False)
            data = resp.read(max_bytes + 1)
    except InputError as e:
        raise _error(f"{where}: {e}" if not str(e).startswith(where) else str(e), retry=is_retryable(e)) from e
    except urllib.error.HTTPError as e:
        retry = e.code >= 500 or e.code in (408, 429)
        raise _error(f"{where}: {url}: HTTP {e.code} {e.reason}", retry=retry) from e
    except urllib.error.URLError as e:
        raise _error(f"{where}: {url}: {e.reason}", retry=True) from e
    except (OSError, ValueError) as e:  # timeouts, resets, malformed URLs
        raise _error(f"{where}: {url}: {e}", retry=not isinstance(e, ValueError)) from e
    if len(data) > max_bytes:
        raise _error(f"{where}: {url} is over the {max_bytes}-byte limit", retry=False)
    if not data:
        raise _error(f"{where}: {url}: empty response", retry=True)
    return data
