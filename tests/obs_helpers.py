"""Helpers for the metrics and status-page tests: find a server's HTTP address in its
output, scrape Prometheus text, read JSON."""
from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Proc

_HTTP_LINE = re.compile(r"tracker http listening on (\S+)")


def tracker_http(proc: Proc, timeout: float = 30.0) -> str:
    """The http://HOST:PORT a started `tracker serve` printed for its status page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            m = _HTTP_LINE.search(line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no status page address in the tracker's output:\n{proc.output()}")


def get(url: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def get_json(url: str) -> Any:
    status, ctype, body = get(url)
    assert status == 200 and ctype.startswith("application/json"), (status, ctype, body)
    return json.loads(body)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition; the parser raises on invalid text."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(base: str) -> Samples:
    status, ctype, body = get(base.rstrip("/") + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return parse_metrics(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 if absent (a labelled counter not yet seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
