"""Exception hierarchy of jointembed_pg.

Every error the library raises on purpose is a :class:`JointEmbedError`, so callers (and
the CLI, which turns them into one-line messages with a non-zero exit code) can catch
one type. Messages name the offending value or path.

The CLI's one rule (``jointembed_pg.cli.options.USER_ERRORS``): ``JointEmbedError``, ``OSError``,
the database server's ``psycopg.Error`` and click's own usage errors become one line on
stderr; anything else (a bare ``ValueError``, ``TypeError``, ...) is a bug and keeps its
traceback.

This module also holds the one implementation of secret redaction (:func:`redact_dsn`,
:func:`scrub`): nothing jointembed prints or raises shows a password.
"""
from __future__ import annotations

import json as _json
import re as _re
import threading as _threading
from urllib.parse import quote as _quote, quote_plus as _quote_plus, urlencode as _urlencode


class JointEmbedError(Exception):
    """Base class of all jointembed_pg errors."""


class BundleError(JointEmbedError):
    """A model bundle is missing, corrupt, or does not match what it is used with."""


class InputError(JointEmbedError):
    """One input item (an image file, a caption) cannot be embedded.

    Batch jobs catch this per item, record it, and go on with the rest.
    """


class ItemError(InputError):
    """One item of a list passed to the library is refused.

    ``str(e)`` is ``"<label>: <reason>"`` where ``label`` names the item by its position
    in the caller's list (e.g. ``texts[3]``). Callers that know the user's name for the
    item (a file path, a row id, a line number) report :meth:`for_item` instead.

    Attributes:
        label: the positional label, e.g. ``"texts[3]"``.
        reason: the message without the label.
        index: the item's position in the caller's list (``int``) or ``None``.
    """

    def __init__(self, label: str, reason: str, index: int | None = None):
        super().__init__(f"{label}: {reason}")
        self.label, self.reason, self.index = label, reason, index

    def for_item(self, name: str) -> str:
        """The message with the user's name for the item in place of the label."""
        return f"{name}: {self.reason}"


class ArgumentError(JointEmbedError, ValueError):
    """An argument or setting value is invalid (a collection name, a dimension, a memory size,
    an environment variable).

    Also a ``ValueError``, so code written against the earlier bare ``ValueError`` keeps working.
    """


class DatabaseError(JointEmbedError):
    """The database is unreachable, or its content does not match the request."""


class ModelMismatchError(DatabaseError):
    """A bundle's model id or dimension differs from what a collection or table stores."""


# -- secrets: the one redaction implementation -------------------------------------------
# Passwords are found by *parsing* DSNs (libpq's own parser, via psycopg), never by matching
# text, and every text jointembed shows (messages, logs, --json, exceptions, status) goes
# through :func:`scrub`, which masks every secret seen so far in this process, in each of
# the spellings it can take (raw, percent-encoded, libpq-quoted, JSON/repr-escaped).


MASK = "***"
#: What is shown instead of a DSN that cannot be parsed (it may hold a password).
UNPARSEABLE = "<DSN not shown: it could not be parsed>"
_URL_PREFIXES = ("postgresql://", "postgres://")
_secrets: set[str] = set()
_secrets_lock = _threading.Lock()


