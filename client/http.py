"""HTTP edge of the client: one session with the user's options, redirects, probing.

aiohttp errors are translated here, in one place, into :class:`client.events.Fault`
(for the scheduler) or :class:`common.errors.SourceError` (for the user).

Redirects are followed here, not by aiohttp, so that credentials never follow
a redirect to another origin: a password from ``--user`` or a URL, and
sensitive headers given with ``--header`` (Authorization, Cookie), go only to
the origins the user named. ``.netrc`` credentials are per host by nature.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import http.cookiejar
import http.cookies
import netrc
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from client.events import Fault, FaultKind
from common.errors import ConfigError, ProtocolError, SourceError
from common.http_ranges import parse_content_range
from common.security import bearer

# Errors that mean "try again later", not "this source is wrong".
TRANSIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)

USER_AGENT = "mfetch/0.1"
BASE_HEADERS = {"Accept-Encoding": "identity"}
REDIRECTS = (301, 302, 303, 307, 308)
SENSITIVE = ("authorization", "cookie", "proxy-authorization")


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
    if not sep or not name.strip() or any(c in name for c in " \t\r\n") or "\n" in value:
        raise ConfigError(f"--header wants 'Name: value', got {text!r}")
    return name.strip(), value.strip()


class HttpClient:
    """The aiohttp session for a download, with the user's options applied.

    Raises ConfigError (at construction) for an unreadable cookie, netrc or CA
    file, or a proxy URL of an unknown scheme.
    """

    def __init__(self, opts: HttpOptions, *, connect_timeout: float, read_timeout: float,
                 per_host: int) -> None:
        self.opts = opts
        self._netrc = _load_netrc(opts.netrc_file) if opts.netrc_file else None
        # The context for every TLS connection (https sources, an https proxy), passed
        # to each request: made on the first one, since loading the system's CA store
        # costs ~0.1 s (and aiohttp's own context has none: client/aiohttp_import.py).
        self._ssl: ssl.SSLContext | None = None
        if opts.cacert:
            try:
                self._ssl = ssl.create_default_context(cafile=opts.cacert)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"--cacert {opts.cacert}: {e}") from None
        ssl_ctx: ssl.SSLContext | bool = self._ssl or True
        self._http_proxy: str | None = None
        connector: aiohttp.BaseConnector
        scheme = urlsplit(opts.proxy).scheme if opts.proxy else ""
        self._tls_proxy = scheme == "https"
        if opts.proxy and scheme in ("socks4", "socks5", "socks5h", "socks4a"):
            from aiohttp_socks import ProxyConnector  # only loaded when asked for

            connector = ProxyConnector.from_url(opts.proxy, rdns=scheme.endswith("h"), limit=0,
                                                limit_per_host=per_host, ssl=ssl_ctx)
        elif opts.proxy and scheme not in ("http", "https"):
            raise ConfigError(f"--proxy {opts.proxy}: use http://, https://, socks4:// or socks5://")
        else:
            self._http_proxy = opts.proxy
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_host, ssl=ssl_ctx)
        jar = aiohttp.CookieJar(unsafe=True)  # the user's own cookies may name an IP host
        if opts.cookie_file:
            _load_cookies(jar, opts.cookie_file)
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=jar, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          sock_read=read_timeout),
            headers={"User-Agent": opts.user_agent})

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> HttpClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str] | None = None, *,
                  agent: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following at most max_redirects redirects; yields the final response.

        `agent`: `url` is an agent the tracker named, so the agent token (if any) goes
        with the first request, and only with it (not to a redirect's target).
        Raises SourceError for too many redirects or a redirect to a non-HTTP URL;
        aiohttp's errors pass through (callers translate them).
        """
        for hop in range(self.opts.max_redirects + 1):
            plain, auth = self._credentials(url)
            trusted = origin(url) in self.opts.trusted
            extra = {k: v for k, v in self.opts.headers
                     if trusted or k.lower() not in SENSITIVE}
            if agent and hop == 0 and self.opts.agent_token:
                auth = bearer(self.opts.agent_token)
            if auth and not any(k.lower() == "authorization" for k in extra):
                extra["Authorization"] = auth  # an explicit header wins, as in curl
            tls = self._tls_proxy or urlsplit(plain).scheme == "https"
            resp = await self.session.get(
                plain, headers={**BASE_HEADERS, **extra, **(headers or {})},
                allow_redirects=False, proxy=self._http_proxy,
                ssl=self._tls_context() if tls else True)
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

    def _tls_context(self) -> ssl.SSLContext:
        """The --cacert context, else the system's CA store (as aiohttp's default is)."""
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


