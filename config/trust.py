"""Files we read secrets or code from must be ours, like ssh's ``StrictModes``.

A token file, a config file (``./proxy-pool.toml``, ``--config``, ``PROXY_POOL_CONFIG``) or a contrib
plugin (the directory and every module in it) that another user wrote or could write is refused: it
is owned by neither the serving user nor root, or it is writable by its group or by others.  A secret
(the generated admin token) must not be readable by them either.  Files proxy-pool creates itself
pass (0600 secrets, umask-made code and config files owned by whoever runs it), and so does a file
on a read-only mount (a container's ``./plugins/contrib:/app/plugins-contrib:ro``, owned by the host's
user): nobody on this side can plant or change anything there.  The refusal is a ``ConfigError``: one
line naming the file and the fix, exit 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from config.errors import ConfigError

__all__ = ["check_trusted"]


def check_trusted(path: Path, what: str, *, secret: bool = False) -> None:
    """Raise ``ConfigError`` unless ``path`` (file or directory) is owned by us or root and writable by
    nobody else (nor readable, for a ``secret``).  A missing path passes (the caller reports it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot inspect it: {exc.strerror or exc}") from None
    me = os.geteuid()
    if not secret and _read_only(path):
        return
    if st.st_uid not in (me, 0):
        raise ConfigError(
            f"{what} {path} is owned by uid {st.st_uid}, not by the serving user (uid {me}) or root: "
            "refusing to use it (another user may have written it)"
        )
    mode = stat.S_IMODE(st.st_mode)
    loose = mode & (0o077 if secret else 0o022)
    if loose:
        who = (
            "its group or others"
            if loose & 0o070 and loose & 0o007
            else "its group"
            if loose & 0o070
            else "others"
        )
        kind = "readable or writable" if secret else "writable"
        fix = "chmod 600" if secret else "chmod go-w"
        raise ConfigError(
            f"{what} {path} is {kind} by {who} (mode {mode:04o}): refusing to use it; `{fix} {path}` if it is yours"
        )


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
