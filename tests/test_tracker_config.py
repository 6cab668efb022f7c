"""TrackerConfig layering: defaults < YAML < TRACKER_* environment < flags."""
from __future__ import annotations

import pytest

from common.errors import ConfigError
from tracker.config import TrackerConfig, load

SHA = "cd" * 32


def test_defaults(monkeypatch) -> None:
    for var in ("TRACKER_LISTEN", "TRACKER_DB", "TRACKER_LEASE_SECONDS", "TRACKER_HTTP"):
        monkeypatch.delenv(var, raising=False)
    c = load(None, {})
    assert c == TrackerConfig()
    assert (c.listen, c.db, c.lease_seconds, c.heartbeat_seconds) == \
        ("127.0.0.1:7700", "tracker.db", 30, 10)


def test_layers_in_order(tmp_path, monkeypatch) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(f"listen: 0.0.0.0:7000\ndb: a.db\nlease_seconds: 60\n"
                 f"mirrors:\n  - url: https://m/x/ubuntu%2024.iso\n    sha256: {SHA}\n")
    monkeypatch.setenv("TRACKER_DB", "b.db")
    monkeypatch.setenv("TRACKER_LEASE_SECONDS", "90")
    c = load(f, {"lease_seconds": "120", "listen": None})
    assert (c.listen, c.db, c.lease_seconds) == ("0.0.0.0:7000", "b.db", 120)
    (m,) = c.mirrors
    assert (m.name, m.sha256, m.size) == ("ubuntu 24.iso", bytes.fromhex(SHA), 0)


@pytest.mark.parametrize("text,needle", [
    ("listen: [\n", "YAML"),
    ("- a\n- b\n", "mapping"),
    ("colour: red\n", "unknown setting"),
    ("lease_seconds: soon\n", "lease_seconds"),
    ("lease_seconds: 10\nheartbeat_seconds: 10\n", "heartbeat_seconds"),
    ("listen: nowhere\n", "listen"),
    ("mirrors: 3\n", "list"),
    ("mirrors:\n  - url: ftp://m/x\n    sha256: " + SHA + "\n", "http"),
    ("mirrors:\n  - url: http://m/x\n", "sha256"),
    ("mirrors:\n  - url: http://m/x\n    sha256: " + SHA + "\n    size: -1\n", "size"),
    ("mirrors:\n  - url: http://m/\n    sha256: " + SHA + "\n", "name"),
    ("mirrors:\n  - {url: http://m/x, sha256: " + SHA + ", colour: red}\n", "unknown"),
])
def test_bad_values_are_one_line_config_errors(tmp_path, text, needle) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(f, {}, environ=False)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_db_is_a_path_or_a_redis_url() -> None:
    assert load(None, {"db": "redis://r.lan:6379/2"}, environ=False).db == "redis://r.lan:6379/2"
    assert load(None, {"db": "redis-index.db"}, environ=False).db == "redis-index.db"
    for bad in ("redis://r.lan", "redis://r.lan:6379/x", "rediss://r.lan:6379",
                "redis://r.lan:99999"):
        with pytest.raises(ConfigError, match="db"):
            load(None, {"db": bad}, environ=False)


def test_http_status_listener_layers_and_off(tmp_path, monkeypatch) -> None:
    from tracker.config import http_enabled

    monkeypatch.delenv("TRACKER_HTTP", raising=False)
    assert load(None, {}).http == "127.0.0.1:7780", "loopback by default"
    f = tmp_path / "t.yaml"
    f.write_text("http: 0.0.0.0:9000\n")
    assert load(f, {}).http == "0.0.0.0:9000"
    monkeypatch.setenv("TRACKER_HTTP", "127.0.0.1:9001")
    assert load(f, {}).http == "127.0.0.1:9001"
    c = load(f, {"http": "off"})
    assert c.http == "off" and not http_enabled(c)
    assert not http_enabled(load(None, {"http": ""}))
    with pytest.raises(ConfigError, match="bad http address 'nowhere'"):
        load(None, {"http": "nowhere"})
