"""The saved name is always a plain file name in the target folder."""
from __future__ import annotations

import pytest

from client.plan import name_from_url, safe_name


@pytest.mark.parametrize("raw,expected", [
    ("of.tar.gz", "of.tar.gz"),
    ("sub/dir/of.tar.gz", "of.tar.gz"),
    ("../../etc/passwd", "passwd"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\win.ini", "win.ini"),
    ("evil\x1b[31mname\n.iso", "evil[31mname.iso"),
    ("..", "download"),
    (".", "download"),
    ("", "download"),
    ("a\x00b", "ab"),
    ("x" * 300, "x" * 200),  # room for the .part and .mfetch.tmp suffixes
])
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


@pytest.mark.parametrize("url,expected", [
    ("http://h/releases/of.tar.gz", "of.tar.gz"),
    ("http://h/a%2F..%2F..%2Fetc%2Fpasswd", "passwd"),
    ("http://h/dir/", "index.html"),
    ("http://h/", "index.html"),
    ("http://h/na%0Ame.bin?x=1", "name.bin"),
])
def test_name_from_url(url: str, expected: str) -> None:
    assert name_from_url(url) == expected
