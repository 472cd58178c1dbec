"""A client of the OpenAI-compatible Chat Completions API (``POST {base_url}/chat/completions``).

Written against the wire protocol with httpx rather than a vendor SDK, so it works with any server
that speaks it (OpenAI, vLLM, Ollama, LiteLLM, llama.cpp) and its failure handling is ours:

* **Retries are bounded** (``max_retries`` after the first attempt) and only for what may pass:
  429, 408, 409 and 5xx answers, timeouts, connection failures, and replies that break the
  protocol (invalid JSON, no choice, a stream cut short). Other 4xx answers fail at once with the
  server's own error message (a wrong model name or API key does not improve by asking again).
* **Rate limits are honoured**: a 429's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP
  date) sets the pause; a server asking for more than ``max_retry_wait`` fails the call rather
  than parking the run. Without a hint, pauses grow exponentially from ``backoff``.
* **Every attempt has a deadline** (``timeout``) for the whole exchange, streamed or not.
* **Streaming** (``stream=True``) reads server-sent events and joins the deltas: content pieces,
  and tool calls by ``index`` (id, name and argument fragments).

Every failure ends as :class:`~agentkit.errors.LlmError` naming what happened last and how many
attempts were made.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from agentkit.errors import LlmError
from agentkit.interfaces import TokenUsage

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_ERROR_TEXT = 500


@dataclass(frozen=True, slots=True)
class RawToolCall:
    """A tool call as the model sent it: ``arguments`` is the raw JSON text, maybe malformed."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class AssistantReply:
    content: str | None
    tool_calls: tuple[RawToolCall, ...] = ()
    finish_reason: str | None = None
    model: str | None = None
    """The model that answered, as the server names it."""
    usage: TokenUsage | None = None
    """The server's count (``usage``; a stream's last chunk when asked with ``include_usage``);
    ``None`` when it sent none."""


class _Retryable(Exception):
    """This attempt failed in a way another attempt may not; ``wait`` is the server's hint."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


@dataclass
class _StreamedCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChatCompletionsClient:
    """Asks one model; share an instance between runs (it pools connections), then :meth:`aclose`.

    ``extra_body`` is merged into every request (``{"temperature": 0}``, provider options).
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        backoff: float = 1.0,
        stream: bool = False,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self.stream = stream
        self._extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout), transport=transport
        )

    async def __aenter__(self) -> ChatCompletionsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()
    ) -> AssistantReply:
        """The model's next message for ``messages``, offering ``tools`` (function schemas)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if tools:
            body["tools"] = list(tools)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # the last chunk counts tokens
        body |= self._extra_body
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._attempt(body)
            except TimeoutError:
                failure = _Retryable(f"no complete answer within {self.timeout:g}s")
            except httpx.TransportError as error:
                failure = _Retryable(f"{type(error).__name__}: {error or 'connection failed'}")
            except _Retryable as retryable:
                failure = retryable
            if attempt == attempts:
                raise LlmError(
                    f"the model server at {self.url} failed {attempts} time(s); last: {failure}"
                )
            pause = self._pause(attempt, failure)
            logger.warning(
                "model request attempt %d of %d failed (%s); retrying in %.2gs",
                attempt,
                attempts,
                failure,
                pause,
            )
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _pause(self, attempt: int, failure: _Retryable) -> float:
        if failure.wait is None:
            return float(min(self.backoff * 2 ** (attempt - 1), self.max_retry_wait))
        if failure.wait > self.max_retry_wait:
            raise LlmError(
                f"the model server at {self.url} answered {failure}, and asks to wait "
                f"{failure.wait:g}s, more than max_retry_wait ({self.max_retry_wait:g}s)"
            )
        return failure.wait

    async def _attempt(self, body: dict[str, Any]) -> AssistantReply:
        async with self._http.stream("POST", self.url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise _status_error(response)
            if not self.stream:
                return _parse_completion(await response.aread())
            return await _read_stream(response)


def _status_error(response: httpx.Response) -> Exception:
    message = f"HTTP {response.status_code}: {_error_text(response)}"
    if response.status_code in RETRYABLE_STATUS:
        return _Retryable(message, _retry_after(response))
    return LlmError(f"the model server at {response.url} refused the request: {message}")


def _error_text(response: httpx.Response) -> str:
    """The server's own words: OpenAI's ``{"error": {"message": ...}}``, else the body's start."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:_ERROR_TEXT]
    if isinstance(error, str):
        return error[:_ERROR_TEXT]
    return response.text[:_ERROR_TEXT].strip() or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    milliseconds = response.headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _parse_completion(payload: bytes) -> AssistantReply:
    try:
        data = json.loads(payload)
        choice = data["choices"][0]
        message = choice["message"]
        calls = tuple(
            RawToolCall(
                id=str(call.get("id") or ""),
                name=str(call["function"]["name"]),
                arguments=_arguments_text(call["function"].get("arguments")),
            )
            for call in message.get("tool_calls") or ()
        )
        content = message.get("content")
        return AssistantReply(
            content=content if isinstance(content, str) else None,
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
            usage=_usage(data.get("usage")),
        )
    except (ValueError, LookupError, TypeError, AttributeError) as error:
        raise _Retryable(
            f"the reply is not a chat completion ({type(error).__name__}: {error}): "
            f"{payload[:200]!r}"
        ) from None


