"""The gRPC servicer: validates every request, then asks the store.

Errors become status codes here and only here: a malformed field is
INVALID_ARGUMENT with a message naming it, an agent the tracker does not know
(or whose lease lapsed) is NOT_FOUND so the agent registers and announces
again, nothing under a key is NOT_FOUND, and anything unexpected is logged
and answered INTERNAL; the server keeps serving.

Identity: the tracker (even with an agent token, tracker/auth.py, which all
agents share) cannot tell an agent from someone using its agent_id, and agent ids are not
secret (Locate answers carry them). So a Register for an agent_id that is
already live is *accepted*, last one wins, and logged as a warning: refusing
it (ALREADY_EXISTS until the lease lapses) would lock out the common honest
case, an agent restarted on a new port or address, for a whole lease, while
an impostor would only have to wait out that lease. What bounds the harm is
the client: every byte is checked against the piece hashes and root, so a
hijacked or fake source can slow a download but never corrupt one. SECURITY.md
lists this and the other limits.
"""
from __future__ import annotations

import functools
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from common.api import tracker_pb2 as pb
from common.api import tracker_pb2_grpc as pb_grpc
from common.identity import Identity
from tracker import auth, candidates, validate
from tracker.auth import Tokens
from tracker.renewals import Renewals
from tracker.store import Holding, MirrorRecord, Store
from tracker.validate import Invalid

if TYPE_CHECKING:
    from tracker.observe import Observer

log = logging.getLogger("tracker.service")

Req = TypeVar("Req")
Rep = TypeVar("Rep")
UNKNOWN_AGENT = "unknown agent; register again"


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rpc(fn: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Rep]]
         ) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Rep]]:
    """Turn Invalid/_Abort/anything unexpected into a status; never let one escape raw."""
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Rep:
        try:
            return await fn(self, request, context)
        except Invalid as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except _Abort as e:
            await context.abort(e.code, str(e))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal tracker error")
        raise AssertionError("unreachable: abort raises")
    return wrapper


def _observed(fn: Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Rep]]
              ) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Rep]]:
    """Count and time the call in the servicer's Observer (tracker/observe.py), if any.
    Goes inside @_rpc, so it sees the domain errors before they become status codes."""
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Rep:
        observer = self._observer
        if observer is None:
            return await fn(self, request, context)
        started = time.perf_counter()
        reply, result = None, "error"
        try:
            reply = await fn(self, request, context)
            result = "ok"
            return reply
        except _Abort as e:
            result = "not_found" if e.code == grpc.StatusCode.NOT_FOUND else "error"
            raise
        finally:
            observer.record_call(fn.__name__, request, reply, result,
                                 time.perf_counter() - started, context.peer)
    return wrapper


SERVICE_PREFIX = "/mfetch.v1.Tracker/"


