"""The client's settings: defaults < config file < MFETCH_* environment < flags."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

from client.http1 import USER_AGENT
from client.scheduler import SchedulerConfig
from common.config import build, env_layer, load_yaml
from common.ratelimit import TokenBucket, parse_rate
from common.security import TrackerLinkSettings

DEFAULT_AGENT = "http://127.0.0.1:7070"
NO_AGENT = "off"  # agent: off: no swarming through a local agent, no --background


@dataclass(frozen=True)
class ClientConfig(TrackerLinkSettings):
    tracker: str = "127.0.0.1:7700"
    connections: int = 2  # to start with, per source
    max_connections_per_source: int = 6  # the most to one source (URL)
    max_connections_per_host: int = 6  # over every source on one host:port: no server hammered
    # This machine's agent: --background hands it fetches; a download by NAME inside its
    # directory is shared through it (swarming). Nothing answering there, or "off": no
    # swarming.
    agent: str = DEFAULT_AGENT
    limit_rate: str = ""  # bytes/s over all connections, curl-style (500K, 2M); "" = no limit
    stall_timeout: float = 8.0  # seconds without a byte before a request is abandoned
    connect_timeout: float = 5.0
    first_byte_timeout: float = 15.0
    max_failures: int = 5  # failures in a row before a source is dropped
    user_agent: str = USER_AGENT
    proxy: str = ""  # http://, https://, socks4:// or socks5:// (environment proxies are ignored)
    cacert: str = ""  # a CA bundle to trust besides the system's
    # The agents' HTTP token, sent only to the agents the tracker names (client/http.py);
    # the tracker's TLS and client token come from TrackerLinkSettings.
    agent_token: str | None = field(default=None, repr=False)
    agent_token_file: str | None = None
    # Flush the file to disk before it is handed over (and before each checkpoint
    # vouches for pieces), so even a power loss loses nothing: slower when the disk is
    # slower than the network. Off: writeback is the kernel's, as with curl.
    sync: bool = False

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            initial_connections=self.connections,
            max_connections_per_source=self.max_connections_per_source,
            max_connections_per_host=self.max_connections_per_host,
            stall_timeout=self.stall_timeout,
            first_byte_timeout=self.first_byte_timeout,
            max_failures=self.max_failures,
            tail_duplicates=parse_rate(self.limit_rate, "limit_rate") == 0,
        )


def rate_limit(cfg: ClientConfig) -> TokenBucket | None:
    """The shared bucket for cfg.limit_rate, or None without a limit."""
    rate = parse_rate(cfg.limit_rate, "limit_rate")
    return TokenBucket(rate) if rate > 0 else None


def default_config_path() -> pathlib.Path | None:
    """$XDG_CONFIG_HOME/mfetch/config.yaml (~/.config/...) if it exists."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    path = pathlib.Path(base) / "mfetch" / "config.yaml"
    return path if path.is_file() else None


def load(config_file: str | None, flags: dict[str, object]) -> ClientConfig:
    """Layer the settings; raises ConfigError naming the bad file, variable or flag."""
    path = config_file or default_config_path()
    file_layer = load_yaml(path)
    cfg = build(ClientConfig, file_layer, origin=str(path or "config"))
    cfg = build(ClientConfig, vars(cfg), env_layer("MFETCH", ClientConfig), origin="environment")
    cfg = build(ClientConfig, vars(cfg), flags, origin="flags")
    parse_rate(cfg.limit_rate, "limit_rate")  # a bad rate fails here, with its name
    for name in ("connections", "max_connections_per_source", "max_connections_per_host",
                 "max_failures"):
        if getattr(cfg, name) < 1:
            from common.errors import ConfigError
            raise ConfigError(f"{name} must be at least 1")
    if cfg.agent in ("", NO_AGENT):
        import dataclasses
        cfg = dataclasses.replace(cfg, agent=NO_AGENT)
    elif not cfg.agent.startswith(("http://", "https://")):
        from common.errors import ConfigError
        raise ConfigError(f"agent must be the local agent's URL, http://HOST:PORT, or off; "
                          f"got {cfg.agent!r}")
    return cfg
