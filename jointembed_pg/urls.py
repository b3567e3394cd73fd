"""Untrusted http(s) URLs: which ones may be fetched, and connections pinned to checked addresses.

The values of an attached table's ``url`` column are written by the application's users,
so a worker fetching them could be made to probe the network it runs in (server-side
request forgery): ``http://169.254.169.254/`` (cloud metadata), ``http://localhost:5432/``,
``http://10.0.0.5/admin``, a public name whose DNS answers a private address, a public
URL redirecting to one, or a name whose DNS answer changes between the check and the
connection (DNS rebinding). Every URL (and every redirect hop) passes :func:`check`:

1. the text (surrounding ASCII whitespace removed): at most :data:`URL_MAX_CHARS`
   characters, no whitespace, control characters or backslashes (parsers disagree on
   them), scheme ``http``/``https``, no user-info (``user:password@`` is refused and
   never shown), a port of 80 or 443 unless an allow entry names the host with that port;
2. the host: a DNS name (IDNA-encoded), a canonical dotted-quad IPv4 address or a
   bracketed IPv6 address; other numeric spellings (``127.1``, ``0x7f000001``,
   ``2130706433``, ``0177.0.0.1``) are refused, whatever they would resolve to;
3. the addresses: the host is resolved once (:func:`socket.getaddrinfo`) and refused if
   ANY address is not public (:func:`nonpublic`); the connection is then made to exactly
   those checked addresses (:class:`PinnedHTTPConnection`, :class:`PinnedHTTPSConnection`),
   while the ``Host`` header, TLS SNI and certificate check use the host name, so a second,
   different DNS answer is never used.

An explicit allow list (:func:`parse_allow`; ``jointembed sync/worker/reembed
--allow-url-host HOST[:PORT]``, ``$JOINTEMBED_URL_ALLOW_HOSTS``) names trusted internal
image servers: an allowed host may resolve to private addresses, and ``HOST:PORT`` also
allows that port. The match is on the host as written in the URL (names
case-insensitively, IP addresses in canonical form), never on where it resolves to.
Unspecified (``0.0.0.0``, ``::``) and multicast addresses are refused even then.

Every refusal is an :class:`~jointembed_pg.errors.InputError` with ``retry = False`` whose
message shows the URL as :func:`shown` prints it: no user-info and no query string (which
may hold a signature or a token), and never the address a *name* resolved to.
"""
from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Iterable

from .errors import InputError
from .files import refuse

SCHEMES = ("http", "https")
#: Ports fetched without an allow entry naming them.
STANDARD_PORTS = (80, 443)
#: Longest URL fetched, characters.
URL_MAX_CHARS = 2048
_MAX_HOST_CHARS = 253
_SHOWN_PATH_CHARS = 120
_ALLOW_HINT = "--allow-url-host / JOINTEMBED_URL_ALLOW_HOSTS"

#: IPv4 blocks that are not publicly routable (IANA special-purpose registry), listed
#: because ``ipaddress.is_global`` misses some of them on older Pythons.
_V4_SPECIAL = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
#: IPv6 global unicast space; everything outside it is special except the embeddings below.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
#: Special blocks inside 2000::/3 (IETF protocol assignments incl. Teredo, documentation).
_V6_SPECIAL = tuple(ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "3fff::/20"))
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")   # well-known NAT64 prefix: IPv4 in the low 32 bits
_V6_COMPAT = ipaddress.IPv6Network("::/96")         # deprecated IPv4-compatible addresses
#: Reasons refused even for an allowed host.
_ALWAYS_REFUSED = ("unspecified", "multicast")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
#: Characters refused anywhere in a URL: whitespace, controls (urlsplit silently drops
#: some of them) and backslashes (read as "/" by some parsers, not by others).
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]")


