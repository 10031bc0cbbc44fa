# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: resumable, verified-size downloads into the content-addressed cache. Not a public API.

Imported by _prestage only when an artifact has to be fetched: a host that finds everything staged never compiles it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import typing as t
import urllib.parse

from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import (
    HostLayout,
    HostOps,
    ReleaseError,
    ensure_free_space,
    http_error,
    remove_path,
    url_errors,
)

if t.TYPE_CHECKING:
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._prestage import FetchPolicy

READ_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class FetchRefused(ReleaseError):
    """The cache cannot take the artifact (not enough space, a write failed); the partial file is gone."""


class Transient(Exception):
    """Worth another attempt at the same source after a pause (reset, timeout, 5xx)."""


class SourceFailed(Exception):
    """This source will not deliver (404, wrong size, too slow): try the next one."""


class GiveUp(Exception):
    """Stop staging altogether (overall time limit)."""


@dataclasses.dataclass
class Transfer:
    """What fetching one artifact did."""

    sha256: str
    kind: str
    source: str | None = None
    bytes: int = 0
    bytes_by_source: dict[str, int] = dataclasses.field(default_factory=dict)
    resumed: bool = False
    restarts: int = 0
    attempts: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


def _header(response: t.Any, name: str) -> str | None:
    headers = getattr(response, "headers", None)
    if headers is not None and hasattr(headers, "get"):
        return headers.get(name)
    getter = getattr(response, "getheader", None)
    return getter(name) if getter else None


def _status(response: t.Any) -> int | None:
    status = getattr(response, "status", None)
    if status is None and hasattr(response, "getcode"):
        status = response.getcode()
    return status


def open_source(ops: HostOps, url: str, offset: int, size: int, policy: FetchPolicy) -> tuple[t.Any, int]:
    """(readable, offset it starts at). A server that ignores Range starts again at 0.

    A source that announces another total size than the declared one serves another artifact: it is skipped
    before a byte is written.
    """
    if url.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise SourceFailed(f"{path} does not exist") from None
        except OSError as exc:
            raise Transient(str(exc)) from exc
        actual = os.fstat(handle.fileno()).st_size
        if actual != size:
            handle.close()
            raise SourceFailed(f"{path} is {actual} bytes, the declared size is {size}")
        handle.seek(offset)
        return handle, offset
    headers = dict(policy.headers)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = ops.open_url(url, headers=headers, timeout=policy.timeout)
    except http_error() as exc:
        code = exc.code
        exc.close()
        if code == 416:
            raise Transient("HTTP 416 (range not satisfiable): the partial download does not fit, starting again") from None
        if code in (408, 425, 429) or code >= 500:
            raise Transient(f"HTTP {code} {exc.reason}") from None
        raise SourceFailed(f"HTTP {code} {exc.reason}") from None
    except url_errors() as exc:
        raise Transient(str(exc) or type(exc).__name__) from exc
    status = _status(response)
    if offset and status == 206:
        match = _CONTENT_RANGE.match(_header(response, "Content-Range") or "")
        if not match or int(match.group(1)) != offset:
            response.close()
            raise Transient(f"asked for bytes {offset}- and got Content-Range {_header(response, 'Content-Range')!r}")
        if match.group(3) != "*" and int(match.group(3)) != size:
            response.close()
            raise SourceFailed(f"serves {match.group(3)} bytes, the declared size is {size}")
        return response, offset
    if status not in (200, None):
        response.close()
        raise SourceFailed(f"HTTP {status}")
    length = _header(response, "Content-Length")
    if length and length.isdigit() and int(length) != size:
        response.close()
        raise SourceFailed(f"serves {length} bytes, the declared size is {size}")
    return response, 0


