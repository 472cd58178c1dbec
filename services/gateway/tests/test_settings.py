from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from opspawn_messaging.settings import SettingsError, load_settings


def test_defaults_need_only_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_DATABASE_URL", "postgresql://reader@db.internal/opspawn")

    settings = load_settings(GatewaySettings)

    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8000)
    assert (settings.grpc_host, settings.grpc_port) == ("127.0.0.1", 50051)
    assert settings.publish_timeout_seconds == 5.0
    assert settings.database_url == "postgresql+asyncpg://reader@db.internal/opspawn"


def test_a_missing_database_url_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPSPAWN_DATABASE_URL", raising=False)

    with pytest.raises(SettingsError, match="OPSPAWN_DATABASE_URL"):
        load_settings(GatewaySettings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPSPAWN_HTTP_PORT", "eighty"),
        ("OPSPAWN_GRPC_PORT", "70000"),
        ("OPSPAWN_DATABASE_URL", "mysql://db/opspawn"),
        ("OPSPAWN_PUBLISH_TIMEOUT_SECONDS", "0"),
        ("OPSPAWN_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("OPSPAWN_DATABASE_URL", "postgresql://db/opspawn")
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=variable):
        load_settings(GatewaySettings)
