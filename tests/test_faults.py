"""mfetch against sources that misbehave on purpose (tests/faulty.py), beside good ones.

Each test checks the final bytes, and that nothing unverified was handed over.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess

from tests import procs as _procs
from tests.faulty import FaultyServer
from tests.test_system import make_file

MiB = 1024 * 1024
# A good mirror slow enough that a bad one's answers always arrive before the end:
# otherwise the download can finish before the fault is even seen.
SLOW = 4 * MiB


def mfetch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _procs.run([_procs.command("mfetch"), *args], timeout=timeout)


def fetch_ok(tmp_path: pathlib.Path, *urls: str, extra: tuple[str, ...] = ()) -> dict:
    out = tmp_path / "out"
    r = mfetch(*urls, "-o", str(out), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def by_url(summary: dict, url: str) -> dict:
    return next(s for s in summary["sources"] if s["url"] == url)


def test_connection_cut_mid_body_is_retried_elsewhere(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=11)
    with FaultyServer(data, cut_after=100_000) as bad, FaultyServer(data, trickle=SLOW) as good:
        s = fetch_ok(tmp_path, bad.url, good.url)
    assert (tmp_path / "out").read_bytes() == data
    assert by_url(s, bad.url)["failures"] >= 1


def test_connection_cut_on_the_only_source_still_completes(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=12)
    # Every response dies after 300 KB: requests of one piece (256 KiB) get through,
    # longer ones deliver their first piece and fail.
    with FaultyServer(data, cut_after=300_000) as only:
        s = fetch_ok(tmp_path, only.url, extra=("--sha256", hashlib.sha256(data).hexdigest()))
    assert (tmp_path / "out").read_bytes() == data
    assert s["sources"][0]["failures"] >= 1


def test_stalled_source_is_abandoned(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=13)
    with FaultyServer(data, stall_after=50_000) as bad, FaultyServer(data) as good:
        s = fetch_ok(tmp_path, bad.url, good.url, extra=("--stall-timeout", "2"))
    assert (tmp_path / "out").read_bytes() == data
    assert by_url(s, good.url)["bytes"] >= len(data) - 2 * 50_000


def test_trickling_source_gets_little_work(tmp_path):
    data = make_file(tmp_path / "d", 8 * MiB, seed=14)
    with FaultyServer(data, trickle=64 * 1024) as slow, FaultyServer(data) as fast:
        s = fetch_ok(tmp_path, slow.url, fast.url)
    assert (tmp_path / "out").read_bytes() == data
    assert by_url(s, slow.url)["pieces"] <= 4  # its first small requests at most


def test_lying_mirror_with_known_digest_is_never_handed_over(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=15)
    out = tmp_path / "out"
    with FaultyServer(data, lie=True) as liar:
        r = mfetch(liar.url, "-o", str(out), "--sha256", hashlib.sha256(data).hexdigest())
    assert r.returncode == 1 and "sha256" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_file_changed_on_the_server_is_never_spliced(tmp_path):
    # Bigger than the head start's span: after the early request (the first), the
    # fetch needs two more at least, and the last of them finds a new file.
    data = make_file(tmp_path / "d", 12 * MiB, seed=16)
    out = tmp_path / "out"
    with FaultyServer(data, change_after=2) as changing:
        r = mfetch(changing.url, "-o", str(out))
    assert r.returncode == 1 and "changed" in r.stderr
    assert not out.exists()


def test_file_changed_on_one_mirror_drops_it(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=17)
    # Replaced right after the probe: every range request it gets finds a new file.
    # (With the head start, the probe would carry the whole file.)
    with FaultyServer(data, change_after=1) as changing, \
            FaultyServer(data, trickle=SLOW) as good:
        s = fetch_ok(tmp_path, changing.url, good.url, extra=("--no-head-start",))
    assert (tmp_path / "out").read_bytes() == data
    assert "changed" in by_url(s, changing.url)["dropped_reason"]


def test_wrong_content_range_drops_the_source(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=18)
    with FaultyServer(data, shift_range=1) as bad, FaultyServer(data, trickle=SLOW) as good:
        s = fetch_ok(tmp_path, bad.url, good.url)
    assert (tmp_path / "out").read_bytes() == data
    assert by_url(s, bad.url)["dropped"] and by_url(s, bad.url)["pieces"] == 0


def test_more_bytes_than_asked_are_never_written(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=19)
    with FaultyServer(data, extra=5000) as generous:
        fetch_ok(tmp_path, generous.url)
    assert (tmp_path / "out").read_bytes() == data


def test_compressed_range_answer_drops_the_source(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=20)
    with FaultyServer(data, gzip=True) as zipped, FaultyServer(data, trickle=SLOW) as good:
        s = fetch_ok(tmp_path, zipped.url, good.url)
    assert (tmp_path / "out").read_bytes() == data
    assert "gzip" in by_url(s, zipped.url)["dropped_reason"]


def test_repair_by_blame_finds_the_liar_and_fixes_its_pieces(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=21)
    with FaultyServer(data) as a, FaultyServer(data, lie=True) as liar, FaultyServer(data) as b:
        out = tmp_path / "out"
        # (With the head start, `a` would send the whole file before the liar a byte:
        # test_headstart.py has the liar first.)
        r = mfetch(a.url, liar.url, b.url, "-o", str(out), "--json", "--no-head-start",
                   "--sha256", hashlib.sha256(data).hexdigest())
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    s = json.loads(r.stdout)
    assert "wrong bytes" in by_url(s, liar.url)["dropped_reason"]
    assert not by_url(s, a.url)["dropped"] and not by_url(s, b.url)["dropped"]
    assert liar.url in r.stderr
    assert not list(tmp_path.glob("out.*")), "no scratch, part or control file left"


def test_repair_with_two_mirrors_tries_each_hypothesis(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=22)
    with FaultyServer(data, lie=True) as liar, FaultyServer(data) as honest:
        r = mfetch(liar.url, honest.url, "-o", str(tmp_path / "out"), "--json",
                   "--sha256", hashlib.sha256(data).hexdigest())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert "wrong bytes" in by_url(json.loads(r.stdout), liar.url)["dropped_reason"]


def test_a_wrong_digest_is_not_blamed_on_honest_mirrors(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=23)
    with FaultyServer(data) as a, FaultyServer(data) as b:
        r = mfetch(a.url, b.url, "-o", str(tmp_path / "out"), "--sha256", "ab" * 32)
    assert r.returncode == 1 and "same bytes" in r.stderr
    assert not (tmp_path / "out").exists()


def _streaming_server(data: bytes, encoding: str = ""):
    """200 with a chunked body (no Content-Length), Range ignored; optionally gzip."""
    import gzip as _gz

    from aiohttp import web

    from tests.servers import AppServer

    async def handler(request: web.Request) -> web.StreamResponse:
        body = _gz.compress(data) if encoding == "gzip" else data
        resp = web.StreamResponse(headers={"Content-Encoding": encoding} if encoding else {})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 100_000):
            await resp.write(body[i:i + 100_000])
        return resp

    return AppServer(handler)


def test_chunked_body_without_length_is_one_verified_stream(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=24)
    server = _streaming_server(data)
    try:
        url = f"{server.url}/stream.bin"
        s = fetch_ok(tmp_path, url, extra=("--sha256", hashlib.sha256(data).hexdigest()))
        r = mfetch(url, "-o", str(tmp_path / "bad"), "--sha256", "00" * 32)
    finally:
        server.close()
    assert (tmp_path / "out").read_bytes() == data
    assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["size"] == len(data)
    assert r.returncode == 1 and "sha256" in r.stderr and not (tmp_path / "bad").exists()


def test_compressed_body_despite_identity_is_decoded(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=25)
    server = _streaming_server(data, encoding="gzip")
    try:
        out = tmp_path / "out"
        r = mfetch(f"{server.url}/z.bin", "-o", str(out), "--json")
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert "decoded" in r.stderr


def test_checksum_file_gives_the_digest_and_drives_repair(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=26)
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'ab' * 32}  other.iso\n{hashlib.sha256(data).hexdigest()} *file.bin\n")
    with FaultyServer(data, lie=True) as liar, FaultyServer(data) as honest:
        r = mfetch(liar.url, honest.url, "-o", str(tmp_path / "out"), "--json",
                   "--sha256-file", str(sums))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out").read_bytes() == data
        assert "wrong bytes" in by_url(json.loads(r.stdout), liar.url)["dropped_reason"]
        bsd = tmp_path / "bsd.sums"
        bsd.write_text("SHA256 (file.bin) = " + "00" * 32 + "\nSHA256 (x) = " + "11" * 32)
        r = mfetch(honest.url, "-o", str(tmp_path / "o2"), "--sha256-file", str(bsd))
        assert r.returncode == 1 and "sha256" in r.stderr  # a wrong digest is caught
        r = mfetch(honest.url, "-o", str(tmp_path / "o3"), "--sha256-file", str(sums.parent / "no"))
        assert r.returncode == 1 and "cannot read" in r.stderr
        none = tmp_path / "none.sums"
        none.write_text(f"{'ab' * 32}  a.iso\n{'cd' * 32}  b.iso\n")
        r = mfetch(honest.url, "-o", str(tmp_path / "o4"), "--sha256-file", str(none))
        assert r.returncode == 1 and "no SHA-256 for 'file.bin'" in r.stderr


def test_total_size_changing_between_answers_drops_the_source(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=27)
    with FaultyServer(data, total_shift=4096) as shifty, \
            FaultyServer(data, trickle=SLOW) as good:
        # (With the head start, the first answer would carry the whole file.)
        s = fetch_ok(tmp_path, shifty.url, good.url, extra=("--no-head-start",))
    assert (tmp_path / "out").read_bytes() == data
    bad = by_url(s, shifty.url)
    assert bad["dropped"] and "bytes" in bad["dropped_reason"] and bad["pieces"] == 0


def test_enormous_response_headers_fail_that_source_only(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=28)
    with FaultyServer(data, huge_header=200_000) as noisy, FaultyServer(data) as good:
        out = tmp_path / "out"
        r = mfetch(noisy.url, good.url, "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert "leaving out" in r.stderr  # the probe already refused the 200 KB header


def test_a_whole_file_mismatch_is_not_resumed_from(tmp_path):
    """Regression: after a mismatch, the pieces nothing had verified were vouched for,
    so the next run resumed from the bad bytes and failed again forever."""
    data = make_file(tmp_path / "d", 1 * MiB, seed=29)
    out = tmp_path / "out"
    sha = hashlib.sha256(data).hexdigest()
    with FaultyServer(data, lie=True) as server:
        r = mfetch(server.url, "-o", str(out), "--sha256", sha)
        assert r.returncode == 1 and "sha256" in r.stderr
        server.lie = False  # the mirror is fixed
        r = mfetch(server.url, "-o", str(out), "--sha256", sha)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


def test_a_slow_source_is_never_taken_for_stalled(tmp_path):
    """Regression: SO_RCVLOWAT at 256 KiB kept a 64 KiB/s source silent past the stall
    timeout; the mark now follows the connection's measured rate."""
    data = make_file(tmp_path / "d", 384 * 1024, seed=30)
    # 64 KiB every second: a 256 KiB mark would keep the socket quiet for 3 s or more.
    with FaultyServer(data, trickle=64 * 1024) as slow:
        s = fetch_ok(tmp_path, slow.url, extra=("--stall-timeout", "2", "--connections", "1",
                                                "--max-connections", "1"))
    assert (tmp_path / "out").read_bytes() == data
    assert s["sources"][0]["failures"] == 0


