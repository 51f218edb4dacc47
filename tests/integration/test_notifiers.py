"""Built-in notifiers against real servers on loopback: aiosmtpd for smtp, an aiohttp receiver for webhook."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from config import Settings
from plugins import Event, Notifier, PluginRegistry
from plugins.builtin.notifiers import smtp as smtp_plugin
from plugins.builtin.notifiers import webhook as webhook_plugin

POOL_LOW = Event("proxy.pool_low", {"active_count": 3, "threshold": 5})
PASSWORD = "s3cret-Pa55word"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"


@asynccontextmanager
async def smtp_server(handler: Inbox, **options: Any) -> AsyncIterator[int]:
    """A real aiosmtpd SMTP server on this test's loop; yields its port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mail.test", loop=loop, **options), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def smtp_notifier(port: int, **extra: Any) -> smtp_plugin.SmtpNotifier:
    section = {"host": "127.0.0.1", "port": port, "to": ["ops@example.test"], "timeout": 10, **extra}
    plugin = smtp_plugin.create_plugin(Settings(notifiers={"smtp": section}))
    assert plugin is not None
    return plugin


def parsed(envelope: Any) -> email.message.EmailMessage:
    return email.message_from_bytes(envelope.original_content, policy=email.policy.default)


# -- smtp ------------------------------------------------------------------------------------


def test_smtp_is_off_without_its_section():
    """No [notifiers.smtp] section: create_plugin opts out."""
    assert smtp_plugin.create_plugin(Settings()) is None


def test_smtp_plugin_is_a_valid_notifier():
    """The registry accepts the smtp notifier as a Notifier (name, subscribes_to, notify, health_check)."""
    plugin = smtp_notifier(25, subscribes_to=["proxy.*"])
    assert isinstance(plugin, Notifier)
    PluginRegistry().register(plugin, "plugins.builtin.notifiers.smtp")
    assert plugin.name == "smtp" and plugin.subscribes_to == ["proxy.*"]


def test_smtp_without_recipients_is_refused():
    """A section with no recipient is a configuration error, reported by create_plugin."""
    with pytest.raises(ValueError, match="to"):
        smtp_plugin.create_plugin(Settings(notifiers={"smtp": {"host": "127.0.0.1"}}))


async def test_pool_low_mail_arrives_readable():
    """A proxy.pool_low event becomes one mail with a readable subject and the payload in its body."""
    inbox = Inbox()
    async with smtp_server(inbox) as port:
        await smtp_notifier(port).notify(POOL_LOW)
    assert len(inbox.envelopes) == 1
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "proxy-pool@localhost"
    assert envelope.rcpt_tos == ["ops@example.test"]
    msg = parsed(envelope)
    assert msg["Subject"] == "[proxy-pool] pool low: 3 active proxies (threshold 5)"
    assert msg["X-Proxy-Pool-Event"] == "proxy.pool_low"
    body = msg.get_content()
    assert "active_count: 3" in body
    assert "threshold: 5" in body
    assert f"at: {POOL_LOW.at.isoformat()}" in body


async def test_starttls_and_login():
    """With starttls + username the mail goes over TLS (trustme CA) after AUTH; the server saw our login."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        ok = data.login == b"alice" and data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 235/535 reply

    inbox = Inbox()
    with ca.cert_pem.tempfile() as ca_file:
        async with smtp_server(
            inbox,
            tls_context=server_ctx,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        ) as port:
            good = smtp_notifier(port, starttls=True, username="alice", password=PASSWORD, ca_file=ca_file)
            await good.notify(Event("credits.exhausted", {"user_id": 7}))
            bad = smtp_notifier(port, starttls=True, username="alice", password="wrong", ca_file=ca_file)
            with pytest.raises(smtp_plugin.smtplib.SMTPAuthenticationError) as failure:
                await bad.notify(POOL_LOW)
            assert "wrong" not in str(failure.value) and PASSWORD not in repr(good)
    assert logins[0] == (b"alice", PASSWORD.encode())
    assert logins[1:] and all(attempt == (b"alice", b"wrong") for attempt in logins[1:])
    assert len(inbox.envelopes) == 1
    assert parsed(inbox.envelopes[0])["Subject"] == "[proxy-pool] user 7 has no credits left"


async def test_starttls_refuses_an_untrusted_certificate():
    """Without the CA the server's certificate is not trusted and nothing is sent."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    inbox = Inbox()
    async with smtp_server(inbox, tls_context=server_ctx, require_starttls=True) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await smtp_notifier(port, starttls=True).notify(POOL_LOW)
    assert inbox.envelopes == []


async def test_smtp_health_check():
    """health_check is True against a live server and False for a closed port."""
    async with smtp_server(Inbox()) as port:
        assert await smtp_notifier(port).health_check() is True
    assert await smtp_notifier(closed_port()).health_check() is False


def test_subjects_of_every_event_type_are_one_readable_line():
    """Each documented event type has its own subject; newlines in payload values cannot break the header."""
    cases = [
        (
            Event("proxy.new_batch", {"source_id": 2, "source": "https://x.test/list.txt", "count": 12}),
            "[proxy-pool] 12 new proxies from source https://x.test/list.txt",
        ),
        (
            Event("source.failed", {"source_id": 2, "error": "HTTP 500\nboom", "consecutive_failures": 3}),
            "[proxy-pool] source 2 failed (3 in a row): HTTP 500 boom",
        ),
        (
            Event("source.stale", {"source_id": 4, "source": "s", "hours_since_success": 30}),
            "[proxy-pool] source s stale: no successful scrape for 30.0 h",
        ),
        (
            Event("credits.low_balance", {"user_id": 1, "balance": 40, "threshold": 100}),
            "[proxy-pool] user 1 low balance: 40 credits (threshold 100)",
        ),
        (Event("custom.thing", {"x": 1}), "[proxy-pool] custom.thing"),
        (Event("source.stale", {"source_id": 4}), "[proxy-pool] source.stale"),
    ]
    for event, subject in cases:
        assert smtp_plugin.format_subject(event) == subject


