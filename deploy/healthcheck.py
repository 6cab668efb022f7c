#!/usr/bin/env python3
"""Exit 0 if the tracker at HOST:PORT (default 127.0.0.1:7700) reports SERVING
through the standard gRPC health service, 1 otherwise. For container health checks.

    mfetch-healthcheck [--tls] [--ca FILE] [--cert FILE --key FILE] [HOST:PORT]

--tls (or --ca) talks TLS; --cert/--key present a client certificate to a
tracker that requires mutual TLS. The health service needs no token."""
import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

p = argparse.ArgumentParser(prog="mfetch-healthcheck")
p.add_argument("address", nargs="?", default="127.0.0.1:7700")
p.add_argument("--tls", action="store_true", help="TLS, trusting the system's CA roots")
p.add_argument("--ca", metavar="FILE", help="TLS, trusting the CA certificates in FILE")
p.add_argument("--cert", metavar="FILE", help="client certificate, for mutual TLS")
p.add_argument("--key", metavar="FILE", help="the key of --cert")
args = p.parse_args()
if bool(args.cert) != bool(args.key):
    p.error("--cert and --key go together")


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        print(f"unhealthy: cannot read {path}: {e.strerror}", file=sys.stderr)
        sys.exit(1)


try:
    if args.tls or args.ca or args.cert:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(args.ca) if args.ca else None,
            private_key=_read(args.key) if args.key else None,
            certificate_chain=_read(args.cert) if args.cert else None)
        channel = grpc.secure_channel(args.address, creds)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mfetch.v1.Tracker"), timeout=3)
except grpc.RpcError as e:
    print(f"unhealthy: {e.code().name}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