def _spellings(secret: str) -> set[str]:
    quoted_kv = "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"
    forms = {secret, _quote(secret, safe=""), _quote(secret), _quote_plus(secret), quoted_kv,
             _json.dumps(secret)[1:-1], repr(secret)[1:-1], _json.dumps(quoted_kv)[1:-1]}
    return {f for f in forms if f}


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` so that :func:`scrub` masks it everywhere in this process.

    One-character secrets are not masked in free text (they would mask every such
    character); they are still removed from DSNs by :func:`redact_dsn`.
    """
    if secret and len(secret) > 1:
        with _secrets_lock:
            _secrets.update(_spellings(secret))


def dsn_password(dsn: str | None) -> str | None:
    """The password a DSN (URL or ``key=value``) holds, parsed by libpq; ``None`` if none
    or unparseable."""
    if not dsn:
        return None
    try:
        import psycopg

        return psycopg.conninfo.conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def register_dsn(dsn: str | None) -> None:
    """Register the password of ``dsn`` (and, for an ambiguous URL, its raw user-info)."""
    if not dsn:
        return
    register_secret(dsn_password(dsn))
    userinfo = _raw_userinfo(dsn)
    if userinfo and ":" in userinfo:
        register_secret(userinfo.split(":", 1)[1])


def _raw_userinfo(dsn: str) -> str | None:
    """For a URL DSN, the text between ``://`` and the *last* ``@`` before the query."""
    low = dsn.lower()
    for prefix in _URL_PREFIXES:
        if low.startswith(prefix):
            rest = dsn[len(prefix):].split("?", 1)[0]
            return rest.rsplit("@", 1)[0] if "@" in rest else None
    return None


def ambiguous_url(dsn: str) -> bool:
    """True for a URL DSN whose user-info holds an un-encoded ``@`` or ``/``: libpq would
    read part of the password as the host, port or database name (and show it in errors)."""
    userinfo = _raw_userinfo(dsn)
    return userinfo is not None and ("@" in userinfo or "/" in userinfo)


def scrub(text: str, *dsns: str | None) -> str:
    """``text`` with every registered secret (and the passwords of ``dsns``) masked."""
    for d in dsns:
        register_dsn(d)
    if not text:
        return text
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def redact_dsn(dsn: str | None) -> str:
    """A DSN fit to show: rebuilt from libpq's parse of it, the password replaced by ``***``.

    URL DSNs come back as URLs, ``key=value`` ones as ``key=value``; a DSN that cannot be
    parsed, or a URL whose password holds an un-encoded ``@`` or ``/``, is not shown at all
    (:data:`UNPARSEABLE`). The password is also registered for :func:`scrub`.
    """
    if not dsn:
        return ""
    register_dsn(dsn)
    try:
        import psycopg

        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except Exception:
        return UNPARSEABLE
    if ambiguous_url(dsn):
        return UNPARSEABLE
    parts = {k: str(v) for k, v in parts.items()}
    has_password = "password" in parts
    parts.pop("password", None)
    if not dsn.lower().startswith(_URL_PREFIXES):
        import psycopg

        shown = psycopg.conninfo.make_conninfo(**parts)
        return shown + (f" password={MASK}" if has_password else "")
    user = parts.pop("user", None)
    host = parts.pop("host", None)
    port = parts.pop("port", None)
    dbname = parts.pop("dbname", None)
    netloc = ""
    if user is not None or has_password:
        netloc = _quote(user or "", safe="") + (f":{MASK}" if has_password else "") + "@"
    query: dict[str, str] = {}
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else _quote(host, safe=".-_~")
        if port and "," not in port:
            netloc += f":{_quote(port, safe='')}"
        elif port:
            query["port"] = port
    else:
        if host:
            query["host"] = host
        if port:
            query["port"] = port
    query.update(parts)
    out = f"postgresql://{netloc}" + ("/" + _quote(dbname, safe="") if dbname else "/" if query else "")
    if query:
        out += "?" + _urlencode(query, safe="/,", quote_via=_quote)
    return out


def libpq_message(err: BaseException) -> str:
    """One line of a libpq/psycopg error with any quoted fragment masked.

    libpq quotes pieces of the connection string in its parse errors (e.g. ``unexpected
    spaces found in "..."``); they may be parts of a password, so they are never shown.
    """
    text = " ".join(str(err).split()) or type(err).__name__
    return _re.sub(r'".*"', '"***"', text)


#: Characters a terminal may act on, never written raw by the CLI: C0 controls except TAB,
#: LF and CR (ESC starts CSI/OSC sequences: colours, ``ESC[2J`` clear screen, ``ESC]52``
#: clipboard writes, window titles), DEL, the C1 controls (U+0080-U+009F; U+009B is a
#: one-character CSI on some terminals), the bidirectional overrides and isolates that
#: reorder what is shown (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069, "Trojan
#: Source") and lone surrogates (file names that are not UTF-8; a strict stream would
#: raise on them).
_TERMINAL_UNSAFE = _re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f"
                               "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
#: What tqdm writes on its own to move between stacked bars (cursor up): let through.
_CURSOR_UP_ONLY = _re.compile(r"(?:\x1b\[A)+")
#: A value shown on one line also escapes TAB, LF and CR.
_LINE_UNSAFE = _re.compile(f"[\t\n\r{_TERMINAL_UNSAFE.pattern[1:-1]}]")


def _u_escape(m: "_re.Match[str]") -> str:
    return f"\\u{ord(m.group()):04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character of :data:`_TERMINAL_UNSAFE` written as ``\\uXXXX``.

    The escape is JSON's own, so a ``--json`` line stays valid JSON and decodes to the
    same string; TAB, LF and CR pass (use :func:`terminal_line` for a one-line value).
    """
    return _TERMINAL_UNSAFE.sub(_u_escape, text) if text else text


def terminal_line(value: object) -> str:
    """``str(value)`` fit for one line of human output: :func:`terminal_safe` plus TAB,
    LF and CR escaped (a caption or file name holding a newline cannot fake a line)."""
    return _LINE_UNSAFE.sub(_u_escape, str(value))


class ScrubbingStream:
    """A text stream that masks every registered secret in what is written through it and
    escapes terminal control characters (:func:`terminal_safe`).

    The CLI wraps ``sys.stdout`` and ``sys.stderr`` in it, so that no message, log line,
    ``--json`` document, warning or traceback of the process shows a password, and no
    value read from a file name, a caption file or the database (``ESC]52`` clipboard
    writes, ``ESC[2J``, bidi overrides) reaches the terminal raw. The one exception is a
    write made only of cursor-up sequences (tqdm moving between its stacked bars).
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> int:
        text = scrub(s)
        if not _CURSOR_UP_ONLY.fullmatch(text):
            text = terminal_safe(text)
        self._stream.write(text)
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)
