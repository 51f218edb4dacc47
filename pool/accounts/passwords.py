"""Passwords: generated once (shown once), stored as a salted scrypt hash, checked in constant time.

Pure functions: the slow hash runs wherever the caller puts it (a worker thread, never the event loop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["generate_password", "hash_password", "verify_password"]

# scrypt: 16 MiB of memory per hash (n * r * 128 bytes), the cost the Python docs suggest for logins
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def generate_password() -> str:
    """192 random bits, URL-safe: no ':' so it fits in ``user:password``."""
    return secrets.token_urlsafe(24)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64): self-describing, costs can change later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_LEN,
        maxmem=_SCRYPT_MAXMEM,
    )
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Recompute the hash with the stored salt and costs; constant-time comparison."""
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        costs = dict(part.split("=", 1) for part in params.split(","))
        n, r, p = int(costs["n"]), int(costs["r"]), int(costs["p"])
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except (ValueError, KeyError):
        return False
    maxmem = max(_SCRYPT_MAXMEM, 256 * n * r)
    actual = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=maxmem)
    return hmac.compare_digest(actual, expected)
