"""The interception CA (gateway.proxy.certs): generated once beside the database with its key 0600,
reused, a configured PEM loaded and checked, leaves minted per name (IP SAN for addresses), cached."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from config import ConfigError, Settings
from gateway.proxy.certs import LeafStore, ca_files, ensure_ca, load_ca


def settings(tmp_path, **gateway) -> Settings:
    return Settings(storage={"path": str(tmp_path / "pool.db")}, gateway=gateway)


def test_generated_beside_the_database_key_0600_and_reused(tmp_path):
    """First need generates DB.ca.pem and DB.ca-key.pem (0600); the next load reads the same CA; the
    certificate PEM carries no key."""
    s = settings(tmp_path)
    first = ensure_ca(s)
    cert_path, key_path = ca_files(s)
    assert cert_path == tmp_path / "pool.db.ca.pem" and key_path == tmp_path / "pool.db.ca-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in first.pem and b"PRIVATE KEY" not in cert_path.read_bytes()
    assert b"PRIVATE KEY" in key_path.read_bytes()
    again = ensure_ca(s)
    assert again.cert == first.cert
    assert "PRIVATE" not in repr(again)
    assert again.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_configured_pem_is_loaded_and_checked(tmp_path):
    """gateway.intercept_ca: one PEM with certificate and key; a file without a key, a leaf certificate or
    a key of another certificate is one ConfigError line that never quotes the key."""
    ca = trustme.CA()
    good = tmp_path / "ca.pem"
    good.write_bytes(ca.cert_pem.bytes() + ca.private_key_pem.bytes())
    loaded = ensure_ca(settings(tmp_path, intercept_ca=str(good)))
    assert loaded.pem.strip() == ca.cert_pem.bytes().strip()
    assert not (tmp_path / "pool.db.ca.pem").exists()

    no_key = tmp_path / "nokey.pem"
    no_key.write_bytes(ca.cert_pem.bytes())
    with pytest.raises(ConfigError, match="no PEM private key"):
        load_ca(no_key)
    leaf = ca.issue_cert("leaf.test")
    not_ca = tmp_path / "leaf.pem"
    not_ca.write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    with pytest.raises(ConfigError, match="not a CA certificate"):
        load_ca(not_ca)
    other = trustme.CA()
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(ca.cert_pem.bytes() + other.private_key_pem.bytes())
    with pytest.raises(ConfigError, match="does not belong") as caught:
        load_ca(mixed)
    assert "PRIVATE KEY" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_ca(tmp_path / "missing.pem")


def test_no_local_database_needs_a_configured_ca(tmp_path):
    s = Settings(storage={"url": "postgresql://u@127.0.0.1:1/db"})
    with pytest.raises(ConfigError, match="intercept_ca: required"):
        ensure_ca(s)


async def test_leaves_per_name_ip_san_cached_and_verified_by_a_client(tmp_path):
    """A leaf per name: ECDSA P-256, a DNS SAN for a name and an IP SAN for an address, short-lived, signed
    by the CA (a client trusting the CA completes a handshake for that name); minted once however many ask."""
    ca = ensure_ca(settings(tmp_path))
    store = LeafStore(ca, size=2)
    for name, san in (("shop.example", x509.DNSName("shop.example")), ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))):
        leaf = x509.load_pem_x509_certificate(store.leaf_pem(name))
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == x509.SubjectAlternativeName([san])
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
        assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 5
    contexts = await asyncio.gather(*(store.context("shop.example") for _ in range(5)))
    assert all(c is contexts[0] for c in contexts) and store.minted == 1
    assert store.cached("shop.example") is contexts[0]
    await store.context("a.example")
    await store.context("b.example")
    assert store.cached("shop.example") is None  # bounded LRU: the oldest went

    server_ctx = contexts[0]
    client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="shop.example")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()
    assert client.selected_alpn_protocol() == "http/1.1"  # h2 offered, http/1.1 chosen
