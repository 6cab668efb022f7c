"""mfetch FILE.meta4: mirrors, size, whole-file digest and piece hashes from a Metalink 4."""
from __future__ import annotations

import hashlib
import json
import subprocess

from tests import procs as _procs
from tests.faulty import FaultyServer
from tests.test_system import make_file

MiB = 1024 * 1024
PIECE = 256 * 1024


def meta4(name: str, data: bytes, urls: list[str], *, pieces: bool = True,
          size: int | None = None) -> str:
    piece_xml = ""
    if pieces:
        hashes = "".join(f"<hash>{hashlib.sha256(data[i:i + PIECE]).hexdigest()}</hash>"
                         for i in range(0, len(data), PIECE))
        piece_xml = f'<pieces length="{PIECE}" type="sha-256">{hashes}</pieces>'
    url_xml = "".join(f'<url priority="{i + 1}">{u}</url>' for i, u in enumerate(urls))
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="{name}">'
            f'<size>{len(data) if size is None else size}</size>'
            f'<hash type="sha-256">{hashlib.sha256(data).hexdigest()}</hash>'
            f'{piece_xml}{url_xml}</file></metalink>')


def mfetch(*args: str) -> subprocess.CompletedProcess[str]:
    return _procs.run([_procs.command("mfetch"), *args], timeout=120)


def test_metalink_mirrors_and_piece_hashes_catch_a_liar(tmp_path):
    data = make_file(tmp_path / "d", 3 * MiB, seed=40)
    with FaultyServer(data) as a, FaultyServer(data, lie=True) as liar, \
            FaultyServer(data, trickle=4 * MiB) as b:
        m = tmp_path / "release.meta4"
        m.write_text(meta4("release.tar", data, [liar.url, a.url, b.url]))
        r = mfetch(str(m), "-o", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["path"] == str(tmp_path / "release.tar")
    assert (tmp_path / "release.tar").read_bytes() == data
    assert "every piece's sha256" in s["verified"] and "the whole file's sha256" in s["verified"]
    lied = next(x for x in s["sources"] if x["url"] == liar.url)
    assert lied["dropped"] and "bad piece" in lied["dropped_reason"] and lied["pieces"] == 0


def test_metalink_without_pieces_leaves_out_a_mirror_of_another_size(tmp_path):
    data = make_file(tmp_path / "d", 1 * MiB, seed=41)
    with FaultyServer(data) as good, FaultyServer(data + b"x") as other:
        m = tmp_path / "f.meta4"
        m.write_text(meta4("f.bin", data, [other.url, good.url], pieces=False))
        r = mfetch(str(m), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "leaving out" in r.stderr and "metalink says" in r.stderr
    assert (tmp_path / "out").read_bytes() == data


def test_bad_metalinks_are_clear_errors(tmp_path):
    data = b"abc"
    cases = {
        "notxml.meta4": "<metalink",
        "wrongns.meta4": "<metalink><file name='x'/></metalink>",
        "nourl.meta4": meta4("x", data, []),
        "ftponly.meta4": meta4("x", data, ["ftp://example/x"]),
        "shortpieces.meta4": meta4("x", data, ["http://127.0.0.1:9/x"], size=10 * MiB),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        r = mfetch(str(tmp_path / name), "-o", str(tmp_path / "o"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("mfetch: error:"), \
            (name, r.stderr)
    r = mfetch(str(tmp_path / "missing.meta4"))
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_sha256_flag_must_agree_with_the_metalink(tmp_path):
    data = b"hello"
    m = tmp_path / "x.meta4"
    m.write_text(meta4("x", data, ["http://127.0.0.1:9/x"]))
    r = mfetch(str(m), "--sha256", "00" * 32, "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "contradicts" in r.stderr
