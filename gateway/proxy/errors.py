"""The gateway's errors: one root, each leaf carrying what the server needs to answer.

``BadRequest`` is the client's fault and carries the status of our own answer (400, 408, 431, 505).
``BadResponse`` and ``IncompleteBody`` are faults seen on a stream; the server maps them (502 /
close).  The server turns these into responses in one place.
"""

from __future__ import annotations

__all__ = ["BadRequest", "BadResponse", "GatewayError", "IncompleteBody", "OriginFormRequest"]


class GatewayError(Exception):
    """Root of the gateway's errors."""


class BadRequest(GatewayError):
    """The client sent something we refuse; ``status`` and one-line ``message`` form the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


class OriginFormRequest(BadRequest):
    """``GET / HTTP/1.1`` sent to the proxy port: a browser or curl pointed at us as if we were a site."""

    def __init__(self) -> None:
        super().__init__(400, "this is a proxy: send absolute-form requests (GET http://host/...) or CONNECT")


class BadResponse(GatewayError):
    """The upstream sent a malformed response head or body framing (the client gets 502 or a close)."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IncompleteBody(GatewayError, ConnectionError):
    """A body ended (EOF) before its framing said it would."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
