"""common.http_ranges on arbitrary input (hypothesis): the parsers face the network.

Modest max_examples here keep the suite fast; tests/fuzz/fuzz_ranges.py runs
the same properties for as long as you like (`make fuzz`).
"""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.http_ranges import HUGE, content_range, parse_content_range, parse_range

SIZES = st.one_of(st.integers(0, 10), st.integers(0, 2**63 - 1))
# Headers that look like ranges (to reach deep into the parser) and headers that are anything.
NUMBER = st.one_of(st.just(""), st.from_regex(r"[0-9]{1,25}", fullmatch=True),
                   st.text("0123456789٣３ \t-,", max_size=8))
RANGE_LIKE = st.builds(lambda unit, a, b, tail: f"{unit}{a}-{b}{tail}",
                       st.sampled_from(["bytes=", "BYTES=", " bytes= ", "bytes =", "items="]),
                       NUMBER, NUMBER, st.sampled_from(["", ",", ", 0-1", " ", "\t", "x"]))
HEADERS = st.one_of(RANGE_LIKE, st.text(max_size=60))
FAST = settings(max_examples=200, deadline=None)


def check_range(header: str, size: int) -> None:
    """The contract: None, a valid [start, end), or ValueError. Nothing else."""
    try:
        got = parse_range(header, size)
    except ValueError:
        return
    if got is not None:
        start, end = got
        assert type(start) is int and type(end) is int
        assert 0 <= start < end <= size, (header, size, got)


@FAST
@given(HEADERS, SIZES)
@example("bytes=-5", 0)            # suffix of an empty file: was (0, 0) -> "bytes 0--1/0"
@example("bytes=٣-٥", 10)          # non-ASCII digits
@example("bytes=0-" + "9" * 5000, 10)  # past int()'s 4300-digit limit
def test_parse_range_contract(header: str, size: int) -> None:
    check_range(header, size)


@pytest.mark.parametrize("header,size,expected", [
    ("bytes=-5", 0, None),                      # nothing to cut: the whole (empty) file, 200
    ("bytes=0-", 0, ValueError),                # §14.1.2: unsatisfiable
    ("bytes=0-" + "9" * 5000, 10, (0, 10)),     # a huge last byte is past EOF: clipped
    ("bytes=" + "9" * 5000 + "-", 10, ValueError),
    ("bytes=-" + "9" * 5000, 10, (0, 10)),      # a huge suffix is the whole file
    ("bytes=000000000000000000000000005-6", 10, (5, 7)),  # leading zeros are fine
    ("bytes=٣-٥", 10, ValueError),              # only ASCII digits are digits
    ("bytes=1 2-3", 10, ValueError),            # no whitespace inside a number
    ("bytes= 0 - 9 ", 10, (0, 10)),             # optional whitespace around the parts
    ("Bytes=0-4", 10, (0, 5)),                  # the unit is case-insensitive (§14.1)
    ("bytes=0-1,0-1", 10, None),                # several (even overlapping): whole file
    ("bytes=" + ",".join(["0-0"] * 2000), 10, None),
    ("bytes=5-2", 10, ValueError),              # reversed
])
def test_parse_range_edges(header: str, size: int, expected: object) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            parse_range(header, size)
    else:
        assert parse_range(header, size) == expected


CR_NUMBER = st.one_of(st.integers(0, 2**64).map(str), st.text("0123456789٣*", max_size=25))


@FAST
@given(st.one_of(st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", CR_NUMBER, CR_NUMBER,
                           CR_NUMBER), st.text(max_size=60)))
@example("bytes ٣-٥/٩")
@example("bytes 0-" + "9" * 5000 + "/*")
def test_parse_content_range_contract(header: str) -> None:
    try:
        start, end, total = parse_content_range(header)
    except ValueError:
        return
    assert 0 <= start < end <= HUGE
    assert total is None or end <= total


@FAST
@given(st.integers(1, 2**63 - 1).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(0, size - 1)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.just(t[1]), st.integers(t[1] + 1, t[0])))))
def test_content_range_round_trips(t: tuple[int, int, int]) -> None:
    size, start, end = t
    assert parse_content_range(content_range(start, end, size)) == (start, end, size)
    assert parse_range(f"bytes={start}-{end - 1}", size) == (start, end)
