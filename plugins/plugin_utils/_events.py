# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the deployment event log. Not a public API.

One JSON line per event, in a per-run file written only by the ``fleetpatch.rollout.events`` callback. Every line
starts with the two chain fields, then the event's fields in sorted order:

    {"prev":"<sha256 hex of the previous line's bytes, without its newline>","seq":<1, 2, ...>,"action":...}

The first line of a file has ``prev`` = 64 zeros. A later playbook run of the same rollout run appends to the same
file and continues the chain with a ``log.opened`` line; when the previous writer was killed mid-line, that
``log.opened`` line declares the torn line (its size and sha256), so the reader can tell a torn tail from an edit.

Action plugins never write this file: they return domain events in their result under ``fleetpatch_events`` (see
``domain_event``), announce a run under ``fleetpatch_run`` and the registry under ``fleetpatch_registry``; the
callback records all three (``RunRecorder``). ``_event_verify.verify_event_file`` checks a file and names the place of
every edited, deleted, reordered, duplicated or truncated line.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._awx import AwxIdentityError, awx_correlation_id, awx_identity
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError, open_store
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import (
    DEFAULT_SECRET_PATTERNS,
    Redactor,
    Scrubber,
    clean_result,
    digest_text,
)

__all__ = [
    "ACTIVE_ENV",
    "CORRELATION_ENV",
    "EventLog",
    "GENESIS",
    "HOST_ATTRIBUTES",
    "REQUIRED_ENV",
    "RecorderOptions",
    "RunRecorder",
    "correlation_for_attempt",
    "domain_event",
    "events_callback_active",
    "file_head",
    "line_hash",
    "os",
    "parse_traceparent",
    "read_events",
    "recorder_problem",
    "explicit_correlation_id",
    "resolve_correlation_id",
    "utc_ts",
]

FORMAT = 1
GENESIS = "0" * 64
PREFIX = b'{"prev":"'
_PREV = slice(9, 73)
_HEAD_RE = re.compile(rb'\{"prev":"([0-9a-f]{64})","seq":([0-9]+),')
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CORRELATION_RE = re.compile(r"[^A-Za-z0-9._:@/+-]")
# Every line carries every one of these keys (null when it does not apply); docs/events.schema.json describes them.
FIELDS = ("v", "ts", "event", "correlation_id", "traceparent", "run_id", "patch_id", "wave", "batch", "host", "region",
          "tenant", "segment", "environment", "task", "action", "status", "changed", "duration", "message", "data")
HOST_ATTRIBUTES = ("region", "tenant", "segment", "environment")
# play.started names at most this many of a play's hosts (and then their count)
_PLAY_HOSTS_SHOWN = 20
# Events after which the file is flushed at once: wave boundaries and the decisions taken at them.
BOUNDARY_EVENTS = frozenset({"wave.started", "wave.finished", "gate.decision", "run.started", "run.finished", "playbook.finished"})
# the operator's explicit correlation id (an input read by the callback and rollout_plan alike; nothing exports it)
CORRELATION_ENV = "FLEETPATCH_CORRELATION_ID"
# set by the callback at the first play: a capability check for rollout_plan (does this playbook run keep a log?)
ACTIVE_ENV = "FLEETPATCH_EVENTS_ACTIVE"
_MAX_PRE_RUN = 10000


