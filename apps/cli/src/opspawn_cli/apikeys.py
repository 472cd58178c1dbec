"""``opspawn apikey``: issue, list and revoke the API keys the gateway accepts.

An operator tool: it writes the ``api_keys`` table of the read model at ``OPSPAWN_DATABASE_URL``
directly (the gateway only reads it). A new key is printed once and never stored, only its hash;
lose it and create another. Every key acts for one tenant, and sees only that tenant's tasks.
"""

from __future__ import annotations

import argparse
import json
import sys

from opspawn_cli.settings import CliSettings
from opspawn_readmodel.api_keys import ApiKey, ApiKeyStore, validate_tenant
from opspawn_readmodel.database import create_engine


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikey = commands.add_parser(
        "apikey", help="create, list or revoke API keys (writes OPSPAWN_DATABASE_URL)"
    )
    actions = apikey.add_subparsers(dest="apikey_command", required=True)
    create = actions.add_parser("create", help="issue a key for a tenant; printed once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", help="what the key is for, shown in listings")
    create.add_argument(
        "--read-only", action="store_true", help="may read tasks but not submit or cancel"
    )
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def _describe(api_key: ApiKey) -> dict[str, object]:
    return {
        "key_id": api_key.key_id,
        "tenant": api_key.tenant,
        "name": api_key.name,
        "read_only": api_key.read_only,
        "created_at": api_key.created_at.isoformat(),
        "revoked_at": api_key.revoked_at.isoformat() if api_key.revoked_at else None,
    }


async def run(settings: CliSettings, args: argparse.Namespace) -> int:
    """Carry out ``opspawn apikey …``; the exit code."""
    if not settings.database_url:
        print(
            "error: set OPSPAWN_DATABASE_URL to the gateway's database "
            "(`opspawn up` on an embedded database runs with authentication off)",
            file=sys.stderr,
        )
        return 1
    engine = create_engine(settings.database_url, pool_size=1)
    store = ApiKeyStore(engine)
    try:
        match args.apikey_command:
            case "create":
                try:
                    validate_tenant(args.tenant)
                except ValueError as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 1
                issued = await store.create(args.tenant, name=args.name, read_only=args.read_only)
                print(json.dumps(_describe(issued.api_key), indent=2))
                print(f"\nAPI key (shown once; store it now):\n{issued.key}")
                print(f"\nUse it as: Authorization: Bearer {issued.key[:22]}…")
                return 0
            case "list":
                keys = await store.list(args.tenant)
                print(json.dumps([_describe(api_key) for api_key in keys], indent=2))
                return 0
            case "revoke":
                if await store.revoke(args.key_id):
                    print(f"revoked {args.key_id}")
                    return 0
                print(f"error: no active key with id {args.key_id}", file=sys.stderr)
                return 1
            case _:
                return 2
    finally:
        await engine.dispose()
