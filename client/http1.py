"""The bytes of an HTTP/1.1 request, with nothing heavier than urllib imported.

client/wire.py sends them; client/headstart.py sends the same bytes before asyncio
is even imported, which is why this lives apart: importing it costs no more than
``urllib.parse``.
"""
from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, urlsplit

USER_AGENT = "mfetch/0.1"
BASE_HEADERS = {"Accept-Encoding": "identity"}  # sent with every request


def request_head(url: str, headers: Iterable[tuple[str, str]], method: str = "GET") -> bytes:
    """The bytes of `METHOD url` with `headers` (Host is added). Raises ValueError for a
    header that could split the request (CR, LF or NUL), or a URL without a host."""
    u = urlsplit(url)
    if not u.hostname:
        raise ValueError(f"{url}: no host")
    name = u.hostname if u.hostname.isascii() else idna_host(u.hostname)
    host = name if ":" not in name else f"[{name}]"
    default = 443 if u.scheme == "https" else 80
    if u.port is not None and u.port != default:
        host = f"{host}:{u.port}"
    # Percent-encode what may not appear in a request target, keeping what is already
    # encoded (as yarl does for aiohttp).
    target = quote(u.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if u.query:
        target += "?" + quote(u.query, safe="/?%:@!$&'()*+,;=-._~")
    headers = list(headers)
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(k.lower() == "host" for k, _ in headers):  # -H 'Host: ...' wins, as in curl
        lines.append(f"Host: {host}")
    for k, v in headers:
        if any(c in k or c in v for c in "\r\n\0") or not k:
            raise ValueError(f"header {k!r} cannot be sent")
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def idna_host(name: str) -> str:
    """A non-ASCII host name in ASCII: IDNA 2008 with UTS #46 mapping, as yarl (and so
    aiohttp) and browsers do; Python's own "idna" codec is IDNA 2003, which maps some
    names (faß.de) to another domain. Raises ValueError for a name IDNA refuses."""
    import idna  # only for non-ASCII names (a dependency of yarl, so installed)

    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"{name}: not a valid international host name ({e})") from None
