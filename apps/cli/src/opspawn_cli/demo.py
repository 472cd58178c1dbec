"""The demo task ``opspawn up`` runs, and the example requests it and the README print.

One plan step runs a built-in local tool, the other a tool of the third-party MCP server
``mcp-server-time`` through the MCP proxy, so the demo crosses every service.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

DEMO_TASK: dict[str, Any] = {
    "task_type": "agent_run",
    "input_data": {
        "goal": "add two numbers, then tell the time in UTC",
        "plan": [
            {"tool": "math.add", "args": {"a": 2, "b": 3}},
            {"tool": "time.get_current_time", "args": {"timezone": "UTC"}},
        ],
    },
}

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def curl_submit(rest_url: str) -> str:
    body = json.dumps(DEMO_TASK, separators=(",", ":"))
    return f"curl -s -X POST {rest_url}/v1/tasks -H 'content-type: application/json' -d '{body}'"


def grpcurl_submit(grpc_target: str) -> str:
    body = json.dumps(
        {
            "task_type": "agent_run",
            "input_data": {"plan": [{"tool": "math.subtract", "args": {"a": 10, "b": 4}}]},
        },
        separators=(",", ":"),
    )
    return f"grpcurl -plaintext -d '{body}' {grpc_target} opspawn.v1.TaskService/CreateTask"


async def wait_terminal(
    http: httpx.AsyncClient, task_id: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the task until it finishes; raises :class:`TimeoutError` with its last state."""
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get(f"/v1/tasks/{task_id}")
        if response.status_code == 200:
            task: dict[str, Any] = response.json()
            if task["status"] in TERMINAL:
                return task
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not finished after {timeout}s: {response.text}")
        await asyncio.sleep(0.05)


async def run_demo(rest_url: str, *, api_key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=rest_url, timeout=10, headers=headers) as http:
        response = await http.post("/v1/tasks", json=DEMO_TASK)
        response.raise_for_status()
        return await wait_terminal(http, response.json()["task_id"])
