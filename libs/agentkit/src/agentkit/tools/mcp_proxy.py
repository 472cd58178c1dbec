"""Calling tools of MCP servers through the MCP proxy, over NATS request/reply.

A call to ``<server>.<tool>`` becomes a :class:`~opspawn_contracts.tool_rpc.CallToolRequest` on
``Subjects.mcp_call_tool(server)``; the proxy answers with a
:class:`~opspawn_contracts.tool_rpc.CallToolReply`. Every way this can fail ends as a
:class:`~agentkit.errors.ToolError` whose message says which side failed: the proxy's structured
errors map to the matching error type, "no responders" means no proxy is running, and a missing
reply means the proxy (or its server) is stuck. A call request carries the current trace context in
its headers (W3C ``traceparent``), so the proxy's span joins the calling task's trace.

Tools are listed by asking the proxy (``Subjects.mcp_list_tools``), so a language-model planner
is offered every MCP server's tools with their input schemas. A listing is kept for ``list_ttl``
seconds. When the proxy cannot be asked the list is empty, so a missing proxy costs a run nothing
but the offer of remote tools; an empty list is kept only ``EMPTY_LIST_TTL`` seconds, so a runner
that started before the proxy (or its servers) sees their tools soon after they come up.

The proxy enforces the call's timeout itself (it is sent as ``timeout_seconds``) and replies with
a timeout error; this side waits ``reply_margin`` longer, for the time NATS and the proxy add.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import propagate
from pydantic import JsonValue, ValidationError

from agentkit.errors import (
    InvalidArguments,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
    describe_validation_error,
)
from agentkit.interfaces import CallContext, ToolCall, ToolSpec, split_tool_name
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.tool_rpc import (
    CallToolReply,
    CallToolRequest,
    ListToolsReply,
    ListToolsRequest,
    ToolDescriptor,
    ToolErrorCode,
)

logger = logging.getLogger(__name__)

EMPTY_LIST_TTL = 2.0


class McpProxyTools:
    """A :class:`~agentkit.interfaces.ToolManager` for tools behind the MCP proxy.

    ``default_timeout`` applies to calls that do not set their own. A call needs no listing: it
    names its server and tool, and the proxy says if either is unknown.
    """

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        default_timeout: float = 60.0,
        reply_margin: float = 2.0,
        list_timeout: float = 2.0,
        list_ttl: float = 30.0,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._default_timeout = default_timeout
        self._reply_margin = reply_margin
        self._list_timeout = list_timeout
        self._list_ttl = list_ttl
        self._listed: tuple[float, tuple[ToolSpec, ...]] | None = None

    async def list_tools(self) -> Sequence[ToolSpec]:
        if self._listed is not None:
            listed_at, specs = self._listed
            ttl = self._list_ttl if specs else min(self._list_ttl, EMPTY_LIST_TTL)
            if time.monotonic() - listed_at < ttl:
                return specs
        specs = await self._ask_for_tools()
        self._listed = (time.monotonic(), specs)
        return specs

    async def _ask_for_tools(self) -> tuple[ToolSpec, ...]:
        try:
            message = await self._nc.request(
                self._subjects.mcp_list_tools,
                ListToolsRequest().model_dump_json().encode(),
                timeout=self._list_timeout,
            )
            reply = ListToolsReply.model_validate_json(message.data)
        except NoRespondersError:
            logger.debug("no MCP proxy answered the tool listing; offering no MCP tools")
            return ()
        except (NatsError, ValidationError) as error:
            logger.warning("cannot list the MCP proxy's tools (%s); offering none", error)
            return ()
        if not reply.ok:
            logger.warning("the MCP proxy refused to list tools: %s", reply.error)
            return ()
        return tuple(spec for spec in map(_spec, reply.tools) if spec is not None)

    async def repeat_safe(self, tool: str) -> bool:
        """Whether the proxy lists ``tool`` as safe to call twice (not when it cannot be asked)."""
        return any(spec.name == tool and spec.repeat_safe for spec in await self.list_tools())

    async def call(self, call: ToolCall, context: CallContext) -> JsonValue:
        try:
            server, tool = split_tool_name(call.tool)
            subject = self._subjects.mcp_call_tool(server)
        except ValueError as error:
            raise UnknownTool(call.tool, str(error)) from None
        timeout = call.timeout_seconds or self._default_timeout
        request = CallToolRequest(
            server=server,
            tool=tool,
            arguments=call.arguments,
            task_id=context.task_id,
            timeout_seconds=timeout,
        )
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the call's trace context, for the proxy's span
        try:
            message = await self._nc.request(
                subject,
                request.model_dump_json().encode(),
                timeout=timeout + self._reply_margin,
                headers=headers or None,
            )
        except NoRespondersError:
            raise ToolUnavailable(
                f"MCP server {server!r} is not available: no proxy answered"
            ) from None
        except NatsTimeoutError:
            raise ToolTimeout(
                timeout, f"the MCP proxy did not answer for server {server!r}"
            ) from None
        except NatsError as error:
            raise ToolUnavailable(f"MCP server {server!r} is not available: {error}") from error
        try:
            reply = CallToolReply.model_validate_json(message.data)
        except ValidationError as error:
            raise ToolError(
                f"the MCP proxy sent an invalid reply: {describe_validation_error(error)}"
            ) from None
        if reply.ok:
            return reply.result
        raise _tool_error(call.tool, server, timeout, reply)


def _spec(descriptor: ToolDescriptor) -> ToolSpec | None:
    name = f"{descriptor.server}.{descriptor.name}"
    try:
        split_tool_name(name)
    except ValueError:
        logger.warning("MCP tool %r cannot be named as a tool here; not offering it", name)
        return None
    schema = descriptor.input_schema or {"type": "object", "properties": {}}
    return ToolSpec(
        name=name,
        description=descriptor.description or "",
        input_schema=schema,
        repeat_safe=descriptor.repeat_safe,
    )


def _tool_error(name: str, server: str, timeout: float, reply: CallToolReply) -> ToolError:
    error = reply.error
    if error is None:
        return ToolError("the MCP proxy reported a failure without saying what failed")
    match error.code:
        case ToolErrorCode.UNKNOWN_SERVER | ToolErrorCode.UNKNOWN_TOOL:
            return UnknownTool(name, error.message)
        case ToolErrorCode.INVALID_ARGUMENTS:
            return InvalidArguments(f"invalid arguments for {name}: {error.message}")
        case ToolErrorCode.TOOL_ERROR:
            return ToolError(f"the tool reported an error: {error.message}")
        case ToolErrorCode.TIMEOUT:
            return ToolTimeout(timeout, error.message)
        case ToolErrorCode.UNAVAILABLE:
            return ToolUnavailable(f"MCP server {server!r} is not available: {error.message}")
        case _:
            return ToolError(f"the MCP proxy refused the call ({error.code}): {error.message}")
