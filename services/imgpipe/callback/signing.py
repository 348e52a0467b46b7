"""Standard Webhooks signatures with per-tenant secrets derived from the service's master keys.

A tenant's secret is never stored: it is `tenant_secret(master_key, tenant_id)`, an HMAC of the tenant
id under a service master key, in the Standard Webhooks form `whsec_<base64 of 32 bytes>`. Give a tenant
its secret with `WebhookSigner.secrets_for(tenant_id)[0]`.

Rotation: put a new master key first and keep the old one second. Every request is then signed with
both derived secrets (`webhook-signature` holds one `v1,<sig>` per secret), so a receiver that still
has the old secret and one that already has the new one both verify. Drop the old key once every
tenant has moved to the new secret.

Signed content, per the spec: `{webhook-id}.{webhook-timestamp}.{body}` (the exact body bytes),
HMAC-SHA256 keyed with the base64-decoded secret after the `whsec_` prefix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Final

SECRET_PREFIX: Final = "whsec_"
WEBHOOK_ID_PREFIX: Final = "msg_"
SIGNATURE_VERSION: Final = "v1"
_DERIVATION_LABEL: Final = b"imgpipe-webhook-secret:"
_WEBHOOK_ID_HEX_CHARS: Final = 32


def tenant_secret(master_key: str, tenant_id: str) -> str:
    """The tenant's signing secret under `master_key`: "whsec_" + base64(HMAC-SHA256(master key,
    "imgpipe-webhook-secret:" + tenant id))."""
    if not master_key:
        raise ValueError("master_key must not be empty")
    digest = hmac.new(master_key.encode(), _DERIVATION_LABEL + tenant_id.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode("ascii")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 signature>` entry of the `webhook-signature` header for a `whsec_` secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(signature).decode('ascii')}"


class WebhookSigner:
    """Signs webhook requests for any tenant with the secrets derived from `master_keys` (first is
    current; the others are kept for a rotation's overlap)."""

    def __init__(self, master_keys: Sequence[str]) -> None:
        if isinstance(master_keys, str):  # a str is a Sequence[str] too: one character per key
            raise TypeError("master_keys must be a sequence of keys, not one string")
        # Duplicates would only repeat a signature.
        keys = tuple(dict.fromkeys(master_keys))
        if not keys:
            raise ValueError("at least one webhook master key is needed")
        if not all(keys):
            raise ValueError("webhook master keys must not be empty")
        self._master_keys = keys

    @classmethod
    def from_setting(cls, keys: str) -> WebhookSigner:
        """From a comma-separated setting ("new,old"); blanks around keys are dropped."""
        return cls([key.strip() for key in keys.split(",") if key.strip()])

    def secrets_for(self, tenant_id: str) -> list[str]:
        """The tenant's secrets, one per master key, the current one first."""
        return [tenant_secret(key, tenant_id) for key in self._master_keys]

    def headers(self, tenant_id: str, webhook_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The Standard Webhooks headers (and content-type) for sending `body` to `tenant_id`'s URL.

        `timestamp` is Unix seconds of this attempt (receivers refuse ones far from their clock, so sign
        each retry anew); `webhook_id` stays the same across retries (see `webhook_id_for`)."""
        if not webhook_id or any(c in webhook_id for c in " ,\r\n"):
            raise ValueError(f"invalid webhook id {webhook_id!r}")
        timestamp = int(timestamp)
        signatures = " ".join(
            sign(secret, webhook_id, timestamp, body) for secret in self.secrets_for(tenant_id)
        )
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
            "content-type": "application/json",
        }


def webhook_id_for(task_ids: Sequence[str], replay_id: str = "") -> str:
    """The webhook-id of the request carrying `task_ids`: "msg_" + 32 hex chars of a SHA-256 over the
    sorted task ids and `replay_id`. Retries and restarts give the same id (receivers deduplicate on
    it) as long as the request carries the same tasks; an admin replay passes its replay id to get a
    new one."""
    if isinstance(task_ids, str):
        raise TypeError("task_ids must be a sequence of task ids, not one string")
    if not task_ids:
        raise ValueError("a webhook request carries at least one task")
    # JSON keeps the encoding unambiguous whatever characters the ids hold.
    material = json.dumps([sorted(task_ids), replay_id], separators=(",", ":")).encode()
    return WEBHOOK_ID_PREFIX + hashlib.sha256(material).hexdigest()[:_WEBHOOK_ID_HEX_CHARS]
