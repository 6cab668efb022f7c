"""The compose files are valid, and every command in them parses with the real CLI."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
import yaml

from agent import cli as agent_cli
from tracker import cli as tracker_cli
from tracker import config as tconfig

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.redis.yml"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_config_is_valid(path: pathlib.Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    r = subprocess.run([binary, "-f", str(path), "config", "-q"], check=False,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_command_parses(path: pathlib.Path) -> None:
    services = yaml.safe_load(path.read_text())["services"]
    checked = 0
    for name, service in services.items():
        argv = service.get("command")
        if argv is None:
            continue
        assert isinstance(argv, list), f"{name}: write command as an exec-form list"
        try:
            if argv[0] == "tracker":
                args = tracker_cli._parser().parse_args(argv[1:])
                if args.command == "serve":  # the values, too, must pass the config checks
                    tconfig.load(None, {"listen": args.listen, "http": args.http, "db": args.db,
                                        "lease_seconds": args.lease_seconds,
                                        "heartbeat_seconds": args.heartbeat_seconds},
                                 environ=False)
            elif argv[0] == "agent":
                agent_cli.build_parser().parse_args(argv[1:])
            else:
                assert argv[0] == "redis-server", f"{name}: unknown command {argv[0]}"
                continue
        except SystemExit:
            pytest.fail(f"{path.name}: service {name}: command does not parse: {argv}")
        checked += 1
    assert checked >= 2
