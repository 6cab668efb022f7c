"""HTTP edge of the client: one client with the user's options, redirects, probing.

Requests go through mfetch's own HTTP/1.1 client (client/wire.py); only with
``--proxy`` does aiohttp carry them (imported then, and only then: proxies and
SOCKS are aiohttp's and aiohttp-socks' job). Either way callers see one
:class:`Response` shape, and errors are the :mod:`client.wire` family
(OSError subclasses), translated here into :class:`client.events.Fault` (for
the scheduler) or :class:`common.errors.SourceError` (for the user).

Redirects are followed here, not by a library, so that credentials never follow
a redirect to another origin: a password from ``--user`` or a URL, and
sensitive headers given with ``--header`` (Authorization, Cookie), go only to
the origins the user named. ``.netrc`` credentials are per host by nature.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import netrc
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from client import wire
from client.events import Fault, FaultKind
from client.http1 import BASE_HEADERS, USER_AGENT, request_head
from common.errors import ConfigError, ProtocolError, SourceError
from common.http_ranges import parse_content_range, parse_unsatisfied_range
from common.security import bearer

if TYPE_CHECKING:  # (a Protocol class costs ~1 ms to define at start-up)
    from typing import Protocol

    import aiohttp

    class Body(Protocol):
        """What the fetcher streams pieces from: a response's body (or the rest of a
        head start's answer, client/headstart.py)."""

        content_length: int | None
        received: int  # body bytes read so far
        waited: bool  # the last read_view() had to wait for the network (not behind it)

        async def read_view(self) -> memoryview | None:
            """The next part of the body (valid until the next call), None at its end."""

        def set_lowat(self, value: int) -> None:
            """Wake the reader only once `value` bytes are readable (plain TCP only)."""

        def release(self) -> None: ...

    class Response(Body, Protocol):
        """What every caller reads of a response (wire's, or aiohttp's behind a proxy)."""

        url: str
        status: int
        reason: str | None

        @property
        def headers(self) -> Mapping[str, str]: ...

        async def read(self, n: int = -1) -> bytes: ...


# Errors that mean "try again later", not "this source is wrong" (wire's errors are
# OSErrors; aiohttp's are translated into them where they enter).
TRANSIENT_ERRORS = (TimeoutError, OSError)

REDIRECTS = (301, 302, 303, 307, 308)
SENSITIVE = ("authorization", "cookie", "proxy-authorization")
PROXY_LOWAT = 256 * 1024  # most bytes to wait for on a proxied response (set_lowat)
PROBE_BODY_TIMEOUT = 2.0  # a probe waits this long for its 1-byte body, to reuse its connection


@dataclass(frozen=True)
class HttpOptions:
    """What users bring from curl and wget (see ``mfetch --help``)."""

    headers: tuple[tuple[str, str], ...] = ()
    user_agent: str = USER_AGENT
    user: tuple[str, str] | None = None  # for the origins named on the command line
    url_credentials: tuple[tuple[str, str, str], ...] = ()  # (origin, user, password) from URLs
    netrc_file: str | None = None  # credentials per host, when given
    cookie_file: str | None = None  # Netscape format, as curl -b and wget --load-cookies
    proxy: str | None = None  # http://, https://, socks4://, socks5://
    cacert: str | None = None
    max_redirects: int = 10
    trusted: frozenset[str] = field(default_factory=frozenset)  # origins the user named
    # Sent as a bearer token to the agents the tracker names (get(agent=True)), never to
    # mirrors or URLs given by hand, never past a redirect.
    agent_token: str | None = field(default=None, repr=False)


def origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{(u.hostname or '').lower()}:{u.port or (443 if u.scheme == 'https' else 80)}"


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' -> (name, value); raises ConfigError."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n") \
            or "\n" in value or "\r" in value:
        raise ConfigError(f"--header wants 'Name: value', got {text!r}")
    return name.strip(), value.strip()


