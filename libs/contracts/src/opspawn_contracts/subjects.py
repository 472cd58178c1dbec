"""Every NATS name Opspawn uses: streams, subjects, durable consumers and RPC subjects.

All names derive from one configurable prefix (default ``opspawn``), so two systems or two test
runs can share one NATS server without seeing each other's messages. Nothing else in the code base
spells a subject or stream name as a literal.

Layout (``P`` is the prefix, ``S`` the prefix upper-cased for stream names):

=====================  ==============================================  =========================
stream                 subjects                                        retention
=====================  ==============================================  =========================
``S_EVENTS``           ``P.events.task.<task_id>.<EventType>``         limits (source of truth)
``S_COMMANDS``         ``P.commands.task.<command>``                   limits
``S_WORK``             ``P.work.<task_type>``                          limits, max age
``S_DEAD_LETTERS``     ``P.deadletters.<source>``                      limits
=====================  ==============================================  =========================

Request/reply subjects (``P.rpc.…``) are deliberately outside every stream: a core request to a
subject a stream captures would be answered by the stream's PubAck instead of the responder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID

_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is one NATS subject token that also makes a valid stream name."""
    if not _PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(
            f"subject prefix {prefix!r} must be one token of letters, digits, '_' or '-'"
        )
    return prefix


def validate_token(kind: str, value: str) -> str:
    """Reject values that would change a subject's shape (dots, wildcards, spaces)."""
    if not _TOKEN_PATTERN.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must be letters, digits, '_' or '-'")
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """Names of every stream, subject and consumer under one prefix."""

    prefix: str = "opspawn"

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)

    @property
    def _stream_stem(self) -> str:
        return self.prefix.upper().replace("-", "_")

    # --- events: the source of truth -----------------------------------------------------
    @property
    def events_stream(self) -> str:
        return f"{self._stream_stem}_EVENTS"

    @property
    def all_events(self) -> str:
        """Wildcard for every task event (the events stream's only subject)."""
        return f"{self.prefix}.events.task.*.*"

    def event(self, task_id: UUID, event_type: str) -> str:
        return f"{self.prefix}.events.task.{task_id}.{validate_token('event type', event_type)}"

    def task_events(self, task_id: UUID) -> str:
        """Wildcard for one task's history; also the scope of its optimistic concurrency."""
        return f"{self.prefix}.events.task.{task_id}.*"

    def events_of_type(self, event_type: str) -> str:
        """Wildcard for every task's events of one type."""
        return f"{self.prefix}.events.task.*.{validate_token('event type', event_type)}"

    def task_id_of(self, event_subject: str) -> UUID:
        """The task id encoded in an event subject."""
        return UUID(event_subject.split(".")[3])

    # --- commands ------------------------------------------------------------------------
    @property
    def commands_stream(self) -> str:
        return f"{self._stream_stem}_COMMANDS"

    @property
    def all_commands(self) -> str:
        return f"{self.prefix}.commands.>"

    def command(self, command_type: str) -> str:
        return f"{self.prefix}.commands.task.{validate_token('command type', command_type)}"

    # --- runner work queue ---------------------------------------------------------------
    @property
    def work_stream(self) -> str:
        return f"{self._stream_stem}_WORK"

    @property
    def all_work(self) -> str:
        return f"{self.prefix}.work.*"

    def work(self, task_type: str) -> str:
        return f"{self.prefix}.work.{validate_token('task type', task_type)}"

    # --- dead letters: messages no service could handle ----------------------------------
    @property
    def dead_letters_stream(self) -> str:
        return f"{self._stream_stem}_DEAD_LETTERS"

    @property
    def all_dead_letters(self) -> str:
        return f"{self.prefix}.deadletters.>"

    def dead_letter(self, source: str) -> str:
        """Where messages given up on from ``source`` (``commands``, ``events``, ``work``) go."""
        return f"{self.prefix}.deadletters.{validate_token('dead letter source', source)}"

    # --- durable consumers ---------------------------------------------------------------
    @property
    def scheduler_commands_consumer(self) -> str:
        return "scheduler-commands"

    @property
    def scheduler_decisions_consumer(self) -> str:
        """The scheduler's consumer of the events it decides on (failed attempts, retries)."""
        return "scheduler-decisions"

    @property
    def runner_work_consumer(self) -> str:
        return "agent-runner"

    @property
    def runner_submitted_consumer(self) -> str:
        """The runners' consumer of TaskSubmitted events: each is a task's first attempt."""
        return "agent-runner-submitted"

    @property
    def submitted_max_deliveries_advisory(self) -> str:
        """JetStream's notice that a TaskSubmitted reached the runners' ``max_deliver``."""
        return (
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
            f"{self.events_stream}.{self.runner_submitted_consumer}"
        )

    @property
    def work_max_deliveries_advisory(self) -> str:
        """JetStream's notice that a work item reached the runners' ``max_deliver``."""
        return (
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
            f"{self.work_stream}.{self.runner_work_consumer}"
        )

    # --- request/reply (never captured by a stream) --------------------------------------
    @property
    def mcp_list_tools(self) -> str:
        """Tool listing for every MCP server, or one when the request names it."""
        return f"{self.prefix}.rpc.mcp.tools.list"

    def mcp_call_tool(self, server: str) -> str:
        return f"{self.prefix}.rpc.mcp.tools.call.{validate_token('MCP server name', server)}"

    @property
    def mcp_call_tool_any(self) -> str:
        return f"{self.prefix}.rpc.mcp.tools.call.*"

    @property
    def mcp_status(self) -> str:
        return f"{self.prefix}.rpc.mcp.status"

    @property
    def scheduler_status(self) -> str:
        """The scheduler's status: projection position and lag, decisions, dead letters."""
        return f"{self.prefix}.rpc.scheduler.status"

    @property
    def submit_requests(self) -> str:
        """Where the gateway sends a :class:`~opspawn_contracts.commands.SubmitTask` as a request:
        the scheduler answers once the task's TaskSubmitted is stored
        (:class:`~opspawn_contracts.commands.SubmitAnswer`)."""
        return f"{self.prefix}.rpc.scheduler.submit"

    @property
    def scheduler_queue_group(self) -> str:
        """Queue group shared by scheduler copies so each request is decided once."""
        return f"{self.prefix}-scheduler"

    @property
    def mcp_proxy_queue_group(self) -> str:
        """Queue group shared by proxy copies so each request is answered once."""
        return f"{self.prefix}-mcp-proxy"
