# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the miss path of the host bytecode cache (module_utils/_bytecode.py). Not a public API.

Imported by ``_bytecode`` only when a module's code is not in the cache or the cache directory does not exist yet:
a warm cache never loads it, so its compile is not paid on every execution. Standard library only; its own writes
are done here (temp file 0600 in the trusted directory, then ``os.replace``), not by ``_io``, which must not be
loaded before the cache is in place. The trust checks of what is read stay in ``_bytecode``.

The cache is bounded by use: ``_bytecode`` refreshes the modification time of an entry it reads when that is more than
a day old (at most one write per entry and day), and the first store of a process removes the entries nobody read
for ``MAX_AGE`` (30 days: the code of ansible-core and collection versions no longer run) and temp files a killed
store left behind. Every file of a new ansible-core or collection version is a miss, so the pruning runs exactly when
the cache grows.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import time
import types

__all__ = ["MAX_AGE", "TEMP_MAX_AGE", "compile_and_store", "make_dir", "prune"]

MAX_AGE = 30 * 24 * 3600  # seconds since an entry was last read (its mtime, refreshed daily by reads) before it goes
TEMP_MAX_AGE = 3600  # a temp file this old belongs to no store under way
_PRUNED: list[int] = []  # the directories (by device and inode) this process pruned already


def make_dir(path: str) -> None:
    """Create the cache directory and its parents, 0700 (the caller opens and checks it)."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def compile_and_store(dir_fd: int, name: str, source: bytes, origin: str, *, header: bytes) -> types.CodeType:
    """Compile source as zipimport does and store the code under name (after header and the sha256 of the code);
    a failed store leaves the code usable."""
    # as zipimport compiles: line endings normalized, the file's own future imports only
    code = compile(source.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), origin, "exec", dont_inherit=True)
    try:
        _write(dir_fd, name, marshal.dumps(code), header=header)
    except OSError:
        pass  # a full disk or a race with another execution: this execution has its code all the same
    try:
        prune(dir_fd)
    except OSError:
        pass  # a race with another execution's pruning: what is left goes next time
    return code


def prune(dir_fd: int, now: float | None = None) -> int:
    """Once per process and directory: remove the entries unread for MAX_AGE and stale temp files; the number removed.

    Only regular files with the cache's names and owned by the effective uid (the directory is checked by the caller);
    an entry another execution reads meanwhile is compiled again by the next one that misses it."""
    info = os.fstat(dir_fd)
    if info.st_ino in _PRUNED:
        return 0
    _PRUNED.append(info.st_ino)
    now = time.time() if now is None else now
    removed = 0
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.name.endswith(".bin"):
                limit = MAX_AGE
            elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
                limit = TEMP_MAX_AGE
            else:
                continue
            found = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and found.st_uid == os.geteuid() and now - found.st_mtime > limit:
                try:
                    os.unlink(entry.name, dir_fd=dir_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _write(dir_fd: int, name: str, data: bytes, *, header: bytes) -> None:
    """Store data under name atomically: a 0600 temp file in the directory, then os.replace."""
    temp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header + hashlib.sha256(data).digest() + data)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
