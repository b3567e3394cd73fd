"""Image sources of attached tables: where a row's image bytes come from.

An attached table names its images in one column, read in one of three ways
(``jointembed attach --image-source``):

* ``path``: a file path; relative paths are resolved against the attachment's image
  root (``--image-root``) and may not climb out of it (``..``); absolute paths are
  refused when a root is set. Without a root, paths are used as written (relative to the
  worker's current directory).
* ``url``: an ``http://`` or ``https://`` URL fetched with :mod:`urllib` under a timeout,
  a byte limit and a bounded number of redirects (each redirect must stay http/https).
  Other schemes (``file:``, ``ftp:``, ``data:``) are refused.
* ``bytea``: the column holds the encoded image itself.

Every failure is an :class:`~jointembed_pg.errors.InputError` whose message names the
value; :attr:`InputError.retry` (set here as an attribute) says whether trying again
later can help (a missing file or a network error can; a NULL value cannot).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .preprocess import MAX_FILE_BYTES

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

    def read(self, value: str | bytes | memoryview | None, where: str = "<image>") -> bytes:
        """The encoded image bytes of one column value.

        Args:
            value: the column value (path / URL text, or bytes for ``bytea``).
            where: names the row in error messages, e.g. ``"photos[42].image_path"``.
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
            return data
        if not isinstance(value, str):
            raise _error(f"{where}: expected a {self.kind}, got {type(value).__name__}", retry=False)
        if not value.strip():
            raise _error(f"{where}: empty {self.kind}", retry=False)
        if self.kind == "url":
            return fetch_url(value, timeout_s=self.timeout_s, max_bytes=self.max_bytes,
                             max_redirects=self.max_redirects, where=where)
        return read_file(resolve_path(value, self.root, where), min(self.max_bytes, MAX_FILE_BYTES), where)


def _error(message: str, *, retry: bool) -> InputError:
    err = InputError(message)
    err.retry = retry  # type: ignore[attr-defined]
    return err


def is_retryable(err: BaseException) -> bool:
    """Whether a failed item may succeed later (default True for errors not from here)."""
    return bool(getattr(err, "retry", True))


def resolve_path(value: str, root: str | None, where: str = "<image>") -> Path:
    """The file a path value names: ``root / value``, refusing escapes from ``root``.

    Raises:
        InputError: ``value`` is absolute or climbs out of ``root`` (``..``) while a
            root is set (not retryable).
    """
    path = Path(value).expanduser()
    if root is None:
        return path
    if path.is_absolute():
        raise _error(f"{where}: absolute path {value!r} refused (image root is {root})", retry=False)
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, value))
    if os.path.commonpath([base, full]) != base:
        raise _error(f"{where}: path {value!r} leaves the image root {root}", retry=False)
    return Path(full)


def read_file(path: Path, max_bytes: int, where: str = "<image>") -> bytes:
    """Bytes of an image file (at most ``max_bytes``).

    Raises:
        InputError: missing (retryable), a directory, empty, too large, unreadable.
    """
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise _error(f"{where}: {path} is a directory, not an image file", retry=False)
        if size > max_bytes:
            raise _error(f"{where}: {path} is {size} bytes, over the {max_bytes}-byte limit", retry=False)
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise _error(f"{where}: {path}: no such file", retry=True) from e
    except OSError as e:
        raise _error(f"{where}: {path}: cannot read ({e.strerror or e})", retry=True) from e
    if not data:
        raise _error(f"{where}: {path}: empty file (0 bytes)", retry=True)
    return data


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
