"""The tracker's settings: defaults < YAML file (--config) < environment TRACKER_* < flags.

Defaults: listen on 127.0.0.1:7700 (loopback, so a tracker started by hand is
not exposed by accident; set listen: 0.0.0.0:7700 to serve a network), store
in ./tracker.db, 30 s leases renewed by 10 s heartbeats.

YAML example::

    listen: 0.0.0.0:7700
    http: 127.0.0.1:7780             # status page, /api/status, /metrics; "off" disables
    db: /var/lib/mfetch/tracker.db   # or redis://HOST:PORT[/DB], shared by several trackers
    lease_seconds: 30
    heartbeat_seconds: 10
    workers: 1                       # tracker processes on one port, sharing db (SO_REUSEPORT)
    tls_cert: /etc/mfetch/tracker.crt     # TLS (with tls_key); tls_client_ca makes it mutual
    tls_key: /etc/mfetch/tracker.key
    agent_token_file: /etc/mfetch/agent.token   # or agent_token: VALUE (also admin_, client_)
    mirrors:
      - url: https://example.org/ubuntu.iso
        sha256: 3f5c...   # 64 hex digits
        size: 1234        # optional
        name: ubuntu.iso  # optional: defaults to the URL's last path segment
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common import config as cfg
from common.errors import ConfigError
from common.identity import digest_from_hex
from tracker import auth, redis_store, validate

MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """A mirror the config file declares; upserted into the store at start."""

    url: str
    sha256: bytes
    name: str = ""
    size: int = 0


@dataclass(frozen=True)
class TrackerConfig:
    """Everything `tracker serve` needs. Construct with :func:`load` to get checks."""

    listen: str = "127.0.0.1:7700"
    # The status page, /api/status and /metrics (tracker/status_http.py): loopback by
    # default; "off" (or empty) disables it.
    http: str = "127.0.0.1:7780"
    db: str = "tracker.db"
    lease_seconds: int = 30
    heartbeat_seconds: int = 10
    # Tracker processes on one port (SO_REUSEPORT), sharing the store: tracker/workers.py.
    workers: int = 1
    purge_after_seconds: int = 7 * 24 * 3600  # forget agents whose lease lapsed this long ago
    mirrors: tuple[MirrorSpec, ...] = ()
    # Security (tracker/auth.py, SECURITY.md): TLS with a server certificate; a client CA
    # makes mutual TLS required. Tokens: the value, or a file holding it (never a flag).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    agent_token: str | None = field(default=None, repr=False)
    agent_token_file: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    admin_token_file: str | None = None
    client_token: str | None = field(default=None, repr=False)
    client_token_file: str | None = None

    @property
    def tokens(self) -> auth.Tokens:
        """The tokens resolved (files read); raises ConfigError."""
        return auth.tokens_from({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                 if "token" in f.name})


def load(config_file: str | os.PathLike[str] | None = None,
         flags: Mapping[str, Any] | None = None,
         environ: bool = True) -> TrackerConfig:
    """Build the config from its layers; raises ConfigError naming the bad file/key/value."""
    origin = str(config_file) if config_file else "config"
    file_layer = cfg.load_yaml(config_file)
    layers: list[tuple[Mapping[str, Any], str]] = [(file_layer, origin)]
    if environ:
        layers.append((cfg.env_layer("TRACKER", TrackerConfig), "environment"))
    layers.append((flags or {}, "flags"))
    merged: dict[str, Any] = {}
    for layer, where in layers:
        # build() once per layer so a bad value is reported against its own origin.
        cfg.build(TrackerConfig, layer, origin=where)
        for key, value in layer.items():
            if value is not None:
                key = key.replace("-", "_")
                merged.pop(cfg.secret_partner(key), None)  # the token or its file, not both
                merged[key] = value
    built = cfg.build(TrackerConfig, merged, origin=origin)
    mirrors = tuple(_mirror(m, f"{origin}: mirrors[{i}]") for i, m in enumerate(built.mirrors))
    return check(dataclasses.replace(built, mirrors=mirrors))


def check(c: TrackerConfig) -> TrackerConfig:
    """Raise ConfigError unless the values make sense together."""
    cfg.parse_hostport(c.listen, "listen address")
    if http_enabled(c):
        cfg.parse_hostport(c.http, "http address")
    if not c.db:
        raise ConfigError("db: the database path is empty")
    if c.db.startswith(("redis:", "rediss:")):  # a URL, not a file named redis...
        redis_store.check_url(c.db)
    if not 1 <= c.lease_seconds <= 86400:
        raise ConfigError(f"lease_seconds must be 1..86400, got {c.lease_seconds}")
    if not 1 <= c.heartbeat_seconds < c.lease_seconds:
        raise ConfigError(f"heartbeat_seconds must be at least 1 and less than lease_seconds "
                          f"({c.lease_seconds}), got {c.heartbeat_seconds}")
    if not 1 <= c.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be 1..{MAX_WORKERS}, got {c.workers}")
    if c.purge_after_seconds < 0:
        raise ConfigError("purge_after_seconds must not be negative")
    if bool(c.tls_cert) != bool(c.tls_key):
        raise ConfigError("tls_cert and tls_key go together")
    if c.tls_client_ca and not c.tls_cert:
        raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    if c.tls_cert and c.tls_key:
        auth.server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca)  # files checked now
    c.tokens  # noqa: B018  (reads and checks the token files now)
    return c


def http_enabled(c: TrackerConfig) -> bool:
    """Whether the status page / metrics listener is wanted (http is not "off" or empty)."""
    return c.http.strip().lower() not in ("", "off", "none")


def _mirror(raw: Any, where: str) -> MirrorSpec:
    if isinstance(raw, MirrorSpec):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with url and sha256, got {raw!r}")
    unknown = set(raw) - {"url", "sha256", "name", "size"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        url = validate.http_url(str(raw.get("url") or ""), "url")
        sha256 = parse_sha256(str(raw.get("sha256") or ""))
        size = raw.get("size", 0) or 0
        if not isinstance(size, int) or isinstance(size, bool):
            raise validate.Invalid(f"size must be a whole number, got {size!r}")
        validate.size(size)
        name = validate.mirror_name(url, str(raw.get("name") or ""))
    except (validate.Invalid, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return MirrorSpec(url=url, sha256=sha256, name=name, size=size)


def parse_sha256(text: str) -> bytes:
    """64 hex digits -> 32 bytes; raises ConfigError."""
    return digest_from_hex(text, "sha256")
