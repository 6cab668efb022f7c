"""The agent's fetch page in a real headless browser (Debian's chromium, over CDP):
a fetch started from the page completes, shows its progress and sources, lands in the
agent's folder and is then served and announced. Whole system: tracker, two agents."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import urllib.request

import pytest

from common.errors import MfetchError
from common.tracker_client import TrackerClient
from tests.browser import Browser, png_info
from tests.test_system import make_file

pytestmark = pytest.mark.system

MiB = 1024 * 1024
DONE_GREEN = bytes.fromhex("2fa84f")  # the page's colour for a finished fetch's bar
AGENT_FLAGS = ["--rescan-seconds", "0.5", "--settle-seconds", "0"]


async def holders(tracker: str, name: str) -> int:
    async with TrackerClient(tracker) as t:
        with contextlib.suppress(MfetchError):
            found = await t.locate(name=name)
            return found[0].live_holders if found else 0
    return 0


async def until_holders(tracker: str, name: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await holders(tracker, name) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} never had {n} holders")


async def test_fetch_started_from_the_page_completes_and_is_shared(tmp_path, procs) -> None:
    data = make_file(tmp_path / "a" / "disk.img", 6 * MiB)
    (tmp_path / "b").mkdir()
    tracker = procs.tracker(tmp_path).address
    # The holder sends at most 2 MiB/s, so the fetch lasts long enough to watch it move.
    procs.agent(tmp_path / "a", tracker, tmp_path / "sa", *AGENT_FLAGS, "--upload-rate", "2M")
    b = procs.agent(tmp_path / "b", tracker, tmp_path / "sb", *AGENT_FLAGS).address
    await until_holders(tracker, "disk.img", 1)

    async with Browser.launch(tmp_path) as browser:
        page = await browser.page()
        await page.goto(b + "/fetches", width=1000, height=600)
        await page.wait_for("document.querySelector('#fetches').textContent.includes('No fetches')")
        await page.type_into("#targets", "disk.img")
        await page.click("#start")
        seen: set[float] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = await page.eval(
                "(() => { const f = document.querySelector('.fetch'); if (!f) return null;"
                " return [f.dataset.state, f.querySelector('.pct').textContent]; })()")
            if state:
                seen.add(float(state[1].rstrip("%")))
                if state[0] == "done":
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the page never showed the fetch done; saw {sorted(seen)}")
        shown = await page.wait_for(
            "(() => { const f = document.querySelector('.fetch[data-state=done]');"
            " return f && f.textContent.includes('shared') && !f.textContent.includes('not shared')"
            " && f.textContent; })()")
        png = await page.screenshot()
        (tmp_path / "fetches.png").write_bytes(png)
        await page.close()

    assert "100%" in shown and "disk.img" in shown
    assert "/files/disk.img" in shown and "agent" in shown  # the source is listed
    assert any(0 < p < 100 for p in seen), f"no progress shown between 0 and 100%: {seen}"
    info = png_info(png)
    assert (info.width, info.height) == (1000, 600)
    assert len(info.colors) > 5, "the screenshot is blank"
    assert DONE_GREEN in info.colors, "no finished progress bar in the screenshot"

    # It landed in the agent's folder, whole, and is served and announced from there.
    assert (tmp_path / "b" / "disk.img").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["disk.img"]
    with urllib.request.urlopen(b + "/files/disk.img") as r:
        assert r.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert r.read() == data
    await until_holders(tracker, "disk.img", 2)
