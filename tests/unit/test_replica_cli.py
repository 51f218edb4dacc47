"""The command line for replicas: --db URL, --workers on SQLite, --replica-name, masked database URLs."""

from __future__ import annotations

import pytest

from config import ConfigError, Settings
from gateway.cli import main
from gateway.cli.commands import load_settings
from gateway.cli.main import build_parser
from gateway.cli.workers import worker_argv
from pool.stores import display_location
from tests.support.upstreams import closed_port


def test_workers_on_an_in_memory_database_refused_with_one_line(capsys):
    """serve --workers 2 on ``:memory:`` (one process's database): exit 2 and one line, before anything starts."""
    argv = ["serve", "--workers", "2", "--db", ":memory:", "--no-default-sources", "--listen", "127.0.0.1:1"]
    assert main([*argv, "--admin-listen", "127.0.0.1:2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers needs a database file or PostgreSQL" in err[0]


def test_workers_want_every_listener_on_a_fixed_port(capsys, tmp_path):
    """The workers share every listening port: one left at 0 (a SOCKS-only port here) is one line, exit 2."""
    argv = ["serve", "--workers", "2", "--db", str(tmp_path / "pool.db"), "--no-default-sources",
            "--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:2"]
    config = tmp_path / "proxy-pool.toml"
    config.write_text('[gateway]\nsocks_listen = "127.0.0.1:0"\n')
    assert main([*argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed ports" in err[0] and "gateway.socks_listen" in err[0]
    assert not (tmp_path / "pool.db").exists()  # refused before anything starts


def test_workers_auto_is_the_cores_and_nonsense_is_one_line(capsys):
    import os

    args = build_parser().parse_args(["serve", "--workers", "auto"])
    assert args.workers == len(os.sched_getaffinity(0)) >= 1
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--workers", "many"])
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0] and "'auto'" in err[0]


def test_zero_workers_refused(capsys):
    assert main(["serve", "--workers", "0", "--no-default-sources"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def test_db_flag_picks_the_store_by_its_form():
    """--db postgresql://... sets storage.url (shared); a path sets storage.path (SQLite, not shared)."""
    parser = build_parser()
    pg = load_settings(parser.parse_args(["proxies", "--db", "postgresql://u@127.0.0.1:5432/pool"]))
    assert pg.storage.url == "postgresql://u@127.0.0.1:5432/pool" and pg.storage.shared
    assert pg.storage.location == pg.storage.url
    lite = load_settings(parser.parse_args(["proxies", "--db", "other.db"]))
    assert lite.storage.path == "other.db" and lite.storage.url is None and not lite.storage.shared


def test_storage_url_must_be_postgresql():
    with pytest.raises(ConfigError, match="storage.url"):
        Settings.load(None, storage={"url": "mysql://x/y"})


def test_unreachable_database_is_one_line_without_its_password(capsys):
    """A CLI command on a PostgreSQL that is not there: exit 1, one line, the password masked."""
    url = f"postgresql://pool:s3cret@127.0.0.1:{closed_port()}/pool"
    assert main(["users", "list", "--db", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open database" in err[0]
    assert "s3cret" not in err[0] and "pool:***@127.0.0.1" in err[0]


def test_display_location_masks_only_the_password():
    assert display_location("postgresql://a:b@h:5/d") == "postgresql://a:***@h:5/d"
    assert display_location("postgresql://a@h/d") == "postgresql://a@h/d"
    assert display_location("/var/lib/pool.db") == "/var/lib/pool.db"


def test_worker_command_lines_are_named_and_not_recursive():
    """Each worker runs serve without --workers, under NAME/wK (its leases and metric label)."""
    argv = ["serve", "--workers", "2", "--replica-name", "gw", "--db", "postgresql://h/d", "--workers=3"]
    assert worker_argv(argv, 1, "gw") == ["serve", "--db", "postgresql://h/d", "--worker-of", "1", "--replica-name", "gw/w1"]
    # on a SQLite file, the descriptor of the serve lock each worker inherits (never a user's --pool-lock)
    lite = ["serve", "--workers", "2", "--db", "pool.db", "--pool-lock=9"]
    assert worker_argv(lite, 0, "gw", 5) == [
        "serve", "--db", "pool.db", "--worker-of", "0", "--replica-name", "gw/w0", "--pool-lock", "5"
    ]
