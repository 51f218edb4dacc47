"""Email notifier: one mail per event, readable subject and body.

Sent with the standard library's ``smtplib`` in a worker thread (``asyncio.to_thread``) rather than
aiosmtplib: events are rare, a thread per mail costs nothing, and STARTTLS, implicit TLS and login
come without a new dependency.  Every socket operation is bounded by ``notifiers.smtp.timeout``.
The password is handed to ``SMTP.login`` only; it is never logged or put in an error.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from config import Settings
from plugins import Event

if TYPE_CHECKING:
    from config.settings import SmtpSettings

__all__ = ["SmtpNotifier", "create_plugin", "format_body", "format_subject"]

SUBJECT_PREFIX = "[proxy-pool] "
_MAX_SUBJECT = 200

# One readable sentence per event type; payload keys as documented in pool/events.py.
_SUBJECTS: dict[str, str] = {
    "proxy.pool_low": "pool low: {active_count} active proxies (threshold {threshold})",
    "proxy.new_batch": "{count} new proxies from source {source}",
    "source.failed": "source {source} failed ({consecutive_failures} in a row): {error}",
    "source.stale": "source {source} stale: no successful scrape for {hours_since_success:.1f} h",
    "credits.low_balance": "user {user_id} low balance: {balance} credits (threshold {threshold})",
    "credits.exhausted": "user {user_id} has no credits left",
}


class _Defaulting(dict[str, Any]):
    """Payload view for str.format_map: a missing key reads as '?' instead of raising."""

    def __missing__(self, key: str) -> Any:
        return "?"


def format_subject(event: Event) -> str:
    """One line: ``[proxy-pool] pool low: 3 active proxies (threshold 5)``."""
    template = _SUBJECTS.get(event.type)
    payload = _Defaulting(event.payload)
    if "source" not in event.payload and "source_id" in event.payload:
        payload["source"] = event.payload["source_id"]
    text = event.type
    if template is not None:
        try:
            text = template.format_map(payload)
        except (ValueError, TypeError):  # e.g. a non-number where a number format is asked
            text = event.type
    text = " ".join(text.split())  # no header injection through payload newlines
    if len(text) > _MAX_SUBJECT:
        text = text[: _MAX_SUBJECT - 1] + "…"
    return SUBJECT_PREFIX + text


def format_body(event: Event) -> str:
    """Readable ``key: value`` lines of the payload, with the event type and time."""
    lines = [f"event: {event.type}", f"at: {event.at.isoformat()}", ""]
    for key, value in event.payload.items():
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)
        lines.append(f"{key}: {shown}")
    lines.append("")
    lines.append("-- proxy-pool")
    return "\n".join(lines) + "\n"


class SmtpNotifier:
    """Mails every subscribed event to ``notifiers.smtp.to``."""

    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        if not settings.to:
            raise ValueError("notifiers.smtp.to: at least one recipient is required")
        if settings.starttls and settings.use_tls:
            raise ValueError("notifiers.smtp: starttls and use_tls exclude each other")
        self.subscribes_to: list[str] = list(settings.subscribes_to)
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return f"<SmtpNotifier {s.host}:{s.port} to={len(s.to)} starttls={s.starttls} tls={s.use_tls}>"

    def build_message(self, event: Event) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = format_subject(event)
        msg["From"] = self._settings.from_addr
        msg["To"] = ", ".join(self._settings.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="proxy-pool")
        msg["X-Proxy-Pool-Event"] = event.type
        msg.set_content(format_body(event))
        return msg

    async def notify(self, event: Event) -> None:
        message = self.build_message(event)
        await asyncio.to_thread(self._send, message)

    async def health_check(self) -> bool:
        return await asyncio.to_thread(self._probe)

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._settings.ca_file)

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        if s.use_tls:
            return smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls_context())
        return smtplib.SMTP(s.host, s.port, timeout=s.timeout)

    def _send(self, message: EmailMessage) -> None:
        """Blocking: runs in a worker thread."""
        s = self._settings
        with self._connect() as client:
            client.ehlo()
            if s.starttls:
                client.starttls(context=self._tls_context())
                client.ehlo()
            if s.username is not None:
                password = s.password.get_secret_value() if s.password is not None else ""
                client.login(s.username, password)
            client.send_message(message, from_addr=s.from_addr, to_addrs=list(s.to))

    def _probe(self) -> bool:
        """Blocking: connect, EHLO, QUIT within the timeout."""
        try:
            with self._connect() as client:
                code, _ = client.ehlo()
                return 200 <= code < 300
        except (OSError, smtplib.SMTPException):
            return False


def create_plugin(settings: Settings) -> SmtpNotifier | None:
    """Off unless ``[notifiers.smtp]`` is configured."""
    section = settings.notifiers.smtp
    if section is None:
        return None
    return SmtpNotifier(section)
