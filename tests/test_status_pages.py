"""The tracker's and the agent's status pages, rendered by a real headless chromium.

The DOM chromium builds must show the agents and contents (and, on the agent's
page, a transfer in flight), a file named like an HTML tag must come out as text,
never as an element, and a screenshot must be a valid PNG of the asked size that
is not blank.
"""
from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from agent import app as agent_app
from agent.config import AgentConfig
from tests import browser
from tests import procs as _procs
from tests.agent_helpers import eventually, write
from tests.obs_helpers import get_json, tracker_http
from tests.test_system import AGENT_FLAGS, MiB, make_file, mfetch, summary, wait_holders

HOSTILE = "<script>alert(1)<b>x"  # no '/' can be in a file name; still an injection


def _assert_no_injection(dom: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;b&gt;x" in dom, "the hostile name is shown, as text"
    assert not re.search(r"<script", dom, re.IGNORECASE), "no script element reached the DOM"
    assert not re.search(r"<b>x", dom), "no element from a file name"


@pytest.mark.system
def test_tracker_page_renders_agents_contents_and_activity(procs, tmp_path):
    tracker = procs.tracker(tmp_path, "--http", "127.0.0.1:0")
    http = tracker_http(tracker)
    data = make_file(tmp_path / "origin" / "of.tar.gz", 2 * MiB, seed=7)
    agents = []
    for i in range(2):
        d = tmp_path / f"share{i}"
        d.mkdir()
        (d / "of.tar.gz").write_bytes(data)
        agents.append(procs.agent(d, tracker.address, tmp_path / f"st{i}", *AGENT_FLAGS))
    write(tmp_path / "share0" / HOSTILE, b"hostile")
    wait_holders(tracker.address, "of.tar.gz", 2)
    wait_holders(tracker.address, HOSTILE, 1)
    mirror = "http://mirror.example.org/pub/of.tar.gz"
    r = _procs.run([_procs.command("tracker"), "mirror", "add", mirror, "--sha256",
                    summary(mfetch("of.tar.gz", "--tracker", tracker.address, "-o",
                                   str(tmp_path / "out"), "--json"))["sha256"],
                    "--tracker", tracker.address])
    assert r.returncode == 0, r.stderr
    ids = [get_json(a.address + "/api/status")["agent"]["agent_id"] for a in agents]

    profile = str(tmp_path / "chromium")
    dom = browser.dump_dom(http + "/", profile)
    assert "<title>mfetch tracker</title>" in dom
    assert '<span id="live-agents">2 live agents</span>' in dom
    agents_table = dom[dom.index('<table id="agents"'):dom.index("</table>", dom.index('id="agents"'))]
    for agent_id, proc in zip(ids, agents, strict=True):
        assert agent_id in agents_table and proc.address in agents_table
    contents_table = dom[dom.index('<table id="contents"'):]
    contents_table = contents_table[:contents_table.index("</table>")]
    assert "of.tar.gz" in contents_table and mirror in contents_table
    assert all(agent_id in contents_table for agent_id in ids)
    locates = dom[dom.index('<table id="locates"'):]
    assert "name of.tar.gz" in locates[:locates.index("</table>")]
    _assert_no_injection(dom)

    shot = str(tmp_path / "tracker.png")
    browser.screenshot(http + "/", shot, 1200, 900, profile)
    facts = browser.png_file_info(shot)
    assert (facts.width, facts.height) == (1200, 900)
    assert len(facts.colors) > 4, "the screenshot is not blank"


async def test_agent_page_renders_shares_and_a_transfer_in_flight(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    size = 32 * MiB
    write(share / "big.bin", b"\x02" * size)
    write(share / HOSTILE, b"hostile")
    cfg = AgentConfig(dir=str(share), listen="127.0.0.1:0", state_dir=str(tmp_path / "st"),
                      settle_seconds=0, rescan_seconds=0.2)
    agent = await agent_app.start(cfg, report=False)
    profile = str(tmp_path / "chromium")
    try:
        await eventually(lambda: agent.inventory.entry("big.bin") and agent.inventory.entry(
            HOSTILE), what="both files hashed")
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(timeout=timeout) as client, \
                client.get(f"{agent.url}/files/big.bin") as resp:
            await resp.content.readexactly(64 * 1024)  # then stop reading: it stays in flight
            dom = await asyncio.to_thread(browser.dump_dom, agent.url + "/status", profile)
            shot = str(tmp_path / "agent.png")
            await asyncio.to_thread(browser.screenshot, agent.url + "/status", shot, 1000, 700,
                                    profile)
    finally:
        await agent.stop()
    assert "<title>mfetch agent</title>" in dom
    files = dom[dom.index('<table id="files"'):]
    files = files[:files.index("</table>")]
    sha = agent.inventory.entry("big.bin")
    assert sha is not None
    assert "big.bin" in files and sha.identity.sha256.hex() in files and "32.0 MiB" in files
    transfers = dom[dom.index('<table id="transfers"'):]
    transfers = transfers[:transfers.index("</table>")]
    assert "127.0.0.1" in transfers and "big.bin" in transfers
    assert f"0–{size - 1}" in transfers
    _assert_no_injection(dom)
    facts = browser.png_file_info(shot)
    assert (facts.width, facts.height) == (1000, 700)
    assert len(facts.colors) > 4, "the screenshot is not blank"