def test_a_redirecting_mirror_stays_the_url_the_user_gave(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=31)
    with FaultyServer(data) as target, FaultyServer(data, redirect_to="") as front:
        front.redirect_to = target.url  # e.g. a signed URL that may expire
        s = fetch_ok(tmp_path, front.url)
        assert front.requests >= 2  # every request went through the redirect again
    assert s["sources"][0]["url"] == front.url
    assert (tmp_path / "out").read_bytes() == data


def _etag_later_server(data: bytes, etag_after: int, etag: str = '"v1"'):
    """Ranges with a fixed Last-Modified, and from request `etag_after` on also an
    ETag, as an agent answers before and after it has hashed a file."""
    from aiohttp import web

    from common.http_ranges import content_range, parse_range
    from tests.servers import AppServer

    count = 0
    modified = "Sat, 21 Nov 2026 10:00:00 GMT"

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        headers = {"Last-Modified": modified, "Accept-Ranges": "bytes"}
        if count > etag_after:
            headers["ETag"] = etag
        span = parse_range(request.headers["Range"], len(data)) if "Range" in request.headers \
            else None
        if span is None:
            return web.Response(body=data, headers=headers)
        start, end = span
        headers["Content-Range"] = content_range(start, end, len(data))
        return web.Response(status=206, body=data[start:end], headers=headers)

    return AppServer(handler)