def nonpublic(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` is not a public unicast address (``"loopback"``, ``"private"``, ...), or
    None when it is.

    IPv6 addresses embedding an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
    ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) are judged by the embedded address;
    IPv4-compatible ``::a.b.c.d`` is refused. Sources: RFC 6890 / the IANA special-purpose
    address registries; ``ipaddress`` flags first, then explicit blocks.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # drop a %scope
        if ip.ipv4_mapped is not None:
            return nonpublic(ip.ipv4_mapped)
        if ip in _V6_NAT64:
            return nonpublic(ipaddress.IPv4Address(ip.packed[-4:]))
        if ip.sixtofour is not None:
            return nonpublic(ip.sixtofour)
        if ip in _V6_COMPAT and not ip.is_unspecified and not ip.is_loopback:
            return "IPv4-compatible IPv6 (deprecated)"
    for flag, reason in (("is_unspecified", "unspecified"), ("is_multicast", "multicast"),
                         ("is_loopback", "loopback"), ("is_link_local", "link-local"),
                         ("is_site_local", "site-local"), ("is_private", "private"),
                         ("is_reserved", "reserved")):
        if getattr(ip, flag, False):
            return reason
    if isinstance(ip, ipaddress.IPv4Address):
        if any(ip in n for n in _V4_SPECIAL):
            return "special-purpose"
    elif ip not in _V6_GLOBAL_UNICAST or any(ip in n for n in _V6_SPECIAL):
        return "special-purpose"
    if not ip.is_global:
        return "not globally routable"
    return None


# -- hosts and allow entries ---------------------------------------------------------------

class _BadHost(ValueError):
    pass


def _host_key(host: str, bracketed: bool) -> str:
    """The canonical form of a URL host: an IP address's ``str``, or the lower-case
    IDNA name without a trailing dot.

    Raises:
        _BadHost: not a DNS name, canonical IPv4 or IPv6 address (the message says why).
    """
    if bracketed or ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _BadHost("invalid IPv6 address") from None
    name = host[:-1] if host.endswith(".") else host
    try:  # IDNA first: it maps e.g. full-width digits to ASCII ones
        name = name.encode("idna").decode("ascii").lower() if name else ""
    except UnicodeError:
        raise _BadHost("invalid host name") from None
    if name and all(_NUMERIC_LABEL.match(lab) for lab in name.split(".")):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise _BadHost("numeric host that is not a canonical dotted-quad IPv4 address (such as "
                           "127.1, 0x7f000001, 2130706433 or 0177.0.0.1)") from None
    if not name or len(name) > _MAX_HOST_CHARS or not all(_LABEL.match(lab) for lab in name.split(".")):
        raise _BadHost("invalid host name")
    return name


def parse_allow(entries: Iterable[str]) -> frozenset[tuple[str, int | None]]:
    """Allow entries ``HOST`` / ``HOST:PORT`` / ``[IPv6]:PORT`` as ``(host key, port or None)``.

    ``HOST`` is a DNS name or an IP address (no networks, no wildcards); without a port,
    the standard ports 80 and 443 are allowed.

    Raises:
        InputError: an entry that is not such a host (with a port of 1-65535).
    """
    out = set()
    for raw in entries:
        entry = str(raw).strip()
        try:
            if _BAD_CHARS.search(entry) or not entry or "/" in entry or "@" in entry:
                raise _BadHost("expected HOST or HOST:PORT")
            port: int | None = None
            if entry.startswith("["):
                host, sep, rest = entry[1:].partition("]")
                if not sep or (rest and not rest.startswith(":")):
                    raise _BadHost("expected [IPv6] or [IPv6]:PORT")
                port_text = rest[1:] if rest else None
                bracketed = True
            elif entry.count(":") == 1:
                host, port_text, bracketed = *entry.split(":"), False
            else:
                host, port_text, bracketed = entry, None, False
            if port_text is not None:
                if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                    raise _BadHost("the port must be 1-65535")
                port = int(port_text)
            out.add((_host_key(host, bracketed), port))
        except _BadHost as e:
            raise InputError(f"allowed URL host {entry[:100]!r}: {e}") from None
    return frozenset(out)


# -- URLs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for.

    Attributes:
        scheme: ``"http"`` or ``"https"``.
        host: the host key (for ``Host``, SNI and the certificate check).
        port: TCP port.
        request_path: path and query, ASCII (percent-encoded), starting with ``/``.
        addrs: the checked ``(family, sockaddr)`` pairs, the only ones connected to.
        shown: the URL without user-info or query, for messages.
    """

    scheme: str
    host: str
    port: int
    request_path: str
    addrs: tuple[tuple[int, tuple], ...]
    shown: str


def shown(url: str) -> str:
    """``url`` safe to print: ``scheme://host[:port]/path`` (path cut), without user-info,
    query or fragment (a query becomes ``?...``)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = p.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable URL>"
    path = p.path if len(p.path) <= _SHOWN_PATH_CHARS else p.path[:_SHOWN_PATH_CHARS] + "..."
    text = f"{p.scheme}://{host[:_MAX_HOST_CHARS + 8]}{path}{'?...' if p.query else ''}"
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _ascii(text: str) -> str:
    """Non-ASCII characters percent-encoded as UTF-8 (printable ASCII kept as is)."""
    return urllib.parse.quote(text, safe="".join(map(chr, range(0x21, 0x7f))))


def check(url: str, allow: frozenset[tuple[str, int | None]] = frozenset(), where: str = "<image>",
          what: str = "URL") -> Target:
    """Check ``url`` (see the module docstring) and resolve its host once.

    Args:
        url: the untrusted URL.
        allow: :func:`parse_allow` entries.
        where / what: name the row and the URL in messages (``what``: ``"URL"``, or e.g.
            ``"redirect 1 (HTTP 302 from http://a.example/x) to"``).
    Returns:
        The :class:`Target` to connect to (only its ``addrs``).
    Raises:
        InputError: refused (``retry`` False), or the name does not resolve (``retry`` True).
    """
    def no(reason: str, show: str | None = None, retry: bool = False) -> InputError:
        subject = f"{what} {show}" if show else (what if what == "URL" else f"{what} a URL")
        return refuse(f"{where}: {subject}{'' if retry else ' refused'}: {reason}", retry=retry)

    if not isinstance(url, str):
        raise no(f"expected text, got {type(url).__name__}")
    url = url.strip(" \t\r\n\f\v")  # surrounding ASCII whitespace only (a pasted newline)
    if len(url) > URL_MAX_CHARS:
        raise no(f"{len(url)} characters, over the {URL_MAX_CHARS}-character limit")
    if _BAD_CHARS.search(url):
        raise no("it contains whitespace, control characters or a backslash")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise no("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        got = f"{_ascii(scheme[:20])}:" if scheme else "a relative URL"
        raise no(f"only http/https URLs are fetched, not {got}")
    if "@" in parts.netloc:
        raise no("credentials (user:password@) in URLs are not accepted (and not shown)")
    show = shown(url)
    bracketed = parts.netloc.startswith("[")
    try:
        host = _host_key(parts.hostname or "", bracketed)
        port = parts.port
        port = (443 if scheme == "https" else 80) if port is None else port
    except _BadHost as e:
        raise no(str(e), show) from None
    except ValueError:
        raise no("invalid port", show) from None
    allowed = (host, port) in allow or ((host, None) in allow and port in STANDARD_PORTS)
    if port not in STANDARD_PORTS and not allowed:
        raise no(f"port {port} (only 80 and 443, unless {_ALLOW_HINT} names HOST:{port})", show)
    literal = None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    if literal is not None:
        reason = nonpublic(literal)
        if reason and (not allowed or reason in _ALWAYS_REFUSED):
            raise no(f"{reason} address" + ("" if allowed else f" (trusted servers: {_ALLOW_HINT})"), show)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise no(f"cannot resolve the host ({getattr(e, 'strerror', None) or type(e).__name__})", show,
                 retry=True) from None
    addrs: list[tuple[int, tuple]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            raise no("the host resolves to an unparseable address", show) from None
        reason = nonpublic(ip)
        if reason and (not allowed or reason in _ALWAYS_REFUSED):
            # a name's addresses are not shown: they describe the worker's network
            raise no(f"the host resolves to a non-public address ({reason})"
                     + ("" if allowed else f"; trusted servers: {_ALLOW_HINT}"), show)
        if (family, sockaddr) not in addrs:
            addrs.append((family, sockaddr))
    if not addrs:
        raise no("the host has no IPv4/IPv6 address", show, retry=True)
    path = _ascii(parts.path or "/") + (f"?{_ascii(parts.query)}" if parts.query else "")
    return Target(scheme, host, port, path, tuple(addrs), show)


# -- pinned connections --------------------------------------------------------------------

def _connect(addrs: tuple[tuple[int, tuple], ...], timeout: float | None) -> socket.socket:
    """A TCP socket connected to the first of ``addrs`` that answers (no DNS here)."""
    last: OSError | None = None
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last or OSError("no address to connect to")


class PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to ``target.addrs`` only; ``Host`` is ``target.host``."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._addrs = target.addrs

    def connect(self) -> None:
        self.sock = _connect(self._addrs, self.timeout)


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """One shared client context: system CAs, certificate and host name verified."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to ``target.addrs`` only; SNI, the certificate check
    (system CAs, host name verified) and ``Host`` use ``target.host``."""

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext | None = None):
        super().__init__(target.host, target.port, timeout=timeout, context=context or _tls_context())
        self._addrs = target.addrs

    def connect(self) -> None:
        sock = _connect(self._addrs, self.timeout)
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        except BaseException:
            sock.close()
            raise


def connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    """The pinned connection for ``target`` (not yet connected)."""
    cls = PinnedHTTPSConnection if target.scheme == "https" else PinnedHTTPConnection
    return cls(target, timeout)
