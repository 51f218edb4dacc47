"""HTTPS interception (gateway.intercept_listen) on real sockets: a TLS origin on 127.0.0.1 with its own CA
(trustme, given to the gateway as intercept_verify), pproxy upstreams leaving from 127.0.0.2 (HTTP) and
127.0.0.3 (SOCKS5), raw TLS clients trusting proxy-pool's CA.  Every request inside one kept-alive TLS
session is an exchange of its own: distinct exits, ban retry, routing headers removed, sticky sessions,
the 502 for an untrusted site, WebSocket relayed, bypass and non-TLS bytes tunnelled, the main port
never intercepting; hostile ClientHellos and handshakes end with the slots and fds back to baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509

from config import Settings
from gateway.metrics import Metrics
from gateway.proxy.certs import CertificateAuthority, ensure_ca
from gateway.proxy.server import GatewayServer
from pool.models import Proxy, ProxyStatus, UpstreamURL
from pool.selector import Selector
from tests.integration.test_socks_clients import socks5_connect
from tests.support.upstreams import Upstream, closed_port, origin_app, start_pproxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)
SITE = "site.test"  # the origin's certificate names it and 127.0.0.1; clients send it as SNI


def site_app() -> web.Application:
    app = origin_app()

    async def banned(request: web.Request) -> web.Response:  # the upstream leaving from 127.0.0.2 is banned
        status = 403 if request.remote == "127.0.0.2" else 200
        return web.json_response({"peer": request.remote}, status=status)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for message in sock:
            await sock.send_str(f"{request.remote} {message.data}")
        return sock

    app.router.add_get("/banned", banned)
    app.router.add_get("/ws", ws)
    return app


@dataclass
class Env:
    tmp: Path
    site_ca: trustme.CA
    bundle: Path
    origin: TestServer
    ups: list[Upstream]
    ca: CertificateAuthority
    ca_file: Path
    server: GatewayServer | None = None
    metrics: Metrics | None = None

    @property
    def port(self) -> int:
        return int(self.origin.port)  # type: ignore[arg-type]

    @property
    def intercept(self) -> tuple[str, int]:
        assert self.server is not None and self.server.intercept_address is not None
        return self.server.intercept_address

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextlib.asynccontextmanager
    async def gateway(self, access_log: bool = False, dead: str | None = None, **gw: Any) -> AsyncIterator[GatewayServer]:
        settings = Settings(
            storage={"path": str(self.tmp / "pool.db")},
            log={"access_log": access_log},
            gateway={
                "listen": "127.0.0.1:0", "intercept_listen": "127.0.0.1:0", "intercept_verify": str(self.bundle),
                "allowed_connect_ports": "*", "head_timeout": 3.0, **gw,
            },
        )  # fmt: skip
        selector = Selector()
        proxies = [
            Proxy(1, UpstreamURL.parse(self.ups[0].url("http")), status=ProxyStatus.ACTIVE),
            Proxy(2, UpstreamURL.parse(self.ups[1].url("socks5")), status=ProxyStatus.ACTIVE),
        ]
        if dead is not None:  # an upstream nothing listens on
            proxies.append(Proxy(3, UpstreamURL.parse(dead), status=ProxyStatus.ACTIVE))
        selector.load(proxies)
        self.metrics = Metrics()
        self.server = server = GatewayServer(settings, selector, metrics=self.metrics, intercept_ca=self.ca)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    site_ca = trustme.CA()
    bundle = tmp_path / "site-ca.pem"
    site_ca.cert_pem.write_to_path(str(bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    site_ca.issue_cert("127.0.0.1", SITE).configure_cert(context)
    origin = TestServer(site_app(), host="127.0.0.1")
    await origin.start_server(ssl=context)
    ups = [await start_pproxy("127.0.0.2", "http"), await start_pproxy("127.0.0.3", "socks5")]
    ca = ensure_ca(Settings(storage={"path": str(tmp_path / "pool.db")}))
    ca_file = tmp_path / "proxy-pool-ca.pem"
    ca_file.write_bytes(ca.pem)
    try:
        yield Env(tmp_path, site_ca, bundle, origin, ups, ca, ca_file)
    finally:
        for up in ups:
            await up.stop()
        await origin.close()


# a raw client -----------------------------------------------------------------------------------
async def connect(env: Env, target: str | None = None, headers: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*env.intercept)
    writer.write(f"CONNECT {target or f'127.0.0.1:{env.port}'} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return reader, writer


async def session(env: Env, sni: str | None = SITE, headers: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect(env, headers=headers)
    context = env.client_context()
    if sni is None:
        context.check_hostname = False
    await asyncio.wait_for(writer.start_tls(context, server_hostname=sni), 10)
    return reader, writer


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/echo", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {SITE}\r\n{headers}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(fields.get("content-length", "0"))), 10)
    return int(lines[0].split()[1]), fields, body


def peer_of(body: bytes) -> str:
    return str(json.loads(body)["peer"])


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled(env: Env) -> bool:
    assert env.server is not None
    return not env.server._clients  # noqa: SLF001  (the slots, back to baseline)


def intercepted_count(env: Env) -> int:
    assert env.metrics is not None
    return sum(n for (_, _, protocol), n in env.metrics.request_counts.items() if protocol == "intercepted")


# what a user gets -------------------------------------------------------------------------------
async def test_every_request_on_one_session_picks_its_own_upstream(env, caplog):
    """One kept-alive TLS session, four GETs: exits alternate 127.0.0.2 / 127.0.0.3 (HTTP CONNECT and SOCKS5
    upstreams), X-Proxy-Pool-* never reaches the origin, debug_headers names the upstream, the leaf is for
    the SNI, each request is counted protocol="intercepted" and logged with its https URL."""
    caplog.set_level(logging.INFO, "proxy_pool.access")
    async with env.gateway(access_log=True, debug_headers=True):
        reader, writer = await session(env)
        leaf = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [SITE]
        assert leaf.issuer == env.ca.cert.subject
        peers, upstreams = [], []
        for _ in range(4):
            status, fields, body = await get(reader, writer)
            assert status == 200
            peers.append(peer_of(body))
            upstreams.append(fields["x-proxy-pool-upstream"])
        assert set(peers) == {"127.0.0.2", "127.0.0.3"} and peers[0] != peers[1]
        assert set(upstreams) == {"1", "2"}
        status, _, body = await get(reader, writer, headers="X-Proxy-Pool-Session: s1\r\n")
        seen = json.loads(body)["headers"]
        assert status == 200 and not any(k.lower().startswith("x-proxy-pool") for k in seen)
        assert seen["Host"] == f"{SITE}:{env.port}"  # the name asked for in TLS, though the CONNECT named an address
        writer.close()
        assert intercepted_count(env) >= 5
        await eventually(lambda: settled(env))
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy_pool.access"]
    assert any(f"INTERCEPTED-GET https://{SITE}:{env.port}/echo 200 ok" in line for line in lines), lines


async def test_sticky_session_and_username_routing_inside(env):
    """The CONNECT's username (session-...) and an X-Proxy-Pool-Session header inside both hold one exit."""
    import base64

    token = base64.b64encode(b"session-abc:x").decode()
    async with env.gateway():
        reader, writer = await session(env, headers=f"Proxy-Authorization: Basic {token}\r\n")
        assert len({peer_of((await get(reader, writer))[2]) for _ in range(4)}) == 1
        writer.close()
        reader, writer = await session(env)
        assert len({peer_of((await get(reader, writer, headers="X-Proxy-Pool-Session: s9\r\n"))[2]) for _ in range(4)}) == 1
        writer.close()


async def test_ban_answer_retried_on_another_upstream(env):
    """retry_on_status: the 403 from the banned exit is held back, the request goes out again elsewhere."""
    async with env.gateway(retry_on_status=[403]):
        reader, writer = await session(env)
        for _ in range(3):
            status, _, body = await get(reader, writer, "/banned")
            assert status == 200 and peer_of(body) == "127.0.0.3"
        writer.close()


async def test_a_dead_upstream_is_failed_over_inside_the_session(env):
    """A third upstream refuses connections: requests inside the session that pick it move on to a live one
    before their first byte; the client sees only answers."""
    async with env.gateway(dead=f"http://127.0.0.1:{closed_port()}"):
        reader, writer = await session(env)
        peers = [peer_of((await get(reader, writer))[2]) for _ in range(6)]
        assert set(peers) == {"127.0.0.2", "127.0.0.3"}
        assert env.metrics is not None and env.metrics._failures["refused"]._value.get() >= 1  # noqa: SLF001  (it was tried)
        writer.close()


async def test_untrusted_site_is_a_502_with_the_reason(env):
    """intercept_verify = true (the system store): the test CA's site is not trusted: 502, one line;
    intercept_verify = false lets the same site through (the operator said so)."""
    async with env.gateway(intercept_verify=True):
        reader, writer = await session(env)
        status, _, body = await get(reader, writer)
        assert status == 502
        assert body.decode().startswith("site certificate not trusted: ") and body.count(b"\n") == 1
        writer.close()
    async with env.gateway(intercept_verify=False):
        reader, writer = await session(env)
        assert (await get(reader, writer))[0] == 200
        writer.close()


async def test_websocket_inside_is_relayed_raw_on_its_upstream(env, caplog):
    """An Upgrade inside the session: relayed raw on its upstream, both ways, closed without a warning."""
    caplog.set_level(logging.WARNING)
    async with env.gateway(), aiohttp.ClientSession() as client:
        host, port = env.intercept
        async with client.ws_connect(
            f"wss://127.0.0.1:{env.port}/ws", proxy=f"http://{host}:{port}", ssl=env.client_context()
        ) as ws:
            await ws.send_str("hello")
            reply = await asyncio.wait_for(ws.receive_str(), 10)
            assert reply.endswith(" hello") and reply.split()[0] in ("127.0.0.2", "127.0.0.3")
        await eventually(lambda: settled(env))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_bypass_main_port_and_non_tls_bytes_are_never_intercepted(env):
    """A bypassed host, and any CONNECT on the main port, reach the origin's own certificate end to end;
    plain bytes after an interception-port CONNECT are relayed raw."""
    site_context = ssl.create_default_context(cafile=str(env.bundle))
    async with env.gateway(intercept_bypass=["127.0.0.*"]) as server:
        for address in (env.intercept, server.address):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(f"CONNECT 127.0.0.1:{env.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(writer.start_tls(site_context, server_hostname=SITE), 10)
            issuer = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True)).issuer
            assert issuer != env.ca.cert.subject
            assert (await get(reader, writer))[0] == 200
            writer.close()
    plain = TestServer(origin_app(), host="127.0.0.1")
    await plain.start_server()
    try:
        async with env.gateway():
            reader, writer = await connect(env, f"127.0.0.1:{plain.port}")
            writer.write(b"GET /echo HTTP/1.1\r\nHost: plain\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer.startswith(b"HTTP/1.1 200") and b'"peer": "127.0.0.' in answer
            writer.close()
    finally:
        await plain.close()


async def test_socks5_client_on_the_interception_port_is_intercepted(env):
    async with env.gateway():
        reader, writer, reply = await socks5_connect(env.intercept, "127.0.0.1", env.port)
        assert reply[1] == 0
        await asyncio.wait_for(writer.start_tls(env.client_context(), server_hostname=SITE), 10)
        peers = {peer_of((await get(reader, writer))[2]) for _ in range(4)}
        assert peers == {"127.0.0.2", "127.0.0.3"}
        writer.close()


# hostile input ----------------------------------------------------------------------------------
def client_hello(sni: bytes | None) -> bytes:
    """A ClientHello record (TLS 1.2 framing) with an optional server_name of any size."""
    extensions = b""
    if sni is not None:
        entry = b"\x00" + struct.pack("!H", len(sni)) + sni
        data = struct.pack("!H", len(entry)) + entry
        extensions += struct.pack("!HH", 0, len(data)) + data
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    records = b""
    for i in range(0, len(handshake), 1 << 14):
        piece = handshake[i : i + (1 << 14)]
        records += b"\x16\x03\x01" + struct.pack("!H", len(piece)) + piece
    return records


def real_client_hello(name: str) -> bytes:
    """The first flight of a real TLS client (OpenSSL's), for ``name``."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def half_closed_session(env: Env) -> None:
    """A request, then the client's close_notify while the TCP connection stays open (a blocking client)."""
    with socket.create_connection(env.intercept, timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{env.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)
        tls = env.client_context().wrap_socket(sock, server_hostname=SITE)
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.unwrap()  # close_notify; the gateway answers or closes, within the socket's timeout
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass


async def closed_by_gateway(reader: asyncio.StreamReader) -> bytes:
    """What came before the gateway closed (a reset, when our unread bytes were still in its buffer)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


async def test_hostile_client_hellos_end_cleanly(env, caplog):
    """A 64 KiB SNI, a ClientHello dribbled past head_timeout, a client that never finishes its handshake, a
    half-closed TLS session, an HTTP/2 preface: each is closed (or answered 400), slots and fds go back; the
    failed ClientHellos and handshakes have their access-log lines."""
    caplog.set_level(logging.INFO, "proxy_pool.access")
    async with env.gateway(head_timeout=0.5, access_log=True):
        baseline = fds()
        reader, writer = await connect(env)
        writer.write(client_hello(b"a" * 65500))  # a 64 KiB server name: the length fields allow no more
        assert await closed_by_gateway(reader) == b""
        writer.close()

        reader, writer = await connect(env)
        hello = real_client_hello("slow.example")
        for i in range(len(hello)):  # dribbled a byte at a time: head_timeout (from the CONNECT) still ends it
            if writer.transport.is_closing() or reader.at_eof():
                break
            writer.write(hello[i : i + 1])
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), 0.1)
        assert i < len(hello) - 1 and await closed_by_gateway(reader) == b""
        writer.close()

        reader, writer = await connect(env)
        writer.write(real_client_hello("stuck.example"))  # a ServerHello comes; the client never answers it
        assert (await asyncio.wait_for(reader.read(1), 10)) == b"\x16"
        await closed_by_gateway(reader)  # the handshake's time is head_timeout's: then the close
        writer.close()

        await asyncio.to_thread(half_closed_session, env)

        reader, writer = await session(env)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = await closed_by_gateway(reader)
        assert answer.startswith(b"HTTP/1.1 400") and b"HTTP/2" in answer
        writer.close()

        await eventually(lambda: settled(env), lambda: repr(env.server._clients))  # noqa: SLF001
        lines = [r.getMessage() for r in caplog.records if r.name == "proxy_pool.access"]
        assert any("INTERCEPTED-CONNECT" in line and "bad_request" in line for line in lines), lines
        assert any(f"INTERCEPTED-CONNECT stuck.example:{env.port}" in line and "timeout" in line for line in lines), lines
        env.server.close_idle_upstreams()  # a kept-alive upstream connection is no leak  # type: ignore[union-attr]
        await eventually(lambda: fds() <= baseline, lambda: f"{fds()} fds, {baseline} before")


async def test_no_sni_and_ip_literal_get_a_leaf_for_what_was_asked(env):
    """No SNI: the leaf names the CONNECT host (an IP SAN for an address); an IP literal in SNI likewise."""
    async with env.gateway():
        for sni in (None, "127.0.0.1"):
            reader, writer = await session(env, sni=sni)
            leaf = x509.load_der_x509_certificate(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
            ips = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
            assert [str(ip) for ip in ips] == ["127.0.0.1"]
            assert (await get(reader, writer))[0] == 200
            writer.close()


def long_chain(tmp: Path, length: int) -> ssl.SSLContext:
    """A server context presenting a chain of ``length`` certificates (each signed by the next key)."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    pems = []
    for i in range(length):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"link {i}")])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"link {i + 1}")])
        builder = (
            x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
            .serial_number(i + 1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        )  # fmt: skip
        if i == 0:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SITE)]), critical=False)
        pems.append(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    chain = tmp / "chain.pem"
    chain.write_bytes(b"".join(pems) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(chain))
    return context


async def test_site_sending_500_certificates_is_a_502(env):
    """A site whose chain is 500 certificates long: the TLS to it fails, the client gets a 502, nothing hangs."""
    context = long_chain(env.tmp, 500)
    chained = TestServer(origin_app(), host="127.0.0.1")
    await chained.start_server(ssl=context)
    try:
        async with env.gateway(max_retries=1):
            reader, writer = await connect(env, f"127.0.0.1:{chained.port}")
            await asyncio.wait_for(writer.start_tls(env.client_context(), server_hostname=SITE), 10)
            status, _, body = await get(reader, writer)
            assert status == 502, body
            writer.close()
            await eventually(lambda: settled(env))
    finally:
        await chained.close()


async def test_client_renegotiation_is_refused(env):
    """openssl s_client asks for a TLS 1.2 renegotiation inside the intercepted session: refused (the
    session ends), and the slots go back."""
    async with env.gateway():
        host, port = env.intercept
        done = await asyncio.to_thread(
            subprocess.run,
            ["openssl", "s_client", "-proxy", f"{host}:{port}", "-connect", f"127.0.0.1:{env.port}",
             "-servername", SITE, "-tls1_2", "-CAfile", str(env.ca_file), "-verify_return_error"],
            input=b"R\n", capture_output=True, timeout=30,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert b"Verify return code: 0 (ok)" in out
        assert b"RENEGOTIATING" in out
        assert b"no renegotiation" in out, out[-2000:]  # the gateway's alert, as OpenSSL names it
        await eventually(lambda: settled(env))


def test_on_uvloop_too(tmp_path):
    """serve runs on uvloop where it is installed, whose own TLS protocol then terminates the client's
    session: one kept-alive session sees both exits, a stalled handshake ends, the slots go back."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        site_ca = trustme.CA()
        bundle = tmp_path / "site-ca.pem"
        site_ca.cert_pem.write_to_path(str(bundle))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        site_ca.issue_cert("127.0.0.1", SITE).configure_cert(context)
        origin = TestServer(site_app(), host="127.0.0.1")
        await origin.start_server(ssl=context)
        ups = [await start_pproxy("127.0.0.2", "http"), await start_pproxy("127.0.0.3", "socks5")]
        ca = ensure_ca(Settings(storage={"path": str(tmp_path / "pool.db")}))
        ca_file = tmp_path / "proxy-pool-ca.pem"
        ca_file.write_bytes(ca.pem)
        env = Env(tmp_path, site_ca, bundle, origin, ups, ca, ca_file)
        try:
            async with env.gateway(head_timeout=0.5):
                reader, writer = await session(env)
                assert type(writer.transport).__module__.startswith("uvloop")
                assert {peer_of((await get(reader, writer))[2]) for _ in range(4)} == {"127.0.0.2", "127.0.0.3"}
                writer.close()
                reader, writer = await connect(env)
                writer.write(real_client_hello("stuck.example"))
                assert (await asyncio.wait_for(reader.read(1), 10)) == b"\x16"
                await closed_by_gateway(reader)
                writer.close()
                await eventually(lambda: settled(env), lambda: repr(env.server._clients))  # noqa: SLF001
        finally:
            for up in ups:
                await up.stop()
            await origin.close()

    uvloop.run(scenario())


async def test_silent_intercepted_connects_are_evicted_for_a_newcomer(env):
    """max_connections reached by CONNECTs that never send their ClientHello: a newcomer gets a slot, the
    oldest silent one is closed, and every slot comes back."""
    async with env.gateway(max_connections=2, head_timeout=30):
        silent = [await connect(env) for _ in range(2)]
        reader, writer = await session(env)
        assert (await get(reader, writer))[0] == 200
        assert await closed_by_gateway(silent[0][0]) == b""
        writer.close()
        for _, w in silent:
            w.close()
        await eventually(lambda: settled(env), lambda: repr(env.server._clients))  # noqa: SLF001
