# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: verification of an event log's hash chain. Not a public API.

Reads what ``_events.EventLog`` writes (the line format is described there) and names the place of every edited,
deleted, reordered, duplicated or truncated line. Kept apart from the recorder: the callback never verifies, and the
registry, ``bin/fleetpatch-registry`` and the benchmarks verify without recording.
"""

from __future__ import annotations

import binascii
import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import typing as t
from concurrent.futures.process import BrokenProcessPool

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import (
    _HEAD_RE,
    _PREV,
    GENESIS,
    _load,
    _parse_head,
    line_hash,
)

__all__ = ["PARALLEL_MIN_BYTES", "FileReport", "Finding", "scan_ranges", "verify_event_file"]

T = t.TypeVar("T")
_READ_CHUNK = 512 * 1024  # small enough that a chunk is still in the CPU cache while its lines are hashed


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing a verification found. severity: tamper (the record was changed), warning, or info."""

    kind: str  # edited | deleted | reordered | duplicated | truncated | corrupt | incomplete_tail | unsealed | ...
    where: str
    message: str
    severity: str = "tamper"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FileReport:
    path: str
    lines: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    head: str = GENESIS
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(finding.severity == "tamper" for finding in self.findings)

    def as_dict(self) -> dict[str, t.Any]:
        return {"path": self.path, "ok": self.ok, "lines": self.lines, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "head": self.head, "findings": [finding.as_dict() for finding in self.findings]}


def _chunks(path: str, start: int = 0, end: int | None = None) -> t.Iterator[tuple[list[bytes], bool]]:
    """(complete lines, is_last) over [start, end) of a file (both on line boundaries) read in large chunks; the
    last list may hold an unterminated line."""
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        remaining = (os.fstat(handle.fileno()).st_size if end is None else end) - start
        rest = b""
        while True:
            chunk = handle.read(min(_READ_CHUNK, remaining)) if remaining > 0 else b""
            remaining -= len(chunk)
            if not chunk:
                if rest:
                    yield [rest], True
                return
            # split the chunk as read and carry its unterminated end over: joining or cutting whole chunks would
            # copy every byte twice more, and a fresh multi-megabyte buffer costs page faults
            lines = chunk.split(b"\n")
            del chunk
            lines[0] = rest + lines[0]
            rest = lines.pop()
            if lines:
                yield lines, False


PARALLEL_MIN_BYTES = 64 * 1024 * 1024


def _hash_lines(chunk: bytes, start: int, stop: int, digests: list[bytes], prevs: list[bytes]) -> int:
    """Append the sha256 and the prev field of every line of chunk[start:stop] (stop is just past a newline); return
    the offset of the last line. Lines are hashed through a memoryview: cutting the chunk into line objects costs
    as much as hashing them (an allocation and a copy per line)."""
    find, view, sha256 = chunk.find, memoryview(chunk), hashlib.sha256
    add_digest, add_prev = digests.append, prevs.append
    first, last, pos = _PREV.start, _PREV.stop, start
    line_start = start
    while pos < stop:
        end = find(b"\n", pos, stop)
        add_digest(sha256(view[pos:end]).digest())
        add_prev(chunk[pos + first:pos + last])
        line_start, pos = pos, end + 1
    return line_start


