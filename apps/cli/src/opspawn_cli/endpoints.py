"""Where the operator commands find NATS and the read model.

``OPSPAWN_NATS_URL`` and ``OPSPAWN_DATABASE_URL`` win. Without them, the commands use what a
running ``opspawn up`` wrote into its data directory (``endpoints.json``: the embedded servers'
addresses), so ``opspawn replay`` or ``opspawn tail`` work next to ``opspawn up`` with no setup.
"""

from __future__ import annotations

import json
from pathlib import Path

from opspawn_cli.settings import CliSettings

ENDPOINTS_FILE = "endpoints.json"


class EndpointMissing(RuntimeError):
    """Neither a variable nor a running ``opspawn up`` says where to connect."""


def write_endpoints(data_dir: Path, *, nats_url: str, database_url: str) -> Path:
    path = data_dir / ENDPOINTS_FILE
    path.write_text(json.dumps({"nats_url": nats_url, "database_url": database_url}))
    path.chmod(0o600)
    return path


def _recorded(settings: CliSettings) -> dict[str, str]:
    path = settings.data_dir / ENDPOINTS_FILE
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def nats_url(settings: CliSettings) -> str:
    url = settings.nats_url or _recorded(settings).get("nats_url")
    if not url:
        raise EndpointMissing(
            "set OPSPAWN_NATS_URL (or run this next to `opspawn up`, which records its servers "
            f"in {settings.data_dir / ENDPOINTS_FILE})"
        )
    return url


def database_url(settings: CliSettings) -> str:
    url = settings.database_url or _recorded(settings).get("database_url")
    if not url:
        raise EndpointMissing(
            "set OPSPAWN_DATABASE_URL (or run this next to `opspawn up`, which records its "
            f"servers in {settings.data_dir / ENDPOINTS_FILE})"
        )
    return url
