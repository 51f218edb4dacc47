"""HTTP/1.1 on the wire: request and response heads in, heads out, bodies streamed.

The only package of the gateway that knows the wire format (RFC 9110 / RFC 9112).  It is on the hot
path of every request, so a head is decoded once (latin-1: one character per byte, lossless), split
by a handful of precompiled regexes, and kept as a list of ``(name, value)`` tuples; nothing else is
allocated per header.  It is strict the way Squid and h11 are, because a proxy that is lenient where
its upstream is strict is how requests get smuggled:

    >>> head = parse_request_head(b"GET http://example.org/a?b HTTP/1.1\\r\\nHost: example.org\\r\\n\\r\\n")
    >>> head.host, head.port, head.path, head.keep_alive
    ('example.org', 80, '/a?b', True)
    >>> forward_request_head(head, absolute=False)
    b'GET /a?b HTTP/1.1\\r\\nHost: example.org\\r\\n\\r\\n'

The regexes are built from named pieces with the RFC ABNF quoted above each (h11 ``_abnf.py``);
deviations from the ABNF say why.

By concern: ``grammar`` (the ABNF pieces, header semantics, framing), ``requests`` (request heads),
``responses`` (response heads, our own answers), ``bodies`` (finding where a body ends as its bytes
pass).  This module is the one import surface.
"""

from __future__ import annotations

from gateway.proxy.errors import BadRequest, BadResponse, IncompleteBody, OriginFormRequest
from gateway.proxy.http1.bodies import BodyState, BodyTracker
from gateway.proxy.http1.grammar import (
    CONNECT_ESTABLISHED,
    CONTINUE_100,
    IDEMPOTENT,
    REASONS,
    Framing,
    FramingKind,
    binds_connection,
)
from gateway.proxy.http1.requests import (
    PlainRequestHead,
    RequestHead,
    connect_request_head,
    format_authority,
    forward_request_head,
    parse_request_head,
    request_body_framing,
    same_head,
)
from gateway.proxy.http1.responses import (
    ResponseHead,
    challenges_connection,
    forward_response_head,
    parse_response_head,
    response_body_framing,
    simple_response,
)

__all__ = [
    "CONNECT_ESTABLISHED",
    "CONTINUE_100",
    "IDEMPOTENT",
    "REASONS",
    "BadRequest",
    "BadResponse",
    "BodyState",
    "BodyTracker",
    "Framing",
    "FramingKind",
    "IncompleteBody",
    "OriginFormRequest",
    "PlainRequestHead",
    "RequestHead",
    "ResponseHead",
    "binds_connection",
    "challenges_connection",
    "connect_request_head",
    "format_authority",
    "forward_request_head",
    "forward_response_head",
    "parse_request_head",
    "parse_response_head",
    "request_body_framing",
    "response_body_framing",
    "same_head",
    "simple_response",
]
