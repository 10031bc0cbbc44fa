# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: controller run state and host-set locks. Not a public API.

Per-host outcomes are merged by host name (the latest outcome of a host wins), so a resumed or sliced run
reads the same state whatever order results arrived in.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import (
    read_json,
    write_json_atomic,
)

# Outcomes that count against the error budget.
FAILED_OUTCOMES = frozenset({"failed", "unreachable", "quarantined", "unhealthy"})
# not_applicable: the installed version is not one the patch applies to (never patched, never rolled back, no failure)
TERMINAL_OUTCOMES = FAILED_OUTCOMES | {"patched", "rolled_back", "rollback_failed", "not_applicable"}


class LockError(RuntimeError):
    """The hosts of this run are locked by another rollout."""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> _dt.datetime:
    return _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)


class RunPaths:
    def __init__(self, state_dir: str, run_id: str) -> None:
        self.state_dir = state_dir
        self.run_id = run_id
        self.run_dir = os.path.join(state_dir, "runs", run_id)
        self.plan = os.path.join(self.run_dir, "plan.json")
        self.state = os.path.join(self.run_dir, "state.json")
        self.events = os.path.join(self.run_dir, "events.jsonl")
        self.summary = os.path.join(self.run_dir, "summary.json")
        self.locks_dir = os.path.join(state_dir, "locks")
        self.lock = os.path.join(self.locks_dir, f"{run_id}.json")
        # Events queued by append_event, returned by the action plugin under fleetpatch_events (see queued_events).
        self.queued: list[dict[str, t.Any]] = []


def empty_state(run_id: str, patch_id: str, fingerprint: str) -> dict[str, t.Any]:
    return {
        "schema": 1,
        "run_id": run_id,
        "patch_id": patch_id,
        "plan_fingerprint": fingerprint,
        "status": "pending",
        "attempts": [],
        "hosts": {},
        "decisions": [],
        "completed_batches": [],
    }


def load_state(paths: RunPaths) -> dict[str, t.Any] | None:
    return read_json(paths.state)


def save_state(paths: RunPaths, state: t.Mapping[str, t.Any]) -> None:
    write_json_atomic(paths.state, state)


def record_outcome(state: dict[str, t.Any], host: str, outcome: str, *, at: str, **details: t.Any) -> None:
    entry = {"outcome": outcome, "at": at}
    entry.update({key: value for key, value in details.items() if value is not None})
    state.setdefault("hosts", {})[host] = entry


def failures(state: t.Mapping[str, t.Any]) -> list[str]:
    """Hosts whose latest outcome counts against the error budget, sorted."""
    return sorted(host for host, entry in state.get("hosts", {}).items() if entry.get("outcome") in FAILED_OUTCOMES)


def failed_hosts(state: t.Mapping[str, t.Any]) -> list[str]:
    """Every host that failed in this run, also when a rollback replaced its outcome since: latest outcome failed,
    rollback_failed, or rolled back after its own failure (``cause``). The summary's list; the budget counts failures()."""
    found = []
    for host, entry in state.get("hosts", {}).items():
        outcome = entry.get("outcome")
        if outcome in FAILED_OUTCOMES or outcome == "rollback_failed" or entry.get("cause") in FAILED_OUTCOMES:
            found.append(host)
    return sorted(found)


def hosts_with_outcome(state: t.Mapping[str, t.Any], *outcomes: str) -> list[str]:
    wanted = set(outcomes)
    return sorted(host for host, entry in state.get("hosts", {}).items() if entry.get("outcome") in wanted)


def append_event(paths: RunPaths, event: t.Mapping[str, t.Any]) -> None:
    """Queue an event for the run's event log (events.jsonl). Nothing is written here: the action plugin returns
    queued_events(paths) under ``fleetpatch_events`` in its result and the fleetpatch.rollout.events callback, the
    log's only writer, chains and writes them."""
    paths.queued.append(dict(event))


# Keys the event callback stamps itself, and keys that become an event's own fields rather than its data.
_STAMPED = frozenset({"run_id", "correlation_id", "patch_id"})
_TOP_LEVEL = ("host", "wave", "batch", "message")


def queued_events(paths: RunPaths) -> list[dict[str, t.Any]]:
    """The queued events in the shape the event callback records: event, ts, host, wave, batch, status, message,
    and everything else under data. status is the event's status, else its action (decisions), else its outcome."""
    shaped = []
    for event in paths.queued:
        item: dict[str, t.Any] = {"event": event["event"], "ts": event.get("ts")}
        for key in _TOP_LEVEL:
            if event.get(key) is not None:
                item[key] = event[key]
        status = event.get("status", event.get("action", event.get("outcome")))
        if status is not None:
            item["status"] = str(status)
        item["data"] = {key: value for key, value in event.items()
                        if key not in _STAMPED and key not in _TOP_LEVEL and key not in ("event", "ts", "status")}
        shaped.append(item)
    return shaped


