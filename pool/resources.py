"""This process's own resources: its open-files limit, and a local shortage told from a remote failure.

A process out of descriptors (EMFILE, ENFILE), socket buffers (ENOBUFS) or memory (ENOMEM) fails every
connection it tries, whoever is at the other end: such a failure says nothing about a proxy, so neither
the checker nor the gateway's passive health counts it against one.  ``serve`` raises its soft
open-files limit to the hard one at start, and the gateway keeps a reserve of descriptors below that
limit for the checker, the store and upstream dials (``descriptor_reserve``): it admits no client into it.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "LOCAL_ERRNOS",
    "descriptor_reserve",
    "is_local_shortage",
    "names_local_shortage",
    "open_files_limit",
    "raise_open_files_limit",
]

LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LOCAL_TEXTS = tuple(os.strerror(code) for code in sorted(LOCAL_ERRNOS))  # "Too many open files", ...

try:
    import resource
except ImportError:  # not POSIX: no limit to read or raise
    resource = None  # type: ignore[assignment]


def is_local_shortage(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it, or the ``os_error`` aiohttp wraps) is a local shortage."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for candidate in (exc, getattr(exc, "os_error", None)):
            if isinstance(candidate, OSError) and candidate.errno in LOCAL_ERRNOS:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def names_local_shortage(text: str) -> bool:
    """Whether a failure told in words (a checker's detail, which quotes the error it met) is a local
    shortage: the C library's own wording of EMFILE, ENFILE, ENOBUFS or ENOMEM."""
    return any(words in text for words in _LOCAL_TEXTS)


def open_files_limit() -> int | None:
    """The soft limit of open descriptors (None: unlimited, or no such limit here)."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft open-files limit to the hard one; (before, after) when it was raised, else None."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return None
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. macOS caps it below the hard limit: try the kernel's maximum
        return None
    return soft, target


def descriptor_reserve(limit: int, checker_concurrency: int) -> int:
    """Descriptors kept free of clients: two per concurrent check plus 32 (the store, the admin API,
    upstream dials), at least 64, at most half the limit."""
    return min(limit // 2, max(64, 2 * checker_concurrency + 32))
