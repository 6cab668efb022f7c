"""The client's settings: defaults < config file < MFETCH_* environment < flags."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from client.scheduler import SchedulerConfig
from common.config import build, env_layer, load_yaml


@dataclass(frozen=True)
class ClientConfig:
    tracker: str = "127.0.0.1:7700"
    connections: int = 2  # to start with, per source
    max_connections_per_source: int = 6  # the per-host cap: no server is hammered
    stall_timeout: float = 8.0  # seconds without a byte before a request is abandoned
    connect_timeout: float = 5.0
    first_byte_timeout: float = 15.0
    max_failures: int = 5  # failures in a row before a source is dropped
    user_agent: str = "mfetch/0.1"
    proxy: str = ""  # http://, https://, socks4:// or socks5:// (environment proxies are ignored)
    cacert: str = ""  # a CA bundle to trust besides the system's
    agent: str = ""  # the local agent's URL: share the download while it runs (swarming)

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            initial_connections=self.connections,
            max_connections_per_source=self.max_connections_per_source,
            stall_timeout=self.stall_timeout,
            first_byte_timeout=self.first_byte_timeout,
            max_failures=self.max_failures,
        )


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
    for name in ("connections", "max_connections_per_source", "max_failures"):
        if getattr(cfg, name) < 1:
            from common.errors import ConfigError
            raise ConfigError(f"{name} must be at least 1")
    if cfg.agent and not cfg.agent.startswith(("http://", "https://")):
        from common.errors import ConfigError
        raise ConfigError(f"agent must be the local agent's URL, http://HOST:PORT, "
                          f"got {cfg.agent!r}")
    return cfg
