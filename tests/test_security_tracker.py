"""TLS, mutual TLS and tokens on the tracker: every refusal, and the calls that pass.

A real in-process tracker on 127.0.0.1:0 and the real TrackerClient; certificates
from trustme.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.errors import ConfigError, NotFoundError, TrackerError
from common.security import TrackerLink
from common.tracker_client import TrackerClient
from tests.tracker_fakes import ident
from tracker import config as tconfig
from tracker import server

AGENT_TOKEN = "agent-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
CLIENT_TOKEN = "client-token-0123456789abcdef"
SHA = bytes(range(32))


@dataclass
class Pki:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str


def make_pki(d: pathlib.Path) -> Pki:
    d.mkdir(exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    srv = ca.issue_cert("127.0.0.1", "localhost")
    cli = ca.issue_cert("client.example")
    stranger = other.issue_cert("client.example")
    paths = {}
    for name, blob in (("ca", ca.cert_pem), ("other_ca", other.cert_pem),
                       ("key", srv.private_key_pem), ("client_key", cli.private_key_pem),
                       ("other_client_key", stranger.private_key_pem)):
        blob.write_to_path(str(d / f"{name}.pem"))
        paths[name] = str(d / f"{name}.pem")
    for name, c in (("cert", srv), ("client_cert", cli), ("other_client_cert", stranger)):
        p = d / f"{name}.pem"
        p.write_bytes(b"".join(b.bytes() for b in c.cert_chain_pems))
        paths[name] = str(p)
    return Pki(**paths)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _config(tmp_path: pathlib.Path, **settings: object) -> tconfig.TrackerConfig:
    return tconfig.load(None, {"listen": "127.0.0.1:0", "db": str(tmp_path / "t.db"),
                               **settings}, environ=False)


@pytest.fixture
async def start(tmp_path):
    started = []

    async def go(**settings: object) -> server.RunningTracker:
        running = await server.start(_config(tmp_path, **settings))
        started.append(running)
        return running
    yield go
    for running in started:
        await running.stop(grace=1)


def client(address: str, **link: object) -> TrackerClient:
    return TrackerClient(address, timeout=20, link=TrackerLink(**link))  # type: ignore[arg-type]


# --- tokens ------------------------------------------------------------------------------


async def test_agent_without_or_with_a_wrong_token_cannot_announce(start) -> None:
    t = await start(agent_token=AGENT_TOKEN)
    for token, why in ((None, "needs the agent token"), ("x" * 20, "wrong token"),
                       (ADMIN_TOKEN, "wrong token")):
        async with client(t.address, token=token) as c:
            for call in (c.register("a1", "http://10.0.0.1:7070"),
                         c.announce("a1", {"f": ident("f")}, replace=True),
                         c.heartbeat("a1")):
                with pytest.raises(TrackerError, match=why) as e:
                    await call
                assert "refused the call" in str(e.value)
                assert not isinstance(e.value, NotFoundError)
    async with client(t.address) as c:  # nothing was registered by the refused calls
        with pytest.raises(NotFoundError):
            await c.locate(name="f")
    async with client(t.address, token=AGENT_TOKEN) as c:
        await c.register("a1", "http://10.0.0.1:7070")
        assert await c.announce("a1", {"f": ident("f")}, replace=True) == 1
        assert await c.heartbeat("a1") == 30
        assert (await c.locate(name="f"))[0].live_holders == 1


async def test_mirror_add_and_remove_need_the_admin_token(start) -> None:
    t = await start(agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN)
    url = "http://mirror.example/f.bin"
    for token in (None, AGENT_TOKEN, "y" * 30):
        async with client(t.address, token=token) as c:
            with pytest.raises(TrackerError, match="AddMirror.*admin token"):
                await c.add_mirror(url, SHA)
            with pytest.raises(TrackerError, match="RemoveMirror.*admin token"):
                await c.remove_mirror(url)
            assert await c.list_mirrors() == []  # no client token: reading stays open
    async with client(t.address, token=ADMIN_TOKEN) as c:
        await c.add_mirror(url, SHA)
        assert [m.url for m in await c.list_mirrors()] == [url]
        assert await c.remove_mirror(url)


async def test_client_token_protects_locate_and_mirror_list(start) -> None:
    t = await start(client_token=CLIENT_TOKEN, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN)
    async with client(t.address) as c:
        with pytest.raises(TrackerError, match="Locate needs the client token"):
            await c.locate(name="f")
        with pytest.raises(TrackerError, match="ListMirrors needs the client token"):
            await c.list_mirrors()
    for token in (CLIENT_TOKEN, AGENT_TOKEN, ADMIN_TOKEN):  # any of the tracker's tokens reads
        async with client(t.address, token=token) as c:
            with pytest.raises(NotFoundError):
                await c.locate(name="f")
            assert await c.list_mirrors() == []
    async with client(t.address, token=CLIENT_TOKEN) as c:  # but a client cannot announce
        with pytest.raises(TrackerError, match="wrong token"):
            await c.register("a1", "http://10.0.0.1:7070")


async def test_without_tokens_everything_is_open_as_before(start) -> None:
    t = await start()
    async with client(t.address, token="z" * 20) as c:  # a token nobody asked for is ignored
        await c.register("a1", "http://10.0.0.1:7070")
        await c.add_mirror("http://m.example/f", SHA)


async def test_a_method_the_table_does_not_know_fails_closed(start) -> None:
    t = await start(agent_token=AGENT_TOKEN)
    async with grpc.aio.insecure_channel(t.address) as ch:
        call = ch.unary_unary("/mfetch.v1.Tracker/SomethingNew")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(b"", timeout=20, metadata=(("authorization", f"Bearer {AGENT_TOKEN}"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_service_stays_open(start, pki) -> None:
    t = await start(agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN, client_token=CLIENT_TOKEN,
                    tls_cert=pki.cert, tls_key=pki.key)
    creds = grpc.ssl_channel_credentials(pathlib.Path(pki.ca).read_bytes())
    async with grpc.aio.secure_channel(t.address, creds) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="mfetch.v1.Tracker"), timeout=20)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- TLS ---------------------------------------------------------------------------------


async def test_plain_text_client_is_refused_by_a_tls_tracker(start, pki) -> None:
    t = await start(tls_cert=pki.cert, tls_key=pki.key)
    async with TrackerClient(t.address, timeout=5) as c:
        with pytest.raises(TrackerError, match="unreachable.*--tracker-tls or --tracker-ca"):
            await c.list_mirrors()
    async with client(t.address, ca=pki.ca) as c:
        assert await c.list_mirrors() == []


async def test_client_that_does_not_trust_the_ca_is_refused(start, pki) -> None:
    t = await start(tls_cert=pki.cert, tls_key=pki.key)
    async with client(t.address, ca=pki.other_ca) as c:
        with pytest.raises(TrackerError, match="TLS handshake failed"):
            await c.list_mirrors()
    async with client(t.address, tls=True) as c:  # the system's roots do not know trustme's CA
        with pytest.raises(TrackerError, match="TLS handshake failed"):
            await c.list_mirrors()


async def test_tls_client_to_a_plain_tracker_fails_clearly(start, pki) -> None:
    t = await start()
    async with client(t.address, ca=pki.ca) as c:
        with pytest.raises(TrackerError, match="unreachable"):
            await c.list_mirrors()


async def test_mutual_tls_refuses_a_client_without_a_certificate(start, pki) -> None:
    t = await start(tls_cert=pki.cert, tls_key=pki.key, tls_client_ca=pki.ca)
    async with client(t.address, ca=pki.ca) as c:
        with pytest.raises(TrackerError, match="unreachable.*client certificate"):
            await c.list_mirrors()
    async with client(t.address, ca=pki.ca, cert=pki.other_client_cert,
                      key=pki.other_client_key) as c:  # signed by a CA the tracker does not trust
        with pytest.raises(TrackerError, match="unreachable.*client certificate"):
            await c.list_mirrors()
    async with client(t.address, ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as c:
        assert await c.list_mirrors() == []


# --- start-up checks ---------------------------------------------------------------------


def test_bad_tls_and_token_settings_are_one_clear_error(tmp_path, pki) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    short = tmp_path / "short"
    short.write_text("abc\n")
    good = tmp_path / "good"
    good.write_text(AGENT_TOKEN + "\n")
    cases = [
        ({"tls_cert": str(tmp_path / "nope.pem"), "tls_key": pki.key}, "cannot read it"),
        ({"tls_cert": pki.cert}, "tls_cert and tls_key go together"),
        ({"tls_cert": pki.cert, "tls_key": pki.client_key}, "does not match"),
        ({"tls_cert": str(good), "tls_key": pki.key}, "not a PEM file"),
        ({"tls_client_ca": pki.ca}, "needs tls_cert"),
        ({"tls_cert": pki.cert, "tls_key": pki.key, "tls_client_ca": str(good)},
         "not a PEM file"),
        ({"agent_token_file": str(tmp_path / "missing")}, "agent_token_file .*cannot read it"),
        ({"admin_token_file": str(empty)}, "admin_token_file .*empty"),
        ({"client_token_file": str(short)}, "16 to 4096 characters"),
        ({"agent_token": "has a space in it ok"}, "visible ASCII"),
        ({"agent_token": AGENT_TOKEN, "agent_token_file": str(good)}, "not both"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            _config(tmp_path, **settings)
    assert _config(tmp_path, agent_token_file=str(good)).tokens.agent == AGENT_TOKEN
    assert AGENT_TOKEN not in repr(_config(tmp_path, agent_token=AGENT_TOKEN))


def test_client_link_files_are_checked_at_start(tmp_path, pki) -> None:
    with pytest.raises(ConfigError, match="go together"):
        TrackerLink(cert=pki.client_cert).checked()
    with pytest.raises(ConfigError, match="cannot read it"):
        TrackerLink(ca=str(tmp_path / "nope")).checked()
    with pytest.raises(ConfigError, match="does not match"):
        TrackerLink(cert=pki.client_cert, key=pki.key).checked()


def test_token_layers_a_higher_layer_replaces_the_other_form(tmp_path, monkeypatch) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    yaml_file = tmp_path / "tracker.yaml"
    yaml_file.write_text(f"agent_token_file: {token_file}\nadmin_token: {ADMIN_TOKEN}\n")
    monkeypatch.setenv("TRACKER_AGENT_TOKEN", "from-the-environment-123456")
    c = tconfig.load(yaml_file, {"admin_token_file": str(token_file)})
    assert c.tokens.agent == "from-the-environment-123456"  # env over the file's token file
    assert c.tokens.admin == AGENT_TOKEN  # the flag's file over the file's value
    monkeypatch.delenv("TRACKER_AGENT_TOKEN")
    assert tconfig.load(yaml_file).tokens.agent == AGENT_TOKEN


def test_start_up_warnings_name_what_is_open_beyond_loopback() -> None:
    from tracker.auth import Tokens, exposure_warnings

    assert exposure_warnings("127.0.0.1:7700", False, Tokens()) == []
    assert exposure_warnings("localhost:7700", False, Tokens()) == []
    (w,) = exposure_warnings("0.0.0.0:7700", False, Tokens())
    assert "no agent or admin token" in w and "announce" in w and "mirrors" in w
    (w,) = exposure_warnings("0.0.0.0:7700", True, Tokens(agent=AGENT_TOKEN))
    assert "no admin token" in w and "announce" not in w
    (w,) = exposure_warnings("[::]:7700", False, Tokens(agent=AGENT_TOKEN, admin=ADMIN_TOKEN))
    assert "clear text" in w
    assert exposure_warnings("10.0.0.1:7700", True, Tokens(agent=AGENT_TOKEN,
                                                           admin=ADMIN_TOKEN)) == []
    # The status page and metrics: loopback is fine, anywhere else is said out loud.
    both = Tokens(agent=AGENT_TOKEN, admin=ADMIN_TOKEN, client=AGENT_TOKEN[::-1])
    assert exposure_warnings("10.0.0.1:7700", True, both, "127.0.0.1:7780") == []
    (w,) = exposure_warnings("127.0.0.1:7700", True, both, "0.0.0.0:7780")
    assert "status page" in w and "client token" in w


def test_token_file_may_start_with_a_tilde(tmp_path, monkeypatch) -> None:
    from common.security import resolve_token

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t").write_text(AGENT_TOKEN + "\n")
    assert resolve_token(None, "~/t", "agent_token") == AGENT_TOKEN
