"""A real headless browser (Debian's chromium) for the status-page tests.

`dump_dom` returns the DOM after the page has loaded and been parsed, so an
unescaped `<script>` in a file name would show up as an element; `screenshot`
renders the page to a PNG that `png_facts` checks without any imaging library.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 120  # seconds: chromium starts slowly on a loaded 2-core machine


def chromium() -> str:
    """The browser binary; fails the test (it is a required tool: .ci/run installs it)."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does)",
                pytrace=False)


def _run(args: list[str], profile: str) -> subprocess.CompletedProcess[str]:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                       env={**os.environ, "HOME": profile})
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r


def dump_dom(url: str, profile: str) -> str:
    """The page's DOM as chromium serializes it after loading `url`."""
    return _run(["--dump-dom", url], profile).stdout


def screenshot(url: str, path: str, width: int, height: int, profile: str) -> None:
    """Render `url` into the PNG `path` at width x height."""
    _run([f"--screenshot={path}", f"--window-size={width},{height}",
          "--hide-scrollbars", url], profile)


@dataclass(frozen=True)
class PngFacts:
    width: int
    height: int
    distinct_bytes: int  # distinct byte values in the decoded image data: 1-3 means blank


def png_facts(path: str) -> PngFacts:
    """Check `path` is a well-formed PNG (signature, chunk CRCs, zlib data) and describe it."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    pixels = zlib.decompress(idat)
    return PngFacts(width, height, len(set(pixels)))