class HttpClient:
    """The HTTP client for a download, with the user's options applied.

    Raises ConfigError (at construction) for an unreadable cookie, netrc or CA
    file, or a proxy URL of an unknown scheme.
    """

    def __init__(self, opts: HttpOptions, *, connect_timeout: float, read_timeout: float,
                 per_host: int) -> None:
        self.opts = opts
        self._netrc = _load_netrc(opts.netrc_file) if opts.netrc_file else None
        self._cookies = load_cookies(opts.cookie_file) if opts.cookie_file else []
        # The context for every TLS connection (https sources, an https proxy): made on
        # the first one, since loading the system's CA store costs ~0.1 s.
        self._ssl: ssl.SSLContext | None = None
        if opts.cacert:
            try:
                self._ssl = ssl.create_default_context(cafile=opts.cacert)
                self._ssl.set_alpn_protocols(("http/1.1",))
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"--cacert {opts.cacert}: {e}") from None
        scheme = urlsplit(opts.proxy).scheme if opts.proxy else ""
        if opts.proxy and scheme not in ("http", "https", "socks4", "socks5", "socks5h",
                                         "socks4a"):
            raise ConfigError(f"--proxy {opts.proxy}: use http://, https://, socks4:// or socks5://")
        self._wire: wire.WireClient | None = None
        self._proxied: _ProxiedClient | None = None
        if opts.proxy:
            self._proxied = _ProxiedClient(opts.proxy, self._tls_context, per_host=per_host,
                                           connect_timeout=connect_timeout,
                                           read_timeout=read_timeout)
        else:
            self._wire = wire.WireClient(connect_timeout=connect_timeout,
                                         read_timeout=read_timeout, tls=self._tls_context,
                                         per_host=per_host)

    async def close(self) -> None:
        if self._wire is not None:
            await self._wire.close()
        if self._proxied is not None:
            await self._proxied.close()

    async def __aenter__(self) -> HttpClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str] | None = None, *,
                  agent: bool = False) -> AsyncIterator[Response]:
        """GET `url`, following at most max_redirects redirects; yields the final response.

        `agent`: `url` is an agent the tracker named, so the agent token (if any) goes
        with the first request, and only with it (not to a redirect's target).
        Raises SourceError for too many redirects, a redirect to a non-HTTP URL or a
        URL that cannot be requested; network errors (TRANSIENT_ERRORS) pass through.
        """
        for hop in range(self.opts.max_redirects + 1):
            plain, send = self._outgoing(url, headers, agent=agent and hop == 0)
            resp = await self._send(plain, send)
            location = resp.headers.get("Location")
            if resp.status in REDIRECTS and location:
                resp.release()
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise SourceError(f"redirected to {url}: not an HTTP URL")
                continue
            try:
                yield resp
            finally:
                resp.release()
            return
        raise SourceError(f"{url}: more than {self.opts.max_redirects} redirects")

    def _outgoing(self, url: str, headers: Mapping[str, str] | None, *,
                  agent: bool) -> tuple[str, list[tuple[str, str]]]:
        """The URL without its user:password, and the header fields to send it with."""
        plain, auth = self._credentials(url)
        trusted = origin(url) in self.opts.trusted
        extra = {k: v for k, v in self.opts.headers if trusted or k.lower() not in SENSITIVE}
        if agent and self.opts.agent_token:
            auth = bearer(self.opts.agent_token)
        if auth and not any(k.lower() == "authorization" for k in extra):
            extra["Authorization"] = auth  # an explicit header wins, as in curl
        send = _merge({"User-Agent": self.opts.user_agent}, BASE_HEADERS, extra, headers or {})
        cookie = cookie_header(self._cookies, plain)
        if cookie:
            old = send.get("cookie")
            send["cookie"] = ("Cookie", f"{old[1]}; {cookie}" if old else cookie)
        return plain, list(send.values())

    def first_request(self, url: str, headers: Mapping[str, str]) -> bytes | None:
        """The bytes that get(url, headers) sends first, or None if they go through
        a proxy (client/headstart.py checks what it sent early against these)."""
        if self._proxied is not None:
            return None
        plain, send = self._outgoing(url, headers, agent=False)
        try:
            return request_head(plain, send)
        except ValueError:
            return None

    async def _send(self, url: str, headers: list[tuple[str, str]]) -> Response:
        if self._proxied is not None:
            return await self._proxied.get(url, headers)
        assert self._wire is not None
        try:
            return await self._wire.get(url, headers)
        except ValueError as e:
            raise SourceError(f"{url}: cannot be requested ({e})") from None

    def _tls_context(self) -> ssl.SSLContext:
        """The --cacert context, else the system's CA store."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(("http/1.1",))
        return self._ssl

    def _credentials(self, url: str) -> tuple[str, str | None]:
        """The URL without userinfo, and the Authorization this origin may get."""
        u = urlsplit(url)
        plain = strip_userinfo(url)
        here = origin(url)
        for where, name, password in self.opts.url_credentials:
            if where == here:
                return plain, basic_auth(name, password)
        if self.opts.user and here in self.opts.trusted:
            return plain, basic_auth(*self.opts.user)
        if self._netrc is not None and u.hostname:
            found = self._netrc.authenticators(u.hostname)
            if found:
                login, _, password = found
                return plain, basic_auth(login or "", password or "")
        return plain, None


def basic_auth(user: str, password: str) -> str:
    """An Authorization header value for HTTP basic auth (RFC 7617)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def check_url(url: str) -> None:
    """Raise ConfigError for a URL mfetch cannot use (scheme, host, port)."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise ConfigError(f"{url}: {e}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{url}: only http:// and https:// URLs with a host are supported")


def strip_userinfo(url: str) -> str:
    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    netloc = host if u.port is None else f"{host}:{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def url_credentials(urls: list[str]) -> tuple[tuple[str, str, str], ...]:
    """(origin, user, password) for each URL that carries user:password@."""
    out = []
    for url in urls:
        u = urlsplit(url)
        if u.username is not None:
            out.append((origin(url), unquote(u.username), unquote(u.password or "")))
    return tuple(out)


def _load_netrc(path: str) -> netrc.netrc:
    try:
        return netrc.netrc(path)
    except (OSError, netrc.NetrcParseError) as e:
        raise ConfigError(f"netrc file {path}: {e}") from None


def _merge(*layers: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Header layers, later ones winning, by lower-case name -> (name, value)."""
    out: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for k, v in layer.items():
            out[k.lower()] = (k, v)
    return out


