"""What a user may type for a user: names, credit amounts and per-user limits, each checked once here
(for the CLI and the admin API alike), raising ``InvalidInputError`` with one line saying why."""

from __future__ import annotations

import math
import re

from pool.errors import InvalidInputError

__all__ = ["MAX_AMOUNT", "MAX_LIMIT", "ROUTING_KEYWORDS", "parse_amount", "parse_limits", "validate_name"]

ROUTING_KEYWORDS = frozenset({"country", "session", "protocol", "anonymity"})
_NAME = re.compile(r"^[A-Za-z0-9_.@+]{1,64}$")
MAX_AMOUNT = 10**12  # far below SQLite's 2**63, far above any sensible budget


def validate_name(name: str) -> str:
    """A user name usable in ``NAME-country-de:PASSWORD``; raises InvalidInputError saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError("user name must not be empty")
    if "-" in name:
        raise InvalidInputError("user name must not contain '-' (it separates routing parameters)")
    if ":" in name:
        raise InvalidInputError("user name must not contain ':' (it separates the password)")
    if name.lower() in ROUTING_KEYWORDS:
        keywords = ", ".join(sorted(ROUTING_KEYWORDS))
        raise InvalidInputError(f"user name must not be a routing keyword ({keywords})")
    if not _NAME.match(name):
        raise InvalidInputError("user name: use 1-64 letters, digits, '_', '.', '@' or '+'")
    return name


def parse_amount(value: object, *, what: str = "amount", allow_zero: bool = False) -> int:
    """An integer credit amount from a CLI string or a JSON value; raises InvalidInputError."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
            raise InvalidInputError(f"{what} must be an integer, got {value!r}")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        wanted = "zero or more" if allow_zero else "positive"
        raise InvalidInputError(f"{what} must be {wanted}, got {number}")
    if number > MAX_AMOUNT:
        raise InvalidInputError(f"{what} must be at most {MAX_AMOUNT}, got {number}")
    return number



_LIMITS: dict[str, type] = {"max_connections": int, "max_requests_per_second": float}
MAX_LIMIT = 10**9


def parse_limits(values: dict[str, object]) -> dict[str, int | float | None]:
    """Per-user limits from the CLI or JSON: a positive number (an integer for connections) or None
    (no limit).  Raises InvalidInputError naming the key."""
    out: dict[str, int | float | None] = {}
    for key, value in values.items():
        kind = _LIMITS.get(key)
        if kind is None:
            raise InvalidInputError(f"unknown limit {key!r}: use max_connections or max_requests_per_second")
        if value is None:
            out[key] = None
            continue
        wanted = "a positive integer" if kind is int else "a positive number"
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise InvalidInputError(f"{key} must be {wanted} or null, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"{key} must be {wanted} or null, got {value!r}")
        if value > MAX_LIMIT:
            raise InvalidInputError(f"{key} must be at most {MAX_LIMIT}, got {value!r}")
        out[key] = kind(value)
    return out
