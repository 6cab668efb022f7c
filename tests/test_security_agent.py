"""The agent's HTTP token, and where mfetch sends it: only to agents the tracker named,
only on the first request (never past a redirect), never to mirrors or URLs given by hand.
Then the whole system with the real commands: a TLS + token tracker, a token-protected
agent, `tracker mirror`, and mfetch."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import pathlib
import time

import aiohttp
import pytest
from aiohttp import web

from agent import app as agent_app
from agent.config import AgentConfig
from client.http import HttpClient, HttpOptions
from common.errors import MfetchError
from common.security import TrackerLink
from common.tracker_client import TrackerClient
from tests import procs as _procs
from tests.agent_helpers import eventually, write
from tests.servers import AppServer
from tests.test_security_tracker import make_pki
from tests.test_system import make_file

TOKEN = "http-token-0123456789abcdef"
AGENT_TOKEN = "agent-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
CLIENT_TOKEN = "client-token-0123456789abcdef"
MiB = 1024 * 1024


# --- the agent's HTTP token ---------------------------------------------------------------


@pytest.fixture
async def protected_agent(tmp_path: pathlib.Path):
    share = tmp_path / "share"
    share.mkdir()
    data = b"secret bytes\n" * 1000
    write(share / "f.bin", data)
    cfg = AgentConfig(dir=str(share), listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                      http_token=TOKEN)
    agent = await agent_app.start(cfg, report=False)
    await eventually(lambda: agent.inventory.entry("f.bin") is not None, what="hashing")
    yield agent, data
    await agent.stop()


async def test_agent_data_is_refused_without_the_token_and_served_with_it(protected_agent):
    agent, data = protected_agent
    sha = hashlib.sha256(data).hexdigest()
    async with aiohttp.ClientSession() as s:
        for path in ("/files/f.bin", f"/pieces/{sha}", "/files/no-such-file", "/files/../x",
                     "/anything-else"):
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
                async with s.get(agent.url + path, headers=headers) as r:
                    assert r.status == 401, (path, headers)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert b"secret" not in await r.read()
        async with s.head(agent.url + "/files/f.bin") as r:
            assert r.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with s.get(agent.url + "/files/f.bin", headers=auth) as r:
            assert r.status == 200 and await r.read() == data
        async with s.get(agent.url + "/files/f.bin", headers={**auth, "Range": "bytes=0-5"}) as r:
            assert r.status == 206 and await r.read() == data[:6]
        async with s.get(agent.url + f"/pieces/{sha}", headers=auth) as r:
            assert r.status == 200
        async with s.get(agent.url + "/files/no-such-file", headers=auth) as r:
            assert r.status == 404
        async with s.get(agent.url + "/healthz") as r:  # health checks need no secret
            assert r.status == 200 and await r.text() == "ok"


def test_agent_http_token_settings_are_checked(tmp_path):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="http_token_file .*cannot read it"):
        AgentConfig(dir=str(tmp_path), http_token_file=str(tmp_path / "nope")).validated()
    with pytest.raises(ConfigError, match="16 to 4096"):
        AgentConfig(dir=str(tmp_path), http_token="short").validated()
    with pytest.raises(ConfigError, match="tracker_token_file .*cannot read it"):
        AgentConfig(dir=str(tmp_path), tracker_token_file=str(tmp_path / "nope")).validated()


# --- where mfetch sends the agent token ---------------------------------------------------


class Recorder:
    """An HTTP server that records each request's Authorization header."""

    def __init__(self, handler=None) -> None:
        self.seen: list[str | None] = []
        self._handler = handler
        self.server = AppServer(self._handle)
        self.url = self.server.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.headers.get("Authorization"))
        if self._handler is not None:
            return await self._handler(request)
        return web.Response(text="ok")

    def close(self) -> None:
        self.server.close()


async def test_agent_token_goes_to_named_agents_only_and_never_past_a_redirect():
    target = Recorder()
    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/same":
            raise web.HTTPFound("/landed")
        if request.path == "/away":
            raise web.HTTPFound(target.url + "/landed")
        return web.Response(text="ok")
    agent = Recorder(redirect)
    opts = HttpOptions(agent_token=TOKEN)
    try:
        async with HttpClient(opts, connect_timeout=20, read_timeout=20, per_host=4) as http:
            async with http.get(agent.url + "/x", agent=True) as r:
                assert r.status == 200
            assert agent.seen == [f"Bearer {TOKEN}"]
            async with http.get(agent.url + "/away", agent=True) as r:
                assert r.status == 200
            assert agent.seen[-1] == f"Bearer {TOKEN}" and target.seen == [None]
            async with http.get(agent.url + "/same", agent=True) as r:  # even the same origin
                assert r.status == 200
            assert agent.seen[-2:] == [f"Bearer {TOKEN}", None]
            async with http.get(target.url + "/plain") as r:  # a mirror or a URL given
                assert r.status == 200
            assert target.seen == [None, None]
    finally:
        agent.close()
        target.close()


# --- the whole system with the real commands ----------------------------------------------


