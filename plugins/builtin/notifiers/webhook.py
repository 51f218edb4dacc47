"""Webhook notifier: POSTs each event as JSON, signed, with retries and exponential back-off.

Wire shape: the body is ``json.dumps(event.to_dict())`` = ``{"type", "payload", "at"}``, and with a
secret set ``X-Proxy-Pool-Signature: sha256=<hex HMAC-SHA256 of the exact body>``, so a receiver
verifies the bytes it got before parsing them.  Connection errors, timeouts, 408, 429 and 5xx are
retried (``retries`` times, waiting ``backoff_base * 2**n``); any other non-2xx fails at once
because sending the same request again cannot fix it.  The URL may carry a token (many chat
webhooks do), so errors name only its scheme, host and port.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from config import Settings
from plugins import Event

if TYPE_CHECKING:
    from config.settings import WebhookSettings

__all__ = ["SIGNATURE_HEADER", "WebhookDeliveryError", "WebhookNotifier", "create_plugin", "sign"]

SIGNATURE_HEADER = "X-Proxy-Pool-Signature"
_RETRY_STATUSES = frozenset({408, 425, 429})


class WebhookDeliveryError(Exception):
    """The receiver did not accept the event; ``status`` is None for network errors and timeouts."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


class WebhookNotifier:
    """One aiohttp session, created on first use and closed by ``close()``."""

    name = "webhook"
    backoff_base: float = 0.2  # seconds before the first retry; doubled each time

    def __init__(self, settings: WebhookSettings) -> None:
        if urlsplit(settings.url).scheme not in ("http", "https"):
            raise ValueError(f"notifiers.webhook.url: {_redact(settings.url)} is not an http(s) URL")
        self.subscribes_to: list[str] = list(settings.subscribes_to)
        self.retries = settings.retries
        self._url = settings.url
        self._shown_url = _redact(settings.url)
        self._secret = settings.secret.get_secret_value().encode() if settings.secret is not None else None
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<WebhookNotifier {self._shown_url} signed={self._secret is not None} retries={self.retries}>"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": "proxy-pool-webhook/1"}
            )
        return self._session

    def encode(self, event: Event) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers that go on the wire."""
        body = json.dumps(event.to_dict(), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        return body, headers

    async def notify(self, event: Event) -> None:
        body, headers = self.encode(event)
        attempts = self.retries + 1
        error = WebhookDeliveryError(f"webhook {self._shown_url}: not attempted")
        for attempt in range(1, attempts + 1):
            try:
                async with self._client().post(
                    self._url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        return
                    error = WebhookDeliveryError(
                        f"webhook {self._shown_url} answered {resp.status} (attempt {attempt}/{attempts})",
                        status=resp.status,
                        attempts=attempt,
                    )
                    if resp.status < 500 and resp.status not in _RETRY_STATUSES:
                        raise error
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = WebhookDeliveryError(
                    f"webhook {self._shown_url}: {type(exc).__name__} (attempt {attempt}/{attempts})",
                    attempts=attempt,
                )
            if attempt < attempts:
                await asyncio.sleep(self.backoff_base * 2 ** (attempt - 1))
        raise error

    async def health_check(self) -> bool:
        """Reachable when a HEAD to the URL answers anything below 500 within the timeout."""
        try:
            async with self._client().head(self._url, allow_redirects=False) as resp:
                return resp.status < 500
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def create_plugin(settings: Settings) -> WebhookNotifier | None:
    """Off unless ``[notifiers.webhook]`` is configured."""
    section = settings.notifiers.webhook
    if section is None:
        return None
    return WebhookNotifier(section)
