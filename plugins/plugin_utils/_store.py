# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: where a run's state lives, behind one small interface. Not a public API.

``Store`` is the protocol every backend implements: a run's document (state.json today), its plan, per-host outcomes
with the error budget they spend, and host-set locks. Two operations are atomic operations of the store, never a
read-modify-write by its callers:

- ``record_outcomes``: merge outcomes by host (latest wins) and return the number of hosts whose latest outcome
  spends the error budget, in one critical section, so two writers spending concurrently never lose an outcome;
- ``acquire_lock``: check every other lock over the same hosts and take this run's, in one critical section.

Backends (``BACKENDS``, chosen by the ``fleetpatch_state_backend`` setting through ``open_store``; docs/state.md):

- ``embedded`` (default), ``FileStore``: the files under the state dir that tests, docs and operators read
  (``runs/<run_id>/state.json``, ``plan.json``, ``locks/<run_id>.json``). Its critical sections are ``flock`` guards:
  ``runs/<run_id>/.state.guard`` for outcomes and the run document, ``locks/.guard`` for locks.
- ``sqlite``, ``_store_sql.SqliteStore``: ``<state_dir>/fleetpatch.db``, every write one ``BEGIN IMMEDIATE``
  transaction (``record_outcomes``: upserts keyed by (run_id, host) and a ``count(*)``; locks on host-level rows).
