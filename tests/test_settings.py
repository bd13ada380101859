"""Development defaults work locally and are refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from crm_ingest.settings import IngestSettings
from crm_profile.settings import ProfileSettings


def test_production_refuses_the_development_key_token_and_test_hooks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CRM_ENV", "production")
    with pytest.raises(ValidationError, match="CRM_WRITE_KEYS_FILE is required in production"):
        IngestSettings()
    with pytest.raises(ValidationError, match="development token"):
        ProfileSettings()
    monkeypatch.setenv("CRM_WRITE_KEYS_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("CRM_FAULT_CRASH_POINT", "after_db_commit")
    with pytest.raises(ValidationError, match="test hook"):
        IngestSettings()
    monkeypatch.delenv("CRM_FAULT_CRASH_POINT")
    assert IngestSettings().write_keys_file == tmp_path / "keys.json"


def test_a_burst_smaller_than_a_batch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_RATE_LIMIT_BURST", "100")
    with pytest.raises(ValidationError, match="CRM_RATE_LIMIT_BURST must be at least"):
        IngestSettings()


def test_environment_variables_carry_the_crm_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_HTTP_PORT", "9101")
    monkeypatch.setenv("CRM_KAFKA_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("CRM_API_TOKENS", "t-1,t-2")
    settings = ProfileSettings()
    assert settings.http_port == 9101
    assert settings.kafka_enable_idempotence is False
    assert [t.get_secret_value() for t in settings.api_tokens] == ["t-1", "t-2"]
    assert ProfileSettings.service_name == "profile"
