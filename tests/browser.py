"""A small driver for real headless chromium over the DevTools protocol (CDP).

    async with Browser.launch(tmp_path) as b:
        page = await b.page()
        await page.goto("http://127.0.0.1:PORT/fetches")
        await page.type_into("#targets", "some text")
        await page.click("#start")
        await page.wait_for("document.querySelector('.done') !== null")
        png = await page.screenshot()

Chromium is started with ``--remote-debugging-port=0``; the port it picked is
read from ``DevToolsActivePort`` in its user-data-dir, and CDP is spoken over
a websocket with aiohttp's client. :func:`png_info` checks a screenshot
(a valid PNG of a given size that is not blank) without any imaging library.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pathlib
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium is not installed (.ci/run installs Debian's chromium)")


class CdpError(AssertionError):
    pass


class Page:
    """One tab, driven through its own websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            fut = self._waiting.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(data["params"]["exceptionDetails"])[:500])
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CdpError("the browser closed the connection"))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Call a CDP method; returns its result or raises CdpError."""
        mid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = fut
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        answer = await asyncio.wait_for(fut, timeout)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    async def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page; returns its (JSON) value."""
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    async def goto(self, url: str, width: int = 1100, height: int = 700) -> None:
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until truthy; returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):
                value = await self.eval(expression)
                if value:
                    return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression} (last: {value!r}; "
                             f"page errors: {self.console})")

    async def center_of(self, selector: str) -> tuple[float, float]:
        box = await self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if not box:
            raise CdpError(f"no element {selector}")
        return float(box[0]), float(box[1])

    async def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the element's centre."""
        x, y = await self.center_of(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        """Click the field, then type `text` as keyboard input would."""
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        import base64
        r = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(r["data"])

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self.ws.close()


@dataclass
class Browser:
    proc: subprocess.Popen[bytes]
    port: int
    http: aiohttp.ClientSession

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, tmp: pathlib.Path, timeout: float = 60.0) -> AsyncIterator[Browser]:
        """Start headless chromium with its profile in `tmp`; killed on exit."""
        profile = tmp / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "chromium.log", "wb"),  # noqa: SIM115
            start_new_session=True)
        try:
            port = await _active_port(profile / "DevToolsActivePort", proc, timeout)
            async with aiohttp.ClientSession() as http:
                yield cls(proc, port, http)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)  # chromium's own helper processes too
            proc.wait(10)

    async def page(self) -> Page:
        """The first tab (about:blank), attached."""
        async with self.http.get(f"http://127.0.0.1:{self.port}/json/list") as r:
            targets = await r.json()
        tab = next(t for t in targets if t.get("type") == "page")
        ws = await self.http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        return Page(ws)


async def _active_port(path: pathlib.Path, proc: subprocess.Popen[bytes],
                       timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        await asyncio.sleep(0.1)
    raise AssertionError("chromium did not write DevToolsActivePort")


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    colors: frozenset[bytes]  # RGB values of a sample of pixels (a blank page has one)


def png_info(data: bytes) -> PngInfo:
    """Decode an 8-bit RGB/RGBA PNG enough to check it; raises AssertionError if invalid."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, ctype, _, _, interlace = header
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unexpected PNG {header}"
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), "truncated image data"
    prev = bytearray(stride)
    colors: set[bytes] = set()
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        if y % 2 == 0:  # a sample of rows and columns is plenty
            colors.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = line
    return PngInfo(width, height, frozenset(colors))


# --- one-shot rendering from the command line (the status-page tests) ---------------------------

TIMEOUT = 120  # seconds: chromium starts slowly on a loaded 2-core machine


def _run(args: list[str], profile: str) -> subprocess.CompletedProcess[str]:
    argv = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                       env={**os.environ, "HOME": profile})
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r


def dump_dom(url: str, profile: str) -> str:
    """The page's DOM as chromium serializes it after loading `url` (so an unescaped
    `<script>` in a file name would show up as an element)."""
    return _run(["--dump-dom", url], profile).stdout


def screenshot(url: str, path: str, width: int, height: int, profile: str) -> None:
    """Render `url` into the PNG `path` at width x height."""
    _run([f"--screenshot={path}", f"--window-size={width},{height}",
          "--hide-scrollbars", url], profile)


def png_file_info(path: str) -> PngInfo:
    """png_info of the PNG file at `path`."""
    return png_info(pathlib.Path(path).read_bytes())
