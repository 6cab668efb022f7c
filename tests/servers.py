"""Real servers for tests: nginx as a plain mirror, a rate-limiting TCP proxy
(the "network" in front of an agent), and small aiohttp apps that misbehave.

Each runs on 127.0.0.1 and is stopped by its context manager.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


NGINX_CONF = """\
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: pathlib.Path) -> Iterator[str]:
    """A real nginx serving `root`; yields its base URL (no trailing slash)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise AssertionError("nginx is not installed (.ci/run installs nginx-light)")
    with tempfile.TemporaryDirectory() as prefix:
        for _ in range(5):
            port = free_port()
            conf = pathlib.Path(prefix) / "nginx.conf"
            # As root, nginx's workers would drop to www-data, which cannot read pytest's
            # private temporary folders: keep them as the current user.
            user = "user root root;" if os.geteuid() == 0 else ""
            conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root, user=user))
            proc = subprocess.Popen([binary, "-c", str(conf), "-p", prefix],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_port(port, 10)
                break
            except AssertionError:
                proc.kill()
                proc.wait()
        else:
            raise AssertionError("nginx would not start")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


class _LoopThread:
    """An asyncio loop in a daemon thread, for servers used by synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ThrottleProxy:
    """A TCP proxy to 127.0.0.1:`target` that carries at most `rate` bytes/s downstream,
    shared by all its connections.

    Stands in for a slow network link in front of a real server. `forwarded`
    counts bytes sent to clients.
    """

    def __init__(self, target: int, rate: float) -> None:
        self.target, self.rate = target, rate
        self.forwarded = 0
        self._free_at = 0.0  # when the shared link can send again (loop time)
        self._lt = _LoopThread()
        self._server: asyncio.base_events.Server | None = None
        self.port = int(self._lt.run(self._start()))  # type: ignore[call-overload]

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.close()
            return

        async def up() -> None:
            while data := await cr.read(65536):
                sw.write(data)
                await sw.drain()
            sw.close()

        async def down() -> None:
            while data := await sr.read(16384):
                cw.write(data)
                await cw.drain()
                self.forwarded += len(data)
                now = asyncio.get_running_loop().time()
                self._free_at = max(now, self._free_at) + len(data) / self.rate
                await asyncio.sleep(self._free_at - now)
            cw.close()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        cw.close()
        sw.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._lt.stop()


class AppServer:
    """An aiohttp application on 127.0.0.1, port chosen by the OS."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)  # stalled handlers: no wait
        self._ssl = ssl_context
        self._lt = _LoopThread()
        self.port = int(self._lt.run(self._start()))  # type: ignore[call-overload]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def close(self) -> None:
        self._lt.run(self._runner.cleanup())
        self._lt.stop()


class HttpProxy:
    """A forward HTTP proxy (absolute-URI requests), counting what it relays."""

    def __init__(self) -> None:
        self.relayed = 0
        self.server = AppServer(self._handle)
        self.url = self.server.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        import aiohttp

        self.relayed += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "proxy-connection", "connection")}
        async with aiohttp.ClientSession(auto_decompress=False) as s, \
                s.get(str(request.url), headers=headers, allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items()
                if k.lower() not in ("transfer-encoding", "connection")})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            return resp

    def close(self) -> None:
        self.server.close()


class Socks5Proxy:
    """A minimal SOCKS5 proxy (no auth, CONNECT only), counting its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self._lt = _LoopThread()
        self.port = int(self._lt.run(self._start()))  # type: ignore[call-overload]
        self.url = f"socks5://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            _version, n = await r.readexactly(2)
            await r.readexactly(n)
            w.write(b"\x05\x00")
            _, _cmd, _, atyp = await r.readexactly(4)
            if atyp == 1:
                host = socket.inet_ntoa(await r.readexactly(4))
            elif atyp == 3:
                host = (await r.readexactly((await r.readexactly(1))[0])).decode()
            else:
                raise ConnectionError("unsupported address type")
            port = int.from_bytes(await r.readexactly(2), "big")
            ur, uw = await asyncio.open_connection(host, port)
            self.connections += 1
            w.write(b"\x05\x00\x00\x01" + bytes(6))
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            w.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    def close(self) -> None:
        self._server.close()
        self._lt.stop()
