#!/usr/bin/env python3
"""A tracker that does nothing: the ceiling row of `make bench-tracker`.

It serves every mfetch.v1.Tracker method on a grpc.aio server, as `tracker serve`
does, but answers each call with one fixed, pre-encoded reply and never decodes
the request: Locate gets a candidate of ten agent sources (the size of the real
tracker's answer at the bench's ~10 holders per name), the others an empty reply.
No store, no validation, no interceptors, no metrics, no logging.

What it answers per second under the bench's load generator, on the same cores, is
what grpc.aio plus a Python load generator allow on this machine at all; the
tracker's locates/s divided by it is how much of that the tracker's own work takes.

    bench/null_tracker.py --listen 127.0.0.1:0     # prints "tracker listening on HOST:PORT"
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import pathlib
import signal
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVICE = "/mfetch.v1.Tracker/"
SOURCES = 10  # agent sources per Locate answer: the bench's default holders per name


def locate_reply() -> bytes:
    """A LocateReply as the tracker builds it for a name with SOURCES live holders."""
    from common.api import tracker_pb2 as pb
    from common.identity import Identity, piece_size_for
    from tracker import candidates
    from tracker.store import Holding, Located

    size = 700 * 1024 * 1024
    ident = Identity(size, hashlib.sha256(b"content-0").digest(), piece_size_for(size),
                     hashlib.sha256(b"rootcontent-0").digest())
    located = [Located(f"agent-{i:06d}", f"http://10.0.{i >> 8 & 255}.{i & 255}:7070",
                       Holding("data/file-0.bin", ident)) for i in range(SOURCES)]
    return pb.LocateReply(candidates=candidates.build(located, [], "file-0.bin")
                          ).SerializeToString()


def _raw(data: bytes) -> bytes:
    return data


async def serve(listen: str) -> None:
    import grpc

    replies = {"Locate": locate_reply()}

    class Handlers(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            method = details.method
            if not method.startswith(SERVICE):
                return None
            reply = replies.get(method[len(SERVICE):], b"")

            async def answer(request: bytes, context: Any) -> bytes:
                return reply

            return grpc.unary_unary_rpc_method_handler(
                answer, request_deserializer=_raw, response_serializer=_raw)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((Handlers(),))
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"tracker listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(ap.parse_known_args()[0].listen))


if __name__ == "__main__":
    main()
