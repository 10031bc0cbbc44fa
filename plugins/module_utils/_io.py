# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: atomic file writes and digests. Not a public API."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import typing as t

__all__ = [
    "CHUNK_SIZE",
    "append_jsonl",
    "canonical_json",
    "fsync_directory",
    "pretty_json",
    "read_json",
    "sha256_file",
    "write_file_atomic",
    "write_json_atomic",
]

CHUNK_SIZE = 1024 * 1024


def sha256_file(path: str) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(data: t.Any) -> str:
    """Serialise data so that equal data always gives identical bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def pretty_json(data: t.Any) -> str:
    """Stable, human-readable JSON (sorted keys) ending with a newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def fsync_directory(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: str, content: str | bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write content to path so that path holds either the old or the new complete file.

    The data goes to a temporary file in the same directory, is flushed (and fsynced when durable),
    then renamed over the final path.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    if durable:
        fsync_directory(directory)


def write_json_atomic(path: str, data: t.Any, *, mode: int = 0o644, canonical: bool = False) -> None:
    write_file_atomic(path, canonical_json(data) if canonical else pretty_json(data), mode=mode)


def read_json(path: str, default: t.Any = None) -> t.Any:
    """Read a JSON file; return default when it does not exist."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def append_jsonl(path: str, record: t.Mapping[str, t.Any], *, durable: bool = False) -> None:
    """Append one JSON line with a single write(2) on an O_APPEND descriptor."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    line = (json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
