"""What `proxy-pool serve` refuses or warns about at start-up, on a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)


def serve_argv(db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--db", str(db), *extra]  # fmt: skip


class Serving:
    """A `serve` subprocess, read up to its "serving" line (or its end, whichever comes first)."""

    def __init__(self, db: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            serve_argv(db, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "proxy-pool serving" in line:
                break
        self.serving = any("proxy-pool serving" in line for line in self.lines)

    def kill(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        out, _ = self.proc.communicate(timeout=30)
        return "".join(self.lines) + out


def test_second_serve_on_one_database_refuses_with_one_line(tmp_path):
    """While one serve runs, a second on the same database exits 2 with one line; after the first dies
    (kill -9 even), a new serve starts."""
    db = tmp_path / "pool.db"
    first = Serving(db)
    try:
        assert first.serving, first.lines
        second = subprocess.run(serve_argv(db), capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another `proxy-pool serve`" in lines[0] and str(db) in lines[0]
        assert "Traceback" not in second.stderr
    finally:
        first.kill(signal.SIGKILL)
    third = Serving(db)
    try:
        assert third.serving, third.lines
    finally:
        assert third.kill().count("proxy-pool serving") == 1


def test_cli_commands_work_beside_a_running_serve(tmp_path):
    """The lock is serve's alone: `users add`, `sources list` and `admin-token` work while serve runs."""
    db = tmp_path / "pool.db"
    running = Serving(db)
    try:
        assert running.serving, running.lines
        for argv in (["users", "add", "alice"], ["sources", "list"], ["admin-token"]):
            done = subprocess.run([sys.executable, "-m", "gateway", *argv, "--db", str(db)],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, (argv, done.stderr)
    finally:
        running.kill()


def test_allow_open_on_a_public_address_warns_at_every_start(tmp_path):
    """gateway.allow_open = true on a non-loopback listen address with auth none: a WARNING line at every start
    (the listening socket takes no traffic in this test)."""
    env = {**os.environ, "PROXY_POOL_GATEWAY__ALLOW_OPEN": "true"}
    for _ in range(2):
        serving = Serving(tmp_path / "pool.db", "--listen", "0.0.0.0:0", env=env)
        log = serving.kill() if serving.serving else "".join(serving.lines)
        assert serving.serving, log
        warnings = [line for line in log.splitlines() if "WARNING" in line and "allow_open" in line]
        assert len(warnings) == 1 and "open proxy" in warnings[0], log
    quiet = Serving(tmp_path / "pool.db")  # loopback: nothing to warn about
    assert "open proxy" not in quiet.kill()


@pytest.mark.parametrize(
    ("name", "hint"),
    [("PROXY_POOL_GATEWAY_AUTH", "PROXY_POOL_GATEWAY__AUTH"), ("PROXY_POOL_GATEWAYS__AUTH", None),
     ("PROXY_POOL_ADMIN_TOKEN", "PROXY_POOL_ADMIN__TOKEN"), ("PROXY_POOL_BOGUS", None)],
)
def test_unknown_environment_variable_refuses_to_start(tmp_path, name, hint):
    """A PROXY_POOL_* variable that names no setting stops serve (and every command) with one line naming it,
    exit 2, like an unknown TOML key; nothing is created."""
    env = {**os.environ, name: "users"}
    for argv in (serve_argv(tmp_path / "pool.db"), [sys.executable, "-m", "gateway", "users", "list",
                                                    "--db", str(tmp_path / "pool.db")]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "names no setting" in lines[0], lines
        if hint:
            assert f"did you mean {hint}?" in lines[0]
    assert not (tmp_path / "pool.db").exists()


def test_known_environment_variables_still_work(tmp_path):
    """Nested (PROXY_POOL_NOTIFIERS__WEBHOOK__URL), top-level (PROXY_POOL_DEFAULT_SOURCES) and
    PROXY_POOL_CONFIG are settings, not typos."""
    config = tmp_path / "c.toml"
    config.write_text("[gateway]\nstrategy = \"random\"\n")
    env = {**os.environ, "PROXY_POOL_CONFIG": str(config), "PROXY_POOL_DEFAULT_SOURCES": "false",
           "PROXY_POOL_NOTIFIERS__WEBHOOK__URL": "http://127.0.0.1:1/hook", "PROXY_POOL_GATEWAY__AUTH": "users"}
    done = subprocess.run([sys.executable, "-m", "gateway", "plugins", "--db", str(tmp_path / "p.db")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "webhook" in done.stdout
