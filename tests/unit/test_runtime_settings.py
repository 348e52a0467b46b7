import pytest

from imgpipe.runtime.settings import RuntimeSettings, SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("IMGPIPE_KAFKA_CLIENT_CONFIG", '{"security.protocol": "SASL_SSL"}')
    monkeypatch.setenv("IMGPIPE_HEALTH_PORT", "9000")

    settings = load_settings(RuntimeSettings)

    assert settings.kafka_bootstrap_servers == "broker:9092"
    assert settings.kafka_client_config == {"security.protocol": "SASL_SSL"}
    assert settings.health_port == 9000


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_HEALTH_PORT", "eighty")
    monkeypatch.setenv("IMGPIPE_CONSUMER_BATCH_SIZE", "0")

    with pytest.raises(SettingsError) as caught:
        load_settings(RuntimeSettings)

    message = str(caught.value)
    assert "IMGPIPE_HEALTH_PORT" in message and "'eighty'" in message
    assert "IMGPIPE_CONSUMER_BATCH_SIZE" in message


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPIPE_S3_SECRET_ACCESS_KEY", '{"not": "a string"}')

    class Strict(RuntimeSettings):
        s3_secret_access_key: int  # type: ignore[assignment]

    with pytest.raises(SettingsError) as caught:
        load_settings(Strict)

    assert "IMGPIPE_S3_SECRET_ACCESS_KEY" in str(caught.value)
    assert "a string" not in str(caught.value)
    assert "<redacted>" in str(caught.value)
