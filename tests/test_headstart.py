"""The head start (client/headstart.py): early requests while mfetch starts up.

Real HTTP servers on loopback (tests/faulty.py) and the real console script; the
argument rules and the request bytes are checked directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from client import headstart
from client.headstart import SPAN, HeadStart, begin
from client.http import HttpClient, HttpOptions, probe_answer
from client.scheduler import Scheduler
from common.errors import SourceError
from tests import procs as _procs
from tests.faulty import FaultyServer
from tests.test_system import make_file

MiB = 1024 * 1024
NO_CONFIG = {"XDG_CONFIG_HOME": "/nonexistent"}


def mfetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _procs.run([_procs.command("mfetch"), *args], timeout=120,
                      env={**os.environ, **NO_CONFIG, **(env or {})})


# ---- when it starts --------------------------------------------------------------


def test_only_a_plain_fetch_of_http_mirrors_gets_a_head_start():
    a, b = "http://a.example/f", "http://b.example:8080/f"
    mirrors = headstart._mirrors
    assert mirrors([a, b, "-o", "out", "--json", "-q", "--sha256", "ab" * 32]) == [a, b]
    assert mirrors(["-v", a, "--force", "--sync", "--connections", "4"]) == [a]
    assert mirrors([a, "http://a.example/other"]) == [a]  # one per host:port
    assert mirrors([a, "--output=out"]) == []  # a form it does not parse: none
    for flag in ("-H", "--proxy", "-x", "--limit-rate", "--config", "--background",
                 "--no-head-start", "-u", "-b", "--tracker"):
        assert mirrors([a, flag, "v"]) == [], flag
    assert mirrors(["https://a.example/f"]) == []
    assert mirrors(["http://user:pw@a.example/f"]) == []
    assert mirrors(["name.iso"]) == []  # a NAME for the tracker
    assert mirrors(["http://a.example:99999/f"]) == []
    assert mirrors([a, "ftp://b.example/f"]) == []
    many = [f"http://h{i}.example/f" for i in range(40)]
    assert mirrors(many) == many[:headstart.MAX_MIRRORS]


def test_settings_that_change_requests_turn_it_off(tmp_path):
    url = "http://127.0.0.1:9/f"  # nothing listens: begin() only has to decide
    for name in ("MFETCH_PROXY", "MFETCH_LIMIT_RATE", "MFETCH_USER_AGENT"):
        assert begin([url], {**NO_CONFIG, name: "x"}) is None, name
    (tmp_path / "mfetch").mkdir()
    config = tmp_path / "mfetch" / "config.yaml"
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    for text in ("proxy: http://p:3128\n", "limit_rate: 1M\n", "User_Agent: x\n"):
        config.write_text(text)
        assert begin([url], env) is None, text
    config.write_text('"pro\\x78y": http://p:3128\n')  # YAML reads the key as "proxy"
    assert begin([url], env) is None
    config.write_text("tracker: t.example:7700\n")
    head = begin([url], env)
    assert head is not None
    head.close()


async def test_its_request_is_the_one_the_client_would_send_first():
    head = HeadStart(["http://127.0.0.1:9/dir/a%20b?x=1"])
    head.close()
    early = head.early[0]
    async with HttpClient(HttpOptions(), connect_timeout=5, read_timeout=5, per_host=2) as http:
        assert http.first_request(early.url, {"Range": early.range}) == early.request
    assert b"Range: bytes=0-%d\r\n" % (SPAN - 1) in early.request
    async with HttpClient(HttpOptions(user_agent="other"), connect_timeout=5, read_timeout=5,
                          per_host=2) as http:
        assert http.first_request(early.url, {"Range": early.range}) != early.request


def test_spans_shrink_with_many_mirrors_and_stay_whole():
    assert headstart.span_for(1) == headstart.span_for(4) == SPAN
    assert headstart.span_for(16) == 2 * MiB
    assert headstart.span_for(200) == headstart.MIN_SPAN
    for n in range(1, 40):
        span = headstart.span_for(n)
        assert span & (span - 1) == 0  # a power of two: whole pieces of 256 KiB and up
        assert span * n <= headstart.SPANS_BUDGET or span == headstart.MIN_SPAN


def test_the_rest_never_starts_before_its_span_and_close_is_safe():
    import socket

    head = HeadStart(["http://127.0.0.1:9/f", "http://127.0.0.2:9/f"])
    for e in head.early:
        assert e.thread is not None
        e.thread.join(5)  # refused
    head.stop()
    e = head.early[1]  # its span starts at SPAN
    ours, theirs = socket.socketpair()
    e.sock, e.error = ours, None
    e.head_len, e.body_end, e.got = 100, 100 + SPAN, 100 + 1000
    assert e.rest(0) is None  # a piece bigger than the span began before it
    assert e.rest(SPAN + 1001) is None  # past what came
    body = e.rest(SPAN + 1000)
    assert body is not None and body.content_length == SPAN - 1000
    body.release()
    theirs.close()
    held = memoryview(head.early[0].buf)  # as a traceback being unwound may hold one
    head.close()
    held.release()


def test_the_gil_changes_hands_often_only_while_the_early_answers_are_read():
    """The early threads get the GIL within SWITCH_INTERVAL while start-up holds it
    (at the default 5 ms, they were once starved for 150 ms of busy main thread);
    stop() gives the process its own interval back."""
    import sys

    before = sys.getswitchinterval()
    head = HeadStart(["http://127.0.0.1:9/f"])
    assert sys.getswitchinterval() == pytest.approx(headstart.SWITCH_INTERVAL)
    head.close()
    assert sys.getswitchinterval() == before


def test_early_readers_wake_per_mark_and_hand_the_socket_over_at_one_byte(tmp_path,
                                                                           monkeypatch):
    # A reading thread woken for every few segments made sixteen threads fight for the
    # GIL; past the head it waits for EARLY_MARK bytes. The fetcher, which takes the
    # socket over, counts on the kernel's mark being one byte.
    import socket
    import time

    marks: list[int] = []
    real = headstart._set_mark
    monkeypatch.setattr(headstart, "_set_mark",
                        lambda s, m, now: (marks.append(m), real(s, m, now))[1])
    data = make_file(tmp_path / "d", 4 * MiB, seed=69)
    with FaultyServer(data, trickle=2 * MiB) as slow:
        head = HeadStart([slow.url])
        try:
            e = head.early[0]
            deadline = time.monotonic() + 30
            while e.got < 512 * 1024 and time.monotonic() < deadline:
                time.sleep(0.01)
            head.stop()
            assert e.sock is not None and e.got >= 512 * 1024
            assert headstart.EARLY_MARK in marks and marks[-1] == 1
            assert e.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
        finally:
            head.close()


@pytest.mark.parametrize("kernel_marks", [True, False])
def test_a_head_in_parts_and_a_short_answer_are_read_whole_below_the_mark(monkeypatch,
                                                                          kernel_marks):
    # The head's first part, then the rest with a 1000-byte body, on a connection the
    # server keeps open: no byte of it ever reaches the mark, yet all of it must be
    # read during start-up (else the probe waits for the head until its patience ends).
    # Where the kernel refuses a mark, the reader wakes for every segment instead.
    import socket
    import threading
    import time

    if not kernel_marks:
        monkeypatch.setattr(headstart._socket, "SO_RCVLOWAT", 0x7ffe)  # no such option
    answer_head = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999/1000\r\n" \
                  b"Content-Length: 1000\r\n\r\n"
    answer = answer_head + b"x" * 1000
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            conn.sendall(answer[:20])
            time.sleep(0.1)
            conn.sendall(answer[20:])
            done.wait(30)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    head = HeadStart([f"http://127.0.0.1:{listener.getsockname()[1]}/f"])
    try:
        e = head.early[0]
        deadline = time.monotonic() + 10
        while e.got < len(answer) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert e.got == len(answer) and e.error is None
        assert bytes(e.buf[:e.got]) == answer
    finally:
        head.close()
        done.set()
        server.join(5)
        listener.close()


def test_no_thread_to_spare_means_no_head_start_and_nothing_left(monkeypatch):
    import sys

    before = sys.getswitchinterval()
    started: list[object] = []

    def second_fails(target, arg):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(real(target, arg))
        return started[-1]

    real = headstart._Thread
    monkeypatch.setattr(headstart, "_Thread", second_fails)
    argv = ["http://127.0.0.1:9/f", "http://127.0.0.2:9/f", "-o", "/nonexistent/x"]
    assert begin(argv, NO_CONFIG) is None
    assert sys.getswitchinterval() == before
    started[0].join(5)  # told to stop: it ends (here as soon as its connect is refused)
    assert not started[0].is_alive()


def test_the_early_requests_import_nothing_heavy():
    """Every millisecond before the early requests go out, the mirrors sit idle:
    threading (functools, collections) cost 6 ms, and a str host given to
    getaddrinfo loaded the idna codec (and re with it), 14 ms."""
    import socket
    import sys

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # (close() does not wait for a thread still connecting: wait for its socket.)
        code = ("import sys, time; from client.headstart import HeadStart; "
                f"h = HeadStart(['http://127.0.0.1:{port}/f']); e = h.early[0]\n"
                "while e.sock is None and e.error is None: time.sleep(0.01)\n"
                "h.close(); print(sorted({'encodings.idna', 're', 'threading'} & "
                "set(sys.modules)))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_an_answer_past_the_end_still_gives_the_size():
    h = {"Content-Range": "bytes */1000", "ETag": '"e"'}
    p = probe_answer("u", "u", 416, "Range Not Satisfiable", h, 0, first=SPAN)
    assert (p.size, p.validator, p.ranges) == (1000, '"e"', True)
    with pytest.raises(SourceError):  # byte 0 of a 1000-byte file was asked for
        probe_answer("u", "u", 416, "", h, 0, first=0)
    with pytest.raises(SourceError):
        probe_answer("u", "u", 416, "", {"Content-Range": "bytes */1e3"}, 0, first=SPAN)
    with pytest.raises(SourceError):  # not a ValueError from int() past 4300 digits
        probe_answer("u", "u", 416, "", {"Content-Range": "bytes */" + "9" * 5000}, 0,
                     first=SPAN)
    assert probe_answer("u", "u", 416, "", {"Content-Range": "bytes */0"}, 0).size == 0


def test_credited_pieces_count_as_the_sources_and_only_before_the_start():
    s = Scheduler(4, 10, 35, 2, clock=lambda: 0.0)
    s.credit(1, 0)
    s.credit(1, 3)
    s.credit(1, 3)  # once only
    assert s.left == 2 and s.stats(1).pieces == 2 and s.stats(1).bytes == 15
    s.start()
    with pytest.raises(RuntimeError):
        s.credit(0, 1)


# ---- what it brings ----------------------------------------------------------------


def test_each_mirror_is_asked_for_its_own_span_and_the_file_is_right(tmp_path):
    data = make_file(tmp_path / "d", 2 * SPAN + 3 * MiB, seed=61)
    out = tmp_path / "out"
    with FaultyServer(data) as a, FaultyServer(data) as b:
        r = mfetch(a.url, b.url, "-o", str(out), "--json", "-v")
        first = [a.headers_seen[0].get("Range"), b.headers_seen[0].get("Range")]
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert first == [f"bytes=0-{SPAN - 1}", f"bytes={SPAN}-{2 * SPAN - 1}"]
    assert f"head start: {a.url} sent" in r.stderr and f"head start: {b.url} sent" in r.stderr
    s = json.loads(r.stdout)
    assert sum(src["bytes"] for src in s["sources"]) >= len(data)
    assert not list(tmp_path.glob("out.*"))


def test_a_small_file_comes_whole_in_the_head_start(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB + 5, seed=62)
    out = tmp_path / "out"
    with FaultyServer(data) as a, FaultyServer(data) as b:
        r = mfetch(a.url, b.url, "-o", str(out), "--json")
        asked = (a.requests, b.requests)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    # b's span starts past the end: its 416 was its probe, and nothing more was asked.
    assert asked == (1, 1)
    assert [src["bytes"] for src in json.loads(r.stdout)["sources"]] == [len(data), 0]


def test_without_it_the_first_request_is_the_probe(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=63)
    with FaultyServer(data) as a:
        r = mfetch(a.url, "-o", str(tmp_path / "out"), "--no-head-start")
        first = a.headers_seen[0].get("Range")
    assert r.returncode == 0, r.stderr
    assert first == "bytes=0-0"


def test_a_config_that_sets_the_user_agent_gets_no_head_start(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=64)
    (tmp_path / "cfg" / "mfetch").mkdir(parents=True)
    (tmp_path / "cfg" / "mfetch" / "config.yaml").write_text("user_agent: special/1\n")
    with FaultyServer(data) as a:
        r = mfetch(a.url, "-o", str(tmp_path / "out"),
                   env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
        seen = a.headers_seen
    assert r.returncode == 0, r.stderr
    assert all(h.get("User-Agent") == "special/1" for h in seen)
    assert seen[0].get("Range") == "bytes=0-0"


def test_a_lying_mirror_that_came_first_is_found_and_its_pieces_fixed(tmp_path):
    data = make_file(tmp_path / "d", 3 * MiB, seed=65)
    out = tmp_path / "out"
    with FaultyServer(data, lie=True) as liar, FaultyServer(data) as a, \
            FaultyServer(data) as b:
        r = mfetch(liar.url, a.url, b.url, "-o", str(out), "--json", "-v",
                   "--sha256", hashlib.sha256(data).hexdigest())
    assert r.returncode == 0, r.stderr
    assert f"head start: {liar.url} sent {len(data)} bytes" in r.stderr  # all of it
    assert out.read_bytes() == data
    s = json.loads(r.stdout)
    assert "wrong bytes" in next(x for x in s["sources"] if x["url"] == liar.url)["dropped_reason"]


def test_a_redirect_or_a_dead_mirror_is_probed_as_usual(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=66)
    out = tmp_path / "out"
    with FaultyServer(data) as gone:
        dead = gone.url
    with FaultyServer(data) as real, FaultyServer(data, redirect_to=real.url) as hop:
        r = mfetch(hop.url, dead, "-o", str(out), "--json", "-v")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert f"head start: {hop.url}: not used (" in r.stderr
    assert f"head start: {dead}: not used (" in r.stderr
    assert "leaving out" in r.stderr and dead in r.stderr


def test_an_error_before_the_fetch_keeps_nothing(tmp_path):
    data = make_file(tmp_path / "d", 2 * MiB, seed=67)
    out = tmp_path / "out"
    out.write_bytes(b"mine")
    with FaultyServer(data) as a:
        r = mfetch(a.url, "-o", str(out))
        asked = a.headers_seen[0].get("Range")
    assert asked == f"bytes=0-{SPAN - 1}"  # the head start was on
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out"]


def test_the_rest_of_an_early_answer_goes_on_as_the_first_request(tmp_path):
    # A mirror slow enough that start-up ends mid-span: the early connection carries
    # on with the rest of its span instead of the span being asked for again.
    data = make_file(tmp_path / "d", 6 * MiB, seed=68)
    out = tmp_path / "out"
    with FaultyServer(data, trickle=6 * MiB) as slow:
        r = mfetch(slow.url, "-o", str(out), "--json", "-v", "--connections", "1",
                   "--max-connections", "1")
        asked, sent = slow.requests, slow.sent
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert "the rest of its answer goes on" in r.stderr
    assert (asked, sent) == (1, len(data))
    assert json.loads(r.stdout)["sources"][0]["bytes"] == len(data)


def early_body(monkeypatch, length: int):  # type: ignore[no-untyped-def]
    """The rest of an early answer of `length` body bytes, none received yet, over a
    socket pair (the other end is returned too), with a patience of 50 ms."""
    import socket
    import threading

    from client import wire
    from client.headstart import Early, EarlyBody

    monkeypatch.setattr(wire, "LOWAT_PATIENCE", 0.05)
    ours, theirs = socket.socketpair()
    e = Early("http://127.0.0.1:9/f", 0)
    e.sock, e.thread = ours, threading.Thread(target=int)
    e.thread.start()
    e.thread.join()  # as after HeadStart.stop()
    e.head_len, e.body_end = 0, length
    return EarlyBody(e, 0), theirs


async def test_an_early_body_loses_no_byte_when_its_source_slows_down(monkeypatch):
    # The rest of an early answer sleeps until a mark of bytes is waiting; a source that
    # slows down is heard after the patience, and nothing is lost on the way.
    import asyncio

    body_len = 300_000
    body, theirs = early_body(monkeypatch, body_len)
    sent = bytes(range(256)) * (body_len // 256) + bytes(body_len % 256)

    async def trickle() -> None:
        for i in range(0, body_len, 37_000):  # bursts, each far below the mark, then quiet
            theirs.sendall(sent[i:i + 37_000])
            await asyncio.sleep(0.08)

    writer = asyncio.create_task(trickle())
    got = bytearray()
    while True:
        body.set_lowat(1 << 20)
        view = await asyncio.wait_for(body.read_view(), 5)
        if view is None:
            break
        got += view
    await writer
    body.release()
    theirs.close()
    assert bytes(got) == sent


async def test_bytes_that_land_as_the_patience_runs_out_are_kept(monkeypatch):
    # The loop finds the socket readable and the patience over in one turn (here: it
    # was busy). A timeout around the receive would cancel a receive that had already
    # taken those bytes out of the socket.
    import asyncio
    import time

    body, theirs = early_body(monkeypatch, 200_000)
    sent = bytes(i * 7 & 0xFF for i in range(200_000))

    def busy() -> None:
        theirs.sendall(sent[:150_000])
        time.sleep(0.1)  # past the patience, with the bytes waiting

    asyncio.get_running_loop().call_later(0.02, busy)
    body.set_lowat(100_000)
    got = bytearray()
    while len(got) < 150_000:
        view = await asyncio.wait_for(body.read_view(), 5)
        assert view is not None
        got += view
    theirs.sendall(sent[150_000:])
    while (view := await asyncio.wait_for(body.read_view(), 5)) is not None:
        got += view
    body.release()
    theirs.close()
    assert bytes(got) == sent


def test_no_head_start_when_a_download_may_resume(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/f"
    (tmp_path / "dl").mkdir()
    (tmp_path / "out.mfetch").write_bytes(b"")
    assert begin([url, "-o", str(tmp_path / "out")], NO_CONFIG) is None
    (tmp_path / "dl" / "f.mfetch").write_bytes(b"")
    assert begin([url, "-o", str(tmp_path / "dl")], NO_CONFIG) is None
    monkeypatch.chdir(tmp_path / "dl")
    assert begin([url], NO_CONFIG) is None
    (tmp_path / "dl" / "f.mfetch").unlink()
    head = begin([url], NO_CONFIG)
    assert head is not None
    head.close()


def test_an_encoded_early_answer_is_refused_as_any_other(tmp_path):
    # A 206 with Content-Encoding: gzip is not the bytes asked for: the head start
    # must not write it (the fetch then fails that mirror, as without a head start).
    data = make_file(tmp_path / "d", 1 * MiB, seed=69)
    out = tmp_path / "out"
    with FaultyServer(data, gzip=True) as zipped:
        r = mfetch(zipped.url, "-o", str(out), "-v")
        asked = zipped.headers_seen[0].get("Range")
    assert asked == f"bytes=0-{SPAN - 1}"
    assert r.returncode == 1 and "gzip-encoded" in r.stderr and "Traceback" not in r.stderr
    assert "body not used" in r.stderr
    assert not out.exists()
