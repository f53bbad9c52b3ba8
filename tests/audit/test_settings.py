"""AuditSettings: defaults, DSN forms, validation messages."""

from __future__ import annotations

import pytest

from gateway.audit.settings import AuditSettings, chdb_path


def test_defaults() -> None:
    settings = AuditSettings()
    assert settings.dsn == "chdb://./data/audit"
    assert settings.embedded
    assert settings.qualified_table == "`llm_gateway`.`audit_log`"
    assert (settings.batch_size, settings.max_queue) == (1000, 100_000)
    assert (settings.metadata_retention_days, settings.payload_retention_days) == (365, 30)
    assert (settings.isolation, settings.process_timeout_s) == ("process", 300.0)


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("chdb://./data/audit", "./data/audit"),
        ("chdb://data/audit", "data/audit"),
        ("chdb:///var/lib/gateway/audit", "/var/lib/gateway/audit"),
    ],
)
def test_chdb_dsn_is_a_literal_directory(dsn: str, path: str) -> None:
    assert chdb_path(dsn) == path
    assert AuditSettings(dsn=dsn).target_database == "llm_gateway"


def test_http_dsn_database_overrides_setting() -> None:
    assert AuditSettings(dsn="https://u:p@ch.example:8443/audit").target_database == "audit"
    assert AuditSettings(dsn="http://ch.example:8123").target_database == "llm_gateway"
    assert AuditSettings(dsn="http://ch.example:8123/").target_database == "llm_gateway"


def test_redacted_dsn_hides_the_password() -> None:
    settings = AuditSettings(dsn="https://writer:s3cr3t@ch.example:8443/audit")
    assert settings.redacted_dsn() == "https://writer:***@ch.example:8443/audit"
    assert AuditSettings().redacted_dsn() == "chdb://./data/audit"


def test_redact_removes_the_password_from_any_text() -> None:
    settings = AuditSettings(dsn="https://writer:p%40ss@ch.example:8443/audit")
    assert settings.redact("auth p%40ss failed for p@ss") == "auth *** failed for ***"
    assert AuditSettings().redact("no password here") == "no password here"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dsn": "postgres://x"}, "chdb://, http:// or https://"),
        ({"dsn": "chdb://"}, "needs a directory"),
        ({"table": "audit-log"}, "audit.table"),
        ({"database": "db; DROP"}, "audit.database"),
        ({"dsn": "http://h:8123/bad-name"}, "database in audit.dsn"),
        ({"batch_size": 0}, "audit.batch_size"),
        ({"flush_interval_s": 0}, "audit.flush_interval_s"),
        ({"payload_retention_days": -1}, "audit.payload_retention_days"),
        ({"isolation": "fork"}, "audit.isolation must be process or thread"),
        ({"process_timeout_s": 0}, "audit.process_timeout_s"),
    ],
)
def test_invalid_settings_say_what_to_fix(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AuditSettings(**changes)  # type: ignore[arg-type]
