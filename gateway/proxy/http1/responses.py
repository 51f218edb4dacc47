"""Response heads: parse what an upstream answers, build what the client gets, and our own answers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.proxy.errors import BadResponse
from gateway.proxy.http1.grammar import (
    _bad_response,
    _codings,
    _content_length,
    _field_lines_error,
    Framing,
    _NEVER_CONNECTION_OPTION,
    _POOL_PREFIX,
    REASONS,
    _RESPONSE_DROP,
    _RESPONSE_FIELD_LINES,
    _RESPONSE_SPECIAL,
    _STATUS_LINE,
    _strip_leading_crlf,
    _TOKEN,
    _tokens,
    binds_connection,
)


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head.  ``keep_alive`` is what the upstream's headers allow; a response
    framed ``UNTIL_CLOSE`` ends the connection whatever they say."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    connection_tokens: tuple[str, ...] = ()
    transfer_codings: tuple[str, ...] = ()


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse a response head; ``BadResponse`` on anything a strict client would refuse."""
    if data[:2] == b"\r\n":
        data = _strip_leading_crlf(data)
    if data[-4:] != b"\r\n\r\n":
        raise BadResponse("response head does not end with an empty line (CRLF CRLF)")
    text = data.decode("latin-1")
    end = text.index("\r\n")
    m = _STATUS_LINE.fullmatch(text, 0, end)
    if m is None:
        raise BadResponse(f"invalid status line {text[: min(end, 60)]!r}")
    major, minor, code, reason = m.groups()
    if major != "1" or (minor != "1" and minor != "0"):
        raise BadResponse(f"unsupported HTTP version {major}.{minor} in the response")
    status = int(code)
    if status < 100 or status > 599:
        raise BadResponse(f"invalid status code {status}")
    version = "HTTP/1.1" if minor == "1" else "HTTP/1.0"

    start = end + 2
    stop = len(text) - 2
    headers: list[tuple[str, str]] = _RESPONSE_FIELD_LINES.findall(text, start, stop)
    if len(headers) != text.count("\n", start, stop):
        raise _field_lines_error(text[start:stop], _bad_response)

    content_length: int | None = None
    codings: list[str] | None = None
    connection: tuple[str, ...] = ()
    for name, value in headers:
        lname = name.lower()
        if lname not in _RESPONSE_SPECIAL:
            continue
        if lname == "content-length":
            # RFC 9112 6.3 (5): identical repeats ("42, 42" or two lines) are one length.
            for item in value.split(","):
                n = _content_length(item.strip(), _bad_response)
                if content_length is not None and n != content_length:
                    raise BadResponse("differing Content-Length values in the response")
                content_length = n
        elif lname == "transfer-encoding":
            codings = _codings(value, codings, _bad_response)
        else:
            connection += _tokens(value)

    chunked = False
    if codings is not None:
        if content_length is not None:
            raise BadResponse("both Content-Length and Transfer-Encoding in the response")
        if "chunked" in codings[:-1]:
            raise BadResponse("Transfer-Encoding applies chunked more than once")
        if "identity" in codings:
            raise BadResponse("Transfer-Encoding identity in the response (not a transfer coding, RFC 9112)")
        chunked = bool(codings) and codings[-1] == "chunked"
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    return ResponseHead(
        version,
        status,
        reason or "",
        headers,
        content_length,
        chunked,
        keep_alive,
        connection,
        tuple(codings) if codings else (),
    )


def challenges_connection(resp: ResponseHead) -> bool:
    """A 401 inviting a connection-bound handshake (``WWW-Authenticate: NTLM`` or ``Negotiate``)."""
    return resp.status == 401 and any(
        name.lower() == "www-authenticate" and binds_connection(value) for name, value in resp.headers
    )


def response_body_framing(resp: ResponseHead, request_method: str) -> Framing:
    """RFC 9112 6.3: how the response body to ``request_method`` ends."""
    status = resp.status
    if request_method == "HEAD" or status < 200 or status == 204 or status == 304:
        return Framing.NONE
    if request_method == "CONNECT" and status < 300:
        return Framing.NONE  # a tunnel follows the head
    if resp.chunked:
        return Framing.CHUNKED
    if resp.transfer_codings:
        return Framing.UNTIL_CLOSE  # a final coding other than chunked: ends at close
    if resp.content_length is not None:
        return Framing.LENGTH(resp.content_length)
    return Framing.UNTIL_CLOSE


def forward_response_head(
    resp: ResponseHead,
    *,
    keep_alive: bool,
    extra: Iterable[tuple[str, str]] = (),
    dechunk: bool = False,
) -> bytes:
    """The head to send the client: HTTP/1.1, hop-by-hop and ``X-Proxy-Pool-*`` headers removed,
    then ``extra``, then ``Connection: keep-alive`` or ``close`` (none on a 1xx).

    ``dechunk=True`` is for HTTP/1.0 clients, which cannot read chunked bodies: chunked is removed
    from Transfer-Encoding, the body must then be sent de-chunked (``BodyTracker.feed(collect=...)``) and
    the connection closed (``keep_alive`` is forced off).
    """
    status = resp.status
    parts = ["HTTP/1.1 ", str(status), " ", resp.reason or REASONS.get(status, ""), "\r\n"]
    drop = _RESPONSE_DROP
    if resp.connection_tokens:
        drop = drop.union(t for t in resp.connection_tokens if t not in _NEVER_CONNECTION_OPTION)
    if status == 101:
        drop = drop - {"upgrade"}
    for name, value in resp.headers:
        lname = name.lower()
        if lname in drop or lname.startswith(_POOL_PREFIX):
            continue
        if dechunk and lname == "transfer-encoding":
            rest = [c for c in resp.transfer_codings if c != "chunked"]
            if rest:
                parts += (name, ": ", ", ".join(rest), "\r\n")
            continue
        parts += (name, ": ", value, "\r\n")
    for name, value in extra:
        parts += (name, ": ", value, "\r\n")
    if status == 101:
        parts.append("Connection: upgrade\r\n")
    elif status >= 200:
        parts.append("Connection: keep-alive\r\n" if keep_alive and not dechunk else "Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


# ---------------------------------------------------------------------------------------------
# Answers of our own
# ---------------------------------------------------------------------------------------------


def simple_response(
    status: int, message: str, *, headers: Iterable[tuple[str, str]] = (), close: bool = True
) -> bytes:
    """A complete response with a one-line text/plain body (``message`` + "\\n")."""
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
    parts = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n",
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n",
    ]
    for name, value in headers:
        if "\r" in value or "\n" in value or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header for our own response: {name!r}")
        parts += (name, ": ", value, "\r\n")
    parts.append("Connection: close\r\n\r\n" if close else "Connection: keep-alive\r\n\r\n")
    return "".join(parts).encode("latin-1") + body
