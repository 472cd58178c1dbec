"""The proxy's NATS request/reply endpoints.

==========================================  ======================  =====================
subject                                     request                 reply
==========================================  ======================  =====================
``Subjects.mcp_list_tools``                 ``ListToolsRequest``    ``ListToolsReply``
                                            (an empty payload
                                            means every server)
``Subjects.mcp_call_tool(server)``          ``CallToolRequest``     ``CallToolReply``
``Subjects.mcp_status``                     anything (ignored)      ``McpStatusReply``
==========================================  ======================  =====================

Every subscription is in ``Subjects.mcp_proxy_queue_group``, so several proxy copies share the
load and each request is answered once. These are core NATS subjects, outside every stream.

Every request gets a reply: a payload that is not the request model gets ``bad_request``, a
call request over its server's ``max_request_bytes`` or a reply too big for the NATS connection
gets ``too_large``, and an unexpected failure is logged with its
traceback and answered ``unavailable``, so a caller never waits out its timeout for nothing.

:class:`ProxyHandlers` is transport-free (bytes in, reply model out); :class:`RpcServer` serves it
on NATS (why plain nats-py: see its docstring). Replies are JSON with ``content-type:
application/json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from pydantic import ValidationError

from mcp_proxy.connections import McpConnections
from mcp_proxy.failures import ToolCallError
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    CallToolRequest,
    ListToolsReply,
    ListToolsRequest,
    McpStatusReply,
    ToolError,
    ToolErrorCode,
)
from opspawn_observability.metrics import observe_mcp_call
from opspawn_observability.task_context import bind_task
from opspawn_observability.tracing import SpanKind, annotate_span, handling

log = logging.getLogger("mcp_proxy.rpc")

UNKNOWN_SERVER_LABEL = "(unknown)"
"""The metrics' ``server`` label of calls to a server this proxy does not serve, so names sent by
callers cannot add series."""

_JSON_HEADERS = {"content-type": "application/json"}


class ProxyHandlers:
    """What the proxy answers, given a request's subject and payload."""

    def __init__(self, connections: McpConnections) -> None:
        self._connections = connections

    def list_tools(self, payload: bytes) -> ListToolsReply:
        try:
            request = (
                ListToolsRequest.model_validate_json(payload)
                if payload.strip()
                else ListToolsRequest()
            )
        except ValidationError as error:
            return ListToolsReply(ok=False, error=_bad_request("ListToolsRequest", error))
        try:
            tools = self._connections.list_tools(request.server)
        except ToolCallError as failure:
            return ListToolsReply(ok=False, error=failure.error)
        return ListToolsReply(ok=True, tools=tools)

    async def call_tool(self, subject: str, payload: bytes) -> CallToolReply:
        """Call the tool; the server is the subject's last token (the payload may omit it)."""
        server = subject.rsplit(".", 1)[-1]
        limit = self._connections.max_request_bytes(server)
        if limit is not None and len(payload) > limit:
            message = (
                f"the request is {len(payload)} bytes; MCP server {server!r} accepts at most "
                f"{limit} (max_request_bytes)"
            )
            log.info("refused a call to %s: %s", server, message)
            return CallToolReply(
                ok=False,
                error=ToolError(code=ToolErrorCode.TOO_LARGE, message=message, server=server),
            )
        try:
            document = json.loads(payload)
            if isinstance(document, dict):
                document.setdefault("server", server)
            request = CallToolRequest.model_validate(document)
        except ValueError as error:  # ValidationError is a ValueError, as is bad JSON
            return CallToolReply(ok=False, error=_bad_request("CallToolRequest", error, server))
        if request.server != server:
            message = f"payload names server {request.server!r} but the subject names {server!r}"
            return CallToolReply(
                ok=False,
                error=ToolError(code=ToolErrorCode.BAD_REQUEST, message=message, server=server),
            )
        bind_task(request.task_id)
        annotate_span("gen_ai.tool.name", request.tool)
        log.info("task %s calls %s.%s", request.task_id, request.server, request.tool)
        started = time.perf_counter()
        try:
            result = await self._connections.call_tool(request)
        except ToolCallError as failure:
            log.info(
                "task %s call %s.%s failed after %.1f ms: %s: %s",
                request.task_id,
                request.server,
                request.tool,
                (time.perf_counter() - started) * 1000,
                failure.error.code,
                failure.error.message,
            )
            return CallToolReply(ok=False, error=failure.error)
        log.info(
            "task %s call %s.%s answered in %.1f ms",
            request.task_id,
            request.server,
            request.tool,
            (time.perf_counter() - started) * 1000,
        )
        return CallToolReply(ok=True, result=result)

    def status(self) -> McpStatusReply:
        return McpStatusReply(servers=self._connections.status())

    def serves(self, server: str) -> bool:
        """Whether ``server`` is an enabled server of this proxy (metrics label only those)."""
        return self._connections.max_request_bytes(server) is not None


def _bad_request(model: str, error: ValueError, server: str | None = None) -> ToolError:
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc']) or 'payload'}: {detail['msg']}"
            for detail in error.errors(include_url=False)
        )
    else:
        problems = f"not JSON ({error})"
    return ToolError(
        code=ToolErrorCode.BAD_REQUEST,
        message=f"payload is not a valid {model}: {problems}",
        server=server,
    )


