"""The serve lock beside a SQLite file also tells the CLI where the running serve's admin API is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pool.dbfiles import ServeLock, serving_admin, sibling


def test_a_held_lock_names_the_admin_url_until_released(tmp_path: Path):
    db = tmp_path / "pool.db"
    assert serving_admin(db) is None  # no file yet
    lock = ServeLock(db)
    lock.acquire()
    try:
        assert serving_admin(db) is None  # locked, but no admin API announced yet
        lock.announce("http://127.0.0.1:8898")
        assert serving_admin(db) == "http://127.0.0.1:8898"
    finally:
        lock.release()
    assert serving_admin(db) is None


def test_a_dead_holders_url_is_ignored(tmp_path: Path):
    """A file left by a process that is gone (kill -9 leaves its text) names no running serve."""
    db = tmp_path / "pool.db"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    sibling(db, ".serve.lock").write_text(f"{done.stdout.strip()}\nhttp://127.0.0.1:1\n")
    assert serving_admin(db) is None
    sibling(db, ".serve.lock").write_text("garbage\n")
    assert serving_admin(db) is None


def test_the_refusal_still_names_only_the_pid(tmp_path: Path):
    """A second serve's one line names the holder's pid, not the URL line under it."""
    import os

    import pytest

    from pool.dbfiles import ServeLockHeld

    db = tmp_path / "pool.db"
    lock = ServeLock(db)
    lock.acquire()
    lock.announce("http://127.0.0.1:8898")
    # flock locks belong to the open file: a second descriptor of this process conflicts like another process
    try:
        with pytest.raises(ServeLockHeld) as refused:
            ServeLock(db).acquire()
        assert str(refused.value).count("\n") == 0 and f"(pid {os.getpid()})" in str(refused.value)
    finally:
        lock.release()
