"""IMGPIPE_KAFKA_CLIENT_CONFIG (librdkafka settings) as faust broker credentials.

Every other service hands that JSON object to librdkafka as is; the callback app runs on faust and
aiokafka, which take credentials as objects. Security settings we cannot carry over stop the process:
connecting in plain text to a cluster the operator configured for SASL_SSL is never the right fallback.
Non-security settings (linger.ms, client.id, ...) are librdkafka tuning and do not apply to aiokafka.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT, SASLMechanism

from imgpipe.runtime.settings import SettingsError

_VARIABLE = "IMGPIPE_KAFKA_CLIENT_CONFIG"
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.", "enable.ssl.")
_MAPPED = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",  # librdkafka accepts both spellings
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.ca.pem",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.endpoint.identification.algorithm",
        "enable.ssl.certificate.verification",
    }
)
# GSSAPI and OAUTHBEARER need callbacks or Kerberos setup that a JSON object cannot carry.
_SASL_MECHANISMS = frozenset(
    m.value for m in (SASLMechanism.PLAIN, SASLMechanism.SCRAM_SHA_256, SASLMechanism.SCRAM_SHA_512)
)


def faust_credentials(config: Mapping[str, str]) -> CredentialsT | None:
    """The credentials faust needs for `config`, or None for a plain-text cluster."""
    unsupported = sorted(key for key in config if key.startswith(_SECURITY_PREFIXES) and key not in _MAPPED)
    if unsupported:
        raise SettingsError(
            f"{_VARIABLE}: the callback app (aiokafka) cannot honour {', '.join(unsupported)}"
        )
    protocol = config.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise SettingsError(f"{_VARIABLE}: unknown security.protocol {protocol!r}")
    context = _ssl_context(config) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return SSLCredentials(context)
    mechanism = config.get("sasl.mechanism", config.get("sasl.mechanisms", "GSSAPI")).upper()
    if mechanism not in _SASL_MECHANISMS:
        raise SettingsError(f"{_VARIABLE}: sasl.mechanism {mechanism!r} is not supported by the callback app")
    if not config.get("sasl.username") or not config.get("sasl.password"):
        raise SettingsError(f"{_VARIABLE}: sasl.username and sasl.password are required for {mechanism}")
    return SASLCredentials(
        username=config["sasl.username"],
        password=config["sasl.password"],
        mechanism=mechanism,
        ssl_context=context,
    )


def _ssl_context(config: Mapping[str, str]) -> ssl.SSLContext:
    # Without a CA setting librdkafka uses the system store, as create_default_context does.
    ca = config.get("ssl.ca.location")
    context = ssl.create_default_context(
        cafile=ca if ca and not Path(ca).is_dir() else None,
        capath=ca if ca and Path(ca).is_dir() else None,
        cadata=config.get("ssl.ca.pem"),
    )
    if config.get("ssl.certificate.location"):
        context.load_cert_chain(
            config["ssl.certificate.location"],
            config.get("ssl.key.location"),
            password=config.get("ssl.key.password"),
        )
    # librdkafka's defaults verify the certificate and, since 1.9, the host name ("https").
    if config.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if config.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
