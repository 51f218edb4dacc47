"""The per-check token: a judge answer counts only when it echoes exactly the token it was sent."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.builtin.checkers._judge import (
    TOKEN_HEADER,
    TOKEN_PARAM,
    JudgeFormatError,
    echoes_token,
    new_token,
    parse_judge_reply,
    with_token,
)

TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
tokens = st.text(TOKEN_ALPHABET, min_size=22, max_size=22)
words = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=40)
names = st.sampled_from([TOKEN_PARAM, "q", "show_env", "pp", "pp_check_", "token", TOKEN_HEADER])


def _near_misses(token: str) -> st.SearchStrategy[str]:
    """Values a liar might plausibly produce: nothing, a prefix, a one-character change, a neighbour."""
    return st.one_of(
        st.just(""),
        st.integers(0, len(token) - 1).map(lambda n: token[:n]),
        st.integers(0, len(token) - 1).map(lambda i: token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]),
        st.just(token + "x"),
        st.just(" " + token[1:]),
        words,
    ).filter(lambda value: value.strip() != token)


@st.composite
def httpbin_answers(draw: st.DrawFn, token: str) -> bytes:
    """httpbin JSON whose every field is anything but the token where the token belongs."""
    miss = _near_misses(token)
    args = draw(st.dictionaries(names, st.one_of(miss, st.lists(miss, max_size=3)), max_size=4))
    headers = draw(st.dictionaries(st.sampled_from([TOKEN_HEADER, "X-Check", "Via", "Host"]), miss, max_size=4))
    # the real token may sit anywhere a genuine judge would not put it
    stray = draw(st.sampled_from(["origin-note", "url", "X-Other-Token", "args-key"]))
    body: dict[str, object] = {"origin": "203.0.113.7", "args": args, "headers": headers}
    if stray == "url":
        body["url"] = f"http://judge/get?{TOKEN_PARAM}x={token}"
    elif stray == "X-Other-Token":
        headers["X-Other-Token"] = token
    elif stray == "args-key":
        args[token] = TOKEN_PARAM
    else:
        body["note"] = token
    return json.dumps(body).encode()


@st.composite
def azenv_answers(draw: st.DrawFn, token: str) -> bytes:
    miss = draw(_near_misses(token))
    other = draw(words)
    lines = [
        "REMOTE_ADDR = 203.0.113.7",
        f"QUERY_STRING = {TOKEN_PARAM}={miss}&other={token}x",
        f"REQUEST_URI = /?{TOKEN_PARAM}x={token}",
        f"HTTP_X_CHECK_TOKEN = {miss}",
        f"HTTP_X_OTHER = {token}",
        f"<!-- {TOKEN_PARAM}={token[:-1]} {other} -->",
    ]
    return ("<pre>\n" + "\n".join(draw(st.permutations(lines))) + "\n</pre>").encode()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), token=tokens)
def test_an_answer_without_the_token_is_never_genuine(data, token):
    """Whatever else a canned or doctored answer carries (near misses, the token in the wrong field),
    without the exact token as the query parameter or the header it is not accepted."""
    body = data.draw(st.one_of(httpbin_answers(token), azenv_answers(token)))
    try:
        reply = parse_judge_reply(body)
    except JudgeFormatError:
        return
    assert not echoes_token(reply, token)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), token=tokens)
def test_arbitrary_bytes_are_accepted_only_if_they_hold_the_token(body, token):
    """No answer is ever accepted whose bytes do not contain the token at all."""
    try:
        reply = parse_judge_reply(body)
    except JudgeFormatError:
        return
    if echoes_token(reply, token):
        assert token.encode() in body


@settings(max_examples=100, deadline=None)
@given(token=tokens, where=st.sampled_from(["args", "header", "query_string", "request_uri", "http_line"]))
def test_a_genuine_echo_is_accepted(token, where):
    """The same answers with the token where a genuine judge puts it are accepted (the test can fail)."""
    if where == "args":
        body = json.dumps({"origin": "1.2.3.4", "args": {TOKEN_PARAM: token}, "headers": {}}).encode()
    elif where == "header":
        body = json.dumps({"origin": "1.2.3.4", "headers": {TOKEN_HEADER: token}}).encode()
    elif where == "query_string":
        body = f"REMOTE_ADDR = 1.2.3.4\nQUERY_STRING = show_env=1&{TOKEN_PARAM}={token}\n".encode()
    elif where == "request_uri":
        body = f"REMOTE_ADDR = 1.2.3.4\nREQUEST_URI = /?{TOKEN_PARAM}={token}\n".encode()
    else:
        body = f"REMOTE_ADDR = 1.2.3.4\nHTTP_X_CHECK_TOKEN = {token}\n".encode()
    assert echoes_token(parse_judge_reply(body), token)


def test_tokens_are_fresh_and_url_safe():
    seen = {new_token() for _ in range(1000)}
    assert len(seen) == 1000
    assert all(len(t) >= 22 and set(t) <= set(TOKEN_ALPHABET) for t in seen)


@pytest.mark.parametrize(
    ("url", "expected_query"),
    [
        ("http://h/get?show_env=1", {"show_env": ["1"], TOKEN_PARAM: ["T"]}),
        ("http://h/", {TOKEN_PARAM: ["T"]}),
        ("http://h/judge?", {TOKEN_PARAM: ["T"]}),
    ],
)
def test_with_token_keeps_the_query(url, expected_query):
    out = with_token(url, "T")
    assert parse_qs(urlsplit(out).query) == expected_query
    assert out.startswith(url.rstrip("?"))


def test_empty_token_never_matches():
    reply = parse_judge_reply(json.dumps({"origin": "1.2.3.4", "args": {TOKEN_PARAM: ""}}).encode())
    assert not echoes_token(reply, "")


@pytest.mark.parametrize(
    ("first", "second", "disagrees"),
    [
        ("203.0.113.7", "203.0.113.7", False),
        ("127.0.0.5", "127.0.0.6", True),  # two local judges: the same reach, different stories
        ("8.8.8.8", "1.1.1.1", True),
        ("127.0.0.5", "8.8.8.8", False),  # our own judge sees the loopback exit, a public one the public exit
        ("192.168.1.4", "8.8.8.8", False),
        ("8.8.8.8", "2001:4860:4860::8888", False),  # dual stack
    ],
)
def test_exit_agreement_compares_like_with_like(first, second, disagrees):
    from plugins.builtin.checkers.http_anonymity import _disagreement

    reply = lambda ip: parse_judge_reply(json.dumps({"origin": ip}).encode())  # noqa: E731
    result = _disagreement("a", reply(first), "b", reply(second))
    assert (result is not None) is disagrees
    if disagrees:
        assert result is not None and result.detail == f"exit address disagrees: a saw {first}, b saw {second}"
