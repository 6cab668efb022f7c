#!/usr/bin/env python3
"""Exit 0 if the tracker at HOST:PORT (default 127.0.0.1:7700) reports SERVING
through the standard gRPC health service, 1 otherwise. For container health checks."""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7700"
try:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mfetch.v1.Tracker"), timeout=3)
except grpc.RpcError as e:
    print(f"unhealthy: {e.code().name}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
