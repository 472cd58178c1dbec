"""A bad OPSPAWN_ variable stops start-up with a message naming it."""

from __future__ import annotations

import pytest

from opspawn_cli.settings import CliSettings
from opspawn_messaging.settings import SettingsError, load_settings


def test_bad_values_are_reported_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_HTTP_PORT", "eighty")
    monkeypatch.setenv("OPSPAWN_SUBJECT_PREFIX", "has.dots")
    with pytest.raises(SettingsError) as raised:
        load_settings(CliSettings)
    message = str(raised.value)
    assert "OPSPAWN_HTTP_PORT" in message
    assert "OPSPAWN_SUBJECT_PREFIX" in message


def test_defaults_embed_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPSPAWN_NATS_URL", "OPSPAWN_DATABASE_URL", "OPSPAWN_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(CliSettings)
    assert (settings.nats_url, settings.database_url) == (None, None)
    assert settings.rest_url == "http://127.0.0.1:8000"
