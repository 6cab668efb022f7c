"""Tokens and TLS files, shared by the tracker, the agent, mfetch and the tracker CLI.

Tokens are bearer secrets: `authorization: Bearer TOKEN` in gRPC metadata for
the tracker, the `Authorization: Bearer TOKEN` header for an agent's HTTP data.
A token setting comes in two forms, NAME (the value, from the YAML file or the
environment) and NAME_file (a file holding it, first line); never a bare flag
with the value, since argv shows in `ps`. Comparison is constant-time.

Every problem with a token or a certificate file is one ConfigError naming the
setting and the file, raised at start-up, never at the first call.
"""
from __future__ import annotations

import hmac
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError

MIN_TOKEN = 16
MAX_TOKEN = 4096
BEARER = "Bearer "


def check_token(token: str, what: str) -> str:
    """A token as it may travel in a header: 16..4096 visible ASCII characters."""
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN:
        raise ConfigError(f"{what}: a token must be {MIN_TOKEN} to {MAX_TOKEN} characters, "
                          f"got {len(token)}")
    if not all("\x21" <= ch <= "\x7e" for ch in token):
        raise ConfigError(f"{what}: a token may hold only visible ASCII characters "
                          "(no spaces or control characters)")
    return token


def resolve_token(value: str | None, file: str | None, what: str) -> str | None:
    """The token from `value` or from the first line of `file` (not both); None if neither.

    `what` names the setting in messages (e.g. "agent_token"). Raises ConfigError.
    """
    if value and file:
        raise ConfigError(f"give {what} or {what}_file, not both")
    if file:
        file = os.path.expanduser(file)  # `~/...` in a YAML file means the home folder
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read(MAX_TOKEN + 2)
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise ConfigError(f"{what}_file {file}: cannot read it: {why}") from None
        lines = text.splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError(f"{what}_file {file}: the file is empty")
        return check_token(value, f"{what}_file {file}")
    if value:
        return check_token(value, what)
    return None


def bearer(token: str) -> str:
    """The Authorization value carrying `token`."""
    return BEARER + token


def presented_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` value; None if absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(presented: str | None, expected: tuple[str, ...]) -> bool:
    """Whether `presented` equals one of `expected`, compared in constant time.

    Every expected token is compared (no early exit), so the time does not tell
    which role's token was close."""
    if presented is None:
        return False
    # A header may carry any bytes (aiohttp hands them over surrogate-escaped): such a
    # token cannot match one of ours, which are visible ASCII, and must not raise.
    got = presented.encode("utf-8", "surrogateescape")
    ok = False
    for token in expected:
        ok |= hmac.compare_digest(got, token.encode())
    return ok


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; raises ConfigError naming `what` and the path."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path}: not a PEM file")
    return data


def check_cert_and_key(cert: str, key: str, what: str) -> tuple[bytes, bytes]:
    """Read a certificate chain and its private key, and check that they belong together.

    Returns (cert PEM, key PEM). Raises ConfigError for a missing, unreadable,
    malformed or mismatched pair (OpenSSL parses them, as gRPC will)."""
    cert_pem = read_pem(cert, f"{what} certificate")
    key_pem = read_pem(key, f"{what} key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            raise ConfigError(f"{what} key {key} does not match the certificate {cert}") from None
        raise ConfigError(f"{what} certificate {cert} / key {key}: {reason}") from None
    except OSError as e:
        raise ConfigError(f"{what} certificate {cert} / key {key}: {e.strerror}") from None
    return cert_pem, key_pem


def check_ca(path: str, what: str) -> bytes:
    """Read a bundle of CA certificates; raises ConfigError if OpenSSL cannot load it."""
    pem = read_pem(path, what)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{what} {path}: not a usable CA bundle: {e}") from None
    return pem


@dataclass(frozen=True)
class TrackerLink:
    """How a client reaches the tracker: TLS (and what it trusts), a client
    certificate for mutual TLS, and the token to send.

    tls      use TLS; implied by ca/cert. Without `ca`, the system's CA roots are trusted.
    ca       CA bundle that signs the tracker's certificate (PEM file)
    cert/key this client's certificate and key, for a tracker that requires mutual TLS
    token    sent as `authorization: Bearer TOKEN` with every call
    """

    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = None

    @property
    def secure(self) -> bool:
        return bool(self.tls or self.ca or self.cert or self.key)

    def checked(self) -> TrackerLink:
        """Check the files now (raises ConfigError), so a bad one is reported at start."""
        if bool(self.cert) != bool(self.key):
            raise ConfigError("tracker_cert and tracker_key go together (mutual TLS)")
        if self.ca:
            check_ca(self.ca, "tracker_ca")
        if self.cert and self.key:
            check_cert_and_key(self.cert, self.key, "tracker_cert")
        return self

    def credentials(self) -> object:
        """grpc.ChannelCredentials for a secure channel (call only when `secure`)."""
        import grpc

        ca = read_pem(self.ca, "tracker_ca") if self.ca else None
        cert = read_pem(self.cert, "tracker_cert") if self.cert else None
        key = read_pem(self.key, "tracker_key") if self.key else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token (empty without one)."""
        return (("authorization", bearer(self.token)),) if self.token else ()


def env_default(name: str) -> str | None:
    """An environment variable, None when unset or empty."""
    return os.environ.get(name) or None


def add_link_flags(parser: Any, token_help: str) -> None:
    """The flags naming how to reach a TLS or token-protected tracker (same in every CLI):
    --tracker-tls, --tracker-ca, --tracker-cert, --tracker-key, --tracker-token-file."""
    parser.add_argument("--tracker-tls", action="store_true", default=None,
                        help="talk TLS to the tracker, trusting the system's CA roots")
    parser.add_argument("--tracker-ca", metavar="FILE",
                        help="talk TLS to the tracker, trusting the CA certificates in FILE")
    parser.add_argument("--tracker-cert", metavar="FILE",
                        help="this side's certificate, for a tracker requiring mutual TLS")
    parser.add_argument("--tracker-key", metavar="FILE", help="the key of --tracker-cert")
    parser.add_argument("--tracker-token-file", metavar="FILE", help=token_help)


def link_flags(args: Any) -> dict[str, Any]:
    """The values of add_link_flags' flags as config settings (None = not given)."""
    return {"tracker_tls": args.tracker_tls, "tracker_ca": args.tracker_ca,
            "tracker_cert": args.tracker_cert, "tracker_key": args.tracker_key,
            "tracker_token_file": args.tracker_token_file}


def link_from(settings: Any, what: str = "tracker_token") -> TrackerLink:
    """A checked TrackerLink from an object with tracker_tls/_ca/_cert/_key/_token(_file)."""
    token = resolve_token(getattr(settings, "tracker_token", None),
                          getattr(settings, "tracker_token_file", None), what)
    return TrackerLink(bool(settings.tracker_tls), settings.tracker_ca or None,
                       settings.tracker_cert or None, settings.tracker_key or None,
                       token).checked()


@dataclass(frozen=True)
class TrackerLinkSettings:
    """The settings every role that calls the tracker has (the agent, mfetch): TLS to
    it (system roots, or this CA bundle), a client certificate and key for a tracker
    that requires mutual TLS, and the token to send (its value or a file holding it)."""

    tracker_tls: bool = False
    tracker_ca: str | None = None
    tracker_cert: str | None = None
    tracker_key: str | None = None
    tracker_token: str | None = field(default=None, repr=False)
    tracker_token_file: str | None = None

    def tracker_link(self) -> TrackerLink:
        """TLS and token for the tracker; raises ConfigError for a bad file or token."""
        return link_from(self, "tracker_token")
