"""HTTP/1.1 grammar: the RFC 9110 / 9112 ABNF as named regex pieces, header semantics, framing.

Shared by request heads, response heads and bodies (the modules beside this one); the regexes are
built from named pieces with the RFC ABNF quoted above each (h11 ``_abnf.py``); deviations say why.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

from gateway.proxy.errors import BadResponse, GatewayError

# ---------------------------------------------------------------------------------------------
# ABNF pieces (str patterns; heads are matched as latin-1 text, chunk lines as bytes)
# ---------------------------------------------------------------------------------------------

# RFC 9110 5.6.3
#   OWS = *( SP / HTAB )
OWS = r"[ \t]*"

# RFC 9110 5.6.2
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#         / DIGIT / ALPHA
token = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"

# RFC 9110 5.1
#   field-name = token
field_name = token

# RFC 9110 5.5
#   field-value   = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar   = VCHAR / obs-text
#   obs-text      = %x80-FF
# Written so a value can neither start nor end with whitespace: the OWS around it is not part of
# it, so values come out stripped.  Control characters (other than HTAB inside) are refused.
# (One greedy run and a last field-vchar: the same language, and faster in sre than a group
# repeated once per space.)
field_vchar = r"[\x21-\x7e\x80-\xff]"
field_content = rf"{field_vchar}(?:[\t \x21-\x7e\x80-\xff]*{field_vchar})?"
field_value = rf"(?:{field_content})?"

# Responses come from free proxies of every make: h11 #57 found cookies with \x01 in the wild, so
# response values may hold control characters, but never NUL, CR or LF (response splitting).
response_field_value = r"(?:[^\x00-\x20\x7f](?:[^\x00\r\n]*[^\x00-\x20\x7f])?)?"

# RFC 9112 5
#   field-line = field-name ":" OWS field-value OWS
# One line of the header section, its CRLF included.  Matched with MULTILINE over the whole
# section, so ``^`` anchors at each line start; obs-fold (a line starting with SP / HTAB) and a
# space before the colon cannot match (RFC 9112 5.1, 5.2: reject with 400).
field_line = rf"^({field_name}):{OWS}({field_value}){OWS}\r\n"
response_field_line = rf"^({field_name}):{OWS}({response_field_value}){OWS}\r\n"

# RFC 9112 3
#   request-line = method SP request-target SP HTTP-version
#   method       = token
# RFC 9112 2.3
#   HTTP-version = HTTP-name "/" DIGIT "." DIGIT
#   HTTP-name    = %s"HTTP"
# request-target is checked for its form separately; here it is visible ASCII (RFC 3986 has no
# room for obs-text in a URI).
method = token
request_target = r"[\x21-\x7e]+"
http_version = r"HTTP/([0-9])\.([0-9])"
request_line = rf"({method}) ({request_target}) {http_version}"

# RFC 9112 4
#   status-line   = HTTP-version SP status-code SP [ reason-phrase ]
#   status-code   = 3DIGIT
#   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
# The SP before an empty reason is optional here: servers leave it out (h11, scrapy #345).
status_code = r"[0-9]{3}"
reason_phrase = r"[\t \x21-\x7e\x80-\xff]*"
status_line = rf"{http_version} ({status_code})(?: ({reason_phrase}))?"

# RFC 3986 3.2.2
#   host       = IP-literal / IPv4address / reg-name
#   IP-literal = "[" ( IPv6address / IPvFuture  ) "]"
#   reg-name   = *( unreserved / pct-encoded / sub-delims )
#   unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
#   sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
# IPv4address is a reg-name to the pattern; an empty reg-name and IPvFuture are refused; the
# IPv6 literal is checked by ``ipaddress``.
ip_literal = r"\[[0-9A-Fa-f:.]+\]"
reg_name = r"[-A-Za-z0-9._~%!$&'()*+,;=]+"
uri_host = rf"(?:{ip_literal}|{reg_name})"
# RFC 3986 3.2.3: port = *DIGIT
port = r"[0-9]*"

# RFC 9112 3.2.3
#   authority-form = uri-host ":" port
# CONNECT only, and the port is required.
authority_form = rf"({uri_host}):({port})"

# RFC 9112 3.2.2 absolute-form = absolute-URI; RFC 3986 4.3, 3
#   absolute-URI = scheme ":" hier-part [ "?" query ]
#   hier-part    = "//" authority path-abempty
#   authority    = [ userinfo "@" ] host [ ":" port ]
# Only the http scheme (https is CONNECT's job), no userinfo, no fragment.  Path and query are any
# visible ASCII but "#": browsers send "|", "{" or "^" unescaped and origins cope.
absolute_form = rf"(?i:http)://({uri_host})(?::({port}))?([/?][^#]*)?"

# RFC 9112 7.1, 7.1.1
#   chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size     = 1*HEXDIG
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
# RFC 9110 5.6.4
#   quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext         = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair    = "\" ( HTAB / SP / VCHAR / obs-text )
# At most 16 hex digits (2**64), like h11's "avoid ridiculosity" cap.
quoted_string = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
chunk_ext = rf"(?:{OWS};{OWS}{token}(?:{OWS}={OWS}(?:{token}|{quoted_string}))?)*"
chunk_line = rf"([0-9A-Fa-f]{{1,16}}){chunk_ext}\r\n"
# RFC 9112 7.1.2: trailer-section = *( field-line CRLF )
trailer_line = rf"{field_name}:{OWS}{response_field_value}{OWS}\r\n"

# The same line with the absolute-form target split in the same pass (the everyday proxy request);
# any other target is the second alternative and is taken apart by the functions below.
_REQUEST_LINE_SPLIT = re.compile(
    rf"({method}) ((?i:http)://({uri_host})(?::({port}))?([/?][\x21\x22\x24-\x7e]*)?|{request_target}) {http_version}"
)
_STATUS_LINE = re.compile(status_line)
_FIELD_LINES = re.compile(field_line, re.MULTILINE)
_RESPONSE_FIELD_LINES = re.compile(response_field_line, re.MULTILINE)
_TOKEN = re.compile(token)
_HTTP_VERSION = re.compile(http_version)
_ABSOLUTE_FORM = re.compile(absolute_form)
_AUTHORITY_FORM = re.compile(authority_form)
_CHUNK_LINE = re.compile(chunk_line.encode("latin-1"))
_TRAILER_LINE = re.compile(trailer_line.encode("latin-1"))
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# ---------------------------------------------------------------------------------------------
# Header semantics
# ---------------------------------------------------------------------------------------------

# RFC 9110 7.6.1 hop-by-hop fields, the proxy's own (Proxy-*), and Host (rewritten from the target,
# RFC 9112 3.2.2).  Transfer-Encoding is absent on purpose: it is framing, passed on with the body.
_REQUEST_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
_RESPONSE_DROP = _REQUEST_DROP - {"host"}
# A header named in Connection is hop-by-hop too (RFC 9110 7.6.1), except these: dropping the
# framing or the Host because the client said "Connection: content-length" would desynchronise the
# upstream from the body we send (request smuggling).
_NEVER_CONNECTION_OPTION = frozenset({"content-length", "transfer-encoding", "host"})
_POOL_PREFIX = "x-proxy-pool-"
_POOL_PREFIX_LEN = len(_POOL_PREFIX)
_REQUEST_SPECIAL = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "expect",
        "proxy-authorization",
        "upgrade",
        "authorization",
    }
)
_RESPONSE_SPECIAL = frozenset({"content-length", "transfer-encoding", "connection"})
_MAX_CONTENT_LENGTH_DIGITS = 18

# Schemes that authenticate the TCP connection, not the request (NTLM over HTTP, MS-NTHT; Negotiate,
# RFC 4559 section 6): a connection that carried one serves its client only, never the pool.
CONNECTION_AUTH_SCHEMES = frozenset({"ntlm", "negotiate"})


def binds_connection(value: str) -> bool:
    """Whether an ``Authorization`` value, or a ``WWW-Authenticate`` list of challenges, names a
    connection-bound scheme (a false positive inside a quoted parameter only costs pooling)."""
    for part in value.split(","):
        if part.strip().split(" ", 1)[0].lower() in CONNECTION_AUTH_SCHEMES:
            return True
    return False


REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# RFC 9110 9.2.2: a request with one of these methods may be sent again after a failure mid-way
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class FramingKind(enum.Enum):
    """How the end of a body is found (RFC 9112 6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until_close"


@dataclass(frozen=True, slots=True)
class Framing:
    """A body's framing: ``Framing.NONE``, ``Framing.LENGTH(n)``, ``Framing.CHUNKED``, ``Framing.UNTIL_CLOSE``.

    A zero Content-Length is ``NONE``: there is nothing to copy.  ``UNTIL_CLOSE`` (a response
    without length or chunking) means the connection to the client must be closed afterwards.
    """

    kind: FramingKind
    length: int = 0

    NONE: ClassVar[Framing]
    CHUNKED: ClassVar[Framing]
    UNTIL_CLOSE: ClassVar[Framing]

    @staticmethod
    def LENGTH(n: int) -> Framing:
        """Framing by Content-Length (named like the constants it sits beside)."""
        return Framing(FramingKind.LENGTH, n) if n else Framing.NONE


Framing.NONE = Framing(FramingKind.NONE)
Framing.CHUNKED = Framing(FramingKind.CHUNKED)
Framing.UNTIL_CLOSE = Framing(FramingKind.UNTIL_CLOSE)


# ---------------------------------------------------------------------------------------------
# Small field parsers and the slow paths of errors
# ---------------------------------------------------------------------------------------------


def _strip_leading_crlf(data: bytes) -> bytes:
    while data[:2] == b"\r\n":
        data = data[2:]
    return data


def _bad_response(status: int, message: str) -> BadResponse:
    return BadResponse(message)


def _content_length(value: str, error: Callable[[int, str], GatewayError]) -> int:
    # RFC 9110 8.6: Content-Length = 1*DIGIT (isdigit alone would take "²" from latin-1)
    if not value or len(value) > _MAX_CONTENT_LENGTH_DIGITS or not (value.isascii() and value.isdigit()):
        raise error(400, f"invalid Content-Length {value[:24]!r}")
    return int(value)


def _codings(value: str, codings: list[str] | None, error: Callable[[int, str], GatewayError]) -> list[str]:
    # RFC 9112 6.1: Transfer-Encoding = #transfer-coding; transfer-coding = token *( OWS ";" OWS
    # transfer-parameter ); coding names are case-insensitive.  Several lines make one list.
    result = [] if codings is None else codings
    for item in value.split(","):
        name = item.partition(";")[0].strip()
        if not name:
            continue
        if not _TOKEN.fullmatch(name):
            raise error(400, f"invalid Transfer-Encoding {value[:40]!r}")
        result.append(name.lower())
    return result


def _tokens(value: str) -> tuple[str, ...]:
    # RFC 9110 7.6.1: Connection = #connection-option; options are case-insensitive
    if "," not in value:
        return (value.lower(),) if value else ()
    return tuple([t for t in [item.strip().lower() for item in value.split(",")] if t])


def _short(text: str) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _field_lines_error(block: str, error: Callable[[int, str], GatewayError]) -> GatewayError:
    """Name what is wrong with a header section that did not match (the slow path)."""
    for raw in block.split("\n")[:-1]:
        if raw[-1:] != "\r":
            return error(400, "bare LF in the header section (lines must end with CRLF)")
        line = raw[:-1]
        if "\r" in line:
            return error(400, "bare CR in the header section")
        if not line:
            return error(400, "empty line inside the header section")
        if line[0] in " \t":
            return error(400, "obs-fold (a header line starting with whitespace) is not allowed")
        name, colon, value = line.partition(":")
        if not colon:
            return error(400, f"header line without a colon {_short(line)}")
        if name != name.rstrip(" \t"):
            return error(400, f"whitespace between header name and colon {_short(name)}")
        if not _TOKEN.fullmatch(name):
            return error(400, f"invalid header name {_short(name)}")
        if _CONTROL.search(value) or "\x00" in value:
            return error(400, f"control character in the value of header {_short(name)}")
    return error(400, "malformed header section")