def _scan(path: str, start: int, end: int) -> tuple[int, str, bool, str, bytes, bool]:
    """Hash every line of [start, end) and compare each with the next line's prev, in bulk.
    Returns (lines, prev of the first line, chain intact inside the range, hash of the last line, last line,
    ends with a newline)."""
    count, intact, first_prev, head, last, ends = 0, True, b"", b"", b"", True
    carry = b""  # the start of a line the previous chunk cut
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        remaining = end - start
        while True:
            chunk = handle.read(min(_READ_CHUNK, remaining)) if remaining > 0 else b""
            remaining -= len(chunk)
            digests: list[bytes] = []
            prevs: list[bytes] = []
            if not chunk:
                if not carry:
                    break
                # an unterminated last line
                _hash_lines(carry + b"\n", 0, len(carry) + 1, digests, prevs)
                last, carry, ends = carry, b"", False
            else:
                cut = chunk.rfind(b"\n") + 1
                if not cut:
                    carry += chunk
                    continue
                body = 0
                if carry:
                    body = chunk.find(b"\n") + 1
                    joined = carry + chunk[:body]
                    _hash_lines(joined, 0, len(joined), digests, prevs)
                    last = joined[:-1]
                if body < cut:
                    line = _hash_lines(chunk, body, cut, digests, prevs)
                    last = chunk[line:cut - 1]
                carry = chunk[cut:]
            joined_prevs = b"".join(prevs)
            if count == 0:
                first_prev, joined_prevs, expected = joined_prevs[:64], joined_prevs[64:], b"".join(digests[:-1])
            else:
                expected = head + b"".join(digests[:-1])
            if intact:
                try:
                    intact = binascii.unhexlify(joined_prevs) == expected
                except (binascii.Error, ValueError):
                    intact = False
            count += len(digests)
            head = digests[-1]
    return count, first_prev.decode("ascii", "replace"), intact, head.hex(), last, ends