def test_an_etag_that_appears_later_is_not_a_changed_file(tmp_path):
    data = make_file(tmp_path / "d", 4 * MiB, seed=31)
    server = _etag_later_server(data, etag_after=2)
    try:
        s = fetch_ok(tmp_path, server.url + "/f")
    finally:
        server.close()
    assert (tmp_path / "out").read_bytes() == data
    assert not s["sources"][0].get("dropped")


def test_changed_compares_like_with_like():
    from client.http import changed

    date, later = "Sat, 21 Nov 2026 10:00:00 GMT", "Sat, 21 Nov 2026 11:00:00 GMT"
    assert not changed(date, {"Last-Modified": date, "ETag": '"x"'})  # an ETag added
    assert changed(date, {"Last-Modified": later, "ETag": '"x"'})
    assert not changed('"x"', {"Last-Modified": later, "ETag": '"x"'})
    assert changed('"x"', {"ETag": '"y"'})
    assert changed("x-unquoted", {"ETag": "y-unquoted", "Last-Modified": date})
    assert not changed('"x"', {"Last-Modified": date})  # says nothing about the ETag
    assert not changed('"x"', {"ETag": 'W/"y"'})  # a weak tag never compares
    assert not changed("", {"ETag": '"y"'})


def test_sync_flag_fetches_the_same_file(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=32)
    with FaultyServer(data) as good:
        fetch_ok(tmp_path, good.url, extra=("--sync",))
    assert (tmp_path / "out").read_bytes() == data


def test_background_refuses_sync(tmp_path):
    r = mfetch("--background", "http://127.0.0.1:9/f", "--sync", "--agent", "http://127.0.0.1:9")
    assert r.returncode == 1 and "--sync" in r.stderr and "Traceback" not in r.stderr
