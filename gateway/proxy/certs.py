"""proxy-pool's interception CA and the leaf certificates it mints (mitmproxy ``certs.py``'s shape).

One CA: ``gateway.intercept_ca`` (certificate and key in one PEM file), else generated at first need
beside the database (``DB.ca.pem``; its key in ``DB.ca-key.pem``, mode 0600, reused after).  The key is
a secret like a password: it is read once, kept in memory, and never printed, logged or served --
``CertificateAuthority.pem`` is the certificate alone, re-serialised from the parsed certificate.

Leaves: one per name the client asked for (its SNI, else its CONNECT host; an address gets an IP SAN),
ECDSA P-256, valid a few days, all sharing one in-memory key (so minting is one signature), each wrapped
in its own server ``SSLContext`` (ALPN ``http/1.1`` only, no renegotiation).  ``LeafStore`` keeps the
contexts in a bounded LRU and mints off the event loop (a worker thread), once per name however many
clients ask at once.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config import ConfigError, Settings
from pool.dbfiles import local_database, sibling

__all__ = ["CertificateAuthority", "LeafStore", "ca_files", "ensure_ca", "load_ca"]

_CA_DAYS = 3650
_LEAF_DAYS = 4  # short-lived: a leaf is re-minted once a day (see LeafStore)
_LEAF_REUSE = datetime.timedelta(days=1)
_SKEW = datetime.timedelta(hours=1)  # not_before in the past: clients whose clocks run a little late
_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, eq=False)
class CertificateAuthority:
    """The CA certificate and its key (``repr`` never shows the key)."""

    cert: x509.Certificate
    key: _PrivateKey
    source: str  # where it came from (a path), for log lines

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.cert.subject.rfc4514_string()} from {self.source}>"

    @property
    def pem(self) -> bytes:
        """The CA certificate alone, PEM: what clients are told to trust."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


def ca_files(settings: Settings) -> tuple[Path, Path] | None:
    """Where a generated CA lives (certificate, key), beside the database; None when it is not a local file."""
    database = local_database(settings.storage)
    if database is None:
        return None
    database = database.absolute()
    return sibling(database, ".ca.pem"), sibling(database, ".ca-key.pem")


def ensure_ca(settings: Settings) -> CertificateAuthority:
    """The CA to mint with: the configured one, else the generated one (generated now if there is none).
    Raises ``ConfigError`` with one line for an unreadable or unusable file."""
    configured = settings.gateway.intercept_ca
    if configured:
        return load_ca(Path(configured))
    files = ca_files(settings)
    if files is None:
        raise ConfigError(
            "gateway.intercept_ca: required when storage is not a local file (nowhere to keep a generated CA)"
        )
    cert_path, key_path = files
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = sibling(cert_path, ".lock")
    with open(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), "r+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serve --workers N: one process generates, the others read it
        if cert_path.exists() or key_path.exists():
            return _load_pair(cert_path, key_path)
        ca = _generate_ca()
        _write_private(key_path, ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        _write_public(cert_path, ca.pem)
        return CertificateAuthority(ca.cert, ca.key, str(cert_path))


def load_ca(path: Path) -> CertificateAuthority:
    """A CA from one PEM file holding its certificate and its key."""
    data = _read(path, "gateway.intercept_ca")
    return _parse(data, data, str(path), "gateway.intercept_ca")


def _load_pair(cert_path: Path, key_path: Path) -> CertificateAuthority:
    return _parse(_read(cert_path, "CA certificate"), _read(key_path, "CA key"), str(cert_path), str(cert_path))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None


def _parse(cert_data: bytes, key_data: bytes, source: str, what: str) -> CertificateAuthority:
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise ConfigError(f"{what}: no PEM certificate in {source}") from None
    key_pem = _key_block(key_data)
    if key_pem is None:
        raise ConfigError(f"{what}: no PEM private key in {source} (the certificate and its key go in one file)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # never the key's text in the message
        raise ConfigError(f"{what}: the private key in {source} cannot be read (encrypted keys are not supported)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{what}: the key in {source} must be an EC or RSA key")
    public = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != public:
        raise ConfigError(f"{what}: the key in {source} does not belong to its certificate")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{what}: the certificate in {source} is not a CA certificate (basicConstraints CA:TRUE)")
    return CertificateAuthority(cert, key, source)


def _key_block(data: bytes) -> bytes | None:
    start = data.find(b"-----BEGIN ")
    while start >= 0:
        line_end = data.find(b"\n", start)
        if b"PRIVATE KEY-----" in data[start : line_end if line_end >= 0 else len(data)]:
            end = data.find(b"-----END ", start)
            end = data.find(b"-----", end + 9) if end >= 0 else -1
            return data[start : end + 5] + b"\n" if end >= 0 else None
        start = data.find(b"-----BEGIN ", start + 1)
    return None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _generate_ca() -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "proxy-pool interception CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "proxy-pool"),
    ])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key, "generated")


class LeafStore:
    """Server contexts per name, minted by ``ca``: a bounded LRU, filled off the event loop."""

    def __init__(self, ca: CertificateAuthority, size: int = 1024) -> None:
        self.ca = ca
        self.size = size
        self._key = ec.generate_private_key(ec.SECP256R1())  # every leaf's key: in memory only
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._ca_pem = ca.pem
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key())  # type: ignore[arg-type]
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._minting: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self.minted = 0  # leaves minted so far (tests, the bench)

    def __repr__(self) -> str:
        return f"<LeafStore {len(self._contexts)}/{self.size} minted={self.minted}>"

    def cached(self, name: str) -> ssl.SSLContext | None:
        """The context for ``name`` when one is cached and fresh (no minting, no await)."""
        found = self._contexts.get(name)
        if found is None or _now() - found[1] > _LEAF_REUSE:
            return None
        self._contexts.move_to_end(name)
        return found[0]

    async def context(self, name: str) -> ssl.SSLContext:
        """The server context presenting a leaf for ``name`` (a host name or an address, as asked)."""
        ctx = self.cached(name)
        if ctx is not None:
            return ctx
        pending = self._minting.get(name)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, self.mint, name)
            self._minting[name] = pending
            try:
                ctx = await pending
            finally:
                del self._minting[name]
            self._contexts[name] = (ctx, _now())
            self._contexts.move_to_end(name)
            while len(self._contexts) > self.size:
                self._contexts.popitem(last=False)
            return ctx
        return await asyncio.shield(pending)

    def mint(self, name: str) -> ssl.SSLContext:
        """A leaf for ``name`` and the server context presenting it (runs in a worker thread)."""
        chain = self.leaf_pem(name) + self._ca_pem
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        ctx.set_alpn_protocols(["http/1.1"])
        _load_chain(ctx, chain, self._key_pem)
        self.minted += 1
        return ctx

    def leaf_pem(self, name: str) -> bytes:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        now = _now()
        public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self.ca.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(min(now + datetime.timedelta(days=_LEAF_DAYS), self.ca.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def _load_chain(ctx: ssl.SSLContext, chain: bytes, key: bytes) -> None:
    """``load_cert_chain`` reads files only: an anonymous in-memory file (memfd) where there is one,
    else a private temporary file removed at once (the leaf key never rests on a disk)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("proxy-pool-leaf", os.MFD_CLOEXEC)
        try:
            data = memoryview(chain + key)
            while data:
                data = data[os.write(fd, data) :]
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as folder:  # pragma: no cover (not Linux)
        path = os.path.join(folder, "leaf.pem")
        _write_private(Path(path), chain + key)
        ctx.load_cert_chain(path)
