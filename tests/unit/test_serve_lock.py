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
