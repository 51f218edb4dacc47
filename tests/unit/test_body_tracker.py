"""``http1.BodyTracker``, the one body grammar of the gateway, under hypothesis: any valid chunked body
is found to end exactly where it does, however the bytes are split across reads; de-chunked it gives
its data; garbage ends only in ``BadResponse``; framing fields in trailers are refused."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.proxy.errors import BadResponse
from gateway.proxy.http1 import BodyTracker, FramingKind

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=8)
EXTENSIONS = st.lists(st.tuples(st.sampled_from(["", " ", "\t"]), TOKEN, st.none() | TOKEN), max_size=2)
TRAILER_NAMES = TOKEN.filter(lambda n: n not in {"te", "host", "trailer", "expect", "upgrade", "connection"})
TRAILERS = st.lists(st.tuples(TRAILER_NAMES.map(lambda n: "x-" + n), st.text("abc xyz0189", max_size=10).map(str.strip)), max_size=3)


def encode(pieces: list[tuple[bytes, list[tuple[str, str, str | None]]]], trailers: list[tuple[str, str]]) -> bytes:
    out = []
    for data, exts in pieces:
        ext = "".join(f"{sp};{name}" + (f"={val}" if val is not None else "") for sp, name, val in exts)
        out.append(f"{len(data):X}{ext}\r\n".encode("latin-1") + data + b"\r\n")
    out.append(b"0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in trailers).encode("latin-1") + b"\r\n")
    return b"".join(out)


def track(data: bytes, cuts: list[int], kind: FramingKind = FramingKind.CHUNKED, length: int = 0) -> tuple[int, bool, bytes]:
    """Feed ``data`` split at ``cuts``; (bytes that belong to the body, whether it ended, de-chunked data)."""
    tracker = BodyTracker(kind, length)
    collect: list[bytes] = []
    used_total = 0
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        piece = data[start:end]
        if not piece:
            continue
        used, done = tracker.feed(piece, collect=collect)
        used_total += used
        if done:
            return used_total, True, b"".join(collect)
    return used_total, False, b"".join(collect)


@FUZZ
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=300), EXTENSIONS), max_size=6),
    TRAILERS,
    st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_valid_chunked_bodies_end_exactly_where_they_do(pieces, trailers, cuts) -> None:
    """Any valid chunked body, split anywhere: the tracker claims exactly its bytes (not the next
    request's) and de-chunks it to its data."""
    body = encode(pieces, trailers)
    used, done, data = track(body + b"GET next", cuts)
    assert done and used == len(body)
    assert data == b"".join(p for p, _ in pieces)


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_garbage_ends_only_in_bad_response(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes as a chunked body: success, more to come, or BadResponse; nothing else."""
    assume(data)
    try:
        used, _, _ = track(data, cuts)
    except BadResponse:
        return
    assert used <= len(data)


@pytest.mark.parametrize("field", ["Content-Length: 5", "Transfer-Encoding: chunked", "Host: evil.example", "trailer: x"])
def test_framing_fields_in_trailers_are_refused(field: str) -> None:
    """RFC 9110 6.5.1: framing, routing and content fields never pass in trailers."""
    with pytest.raises(BadResponse, match="trailer"):
        track(b"3\r\nabc\r\n0\r\n" + field.encode() + b"\r\n\r\n", [])


@given(st.binary(max_size=500), st.integers(min_value=0, max_value=600), st.lists(st.integers(0, 600), max_size=4))
def test_length_framing_claims_exactly_n_bytes(data: bytes, n: int, cuts: list[int]) -> None:
    """Content-Length: exactly n bytes belong to the body, whatever the reads."""
    used, done, collected = track(data, cuts, FramingKind.LENGTH, n)
    if n and len(data) >= n:
        assert done and used == n and collected == data[:n]
    elif n:
        assert not done and used == len(data)


MALFORMED_CHUNKS = [
    b"g\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 junk\r\nhello\r\n0\r\n\r\n",
    b"\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"1" * 17 + b"\r\n",
    b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED_CHUNKS, ids=[repr(d[:30]) for d in MALFORMED_CHUNKS])
def test_malformed_chunks_are_refused(data: bytes) -> None:
    """Bad hex sizes, missing CRLFs, over-long size lines and bad trailers: BadResponse (the client's
    connection turns it into a 400, an upstream's into a cut answer)."""
    with pytest.raises(BadResponse):
        track(data + b"\r\n\r\n" * 4, [])
