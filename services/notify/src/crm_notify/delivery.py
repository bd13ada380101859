"""Delivery adapters: how a rendered message leaves notify.

Email goes over SMTP (aiosmtplib), on reused connections. Each message's `Message-ID` is
fixed by its notification, so a message sent again after a crash (SMTP has no idempotency
key) carries the same id, which mail systems that deduplicate can use. A 5xx answer is a
permanent failure (no retry); a 4xx, a timeout or a refused connection is a temporary one
(retried with backoff).

SMS goes through Twilio's Messages API (or any provider speaking it): a form POST with basic
auth, `I-Twilio-Idempotency-Token` set to the notification id, so a retry after a crash is
one message, and a `StatusCallback` that notify's callback endpoint turns into `delivered` or
`failed`. A 400 is the message's own fault (an invalid or opted-out number): permanent.

Webhooks POST JSON, signed: `X-CRM-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`
with the shared secret, and `X-CRM-Timestamp` (Unix seconds), so the receiver can refuse a
forged or replayed call. `Idempotency-Key` is the notification id: a retry after a crash is
the same call, which the receiver can drop. 2xx is delivered; 408, 429, 5xx and network
errors are retried; any other 4xx is a permanent failure.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any

import aiosmtplib
import httpx
import orjson

from crm_notify.rules import Sender
from crm_notify.settings import NotifySettings
from crm_notify.templates import Rendered

# The SMS provider's error codes (Twilio's numbering) that say the number itself cannot take
# SMS: not a valid number, not a mobile number, unknown to the carrier, a landline or a carrier
# that cannot be reached. Others (a handset off, carrier filtering) may pass another time.
UNREACHABLE_NUMBER_CODES = frozenset({"21211", "21614", "30005", "30006"})


class DeliveryFailed(Exception):
    def __init__(
        self, reason: str, *, permanent: bool, bounced: bool = False, code: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.bounced = bounced
        """The receiving side refused the address itself: a mail server's hard bounce, or an
        SMS provider's code in `UNREACHABLE_NUMBER_CODES`."""
        self.code = code
        """The provider's error code, when it gave one."""


@dataclass(frozen=True)
class Email:
    notification_id: str
    to: str
    rendered: Rendered
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def message_id(self) -> str:
        return f"<{self.notification_id}@crm-notify>"


def compose(email: Email, sender: Sender) -> EmailMessage:
    message = EmailMessage()
    message["From"] = formataddr((sender.name, sender.email))
    message["To"] = email.to
    message["Subject"] = email.rendered.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = email.message_id
    for name, value in email.headers:
        message[name] = value
    message.set_content(email.rendered.text)
    if email.rendered.html is not None:
        message.add_alternative(email.rendered.html, subtype="html")
    # After the content: setting it clears every Content-* header.
    message["Content-Language"] = email.rendered.language
    return message


class SmtpSender:
    """Sends over a pool of open SMTP connections: a connection is reused for the next
    message (each message is its own MAIL FROM ... DATA), so the connect, EHLO, TLS and login
    are paid once per connection rather than per message."""

    POOL = 64

    def __init__(self, settings: NotifySettings, sender: Sender) -> None:
        self._settings = settings
        self._sender = sender
        self._idle: list[aiosmtplib.SMTP] = []

    def _connection(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_s,
        )

    async def send(self, email: Email) -> str:
        """Send `email`; returns its Message-ID. DeliveryFailed says whether to try again."""
        try:
            message = compose(email, self._sender)
        except ValueError as exc:  # e.g. an address the headers cannot carry
            raise DeliveryFailed(f"smtp: cannot compose: {exc}"[:500], permanent=True) from exc
        while True:
            reused = bool(self._idle)
            client = self._idle.pop() if reused else self._connection()
            try:
                if not reused:
                    await client.connect()
                await client.send_message(message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                client.close()
                if reused:
                    continue  # the server closed an idle connection: take another
                raise _smtp_failure(exc) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                client.close()
                raise _smtp_failure(exc) from exc
            if len(self._idle) < self.POOL:
                self._idle.append(client)
            else:
                client.close()
            return email.message_id


def _smtp_failure(exc: BaseException) -> DeliveryFailed:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = all(500 <= code < 600 for code in codes)
        return DeliveryFailed(
            f"smtp: recipient refused {codes}", permanent=permanent, bounced=permanent
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return DeliveryFailed(
            f"smtp: {exc.code} {exc.message}"[:500], permanent=500 <= exc.code < 600
        )
    return DeliveryFailed(f"smtp: {type(exc).__name__}: {exc}"[:500], permanent=False)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, url: str, secret: bytes, timeout_s: float) -> None:
        self._url = url
        self._secret = secret
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def post(self, notification_id: str, payload: dict[str, Any]) -> str:
        body = orjson.dumps(payload)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-CRM-Timestamp": timestamp,
            "X-CRM-Signature": signature(self._secret, timestamp, body),
            "Idempotency-Key": notification_id,
        }
        try:
            answer = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(
                f"webhook: {type(exc).__name__}: {exc}"[:500], permanent=False
            ) from exc
        if answer.is_success:
            return notification_id
        retry = answer.status_code in (408, 429) or answer.status_code >= 500
        raise DeliveryFailed(f"webhook: HTTP {answer.status_code}", permanent=not retry)

    async def close(self) -> None:
        await self._client.aclose()


class SmsSender:
    """Twilio's Messages API: POST /2010-04-01/Accounts/{sid}/Messages.json."""

    def __init__(
        self,
        api_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback: str | None,
        timeout_s: float,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._sender = sender
        self._callback = status_callback
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def send(self, notification_id: str, to: str, body: str) -> str:
        """Send; returns the provider's message id (its `sid`)."""
        form = {"To": to, "From": self._sender, "Body": body}
        if self._callback:
            form["StatusCallback"] = self._callback
        try:
            answer = await self._client.post(
                self._url,
                data=form,
                auth=self._auth,
                headers={"I-Twilio-Idempotency-Token": notification_id},
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(
                f"sms: {type(exc).__name__}: {exc}"[:500], permanent=False
            ) from exc
        if answer.is_success:
            try:
                sid = answer.json().get("sid")
            except (ValueError, AttributeError):
                sid = None
            if not isinstance(sid, str) or not sid:
                raise DeliveryFailed("sms: the provider's answer has no sid", permanent=False)
            return sid
        detail, code = "", None
        try:
            problem = answer.json()
            detail = f" {problem.get('code')}: {problem.get('message')}"
            code = str(problem["code"]) if problem.get("code") is not None else None
        except (ValueError, AttributeError, TypeError):
            pass
        reason = f"sms: HTTP {answer.status_code}{detail}"[:500]
        permanent = answer.status_code == 400
        raise DeliveryFailed(
            reason,
            permanent=permanent,
            # Only a refusal not tried again reports the number, and so only once.
            bounced=permanent and code in UNREACHABLE_NUMBER_CODES,
            code=code,
        )

    async def close(self) -> None:
        await self._client.aclose()
