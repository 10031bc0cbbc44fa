# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: where a run's state lives, behind one small interface. Not a public API.

``Store`` is the protocol every backend implements: a run's document, its plan, per-host outcomes with the error
budget they spend, and host-set locks. Two operations are atomic operations of the store, never a read-modify-write
by its callers:

- ``record_outcomes``: merge outcomes by host (latest wins) and return the number of hosts whose latest outcome
  spends the error budget, in one transaction, so two writers spending concurrently never lose an outcome;
- ``acquire_lock``: check every other lock over the same hosts and take this run's, in one transaction.

Backends (``BACKENDS``, chosen by the ``fleetpatch_state_backend`` setting through ``open_store``; docs/state.md):

- ``embedded`` (default), ``_store_sql.SqliteStore``: the SQLite file ``<state_dir>/fleetpatch.db``, every write one
  ``BEGIN IMMEDIATE`` transaction (``record_outcomes``: upserts keyed by (run_id, host) and a ``count(*)``; locks on
  host-level rows);
- ``postgresql``, ``_store_sql.PostgresStore``: the same tables in a PostgreSQL database shared by several
  controllers (AWX job slices), DSN from the environment (``FLEETPATCH_STATE_DSN`` or libpq's ``PG*``).

There is no third copy of the run state: tests, tools and operators read a run through a store (``open_store``),
never from files. ``plan.json``, ``events.jsonl`` and ``summary.json`` stay files for operators (``RunPaths``).
``_run.Run`` and the action plugins only talk to a ``Store``. The errors, the budget's outcome set and the stale-lock
rules every backend shares live in ``_store_base`` (re-exported here).
"""

from __future__ import annotations

import datetime as _dt
import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_base import (
    FAILED_OUTCOMES,
    ROW_LISTS,
    TERMINAL_OUTCOMES,
    LockError,
    StoreError,
    describe_lock,
    iso,
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
    "ROW_LISTS",
    "TERMINAL_OUTCOMES",
    "LockError",
    "PostgresStore",
    "RunPaths",
    "Store",
    "SqliteStore",
    "StoreError",
    "describe_lock",
    "empty_state",
    "failed_hosts",
    "failures",
    "hosts_with_outcome",
    "iso",
    "lock_staleness",
    "open_store",
    "outcome_entry",
    "parse_iso",
    "record_outcome",
    "utc_now",
]

DEFAULT_BACKEND = "embedded"
# the variable (inventory, group or extra var) that chooses the backend; rollout_plan validates it and hands it on
BACKEND_VAR = "fleetpatch_state_backend"


class RunPaths:
    """The files of one run that operators read whatever the backend (plan, event log, summary)."""

    def __init__(self, state_dir: str, run_id: str) -> None:
        self.state_dir = state_dir
        self.run_id = run_id
        self.run_dir = os.path.join(state_dir, "runs", run_id)
        self.plan = os.path.join(self.run_dir, "plan.json")
        self.events = os.path.join(self.run_dir, "events.jsonl")
        self.summary = os.path.join(self.run_dir, "summary.json")
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
    """What a backend keeps for every run. Paths (``RunPaths``) name the files operators read (plan, events, summary)."""

    name: str

    def load_run(self, run_id: str, *, hosts: t.Iterable[str] | None = None) -> dict[str, t.Any] | None:
        """The run document, or None when the run was never planned; hosts: only these hosts' outcomes (None: every host's)."""

    def save_run(self, run_id: str, state: t.Mapping[str, t.Any], *, merge: t.Sequence[str] = (),
                 appended_from: t.Mapping[str, int] | None = None) -> None:
        """Write the run document; host outcomes are the store's and only ``record_outcomes`` changes them. The ROW_LISTS
        (decisions, completed_batches, waits) are appended to: appended_from {list: n} marks the state's entries from n
        on as new (None: the lists are whole and replace the stored ones); merge: lists several slices append to."""

    def read_plan(self, run_id: str) -> str | None:
        """The canonical plan JSON saved for the run."""

    def save_plan(self, run_id: str, content: str) -> bool:
        """Save the canonical plan JSON (untouched when identical); True when written."""

    def record_outcomes(self, run_id: str, outcomes: t.Mapping[str, t.Mapping[str, t.Any]], *,
                        all_hosts: bool = True) -> tuple[dict[str, t.Any], int]:
        """Atomically merge outcomes by host (latest wins): (every host's outcome, or with all_hosts=False the recorded
        hosts' only, hosts spending the error budget)."""

    def outcomes(self, run_id: str, hosts: t.Iterable[str]) -> dict[str, t.Any]:
        """{host: outcome entry} of those of hosts that have one: a read scoped to a batch, not the whole run."""

    def acquire_lock(self, run_id: str, *, hosts: t.Sequence[str], owner: str, controller: str, pid: int, ttl_seconds: int,
                     break_stale: bool = False, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Atomically take the lock over hosts: {"lock", "notes"}; LockError when another live run holds one of them."""

    def refresh_lock(self, run_id: str, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None,
                     with_hosts: bool = True) -> dict[str, t.Any] | None:
        """Extend this run's lock; None when it holds none. with_hosts=False: returned without its hosts (no read per host)."""

    def read_lock(self, run_id: str) -> dict[str, t.Any] | None:
        """This run's lock as acquire_lock returned it, or None."""

    def release_lock(self, run_id: str) -> bool:
        """Drop this run's lock; False when it held none."""

    def record_log_status(self, run_id: str, *, correlation_id: str | None, complete: bool, reason: str | None) -> None:
        """The events callback's view of the run's event log for one attempt: complete, or why not."""

    def log_status(self, run_id: str) -> dict[str, t.Any] | None:
        """What record_log_status last said of the run's log ({correlation_id, complete, reason, updated}), or None."""

    def save_staged(self, artifact_sha256: str, records: t.Mapping[str, t.Mapping[str, t.Any]], *, forget: t.Iterable[str] = ()) -> int:
        """The pre-staging job's records of verified copies of a patch artifact ({host: record}), hosts in forget dropped."""

    def staged_records(self, artifact_sha256: str, *, since: str | None = None) -> dict[str, dict[str, t.Any]]:
        """{host: record} of the hosts recorded with a verified copy of the artifact (staged at or after since)."""


# embedded: the SQLite file <state_dir>/fleetpatch.db, one controller; postgresql: shared by several controllers.
# sqlite is 1.0.0's name for the same file (runs planned with it go on); embedded meant JSON files then.
BACKENDS: dict[str, t.Callable[[str], Store]] = {"embedded": SqliteStore, "postgresql": PostgresStore, "sqlite": SqliteStore}


def open_store(state_dir: str, *, backend: str | None = None) -> Store:
    """The store of a state dir; backend is the fleetpatch_state_backend setting (default: embedded, SQLite)."""
    chosen = backend or DEFAULT_BACKEND
    try:
        factory = BACKENDS[chosen]
    except KeyError:
        raise StoreError(f"unknown fleetpatch_state_backend {chosen!r}: choose one of {', '.join(sorted(BACKENDS))}") from None
    return factory(state_dir)
