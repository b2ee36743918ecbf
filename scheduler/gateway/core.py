"""The gateway's request path: authenticate, admit, route, forward, meter.

``Gateway`` holds the per-app state (no module globals): replica load, admission, the usage
writer, metrics and the one pooled upstream HTTP client. One ``Exchange`` follows each
request; ``finish`` closes it exactly once (usage record, metrics, load and permit release),
whatever path the request took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive

from scheduler.api.auth import bearer_token
from scheduler.api.errors import (
    domain_error_response,
    error_response,
    unexpected_error_response,
)
from scheduler.errors import (
    AuthError,
    CunliangError,
    Forbidden,
    InvalidInput,
    ModelNotFound,
    NoCapacity,
    PayloadTooLarge,
    UsageNotStored,
)
from scheduler.gateway.clients import UPSTREAM_CLIENTS
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.limits import Admission, Permit
from scheduler.gateway.load import LoadTicket, ReplicaLoad, cost_yuan
from scheduler.gateway.metering import UsageWriter
from scheduler.gateway.meters import GatewayMeters
from scheduler.gateway.peers import GatewayPeers
from scheduler.gateway.replicas import ReplicaDirectory, ReplicaEndpoint
from scheduler.gateway.routing import RoutingPolicy, RoutingSnapshot, eligible
from scheduler.gateway.schemas import ChatCompletionRequest, CompletionRequest, plainly_valid
from scheduler.gateway.sse import (
    COMPACT_JSON,
    StreamTally,
    error_event,
    inspect_block,
    model_rewriter,
    rewrite,
    usage_of_body,
)
from scheduler.gateway.streaming import EventStreamResponse, event_stream_headers
from scheduler.gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamLimits,
    UpstreamResponse,
)
from scheduler.observability.metrics import Metrics
from scheduler.tenancy import Principal, TenancyService, Tenant, UsageRecord

log = logging.getLogger(__name__)

UNKNOWN_LABEL = "unknown"  # metric label for unknown models / unauthenticated callers

# the inference endpoints: {path: (request schema, whether it is the chat API)}
INFERENCE_PATHS: dict[str, tuple[type[BaseModel], bool]] = {
    "/v1/chat/completions": (ChatCompletionRequest, True),
    "/v1/completions": (CompletionRequest, False),
}


class ClientGone(Exception):
    """The client disconnected before its request body arrived (nothing to answer)."""


class Reply(Protocol):
    """Where ``Gateway.serve_now`` sends the outcome of a request it took: a complete
    response to write (``respond``), the rest of the request to run as a task (``resume``),
    or a stream (``start_stream``, ``send``..., ``end``). One of the three, once."""

    def respond(self, response: Response) -> None: ...

    def resume(self, serve: Callable[[], Awaitable[Response]]) -> None: ...

    def start_stream(self, headers: list[tuple[bytes, bytes]], first: bytes) -> None:
        """Send a 200 head with these headers and the first body bytes (chunked)."""

    def send(self, data: bytes) -> None: ...

    def end(self) -> None:
        """End the stream's body (the connection stays open for the next request)."""

    def abort(self) -> None:
        """Close the client connection (the stream cannot end cleanly)."""

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` when the client's write buffer drained after ``write_paused``,
        or when the client went away."""

    @property
    def write_paused(self) -> bool: ...

    @property
    def client_gone(self) -> bool: ...


@dataclass
class Exchange:
    """One tenant request as it moves through the gateway (event-loop only)."""

    request_id: str
    started_s: float
    created_at: datetime
    principal: Principal | None = None
    model: str = ""
    model_known: bool = False
    stream: bool = False
    want_usage: bool = False  # the client asked for the usage event
    ask_usage: bool = False  # a stream whose body must ask the engine for usage
    replica: ReplicaEndpoint | None = None
    ticket: LoadTicket | None = None
    permit: Permit | None = None
    first_token_s: float | None = None
    rename: tuple[tuple[bytes, bytes], ...] = ()
    finished: bool = False
    fast: bool = False  # taken by serve_now: counted in Gateway.fast_in_flight until finished
    tally: StreamTally = field(default_factory=StreamTally)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        tenancy: TenancyService,
        directory: ReplicaDirectory,
        metrics: Metrics,
        policy: RoutingPolicy,
        registry: CollectorRegistry,
        *,
        peers: GatewayPeers | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.tenancy = tenancy
        self.directory = directory
        self.metrics = metrics
        self.registry = registry
        self.policy = policy
        self.clock = clock
        self.wall_clock = wall_clock
        self.load = ReplicaLoad()
        self.admission = Admission(clock, wall_clock, peers)
        self._reloading: set[int] = set()  # tenants whose budget ledger is being reloaded
        # first budget ledger loads under way, by tenant id: concurrent requests share one
        self._first_loads: dict[int, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.writer = UsageWriter(
            tenancy,
            config.wal_dir,
            batch_max=config.usage_batch_max,
            flush_interval_s=config.usage_flush_interval_s,
            fsync=config.usage_fsync,
            mapped=config.usage_wal_mmap,
        )
        self.flush_failures_reported = 0  # writer.failed_flushes counted in the registry
        self._client: UpstreamClient | None = None
        self._post_now: Callable[..., Any] | None = None  # the client's post_now, if it has one
        # exchanges serve_now took and nothing finished yet: neither a task nor (once their
        # client left) a connection uvicorn waits for at shutdown; shutdown waits for them
        self.fast_in_flight = 0
        self._sequence = itertools.count()
        # request ids: 64 random bits per process start + a counter (unique across gateway
        # processes and restarts without a random draw per request)
        self._id_prefix = f"req-{secrets.token_hex(8)}-"
        self._ids = itertools.count()
        self.meters = GatewayMeters(metrics)  # folded into the registry at scrape time
        self._indexed: Sequence[ReplicaEndpoint] | None = None  # snapshot _ready_by_model is of
        self._ready_by_model: dict[str, tuple[ReplicaEndpoint, ...]] = {}

    # ---- lifecycle ---------------------------------------------------------------------

    async def startup(self) -> None:
        await asyncio.to_thread(self.writer.open)
        await self.writer.start()
        self._client = UPSTREAM_CLIENTS[self.config.upstream_client](
            UpstreamLimits(
                connect_timeout_s=self.config.connect_timeout_s,
                read_timeout_s=self.config.read_timeout_s,
                max_connections=self.config.max_upstream_connections,
            )
        )
        if self.config.fast_path:
            self._post_now = getattr(self._client, "post_now", None)

    @property
    def fast_path_on(self) -> bool:
        """Whether serve_now takes requests (started, fast_path set, an h1 client)."""
        return self._post_now is not None

    async def shutdown(self) -> None:
        self._post_now = None
        # the exchanges serve_now took are still to be recorded (uvicorn waited for open
        # client connections and tasks, not for those whose client left)
        deadline_s = self.clock() + self.config.shutdown_grace_s
        while self.fast_in_flight > 0 and self.clock() < deadline_s:
            await asyncio.sleep(0.02)
        if self.fast_in_flight > 0:
            log.warning(
                "stopping with %d request(s) still waiting on engines after %.0f s: "
                "their usage is not recorded",
                self.fast_in_flight,
                self.config.shutdown_grace_s,
            )
        await self.writer.stop(within_s=_STOP_STORE_S)
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> UpstreamClient:
        if self._client is None:
            raise RuntimeError("gateway not started (lifespan not run)")
        return self._client

    # ---- auth --------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("Missing API key.", fix="send 'Authorization: Bearer sk-cl-...'.")
        principal = self.tenancy.authenticate_cached(token)
        if principal is None:
            principal = await asyncio.to_thread(self.tenancy.authenticate, token)
        return principal

    # ---- the request path --------------------------------------------------------------

    async def handle(self, path: str, authorization: str | None, receive: Receive) -> Response:
        """Serve one inference request (``path`` = the engine path, e.g. /v1/completions):
        authenticate, then read and validate the body, admit, route and forward."""
        ex = self._exchange()
        return await self._guarded(ex, self._handle(ex, path, authorization, receive))

    async def _handle(
        self, ex: Exchange, path: str, authorization: str | None, receive: Receive
    ) -> Response:
        ex.principal = await self.authenticate(authorization)
        raw = await self._read_body(receive)
        body = _parse_body(raw, path)
        self._describe(ex, body)
        return await self._serve(ex, path, body, raw)

    async def _serve(self, ex: Exchange, path: str, body: dict[str, Any], raw: bytes) -> Response:
        await self._admit(ex)
        return await self._forward(ex, path, body, raw)

    async def _guarded(self, ex: Exchange, step: Awaitable[Response]) -> Response:
        """Await the rest of an exchange; any failure closes it (``finish``) and propagates."""
        try:
            return await step
        except (CunliangError, RequestValidationError) as exc:
            self.finish(ex, getattr(exc, "status_code", 422))
            raise
        except ClientGone:
            self.finish(ex, 499)
            raise
        except BaseException:
            self.finish(ex, 500)
            raise

    def _exchange(self) -> Exchange:
        return Exchange(
            request_id=f"{self._id_prefix}{next(self._ids):x}",
            started_s=self.clock(),
            created_at=self.wall_clock(),
        )

    # ---- the fast path -----------------------------------------------------------------

    def serve_now(self, path: str, authorization: str | None, raw: bytes, reply: Reply) -> bool:
        """Serve one inference request whose whole body arrived from the server protocol's
        callbacks, without a task (gateway/h1server calls it): the same steps as ``handle``,
        each where it needs no waiting. False, with nothing done, when the request needs
        waiting before the gateway commits to it (a key not in the auth cache) or is
        malformed: ``handle`` serves it as usual. True once taken: ``reply`` then gets the
        response (``respond``) or the stream (``_StreamRelay``), now or from the engine
        connection's callbacks as the answer arrives, or the rest of the request to run as
        a task (``resume``: a budget ledger to load, no engine connection slot free, a
        retry on another replica)."""
        post_now = self._post_now
        if post_now is None or len(raw) > self.config.max_request_body_bytes:
            return False
        token = bearer_token(authorization)
        principal = self.tenancy.authenticate_cached(token) if token is not None else None
        if principal is None:
            return False
        try:
            body = _parse_body(raw, path)
        except (CunliangError, RequestValidationError):
            return False  # handle answers it (and counts it) as usual
        ex = self._exchange()
        ex.principal = principal
        ex.fast = True
        self.fast_in_flight += 1
        try:
            self._describe(ex, body)
            if not self._admit_now(ex):
                reply.resume(lambda: self._guarded(ex, self._serve(ex, path, body, raw)))
                return True
            replica = self._pick(ex, set())
            if replica is not None:
                self._attach(ex, replica)
                payload = self._payload(ex, body, raw, replica)
                kind = _StreamRelay if ex.stream else _FastAttempt
                attempt = kind(self, ex, path, body, raw, replica, reply)
                url = replica.base_url + path
                if post_now(url, payload, attempt.heard, each=ex.stream) is not None:
                    return True
                self._detach(ex)
            reply.resume(lambda: self._guarded(ex, self._forward(ex, path, body, raw)))
        except CunliangError as exc:
            self.finish(ex, exc.status_code)
            reply.respond(domain_error_response(exc))
        except Exception:
            log.exception("inference request failed")
            self.finish(ex, 500)
            reply.respond(unexpected_error_response())
        return True

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole request body; PayloadTooLarge past the limit (chunked bodies have no
        Content-Length to check up front), ClientGone if the client went away."""
        limit = self.config.max_request_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body larger than {limit} bytes.")
            if not message.get("more_body", False):
                if not chunks:
                    return bytes(chunk)
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    def _describe(self, ex: Exchange, body: dict[str, Any]) -> None:
        ex.model = body["model"]
        ex.stream = bool(body.get("stream"))
        options = body.get("stream_options") or {}
        ex.want_usage = ex.stream and bool(options.get("include_usage"))
        ex.ask_usage = ex.stream and options.get("include_usage") is not True
        ex.model_known = self._ready(ex.model) is not None

    def _ready(self, model: str) -> tuple[ReplicaEndpoint, ...] | None:
        """The ready replicas of ``model`` (maybe none), or None if no replica serves it in
        any state. Indexed once per directory snapshot (an immutable tuple, swapped whole)."""
        replicas = self.directory.replicas()
        if replicas is not self._indexed:
            self._indexed = replicas
            # {model: ready replicas} of the models this snapshot knows: never grows with
            # the model names clients send
            self._ready_by_model = {r.model: eligible(replicas, r.model) for r in replicas}
        return self._ready_by_model.get(model)

    async def _admit(self, ex: Exchange) -> None:
        if not self._admit_now(ex):
            assert ex.principal is not None
            tenant = ex.principal.tenant
            await asyncio.shield(self._first_load(tenant))  # a client that leaves: not the load
            ex.permit = self.admission.admit(tenant)

    def _first_load(self, tenant: Tenant) -> asyncio.Future[None]:
        """The tenant's first budget ledger load, one at a time: the requests that arrive
        meanwhile wait for it (and share its UsageNotStored) rather than each storing the
        backlog for up to ``_STORE_USAGE_WAIT_S`` in turn."""
        load = self._first_loads.get(tenant.id)
        if load is None:
            load = asyncio.ensure_future(self._load_ledger(tenant))
            self._first_loads[tenant.id] = load

            def done(future: asyncio.Future[None], tenant_id: int = tenant.id) -> None:
                self._first_loads.pop(tenant_id, None)
                if not future.cancelled():
                    future.exception()  # retrieved: every waiter may have gone

            load.add_done_callback(done)
        return load

    def _admit_now(self, ex: Exchange) -> bool:
        """Admit the request (``ex.permit``), or raise why not; False, with nothing taken,
        when the tenant's budget ledger must first be loaded from the database."""
        assert ex.principal is not None
        tenant = ex.principal.tenant
        if not ex.model_known:
            raise ModelNotFound(
                f"The model '{ex.model}' does not exist.", fix="see GET /v1/models.", param="model"
            )
        if not tenant.may_use(ex.model):
            raise Forbidden(f"Tenant {tenant.name!r} may not use model '{ex.model}'.")
        if not self._ready(ex.model):
            raise NoCapacity(
                f"No ready replica of '{ex.model}' right now.",
                retry_after_s=self.config.no_replica_retry_after_s,
            )
        need = self.admission.ledger_need(tenant)
        if need == "load":
            return False
        if need == "reload" and tenant.id not in self._reloading:
            self._reloading.add(tenant.id)
            task = asyncio.create_task(self._reload_ledger(tenant))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        ex.permit = self.admission.admit(tenant)
        return True

    async def store_usage(self) -> None:
        """Store this gateway's usage records now, the backlog of failed flushes included
        (for up to ``_STORE_USAGE_WAIT_S``), before reading usage from the database; raises
        UsageNotStored (503) if some are still waiting: the database is down, or the
        gateway is storing what waited out an outage."""
        writer = self.writer
        failed = writer.failed_flushes
        await writer.flush(whole_backlog=True, within_s=_STORE_USAGE_WAIT_S)
        if writer.backlog or writer.failed_flushes != failed:
            raise UsageNotStored(
                f"{writer.pending} usage records of this gateway are not in the database "
                "yet, so budgets and usage cannot be read exactly.",
                retry_after_s=_STORE_USAGE_WAIT_S,
                fix="retry shortly; if it lasts, the gateway cannot reach its database.",
            )

    async def _load_ledger(self, tenant: Tenant) -> None:
        """A tenant's budget counters from the database, once this gateway's usage records
        are in it (the flush runs once a second: without it, a reload would drop the last
        second's usage until the next one), or UsageNotStored."""
        await self.store_usage()
        await asyncio.to_thread(self.admission.load_ledger, tenant, self.tenancy.usage_since)

    async def _reload_ledger(self, tenant: Tenant) -> None:
        """Reload a tenant's budget counters from the database (other gateways' usage).
        Put off while failed flushes left records on disk, or when storing them fails: the
        counters kept in memory count them already, and the periodic flush stores them a
        share at a time."""
        try:
            if self.writer.backlog:
                self.admission.keep_ledger(tenant)
            else:
                await self._load_ledger(tenant)
        except UsageNotStored:
            self.admission.keep_ledger(tenant)
        except Exception:  # the old ledger stays; the next request tries again
            log.exception("reloading the budget ledger of tenant %s failed", tenant.name)
        finally:
            self._reloading.discard(tenant.id)

    def _pick(self, ex: Exchange, tried: set[str]) -> ReplicaEndpoint | None:
        ready = self._ready(ex.model) or ()
        candidates = tuple(r for r in ready if r.id not in tried) if tried else ready
        if len(candidates) == 1:  # every policy orders a lone candidate first
            return candidates[0]
        snapshot = RoutingSnapshot(
            ex.model, candidates, self.load.outstanding(), next(self._sequence)
        )
        order = self.policy.order(snapshot)
        return order[0] if order else None

    def _attach(self, ex: Exchange, replica: ReplicaEndpoint) -> None:
        ex.replica = replica
        ex.rename = model_rewriter(replica.engine_model, ex.model)
        ex.ticket = self.load.start(replica.id, self.clock())  # /metrics reads in_flight

    def _detach(self, ex: Exchange) -> float:
        """Release the replica; returns the request's busy share in seconds."""
        share = 0.0
        if ex.ticket is not None and ex.replica is not None:
            share = self.load.finish(ex.ticket, self.clock())
        ex.ticket = None
        return share

    def _payload(
        self, ex: Exchange, body: dict[str, Any], raw: bytes, replica: ReplicaEndpoint
    ) -> bytes:
        """What goes upstream: the client's bytes as they are unless something must change:
        the engine's model name, or include_usage (always asked for, to meter exactly; the
        usage event is dropped for a client that did not ask)."""
        if not ex.ask_usage and replica.engine_model == ex.model:
            return raw
        if ex.ask_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        body["model"] = replica.engine_model
        return COMPACT_JSON.encode(body).encode()

    async def _forward(
        self,
        ex: Exchange,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        tried: set[str] | None = None,
        failure: str = "no ready replica",
    ) -> Response:
        """Try the model's replicas in routing order, at most ``max_attempts`` in all
        (``tried``: those already tried, ``failure``: why the last try failed)."""
        tried = tried if tried is not None else set()
        for _ in range(self.config.max_attempts - len(tried)):
            replica = self._pick(ex, tried)
            if replica is None:
                break
            tried.add(replica.id)
            self._attach(ex, replica)
            payload = self._payload(ex, body, raw, replica)
            try:
                response = await self._attempt(ex, replica, path, payload)
            except _RetryElsewhere as retry:
                self._detach(ex)
                ex.tally, ex.first_token_s = StreamTally(), None  # nothing of it was sent
                failure = f"{replica.id}: {retry}"
                continue
            return response
        ex.replica = None
        raise NoCapacity(
            f"No replica of '{ex.model}' could serve the request ({failure}).",
            retry_after_s=self.config.no_replica_retry_after_s,
        )

    async def _attempt(
        self, ex: Exchange, replica: ReplicaEndpoint, path: str, payload: bytes
    ) -> Response:
        """One try on one replica. Raises _RetryElsewhere while nothing reached the client."""
        try:
            upstream = await self.client.post(replica.base_url + path, payload)
        except UpstreamError as exc:
            raise _RetryElsewhere(str(exc)) from exc
        try:
            if upstream.status_code >= 500:
                raise _RetryElsewhere(f"HTTP {upstream.status_code}")
            if upstream.status_code >= 400 or not ex.stream:
                content = await upstream.read()
            else:
                chunks = upstream.chunks()
                first = await self._first_events(ex, chunks)
                return EventStreamResponse(self._relay(ex, upstream, chunks, first), ex.request_id)
        except UpstreamError as exc:
            await upstream.close()
            raise _RetryElsewhere(str(exc)) from exc
        except BaseException:
            await upstream.close()
            raise
        await upstream.close()
        if upstream.status_code >= 400:
            return self._upstream_error(ex, upstream.status_code, content)
        return self._complete(ex, content)

    def _complete(self, ex: Exchange, content: bytes) -> Response:
        usage = usage_of_body(content) or {}
        ex.tally.usage = usage
        self.finish(ex, 200)
        return JsonAnswer(rewrite(content, ex.rename) if ex.rename else content, ex.request_id)

    def _upstream_error(self, ex: Exchange, status: int, content: bytes) -> Response:
        """Forward an engine 4xx (e.g. context too long) in OpenAI format, same status."""
        message, type_, code, param = _engine_error(content, status)
        self.finish(ex, status)
        response = error_response(status, message, type_=type_, code=code, param=param)
        response.headers["x-request-id"] = ex.request_id
        return response

    async def _first_events(self, ex: Exchange, chunks: AsyncIterator[bytes]) -> bytes:
        """Read until at least one whole event arrived (the commit point for retries)."""
        async for chunk in chunks:
            out = inspect_block(chunk, ex.tally, forward_usage=ex.want_usage, rename=ex.rename)
            failed = _failed_before_content(ex.tally)
            if failed is not None:
                raise _RetryElsewhere(failed)
            if out:
                self._note_first_token(ex)
                return out
        raise _RetryElsewhere(_NO_FIRST_EVENT)

    def _note_first_token(self, ex: Exchange) -> None:
        if ex.first_token_s is None and ex.tally.content_events > 0:
            ex.first_token_s = self.clock()

    async def _relay(
        self,
        ex: Exchange,
        upstream: UpstreamResponse,
        chunks: AsyncIterator[bytes],
        first: bytes,
    ) -> AsyncGenerator[bytes, None]:
        """Forward events; record usage before the last bytes leave; a cut ends in an error
        event, and the tokens streamed so far are still billed."""
        tally = ex.tally
        try:
            if tally.done:
                self.finish(ex, 502 if tally.error else 200)
            yield first
            async for chunk in chunks:
                out = inspect_block(chunk, tally, forward_usage=ex.want_usage, rename=ex.rename)
                self._note_first_token(ex)
                if tally.done:  # an engine error event mid-stream still ends with [DONE]
                    self.finish(ex, 502 if tally.error else 200)
                if out:
                    yield out
            if not tally.done:
                self.finish(ex, 502)
                yield error_event(_STREAM_UNFINISHED)
        except UpstreamError as exc:
            self.finish(ex, 502)
            yield _cut_event(exc)
        finally:
            self.finish(ex, 499)  # no-op unless the client went away first
            with contextlib.suppress(BaseException):
                await upstream.close()

    # ---- metering ----------------------------------------------------------------------

    def finish(self, ex: Exchange, status: int) -> None:
        """Close the exchange once: release load and permit, write the usage record (before
        the response's last byte), update metrics and budget counters."""
        if ex.finished:
            return
        ex.finished = True
        if ex.fast:
            self.fast_in_flight -= 1
        now_s = self.clock()
        busy_share_s = self._detach(ex)
        usage = ex.tally.usage or {}
        prompt_tokens = _int(usage.get("prompt_tokens"))
        completion_tokens = (
            _int(usage.get("completion_tokens")) if usage else ex.tally.content_events
        )
        replica = ex.replica
        cost = cost_yuan(replica.yuan_per_hour, busy_share_s) if replica else 0.0
        latency_s = now_s - ex.started_s
        ttft_s = ex.first_token_s - ex.started_s if ex.first_token_s is not None else None
        if ex.permit is not None:
            self.admission.release(ex.permit, prompt_tokens + completion_tokens)
        model_label = ex.model if ex.model_known else UNKNOWN_LABEL
        tenant_label = ex.principal.tenant.name if ex.principal else UNKNOWN_LABEL
        meters = self.meters
        meters.request(model_label, tenant_label, status)
        if ex.principal is None:
            return
        if replica is not None:
            meters.usage(model_label, replica, tenant_label, prompt_tokens, completion_tokens, cost)
            tpot_s = None
            if ttft_s is not None and completion_tokens > 1:
                tpot_s = (latency_s - ttft_s) / (completion_tokens - 1)
            meters.latency(model_label, latency_s, ttft_s, tpot_s)
        tenant_id = ex.principal.tenant.id
        self.writer.submit(
            UsageRecord(
                request_id=ex.request_id,
                tenant_id=tenant_id,
                key_id=ex.principal.key_id,
                model=ex.model[:128],
                status=status,
                created_at=ex.created_at,
                quant=replica.quant if replica else "",
                replica_id=replica.id if replica else "",
                device_class=replica.device_class if replica else "",
                site=replica.site if replica else "",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                ttft_ms=ttft_s * 1000.0 if ttft_s is not None else None,
                latency_ms=latency_s * 1000.0,
                cost_yuan=cost,
                stream=ex.stream,
            )
        )
        self.admission.on_recorded(
            tenant_id, ex.created_at, prompt_tokens + completion_tokens, cost
        )


class _FastAttempt:
    """One fast-path try of a request on one replica (``Gateway.serve_now``): the engine
    connection's listener (``heard``) answers the client when the whole answer arrived, or
    hands the request to a task that tries the next replica (nothing reached the client
    yet), as ``_forward`` and ``_attempt`` would."""

    __slots__ = ("body", "ex", "gateway", "path", "raw", "replica", "reply")

    def __init__(
        self,
        gateway: Gateway,
        ex: Exchange,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        replica: ReplicaEndpoint,
        reply: Reply,
    ) -> None:
        self.gateway = gateway
        self.ex = ex
        self.path = path
        self.body = body
        self.raw = raw
        self.replica = replica
        self.reply = reply

    def heard(self, connection: Any) -> None:
        gateway, ex, reply = self.gateway, self.ex, self.reply
        try:
            status = connection.status
            if connection.error is None and connection.complete and status < 500:
                content = connection.take_body()
                connection.finish()
                if status >= 400:
                    reply.respond(gateway._upstream_error(ex, status, content))
                else:
                    reply.respond(gateway._complete(ex, content))
                return
            failure = connection.error or f"HTTP {status}"
            self._elsewhere(connection, f"{self.replica.id}: {failure}")
        except Exception:
            log.exception("inference request failed")
            gateway.finish(ex, 500)
            reply.respond(unexpected_error_response())

    def _elsewhere(self, connection: Any, failure: str) -> None:
        """End this try (nothing of it reached the client) and let a task try the next
        replica: the same one again when the engine had closed the reused connection."""
        gateway, ex = self.gateway, self.ex
        tried = set() if connection.stale else {self.replica.id}
        connection.finish()
        gateway._detach(ex)
        ex.tally, ex.first_token_s = StreamTally(), None
        path, body, raw = self.path, self.body, self.raw
        self.reply.resume(
            lambda: gateway._guarded(ex, gateway._forward(ex, path, body, raw, tried, failure))
        )


class _StreamRelay(_FastAttempt):
    """A stream on the fast path: ``heard`` is called as the engine's bytes arrive and
    relays events to the client from the callbacks, as ``_first_events`` and ``_relay`` do
    in a task: nothing is sent before the first whole event (until then a failure goes to
    another replica); usage recorded before the last bytes leave; a cut ends in an error
    event; a client gone is noticed at the engine's next bytes (499); a slow client holds
    the engine connection's reading back."""

    __slots__ = ("committed", "connection", "ended")

    def __init__(self, *context: Any) -> None:  # _FastAttempt's
        super().__init__(*context)
        self.committed = False  # the head and a first event went to the client
        self.ended = False
        self.connection: Any = None

    def heard(self, connection: Any) -> None:
        if self.ended:
            return
        self.connection = connection
        try:
            self._heard(connection)
        except Exception:
            log.exception("relaying a stream failed")
            self.ended = True
            self.reply.on_drain(None)
            self.gateway.finish(self.ex, 500)
            with contextlib.suppress(Exception):
                connection.finish()
            if self.committed:
                self.reply.abort()
            else:
                self.reply.respond(unexpected_error_response())

    def _heard(self, connection: Any) -> None:
        gateway, ex, reply = self.gateway, self.ex, self.reply
        tally = ex.tally
        if not self.committed:
            status = connection.status
            if connection.error is not None or status >= 500:
                failure = connection.error or f"HTTP {status}"
                self._elsewhere(connection, f"{self.replica.id}: {failure}")
                return
            if status >= 400:  # the request's fault: forwarded once the whole error is in
                if connection.complete:
                    content = connection.take_body()
                    connection.finish()
                    self.ended = True
                    reply.respond(gateway._upstream_error(ex, status, content))
                return
        elif reply.client_gone:
            self._close(connection, 499)  # and drop the engine connection (incomplete)
            return
        out = inspect_block(
            connection.take_body(), tally, forward_usage=ex.want_usage, rename=ex.rename
        )
        if not self.committed:
            failed = _failed_before_content(tally)
            if failed is None and not out and connection.complete:
                failed = _NO_FIRST_EVENT
            if failed is not None:
                self._elsewhere(connection, f"{self.replica.id}: {failed}")
                return
            if not out:
                return
        gateway._note_first_token(ex)
        if tally.done:  # an engine error event mid-stream still ends with [DONE]
            gateway.finish(ex, 502 if tally.error else 200)
        if not self.committed:
            self.committed = True
            reply.on_drain(self._drained)
            reply.start_stream(event_stream_headers(ex.request_id), out)
        elif out:
            reply.send(out)
        if connection.error is not None:
            gateway.finish(ex, 502)
            reply.send(_cut_event(connection.error))
            self._close(connection, 499)
        elif connection.complete:
            if not tally.done:
                gateway.finish(ex, 502)
                reply.send(error_event(_STREAM_UNFINISHED))
            self._close(connection, 499)
        elif reply.write_paused:
            connection.pause()

    def _drained(self) -> None:
        if self.connection is not None and not self.ended:
            self.connection.resume()

    def _elsewhere(self, connection: Any, failure: str) -> None:
        self.ended = True
        self.connection = None
        super()._elsewhere(connection, failure)

    def _close(self, connection: Any, status: int) -> None:
        """End the relay: ``status`` is recorded unless the exchange was finished already
        (499: the client went away first); the stream's body ends if the client is there."""
        self.ended = True
        self.connection = None
        self.reply.on_drain(None)
        self.gateway.finish(self.ex, status)
        connection.finish()
        self.reply.end()


class JsonAnswer(Response):
    """A complete 200 JSON answer, its three headers encoded directly (what Response's
    ``init_headers`` would produce from a headers mapping, without walking one)."""

    media_type = "application/json"

    def __init__(self, body: bytes, request_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self._request_id = request_id
        self._raw_headers: list[tuple[bytes, bytes]] | None = None

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Made when first asked for (the fast path writes ``head_lines`` instead)."""
        if self._raw_headers is None:
            self._raw_headers = [
                (b"content-length", b"%d" % len(self.body)),
                (b"content-type", b"application/json"),
                (b"x-request-id", self._request_id.encode()),
            ]
        return self._raw_headers

    @raw_headers.setter
    def raw_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._raw_headers = value

    @property
    def head_lines(self) -> bytes | None:
        """The three headers as HTTP/1.1 header lines, or None once ``raw_headers`` was
        made (it may have been changed since: encode that instead)."""
        if self._raw_headers is not None:
            return None
        return b"content-length: %d\r\ncontent-type: application/json\r\nx-request-id: %b\r\n" % (
            len(self.body),
            self._request_id.encode(),
        )


# how long a usage read or a budget load waits for this gateway's records to be stored
_STORE_USAGE_WAIT_S = 5.0
# how long a stopping gateway stores the backlog (the rest waits in the WAL for the next
# start): within the chart's terminationGracePeriodSeconds (90) after requests' 30 s
_STOP_STORE_S = 45.0
_NO_FIRST_EVENT = "stream ended before the first event"
_STREAM_UNFINISHED = "The engine closed the stream before it finished."


def _failed_before_content(tally: StreamTally) -> str | None:
    """Why a stream that sent no content yet failed on the engine's side (an error event,
    e.g. its engine core died), or None: nothing reached the client, so another replica
    may serve it."""
    error = tally.error
    if error is not None and tally.content_events == 0 and _server_side(error):
        return f"engine error event: {_error_message(error)}"
    return None


def _cut_event(exc: BaseException) -> bytes:
    return error_event(f"The engine connection failed mid-stream ({exc}).")


def _server_side(event: dict[str, Any]) -> bool:
    """An engine error event that is the engine's fault (5xx), not the request's (4xx)."""
    error = event.get("error")
    if not isinstance(error, dict):
        return True
    code = error.get("code")
    if isinstance(code, int):
        return code >= 500
    return "BadRequest" not in str(error.get("type") or "")


def _error_message(event: dict[str, Any]) -> str:
    error = event.get("error")
    return str(error.get("message") if isinstance(error, dict) else error)[:200]


class _RetryElsewhere(Exception):
    """The attempt failed before anything reached the client: try another replica."""


def _int(value: Any) -> int:
    """A token count an engine reported, or 0 if it is none (or past what a database
    integer column holds)."""
    return value if isinstance(value, int) and 0 <= value < 2**63 else 0


def _parse_body(raw: bytes, path: str) -> dict[str, Any]:
    """The request JSON as a dict, validated against the path's schema (400 malformed, 422
    invalid). The dict itself is forwarded, so unknown sampling parameters pass through
    unchanged. Bodies of plainly valid JSON types skip pydantic (see plainly_valid)."""
    schema, chat = INFERENCE_PATHS[path]
    try:
        body = orjson.loads(raw)  # a tenth of json.loads' CPU on a short request
    except orjson.JSONDecodeError:
        try:  # what orjson refuses and json takes (UTF-16 bodies, NaN): as before
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"Malformed JSON body: {exc}.") from exc
    if type(body) is dict and plainly_valid(body, chat=chat):
        return body
    try:
        schema.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc
    assert isinstance(body, dict)
    return body


def _engine_error(content: bytes, status: int) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from a vLLM/OpenAI error body (either shape)."""
    try:
        data = json.loads(content)
    except ValueError:
        return content.decode(errors="replace")[:500] or f"Engine error {status}.", None, None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return f"Engine error {status}.", None, None, None
    code = data.get("code")
    param = data.get("param")
    return (
        str(data.get("message") or f"Engine error {status}."),
        str(data["type"]) if data.get("type") else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )
