"""The one rule for connection-bound authentication (NTLM, Negotiate), on heads fed as bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy import fasthead, http1
from gateway.proxy.fixed import fixed_head


def request(authorization: str, name: str = "Authorization") -> bytes:
    return f"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n{name}: {authorization}\r\n\r\n".encode()


@given(
    st.sampled_from(["ntlm", "negotiate"]).flatmap(
        lambda s: st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in s)).map("".join)
    ),
    st.sampled_from(["authorization", "Authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"]),
)
def test_a_bound_scheme_in_any_case_is_never_the_fast_path_and_always_flagged(scheme: str, name: str) -> None:
    """The fast path never answers for it (so nothing skips the flag), the strict parser flags it, and a
    SOCKS session's head parser sends it raw."""
    raw = request(f"{scheme} TlRMTVNTUAABAAAA", name)
    assert fasthead.plain_request(raw) is None
    assert http1.parse_request_head(raw).binds_connection
    assert fixed_head(raw.replace(b"http://a.example/", b"/")) is None


def test_other_schemes_stay_on_the_fast_path_and_are_forwarded() -> None:
    """Basic and Bearer bind nothing; the Authorization line goes upstream unchanged."""
    for value in ("Basic dXNlcjpwYXNz", "Bearer abc.def", "NTLMish x"):
        raw = request(value)
        fast = fasthead.plain_request(raw)
        assert fast is not None and not fast.binds_connection
        assert http1.same_head(fast, http1.parse_request_head(raw))
        assert f"Authorization: {value}\r\n".encode() in (fast.origin_form or b"")


def test_challenges_that_bind() -> None:
    """A 401 whose WWW-Authenticate offers NTLM or Negotiate among others binds; Basic alone or another status does not."""

    def head(status: int, *challenges: str) -> http1.ResponseHead:
        lines = "".join(f"WWW-Authenticate: {c}\r\n" for c in challenges)
        return http1.parse_response_head(f"HTTP/1.1 {status} X\r\n{lines}Content-Length: 0\r\n\r\n".encode())

    assert http1.challenges_connection(head(401, "NTLM"))
    assert http1.challenges_connection(head(401, 'Basic realm="x", Negotiate'))
    assert http1.challenges_connection(head(401, 'Basic realm="x"', "negotiate abc="))
    assert not http1.challenges_connection(head(401, 'Basic realm="x", charset="UTF-8"'))
    assert not http1.challenges_connection(head(401))
    assert not http1.challenges_connection(head(200, "NTLM"))