def _arguments_text(arguments: Any) -> str:
    """Arguments as text: the protocol sends a JSON string; some servers send the object."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _usage(counted: Any) -> TokenUsage | None:
    """``usage`` of a completion or chunk (``prompt_tokens``, ``completion_tokens``)."""
    if not isinstance(counted, dict):
        return None
    return TokenUsage(
        input_tokens=int(counted.get("prompt_tokens") or 0),
        output_tokens=int(counted.get("completion_tokens") or 0),
    )


async def _read_stream(response: httpx.Response) -> AssistantReply:
    content: list[str] = []
    calls: dict[int, _StreamedCall] = {}
    finish_reason: str | None = None
    model: str | None = None
    usage: TokenUsage | None = None
    done = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": keep-alive") and event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
            if chunk.get("error"):
                raise _Retryable(
                    f"the stream reported an error: {json.dumps(chunk['error'])[:_ERROR_TEXT]}"
                )
            model = chunk.get("model") or model
            usage = _usage(chunk.get("usage")) or usage
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) == 0:
                    finish_reason = _apply_delta(choice, content, calls) or finish_reason
        except (ValueError, LookupError, TypeError, AttributeError) as error:
            raise _Retryable(
                f"the stream carried an event that is not a completion chunk "
                f"({type(error).__name__}): {data[:200]!r}"
            ) from None
    if not done and finish_reason is None:
        raise _Retryable("the stream ended before the reply was complete")
    return AssistantReply(
        content="".join(content) if content else None,
        tool_calls=tuple(
            RawToolCall(id=call.id, name=call.name, arguments="".join(call.arguments))
            for _, call in sorted(calls.items())
        ),
        finish_reason=finish_reason,
        model=model,
        usage=usage,
    )


def _apply_delta(
    choice: dict[str, Any], content: list[str], calls: dict[int, _StreamedCall]
) -> str | None:
    """Add one chunk's delta to what was received; its ``finish_reason``, if it has one."""
    delta = choice.get("delta") or {}
    if isinstance(delta.get("content"), str):
        content.append(delta["content"])
    for fragment in delta.get("tool_calls") or ():
        call = calls.setdefault(int(fragment.get("index", len(calls))), _StreamedCall())
        call.id = fragment.get("id") or call.id
        function = fragment.get("function") or {}
        call.name += function.get("name") or ""
        call.arguments.append(_arguments_text(function.get("arguments")))
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None
