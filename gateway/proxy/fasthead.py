"""Response heads in their everyday shape, forwarded by slicing instead of parsing and rebuilding.

Nearly every answer a proxy relays looks alike: ``HTTP/1.1 200 OK``, a dozen ``Name: value`` lines
with one space after the colon, a Content-Length or ``Transfer-Encoding: chunked``, maybe a
``Connection`` line.  For such a head, what ``http1.forward_response_head`` would build is the
upstream's own bytes with the Connection line cut out and ours appended, so the gateway slices it.

One compiled pattern decides whether a head has that shape; a second finds the few fields that
matter to a proxy.  Anything else (another version, a 1xx, whitespace the strict parser would strip,
a hop-by-hop field other than Connection, an ``X-Proxy-Pool-*`` field, a list-valued
Content-Length) answers ``None`` and the strict parser in ``gateway.proxy.http1`` decides.  The two must
agree byte for byte whenever this module answers: tests/unit/test_fasthead.py checks that with
hypothesis.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from gateway.proxy import http1
from gateway.proxy.http1 import FramingKind, grammar

__all__ = ["CLOSE", "KEEP_ALIVE", "PlainResponse", "plain_request", "plain_response"]

# status-line with a reason (an empty one is rebuilt from the status code), 2xx to 5xx only
_STATUS_LINE = rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t \x21-\x7e\x80-\xff]+\r\n"
# field-line exactly as the strict parser would write it back: token ": " value, the value neither
# empty nor starting or ending with whitespace, and free of NUL, CR and LF (http1.response_field_value).
# The last character is checked by a lookbehind and the repeat is possessive (no line is ever given
# back): the same language as http1's pattern, in about 25 % fewer steps of the regex engine.  The
# byte classes are written as the ranges they allow ([\x21-\x7e\x80-\xff] is [^\x00-\x20\x7f] and
# [\x01-\x09\x0b\x0c\x0e-\xff] is [^\x00\r\n] on bytes): the engine tests a range set in one step
# and a negated one item by item, which made this match take 40 % longer.
_FIELD_LINE = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+: [\x21-\x7e\x80-\xff][\x01-\x09\x0b\x0c\x0e-\xff]*(?<![\x00-\x20\x7f])\r\n"
_PLAIN_HEAD = re.compile(_STATUS_LINE + rb"(?:" + _FIELD_LINE + rb")*+\r\n")

# the fields a proxy acts on: framing, and the hop-by-hop set of http1.grammar._RESPONSE_DROP plus our own.
# The CRLF before the name is a literal prefix, so the engine skips from line to line, and the
# lookahead on the first letter turns most lines away before the alternation is tried.
_SPECIAL = re.compile(
    rb"(\r\n(?=[CcTtKkPpUuXx])(?i:(content-length|transfer-encoding|connection|keep-alive|proxy-connection|proxy-authenticate"
    rb"|proxy-authorization|te|trailer|upgrade|x-proxy-pool-[^:]*)): ([^\r]*))"
)
_MAX_LENGTH_DIGITS = 18

KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
CLOSE = b"Connection: close\r\n\r\n"


class PlainResponse(NamedTuple):
    """A recognised head.  The head to send on is ``data[:cut_start] + data[cut_end:fields_end]``
    followed by any extra fields and ``KEEP_ALIVE`` or ``CLOSE``."""

    status: int
    framing: FramingKind
    length: int
    keep_alive: bool  # what the upstream allows for its own connection
    cut_start: int
    cut_end: int
    fields_end: int
    end: int  # where the body starts


_new_tuple = tuple.__new__
_NONE, _CHUNKED, _LENGTH, _UNTIL_CLOSE = FramingKind.NONE, FramingKind.CHUNKED, FramingKind.LENGTH, FramingKind.UNTIL_CLOSE


def plain_response(data: bytes, request_method: str) -> PlainResponse | None:
    """Recognise a complete everyday response head at the start of ``data``, or ``None``."""
    m = _PLAIN_HEAD.match(data)
    if m is None:
        return None
    end = m.end()
    fields_end = end - 2
    length = -1
    chunked = False
    keep_alive = True
    cut = b""
    for line, name, value in _SPECIAL.findall(data, 0, fields_end):
        name = name.lower()
        if name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"connection":
            if cut:
                return None
            option = value.lower()
            if option == b"close":
                keep_alive = False
            elif option != b"keep-alive":
                return None  # an option that names fields to drop: the strict path knows how
            cut = line
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                return None
            chunked = True
        else:
            return None
    if chunked and length >= 0:
        return None
    if request_method == "CONNECT":
        return None  # a tunnel answer: the strict path
    status = int(data[9:12])  # the status line starts "HTTP/1.1 " and has three digits (the pattern)
    if request_method == "HEAD" or status == 204 or status == 304:
        framing = _NONE
    elif chunked:
        framing = _CHUNKED
    elif length > 0:
        framing = _LENGTH
    elif length == 0:
        framing = _NONE
    else:
        framing = _UNTIL_CLOSE
    if cut:
        cut_start = data.find(cut, 0, fields_end)
        cut_end = cut_start + len(cut)
    else:
        cut_start = cut_end = fields_end
    # tuple.__new__ skips the Python-level __new__ a NamedTuple class has (a measurable cost per answer)
    return _new_tuple(PlainResponse, (status, framing, length if length > 0 else 0, keep_alive, cut_start, cut_end, fields_end, end))


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

# request-line with an absolute-form http target on a registered name (no IPv6 literal, no empty
# port), then field lines exactly as http1.forward_request_head writes them back (http1.field_value,
# not empty, one space after the colon)
_PLAIN_REQUEST_LINE = re.compile(
    rb"(" + grammar.token.encode() + rb") ((?i:http)://(" + grammar.reg_name.encode() + rb")(?::([0-9]{1,5}))?"
    rb"([/?][\x21\x22\x24-\x7e]*)?) HTTP/1\.1\r\n"
)
_PLAIN_FIELDS = re.compile(
    rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+: [\x21-\x7e\x80-\xff][\t \x21-\x7e\x80-\xff]*(?<![\t ])\r\n)*+\r\n"
)
_CACHED_FIELDS_MAX = 4096  # bytes of field lines worth remembering (512 of them: at most 2 MiB)
# fields that change what the gateway does with a request (http1.grammar._REQUEST_SPECIAL and _REQUEST_DROP),
# and "close", which Connection: close would make hop-by-hop; Authorization is looked at (a connection-bound
# scheme goes to the strict parser) and kept.  "Au" in the lookahead turns the Accept lines away at once.
_REQUEST_SPECIAL = re.compile(
    rb"(\r\n(?=[CcEeHhKkPpTtUuXx]|[Aa][Uu])(?i:(host|connection|proxy-connection|content-length|transfer-encoding|expect"
    rb"|proxy-authorization|proxy-authenticate|keep-alive|te|trailer|upgrade|close|authorization|x-proxy-pool-[^:]*)): ([^\r]*))"
)


def plain_request(data: bytes) -> http1.RequestHead | None:
    """An everyday request head (``GET http://host/path HTTP/1.1``, no body, no routing fields, no
    connection-bound Authorization (NTLM, Negotiate), at most a plain Connection and the client's
    Proxy-Authorization) parsed into what ``http1.parse_request_head`` returns, with
    ``origin_form`` sliced from the client's bytes; ``None`` for anything else."""
    m = _PLAIN_REQUEST_LINE.match(data)
    if m is None:
        return None
    method, target, host, port_text, path = m.groups()
    if method == b"CONNECT":
        return None
    block = data[m.end() :]
    fields = _plain_fields(block) if len(block) <= _CACHED_FIELDS_MAX else _fields_of(block)
    if fields is None:
        return None
    kept, keep_alive, connection, credentials = fields
    port = 80
    if port_text is not None:
        port = int(port_text)
        if not 0 < port < 65536:
            return None
    host = host.lower()
    authority = host if port == 80 else b"%s:%d" % (host, port)
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    origin_form = b"".join(
        (method, b" ", path, b" HTTP/1.1\r\nHost: ", authority, kept, b"\r\nConnection: keep-alive\r\n\r\n")
    )
    head = http1.PlainRequestHead(
        method.decode(), target.decode(), host.decode(), port, path.decode(), keep_alive, connection, origin_form,
        block[:-2],
    )
    if credentials is not None:
        head.proxy_authorization = credentials
    return head