def _load_cookies(jar: aiohttp.CookieJar, path: str) -> None:
    """Load a Netscape-format cookie file (curl -c / wget --save-cookies)."""
    cj = http.cookiejar.MozillaCookieJar(path)
    try:
        # Expiry 0 marks a session cookie (as curl writes them): keep those.
        cj.load(ignore_discard=True, ignore_expires=True)
    except (OSError, http.cookiejar.LoadError) as e:
        raise ConfigError(f"cookie file {path}: {e}") from None
    now = time.time()
    for c in cj:
        if c.expires and c.expires < now:
            continue
        host = c.domain.lstrip(".")
        scheme = "https" if c.secure else "http"
        morsel: http.cookies.Morsel[str] = http.cookies.Morsel()
        morsel.set(c.name, c.value or "", c.value or "")
        morsel["path"] = c.path or "/"
        if c.domain.startswith("."):
            morsel["domain"] = c.domain  # the cookie's subdomains too, as the file says
        if c.secure:
            morsel["secure"] = True  # never over plain HTTP
        jar.update_cookies({c.name: morsel}, response_url=URL(f"{scheme}://{host}{c.path}"))


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first limit + 1 bytes if it is longer (so callers can
    tell "too long"). aiohttp's read(n) returns what is buffered, not n bytes."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await resp.content.readany()
        if not chunk:
            break
        data += chunk
    return bytes(data[: limit + 1])


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


async def probe(client: HttpClient, url: str) -> Probe:
    """Ask `url` for its first byte to learn its size, validator and range support.

    Raises SourceError with a one-line reason on any failure.
    """
    try:
        async with client.get(url, {"Range": "bytes=0-0"}) as resp:
            final = str(resp.url)
            if resp.status == 206:
                try:
                    _, _, total = parse_content_range(resp.headers.get("Content-Range", ""))
                except ValueError as e:
                    raise ProtocolError(f"{url}: {e}") from None
                if total is None:
                    raise ProtocolError(f"{url}: does not say the file's size")
                return Probe(final, total, validator_of(resp.headers), True)
            if resp.status == 200:
                length = resp.content_length
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    length = None  # the length of an encoded body is not the file's
                return Probe(final, length, validator_of(resp.headers), False)
            if resp.status == 416:  # an empty file has no byte 0 (RFC 9110 §14.4)
                cr = resp.headers.get("Content-Range", "")
                if cr.strip() == "bytes */0":
                    return Probe(final, 0, validator_of(resp.headers), True)
            raise SourceError(f"{url}: answered {resp.status} {resp.reason or ''}".rstrip())
    except aiohttp.InvalidURL:
        raise SourceError(f"{url}: not a valid URL") from None
    except TRANSIENT_ERRORS as e:
        raise SourceError(f"{url}: {describe(e)}") from None


def check_range_response(resp: aiohttp.ClientResponse, start: int, end: int, size: int,
                         validator: str) -> Fault | None:
    """Whether a 206 answer is exactly the bytes [start, end) of the file we mean."""
    enc = resp.headers.get("Content-Encoding", "identity").lower()
    if enc not in ("identity", ""):
        return Fault(FaultKind.FATAL, f"sent a {enc}-encoded body to a range request")
    try:
        got = parse_content_range(resp.headers.get("Content-Range", ""))
    except ValueError as e:
        return Fault(FaultKind.FATAL, str(e))
    if got[2] is not None and got[2] != size:
        return Fault(FaultKind.FATAL, f"now says the file has {got[2]} bytes, not {size}")
    if got[:2] != (start, end):
        return Fault(FaultKind.FATAL,
                     f"sent bytes {got[0]}-{got[1] - 1} when asked for {start}-{end - 1}")
    now = validator_of(resp.headers)
    if validator and now and now != validator:
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
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(60.0, max(0.0, when.timestamp() - time.time()))


def describe(e: BaseException) -> str:
    """A short, human description of a network error."""
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate cannot be verified ({e.certificate_error}); see --cacert"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect ({e.os_error.strerror or e.os_error})"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "the response body was cut short"
    text = str(e) or type(e).__name__
    return text.splitlines()[0]
