"""The bytes of an HTTP/1.1 request, importing nothing.

client/wire.py sends them; client/headstart.py sends the same bytes before asyncio
is even imported, which is why this lives apart. A plain URL (see split_plain) is
split here by hand; urllib.parse, ~20 ms to import on a slow machine, is imported
only for the others.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs 10 ms
if TYPE_CHECKING:
    from collections.abc import Iterable

USER_AGENT = "mfetch/0.1"
BASE_HEADERS = {"Accept-Encoding": "identity"}  # sent with every request


def request_head(url: str, headers: Iterable[tuple[str, str]], method: str = "GET") -> bytes:
    """The bytes of `METHOD url` with `headers` (Host is added). Raises ValueError for a
    header that could split the request (CR, LF or NUL), or a URL without a host."""
    scheme, name, port, target = split_plain(url) or split_any(url)
    host = name if ":" not in name else f"[{name}]"
    if port != (443 if scheme == "https" else 80):
        host = f"{host}:{port}"
    headers = list(headers)
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):  # -H 'Host: ...' wins, as in curl
        lines.append(f"Host: {host}")
    for k, v in headers:
        if any(c in k or c in v for c in "\r\n\0") or not k:
            raise ValueError(f"header {k!r} cannot be sent")
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_TARGET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          "-._~/%:@!$&'()*+,;=")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_DIGITS = frozenset("0123456789")


def split_plain(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, request target) of a plain http(s) URL: a lower-case
    ASCII host name or IPv4 address, a port without leading zeros, and a path and
    query that need no quoting. None for any other URL. No urllib: the head start
    (client/headstart.py) builds its requests before anything heavy is imported;
    request_head gives these URLs the same bytes either way (tested)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    netloc, slash, tail = rest.partition("/")
    host, colon, port = netloc.partition(":")
    if not host or not set(host) <= _HOST_CHARS:
        return None
    if colon and (not port or not set(port) <= _DIGITS or port[0] == "0"
                  or int(port) > 65535):
        return None
    number = int(port) if colon else 443 if scheme == "https" else 80
    path, _, query = (slash + tail).partition("#")[0].partition("?")
    if not set(path) <= _TARGET_CHARS or not set(query) <= _TARGET_CHARS | {"?"}:
        return None
    return scheme, host, number, (path or "/") + ("?" + query if query else "")


def split_any(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of any URL, with urllib. Raises
    ValueError for a URL without a host or with a bad port."""
    from urllib.parse import quote, urlsplit

    u = urlsplit(url)
    if not u.hostname:
        raise ValueError(f"{url}: no host")
    name = u.hostname if u.hostname.isascii() else idna_host(u.hostname)
    port = u.port if u.port is not None else 443 if u.scheme == "https" else 80
    # Percent-encode what may not appear in a request target, keeping what is already
    # encoded (as yarl does for aiohttp).
    target = quote(u.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if u.query:
        target += "?" + quote(u.query, safe="/?%:@!$&'()*+,;=-._~")
    return u.scheme, name, port, target


def idna_host(name: str) -> str:
    """A non-ASCII host name in ASCII: IDNA 2008 with UTS #46 mapping, as yarl (and so
    aiohttp) and browsers do; Python's own "idna" codec is IDNA 2003, which maps some
    names (faß.de) to another domain. Raises ValueError for a name IDNA refuses."""
    import idna  # only for non-ASCII names (a dependency of yarl, so installed)

    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"{name}: not a valid international host name ({e})") from None
