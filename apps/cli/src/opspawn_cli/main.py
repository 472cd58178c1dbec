"""``opspawn``: bring the system up, submit and inspect tasks, migrate the read model; operate it
(replay and verify the read model, time-travel, export and tail events, dead letters, status).

Every command reads ``OPSPAWN_*`` variables (see the README); flags override them where given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

import httpx

from opspawn_cli import apikeys, operations
from opspawn_cli.demo import curl_submit, grpcurl_submit, run_demo, wait_terminal
from opspawn_cli.settings import CliSettings
from opspawn_cli.system import LocalSystem, StartupError
from opspawn_messaging.settings import load_settings
from opspawn_readmodel.migrate import migrate


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


async def _up(settings: CliSettings, args: argparse.Namespace) -> int:
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("opspawn: starting…", flush=True)
    async with LocalSystem(settings, echo=echo, auth=args.auth) as system:
        print("\nopspawn is up", *(f"  {note}" for note in system.notes), sep="\n")
        print(f"  REST  {system.rest_url}  (OpenAPI: {system.rest_url}/schema/openapi.json)")
        print(f"  gRPC  {system.grpc_target}  (reflection on)")
        if args.demo:
            task = await run_demo(system.rest_url, api_key=system.api_key)
            print(f"\ndemo task {task['task_id']} {task['status']}:")
            _print_json(task)
        examples = [
            curl_submit(system.rest_url),
            f"curl -s {system.rest_url}/v1/tasks/<task_id>",
            grpcurl_submit(system.grpc_target),
        ]
        print("\nTry:", *(f"  {line}" for line in examples), "\nCtrl-C stops everything.", sep="\n")
        if args.exit_after_demo:
            return 0
        await stop.wait()
        print("opspawn: stopping…", flush=True)
    print("opspawn: stopped", flush=True)
    return 0


async def _submit(settings: CliSettings, args: argparse.Namespace) -> int:
    input_data: dict[str, Any] = json.loads(args.input) if args.input else {}
    if args.goal:
        input_data["goal"] = args.goal
    if args.plan:
        input_data["plan"] = json.loads(args.plan)
    async with httpx.AsyncClient(
        base_url=settings.rest_url, timeout=10, headers=settings.auth_headers
    ) as http:
        response = await http.post(
            "/v1/tasks", json={"task_type": args.task_type, "input_data": input_data}
        )
        if response.status_code >= 400:
            print(f"error {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        task = response.json()
        if args.wait:
            task = await wait_terminal(http, task["task_id"], timeout=args.timeout)
    _print_json(task)
    return 0 if task["status"] != "failed" else 2


async def _get(settings: CliSettings, path: str) -> int:
    async with httpx.AsyncClient(
        base_url=settings.rest_url, timeout=10, headers=settings.auth_headers
    ) as http:
        response = await http.get(path)
    if response.status_code >= 400:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    _print_json(response.json())
    return 0


async def _migrate(settings: CliSettings) -> int:
    if not settings.database_url:
        print("error: set OPSPAWN_DATABASE_URL to the database to migrate", file=sys.stderr)
        return 1
    await migrate(settings.database_url)
    print("read model is at the newest schema")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opspawn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole system locally (embedded NATS/PostgreSQL)")
    up.add_argument("--no-demo", dest="demo", action="store_false", help="skip the demo task")
    up.add_argument("--quiet", action="store_true", help="do not echo service logs")
    up.add_argument("--exit-after-demo", action="store_true", help="stop after the demo task")
    up.add_argument(
        "--auth",
        action="store_true",
        help="require API keys (one is issued for tenant 'default'); off by default in up",
    )

    submit = commands.add_parser("submit", help="submit a task to the gateway")
    submit.add_argument("--task-type", default="agent_run")
    submit.add_argument("--goal", help="what the agent should achieve")
    submit.add_argument("--plan", help='JSON list of steps, e.g. \'[{"tool": "math.add", ...}]\'')
    submit.add_argument("--input", help="JSON object of further input_data")
    submit.add_argument("--wait", action="store_true", help="wait until the task finishes")
    submit.add_argument("--timeout", type=float, default=60.0)

    get = commands.add_parser("get", help="show a task")
    get.add_argument("task_id")
    events = commands.add_parser("events", help="show a task's events in order")
    events.add_argument("task_id")
    listing = commands.add_parser("list", help="list tasks, newest first")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int, default=20)
    commands.add_parser("migrate", help="bring OPSPAWN_DATABASE_URL to the newest schema")
    apikeys.add_parser(commands)
    operations.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = load_settings(CliSettings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s opspawn %(levelname)s %(message)s"
    )
    try:
        match args.command:
            case "up":
                code = asyncio.run(_up(settings, args))
            case "submit":
                code = asyncio.run(_submit(settings, args))
            case "get":
                code = asyncio.run(_get(settings, f"/v1/tasks/{args.task_id}"))
            case "events":
                code = asyncio.run(_get(settings, f"/v1/tasks/{args.task_id}/events"))
            case "list":
                query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
                code = asyncio.run(_get(settings, f"/v1/tasks{query}"))
            case "migrate":
                code = asyncio.run(_migrate(settings))
            case "apikey":
                code = asyncio.run(apikeys.run(settings, args))
            case command if command in operations.COMMANDS:
                try:
                    code = asyncio.run(operations.run(settings, args))
                except KeyboardInterrupt:
                    code = 0
            case _:
                code = 2
    except StartupError as error:
        print(f"opspawn: {error}", file=sys.stderr)
        code = 1
    except httpx.ConnectError as error:
        print(f"opspawn: cannot reach the gateway at {settings.rest_url}: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)