def _fields_of(block: bytes) -> tuple[bytes, bool, tuple[str, ...], str | None] | None:
    """The field lines of a plain request (``block``: from the first line to the empty one): what goes
    on (``"\r\nName: value"`` per line, without Host, Connection and Proxy-Authorization), the client's
    keep-alive, its Connection option and its credentials; ``None`` when they are not those of a plain
    request."""
    if _PLAIN_FIELDS.fullmatch(block) is None:
        return None
    lines = b"\r\n" + block[:-4]  # "\r\nName: value" per line, no trailing CRLF
    kept = lines
    keep_alive = True
    host_seen = False
    connection: tuple[str, ...] = ()
    proxy_connection = False
    credentials: str | None = None
    for line, name, value in _REQUEST_SPECIAL.findall(lines + b"\r\n"):
        name = name.lower()
        if name == b"host":
            if host_seen:
                return None
            host_seen = True
        elif name == b"connection" or name == b"proxy-connection":
            option = value.lower()
            if option == b"close":
                keep_alive = False
            elif option != b"keep-alive":
                return None
            if name == b"connection":
                if connection:
                    return None
                connection = ("close",) if option == b"close" else ("keep-alive",)
            else:
                if proxy_connection:
                    return None
                proxy_connection = True
        elif name == b"proxy-authorization":  # a gateway user's: checked by admission, never sent on
            if credentials is not None:
                return None
            credentials = value.decode("latin-1")
        elif name == b"authorization":
            if http1.binds_connection(value.decode("latin-1")):
                return None  # NTLM, Negotiate: the strict parser marks the head binds_connection
            continue  # forwarded as it is
        else:
            return None
        kept = kept.replace(line, b"", 1)
    return (kept if block != b"\r\n" else b""), keep_alive, connection, credentials


# A keep-alive client sends the same field lines request after request (a scraper's fixed set, a
# browser's for one kind of resource): what they say is kept, keyed by their exact bytes, so a
# repeated block costs a dictionary lookup instead of two passes of the regex engine.
_plain_fields = functools.lru_cache(maxsize=512)(_fields_of)