def utc_ts(epoch: float | None = None) -> str:
    moment = _dt.datetime.fromtimestamp(time.time() if epoch is None else epoch, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line_hash(line: bytes) -> str:
    """Hash of one line as the next line records it: sha256 of its bytes without the newline."""
    return hashlib.sha256(line).hexdigest()


def build_line(prev: str, seq: int, body_json: str) -> bytes:
    """One line: the chain fields first, then the body's canonical JSON (which must be a non-empty object)."""
    return f'{{"prev":"{prev}","seq":{seq},{body_json[1:]}'.encode("utf-8", "surrogatepass")


def domain_event(event: str, *, host: str | None = None, wave: str | None = None, batch: int | None = None,
                 status: str | None = None, message: str | None = None, ts: str | None = None, **data: t.Any) -> dict[str, t.Any]:
    """An event an action plugin returns under ``fleetpatch_events`` for the callback to record."""
    item: dict[str, t.Any] = {"event": event, "ts": ts or utc_ts(), "data": data}
    for key, value in (("host", host), ("wave", wave), ("batch", batch), ("status", status), ("message", message)):
        if value is not None:
            item[key] = value
    return item


# ---------------------------------------------------------------------------------------------------------
# Correlation id and W3C trace context


def sanitize_correlation_id(value: t.Any) -> str:
    return _CORRELATION_RE.sub("_", str(value).strip())[:128]


# Extra variables that name the correlation id, in order: the operator's own, then the AWX job's. (Issue 17: the
# AWX workflow job id goes first here, so that every slice of one workflow shares one id.)
_CORRELATION_VARS: tuple[tuple[str, str, str], ...] = (
    ("fleetpatch_correlation_id", "{}", "extra_var"),
)


def explicit_correlation_id(*, option: str | None, extra_vars: t.Mapping[str, t.Any], runner_dir: str | None) -> tuple[str, str] | None:
    """(correlation id, where it came from) when the operator or the job runner named one: the option (or its
    environment variable FLEETPATCH_CORRELATION_ID, set by whoever starts ansible-playbook), an extra variable, the AWX
    job, the ansible-runner ident. None when nothing names one. The callback and rollout_plan apply the same rules to
    the same inputs, so they agree without telling each other."""
    if option:
        return sanitize_correlation_id(option), "option"
    for name, template, source in _CORRELATION_VARS:
        if extra_vars.get(name):
            return sanitize_correlation_id(template.format(extra_vars[name])), source
    # under AWX: one id for every job and slice of a workflow job (awx-workflow-<id>), else the job's (_awx.py)
    awx = awx_correlation_id(extra_vars)
    if awx:
        return sanitize_correlation_id(awx), "awx"
    ident = os.path.basename(os.path.normpath(runner_dir)) if runner_dir else ""
    if ident and ident not in (".", "/"):
        return sanitize_correlation_id(f"runner-{ident}"), "ansible-runner"
    return None


def resolve_correlation_id(*, option: str | None, extra_vars: t.Mapping[str, t.Any], runner_dir: str | None) -> tuple[str, str]:
    """(correlation id, where it came from): an explicit one (explicit_correlation_id), else a new UUID."""
    return explicit_correlation_id(option=option, extra_vars=extra_vars, runner_dir=runner_dir) or (str(uuid.uuid4()), "generated")


def correlation_for_attempt(task_vars: t.Mapping[str, t.Any], environ: t.Mapping[str, str] | None = None) -> tuple[str, str]:
    """The correlation id of a new attempt of a run, chosen once by rollout_plan (which stores it in the attempt and
    returns it; the event callback adopts it from that result): the explicit one, by the callback's rules from the
    operator's inputs (FLEETPATCH_CORRELATION_ID, extra variables, AWX_ISOLATED_DATA_DIR), else a new UUID."""
    environ = os.environ if environ is None else environ
    return resolve_correlation_id(option=environ.get(CORRELATION_ENV), extra_vars=task_vars, runner_dir=environ.get("AWX_ISOLATED_DATA_DIR"))


def events_callback_active(environ: t.Mapping[str, str] | None = None) -> bool:
    """Whether the event callback runs in the ansible-playbook process that forked this action plugin's worker."""
    environ = os.environ if environ is None else environ
    return environ.get(ACTIVE_ENV) == str(os.getppid())


REQUIRED_ENV = "FLEETPATCH_EVENTS_REQUIRED"
ENABLE_HINT = ("enable it with ANSIBLE_CALLBACKS_ENABLED=fleetpatch.rollout.events in the environment, or"
               " callbacks_enabled = fleetpatch.rollout.events in the [defaults] section of the ansible.cfg the run uses")
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})