def encode_reply(reply: CallToolReply | ListToolsReply | McpStatusReply, max_payload: int) -> bytes:
    """The reply's JSON, or a ``too_large`` error reply when it would not fit in one message."""
    body = reply.model_dump_json().encode()
    if len(body) <= max_payload or isinstance(reply, McpStatusReply):
        return body
    error = ToolError(
        code=ToolErrorCode.TOO_LARGE,
        message=f"the reply is {len(body)} bytes; this NATS connection carries at most "
        f"{max_payload}",
    )
    return type(reply)(ok=False, error=error).model_dump_json().encode()


class RpcServer:
    """Serves :class:`ProxyHandlers` on core NATS, in the proxy queue group.

    Plain nats-py rather than a FastStream broker, for the shutdown contract: a stopping copy must
    first withdraw its interest, so the queue group hands new requests to the other copies, and
    then let every request it accepted finish and reply. FastStream 0.7.8 stops the other way
    round (it stops handling, waits for in-flight messages, then unsubscribes), and requests
    delivered in between are dropped without a reply. It also lets the proxy use the shared
    :func:`opspawn_messaging.nats_connection.connect`.
    """

    def __init__(
        self,
        client: NatsClient,
        subjects: Subjects,
        handlers: ProxyHandlers,
        *,
        max_concurrent_requests: int,
    ) -> None:
        self._client = client
        self._subjects = subjects
        self._handlers = handlers
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self._subscriptions: list[Subscription] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        queue = self._subjects.mcp_proxy_queue_group
        for subject, accept in (
            (self._subjects.mcp_call_tool_any, self._accept_call),
            (self._subjects.mcp_list_tools, self._accept),
            (self._subjects.mcp_status, self._accept),
        ):
            self._subscriptions.append(
                await self._client.subscribe(subject, queue=queue, cb=accept)
            )
        await self._client.flush()

    async def stop(self, grace_seconds: float) -> None:
        """Withdraw interest, answer every request already delivered, cancel what is left after
        ``grace_seconds`` (those callers time out)."""
        try:
            async with asyncio.timeout(grace_seconds):
                # drain, not unsubscribe: messages the server already routed here still get handled
                await asyncio.gather(
                    *(
                        subscription.drain()  # type: ignore[no-untyped-call]  # unannotated in nats-py
                        for subscription in self._subscriptions
                    )
                )
                if self._in_flight:
                    log.info("waiting for %d requests in flight", len(self._in_flight))
                    await asyncio.wait(set(self._in_flight))
        except TimeoutError:
            log.warning("%d requests cancelled at shutdown", len(self._in_flight))
        self._subscriptions.clear()
        unfinished = set(self._in_flight)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)

    async def _accept_call(self, msg: Msg) -> None:
        """Start a tool call once a slot is free; waiting holds back this subject's delivery."""
        await self._slots.acquire()
        self._track(asyncio.create_task(self._answer(msg))).add_done_callback(
            lambda _: self._slots.release()
        )

    async def _accept(self, msg: Msg) -> None:
        """Listings and status answer from memory at once; no slot, so a backlog of calls
        never delays a readiness probe."""
        self._track(asyncio.create_task(self._answer(msg)))

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            log.warning("ignoring a message on %s without a reply subject", msg.subject)
            return
        reply: CallToolReply | ListToolsReply | McpStatusReply
        try:
            if msg.subject == self._subjects.mcp_status:
                reply = self._handlers.status()
            elif msg.subject == self._subjects.mcp_list_tools:
                reply = self._handlers.list_tools(msg.data)
            else:
                reply = await self._answer_call(msg)
        except Exception as error:  # every request is owed a reply; the traceback is logged
            log.exception("answering a request on %s failed", msg.subject)
            failure = ToolError(
                code=ToolErrorCode.UNAVAILABLE, message=f"the proxy failed: {error!r}"
            )
            is_listing = msg.subject == self._subjects.mcp_list_tools
            reply = (ListToolsReply if is_listing else CallToolReply)(ok=False, error=failure)
        try:
            await self._client.publish(
                msg.reply, encode_reply(reply, self._client.max_payload), headers=_JSON_HEADERS
            )
        except NatsError as error:
            log.warning("could not reply on %s: %r", msg.subject, error)

    async def _answer_call(self, msg: Msg) -> CallToolReply:
        """A tool call, in a span continuing the caller's trace (its request headers carry the
        context), measured by server and outcome; an exception counts as ``unavailable``, the
        reply :meth:`_answer` then sends."""
        server = msg.subject.rsplit(".", 1)[-1]
        started = time.perf_counter()
        reply: CallToolReply | None = None
        try:
            with handling(f"tools/call {server}", msg.headers, kind=SpanKind.SERVER) as scope:
                scope.set_attribute("mcp.method.name", "tools/call")
                scope.set_attribute("opspawn.mcp.server", server)
                reply = await self._handlers.call_tool(msg.subject, msg.data)
                if reply.error is not None:
                    scope.fail(f"{reply.error.code}: {reply.error.message}")
            return reply
        finally:
            error_kind: str | None = ToolErrorCode.UNAVAILABLE
            if reply is not None and reply.ok:
                error_kind = None
            elif reply is not None and reply.error is not None:
                error_kind = reply.error.code
            observe_mcp_call(
                server if self._handlers.serves(server) else UNKNOWN_SERVER_LABEL,
                error_kind,
                time.perf_counter() - started,
            )
