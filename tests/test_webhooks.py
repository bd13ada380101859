"""Provider webhooks against the real broker: signed SendGrid events and Twilio callbacks
become email and phone touchpoints; tampered, unsigned and replayed requests are refused (or,
for Twilio, whose scheme has no timestamp, replays become duplicates of the same event)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from crm_ingest.app import build
from crm_ingest.settings import IngestSettings
from crm_shared.contracts import TOUCHPOINTS
from crm_shared.twilio import twilio_signature
from tests.support import Endpoints, read_topic, running, service_env, values_of

TWILIO_TOKEN = "twilio-test-token"
BASE = "https://ingest.example.org"


def settings_for(endpoints: Endpoints, prefix: str, public_key: str) -> IngestSettings:
    fields: dict[str, Any] = {
        k.removeprefix("CRM_").lower(): v for k, v in service_env(endpoints, prefix).items()
    }
    return IngestSettings.model_validate(
        {
            **fields,
            "sendgrid_webhook_public_key": public_key,
            "twilio_auth_token": TWILIO_TOKEN,
            "public_base_url": BASE,
        }
    )


def sign(private: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int) -> dict[str, str]:
    signature = private.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
    }


def twilio_form(path: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> dict[str, Any]:
    return {
        "content": urlencode(params),
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, BASE + path, params),
        },
    }


async def test_signed_provider_webhooks_become_touchpoints_and_forgeries_do_not(
    endpoints: Endpoints, topic_prefix: str
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    now = int(time.time())
    events = [
        {
            "email": "Ana@Example.org",
            "timestamp": now - 60,
            "event": "open",
            "sg_event_id": "sg-1",
            "sg_message_id": "m-1",
            "useragent": "Mail",
        },
        {
            "email": "ana@example.org",
            "timestamp": now - 30,
            "event": "bounce",
            "type": "bounce",
            "reason": "550 mailbox unknown",
            "sg_event_id": "sg-2",
            "sg_message_id": "m-2",
        },
        {
            "email": "ana@example.org",
            "timestamp": now,
            "event": "deferred",
            "sg_event_id": "sg-3",
            "sg_message_id": "m-3",
        },
        {
            "email": "ana@example.org",
            "event": "click",
            "sg_event_id": "sg-4",
            "sg_message_id": "m-4",
        },
    ]
    body = json.dumps(events).encode()
    call = {
        "CallSid": "CA1",
        "CallStatus": "completed",
        "Direction": "inbound",
        "From": "+37060000003",
        "To": "+37052000000",
        "CallDuration": "95",
    }
    sms = {"MessageSid": "SM1", "From": "+37060000003", "To": "+37052000000", "Body": "STOP"}

    service = build(settings_for(endpoints, topic_prefix, public))
    async with (
        running(service),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url=BASE) as http,
    ):
        signed = await http.post(
            "/v1/webhooks/sendgrid", content=body, headers=sign(private, body, now)
        )
        tampered = await http.post(
            "/v1/webhooks/sendgrid",
            content=body.replace(b"open", b"spam"),
            headers=sign(private, body, now),
        )
        replayed = await http.post(
            "/v1/webhooks/sendgrid", content=body, headers=sign(private, body, now - 3600)
        )
        unsigned = await http.post(
            "/v1/webhooks/sendgrid", content=body, headers={"Content-Type": "application/json"}
        )
        voice = await http.post(
            "/v1/webhooks/twilio/voice", **twilio_form("/v1/webhooks/twilio/voice", call)
        )
        voice_again = await http.post(
            "/v1/webhooks/twilio/voice", **twilio_form("/v1/webhooks/twilio/voice", call)
        )
        ringing = await http.post(
            "/v1/webhooks/twilio/voice",
            **twilio_form("/v1/webhooks/twilio/voice", {**call, "CallStatus": "ringing"}),
        )
        text = await http.post(
            "/v1/webhooks/twilio/sms", **twilio_form("/v1/webhooks/twilio/sms", sms)
        )
        forged = await http.post(
            "/v1/webhooks/twilio/sms", **twilio_form("/v1/webhooks/twilio/sms", sms, token="guess")
        )
        altered = twilio_form("/v1/webhooks/twilio/sms", sms)
        altered["content"] = urlencode({**sms, "Body": "YES"})
        tampered_sms = await http.post("/v1/webhooks/twilio/sms", **altered)

    assert signed.status_code == 200, signed.text
    assert signed.json()["accepted"] == 2, "open and bounce; deferred is no touchpoint"
    assert signed.json()["refused"] == [
        {
            "index": 3,
            "id": None,
            "status": "rejected",
            "errors": [{"field": "3.timestamp", "reason": "is required"}],
        }
    ]
    assert tampered.status_code == 401
    assert tampered.json()["detail"] == "the signature does not match the body"
    assert replayed.status_code == 401
    assert "a replayed request?" in replayed.json()["detail"]
    assert unsigned.status_code == 401
    assert voice.status_code == 200
    assert voice.text.endswith("<Response/>")
    assert voice_again.status_code == 200
    assert ringing.status_code == 200
    assert text.status_code == 200
    assert forged.status_code == 401
    assert tampered_sms.status_code == 401

    records = await read_topic(endpoints.bootstrap, TOUCHPOINTS.full_name(topic_prefix), at_least=5)
    on_topic = values_of(records)
    types = sorted(
        (v["source"], v["id"], v["type"].rsplit(".", 2)[-2] + "." + v["type"].rsplit(".", 1)[-1])
        for v in on_topic
    )
    assert types == [
        ("sendgrid", "sg-1", "email.opened"),
        ("sendgrid", "sg-2", "email.bounced"),
        ("twilio", "CA1:completed", "phone.call_completed"),
        ("twilio", "CA1:completed", "phone.call_completed"),
        ("twilio", "SM1", "phone.sms_received"),
    ], "the replayed Twilio callback is the same event (a duplicate downstream drops)"
    by_id = {v["id"]: v for v in on_topic}
    assert by_id["sg-2"]["data"]["bounce_type"] == "hard"
    assert by_id["sg-1"]["data"]["identities"] == {"email": "ana@example.org"}
    assert by_id["sg-1"]["data"]["properties"] == {"useragent": "Mail"}
    call_data = by_id["CA1:completed"]["data"]
    assert (call_data["direction"], call_data["duration_seconds"], call_data["outcome"]) == (
        "inbound",
        95,
        "answered",
    )
    assert by_id["SM1"]["data"]["text"] == "STOP"


async def test_unconfigured_webhooks_answer_404(endpoints: Endpoints, topic_prefix: str) -> None:
    fields: dict[str, Any] = {
        k.removeprefix("CRM_").lower(): v for k, v in service_env(endpoints, topic_prefix).items()
    }
    service = build(IngestSettings.model_validate(fields))
    async with (
        running(service),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url=BASE) as http,
    ):
        for path in (
            "/v1/webhooks/sendgrid",
            "/v1/webhooks/twilio/voice",
            "/v1/webhooks/twilio/sms",
        ):
            answer = await http.post(path, content=b"[]")
            assert answer.status_code == 404
            assert "not configured" in answer.json()["detail"]
