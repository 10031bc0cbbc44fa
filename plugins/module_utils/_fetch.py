# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the one downloader of prestage and patch_apply. Not a public API.

Bounded, resumable downloads into the content-addressed cache: a byte cap (the declared size, else
``max_artifact_bytes``), an overall deadline (``max_time``) and a minimum throughput averaged over a window, each
breach a clear failure that names the source without its credentials. Bytes reach ``cache/sha256/<digest>`` only by
rename(2) after the digest and the caller's checks (signature, bundle members) verified.

Imported only when an artifact has to be fetched: a host that finds everything staged never compiles it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import typing as t
import urllib.parse

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import (
    ReleaseError,
    ensure_free_space,
    http_error,
    remove_path,
    url_errors,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import fsync_directory, sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._record import Record

if t.TYPE_CHECKING:
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostOps

__all__ = ["DownloadFailed", "FetchPolicy", "FetchRefused", "Refused", "Transfer", "download", "os", "part_path", "shown_url"]

READ_CHUNK = 256 * 1024
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
PART_SUFFIX = ".part"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FetchPolicy(Record):
    """How hard a download tries: per-request timeout, retries with backoff, minimum throughput, deadline, headers (not
    in the repr: they may carry credentials); max_artifact_bytes: the byte cap of a transfer whose size is not declared
    (the apply path; prestage always declares one)."""

    __slots__ = ("timeout", "retries", "backoff", "backoff_max", "min_throughput", "throughput_window", "max_time", "headers",
                 "max_artifact_bytes")
    _hidden = frozenset({"headers"})
    timeout: float
    retries: int
    backoff: float
    backoff_max: float
    min_throughput: int
    throughput_window: float
    max_time: float
    headers: t.Mapping[str, str]
    max_artifact_bytes: int

    def __init__(  # pylint: disable=too-many-arguments
        self, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0, backoff_max: float = 30.0, min_throughput: int = 0,
        throughput_window: float = 10.0, max_time: float = 0.0, headers: t.Mapping[str, str] | None = None,
        max_artifact_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._set(timeout=timeout, retries=retries, backoff=backoff, backoff_max=backoff_max, min_throughput=min_throughput,
                  throughput_window=throughput_window, max_time=max_time, headers={} if headers is None else headers,
                  max_artifact_bytes=max_artifact_bytes)


class FetchRefused(ReleaseError):
    """The cache cannot take the artifact (not enough space, a write failed); the partial file is gone."""


class Refused(ReleaseError):
    """The bytes have the declared digest but the caller's check (signature, bundle members) refused them; removed."""


class DownloadFailed(ReleaseError):
    """No source delivered the artifact; str() joins the last errors, `kept` is the partial file's length."""

    def __init__(self, errors: list[str], kept: int) -> None:
        super().__init__("; ".join(errors[-6:]) or "no source delivered it")
        self.kept = kept


class Transient(FleetpatchError):
    """Worth another attempt at the same source after a pause (reset, timeout, 5xx)."""


class SourceFailed(FleetpatchError):
    """This source will not deliver (404, wrong size): try the next one."""


class Breach(SourceFailed):
    """The source broke a transfer limit (byte cap, minimum throughput): its partial bytes are dropped."""


class GiveUp(FleetpatchError):
    """Stop altogether: the overall deadline (max_time) passed."""


def shown_url(url: str) -> str:
    """The URL as it may appear in a message: userinfo replaced by ***, query and fragment values dropped.

    Credentials in ``https://user:token@host/...`` and signed-URL parameters (``?X-Amz-Signature=...``) never reach an
    error message, a result or a log from here.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def part_path(cache_dir: str, sha256: str) -> str:
    """Where a download of sha256 grows (same as HostLayout.part_path): hidden, never mistaken for the final path."""
    return f"{cache_dir}/.{sha256}{PART_SUFFIX}"


class Transfer(Record):
    """What fetching one artifact did; corrupt: sources whose complete bytes did not have the declared digest (an edge
    reported by its nodes). as_dict() gives every field."""

    __slots__ = ("sha256", "kind", "source", "bytes", "bytes_by_source", "resumed", "restarts", "attempts", "errors", "corrupt")
    _frozen = False

    def __init__(  # pylint: disable=too-many-arguments
        self, sha256: str, kind: str, source: str | None = None, bytes: int = 0,  # pylint: disable=redefined-builtin
        bytes_by_source: dict[str, int] | None = None, resumed: bool = False, restarts: int = 0, attempts: int = 0,
        errors: list[str] | None = None, corrupt: dict[str, str] | None = None,
    ) -> None:
        self.sha256, self.kind, self.source, self.bytes = sha256, kind, source, bytes
        self.bytes_by_source = {} if bytes_by_source is None else bytes_by_source
        self.resumed, self.restarts, self.attempts = resumed, restarts, attempts
        self.errors = [] if errors is None else errors
        self.corrupt = {} if corrupt is None else corrupt


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


def _refuse_total(total: int, size: int | None, cap: int) -> None:
    """A source announcing another size than the declared one serves another artifact; one announcing more than the
    cap (no size declared) would breach it. Either is refused before a byte is written."""
    if size is not None and total != size:
        raise SourceFailed(f"serves {total} bytes, the declared size is {size}")
    if size is None and total > cap:
        raise Breach(f"announces {total} bytes, more than max_artifact_bytes {cap}")


def open_source(
    ops: HostOps, url: str, offset: int, size: int | None, policy: FetchPolicy, *, cap: int, timeout: float,
) -> tuple[t.Any, int]:
    """(readable, offset it starts at). A server that ignores Range starts again at 0.

    A source that announces another total size than the declared one serves another artifact, and one that announces
    more than the cap would breach it: both are skipped before a byte is written.
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
        try:
            _refuse_total(actual, size, cap)
        except SourceFailed:
            handle.close()
            raise
        handle.seek(min(offset, actual))
        return handle, min(offset, actual)
    headers = dict(policy.headers)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = ops.open_url(url, headers=headers, timeout=timeout)
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
        announced = _header(response, "Content-Range") or ""
        match = _CONTENT_RANGE.fullmatch(announced)
        if not match or int(match.group(1)) != offset:
            response.close()
            raise Transient(f"asked for bytes {offset}- and got Content-Range {announced[:80]!r}")
        if match.group(3) != "*":
            try:
                _refuse_total(int(match.group(3)), size, cap)
            except SourceFailed:
                response.close()
                raise
        return response, offset
    if status not in (200, None):
        response.close()
        raise SourceFailed(f"HTTP {status}")
    length = _header(response, "Content-Length")
    if length and length.isdigit():
        try:
            _refuse_total(int(length), size, cap)
        except SourceFailed:
            response.close()
            raise
    return response, 0


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in str(exc)


def copy_body(
    ops: HostOps, body: t.Any, part: str, *, offset: int, size: int | None, cap: int, policy: FetchPolicy,
    deadline: float | None,
) -> int:
    """Append the body to part (truncated to offset first); return bytes written.

    Never writes past the declared size; without one, reads to the end of the body and breaks off past the cap (an
    origin that never ends its response is stopped there). Reads return what has arrived (read1), so the deadline and
    the throughput window are checked at least once per read timeout, not once per 256 KiB.
    """
    written = 0
    window_start, window_bytes = ops.monotonic(), 0
    read = getattr(body, "read1", None) or body.read
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(part, flags, 0o600)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        while size is None or offset + written < size:
            # one byte more than the cap allows shows that the body goes on
            want = (size if size is not None else cap + 1) - offset - written
            try:
                chunk = read(min(READ_CHUNK, want))
                stalled = False
            except url_errors() as exc:
                if not _timed_out(exc):
                    raise Transient(f"transfer broke after {offset + written} bytes: {exc or type(exc).__name__}") from exc
                chunk, stalled = b"", True
            now = ops.monotonic()
            if chunk:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                written += len(chunk)
                window_bytes += len(chunk)
                if size is None and offset + written > cap:
                    raise Breach(f"more than max_artifact_bytes {cap} bytes and the origin is still sending")
            if deadline is not None and now > deadline:
                raise GiveUp(f"max_time {policy.max_time:g} s reached after {offset + written} bytes")
            elapsed = now - window_start
            if policy.min_throughput and elapsed >= policy.throughput_window:
                rate = window_bytes / elapsed
                if rate < policy.min_throughput:
                    raise Breach(f"slower than {policy.min_throughput} B/s for {policy.throughput_window:g} s "
                                 f"({rate:.0f} B/s, {offset + written} bytes so far)")
                window_start, window_bytes = now, 0
            if stalled:
                raise Transient(f"no data for {policy.timeout:g} s after {offset + written} bytes")
            if not chunk:
                if size is None:
                    break
                raise Transient(f"connection closed after {offset + written} of {size} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


class Fetcher:
    """Downloads into the .part file of one digest, source after source, resuming with HTTP Range."""

    def __init__(self, ops: HostOps, cache_dir: str, policy: FetchPolicy) -> None:
        self.ops = ops
        self.cache_dir = cache_dir
        self.policy = policy
        self.cap = int(policy.max_artifact_bytes or DEFAULT_MAX_BYTES)
        self.deadline = ops.monotonic() + policy.max_time if policy.max_time else None

    def _pause(self, attempt: int) -> None:
        delay = min(self.policy.backoff_max, self.policy.backoff * (2 ** (attempt - 1)))
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - self.ops.monotonic()))
        if delay > 0:
            self.ops.sleep(delay)

    def _read_timeout(self) -> float:
        """The socket timeout of one request: a stalled source is noticed within the throughput window and the
        deadline, not only after the connect/read timeout."""
        timeout = float(self.policy.timeout)
        if self.policy.min_throughput:
            timeout = min(timeout, max(0.05, float(self.policy.throughput_window)))
        if self.deadline is not None:
            timeout = min(timeout, max(0.05, self.deadline - self.ops.monotonic()))
        return timeout

    def from_source(self, sha256: str, size: int | None, name: str, url: str, transfer: Transfer) -> None:
        """Complete the .part file from one source or raise SourceFailed / Breach / GiveUp / FetchRefused.

        Messages name the source as shown_url() shows it. A breach of a limit removes the partial file.
        """
        part = part_path(self.cache_dir, sha256)
        shown = shown_url(url)
        attempt = 0
        while True:
            offset = os.path.getsize(part) if os.path.isfile(part) else 0
            if offset > (size if size is not None else self.cap):
                remove_path(part)
                offset = 0
            if size is not None and offset == size:
                return
            if self.deadline is not None and self.ops.monotonic() >= self.deadline:
                raise GiveUp(f"artifact transfer from {shown} stopped: max_time {self.policy.max_time:g} s reached "
                             f"after {offset} bytes")
            try:
                ensure_free_space(self.cache_dir, max(0, (size or 0) - offset), what=f"stage {sha256[:12]}")
            except ReleaseError as exc:
                remove_path(part)
                raise FetchRefused(str(exc)) from None
            transfer.attempts += 1
            try:
                body, start = open_source(self.ops, url, offset, size, self.policy, cap=self.cap, timeout=self._read_timeout())
                if offset and start == 0:
                    transfer.restarts += 1
                elif offset:
                    transfer.resumed = True
                with body:
                    written = copy_body(self.ops, body, part, offset=start, size=size, cap=self.cap, policy=self.policy,
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
                    raise GiveUp(f"artifact transfer from {shown} stopped: max_time {self.policy.max_time:g} s "
                                 f"reached: {exc}") from None
                self._pause(attempt)
            except Breach as exc:
                self._count_partial(part, offset, name, transfer)
                # the bytes broke a limit: nothing of them is worth resuming
                remove_path(part)
                raise Breach(f"artifact transfer from {shown} stopped: {exc}") from None
            except GiveUp as exc:
                self._count_partial(part, offset, name, transfer)
                raise GiveUp(f"artifact transfer from {shown} stopped: {exc}") from None
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


def download(
    ops: HostOps, *, cache_dir: str, sha256: str, size: int | None, sources: t.Sequence[tuple[str, str]],
    policy: FetchPolicy, transfer: Transfer, check: t.Callable[[str], None] | None = None, keep_partial: bool = True,
) -> str:
    """Fetch sha256 into cache_dir/<sha256> from the first source that delivers it; return the final path.

    Sources are (name, url) in order. The complete .part file must have the digest, then check(path) (signature,
    bundle members) must pass; only then is it renamed into place. Raises FetchRefused (the cache cannot take it),
    Refused (check refused it; removed), DownloadFailed (no source delivered; the partial file is kept for the next
    run when keep_partial, else removed). A source whose bytes had another digest is in transfer.corrupt.
    """
    os.makedirs(cache_dir, exist_ok=True)
    fetcher = Fetcher(ops, cache_dir, policy)
    part = part_path(cache_dir, sha256)
    final = f"{cache_dir}/{sha256}"
    try:
        for name, url in sources:
            restarted = False
            while True:
                mixed = os.path.isfile(part) and os.path.getsize(part) > 0
                try:
                    fetcher.from_source(sha256, size, name, url, transfer)
                except SourceFailed as exc:
                    transfer.errors.append(f"{name}: {exc}")
                    break
                digest = sha256_file(part)
                if digest != sha256:
                    got = os.path.getsize(part)
                    remove_path(part)
                    if mixed and not restarted:
                        # the partial came from another source or an earlier run: try this source whole
                        transfer.errors.append(f"{name}: resumed download has sha256 {digest}; starting again from byte 0")
                        restarted = True
                        transfer.restarts += 1
                        continue
                    reason = (f"served {got} bytes with sha256 {digest}, expected {sha256} "
                              "(corrupt); the bytes were discarded")
                    transfer.corrupt[name] = reason
                    transfer.errors.append(f"{name}: {reason}")
                    break
                if check is not None:
                    try:
                        check(part)
                    except ReleaseError as exc:
                        remove_path(part)
                        raise Refused(str(exc)) from exc
                os.chmod(part, 0o644)
                os.replace(part, final)
                fsync_directory(cache_dir)
                transfer.source = name
                return final
    except GiveUp as exc:
        transfer.errors.append(str(exc))
    if not keep_partial:
        remove_path(part)
    raise DownloadFailed(transfer.errors, os.path.getsize(part) if os.path.isfile(part) else 0)