- ``postgresql``, ``_store_sql.PostgresStore``: the same tables in a PostgreSQL database shared by several
  controllers (AWX job slices), DSN from the environment (``FLEETPATCH_STATE_DSN`` or libpq's ``PG*``).

``_run.Run`` and the action plugins only talk to a ``Store``. The errors, the budget's outcome set and the stale-lock
rules every backend shares live in ``_store_base`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import (
    read_json,
    write_file_atomic,
    write_json_atomic,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_base import (
    FAILED_OUTCOMES,
    TERMINAL_OUTCOMES,
    LockError,
    StoreError,
    describe_lock,
    iso,
    lock_conflict,
    lock_staleness,
    parse_iso,
    utc_now,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import (
    PostgresStore,
    SqliteStore,
)

__all__ = [
    "BACKENDS",
    "BACKEND_VAR",
    "DEFAULT_BACKEND",
    "FAILED_OUTCOMES",
    "TERMINAL_OUTCOMES",
    "FileStore",
    "LockError",
    "PostgresStore",
    "RunPaths",
    "Store",
    "SqliteStore",
    "StoreError",
    "acquire_lock",
    "describe_lock",
    "empty_state",
    "failed_hosts",
    "failures",
    "hosts_with_outcome",
    "iso",
    "load_state",
    "lock_staleness",
    "open_store",
    "outcome_entry",
    "parse_iso",
    "read_json",
    "record_outcome",
    "refresh_lock",
    "release_lock",
    "save_state",
    "utc_now",
]

DEFAULT_BACKEND = "embedded"
# the variable (inventory, group or extra var) that chooses the backend; rollout_plan validates it and hands it on
BACKEND_VAR = "fleetpatch_state_backend"


class RunPaths:
    """Where the embedded store keeps one run's files (and where operators find them)."""

    def __init__(self, state_dir: str, run_id: str) -> None:
        self.state_dir = state_dir
        self.run_id = run_id
        self.run_dir = os.path.join(state_dir, "runs", run_id)
        self.plan = os.path.join(self.run_dir, "plan.json")
        self.state = os.path.join(self.run_dir, "state.json")
        self.events = os.path.join(self.run_dir, "events.jsonl")
        self.summary = os.path.join(self.run_dir, "summary.json")
        self.guard = os.path.join(self.run_dir, ".state.guard")
        self.locks_dir = os.path.join(state_dir, "locks")
        self.lock = os.path.join(self.locks_dir, f"{run_id}.json")
        # Events queued by append_event, returned by the action plugin under fleetpatch_events (see _run.queued_events).
        self.queued: list[dict[str, t.Any]] = []


# ---------------------------------------------------------------------------------------------------------
# The run document and host outcomes (pure functions over the document)


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


def outcome_entry(outcome: str, *, at: str, **details: t.Any) -> dict[str, t.Any]:
    """One host's outcome as the run document keeps it: outcome, at, and the details that are set."""
    entry = {"outcome": outcome, "at": at}
    entry.update({key: value for key, value in details.items() if value is not None})
    return entry


def record_outcome(state: dict[str, t.Any], host: str, outcome: str, *, at: str, **details: t.Any) -> None:
    state.setdefault("hosts", {})[host] = outcome_entry(outcome, at=at, **details)


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


# ---------------------------------------------------------------------------------------------------------
# The protocol


class Store(t.Protocol):
    """What a backend keeps for every run. Paths (``RunPaths``) still name the files operators read (events, summary)."""

    name: str

    def load_run(self, run_id: str) -> dict[str, t.Any] | None:
        """The run document, or None when the run was never planned."""

    def save_run(self, run_id: str, state: t.Mapping[str, t.Any]) -> None:
        """Write the run document; host outcomes are the store's and only ``record_outcomes`` changes them."""

    def read_plan(self, run_id: str) -> str | None:
        """The canonical plan JSON saved for the run."""

    def save_plan(self, run_id: str, content: str) -> bool:
        """Save the canonical plan JSON (untouched when identical); True when written."""

    def record_outcomes(self, run_id: str, outcomes: t.Mapping[str, t.Mapping[str, t.Any]]) -> tuple[dict[str, t.Any], int]:
        """Atomically merge outcomes by host (latest wins): (every host's outcome, hosts spending the error budget)."""

    def acquire_lock(self, run_id: str, *, hosts: t.Sequence[str], owner: str, controller: str, pid: int, ttl_seconds: int,
                     break_stale: bool = False, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Atomically take the lock over hosts: {"lock", "notes"}; LockError when another live run holds one of them."""

    def refresh_lock(self, run_id: str, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None) -> dict[str, t.Any] | None:
        """Extend this run's lock; None when it holds none."""

    def release_lock(self, run_id: str) -> bool:
        """Drop this run's lock; False when it held none."""


# ---------------------------------------------------------------------------------------------------------
# The embedded backend: today's files under the state dir, critical sections under flock


@contextlib.contextmanager
def _guarded(guard: str, *, error: type[StoreError], what: str) -> t.Iterator[None]:
    """Hold an exclusive flock on guard: one critical section across threads and processes on this state dir."""
    try:
        os.makedirs(os.path.dirname(guard), exist_ok=True)
        fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise error(f"cannot open the {what} guard {guard}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _locked_directory(locks_dir: str) -> t.ContextManager[None]:
    return _guarded(os.path.join(locks_dir, ".guard"), error=LockError, what="run lock")


class FileStore:
    """The embedded backend (default): JSON files under the state dir; see the module docstring."""

    name = "embedded"

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def paths(self, run_id: str) -> RunPaths:
        return RunPaths(self.state_dir, run_id)

    def load_run(self, run_id: str) -> dict[str, t.Any] | None:
        return read_json(self.paths(run_id).state)

    def save_run(self, run_id: str, state: t.Mapping[str, t.Any]) -> None:
        paths = self.paths(run_id)
        with _guarded(paths.guard, error=StoreError, what="run state"):
            stored = read_json(paths.state)
            document = dict(state)
            if isinstance(stored, dict) and "hosts" in stored:
                # outcomes recorded since this document was loaded (record_outcomes) are kept
                document["hosts"] = stored["hosts"]
            write_json_atomic(paths.state, document)

    def read_plan(self, run_id: str) -> str | None:
        try:
            with open(self.paths(run_id).plan, "r", encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def save_plan(self, run_id: str, content: str) -> bool:
        if self.read_plan(run_id) == content:
            return False
        write_file_atomic(self.paths(run_id).plan, content)
        return True

    def record_outcomes(self, run_id: str, outcomes: t.Mapping[str, t.Mapping[str, t.Any]]) -> tuple[dict[str, t.Any], int]:
        paths = self.paths(run_id)
        with _guarded(paths.guard, error=StoreError, what="run state"):
            stored = read_json(paths.state)
            document = stored if isinstance(stored, dict) else {}
            hosts = document.setdefault("hosts", {})
            hosts.update({host: dict(entry) for host, entry in outcomes.items()})
            if outcomes:
                write_json_atomic(paths.state, document)
            return hosts, len(failures(document))

    def acquire_lock(self, run_id: str, *, hosts: t.Sequence[str], owner: str, controller: str, pid: int, ttl_seconds: int,
                     break_stale: bool = False, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """A live lock of another run that shares a host refuses the run. A stale lock (expired, or its owner
        process gone on this controller) is reported; it is taken over silently only when it belongs to an
        earlier attempt of this same run, otherwise only with break_stale."""
        paths = self.paths(run_id)
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
                note = lock_conflict(lock, wanted=wanted, run_id=run_id, controller=controller, pid=pid, now=now,
                                     break_stale=break_stale, where=f"lock file {lock_path}")
                if note:
                    notes.append(note)
                    os.unlink(lock_path)
            lock = {
                "schema": 1,
                "run_id": run_id,
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

    def refresh_lock(self, run_id: str, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None) -> dict[str, t.Any] | None:
        paths = self.paths(run_id)
        now = now or utc_now()
        with _locked_directory(paths.locks_dir):
            lock = read_json(paths.lock)
            if not isinstance(lock, dict):
                return None
            ttl = ttl_seconds or int(lock.get("ttl_seconds", 900))
            lock["expires"] = iso(now + _dt.timedelta(seconds=ttl))
            write_json_atomic(paths.lock, lock)
            return lock

    def release_lock(self, run_id: str) -> bool:
        paths = self.paths(run_id)
        with _locked_directory(paths.locks_dir):
            try:
                os.unlink(paths.lock)
            except FileNotFoundError:
                return False
        return True


BACKENDS: dict[str, t.Callable[[str], Store]] = {"embedded": FileStore, "sqlite": SqliteStore, "postgresql": PostgresStore}


def open_store(state_dir: str, *, backend: str | None = None) -> Store:
    """The store of a state dir; backend is the fleetpatch_state_backend setting (default: embedded)."""
    chosen = backend or DEFAULT_BACKEND
    try:
        factory = BACKENDS[chosen]
    except KeyError:
        raise StoreError(f"unknown fleetpatch_state_backend {chosen!r}: choose one of {', '.join(sorted(BACKENDS))}") from None
    return factory(state_dir)


# ---------------------------------------------------------------------------------------------------------
# Functions over RunPaths (the embedded store), kept for callers that hold paths rather than a store


def load_state(paths: RunPaths) -> dict[str, t.Any] | None:
    return FileStore(paths.state_dir).load_run(paths.run_id)


def save_state(paths: RunPaths, state: t.Mapping[str, t.Any]) -> None:
    write_json_atomic(paths.state, state)


def acquire_lock(paths: RunPaths, *, hosts: t.Sequence[str], owner: str, controller: str, pid: int, ttl_seconds: int,
                 break_stale: bool = False, now: _dt.datetime | None = None) -> dict[str, t.Any]:
    """Take the lock for this run's hosts. Returns {"lock", "notes"}; raises LockError when refused."""
    return FileStore(paths.state_dir).acquire_lock(paths.run_id, hosts=hosts, owner=owner, controller=controller, pid=pid,
                                                   ttl_seconds=ttl_seconds, break_stale=break_stale, now=now)


def refresh_lock(paths: RunPaths, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None) -> dict[str, t.Any] | None:
    """Extend this run's lock (a heartbeat after each batch)."""
    return FileStore(paths.state_dir).refresh_lock(paths.run_id, ttl_seconds=ttl_seconds, now=now)


def release_lock(paths: RunPaths) -> bool:
    return FileStore(paths.state_dir).release_lock(paths.run_id)
