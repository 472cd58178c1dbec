"""The gateway's traces and metrics: a span and a measurement per REST request and gRPC call, and
``GET /metrics``.

Every task's trace starts here: each request gets a server span (``POST /v1/tasks``,
``opspawn.v1.TaskService/CreateTask``), continuing the caller's trace when the request carries a
W3C ``traceparent`` header (gRPC: metadata), and the commands the request publishes carry the span's
context on to the scheduler. Operations routes (``/healthz``, ``/readyz``, ``/metrics``) and the
gRPC health and reflection services are measured but not traced, so probes and scrapes do not
flood the tracing backend with one-span traces.

Metrics (``opspawn_http_*``, ``opspawn_grpc_*``, see :mod:`opspawn_observability.metrics`) are
labelled by route template and method, never by path, so task ids do not become series.
``/metrics`` serves ``prometheus_client``'s default registry without authentication, like the
probes: expose it to the monitoring network only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from litestar import Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from opspawn_observability.metrics import observe_grpc, observe_http
from opspawn_observability.tracing import SpanKind, handling, tracing_enabled

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

UNTRACED_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
UNTRACED_GRPC_PREFIX = "/grpc."
"""``grpc.health.v1.Health`` and ``grpc.reflection.*``."""


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    """Prometheus text exposition of the default registry."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _http_headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


class RequestTelemetry(ASGIMiddleware):
    """Litestar middleware (it runs after routing, so the route template is known)."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        route: str = scope.get("path_template") or scope["path"]
        method = cast("HTTPScope", scope)["method"]
        started = time.perf_counter()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        traced = tracing_enabled() and route not in UNTRACED_ROUTES
        with handling(
            f"{method} {route}", _http_headers(scope) if traced else None, kind=SpanKind.SERVER
        ) as request:
            try:
                await next_app(scope, receive, noting_status)
            finally:
                if traced:
                    request.set_attribute("http.request.method", method)
                    request.set_attribute("http.route", route)
                    request.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        request.fail(f"HTTP {status}")
                observe_http(method, route, status, time.perf_counter() - started)


class GrpcTelemetry(grpc.aio.ServerInterceptor):
    """A server span and a measurement per unary and server-streaming call."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[RequestT, ResponseT] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        traced = tracing_enabled() and not method.startswith(UNTRACED_GRPC_PREFIX)
        carrier = (
            {key: value for key, value in metadata or () if isinstance(value, str)}
            if traced
            else None
        )
        name = method.lstrip("/")
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary  # a coroutine function on grpc.aio

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                with handling(name, carrier, kind=SpanKind.SERVER) as call:
                    raised: BaseException | None = None
                    try:
                        return await unary(request, context)
                    except BaseException as error:
                        raised = error
                        raise
                    finally:
                        _finish(call, name, context, started, traced, raised)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming: Any = handler.unary_stream  # an async generator function on grpc.aio

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                with handling(name, carrier, kind=SpanKind.SERVER) as call:
                    raised: BaseException | None = None
                    try:
                        async for response in streaming(request, context):
                            yield response
                    except BaseException as error:
                        raised = error
                        raise
                    finally:
                        _finish(call, name, context, started, traced, raised)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming methods (reflection): neither traced nor measured


def _finish(
    call: handling,
    method: str,
    context: grpc.aio.ServicerContext[Any, Any],
    started: float,
    traced: bool,
    raised: BaseException | None,
) -> None:
    """Record the call's status code: the one set by ``abort``/``set_code``, else OK, or what
    gRPC answers for an exception (CANCELLED for a cancelled call, UNKNOWN for a bug)."""
    code: object = context.code()
    if code is None:
        if raised is None:
            code = grpc.StatusCode.OK
        elif isinstance(raised, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
    code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    if traced:
        call.set_attribute("rpc.system", "grpc")
        call.set_attribute("rpc.grpc.status_code", code_name)
        if code_name not in ("OK", "CANCELLED"):
            call.fail(f"gRPC {code_name}")
    observe_grpc(method, code_name, time.perf_counter() - started)
