"""Delivery adapters: how a rendered message leaves notify.

Email goes over SMTP (aiosmtplib). Each message's `Message-ID` is fixed by its notification, so
a message sent again after a crash (SMTP has no idempotency key) carries the same id, which
mail systems that deduplicate can use. A 5xx answer is a permanent failure (no retry); a 4xx,
a timeout or a refused connection is a temporary one (retried with backoff).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate

import aiosmtplib

from crm_notify.rules import Sender
from crm_notify.settings import NotifySettings
from crm_notify.templates import Rendered


class DeliveryFailed(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


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
    def __init__(self, settings: NotifySettings, sender: Sender) -> None:
        self._settings = settings
        self._sender = sender

    async def send(self, email: Email) -> str:
        """Send `email`; returns its Message-ID. DeliveryFailed says whether to try again."""
        s = self._settings
        try:
            await aiosmtplib.send(
                compose(email, self._sender),
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.smtp_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            permanent = all(500 <= code < 600 for code in codes)
            raise DeliveryFailed(f"smtp: recipient refused {codes}", permanent=permanent) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(
                f"smtp: {exc.code} {exc.message}"[:500], permanent=500 <= exc.code < 600
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(
                f"smtp: {type(exc).__name__}: {exc}"[:500], permanent=False
            ) from exc
        return email.message_id