class TrackerHandlers(grpc.GenericRpcHandler):
    """mfetch.v1.Tracker's method handlers for a servicer (in place of the generated
    add_TrackerServicer_to_server), with the two checks every call needs before it
    reaches the servicer:

    - the tokens (tracker/auth.py): a caller without the token its method needs is
      answered UNAUTHENTICATED before any of the request is decoded;
    - decoding: bytes that are not the request message (or carry a string that is not
      UTF-8) get INVALID_ARGUMENT. Left to gRPC they are UNKNOWN, with an error-level
      traceback logged per call, which a client could use to flood the log.

    Both happen here, in the handler lookup and the handler, not in grpc.aio server
    interceptors: each interceptor runs a chain of coroutines on every call, and two
    pass-through ones cut what a no-op grpc.aio server answers on this 2-core machine by
    about 30% (bench/null_tracker.py, issue 7).
    """

    def __init__(self, servicer: TrackerServicer, tokens: Tokens) -> None:
        self._tokens = tokens
        self._check = tokens.any
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in pb.DESCRIPTOR.services_by_name["Tracker"].methods:
            request_type = getattr(pb, method.input_type.name)
            reply_type = getattr(pb, method.output_type.name)
            self._handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _decoding(getattr(servicer, method.name), request_type,
                          SERVICE_PREFIX + method.name),
                response_serializer=reply_type.SerializeToString)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if self._check:
            refused = auth.refusal(self._tokens, method,
                                   handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
            if refused is not None:
                return refused
        if not method.startswith(SERVICE_PREFIX):
            return None  # the health service's, or UNIMPLEMENTED
        return self._handlers.get(method[len(SERVICE_PREFIX):])


def _decoding(behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
              request_type: Any, method: str
              ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The servicer method, fed the raw request bytes decoded here (INVALID_ARGUMENT if
    they are not a `request_type`)."""
    decode = request_type.FromString

    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid {method} request")
        return await behavior(request, context)

    return unary


class TrackerServicer(pb_grpc.TrackerServicer):
    """mfetch.v1.Tracker over a :class:`tracker.store.Store`."""

    def __init__(self, store: Store, *, lease_seconds: int, heartbeat_seconds: int,
                 clock: Callable[[], float], observer: Observer | None = None) -> None:
        self._store = store
        self._observer = observer
        self._lease = lease_seconds
        self._heartbeat = heartbeat_seconds
        self._clock = clock
        self.renewals = Renewals(store, clock)

    @_rpc
    @_observed
    async def Register(self, request: pb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> pb.RegisterReply:
        agent_id = validate.agent_id(request.agent_id)
        base_url = validate.base_url(request.base_url)
        if await self._store.is_live(agent_id):
            log.warning("agent %s registered again while its lease is live, now at %s "
                        "(a restart, a move, or someone else using its id)", agent_id, base_url)
        await self._store.register(agent_id, base_url, self._clock() + self._lease)
        log.info("agent %s registered at %s", agent_id, base_url)
        return pb.RegisterReply(lease_seconds=self._lease, heartbeat_seconds=self._heartbeat)

    @_rpc
    @_observed
    async def Heartbeat(self, request: pb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> pb.HeartbeatReply:
        agent_id = validate.agent_id(request.agent_id)
        if not await self.renewals.renew(agent_id, self._lease):  # batched: tracker/renewals.py
            raise _Abort(grpc.StatusCode.NOT_FOUND, UNKNOWN_AGENT)
        return pb.HeartbeatReply(lease_seconds=self._lease)

    @_rpc
    @_observed
    async def Announce(self, request: pb.AnnounceRequest,
                       context: grpc.aio.ServicerContext) -> pb.AnnounceReply:
        agent_id = validate.agent_id(request.agent_id)
        if len(request.added) > validate.MAX_HOLDINGS or len(request.removed) > validate.MAX_HOLDINGS:
            raise Invalid(f"more than {validate.MAX_HOLDINGS} holdings in one announcement; "
                          "split it")
        added = [_holding(h) for h in request.added]
        removed = [validate.rel_path(p) for p in request.removed]
        if not await self._store.is_live(agent_id):
            raise _Abort(grpc.StatusCode.NOT_FOUND, UNKNOWN_AGENT)
        count = await self._store.update_holdings(agent_id, replace=request.replace,
                                                  added=added, removed=removed)
        log.info("agent %s announced %s+%d -%d, now holds %d", agent_id,
                 "all: " if request.replace else "", len(added), len(removed), count)
        return pb.AnnounceReply(holdings=count)

    @_rpc
    @_observed
    async def Locate(self, request: pb.LocateRequest,
                     context: grpc.aio.ServicerContext) -> pb.LocateReply:
        key = request.WhichOneof("key")
        if key == "name":
            name = validate.name(request.name)
            # Every live holder of a content the name resolves to is a source,
            # whatever it calls the file. Only the most held contents are looked
            # up (and answered): a name flooded with thousands of contents costs
            # MAX_CANDIDATES lookups, not thousands. One store call does it all.
            located, mirrors = await self._store.locate_name(name, candidates.MAX_CANDIDATES)
            result = candidates.build(located, mirrors, posixpath.basename(name))
            what = f"name {name!r}"
        elif key == "sha256":
            sha = validate.digest(request.sha256)
            located, mirrors = await self._store.locate_sha256(sha)
            result = candidates.build(located, mirrors)
            what = f"sha256 {sha.hex()}"
        else:
            raise Invalid("locate needs a name or a sha256")
        if not result:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no live source has {what}")
        return pb.LocateReply(candidates=result)

    @_rpc
    async def AddMirror(self, request: pb.AddMirrorRequest,
                        context: grpc.aio.ServicerContext) -> pb.AddMirrorReply:
        mirror = mirror_record(request.mirror)
        await self._store.put_mirror(mirror)
        log.info("mirror added: %s (%s)", mirror.url, mirror.sha256.hex())
        return pb.AddMirrorReply()

    @_rpc
    async def RemoveMirror(self, request: pb.RemoveMirrorRequest,
                           context: grpc.aio.ServicerContext) -> pb.RemoveMirrorReply:
        if len(request.url) > validate.MAX_URL:
            raise Invalid(f"url is longer than {validate.MAX_URL} characters")
        removed = await self._store.remove_mirror(request.url)
        if removed:
            log.info("mirror removed: %s", request.url)
        return pb.RemoveMirrorReply(removed=removed)

    @_rpc
    async def ListMirrors(self, request: pb.ListMirrorsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListMirrorsReply:
        return pb.ListMirrorsReply(mirrors=[
            pb.Mirror(url=m.url, name=m.name, sha256=m.sha256, size=m.size)
            for m in await self._store.list_mirrors()])


def mirror_record(m: pb.Mirror) -> MirrorRecord:
    """Validate a Mirror message; raises Invalid."""
    url = validate.http_url(m.url)
    return MirrorRecord(url=url, name=validate.mirror_name(url, m.name),
                        sha256=validate.digest(m.sha256), size=validate.size(m.size))


def _holding(h: pb.Holding) -> Holding:
    path = validate.rel_path(h.path)
    try:
        c = h.content
        size = validate.size(c.size)
        ident = Identity(size=size, sha256=validate.digest(c.sha256),
                         piece_size=validate.piece_size(c.piece_size, size),
                         root=validate.digest(c.root, "root"))
        have = validate.have(h.have, size, ident.piece_size)
    except Invalid as e:
        raise Invalid(f"{path!r}: {e}") from None
    return Holding(path, ident, have)
