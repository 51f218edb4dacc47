"""The PostgreSQL test server never outlives its test run for good: a run killed hard leaves it running
until the next start reaps it; SIGTERM and SIGINT stop it at once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import missing_reason, reap_stale

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

ROOT = Path(__file__).resolve().parents[2]

# What the session fixture does (``running_server()``), in a process of its own that a test may kill.
RUN = """
import signal
from tests.support.postgres import running_server
with running_server() as server:
    print(server.base, server.port, flush=True)
    signal.pause()
"""


class Run:
    """One test run holding a server: its process, the server's directory and port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the server accepts connections
        assert line, f"the run exited {self.proc.wait()}: {self.proc.stderr.read() if self.proc.stderr else ''}"
        base, port = line.split()
        self.base, self.port = Path(base), int(port)

    def end(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    reap_stale()  # whatever a failed assertion left behind


def test_a_run_killed_hard_leaks_its_server_only_until_the_next_start(runs: list[Run]) -> None:
    """SIGKILL gives the fixture no chance to stop its server; the next start finds its owner gone, stops the
    server and removes its directory, and leaves its own running."""
    killed = Run()
    runs.append(killed)
    assert killed.end(signal.SIGKILL) == -signal.SIGKILL
    assert killed.base.exists() and accepting(killed.port)  # the leak this guards against

    following = Run()
    runs.append(following)
    assert not killed.base.exists() and not accepting(killed.port)
    assert following.base.exists() and accepting(following.port)
    assert following.base not in reap_stale()  # a live owner's server is never taken
    assert following.base.exists() and accepting(following.port)
    assert following.end(signal.SIGTERM) == -signal.SIGTERM
    assert not following.base.exists() and not accepting(following.port)


def test_an_interrupted_run_stops_its_server(runs: list[Run]) -> None:
    """Ctrl-C (SIGINT) unwinds through the fixture, which stops the server and removes its directory."""
    run = Run()
    runs.append(run)
    assert run.end(signal.SIGINT) != 0
    assert not run.base.exists() and not accepting(run.port)