def recorder_problem(environ: t.Mapping[str, str] | None = None) -> str | None:
    """Why a rollout must not start without its event log (None when the callback records this playbook run).

    A rollout whose decisions are not recorded is not auditable, and the registry would later miss its log: so the
    plan refuses before any host is touched, unless the operator said so explicitly (FLEETPATCH_EVENTS_REQUIRED=false),
    which the registry records as a run without an event log.
    """
    environ = os.environ if environ is None else environ
    if events_callback_active(environ):
        return None
    if str(environ.get(REQUIRED_ENV, "")).strip().lower() in _FALSE:
        return None
    return ("the event callback fleetpatch.rollout.events is not enabled, so this rollout would leave no event log;"
            f" refusing to start before any host is touched: {ENABLE_HINT}"
            f" (to run knowingly without an event log, set {REQUIRED_ENV}=false)")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C traceparent, else None."""
    match = _TRACEPARENT_RE.match((value or "").strip().lower())
    if not match or match.group(1) == "ff" or set(match.group(2)) == {"0"} or set(match.group(3)) == {"0"}:
        return None
    return match.group(2), match.group(3)


def new_span_id() -> str:
    return secrets.token_hex(8)


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


# ---------------------------------------------------------------------------------------------------------
# Writing: EventLog chains and appends lines; RunRecorder turns callback data into events.


@dataclasses.dataclass
class Tail:
    """What the end of an existing event file holds."""

    seq: int = 0
    head: str = GENESIS
    lines: int = 0
    needs_newline: bool = False
    torn: dict[str, t.Any] | None = None


def _parse_head(line: bytes) -> tuple[str, int] | None:
    match = _HEAD_RE.match(line)
    if not match:
        return None
    try:
        json.loads(line)
    except ValueError:
        return None
    return match.group(1).decode("ascii"), int(match.group(2))


def inspect_tail(data: bytes, *, from_start: bool) -> Tail:
    """Find the last complete event line in the last bytes of a file (data) and a torn fragment after it."""
    if not data:
        return Tail()
    tail = Tail(needs_newline=not data.endswith(b"\n"))
    lines = data.split(b"\n")
    fragment = None if not tail.needs_newline else lines.pop()
    if tail.needs_newline is False:
        lines.pop()
    if not from_start and lines:
        lines.pop(0)  # may start mid-line
    last: bytes | None = None
    for line in reversed(lines):
        parsed = _parse_head(line)
        if parsed:
            last, tail.seq, tail.head = line, parsed[1], line_hash(line)
            break
    if fragment is not None:
        parsed = _parse_head(fragment)
        if parsed and parsed[0] == tail.head and parsed[1] == tail.seq + 1:
            tail.seq, tail.head = parsed[1], line_hash(fragment)
        else:
            tail.torn = {"bytes": len(fragment), "sha256": line_hash(fragment)}
    del last
    return tail


def read_tail(fd: int, *, window: int = 1024 * 1024) -> Tail:
    size = os.fstat(fd).st_size
    start = max(0, size - window)
    data = os.pread(fd, size - start, start)
    return inspect_tail(data, from_start=start == 0)


class EventLog:
    """Append-only hash-chained JSONL file. Bodies are queued as canonical JSON and chained when written, so a
    failed write loses nothing that is still queued and never leaves a gap in the chain."""

    def __init__(self, path: str, *, fsync: bool = True, max_pending: int = 200000,
                 on_open: t.Callable[[Tail, bool], str | None] | None = None,
                 on_written: t.Callable[[list[tuple[int, str, str]]], None] | None = None) -> None:
        self.path = path
        # told (seq, line, hash) of every line once it is in the file (the postgresql store keeps a copy)
        self.on_written = on_written
        self.fsync = fsync
        self.max_pending = max_pending
        self.on_open = on_open
        self.pending: collections.deque[str] = collections.deque()
        self.fd: int | None = None
        self.seq = 0
        self.head = GENESIS
        self.lines_written = 0
        self.first_seq: int | None = None
        self.dropped = 0
        self.errors: list[str] = []
        self._opened_before = False

    def append(self, body_json: str) -> None:
        self.pending.append(body_json)
        if len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped += 1

    def _open(self) -> bytes:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OSError(f"another process is writing {self.path}") from exc
        try:
            tail = read_tail(fd)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.seq, self.head = tail.seq, tail.head
        opened_line = self.on_open(tail, self._opened_before) if self.on_open else None
        self._opened_before = True
        if opened_line is not None:
            self.pending.appendleft(opened_line)
        return b"\n" if tail.needs_newline else b""

    def flush(self) -> bool:
        """Write every queued line; True on success. On failure the unwritten lines stay queued."""
        if not self.pending:
            return True
        try:
            prefix = self._open() if self.fd is None else b""
        except OSError as exc:
            self._failed(exc)
            return False
        chunks = [prefix] if prefix else []
        ends: list[tuple[int, int, str]] = []
        built: list[bytes] = []
        seq, head, offset = self.seq, self.head, len(prefix)
        for body in self.pending:
            seq += 1
            line = build_line(head, seq, body)
            head = line_hash(line)
            chunks.append(line)
            chunks.append(b"\n")
            offset += len(line) + 1
            ends.append((offset, seq, head))
            built.append(line)
        data = b"".join(chunks)
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, data[written:])  # type: ignore[arg-type]
            if self.fsync:
                os.fsync(self.fd)  # type: ignore[arg-type]
        except OSError as exc:
            done = [end for end in ends if end[0] <= written]
            self._advance(done)
            self._written(done, built)
            self._failed(exc)
            # Re-read the tail on the next attempt: a partly written line is declared torn, not left to look edited.
            self.close()
            return False
        self._advance(ends)
        self._written(ends, built)
        return True

    def _written(self, done: list[tuple[int, int, str]], built: list[bytes]) -> None:
        if self.on_written is not None and done:
            self.on_written([(seq, line.decode("utf-8", "surrogateescape"), digest) for (_end, seq, digest), line in zip(done, built)])

    def _advance(self, done: list[tuple[int, int, str]]) -> None:
        for _done in done:
            self.pending.popleft()
        if done:
            if self.first_seq is None:
                self.first_seq = self.seq + 1
            _offset, self.seq, self.head = done[-1]
            self.lines_written += len(done)

    def _failed(self, exc: OSError) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


@dataclasses.dataclass
class RecorderOptions:
    path: str | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    runner_dir: str | None = None
    secret_vars: tuple[str, ...] = ()
    secret_patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    max_field_chars: int = 4096
    max_line_bytes: int = 65536
    flush_events: int = 100
    flush_seconds: float = 1.0
    fsync: bool = True


class RunRecorder:
    """Everything the event callback does, on plain data. The callback's hooks call one method each.

    Events are kept in memory until a file is known: the path option, or the run that fleetpatch.rollout.rollout_plan
    announces (``fleetpatch_run``). A playbook that never announces a run and has no path option writes nothing.
    """

    def __init__(self, options: RecorderOptions, *, warn: t.Callable[[str], None], say: t.Callable[[str], None],
                 environ: t.MutableMapping[str, str] | None = None, clock: t.Callable[[], float] = time.time,
                 monotonic: t.Callable[[], float] = time.monotonic, timer: bool = True) -> None:
        self.options = options
        self.warn = warn
        self.say = say
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        self.monotonic = monotonic
        self.use_timer = timer and options.flush_seconds > 0
        self.redactor = Redactor(names=options.secret_vars, patterns=options.secret_patterns)
        self.hooks: collections.Counter[str] = collections.Counter()
        # None until known: an explicit id at the first play, else the run's (adopted from rollout_plan's result),
        # else one generated when the log starts without a run
        self.correlation_id: str | None = None
        self.correlation_source: str | None = None
        self.played = False
        parsed = parse_traceparent(options.traceparent)
        if options.traceparent and parsed is None:
            warn(f"fleetpatch.rollout.events: ignoring invalid traceparent {options.traceparent!r}")
        self.trace_id, self.parent_span = parsed if parsed else (secrets.token_hex(16), None)
        self.run_span = new_span_id()
        self.run: dict[str, t.Any] = {}
        self.hosts: dict[str, dict[str, t.Any]] = {}
        self.plan_group: str | None = None
        self.in_plan_play = False
        self.waves_started: set[str] = set()
        self.registry: dict[str, t.Any] | None = None
        self.pre_run: list[dict[str, t.Any]] = []
        self._pre_run_since: float | None = None
        self.pre_run_dropped = 0
        self.log: EventLog | None = None
        self.events = 0
        self._started: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._oldest_pending: float | None = None
        self._warned: set[str] = set()
        self._sealed: dict[str, t.Any] | None = None
        # None while every write succeeded, else why the log is incomplete (kept in the run's store, see _save_log_status)
        self.log_status: str | None = None
        self._status_saved: str | None = None
        # the postgresql store that keeps a copy of every written line (None on other backends)
        self._mirror: t.Any = None
        self._awx: dict[str, t.Any] = {}

    # -- hooks -------------------------------------------------------------------------------------------

    def playbook_start(self, *, playbook: str, check_mode: bool, ansible_version: str, hook: str = "v2_playbook_on_start") -> None:
        self.hooks[hook] += 1
        data = {"playbook": playbook, "check_mode": check_mode, "ansible_version": ansible_version, "format": FORMAT}
        if self.parent_span:
            data["parent_span_id"] = self.parent_span
        self.emit("playbook.started", data=data)

    def play_start(self, *, name: str, hosts: t.Sequence[str], extra_vars: t.Mapping[str, t.Any], serial: bool = False,
                   variables: t.Iterable[t.Mapping[str, t.Any]] = (), host_attributes: t.Mapping[str, t.Mapping[str, t.Any]] | None = None,
                   hook: str = "v2_playbook_on_play_start") -> None:
        """serial: the play runs in batches (the rollout play over the plan group is the one whose hosts start waves)."""
        with self._lock:
            self.hooks[hook] += 1
            if not self.played:
                self._first_play(extra_vars, variables, host_attributes or {})
            # the rollout play runs over the plan's hosts: the list __rollout_plan_hosts (its first host has a wave), or the
            # plan group in a playbook that names it
            planned = bool(hosts) and (self.plan_group in hosts or self.hosts.get(hosts[0], {}).get("wave") is not None)
            self.in_plan_play = bool(serial and self.plan_group and planned)
            # a play over a list of hostnames (the batch play: the whole plan, at every batch) is recorded by its first names
            data: dict[str, t.Any] = {"play": name, "hosts": list(hosts[:_PLAY_HOSTS_SHOWN]), "serial": serial}
            if len(hosts) > _PLAY_HOSTS_SHOWN:
                data["host_count"] = len(hosts)
            if self._awx:  # the first play names the AWX job: id, template, workflow job, schedule, slice, launched_by
                data["awx"], self._awx = self._awx, {}
            self.emit("play.started", data=data)

    def host_task_start(self, *, host: str, task_uuid: str, hook: str = "v2_runner_on_start") -> None:
        with self._lock:
            self.hooks[hook] += 1
            self._started[(host, task_uuid)] = (self.monotonic(), new_span_id())
            if self.in_plan_play and host in self.hosts:
                wave = self.hosts[host].get("wave")
                if wave is not None and wave not in self.waves_started:
                    self.waves_started.add(wave)
                    info = self.run.get("waves", {}).get(wave, {})
                    self.emit("wave.started", wave=wave, status="started", message=f"wave {wave} started",
                              data=dict(info, first_host=host))

    def host_task_result(self, *, host: str, task_uuid: str, task: str, action: str, status: str, result: t.Mapping[str, t.Any],
                         ignore_errors: bool = False, hook: str) -> None:
        with self._lock:
            self.hooks[hook] += 1
            started, span = self._started.pop((host, task_uuid), (None, None))
            span = span or new_span_id()
            duration = round(self.monotonic() - started, 6) if started is not None else None
            self._absorb(result)
            for item in result.get("fleetpatch_events") or ():
                if isinstance(item, dict) and item.get("event"):
                    self._domain(item, task=task, action=action, span=span)
            message = _message(result, status)
            data: dict[str, t.Any] = {"result": clean_result(result, redactor=self.redactor, max_chars=self.options.max_field_chars),
                                      "parent_span_id": self.run_span}
            if status == "failed" and ignore_errors:
                data["ignored"] = True
            delegated = result.get("_ansible_delegated_vars")
            if isinstance(delegated, dict) and delegated.get("ansible_delegated_host"):
                data["delegated_to"] = str(delegated["ansible_delegated_host"])
            self.emit("host.task", host=host, task=task, action=action, status=status, changed=bool(result.get("changed", False)),
                      duration=duration, message=message, span=span, data=data)

    def playbook_end(self, *, stats: t.Mapping[str, t.Mapping[str, int]], hook: str = "v2_playbook_on_stats") -> dict[str, t.Any]:
        """Record the end, write everything, seal the log in the registry. Returns what happened to the log."""
        with self._lock:
            self.hooks[hook] += 1
            failures = sum(host.get("failures", 0) + host.get("unreachable", 0) for host in stats.values())
            self.emit("playbook.finished", status="failed" if failures else "ok",
                      data={"stats": {host: dict(counts) for host, counts in sorted(stats.items())},
                            "hooks": dict(sorted(self.hooks.items())), "events": self.events + 1})
            self._maybe_start_from_option(final=True)
            self.flush()
            self._cancel_timer()
            outcome = self.outcome()
            if self.log is not None:
                self.log.close()
            if outcome["path"] and not outcome["complete"]:
                self.warn(f"fleetpatch.rollout.events: the event log {outcome['path']} is incomplete: {outcome['reason']}")
            return outcome

    # -- recording ----------------------------------------------------------------------------------------

    def emit(self, event: str, *, host: str | None = None, task: str | None = None, action: str | None = None,
             status: str | None = None, changed: bool | None = None, duration: float | None = None, message: str | None = None,
             wave: str | None = None, batch: int | None = None, span: str | None = None, ts: str | None = None,
             data: t.Mapping[str, t.Any] | None = None) -> None:
        with self._lock:
            body = {"v": FORMAT, "ts": ts or utc_ts(self.clock()), "event": event, "correlation_id": None,
                    "traceparent": traceparent(self.trace_id, span or self.run_span), "run_id": None, "patch_id": None,
                    "wave": wave, "batch": batch, "host": host, "region": None, "tenant": None, "segment": None,
                    "environment": None, "task": task, "action": action, "status": status, "changed": changed,
                    "duration": duration, "message": message, "data": dict(data or {})}
            self.events += 1
            if self.log is None:
                if not self.pre_run:
                    self._pre_run_since = self.monotonic()
                if len(self.pre_run) >= _MAX_PRE_RUN:
                    self.pre_run.pop(0)
                    self.pre_run_dropped += 1
                self.pre_run.append(body)
                self._maybe_start_from_option()
                return
            self.log.append(self._serialize(body))
            self._after_append(event, self.log)

    def _after_append(self, event: str, log: EventLog) -> None:
        if self._oldest_pending is None:
            self._oldest_pending = self.monotonic()
            self._arm_timer()
        if (event in BOUNDARY_EVENTS or len(log.pending) >= self.options.flush_events
                or self.monotonic() - self._oldest_pending >= self.options.flush_seconds):
            self.flush()

    def _serialize(self, body: dict[str, t.Any]) -> str:
        body["correlation_id"] = self.correlation_id
        body["run_id"] = self.run.get("run_id")
        body["patch_id"] = self.run.get("patch_id")
        host = body["host"]
        if host is not None:
            attributes = self.hosts.get(host)
            if attributes:
                for name in HOST_ATTRIBUTES:
                    body[name] = attributes.get(name)
                if body["wave"] is None and body["event"] == "host.task":
                    body["wave"] = attributes.get("wave")
                    body["batch"] = attributes.get("batch")
        message = body["message"]
        if isinstance(message, str) and len(message) > self.options.max_field_chars:
            masked = self.redactor.mask_text(message)[0]
            body["message"] = masked[: self.options.max_field_chars] + f"... [truncated {len(masked)} chars, sha256 {digest_text(masked)}]"
        text = self.redactor.dumps(body)
        if len(text) > self.options.max_line_bytes and "result" in body["data"]:
            result_json = self.redactor.dumps(body["data"]["result"])
            result = body["data"]["result"]
            body["data"]["result"] = {"truncated": True, "chars": len(result_json), "sha256": digest_text(result_json),
                                      "keys": sorted(result)[:50] if isinstance(result, dict) else []}
            text = self.redactor.dumps(body)
        return text

    def flush(self) -> bool:
        with self._lock:
            self._oldest_pending = None
            self._cancel_timer()
            if self.log is None:
                return True
            errors = len(self.log.errors)
            ok = self.log.flush()
            if not ok:
                error = self.log.errors[-1]
                self._log_incomplete(f"incomplete: {error}")
                if error not in self._warned:
                    self._warned.add(error)
                    self.warn(f"fleetpatch.rollout.events: cannot write {self.log.path} ({error}); the rollout goes on,"
                              " events stay queued and the run's registry record will say the log is incomplete")
                if self.log.pending:
                    self._oldest_pending = self.monotonic()
                    self._arm_timer()
            elif len(self.log.errors) != errors:
                self._log_incomplete(f"incomplete: {self.log.errors[-1]}")
            return ok

    def _log_incomplete(self, reason: str) -> None:
        """A write failed: the run's store keeps that (for this attempt), where registry_record's finish record reads it."""
        self.log_status = reason
        self._save_log_status()

    def _save_log_status(self) -> None:
        """Hand the log's state to the run's store once the run is known (a failure before it was announced waits)."""
        if self.log_status is None or not self.run.get("state_dir") or self._status_saved == self.log_status:
            return
        try:
            # a store of its own for each (rare) status change: a flush may come from the timer's thread
            store = open_store(self.run["state_dir"], backend=self.run.get("state_backend"))
            try:
                store.record_log_status(self.run["run_id"], correlation_id=self.correlation_id, complete=False, reason=self.log_status)
            finally:
                store.close()
            self._status_saved = self.log_status
        except StoreError as exc:
            if "store" not in self._warned:
                self._warned.add("store")
                self.warn(f"fleetpatch.rollout.events: cannot record in the run's store that its log is incomplete: {exc}")

    def _arm_timer(self) -> None:
        if not self.use_timer or self._timer is not None:
            return
        self._timer = threading.Timer(self.options.flush_seconds, self._timer_flush)
        self._timer.daemon = True
        self._timer.start()

    def _timer_flush(self) -> None:
        with self._lock:
            self._timer = None
            self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- run context ---------------------------------------------------------------------------------------

    def _first_play(self, extra_vars: t.Mapping[str, t.Any], variables: t.Iterable[t.Mapping[str, t.Any]],
                    host_attributes: t.Mapping[str, t.Mapping[str, t.Any]]) -> None:
        self.played = True
        explicit = explicit_correlation_id(option=self.options.correlation_id, extra_vars=extra_vars, runner_dir=self.options.runner_dir)
        if explicit is not None:
            self.correlation_id, self.correlation_source = explicit
        try:
            identity = awx_identity(extra_vars)
        except AwxIdentityError as exc:
            self.warn(f"fleetpatch.rollout.events: AWX identity not recorded: {exc}")
            identity = None
        self._awx = identity.event_data() if identity is not None else {}
        # Forked workers (action plugins) inherit this: rollout_plan refuses to start a rollout nobody records.
        self.environ[ACTIVE_ENV] = str(os.getpid())
        self.redactor.collect(extra_vars)
        for name in self.options.secret_vars:
            if name in extra_vars:
                self.redactor.add(extra_vars[name], name=name)
        for mapping in variables:
            self.redactor.collect(mapping)
            for name in self.options.secret_vars:
                if name in mapping:
                    self.redactor.add(mapping[name], name=name)
        if self.redactor.too_short:
            self.warn("fleetpatch.rollout.events: values of secret variable(s) " + ", ".join(sorted(self.redactor.too_short))
                      + f" are shorter than {self.redactor.min_length} characters and are not masked")
        for host, attributes in host_attributes.items():
            self.hosts[host] = {name: attributes.get(name) for name in HOST_ATTRIBUTES}
        self._maybe_start_from_option()

    def _maybe_start_from_option(self, *, final: bool = False) -> None:
        if self.log is None and self.options.path and self.played:
            if "{run_id}" in self.options.path and not self.run and not final:
                return  # wait for the run to be announced
            if self.correlation_id is None and not self.run and not final and not self._pre_run_due():
                return  # wait (within the flush bounds) for a run to announce its attempt's correlation id
            self._start(self._format_path(self.options.path))

    def _pre_run_due(self) -> bool:
        """Whether the queued events are as many or as old as the flush bounds allow (or end a wave)."""
        if not self.pre_run:
            return False
        return (len(self.pre_run) >= self.options.flush_events or self.pre_run[-1]["event"] in BOUNDARY_EVENTS
                or (self._pre_run_since is not None and self.monotonic() - self._pre_run_since >= self.options.flush_seconds))

    def _format_path(self, template: str) -> str:
        values = collections.defaultdict(str, run_id=self.run.get("run_id") or "no-run", correlation_id=self.correlation_id or "")
        return os.path.abspath(os.path.expanduser(template.format_map(values)))

    def _absorb(self, result: t.Mapping[str, t.Any]) -> None:
        facts = result.get("ansible_facts")
        if isinstance(facts, dict):
            self.redactor.collect(facts)
            for name in self.options.secret_vars:
                if name in facts:
                    self.redactor.add(facts[name], name=name)
        correlation = result.get("fleetpatch_correlation")
        if isinstance(correlation, dict) and correlation.get("id"):
            self._adopt(str(correlation["id"]), str(correlation.get("source") or "run"))
        run = result.get("fleetpatch_run")
        if isinstance(run, dict) and run.get("run_id"):
            if isinstance(result.get("redaction"), dict) and not self.run:
                # the run's rollout_policy.redaction (validated by the plan): its names join the defaults
                try:
                    self.redactor.scrubber = Scrubber.from_policy(result["redaction"])
                except ValueError as exc:
                    self.warn(f"fleetpatch.rollout.events: ignoring the run's redaction policy: {exc}")
            self._announce(run)
        registry = result.get("fleetpatch_registry")
        if isinstance(registry, dict) and registry.get("path"):
            self.registry = dict(registry)

    def _adopt(self, correlation_id: str, source: str) -> None:
        """The correlation id of the run's attempt, chosen by rollout_plan: this log's lines carry it from the start
        (lines queued before it are stamped when the log starts). A log already started keeps its own id."""
        if correlation_id == self.correlation_id:
            return
        if self.log is None:
            self.correlation_id, self.correlation_source = sanitize_correlation_id(correlation_id), source
        elif "correlation" not in self._warned:
            self._warned.add("correlation")
            self.warn(f"fleetpatch.rollout.events: the log {self.log.path} started with correlation id {self.correlation_id};"
                      f" the run's attempt has {correlation_id}")

    def _announce(self, run: t.Mapping[str, t.Any]) -> None:
        if self.run:
            if run.get("run_id") != self.run.get("run_id"):
                self.warn(f"fleetpatch.rollout.events: one event log per playbook run; run {run.get('run_id')} is recorded in"
                          f" the log of run {self.run.get('run_id')}")
            return
        self.run = {"run_id": run.get("run_id"), "patch_id": run.get("patch_id"), "waves": dict(run.get("waves") or {}),
                    "state_dir": run.get("state_dir"), "state_backend": run.get("state_backend")}
        for host, info in (run.get("hosts") or {}).items():
            self.hosts[host] = dict(self.hosts.get(host, {}), **info)
        self.plan_group = run.get("plan_group")
        if self.log is None:
            path = self._format_path(self.options.path) if self.options.path else run.get("events_path")
            if path:
                self._open_mirror(os.path.abspath(path))
                self._start(os.path.abspath(path))
        # a write that failed before the run was known (the path option's log) reaches the store now
        self._save_log_status()

    def _open_mirror(self, path: str) -> None:
        """On the postgresql backend the store keeps every line too: a controller whose file is missing (an AWX job's
        fresh container) first writes the store's lines to it, so the chain goes on instead of starting over."""
        if self.run.get("state_backend") != "postgresql" or not self.run.get("state_dir"):
            return
        try:
            self._mirror = open_store(self.run["state_dir"], backend="postgresql")
            if os.path.exists(path) and os.path.getsize(path) > 0:
                return
            lines = self._mirror.event_lines(self.run["run_id"])
        except (StoreError, OSError) as exc:
            self._mirror = None
            self.warn(f"fleetpatch.rollout.events: the run's log lines are not kept in the postgresql store: {exc}")
            return
        if lines:
            try:
                os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
                partial = f"{path}.restore-{os.getpid()}"
                with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "w", encoding="utf-8", errors="surrogateescape") as handle:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(partial, path)
            except OSError as exc:
                self.warn(f"fleetpatch.rollout.events: cannot restore {path} from the postgresql store: {exc}")

    def _mirror_lines(self, lines: list[tuple[int, str, str]]) -> None:
        if self._mirror is None:
            return
        try:
            self._mirror.append_event_lines(self.run["run_id"], lines)
        except StoreError as exc:
            if "mirror" not in self._warned:
                self._warned.add("mirror")
                self.warn(f"fleetpatch.rollout.events: cannot keep the run's log lines in the postgresql store: {exc}")

    def _start(self, path: str) -> None:
        if self.correlation_id is None:
            # no explicit id and no run announced one: this playbook run's log owns a new one
            self.correlation_id, self.correlation_source = str(uuid.uuid4()), "generated"
        self.log = EventLog(path, fsync=self.options.fsync, on_open=self._opened,
                            on_written=self._mirror_lines if self._mirror is not None else None)
        self.say(f"fleetpatch events: correlation id {self.correlation_id} ({self.correlation_source}), trace {self.trace_id},"
                 f" log {path}")
        for body in self.pre_run:
            self.log.append(self._serialize(body))
        self.pre_run = []
        self.flush()

    def _opened(self, tail: Tail, reopened: bool) -> str | None:
        """The log.opened line that starts this writer's part of an existing file (None for a new, empty file)."""
        if tail.seq == 0 and tail.torn is None and not reopened:
            return None
        data = {"continues_seq": tail.seq, "torn_tail": tail.torn, "reopened_after_error": reopened,
                "dropped_before_run": self.pre_run_dropped}
        body = {"v": FORMAT, "ts": utc_ts(self.clock()), "event": "log.opened", "correlation_id": None,
                "traceparent": traceparent(self.trace_id, self.run_span), "run_id": None, "patch_id": None, "wave": None,
                "batch": None, "host": None, "region": None, "tenant": None, "segment": None, "environment": None,
                "task": None, "action": None, "status": "torn_tail" if tail.torn else "continued", "changed": None,
                "duration": None, "message": None, "data": data}
        return self._serialize(body)

    def _domain(self, item: t.Mapping[str, t.Any], *, task: str, action: str, span: str) -> None:
        data = item.get("data")
        self.emit(str(item["event"]), ts=item.get("ts"), host=item.get("host"), wave=item.get("wave"), batch=item.get("batch"),
                  status=item.get("status"), message=item.get("message"), task=task, action=action, span=span,
                  data=clean_result(data, redactor=self.redactor, max_chars=self.options.max_field_chars) if isinstance(data, dict) else {})

    def outcome(self) -> dict[str, t.Any]:
        """The state of this playbook run's log: path, lines written, last seq and hash, complete or not and why."""
        log = self.log
        if log is None:
            return {"path": None, "complete": True, "lines": 0, "reason": None}
        problems = list(dict.fromkeys(log.errors))
        if log.pending:
            problems.append(f"{len(log.pending)} event(s) could not be written")
        if log.dropped:
            problems.append(f"{log.dropped} event(s) dropped from the queue")
        return {"path": log.path, "complete": not problems, "reason": "; ".join(problems) or None, "lines": log.lines_written,
                "first_seq": log.first_seq, "last_seq": log.seq, "head": log.head, "errors": len(log.errors),
                "correlation_id": self.correlation_id, "run_id": self.run.get("run_id"), "patch_id": self.run.get("patch_id")}


def _message(result: t.Mapping[str, t.Any], status: str) -> str | None:
    if result.get("_ansible_no_log"):
        return None
    if status == "skipped":
        return str(result.get("skip_reason") or "skipped")
    msg = result.get("msg")
    if isinstance(msg, str) and msg:
        return msg
    if status in ("failed", "unreachable"):
        stderr = result.get("stderr")
        if isinstance(stderr, str) and stderr.strip():
            return stderr.strip().splitlines()[-1]
        return f"task {status}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Reading (verification: _event_verify.py)


def _load(line: bytes) -> dict[str, t.Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("seq"), int) and isinstance(value.get("prev"), str) else None


def read_events(path: str) -> list[dict[str, t.Any]]:
    """Every complete event of a file (torn lines skipped)."""
    events = []
    with open(path, "rb") as handle:
        for line in handle:
            value = _load(line.rstrip(b"\n"))
            if value is not None:
                events.append(value)
    return events


def file_head(path: str) -> dict[str, t.Any] | None:
    """{seq, head} of the last complete line of an event file, or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        tail = read_tail(fd)
    finally:
        os.close(fd)
    return {"seq": tail.seq, "head": tail.head} if tail.seq else None
