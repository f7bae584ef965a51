from __future__ import annotations

import pytest
from pydantic import ValidationError

from ripplerec.config import Settings


def test_env_is_read_with_prefix_and_nesting(monkeypatch) -> None:
    monkeypatch.setenv("RIPPLEREC_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("RIPPLEREC_TOPICS__EVENTS", "prod.events")
    monkeypatch.setenv("RIPPLEREC_TOPICS__PARTITIONS", "12")
    monkeypatch.setenv("RIPPLEREC_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RIPPLEREC_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("RIPPLEREC_KAFKA__SASL_USERNAME", "app")
    monkeypatch.setenv("RIPPLEREC_KAFKA__SASL_PASSWORD", "s3cret")
    settings = Settings()
    assert settings.topics.events == "prod.events" and settings.topics.partitions == 12
    counts = settings.topics.partition_counts()
    assert counts["prod.events"] == 12 and counts["ripple.training"] == 1  # one trainer per model
    kwargs = settings.kafka_client_kwargs()
    assert kwargs["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_bad_values_fail_clearly(monkeypatch) -> None:
    monkeypatch.setenv("RIPPLEREC_KAFKA_API_VERSION", "two")
    with pytest.raises(ValidationError, match="kafka_api_version"):
        Settings()
    monkeypatch.delenv("RIPPLEREC_KAFKA_API_VERSION")
    monkeypatch.setenv("RIPPLEREC_TOPICS__PARTITIONS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_security_passthrough_for_both_kafka_clients() -> None:
    import ssl

    from ripplerec.config import KafkaSecurity

    sec = KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="app",
                        sasl_password="s3cret")
    sync, asyncio_side = sec.kafka_python_kwargs(), sec.aiokafka_kwargs()
    for kwargs in (sync, asyncio_side):
        assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(asyncio_side["ssl_context"], ssl.SSLContext) and "ssl_context" not in sync
    assert "ssl_context" not in KafkaSecurity().aiokafka_kwargs()


def test_settings_pass_to_a_child_process_unchanged(monkeypatch) -> None:
    """WorkerProcess hands settings to its child as RIPPLEREC_* variables: every field, nested models,
    secrets and list/dict values (as JSON, which pydantic-settings parses back) come back equal."""
    from ripplerec.streams.worker import settings_to_env

    for key in [k for k in __import__("os").environ if k.startswith("RIPPLEREC_")]:
        monkeypatch.delenv(key)
    settings = Settings(redis_url="redis://:pw@host:1/2", topics={"partitions": 7, "training_partitions": 2})
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings
