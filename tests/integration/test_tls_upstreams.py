"""``https://`` upstreams: TLS to the proxy itself (pproxy ``http+ssl`` with a test CA), in the gateway
and in the checker; verified by default, a CA file or ``upstream_tls_verify = false`` for self-signed ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from config import Settings
from plugins import CheckContext, Proxy, UpstreamURL
from plugins.builtin.checkers import http_anonymity, tls_handshake
from pool.models import ProxyStatus
from tests.support.judges import running_judge
from tests.support.upstreams import Upstream, start_pproxy, start_tls_pproxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "proxy-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[Upstream]:
    up = await start_tls_pproxy(ca, "127.0.0.2")
    yield up
    await up.stop()


@pytest.fixture
async def plain_upstream() -> AsyncIterator[Upstream]:
    up = await start_pproxy("127.0.0.3", "http")
    yield up
    await up.stop()


def gw(pool) -> str:
    host, port = pool.gateway_address
    return f"http://{host}:{port}"


async def _through(pool, url: str, method: str = "GET", **kw) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, url, proxy=gw(pool), **kw) as resp:
            return resp.status, await resp.text()


async def test_gateway_speaks_tls_to_an_https_upstream(make_pool, tls_upstream, origin, ca_file):
    """Plain GET (callback path), POST (stream path, absolute-form) and CONNECT all leave through the TLS proxy."""
    pool = await make_pool(
        [tls_upstream.url("https")], checker={"upstream_tls_verify": ca_file}, gateway={"allowed_connect_ports": "*"}
    )
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    status, body = await _through(pool, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 200 and '"peer": "127.0.0.2"' in body
    status, body = await _through(pool, f"http://127.0.0.1:{origin.port}/body", "POST", data=b"x" * 70000)
    assert status == 200 and '"size": 70000' in body
    # CONNECT: a raw tunnel to the origin through the TLS proxy
    host, port = pool.gateway_address
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'"peer": "127.0.0.2"' in answer


async def test_self_signed_upstream_is_refused_by_default_and_dead(make_pool, tls_upstream, origin):
    """Verified against the system store by default: the test CA is not in it, so the proxy fails its check."""
    pool = await make_pool([tls_upstream.url("https")])
    await pool.wait_until(lambda: any(p.status is ProxyStatus.DEAD for p in pool.selector.proxies()))
    proxy = next(iter(pool.selector.proxies()))
    await pool.wait_until(lambda: pool.pipeline.checked_total >= 1)
    await pool.pipeline.flush()
    checks = await pool.store.get_checks(proxy.id)
    failed = [c for c in checks if not c.passed]
    assert failed and failed[0].checker == "tls_handshake"
    assert "certificate not trusted" in failed[0].detail


async def test_verify_false_accepts_a_self_signed_upstream(make_pool, tls_upstream, origin):
    """``upstream_tls_verify = false`` accepts any certificate (documented for self-signed proxies)."""
    pool = await make_pool([tls_upstream.url("https")], checker={"upstream_tls_verify": False})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    status, body = await _through(pool, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 200 and '"peer": "127.0.0.2"' in body


async def test_gateway_names_the_tls_failure_in_its_502(tls_upstream, plain_upstream, origin, tmp_path):
    """An upstream that fails TLS after its check (certificate, not TLS at all) gives a 502 that says so."""
    from gateway.proxy.server import GatewayServer
    from pool.models import Proxy as PoolProxy
    from pool.selector import Selector

    settings = Settings(gateway={"listen": "127.0.0.1:0", "max_retries": 0})
    for up, words in ((tls_upstream, "certificate not trusted"), (plain_upstream, "does not speak TLS")):
        selector = Selector()
        selector.load([PoolProxy(1, UpstreamURL.parse(up.url("https")), status=ProxyStatus.ACTIVE)])
        server = GatewayServer(settings, selector)
        host, port = await server.start()
        try:
            for method in ("GET", "POST"):
                async with aiohttp.ClientSession() as client:
                    async with client.request(
                        method, f"http://127.0.0.1:{origin.port}/echo", proxy=f"http://{host}:{port}"
                    ) as resp:
                        text = await resp.text()
                assert resp.status == 502, text
                assert words in text, text
        finally:
            await server.stop()


# the checker ----------------------------------------------------------------------------------


async def test_tls_handshake_check(tls_upstream, plain_upstream, ca_file):
    """Passes with the CA file, fails 'certificate not trusted' without it and 'does not speak TLS' for plain HTTP."""
    async with aiohttp.ClientSession() as client:
        context = CheckContext(http_client=client, judges=[])
        trusting = tls_handshake.create_plugin(Settings(checker={"upstream_tls_verify": ca_file, "timeout": 5}))
        default = tls_handshake.create_plugin(Settings(checker={"timeout": 5}))
        tls_proxy = Proxy(1, UpstreamURL.parse(tls_upstream.url("https")))
        ok = await trusting.check(tls_proxy, context)
        assert ok.passed and "TLSv1" in ok.detail, ok.detail
        untrusted = await default.check(tls_proxy, context)
        assert not untrusted.passed and "certificate not trusted" in untrusted.detail
        not_tls = await trusting.check(Proxy(2, UpstreamURL.parse(plain_upstream.url("https"))), context)
        assert not not_tls.passed and "does not speak TLS" in not_tls.detail, not_tls.detail
        assert trusting.should_skip(Proxy(3, UpstreamURL.parse(plain_upstream.url("http"))))


async def test_anonymity_check_grades_an_https_proxy(tls_upstream, ca_file):
    """The judge is reached through the TLS proxy (absolute-form inside TLS) and the proxy is graded."""
    async with running_judge() as judge, aiohttp.ClientSession() as client:
        checker = http_anonymity.create_plugin(
            Settings(checker={"upstream_tls_verify": ca_file, "timeout": 5, "judges": [judge.json_url]})
        )
        result = await checker.check(
            Proxy(1, UpstreamURL.parse(tls_upstream.url("https"))), CheckContext(http_client=client, judges=[judge.json_url])
        )
    assert result.passed, result.detail
    assert result.metadata.get("exit_ip") == "127.0.0.2" or "127.0.0.2" in str(result.metadata), result.metadata