def _byte_ranges(path: str, size: int, parts: int) -> list[tuple[int, int]]:
    bounds = [0]
    with open(path, "rb") as handle:
        for part in range(1, parts):
            handle.seek(size * part // parts)
            handle.readline()
            if bounds[-1] < handle.tell() < size:
                bounds.append(handle.tell())
    bounds.append(size)
    return list(zip(bounds, bounds[1:]))


def _line_at(path: str, start: int, index: int) -> bytes:
    """Line number index (0-based) counted from byte start."""
    for lines, _is_last in _chunks(path, start):
        if index < len(lines):
            return lines[index]
        index -= len(lines)
    return b""


def scan_ranges(path: str, scan: t.Callable[[str, int, int], T], *, workers: int | None = None) -> tuple[list[tuple[int, int]], list[T]]:
    """scan(path, start, end) over line-aligned byte ranges of the file, in order: one range for a small file; for one
    over PARALLEL_MIN_BYTES, one per CPU (at most 8), the first checked here while forked workers check the others."""
    size = os.path.getsize(path)
    parts = workers or (min(os.cpu_count() or 1, 8) if size >= PARALLEL_MIN_BYTES else 1)
    ranges = _byte_ranges(path, size, parts) if parts > 1 else [(0, size)]
    if len(ranges) == 1:
        return ranges, [scan(path, *ranges[0])]
    with concurrent.futures.ProcessPoolExecutor(len(ranges) - 1, mp_context=multiprocessing.get_context("fork")) as pool:
        others = [pool.submit(scan, path, *bounds) for bounds in ranges[1:]]
        return ranges, [scan(path, *ranges[0])] + [future.result() for future in others]


def verify_event_file(path: str, *, anchors: t.Iterable[t.Mapping[str, t.Any]] = (), workers: int | None = None) -> FileReport:
    """Check the chain of an event file. Anchors ({seq, head, where}) are heads recorded elsewhere (the registry):
    they catch a rewritten chain and lines cut off the end.

    Fast path: every line is hashed and compared with the next line's prev field in bulk, in C loops, and a file over
    64 MiB is cut into ranges checked by one process per CPU; only a file whose chain breaks somewhere is read again
    line by line to classify and place every break.
    """
    report = FileReport(path)
    rel = os.path.basename(path)
    anchors = [anchor for anchor in anchors if isinstance(anchor.get("seq"), int) and anchor.get("seq")]
    try:
        ranges, scans = scan_ranges(path, _scan, workers=workers)
    except (OSError, BrokenProcessPool) as exc:
        report.findings.append(Finding("missing_file", rel, f"cannot read {path}: {exc}"))
        return report
    head, number, intact, starts = GENESIS, 0, True, []
    for count, first_prev, inside, last_head, _last, _ends in scans:
        intact = intact and inside and (count == 0 or first_prev == head)
        starts.append(number)
        number += count
        head = last_head if count else head
    report.lines = number
    if number == 0:
        return _check_anchors(report, {}, anchors, rel)
    ends_with_newline = scans[-1][5]
    parsed = _parse_head(scans[-1][4]) if intact and ends_with_newline else None
    # An intact chain from the genesis hash whose last line has seq == line count numbers every line 1..n.
    if parsed is None or parsed[1] != number:
        return _verify_slow(path, report, rel, ends_with_newline, anchors)
    report.first_seq, report.last_seq, report.head = 1, number, head
    seen: dict[int, str] = {}
    for anchor in anchors:
        seq = anchor["seq"]
        if seq == number:  # a run's seal: the last line, whose hash the scan already has
            seen[seq] = head
        elif seq < number:
            part = max(index for index, first in enumerate(starts) if first < seq)
            seen[seq] = line_hash(_line_at(path, ranges[part][0], seq - starts[part] - 1))
    return _check_anchors(report, seen, anchors, rel)


def _verify_slow(path: str, report: FileReport, rel: str, ends_with_newline: bool,
                 anchors: t.Sequence[t.Mapping[str, t.Any]]) -> FileReport:
    """Classify every break of the chain; needs the seq and hash of every line (one more pass)."""
    seqs: list[int | None] = []
    hashes: list[str] = []
    with open(path, "rb") as handle:
        raw_lines = handle.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for line in raw_lines:
        match = _HEAD_RE.match(line)
        seqs.append(int(match.group(2)) if match else None)
        hashes.append(line_hash(line))
    count = len(raw_lines)
    torn_ok = _unparsable_lines(raw_lines, hashes, report.findings, rel, ends_with_newline)
    _chain_breaks(raw_lines, seqs, hashes, torn_ok, report.findings, rel)
    good = [index for index in range(count) if index + 1 not in torn_ok and seqs[index] is not None]
    if good:
        last = good[-1]
        report.first_seq = seqs[good[0]]
        report.last_seq = seqs[last] or 0
        report.head = hashes[last]
    seq_to_hash = {seqs[index]: hashes[index] for index in good if seqs[index] is not None}
    return _check_anchors(report, seq_to_hash, anchors, rel)


def _unparsable_lines(raw_lines: list[bytes], hashes: list[str], findings: list[Finding], rel: str, ends_with_newline: bool) -> set[int]:
    """Classify every line that does not parse: a torn tail (last line, no newline), a torn line declared by the next
    writer, or corrupt. Returns the numbers of the torn lines the chain skips."""
    count = len(raw_lines)
    torn_ok: set[int] = set()
    for index, line in enumerate(raw_lines):
        number = index + 1
        if _load(line) is not None:
            continue
        if number == count and not ends_with_newline:
            findings.append(Finding("incomplete_tail", f"{rel} line {number}",
                                    f"the last line ({len(line)} bytes) is incomplete: the writer stopped mid-line (killed?);"
                                    " everything before it verifies", "warning"))
            torn_ok.add(number)
            continue
        following = _load(raw_lines[index + 1]) if index + 1 < count else None
        torn = ((following or {}).get("data") or {}).get("torn_tail") if following and following.get("event") == "log.opened" else None
        if isinstance(torn, dict) and torn.get("sha256") == hashes[index]:
            findings.append(Finding("torn_line", f"{rel} line {number}",
                                    f"line {number} is a torn line the next writer declared (log.opened at line {number + 1})", "info"))
            torn_ok.add(number)
            continue
        findings.append(Finding("corrupt", f"{rel} line {number}", f"line {number} is not a valid event line: edited or corrupted"))
    return torn_ok


def _chain_breaks(raw_lines: list[bytes], seqs: list[int | None], hashes: list[str], torn_ok: set[int], findings: list[Finding],
                  rel: str) -> None:
    """Check the prev of each line against the hash of the last good line before it (declared torn lines are skipped),
    and name every break: duplicated, reordered, deleted or edited lines."""
    positions: dict[int, list[int]] = collections.defaultdict(list)
    for index, seq in enumerate(seqs):
        if seq is not None and index + 1 not in torn_ok:
            positions[seq].append(index + 1)
    reported_missing: set[int] = set()
    previous_index: int | None = None
    for index, line in enumerate(raw_lines):
        number = index + 1
        if number in torn_ok or seqs[index] is None:
            continue
        seq = seqs[index]
        prev = line[_PREV].decode("ascii", "replace")
        expected_prev = GENESIS if previous_index is None else hashes[previous_index]
        expected_seq = 1 if previous_index is None else (seqs[previous_index] or 0) + 1
        if prev != expected_prev or seq != expected_seq:
            where = f"{rel} line {number} (seq {seq})"
            before = "the start of the file" if previous_index is None else f"line {previous_index + 1} (seq {seqs[previous_index]})"
            if previous_index is not None and raw_lines[previous_index] == line:
                findings.append(Finding("duplicated", where, f"line {number} duplicates line {previous_index + 1} (seq {seq})"))
                continue  # the duplicate does not advance the chain
            if len(positions.get(seq, [])) > 1 and positions[seq][0] != number:
                first = positions[seq][0]
                same = raw_lines[first - 1] == line
                findings.append(Finding("duplicated", where, f"seq {seq} appears again at line {number} (first at line {first})"
                                        + ("" if same else " with different content: one of them was inserted or edited")))
                continue
            if seq < expected_seq:
                findings.append(Finding("reordered", where, f"line {number} (seq {seq}) is out of order: it comes after {before}"))
            elif seq > expected_seq:
                missing = [value for value in range(expected_seq, seq) if value not in reported_missing]
                elsewhere = [value for value in missing if value in positions]
                gone = [value for value in missing if value not in positions]
                reported_missing.update(missing)
                if elsewhere:
                    findings.append(Finding("reordered", where, f"seq {_ranges(elsewhere)} expected after {before} appear(s)"
                                            f" elsewhere (line(s) {', '.join(str(positions[v][0]) for v in elsewhere[:5])}): lines were moved"))
                if gone:
                    findings.append(Finding("deleted", where, f"line(s) with seq {_ranges(gone)} are missing between {before} and line {number}"))
            elif previous_index is not None:
                findings.append(Finding("edited", f"{rel} line {previous_index + 1} (seq {seqs[previous_index]})",
                                        f"line {previous_index + 1} does not match the hash that line {number} recorded for it: it was edited"
                                        f" (or line {number}'s prev field was)"))
            else:
                findings.append(Finding("edited", where, f"the first line does not start the chain (prev is not {GENESIS[:8]}...):"
                                        " lines before it were removed or it was edited"))
        previous_index = index


def _check_anchors(report: FileReport, seq_to_hash: t.Mapping[int, str], anchors: t.Sequence[t.Mapping[str, t.Any]],
                   rel: str) -> FileReport:
    for anchor in anchors:
        seq, head, source = anchor["seq"], anchor.get("head"), anchor.get("where", "the registry")
        if seq > report.last_seq:
            report.findings.append(Finding("truncated", f"{rel} after seq {report.last_seq}",
                                           f"{source} recorded line seq {seq} (hash {str(head)[:12]}...), but the file ends at seq"
                                           f" {report.last_seq}: lines were cut off the end"))
        elif seq_to_hash.get(seq) not in (None, head):
            report.findings.append(Finding("edited", f"{rel} seq {seq}",
                                           f"line seq {seq} differs from the hash {source} recorded for it ({str(head)[:12]}...):"
                                           " the chain was rewritten at or before that line"))
    return report


def _ranges(values: t.Sequence[int]) -> str:
    if not values:
        return ""
    parts, start, end = [], values[0], values[0]
    for value in values[1:]:
        if value == end + 1:
            end = value
            continue
        parts.append(str(start) if start == end else f"{start}-{end}")
        start = end = value
    parts.append(str(start) if start == end else f"{start}-{end}")
    return ", ".join(parts)
