"""``opspawn apikey``: the real command, against a real migrated database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine

pytestmark = pytest.mark.integration

OPSPAWN = str(Path(sys.executable).with_name("opspawn"))


async def _opspawn(database_url: str | None, *arguments: str) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPSPAWN_")}
    if database_url is not None:
        env["OPSPAWN_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        OPSPAWN, *arguments, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_create_list_and_revoke(database_url: str) -> None:
    code, created, _ = await _opspawn(
        database_url, "apikey", "create", "--tenant", "acme", "--name", "ci", "--read-only"
    )
    key = created.strip().splitlines()[-3]
    described = json.loads(created.split("\n\nAPI key")[0])
    _, listed, _ = await _opspawn(database_url, "apikey", "list", "--tenant", "acme")
    engine = create_engine(database_url, pool_size=1)
    try:
        verified = await ApiKeyStore(engine).verify(key)
        revoked_code, revoked, _ = await _opspawn(
            database_url, "apikey", "revoke", described["key_id"]
        )
        after = await ApiKeyStore(engine).verify(key)
    finally:
        await engine.dispose()
    again_code, _, again = await _opspawn(database_url, "apikey", "revoke", described["key_id"])

    assert code == 0
    assert key.startswith("opsk_")
    assert (described["tenant"], described["name"], described["read_only"]) == ("acme", "ci", True)
    assert [entry["key_id"] for entry in json.loads(listed)] == [described["key_id"]]
    assert key not in listed
    assert verified is not None
    assert verified.tenant == "acme"
    assert (revoked_code, revoked.strip()) == (0, f"revoked {described['key_id']}")
    assert after is None
    assert again_code == 1
    assert "no active key" in again


async def test_refusals_say_what_to_change(database_url: str) -> None:
    no_database = await _opspawn(None, "apikey", "create", "--tenant", "acme")
    bad_tenant = await _opspawn(database_url, "apikey", "create", "--tenant", "no spaces")

    assert no_database[0] == 1
    assert "set OPSPAWN_DATABASE_URL" in no_database[2]
    assert bad_tenant[0] == 1
    assert "tenant 'no spaces' must be" in bad_tenant[2]