@dataclass(frozen=True, slots=True)
class Cookie:
    domain: str  # lower case, without a leading dot
    subdomains: bool  # the file's domain began with "." (or its flag said TRUE)
    path: str
    secure: bool
    name: str
    value: str


def load_cookies(path: str) -> list[Cookie]:
    """The unexpired cookies of a Netscape-format file (curl -c / wget --save-cookies).
    Raises ConfigError."""
    import http.cookiejar  # ~10 ms (it loads urllib.request): only with --cookie

    cj = http.cookiejar.MozillaCookieJar(path)
    try:
        # Expiry 0 marks a session cookie (as curl writes them): keep those.
        cj.load(ignore_discard=True, ignore_expires=True)
    except (OSError, http.cookiejar.LoadError) as e:
        raise ConfigError(f"cookie file {path}: {e}") from None
    now = time.time()
    return [Cookie(c.domain.lstrip(".").lower(), c.domain.startswith("."), c.path or "/",
                   bool(c.secure), c.name, c.value or "")
            for c in cj if not (c.expires and c.expires < now)]


def cookie_header(cookies: list[Cookie], url: str) -> str:
    """The Cookie header for `url` (RFC 6265 §5.4: domain, path and secure match)."""
    if not cookies:
        return ""
    u = urlsplit(url)
    host, path = (u.hostname or "").lower(), u.path or "/"
    out = []
    for c in cookies:
        if c.secure and u.scheme != "https":
            continue  # never over plain HTTP
        if host != c.domain and not (c.subdomains and host.endswith("." + c.domain)):
            continue
        p = c.path
        if path != p and not (path.startswith(p) and (p.endswith("/") or path[len(p)] == "/")):
            continue
        out.append(f"{c.name}={c.value}")
    return "; ".join(out)