def _files(tmp_path: pathlib.Path) -> dict[str, str]:
    out = {}
    for name, token in (("http", TOKEN), ("agent", AGENT_TOKEN), ("admin", ADMIN_TOKEN),
                        ("client", CLIENT_TOKEN)):
        p = tmp_path / f"{name}.token"
        p.write_text(token + "\n")
        p.chmod(0o600)
        out[name] = str(p)
    return out


def _secure_tracker(procs, tmp_path, pki, tokens):
    return procs.tracker(tmp_path, "--tls-cert", pki.cert, "--tls-key", pki.key,
                         "--agent-token-file", tokens["agent"],
                         "--admin-token-file", tokens["admin"],
                         "--client-token-file", tokens["client"])


def _wait_holder(address: str, link: TrackerLink, name: str, timeout: float = 60.0) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with TrackerClient(address, link=link) as t:
            while time.monotonic() < deadline:
                with contextlib.suppress(MfetchError):
                    if (await t.locate(name=name))[0].live_holders:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{name} never announced")
    asyncio.run(poll())


def _mfetch(*args: str):
    return _procs.run([_procs.command("mfetch"), *args], timeout=180)


def _one_line_error(r, *words: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfetch: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.system
def test_fetch_through_a_tls_token_tracker_from_a_protected_agent(procs, tmp_path):
    pki = make_pki(tmp_path / "pki")
    tokens = _files(tmp_path)
    data = make_file(tmp_path / "share" / "big.bin", 3 * MiB, seed=51)
    tracker = _secure_tracker(procs, tmp_path, pki, tokens)
    # An agent without the agent token is refused, says so, and is never listed.
    stranger = procs.agent(tmp_path / "share", tracker.address, tmp_path / "s0",
                           "--tracker-ca", pki.ca, "--rescan-seconds", "0.5")
    procs.agent(tmp_path / "share", tracker.address, tmp_path / "s1",
                "--tracker-ca", pki.ca, "--tracker-token-file", tokens["agent"],
                "--http-token-file", tokens["http"], "--rescan-seconds", "0.5",
                "--settle-seconds", "0")
    link = TrackerLink(ca=pki.ca, token=CLIENT_TOKEN)
    _wait_holder(tracker.address, link, "big.bin")
    deadline = time.monotonic() + 60
    while "needs the agent token" not in stranger.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "needs the agent token" in stranger.output()

    common = ["big.bin", "--tracker", tracker.address, "--json", "-q"]
    ok = _mfetch(*common, "-o", str(tmp_path / "out.bin"), "--tracker-ca", pki.ca,
                 "--tracker-token-file", tokens["client"], "--agent-token-file", tokens["http"])
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    (src,) = json.loads(ok.stdout)["sources"]
    assert src["kind"] == "agent" and src["bytes"] == len(data)
    assert json.loads(ok.stdout)["sources"][0]["url"].startswith("http://127.0.0.1:")

    # Each missing piece is one clear refusal.
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "a"), "--tracker-token-file",
                            tokens["client"]), "unreachable", "--tracker-tls or --tracker-ca")
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "b"), "--tracker-ca", pki.ca),
                    "refused the call", "Locate needs the client token")
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "c"), "--tracker-ca", pki.ca,
                            "--tracker-token-file", tokens["client"]),
                    "401", "--agent-token-file")
    assert not (tmp_path / "c").exists()


@pytest.mark.system
def test_mirror_admin_through_the_cli(procs, tmp_path):
    pki = make_pki(tmp_path / "pki")
    tokens = _files(tmp_path)
    tracker = _secure_tracker(procs, tmp_path, pki, tokens)
    url, sha = "http://mirror.example/f.bin", "ab" * 32
    base = [_procs.command("tracker"), "mirror"]
    where = ["--tracker", tracker.address, "--tracker-ca", pki.ca]
    r = _procs.run([*base, "add", url, "--sha256", sha, *where])
    expected = (f"tracker: error: tracker at {tracker.address} refused the call: AddMirror "
                "needs the admin token (authorization: Bearer TOKEN); none was sent")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [expected], r.stderr
    r = _procs.run([*base, "add", url, "--sha256", sha, *where,
                    "--tracker-token-file", tokens["agent"]])
    assert r.returncode == 1 and "wrong token" in r.stderr
    r = _procs.run([*base, "add", url, "--sha256", sha, *where,
                    "--tracker-token-file", tokens["admin"]])
    assert r.returncode == 0, r.stderr
    r = _procs.run([*base, "ls", *where], env={"TRACKER_ADMIN_TOKEN": ADMIN_TOKEN})
    assert r.returncode == 0 and url in r.stdout, r.stderr
    r = _procs.run([*base, "ls", "--tracker", tracker.address],
                   env={"MFETCH_TRACKER_CA": pki.ca, "TRACKER_ADMIN_TOKEN_FILE": tokens["client"]})
    assert r.returncode == 0 and url in r.stdout, r.stderr
    r = _procs.run([*base, "rm", url, *where], env={"TRACKER_ADMIN_TOKEN": ADMIN_TOKEN})
    assert r.returncode == 0, r.stderr


