"""Webhook signing, checked with the independent `standardwebhooks` reference verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from imgpipe.callback.signing import WebhookSigner, sign, tenant_secret, webhook_id_for

pytestmark = pytest.mark.unit

OLD_KEY = "old-master-key-0123456789"
NEW_KEY = "new-master-key-9876543210"
BODY = b'{"type":"task.succeeded","task_id":"t-1","state":"succeeded"}'
WEBHOOK_ID = "msg_0123456789abcdef0123456789abcdef"


def _signed(signer: WebhookSigner, tenant: str = "acme") -> tuple[dict[str, str], int]:
    now = int(time.time())  # the verifier refuses timestamps more than 5 minutes from its clock
    return signer.headers(tenant, WEBHOOK_ID, BODY, now), now


def test_tenant_secret_is_the_documented_derivation() -> None:
    expected = hmac.new(OLD_KEY.encode(), b"imgpipe-webhook-secret:acme", hashlib.sha256).digest()
    secret = tenant_secret(OLD_KEY, "acme")
    assert secret == "whsec_" + base64.b64encode(expected).decode()
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert tenant_secret(OLD_KEY, "acme") == secret  # derived, not random
    assert tenant_secret(OLD_KEY, "acme2") != secret
    assert tenant_secret(NEW_KEY, "acme") != secret


def test_headers_verify_with_the_reference_library() -> None:
    signer = WebhookSigner([OLD_KEY])
    headers, now = _signed(signer)
    assert headers["webhook-id"] == WEBHOOK_ID
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    assert len(headers["webhook-signature"].split(" ")) == 1

    payload = Webhook(signer.secrets_for("acme")[0]).verify(BODY, headers)
    assert payload["task_id"] == "t-1"
    # The library's own signature over the same content is the same string.
    reference = Webhook(tenant_secret(OLD_KEY, "acme"))
    expected = reference.sign(WEBHOOK_ID, datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    assert (
        headers["webhook-signature"]
        == expected
        == sign(tenant_secret(OLD_KEY, "acme"), WEBHOOK_ID, now, BODY)
    )


def test_another_tenants_secret_does_not_verify() -> None:
    signer = WebhookSigner([OLD_KEY])
    headers, _ = _signed(signer, tenant="acme")
    with pytest.raises(WebhookVerificationError):
        Webhook(signer.secrets_for("globex")[0]).verify(BODY, headers)


def test_rotation_signs_with_both_secrets_and_each_verifies_alone() -> None:
    signer = WebhookSigner([NEW_KEY, OLD_KEY])
    new_secret, old_secret = signer.secrets_for("acme")
    assert new_secret == tenant_secret(NEW_KEY, "acme")
    assert old_secret == tenant_secret(OLD_KEY, "acme")

    headers, now = _signed(signer)
    signatures = headers["webhook-signature"].split(" ")
    assert signatures == [sign(new_secret, WEBHOOK_ID, now, BODY), sign(old_secret, WEBHOOK_ID, now, BODY)]
    # A receiver that has moved to the new secret and one still on the old one both verify,
    Webhook(new_secret).verify(BODY, headers)
    Webhook(old_secret).verify(BODY, headers)
    # and each signature alone is what verifies for its secret.
    Webhook(new_secret).verify(BODY, {**headers, "webhook-signature": signatures[0]})
    Webhook(old_secret).verify(BODY, {**headers, "webhook-signature": signatures[1]})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret).verify(BODY, {**headers, "webhook-signature": signatures[1]})
    with pytest.raises(WebhookVerificationError):
        Webhook(tenant_secret("unrelated-key", "acme")).verify(BODY, headers)


def test_tampering_fails_verification() -> None:
    signer = WebhookSigner([NEW_KEY, OLD_KEY])
    headers, now = _signed(signer)
    for secret in signer.secrets_for("acme"):
        verifier = Webhook(secret)
        verifier.verify(BODY, headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(BODY.replace(b"succeeded", b"failed", 1), headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(BODY + b" ", headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(BODY, {**headers, "webhook-timestamp": str(now + 1)})
        with pytest.raises(WebhookVerificationError):
            verifier.verify(BODY, {**headers, "webhook-id": WEBHOOK_ID + "0"})


def test_signer_rejects_no_keys_and_parses_the_setting() -> None:
    with pytest.raises(ValueError):
        WebhookSigner([])
    with pytest.raises(ValueError):
        WebhookSigner([""])
    with pytest.raises(TypeError):
        WebhookSigner(NEW_KEY)
    with pytest.raises(ValueError):
        WebhookSigner.from_setting(" , ")
    signer = WebhookSigner.from_setting(f" {NEW_KEY} , {OLD_KEY},")
    assert signer.secrets_for("acme") == WebhookSigner([NEW_KEY, OLD_KEY]).secrets_for("acme")
    assert len(WebhookSigner([NEW_KEY, NEW_KEY]).secrets_for("acme")) == 1
    with pytest.raises(ValueError):
        WebhookSigner([NEW_KEY]).headers("acme", "msg_a b", BODY, int(time.time()))


def test_webhook_id_is_stable_and_order_independent() -> None:
    one = webhook_id_for(["b-task", "a-task", "c-task"])
    assert one == webhook_id_for(["c-task", "a-task", "b-task"])
    assert one == webhook_id_for(("a-task", "b-task", "c-task"))
    assert one.startswith("msg_")
    assert len(one) == len("msg_") + 32
    int(one.removeprefix("msg_"), 16)
    # The documented construction, so it survives restarts and other processes.
    material = b'[["a-task","b-task","c-task"],""]'
    assert one == "msg_" + hashlib.sha256(material).hexdigest()[:32]

    assert webhook_id_for(["a-task", "b-task"]) != one
    assert webhook_id_for(["a-task", "b-task", "c-task"], "replay-1") != one
    assert webhook_id_for(["a-task", "b-task", "c-task"], "replay-1") != webhook_id_for(
        ["a-task", "b-task", "c-task"], "replay-2"
    )
    # No ambiguity from joining: ids that contain separators stay distinct.
    assert webhook_id_for(["a,b"]) != webhook_id_for(["a", "b"])
    assert webhook_id_for(["a"], "b") != webhook_id_for(["a", "b"])
    with pytest.raises(ValueError):
        webhook_id_for([])
    with pytest.raises(TypeError):
        webhook_id_for("a-task")
