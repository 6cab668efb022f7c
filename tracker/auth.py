"""Who may call what on the tracker: tokens checked at one place, and TLS.

Three tokens, each optional and independent (see SECURITY.md):

    agent token   Register, Announce, Heartbeat        (what agents do)
    admin token   AddMirror, RemoveMirror, and any     (what `tracker mirror add|rm` does)
                  Tracker method not listed here
    client token  Locate, ListMirrors                  (what mfetch and `mirror ls` do);
                  the agent and admin tokens are accepted there too

A role whose token is set accepts no call without it: the call is answered
UNAUTHENTICATED with a one-line reason before any of the request is decoded
(:func:`refusal`, asked when the call's handler is looked up). A
role whose token is not set is open, as before tokens existed. The standard
gRPC health service is always open, so container health checks need no secret.

A method of mfetch.v1.Tracker this table does not know (added to the proto
later) needs the admin token whenever any token is set: new calls fail closed.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from common import security
from common.config import parse_hostport

SERVICE_PREFIX = "/mfetch.v1.Tracker/"
AGENT_METHODS = frozenset({"Register", "Announce", "Heartbeat"})
ADMIN_METHODS = frozenset({"AddMirror", "RemoveMirror"})
READ_METHODS = frozenset({"Locate", "ListMirrors"})


@dataclass(frozen=True)
class Tokens:
    """The tokens a tracker demands; None = that role is open."""

    agent: str | None = None
    admin: str | None = None
    client: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.agent or self.admin or self.client)

    def required(self, method: str) -> tuple[str, tuple[str, ...]] | None:
        """(role name, tokens accepted) for a full method name; None if the call is open."""
        if not method.startswith(SERVICE_PREFIX):
            return None  # the health service, and anything else outside the API
        name = method[len(SERVICE_PREFIX):]
        if name in AGENT_METHODS:
            return ("agent", (self.agent,)) if self.agent else None
        if name in READ_METHODS:
            if not self.client:
                return None
            return "client", tuple(t for t in (self.client, self.agent, self.admin) if t)
        if name in ADMIN_METHODS:
            return ("admin", (self.admin,)) if self.admin else None
        if not self.any:
            return None
        # A method unknown here: admin only (nobody, without an admin token).
        return "admin", (self.admin,) if self.admin else ()


def refusal(tokens: Tokens, method: str, metadata: Any) -> grpc.RpcMethodHandler | None:
    """The handler that answers UNAUTHENTICATED to a call of `method` (a full method name)
    without the token it needs, given the call's invocation metadata; None if it may go on.

    tracker/service.py's TrackerHandlers asks this when it looks up a call's handler,
    before anything is decoded (no interceptor: see TrackerHandlers for why)."""
    need = tokens.required(method)
    if need is None:
        return None
    role, accepted = need
    sent = _authorization(metadata)
    if security.token_matches(security.presented_token(sent), accepted):
        return None
    name = method.rsplit("/", 1)[-1]
    if not accepted:
        why = f"{name} is refused: this tracker has no admin token for it"
    elif sent is None:
        why = f"{name} needs the {role} token (authorization: Bearer TOKEN); none was sent"
    else:
        why = f"{name}: wrong token (it needs the {role} token)"
    return _refusal(why)


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _refusal(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # No deserializer: the request is never decoded for a caller without the token.
    return grpc.unary_unary_rpc_method_handler(refuse)


def tokens_from(settings: Mapping[str, str | None]) -> Tokens:
    """Resolve agent/admin/client tokens from settings NAME and NAME_file (ConfigError)."""
    def one(role: str) -> str | None:
        return security.resolve_token(settings.get(f"{role}_token"),
                                      settings.get(f"{role}_token_file"), f"{role}_token")
    return Tokens(agent=one("agent"), admin=one("admin"), client=one("client"))


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS credentials for the tracker; with `client_ca`, clients must present a certificate
    it signed (mutual TLS). Raises ConfigError for a missing, unreadable or mismatched file."""
    cert_pem, key_pem = security.check_cert_and_key(cert, key, "tls_cert")
    ca_pem = security.check_ca(client_ca, "tls_client_ca") if client_ca else None
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


def _loopback(address: str, what: str) -> bool:
    host, _ = parse_hostport(address, what)
    try:
        return ipaddress.ip_address(host or "0.0.0.0").is_loopback
    except ValueError:
        return host == "localhost"


def exposure_warnings(listen: str, tls: bool, tokens: Tokens,
                      http: str | None = None) -> list[str]:
    """What an operator should hear at start about a tracker reachable beyond loopback
    (its gRPC `listen` address, and its status page and metrics at `http`, if on)."""
    out = []
    if http and not _loopback(http, "http address"):
        out.append(f"the status page and /metrics at {http} need no token or certificate: "
                   "anyone who reaches it sees every content, holder and agent address"
                   + (" that Locate keeps behind the client token" if tokens.client else "")
                   + "; keep it on loopback or a trusted network")
    if _loopback(listen, "listen address"):
        return out
    open_roles = [r for r in ("agent", "admin") if getattr(tokens, r) is None]
    if open_roles:
        out.append(f"no {' or '.join(open_roles)} token: anyone who reaches {listen} can "
                   + ("announce and heartbeat agents" if "agent" in open_roles else "")
                   + (" and " if len(open_roles) == 2 else "")
                   + ("add and remove mirrors" if "admin" in open_roles else ""))
    if tokens.any and not tls:
        out.append("tokens are set but TLS is not: they cross the network in clear text")
    return out
