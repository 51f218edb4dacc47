"""No terminal escape reaches the log (issue 22, finding 16): control characters in every logged string
from outside are written as \\xNN, by the one filter every record passes (config.printable)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.printable import printable
from gateway.cli.main import main

HOSTILE = "Busy\x1b]0;owned\x07\x1b[2J\x9b31m"


def test_printable_escapes_controls_and_keeps_the_rest() -> None:
    assert printable(HOSTILE) == "Busy\\x1b]0;owned\\x07\\x1b[2J\\x9b31m"
    assert printable("a\r\nb\u2028c\tné ü 漢") == "a\\x0d\\x0ab\\u2028c\\x09né ü 漢"


@pytest.fixture
def hostile_source() -> Iterator[str]:
    """A proxy-list source whose answer is 503 with ESC/BEL sequences in its reason phrase (raw socket)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)

    def serve() -> None:
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(
                        f"HTTP/1.1 503 {HOSTILE}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(
                            "latin-1"
                        )
                    )
        except OSError:
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/list.txt"
    server.close()
    thread.join(5)


def test_a_sources_reason_phrase_reaches_the_log_escaped(
    hostile_source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`proxy-pool sources scrape` logs the failure with the reason phrase, its ESC and BEL escaped."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    db = str(tmp_path / "pool.db")
    try:
        assert main(["sources", "add", hostile_source, "--db", db]) == 0
        main(["sources", "scrape", "--db", db])
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "503 Busy" in err, err
    assert "\x1b" not in err and "\x07" not in err and "\x9b" not in err
    assert "Busy\\x1b]0;owned\\x07\\x1b[2J" in err
