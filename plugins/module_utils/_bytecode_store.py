# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the miss path of the host bytecode cache (module_utils/_bytecode.py). Not a public API.

Imported by ``_bytecode`` only when a module's code is not in the cache or the cache directory does not exist yet:
a warm cache never loads it, so its compile is not paid on every execution. Standard library only; its own writes
are done here (temp file 0600 in the trusted directory, then ``os.replace``), not by ``_io``, which must not be
loaded before the cache is in place. The trust checks of what is read stay in ``_bytecode``.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import types

__all__ = ["compile_and_store", "make_dir"]


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
    return code


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