@pytest.mark.system
def test_bad_certificate_files_stop_the_tracker_with_one_line(procs, tmp_path):
    pki = make_pki(tmp_path / "pki")
    r = _procs.run([_procs.command("tracker"), "serve", "--listen", "127.0.0.1:0",
                    "--db", str(tmp_path / "t.db"), "--tls-cert", pki.cert,
                    "--tls-key", pki.client_key], timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("tracker: error: tls_cert key"), r.stderr
    assert "does not match" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.system
def test_agent_token_is_not_sent_to_a_plain_mirror(procs, tmp_path):
    tokens = _files(tmp_path)
    data = make_file(tmp_path / "share" / "m.bin", 8 * MiB, seed=52)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "m.bin").write_bytes(data)

    seen: list[str | None] = []

    async def mirror(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.FileResponse(tmp_path / "mirror" / "m.bin")

    server = AppServer(mirror)
    try:
        tracker = procs.tracker(tmp_path, "--admin-token-file", tokens["admin"])
        add = _procs.run([_procs.command("tracker"), "mirror", "add", server.url + "/m.bin",
                          "--sha256", hashlib.sha256(data).hexdigest(),
                          "--tracker", tracker.address, "--tracker-token-file",
                          tokens["admin"]])
        assert add.returncode == 0, add.stderr
        procs.agent(tmp_path / "share", tracker.address, tmp_path / "s1",
                    "--http-token-file", tokens["http"], "--rescan-seconds", "0.5",
                    "--settle-seconds", "0")
        _wait_holder(tracker.address, TrackerLink(), "m.bin")
        r = _mfetch("m.bin", "--tracker", tracker.address, "--json", "-q", "-o",
                    str(tmp_path / "out.bin"), "--agent-token-file", tokens["http"],
                    "--stall-timeout", "30")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out.bin").read_bytes() == data
        by_kind = {s["kind"]: s for s in json.loads(r.stdout)["sources"]}
        assert by_kind["agent"]["bytes"] > 0 and by_kind["agent"]["dropped"] in ("", None, False)
        assert seen, "the mirror was never asked"
        assert seen == [None] * len(seen)
    finally:
        server.close()


@pytest.mark.system
def test_fetch_through_a_mutual_tls_tracker(procs, tmp_path):
    pki = make_pki(tmp_path / "pki")
    data = make_file(tmp_path / "share" / "m.bin", 1 * MiB, seed=53)
    tracker = procs.tracker(tmp_path, "--tls-cert", pki.cert, "--tls-key", pki.key,
                            "--tls-client-ca", pki.ca)
    mine = ["--tracker-ca", pki.ca, "--tracker-cert", pki.client_cert,
            "--tracker-key", pki.client_key]
    procs.agent(tmp_path / "share", tracker.address, tmp_path / "s1", *mine,
                "--rescan-seconds", "0.5", "--settle-seconds", "0")
    _wait_holder(tracker.address, TrackerLink(ca=pki.ca, cert=pki.client_cert,
                                              key=pki.client_key), "m.bin")
    common = ["m.bin", "--tracker", tracker.address, "-q"]
    r = _mfetch(*common, "-o", str(tmp_path / "out.bin"), *mine)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "x"), "--tracker-ca", pki.ca),
                    "unreachable", "client certificate")
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "y"), "--tracker-ca", pki.ca,
                            "--tracker-cert", pki.client_cert), "go together")
    _one_line_error(_mfetch(*common, "-o", str(tmp_path / "z"), "--tracker-ca", pki.ca,
                            "--tracker-cert", pki.client_cert, "--tracker-key", pki.key),
                    "does not match")


@pytest.mark.parametrize("remote, path, allowed", [
    ("127.0.0.1", "/status", True),
    ("::1", "/api/fetches/abc/pause", True),
    ("127.0.0.1", "/files/a.bin", False),       # data always needs the token
    ("127.0.0.1", "/statusx", False),           # only the pages themselves
    ("192.0.2.7", "/status", False),            # from the LAN the pages need it too
    ("192.0.2.7", "/fetches", False),
])
async def test_local_pages_need_no_token_from_loopback_only(remote, path, allowed):
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from agent.http_auth import require_token

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda k, d=None: (remote, 1234) if k == "peername" else d
    request = make_mocked_request("GET", path, transport=transport)

    async def handler(request):
        return web.Response(text="ok")

    check = require_token("s3cret-token-0123456789")
    if allowed:
        assert (await check(request, handler)).status == 200
    else:
        with pytest.raises(web.HTTPUnauthorized):
            await check(request, handler)


async def test_a_token_of_raw_bytes_is_refused_not_a_crash(protected_agent):
    """A header that is not UTF-8 (aiohttp passes it on surrogate-escaped) gets 401 like
    any wrong token, not a 500 and a traceback in the log."""
    agent, _ = protected_agent
    host, port = agent.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /files/f.bin HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer \xff\xfeabc0123456789abcdef\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
