"""The checker's own TLS judge: a TLS endpoint on loopback with a certificate made at start and pinned.

The ``tls_tunnel`` check opens CONNECT through a proxy to a TLS endpoint and verifies the certificate
it meets there.  Public endpoints (the HTTPS form of a judge) are verified against the system's CAs;
this one needs no internet: its certificate is self-signed, generated in memory at start (an EC P-256
key, never written anywhere but a private temporary file that ``ssl`` loads and that is removed at
once), and the checker's client context trusts exactly that certificate and nothing else.  A proxy
that answers the CONNECT itself can only show a certificate of its own: a man in the middle.

Certificates are made with ``cryptography`` (PyCA; what ``trustme``, a test-only dependency, is
built on): a well-kept runtime library instead of shelling out to ``openssl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugins.protocols import TlsEndpoint

__all__ = ["SERVER_NAME", "TlsJudge", "self_signed"]

SERVER_NAME = "tls-judge.proxy-pool.invalid"  # a name nobody else can hold a certificate for
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\nproxy-pool TLS judge\n"


def self_signed(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``SERVER_NAME`` and ``host``, valid for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy-pool TLS judge")])
    now = datetime.now(UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME)]
    with contextlib.suppress(ValueError):
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, crl_sign=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TlsJudge:
    """``judge = await TlsJudge.start("127.0.0.1")``; ``judge.endpoint`` is what the check dials."""

    def __init__(self, host: str, cert_pem: bytes, server: asyncio.AbstractServer) -> None:
        self.host = host
        self.cert_pem = cert_pem
        self._server = server
        self.port: int = server.sockets[0].getsockname()[1]
        self.handshakes = 0
        # trusts exactly this certificate: cadata replaces the system store in create_default_context
        context = ssl.create_default_context(cadata=cert_pem.decode("ascii"))
        self.endpoint = TlsEndpoint(host, self.port, context, SERVER_NAME, f"the checker's TLS judge {host}:{self.port}")

    @classmethod
    async def start(cls, host: str = "127.0.0.1") -> TlsJudge:
        cert_pem, key_pem = self_signed(host)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="proxy-pool-tls-") as tmp:  # mode 0700, gone at once
            pem = Path(tmp) / "judge.pem"
            pem.write_bytes(cert_pem + key_pem)
            server_ctx.load_cert_chain(pem)
        judge: TlsJudge | None = None

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if judge is not None:
                judge.handshakes += 1
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                writer.write(_ANSWER)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, host, 0, ssl=server_ctx, ssl_handshake_timeout=10)
        judge = cls(host, cert_pem, server)
        return judge

    async def stop(self) -> None:
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)
