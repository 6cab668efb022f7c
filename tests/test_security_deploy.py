"""The deploy side of TLS and tokens: the secure compose override is valid and its
commands parse with the real CLIs; the health check script speaks TLS and mutual TLS."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from agent import cli as agent_cli
from tests.test_security_tracker import make_pki
from tracker import cli as tracker_cli

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
BASE, SECURE = DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.secure.yml"
HEALTHCHECK = DEPLOY / "healthcheck.py"


def test_secure_override_is_valid_and_its_commands_parse() -> None:
    binary = shutil.which("docker-compose")
    if binary is not None:
        r = subprocess.run([binary, "-f", str(BASE), "-f", str(SECURE), "config", "-q"],
                           check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    services = yaml.safe_load(SECURE.read_text())["services"]
    tracker = tracker_cli._parser().parse_args(services["tracker"]["command"][1:])
    assert tracker.tls_cert and tracker.tls_key and tracker.agent_token_file
    agent = agent_cli.build_parser().parse_args(services["agent"]["command"][1:])
    assert agent.tracker_ca and agent.tracker_token_file and agent.http_token_file
    for service in services.values():  # every file a command names is a mounted secret
        for arg in service["command"]:
            if arg.startswith("/run/secrets/"):
                assert arg.removeprefix("/run/secrets/") in service["secrets"], arg


def _health(*args: str) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], check=False,
                          capture_output=True, timeout=60).returncode


@pytest.mark.system
def test_healthcheck_over_tls_and_mutual_tls(procs, tmp_path) -> None:
    pki = make_pki(tmp_path / "pki")
    token = tmp_path / "agent.token"
    token.write_text("agent-token-0123456789abcdef\n")
    tls = procs.tracker(tmp_path, "--tls-cert", pki.cert, "--tls-key", pki.key,
                        "--agent-token-file", str(token))
    assert _health(tls.address) == 1  # plain text against TLS
    assert _health("--ca", pki.other_ca, tls.address) == 1
    assert _health("--ca", pki.ca, tls.address) == 0  # no token needed for health
    mtls = procs.tracker(tmp_path, "--tls-cert", pki.cert, "--tls-key", pki.key,
                         "--tls-client-ca", pki.ca, db=str(tmp_path / "t2.db"))
    assert _health("--ca", pki.ca, mtls.address) == 1
    assert _health("--ca", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key,
                   mtls.address) == 0