# ---------------------------------------------------------------------------------------------------------
# Locks: one file per run under locks/, checked and created while holding an flock on the directory so
# two controllers on one state dir cannot both pass the check.


@contextlib.contextmanager
def _locked_directory(locks_dir: str) -> t.Iterator[None]:
    guard = os.path.join(locks_dir, ".guard")
    try:
        os.makedirs(locks_dir, exist_ok=True)
        fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open the run lock guard {guard}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_staleness(lock: t.Mapping[str, t.Any], *, now: _dt.datetime, this_host: str) -> str | None:
    """Why a lock no longer protects anything, or None when it is live."""
    expires = lock.get("expires")
    if expires and parse_iso(expires) <= now:
        return f"expired at {expires}"
    pid = lock.get("pid")
    if lock.get("controller") == this_host and isinstance(pid, int) and not _process_alive(pid):
        return f"owner process {pid} on {this_host} is gone"
    return None


def describe_lock(lock: t.Mapping[str, t.Any]) -> str:
    return (
        f"run {lock.get('run_id')} owned by {lock.get('owner')} (pid {lock.get('pid')} on {lock.get('controller')}),"
        f" acquired {lock.get('acquired')}, expires {lock.get('expires')}"
    )


def acquire_lock(
    paths: RunPaths,
    *,
    hosts: t.Sequence[str],
    owner: str,
    controller: str,
    pid: int,
    ttl_seconds: int,
    break_stale: bool = False,
    now: _dt.datetime | None = None,
) -> dict[str, t.Any]:
    """Take the lock for this run's hosts. Returns {"lock", "notes"}; raises LockError when refused.

    A live lock of another run that shares a host refuses the run. A stale lock (expired, or its owner
    process gone on this controller) is reported; it is taken over silently only when it belongs to an
    earlier attempt of this same run, otherwise only with break_stale.
    """
    now = now or utc_now()
    notes: list[str] = []
    wanted = set(hosts)
    with _locked_directory(paths.locks_dir):
        for name in sorted(os.listdir(paths.locks_dir)):
            if not name.endswith(".json"):
                continue
            lock_path = os.path.join(paths.locks_dir, name)
            lock = read_json(lock_path)
            if not isinstance(lock, dict):
                continue
            overlap = sorted(wanted.intersection(lock.get("hosts", [])))
            if not overlap:
                continue
            stale = lock_staleness(lock, now=now, this_host=controller)
            same_run = lock.get("run_id") == paths.run_id
            if same_run and lock.get("pid") == pid and lock.get("controller") == controller:
                continue
            if stale is None:
                raise LockError(
                    f"{len(overlap)} host(s) (first: {overlap[0]}) are locked by a running rollout: {describe_lock(lock)}"
                    f" (lock file {lock_path})"
                )
            if same_run:
                notes.append(f"took over the stale lock of an earlier attempt of this run ({stale}): {describe_lock(lock)}")
            elif break_stale:
                notes.append(f"broke stale lock ({stale}): {describe_lock(lock)}")
            else:
                raise LockError(
                    f"stale lock ({stale}) covers {len(overlap)} host(s) (first: {overlap[0]}): {describe_lock(lock)}"
                    f" (lock file {lock_path}); make sure that rollout is not running, then break it deliberately with"
                    " rollout_break_lock=true"
                )
            os.unlink(lock_path)
        lock = {
            "schema": 1,
            "run_id": paths.run_id,
            "owner": owner,
            "controller": controller,
            "pid": pid,
            "hosts": sorted(wanted),
            "acquired": iso(now),
            "expires": iso(now + _dt.timedelta(seconds=ttl_seconds)),
            "ttl_seconds": ttl_seconds,
        }
        write_json_atomic(paths.lock, lock)
    return {"lock": lock, "notes": notes}


def refresh_lock(paths: RunPaths, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None) -> dict[str, t.Any] | None:
    """Extend this run's lock (a heartbeat after each batch)."""
    now = now or utc_now()
    with _locked_directory(paths.locks_dir):
        lock = read_json(paths.lock)
        if not isinstance(lock, dict):
            return None
        ttl = ttl_seconds or int(lock.get("ttl_seconds", 900))
        lock["expires"] = iso(now + _dt.timedelta(seconds=ttl))
        write_json_atomic(paths.lock, lock)
        return lock


def release_lock(paths: RunPaths) -> bool:
    with _locked_directory(paths.locks_dir):
        try:
            os.unlink(paths.lock)
        except FileNotFoundError:
            return False
    return True