def copy_body(
    ops: HostOps, body: t.Any, part: str, *, offset: int, size: int, policy: FetchPolicy, deadline: float | None,
) -> int:
    """Append the body to part (truncated to offset first); return bytes written. Never writes past size."""
    written = 0
    window_start, window_bytes = ops.monotonic(), 0
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(part, flags, 0o600)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        while offset + written < size:
            try:
                chunk = body.read(min(READ_CHUNK, size - offset - written))
            except url_errors() as exc:
                raise Transient(f"transfer broke after {offset + written} of {size} bytes: {exc or type(exc).__name__}") from exc
            if not chunk:
                raise Transient(f"connection closed after {offset + written} of {size} bytes")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            written += len(chunk)
            window_bytes += len(chunk)
            now = ops.monotonic()
            if deadline is not None and now > deadline:
                raise GiveUp(f"gave up after max_time {policy.max_time:g}s with {offset + written} of {size} bytes")
            elapsed = now - window_start
            if elapsed >= policy.throughput_window:
                rate = window_bytes / elapsed
                if policy.min_throughput and rate < policy.min_throughput:
                    raise SourceFailed(f"throughput {rate:.0f} B/s is below min_throughput {policy.min_throughput} B/s")
                window_start, window_bytes = now, 0
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


class Fetcher:
    """Downloads into the .part file of one digest, source after source, resuming with HTTP Range."""

    def __init__(self, ops: HostOps, layout: HostLayout, policy: FetchPolicy) -> None:
        self.ops = ops
        self.layout = layout
        self.policy = policy
        self.deadline = ops.monotonic() + policy.max_time if policy.max_time else None

    def _pause(self, attempt: int) -> None:
        delay = min(self.policy.backoff_max, self.policy.backoff * (2 ** (attempt - 1)))
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - self.ops.monotonic()))
        if delay > 0:
            self.ops.sleep(delay)

    def from_source(self, sha256: str, size: int, name: str, url: str, transfer: Transfer) -> None:
        """Complete the .part file from one source or raise SourceFailed / GiveUp / FetchRefused."""
        part = self.layout.part_path(sha256)
        attempt = 0
        while True:
            offset = os.path.getsize(part) if os.path.isfile(part) else 0
            if offset > size:
                remove_path(part)
                offset = 0
            if offset == size:
                return
            try:
                ensure_free_space(self.layout.cache_dir, size - offset, what=f"stage {sha256[:12]}")
            except ReleaseError as exc:
                remove_path(part)
                raise FetchRefused(str(exc)) from None
            transfer.attempts += 1
            try:
                body, start = open_source(self.ops, url, offset, size, self.policy)
                if offset and start == 0:
                    transfer.restarts += 1
                elif offset:
                    transfer.resumed = True
                with body:
                    written = copy_body(self.ops, body, part, offset=start, size=size, policy=self.policy,
                                        deadline=self.deadline)
                transfer.bytes += written
                transfer.bytes_by_source[name] = transfer.bytes_by_source.get(name, 0) + written
                return
            except Transient as exc:
                self._count_partial(part, offset, name, transfer)
                attempt += 1
                transfer.errors.append(f"{name} attempt {attempt}: {exc}")
                if attempt > self.policy.retries:
                    raise SourceFailed(f"{exc} (after {attempt} attempts)") from None
                if self.deadline is not None and self.ops.monotonic() >= self.deadline:
                    raise GiveUp(f"gave up after max_time {self.policy.max_time:g}s: {exc}") from None
                self._pause(attempt)
            except SourceFailed:
                self._count_partial(part, offset, name, transfer)
                raise
            except OSError as exc:
                # the cache filesystem failed us (full, read-only): no partial file stays behind
                remove_path(part)
                what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
                raise FetchRefused(f"cannot write {part}: {what}; the partial download was removed") from exc

    @staticmethod
    def _count_partial(part: str, offset: int, name: str, transfer: Transfer) -> None:
        """Bytes a broken attempt added to the partial file still count as transferred."""
        now = os.path.getsize(part) if os.path.isfile(part) else 0
        if now > offset:
            transfer.bytes += now - offset
            transfer.bytes_by_source[name] = transfer.bytes_by_source.get(name, 0) + now - offset