async def read_body(resp: Response, limit: int) -> bytes:
    """The whole body, or its first limit + 1 bytes if it is longer (so callers can
    tell "too long")."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await resp.read_view()
        if chunk is None:
            break
        data += chunk[: limit + 1 - len(data)]
    return bytes(data[: limit + 1])


class _ProxiedClient:
    """aiohttp, for requests through --proxy only (http, https, or SOCKS via
    aiohttp-socks): imported when the first proxied client is made. Its errors are
    translated into client.wire's where they enter."""

    def __init__(self, proxy: str, tls: Any, *, per_host: int, connect_timeout: float,
                 read_timeout: float) -> None:
        from client.aiohttp_import import import_aiohttp

        import_aiohttp()
        import aiohttp

        self._aiohttp = aiohttp
        self._tls = tls
        scheme = urlsplit(proxy).scheme
        self._tls_proxy = scheme == "https"
        self._http_proxy: str | None = None
        connector: aiohttp.BaseConnector
        if scheme.startswith("socks"):
            from aiohttp_socks import ProxyConnector

            connector = ProxyConnector.from_url(proxy, rdns=scheme.endswith("h"), limit=0,
                                                limit_per_host=per_host)
        else:
            self._http_proxy = proxy
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_host)
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          sock_read=read_timeout),
            skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, url: str, headers: list[tuple[str, str]]) -> Response:
        tls = self._tls_proxy or urlsplit(url).scheme == "https"
        try:
            resp = await self.session.get(url, headers=dict(headers), allow_redirects=False,
                                          proxy=self._http_proxy,
                                          ssl=self._tls() if tls else True)
        except self._aiohttp.InvalidURL:
            raise SourceError(f"{url}: not a valid URL") from None
        except self._aiohttp.ClientError as e:
            raise _translate(self._aiohttp, e) from None
        return _AiohttpResponse(resp, self._aiohttp)


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse, aiohttp_module: Any) -> None:
        self._resp, self._aiohttp = resp, aiohttp_module
        self.url = str(resp.url)
        self.status, self.reason = resp.status, resp.reason
        self.headers: Mapping[str, str] = resp.headers
        self.content_length = resp.content_length
        self.received = 0
        self.waited = True
        self._sock: socket.socket | None = None
        self._lowat = 1
        transport = resp.connection.transport if resp.connection else None
        if transport is not None and transport.get_extra_info("sslcontext") is None:
            self._sock = transport.get_extra_info("socket")

    async def read_view(self) -> memoryview | None:
        try:
            chunk = await self._resp.content.readany()
        except self._aiohttp.ClientError as e:
            raise _translate(self._aiohttp, e) from None
        if not chunk:
            return None
        self.received += len(chunk)
        return memoryview(chunk)

    async def read(self, n: int = -1) -> bytes:
        try:
            data = await (self._resp.read() if n < 0 else self._resp.content.read(n))
        except self._aiohttp.ClientError as e:
            raise _translate(self._aiohttp, e) from None
        self.received += len(data)
        return data

    def set_lowat(self, value: int) -> None:
        # aiohttp's reader has no patience timer (wire.LOWAT_PATIENCE): a quarter of
        # the mark asked for (~50 ms of the rate), at most 256 KiB, so that a source
        # slowing down is still heard soon.
        value = max(1, min(value // 4, PROXY_LOWAT))
        if self._sock is not None and value != self._lowat:
            if wire.set_rcvlowat(self._sock, value):
                self._lowat = value
            else:
                self._sock = None

    def release(self) -> None:
        self.set_lowat(1)  # before the connection goes back to aiohttp's pool
        self._resp.release()


def _translate(aiohttp: Any, e: BaseException) -> OSError:
    """aiohttp's exceptions as client.wire's (one family for every caller)."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return wire.CertificateError(str(e), ssl.SSLCertVerificationError(
            str(e.certificate_error)))
    if isinstance(e, aiohttp.ClientConnectorError):
        return wire.ConnectError(str(e), e.os_error)
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return wire.Disconnected("the server closed the connection")
    if isinstance(e, aiohttp.ClientPayloadError):
        return wire.BodyCutShort("the response body was cut short")
    if isinstance(e, OSError):
        return e
    return wire.WireError((str(e) or type(e).__name__).splitlines()[0])


@dataclass(frozen=True, slots=True)
class Probe:
    """What a bare URL told us about its file."""

    url: str  # after redirects
    size: int | None  # None: a body with no length, or encoded (one stream only)
    validator: str  # strong ETag, else Last-Modified, else ""
    ranges: bool  # answered a range request with 206


def validator_of(headers: Mapping[str, str]) -> str:
    """The strong ETag of a response, else its Last-Modified (RFC 9110 §13.1.4)."""
    etag = headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified", "")


def changed(validator: str, headers: Mapping[str, str]) -> bool:
    """Whether a response says the file is no longer the one `validator` (from
    :func:`validator_of`) named. Like is compared with like: an entity tag with the
    response's strong ETag, a date with its Last-Modified; a response without that
    kind of validator says nothing. (An agent adds its ETag once it has hashed a
    file: the Last-Modified taken before still names the same file.)"""
    if not validator:
        return False
    etag = headers.get("ETag", "")
    etag = "" if etag.startswith("W/") else etag
    modified = headers.get("Last-Modified", "")
    if validator in (etag, modified):
        return False
    import email.utils  # here: ~6 ms at start-up for a rare answer (a 200 to a range)

    is_date = email.utils.parsedate_tz(validator) is not None
    return bool(modified if is_date else etag)


async def probe(client: HttpClient, url: str) -> Probe:
    """Ask `url` for its first byte to learn its size, validator and range support.

    Raises SourceError with a one-line reason on any failure.
    """
    try:
        async with client.get(url, {"Range": "bytes=0-0"}) as resp:
            found = probe_answer(url, str(resp.url), resp.status, resp.reason, resp.headers,
                                 resp.content_length)
            if found.ranges:
                await _finish_small(resp)
            return found
    except TRANSIENT_ERRORS as e:
        raise SourceError(f"{url}: {describe(e)}") from None


def probe_answer(url: str, final: str, status: int, reason: str | None,
                 headers: Mapping[str, str], content_length: int | None,
                 first: int = 0) -> Probe:
    """What the answer to ``Range: bytes=FIRST-...`` says about the file at `url`
    (`final`: where redirects led). Raises SourceError (ProtocolError) when it
    says nothing usable."""
    if status == 206:
        try:
            _, _, total = parse_content_range(headers.get("Content-Range", ""))
        except ValueError as e:
            raise ProtocolError(f"{url}: {e}") from None
        if total is None:
            raise ProtocolError(f"{url}: does not say the file's size")
        return Probe(final, total, validator_of(headers), True)
    if status == 200:
        length = content_length
        if headers.get("Content-Encoding", "identity").lower() != "identity":
            length = None  # the length of an encoded body is not the file's
        return Probe(final, length, validator_of(headers), False)
    if status == 416:
        # Nothing from FIRST on: an empty file has no byte 0 (RFC 9110 §14.4); a
        # head start's range may begin past the end of a short file.
        try:
            total = parse_unsatisfied_range(headers.get("Content-Range") or "")
        except ValueError:
            total = None
        if total is not None and total <= first:
            return Probe(final, total, validator_of(headers), True)
    raise SourceError(f"{url}: answered {status} {reason or ''}".rstrip())


async def _finish_small(resp: Response) -> None:
    """Read a short body to its end, so that its connection goes back to the pool and
    the download's first request to this source reuses it (no second handshake).
    Best effort: the probe needs only the head, so a body that is cut short or slow
    to come only costs that connection."""
    if resp.content_length is not None and resp.content_length <= 64 * 1024:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            async with asyncio.timeout(PROBE_BODY_TIMEOUT):
                await resp.read()


def check_range_response(headers: Mapping[str, str], start: int, end: int, size: int,
                         validator: str) -> Fault | None:
    """Whether a 206 answer (its `headers`) is exactly the bytes [start, end) of the
    file we mean."""
    enc = (headers.get("Content-Encoding") or "identity").lower()
    if enc not in ("identity", ""):
        return Fault(FaultKind.FATAL, f"sent a {enc}-encoded body to a range request")
    try:
        got = parse_content_range(headers.get("Content-Range") or "")
    except ValueError as e:
        return Fault(FaultKind.FATAL, str(e))
    if got[2] is not None and got[2] != size:
        return Fault(FaultKind.FATAL, f"now says the file has {got[2]} bytes, not {size}")
    if got[:2] != (start, end):
        return Fault(FaultKind.FATAL,
                     f"sent bytes {got[0]}-{got[1] - 1} when asked for {start}-{end - 1}")
    if changed(validator, headers):
        return Fault(FaultKind.FATAL, "the file changed on the server")
    return None


def status_fault(status: int, reason: str | None,
                 headers: Mapping[str, str] | None = None) -> Fault:
    text = f"answered {status} {reason or ''}".rstrip()
    retry_after = retry_after_seconds((headers or {}).get("Retry-After", ""))
    if status in (429, 503) and retry_after is not None:
        # "Busy, come back later" (e.g. an agent's per-client connection cap): the
        # source is fine, it wants fewer connections (RFC 9110 §10.2.3).
        return Fault(FaultKind.BUSY, text, retry_after)
    if status >= 500 or status in (408, 429):
        return Fault(FaultKind.TRANSIENT, text)
    return Fault(FaultKind.FATAL, text)


def retry_after_seconds(value: str) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None if absent
    or malformed. Capped at 60 s: a server cannot park a download for long."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return min(60.0, float(value))
    import email.utils  # only for a date (rare): ~6 ms at every start-up otherwise

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(60.0, max(0.0, when.timestamp() - time.time()))


def describe(e: BaseException) -> str:
    """A short, human description of a network error."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, wire.CertificateError):
        why = getattr(e.os_error, "verify_message", "") or str(e.os_error)
        return f"its TLS certificate cannot be verified ({why}); see --cacert"
    if isinstance(e, wire.ConnectError):
        return f"cannot connect ({e.os_error.strerror or e.os_error})"
    if isinstance(e, wire.Disconnected):
        return "the server closed the connection"
    if isinstance(e, wire.BodyCutShort):
        return "the response body was cut short"
    text = str(e) or type(e).__name__
    return text.splitlines()[0]
