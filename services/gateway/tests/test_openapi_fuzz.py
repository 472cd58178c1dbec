"""The served OpenAPI document, fuzzed by Schemathesis against the running gateway.

Schemathesis reads ``/schema/openapi.json`` from the gateway (real NATS, real Postgres, API keys
on) and sends generated requests, valid and invalid, to every operation. Every check must pass:
no 5xx, every status code, content type, header and body as documented, invalid input refused
with a 4xx and valid input accepted. The number of examples is bounded so the run stays short;
``OPSPAWN_FUZZ_EXAMPLES`` raises it for a deeper local run.
"""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from services.gateway.tests.conftest import SchedulerStandIn

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("OPSPAWN_FUZZ_EXAMPLES", "25"))

# 422 is the API's answer to a request that matches the schema but breaks a rule the schema
# cannot state (a cursor made for other filters, a plan step outside options.allowed_tools, an
# input over the size limit); so a schema-valid request may get it. 400 stays a failure: it is
# reserved for requests the schema itself rules out.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


@pytest.fixture
async def fuzzed_gateway(
    gateway_settings: GatewaySettings, scheduler: SchedulerStandIn
) -> AsyncIterator[Gateway]:
    """Every task submitted completes at once, so a watch of it ends instead of waiting out the
    request timeout."""
    await scheduler.close()
    await scheduler.listen(accept_all=True, complete=True)
    async with Gateway(gateway_settings) as running:
        yield running


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzzed_gateway: Gateway, api_key: str, tmp_path: Path
) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    base = f"http://127.0.0.1:{fuzzed_gateway.http_port}"
    process = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "run",
        f"{base}/schema/openapi.json",
        "--checks",
        "all",
        # Stateful checks need links between operations, which the document does not declare.
        "--exclude-checks",
        "use_after_free,ensure_resource_availability",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES),
        "--header",
        f"Authorization: Bearer {api_key}",
        "--request-timeout",
        "10",
        "--workers",
        "2",
        "--seed",
        "20261125",
        "--no-color",
        stdout=PIPE,
        stderr=PIPE,
        cwd=tmp_path,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    report = stdout.decode() + stderr.decode()

    assert process.returncode == 0, report
    assert "No issues found" in report or "passed" in report, report