# -- webhook ---------------------------------------------------------------------------------


class Receiver:
    """An aiohttp webhook receiver answering a scripted list of statuses (then 204)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook/{token}", self.handle)
        return app


def webhook_notifier(url: str, **extra: Any) -> webhook_plugin.WebhookNotifier:
    plugin = webhook_plugin.create_plugin(
        Settings(notifiers={"webhook": {"url": url, "timeout": 5, **extra}})
    )
    assert plugin is not None
    plugin.backoff_base = 0.01
    return plugin


def test_webhook_is_off_without_its_section():
    """No [notifiers.webhook] section: create_plugin opts out; with one it is a valid Notifier."""
    assert webhook_plugin.create_plugin(Settings()) is None
    plugin = webhook_notifier("http://127.0.0.1:1/x")
    assert isinstance(plugin, Notifier)
    PluginRegistry().register(plugin, "plugins.builtin.notifiers.webhook")


async def test_webhook_posts_signed_json(aiohttp_server):
    """The receiver gets {"type","payload","at"} JSON whose HMAC-SHA256 with the secret matches the header."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    notifier = webhook_notifier(str(server.make_url("/hook/t0k3n")), secret="hush")
    try:
        await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 1
    method, headers, body = receiver.requests[0]
    assert method == "POST"
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"hush", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Proxy-Pool-Signature"], expected)
    data = json.loads(body)
    assert data == {
        "type": "proxy.pool_low",
        "payload": {"active_count": 3, "threshold": 5},
        "at": data["at"],
    }
    assert datetime.fromisoformat(data["at"]) == POOL_LOW.at


async def test_webhook_without_secret_sends_no_signature(aiohttp_server):
    """No secret configured: no signature header (an empty-key HMAC would only mislead)."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    notifier = webhook_notifier(str(server.make_url("/hook/x")))
    try:
        await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert "X-Proxy-Pool-Signature" not in receiver.requests[0][1]


async def test_webhook_retries_server_errors_then_succeeds(aiohttp_server):
    """Two 500s then 204: delivered on the third attempt with the identical signed body each time."""
    receiver = Receiver([500, 503])
    server = await aiohttp_server(receiver.app())
    notifier = webhook_notifier(str(server.make_url("/hook/x")), secret="k", retries=3)
    try:
        await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 3
    assert len({(h["X-Proxy-Pool-Signature"], b) for _, h, b in receiver.requests}) == 1


async def test_webhook_raises_after_the_last_attempt(aiohttp_server):
    """Always 500: retries+1 attempts, then WebhookDeliveryError carrying the status, no URL token."""
    receiver = Receiver([500] * 10)
    server = await aiohttp_server(receiver.app())
    notifier = webhook_notifier(str(server.make_url("/hook/t0k3n")), retries=2)
    try:
        with pytest.raises(webhook_plugin.WebhookDeliveryError) as failure:
            await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 3
    assert failure.value.status == 500 and failure.value.attempts == 3
    assert "t0k3n" not in str(failure.value)


async def test_webhook_client_error_is_not_retried(aiohttp_server):
    """A 400 cannot be fixed by resending: one attempt, then the error."""
    receiver = Receiver([400])
    server = await aiohttp_server(receiver.app())
    notifier = webhook_notifier(str(server.make_url("/hook/x")), retries=3)
    try:
        with pytest.raises(webhook_plugin.WebhookDeliveryError) as failure:
            await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert len(receiver.requests) == 1 and failure.value.status == 400


async def test_webhook_dead_url_fails_after_retries():
    """Connection refused on every attempt: the error names no path, after retries+1 attempts."""
    notifier = webhook_notifier(f"http://127.0.0.1:{closed_port()}/hook/t0k3n", retries=1)
    try:
        with pytest.raises(webhook_plugin.WebhookDeliveryError) as failure:
            await notifier.notify(POOL_LOW)
    finally:
        await notifier.close()
    assert failure.value.status is None and failure.value.attempts == 2
    assert "t0k3n" not in str(failure.value)


async def test_webhook_health_check(aiohttp_server):
    """Reachable receiver (even 405 to HEAD) is healthy; a closed port is not; close() is idempotent."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    alive = webhook_notifier(str(server.make_url("/hook/x")))
    dead = webhook_notifier(f"http://127.0.0.1:{closed_port()}/hook/x")
    try:
        assert await alive.health_check() is True
        assert await dead.health_check() is False
    finally:
        await alive.close()
        await alive.close()
        await dead.close()
    assert receiver.requests == []  # HEAD hit no POST handler


async def test_webhook_health_check_false_on_server_error():
    """A receiver that answers 5xx to everything is reported unhealthy."""
    app = web.Application()

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=502)

    app.router.add_route("*", "/hook", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    notifier = webhook_notifier(f"http://127.0.0.1:{port}/hook")
    try:
        assert await notifier.health_check() is False
    finally:
        await notifier.close()
        await runner.cleanup()
