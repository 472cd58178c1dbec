"""Configuration errors stop the scheduler at start, naming the variable."""

from __future__ import annotations

import pytest

from opspawn_messaging.settings import SettingsError, load_settings
from scheduler.settings import SchedulerSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OPSPAWN_DATABASE_URL", "OPSPAWN_LOG_LEVEL", "OPSPAWN_MIGRATE_ON_START"):
        monkeypatch.delenv(variable, raising=False)


def test_the_database_url_is_required() -> None:
    with pytest.raises(SettingsError, match="OPSPAWN_DATABASE_URL: Field required"):
        load_settings(SchedulerSettings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OPSPAWN_DATABASE_URL", "mysql://db/x", "expected a postgresql:// URL"),
        ("OPSPAWN_LOG_LEVEL", "loud", "unknown log level 'loud'"),
        ("OPSPAWN_MIGRATE_ON_START", "perhaps", "valid boolean"),
    ],
)
def test_bad_values_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("OPSPAWN_DATABASE_URL", "postgresql://localhost/opspawn")
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings(SchedulerSettings)

    assert f"{variable}: " in str(raised.value)
    assert message in str(raised.value)


def test_a_libpq_url_is_given_the_asyncpg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSPAWN_DATABASE_URL", "postgresql://u:p@localhost:5433/opspawn")
    monkeypatch.setenv("OPSPAWN_LOG_LEVEL", "debug")

    settings = load_settings(SchedulerSettings)

    assert settings.database_url == "postgresql+asyncpg://u:p@localhost:5433/opspawn"
    assert (settings.log_level, settings.migrate_on_start) == ("DEBUG", True)
