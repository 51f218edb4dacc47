"""Secret and code files must be ours (issue 22, findings 9 and 10): the database is created 0600,
a planted token file, config file or contrib plugin is refused with one line and exit 2.  Tests run
as root: another user's file is made with chown, a loose one with chmod."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.cli.workers import worker_argv, worker_environment
from pool.models import UpstreamURL
from pool.store import SqliteStore

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_the_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    """pool.db, -wal and -shm are 0600 whatever the umask leaves (they hold upstream passwords); a file
    of ours left 0644 by an older version is tightened."""
    old = os.umask(0o022)
    try:
        store = await SqliteStore.open(tmp_path / "pool.db")
        await store.upsert_proxies(None, [UpstreamURL.parse("http://127.0.0.1:1")])
        files = sorted(p.name for p in tmp_path.iterdir())
        assert {"pool.db", "pool.db-wal", "pool.db-shm"} <= set(files)
        assert {name: _mode(tmp_path / name) for name in files if name.startswith("pool.db")} == {
            name: 0o600 for name in files if name.startswith("pool.db")
        }
        await store.close()
        os.chmod(tmp_path / "pool.db", 0o644)
        store = await SqliteStore.open(tmp_path / "pool.db")
        assert _mode(tmp_path / "pool.db") == 0o600
        await store.close()
    finally:
        os.umask(old)


def test_a_database_url_password_stays_off_worker_command_lines() -> None:
    """serve --workers hands a --db URL's password to its workers in their environment, not on their
    command lines (every local user reads /proc/PID/cmdline)."""
    argv = ["serve", "--workers", "2", "--db", "postgresql://pool:s3cret@127.0.0.1:5432/pool"]
    line = worker_argv(argv, 0, "gw")
    assert not any("s3cret" in item for item in line) and "--db" not in line
    assert worker_environment(argv, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "PROXY_POOL_STORAGE__URL": "postgresql://pool:s3cret@127.0.0.1:5432/pool",
    }
    plain = ["serve", "--workers", "2", "--db=postgresql://pool@127.0.0.1/pool"]
    assert "--db=postgresql://pool@127.0.0.1/pool" in worker_argv(plain, 0, "gw")
    assert worker_environment(plain, {}) == {}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(word in err[0] for word in words), err[0]


def test_a_planted_admin_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DB.admin-token written by another user, or readable/writable by others, opens nothing."""
    db = tmp_path / "pool.db"
    token = tmp_path / "pool.db.admin-token"
    token.write_text("planted-token\n")
    os.chmod(token, 0o600)
    os.chown(token, NOBODY, NOBODY)
    _refused(["admin-token", "--db", str(db)], capsys, str(token), f"uid {NOBODY}")
    os.chown(token, os.geteuid(), os.getegid())
    os.chmod(token, 0o644)
    _refused(
        ["admin-token", "--db", str(db)],
        capsys,
        str(token),
        "readable or writable by its group or others",
        "chmod 600",
    )
    os.chmod(token, 0o600)
    assert main(["admin-token", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "planted-token"


def test_a_config_file_others_can_write_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """./proxy-pool.toml (found in the working directory) and --config: another user's, or group- or
    world-writable, is refused."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "proxy-pool.toml"
    config.write_text('[admin]\ntoken = "from-the-config-0123456789"\n')
    os.chmod(config, 0o666)
    _refused(["admin-token"], capsys, "config file proxy-pool.toml", "writable by its group or others")
    os.chmod(config, 0o644)
    os.chown(config, NOBODY, NOBODY)
    _refused(["admin-token", "--config", str(config)], capsys, f"config file {config}", f"uid {NOBODY}")
    os.chown(config, os.geteuid(), os.getegid())
    assert main(["admin-token"]) == 0
    assert capsys.readouterr().out.strip() == "from-the-config-0123456789"


def test_contrib_plugins_others_can_write_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contrib directory and each module in it: another user's module, or a directory anyone may
    write into, is refused before anything is imported."""
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    os.chmod(contrib, 0o755)
    module = contrib / "planted.py"
    module.write_text("raise SystemExit('imported')\n")
    os.chmod(module, 0o644)
    os.chown(module, NOBODY, NOBODY)
    env = ["--db", str(tmp_path / "pool.db")]
    os.environ["PROXY_POOL_PLUGINS__CONTRIB_DIR"] = str(contrib)
    try:
        _refused(["plugins", *env], capsys, f"contrib plugin {module}", f"uid {NOBODY}")
        os.chown(module, os.geteuid(), os.getegid())
        os.chmod(contrib, 0o777)
        _refused(
            ["plugins", *env],
            capsys,
            f"contrib plugin directory {contrib}",
            "writable by its group or others",
        )
    finally:
        del os.environ["PROXY_POOL_PLUGINS__CONTRIB_DIR"]
