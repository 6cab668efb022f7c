"""The agent's settings: one frozen dataclass, layered by common.config.

Layers, lowest first: the defaults below, the YAML file given by --config,
environment variables AGENT_<NAME> (e.g. AGENT_RESCAN_SECONDS=2), then flags.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common import config as common_config
from common import security
from common.errors import ConfigError
from common.ratelimit import parse_rate

DEFAULT_TRACKER = "127.0.0.1:7700"
DEFAULT_LISTEN = "0.0.0.0:7070"


@dataclass(frozen=True)
class AgentConfig(security.TrackerLinkSettings):
    """Everything `agent serve` needs.

    dir             the directory served read-only (required)
    tracker         HOST:PORT of the tracker's gRPC API (default 127.0.0.1:7700)
    listen          HOST:PORT the HTTP server binds (default 0.0.0.0:7070; port 0 = any free port)
    advertise       base URL given to the tracker; default derived from the bound address
    state_dir       where the agent id and the hash cache live; default
                    $XDG_STATE_HOME/mfetch-agent/<first 16 hex of sha256(realpath(dir))>
                    (~/.local/state/... without XDG_STATE_HOME): outside DIR, so DIR may be
                    read-only, one per served directory. If set inside DIR it is never served.
    hash_workers    worker processes hashing files (default 2)
    rescan_seconds  how often DIR is polled for changes (default 5)
    settle_seconds  a file modified less than this long ago is left for a later scan, so a
                    file still being written is not hashed over and over (default 2)
    tracker_tls, tracker_ca, tracker_cert, tracker_key
                    TLS to the tracker (system roots, or this CA bundle), and this agent's
                    certificate and key for a tracker that requires mutual TLS
    tracker_token(_file)  the tracker's agent token, sent with register/announce/heartbeat
    http_token(_file)     required as `Authorization: Bearer TOKEN` on /files/ and /pieces/
    status_public   serve /status, /api/status and /metrics to any client, not only
                    loopback ones (default false: they tell who downloads what)
    upload_rate     at most this many bytes/s sent in total, curl-style (500K, 2M); "" or 0:
                    no cap (default)
    max_client_connections
                    file requests in flight from one client address; one more gets 503 with
                    Retry-After (default 8; 0: no cap)
    fetch_allow     client addresses or networks that may use the fetch page and API
                    (/fetches, /api/fetches), which download into DIR; default loopback only.
                    An empty list turns them off for everyone.
    swarm_announce_seconds
                    swarming: the tracker hears of a shared download's bitfield at most
                    once per this many seconds (default 1; peers ask the agent for fresher)
    """

    dir: str = ""
    tracker: str = DEFAULT_TRACKER
    listen: str = DEFAULT_LISTEN
    advertise: str | None = None
    state_dir: str | None = None
    hash_workers: int = 2
    rescan_seconds: float = 5.0
    settle_seconds: float = 2.0
    http_token: str | None = field(default=None, repr=False)
    http_token_file: str | None = None
    status_public: bool = False
    upload_rate: str = ""
    max_client_connections: int = 8
    fetch_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    swarm_announce_seconds: float = 1.0

    def validated(self) -> AgentConfig:
        """Check every value; raise ConfigError naming the first bad one."""
        if not self.dir:
            raise ConfigError("no directory to serve")
        if not os.path.isdir(self.dir):
            what = "does not exist" if not os.path.exists(self.dir) else "is not a directory"
            raise ConfigError(f"{self.dir} {what}")
        common_config.parse_hostport(self.tracker, "tracker address")
        common_config.parse_hostport(self.listen, "listen address")
        if self.advertise is not None and not self.advertise.startswith(("http://", "https://")):
            raise ConfigError(f"bad advertise URL {self.advertise!r}: expected http://HOST:PORT")
        if self.hash_workers < 1:
            raise ConfigError(f"hash_workers must be at least 1, got {self.hash_workers}")
        if self.rescan_seconds <= 0:
            raise ConfigError(f"rescan_seconds must be positive, got {self.rescan_seconds}")
        parse_rate(self.upload_rate, "upload_rate")
        if self.max_client_connections < 0:
            raise ConfigError("max_client_connections must not be negative, "
                              f"got {self.max_client_connections}")
        from agent.fetch_page import parse_allow

        parse_allow(self.fetch_allow)
        if self.swarm_announce_seconds <= 0:
            raise ConfigError("swarm_announce_seconds must be positive, got "
                              f"{self.swarm_announce_seconds}")
        if self.settle_seconds < 0:
            raise ConfigError(f"settle_seconds must not be negative, got {self.settle_seconds}")
        self.tracker_link()  # certificate and token files are checked now
        self.resolved_http_token()
        return self

    def resolved_http_token(self) -> str | None:
        """The token HTTP clients must send for data, None if open; raises ConfigError."""
        return security.resolve_token(self.http_token, self.http_token_file, "http_token")

    @property
    def resolved_state_dir(self) -> str:
        """The state directory, with the default filled in."""
        if self.state_dir:
            return os.path.abspath(self.state_dir)
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        tag = hashlib.sha256(os.fsencode(os.path.realpath(self.dir))).hexdigest()[:16]
        return os.path.join(base, "mfetch-agent", tag)


def load(config_file: str | None, flags: Mapping[str, Any]) -> AgentConfig:
    """Defaults < YAML `config_file` < AGENT_* environment < `flags` (None = unset).

    Raises ConfigError on an unreadable file, an unknown key or a bad value.
    """
    layers = [
        (common_config.load_yaml(config_file), config_file or "config file"),
        (common_config.env_layer("AGENT", AgentConfig), "environment AGENT_*"),
        (flags, "flags"),
    ]
    for layer, origin in layers:  # check each layer alone so an error names its origin
        common_config.build(AgentConfig, layer, origin=origin)
    cfg = common_config.build(AgentConfig, *(layer for layer, _ in layers))
    return cfg.validated()
