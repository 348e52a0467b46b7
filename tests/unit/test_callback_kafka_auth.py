"""IMGPIPE_KAFKA_CLIENT_CONFIG reaches the callback app's faust/aiokafka clients as credentials."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from imgpipe.callback.app import build_app
from imgpipe.callback.kafka_auth import faust_credentials
from imgpipe.callback.settings import CallbackSettings
from imgpipe.contracts.registry import load_registry
from imgpipe.runtime.settings import SettingsError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate it signed, made with openssl as a cluster operator would."""
    root = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=imgpipe", "-keyout", "client.key",
            "-out", "client.csr")  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-out", "client.pem")  # fmt: skip
    return root


def _ca_subjects(context: ssl.SSLContext) -> list[str]:
    return [dict(field[0] for field in cert["subject"])["commonName"] for cert in context.get_ca_certs()]


def test_no_security_settings_is_plain_text() -> None:
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "PLAINTEXT", "linger.ms": "5"}) is None


def test_sasl_ssl_scram_maps_to_aiokafka_sasl_ssl_with_the_given_ca(pki: Path) -> None:
    config = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "imgpipe",
        "sasl.password": "secret",
        "ssl.ca.location": str(pki / "ca.pem"),
    }
    credentials = faust_credentials(config)
    assert isinstance(credentials, SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("imgpipe", "secret")
    context = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert _ca_subjects(context) == ["test-ca"]


def test_sasl_plaintext_has_no_tls() -> None:
    credentials = faust_credentials(
        {
            "security.protocol": "sasl_plaintext",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": "u",
            "sasl.password": "p",
        }
    )
    auth = credentials_to_aiokafka_auth(credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["ssl_context"]) == (
        "SASL_PLAINTEXT",
        "PLAIN",
        None,
    )


def test_mutual_tls_loads_the_client_certificate_and_can_relax_host_name_checks(pki: Path) -> None:
    credentials = faust_credentials(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": str(pki / "ca.pem"),
            "ssl.certificate.location": str(pki / "client.pem"),
            "ssl.key.location": str(pki / "client.key"),
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    assert isinstance(credentials, SSLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL"
    assert not auth["ssl_context"].check_hostname
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_a_client_key_that_does_not_match_fails_at_start(pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        faust_credentials(
            {
                "security.protocol": "SSL",
                "ssl.certificate.location": str(pki / "client.pem"),
                "ssl.key.location": str(pki / "ca.key"),
            }
        )


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"security.protocol": "SSL", "ssl.keystore.location": "/k.p12"}, "ssl.keystore.location"),
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER"),
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256"}, "sasl.username"),
        ({"security.protocol": "KERBEROS"}, "KERBEROS"),
    ],
)
def test_security_settings_it_cannot_honour_stop_the_process(config: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        faust_credentials(config)


def test_the_callback_app_connects_with_the_mapped_credentials(pki: Path, tmp_path: Path) -> None:
    settings = CallbackSettings(
        kafka_client_config={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "imgpipe",
            "sasl.password": "secret",
            "ssl.ca.location": str(pki / "ca.pem"),
        },
        webhook_signing_keys="k1",
        callback_data_dir=str(tmp_path),
    )
    app, _ = build_app(settings, load_registry())
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.username == "imgpipe"
