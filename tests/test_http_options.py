"""What users bring from curl and wget: headers, auth, .netrc, cookies, proxies, a CA
bundle, bounded redirects; and credentials that never follow a redirect to another host."""
from __future__ import annotations

import base64
import pathlib
import subprocess

import pytest
import trustme

from tests import procs as _procs
from tests.faulty import FaultyServer
from tests.servers import HttpProxy, Socks5Proxy
from tests.test_system import make_file

MiB = 1024 * 1024


def mfetch(*args: str) -> subprocess.CompletedProcess[str]:
    return _procs.run([_procs.command("mfetch"), *args], timeout=120)


def ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfetch: error:"), r.stderr
    for w in words:
        assert w in lines[0]


@pytest.fixture
def data(tmp_path: pathlib.Path) -> bytes:
    return make_file(tmp_path / "src", 1 * MiB, seed=30)


def test_header_and_user_agent_are_sent(tmp_path, data):
    with FaultyServer(data) as s:
        ok(mfetch(s.url, "-o", str(tmp_path / "o"), "-H", "X-Token: abc", "-A", "probe/1.0"))
    assert all(h.get("X-Token") == "abc" and h.get("User-Agent") == "probe/1.0"
               for h in s.headers_seen)
    assert (tmp_path / "o").read_bytes() == data


def test_basic_auth_from_flag_url_and_netrc(tmp_path, data):
    with FaultyServer(data, auth=("ann", "s3cret")) as s:
        one_line_error(mfetch(s.url, "-o", str(tmp_path / "a")), "401")
        ok(mfetch(s.url, "-o", str(tmp_path / "b"), "--user", "ann:s3cret"))
        with_creds = s.url.replace("http://", "http://ann:s3cret@")
        r = mfetch(with_creds, "-o", str(tmp_path / "c"), "--json")
        ok(r)
        assert "s3cret" not in r.stdout + r.stderr
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login ann password s3cret\n")
        netrc.chmod(0o600)
        ok(mfetch(s.url, "-o", str(tmp_path / "d"), "--netrc-file", str(netrc)))
    for name in "bcd":
        assert (tmp_path / name).read_bytes() == data


def test_credentials_never_follow_a_redirect_to_another_host(tmp_path, data):
    with FaultyServer(data) as elsewhere:
        with FaultyServer(data, redirect_to=elsewhere.url) as first:
            ok(mfetch(first.url, "-o", str(tmp_path / "o"), "--user", "ann:s3cret",
                      "-H", "Authorization: Bearer t0ken", "-H", "X-Plain: yes"))
            assert first.headers_seen[0]["Authorization"] == "Bearer t0ken"
        assert elsewhere.headers_seen, "the redirect was followed"
        for h in elsewhere.headers_seen:
            assert "Authorization" not in h, h
            assert h.get("X-Plain") == "yes"
    assert (tmp_path / "o").read_bytes() == data


def test_user_password_goes_to_the_named_host(tmp_path, data):
    with FaultyServer(data, auth=("ann", "pw")) as s:
        ok(mfetch(s.url, "-o", str(tmp_path / "o"), "--user", "ann:pw"))
    expected = "Basic " + base64.b64encode(b"ann:pw").decode()
    assert all(h.get("Authorization") == expected for h in s.headers_seen)


def test_redirect_loop_is_a_clear_error(tmp_path, data):
    with FaultyServer(data) as s:
        s.redirect_to = s.url  # to itself, forever
        one_line_error(mfetch(s.url, "-o", str(tmp_path / "o"), "--max-redirs", "3"),
                       "redirects")
        assert s.requests == 4
    assert not (tmp_path / "o").exists()


def test_cookies_from_a_netscape_file(tmp_path, data):
    jar = tmp_path / "cookies.txt"
    jar.write_text("# Netscape HTTP Cookie File\n"
                   "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tabc123\n")
    with FaultyServer(data, cookie=("session", "abc123")) as s:
        one_line_error(mfetch(s.url, "-o", str(tmp_path / "a")), "403")
        ok(mfetch(s.url, "-o", str(tmp_path / "b"), "--cookie", str(jar)))
    assert (tmp_path / "b").read_bytes() == data


def test_https_needs_the_ca_it_is_told_to_trust(tmp_path, data):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    import ssl

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with FaultyServer(data, ssl_context=server_ctx) as s:
        assert s.url.startswith("https://")
        one_line_error(mfetch(s.url, "-o", str(tmp_path / "a")), "certificate", "--cacert")
        ok(mfetch(s.url, "-o", str(tmp_path / "b"), "--cacert", str(bundle)))
    assert (tmp_path / "b").read_bytes() == data


def test_https_trusts_the_system_store_without_cacert(tmp_path, data):
    # mfetch imports aiohttp with an empty CA store (start-up time) and makes its own
    # context on the first https request: that one must see the system's store, here
    # a CA put there the way OpenSSL reads it (SSL_CERT_FILE).
    ca = trustme.CA()
    import ssl

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with FaultyServer(data, ssl_context=server_ctx) as s:
        r = _procs.run([_procs.command("mfetch"), s.url, "-o", str(tmp_path / "a")],
                       timeout=120, env={"SSL_CERT_FILE": str(bundle)})
        ok(r)
    assert (tmp_path / "a").read_bytes() == data


def test_http_proxy(tmp_path, data):
    proxy = HttpProxy()
    try:
        with FaultyServer(data) as s:
            ok(mfetch(s.url, "-o", str(tmp_path / "o"), "--proxy", proxy.url))
        assert proxy.relayed >= 2  # the probe and at least one range
    finally:
        proxy.close()
    assert (tmp_path / "o").read_bytes() == data


def test_socks5_proxy(tmp_path, data):
    proxy = Socks5Proxy()
    try:
        with FaultyServer(data) as s:
            ok(mfetch(s.url, "-o", str(tmp_path / "o"), "--proxy", proxy.url))
        assert proxy.connections >= 1
    finally:
        proxy.close()
    assert (tmp_path / "o").read_bytes() == data


@pytest.mark.parametrize("flags,words", [
    (["-H", "no colon"], ["--header"]),
    (["--user", "nopassword"], ["USER:PASSWORD"]),
    (["--proxy", "ftp://x:1"], ["--proxy"]),
    (["--cookie", "/nonexistent/cookies"], ["cookie file"]),
    (["--cacert", "/nonexistent/ca.pem"], ["--cacert"]),
])
def test_bad_http_options(tmp_path, flags, words):
    one_line_error(mfetch("http://127.0.0.1:9/x", "-o", str(tmp_path / "o"), *flags), *words)


def test_secure_cookies_are_never_sent_over_plain_http(tmp_path, data):
    jar = tmp_path / "cookies.txt"
    jar.write_text("# Netscape HTTP Cookie File\n"
                   "127.0.0.1\tFALSE\t/\tTRUE\t0\tsession\tabc123\n")  # Secure
    with FaultyServer(data, cookie=("session", "abc123")) as s:
        one_line_error(mfetch(s.url, "-o", str(tmp_path / "o"), "--cookie", str(jar)), "403")
    assert all("session" not in h.get("Cookie", "") for h in s.headers_seen)


@pytest.mark.parametrize("url,words", [
    ("http://127.0.0.1:99999/f", ["Port"]),
    ("http://u:p@[::1]:9/f", []),  # IPv6 with credentials: a clean network error
    ("http:///nohost", ["host"]),
])
def test_odd_urls_are_one_line_errors(tmp_path, url, words):
    r = mfetch(url, "-o", str(tmp_path / "o"))
    one_line_error(r, *words)
    assert "p@" not in r.stderr
