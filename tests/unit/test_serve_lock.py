"""The serve lock beside a SQLite file also tells the CLI where the running serve's admin API is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pool.dbfiles import LeaderLock, ServeLock, ServeLockHeld, serving_admin, sibling


def test_a_held_lock_names_the_admin_url_until_released(tmp_path: Path):
    db = tmp_path / "pool.db"
    assert serving_admin(db) is None  # no file yet
    lock = ServeLock(db)
    lock.acquire()
    try:
        assert serving_admin(db) is None  # locked, but no admin API announced yet
        lock.announce("0.0.0.0", 8898)  # a wildcard listener, as a client here dials it
        assert serving_admin(db) == "http://127.0.0.1:8898"
        lock.announce("::1", 8898)
        assert serving_admin(db) == "http://[::1]:8898"
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
    db = tmp_path / "pool.db"
    lock = ServeLock(db)
    lock.acquire()
    lock.announce("127.0.0.1", 8898)
    # flock locks belong to the open file: a second descriptor of this process conflicts like another process
    try:
        with pytest.raises(ServeLockHeld) as refused:
            ServeLock(db).acquire()
        assert str(refused.value).count("\n") == 0 and f"(pid {os.getpid()})" in str(refused.value)
    finally:
        lock.release()


def test_a_worker_adopts_its_supervisors_lock_and_nobody_else_can(tmp_path: Path):
    """serve --workers on SQLite: a worker takes the lock through the descriptor it inherited (the same
    open file: granted again), leaves the announcement alone, and keeps the lock when the supervisor's
    own descriptor is gone; a descriptor of another open file is refused."""
    db = tmp_path / "pool.db"
    supervisor = ServeLock(db)
    supervisor.acquire()
    supervisor.announce("127.0.0.1", 8898)
    assert supervisor.fd is not None
    inherited = os.dup(supervisor.fd)  # what a child gets through pass_fds
    os.set_inheritable(inherited, True)
    worker = ServeLock(db)
    worker.adopt(inherited)
    assert not os.get_inheritable(inherited)  # the worker's own children do not inherit the pool's lock
    other = os.open(sibling(db, ".serve.lock"), os.O_RDWR)
    try:
        with pytest.raises(ServeLockHeld):
            ServeLock(db).adopt(other)
        supervisor_fd = supervisor.fd
        os.close(supervisor_fd)  # the supervisor is gone (kill -9): its worker still holds the pool's lock
        supervisor._fd = None
        with pytest.raises(ServeLockHeld):
            ServeLock(db).acquire()
        worker.announce("127.0.0.1", 1)  # a worker never rewrites the supervisor's announcement
        assert serving_admin(db) == "http://127.0.0.1:8898"
    finally:
        os.close(other)
        worker.release()
    fresh = ServeLock(db)
    fresh.acquire()  # the last holder gone: free again
    fresh.release()


def test_the_leader_lock_goes_to_one_and_passes_on_when_it_is_dropped(tmp_path: Path):
    db = tmp_path / "pool.db"
    first, second = LeaderLock(db), LeaderLock(db)
    assert first.try_acquire() and first.held
    assert not second.try_acquire() and not second.held
    assert first.try_acquire()  # held already: still ours
    first.release()  # what the kernel does when the leader dies
    assert second.try_acquire() and second.held
    assert sibling(db, ".leader.lock").read_text().strip() == str(os.getpid())
    second.release()
