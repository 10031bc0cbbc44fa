# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: what every run-state backend shares (errors, outcome sets, time, lock rules). Not a public API.

``_store`` (the protocol, the embedded file backend, ``open_store``) and ``_store_sql`` (SQLite and PostgreSQL) both
build on this module, so the stale-lock rules and the budget's outcome set have one home and neither backend module
imports the other.
"""

from __future__ import annotations

import datetime as _dt
import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = [
    "FAILED_OUTCOMES",
    "TERMINAL_OUTCOMES",
    "ROW_LISTS",
    "LockError",
    "StoreError",
    "describe_lock",
    "iso",
    "lock_conflict",
    "lock_staleness",
    "parse_iso",
    "utc_now",
]

# Outcomes that count against the error budget.
FAILED_OUTCOMES = frozenset({"failed", "unreachable", "quarantined", "unhealthy"})
# not_applicable: the installed version is not one the patch applies to (never patched, never rolled back, no failure)
TERMINAL_OUTCOMES = FAILED_OUTCOMES | {"patched", "rolled_back", "rollback_failed", "not_applicable"}
# The lists of a run document that gain an entry per batch (gate and window decisions, completed batches, window waits):
# a store keeps their entries as rows of their own, so that a batch's save appends its new entries and neither reads
# nor rewrites the run's earlier ones (O(batch), not O(batches) per batch). Read whole only by a load of the whole run.
ROW_LISTS = ("decisions", "completed_batches", "waits")


class StoreError(FleetpatchError, RuntimeError):
    """The run state cannot be read or written."""


class LockError(StoreError):
    """The hosts of this run are locked by another rollout."""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> _dt.datetime:
    return _dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)


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


def lock_conflict(lock: t.Mapping[str, t.Any], *, wanted: set[str], run_id: str, controller: str, pid: int, now: _dt.datetime,
                  break_stale: bool, where: str) -> str | None:
    """What to do about one existing lock when run_id wants the hosts in wanted: None (no conflict, leave it), a note
    (take it over: drop it), or LockError. A live lock of another run that shares a host refuses the run; a stale lock
    (expired, or its owner process gone on this controller) is taken over silently only when it belongs to an earlier
    attempt of this same run, otherwise only with break_stale. where names the lock for the operator (file or table)."""
    overlap = sorted(wanted.intersection(lock.get("hosts", [])))
    if not overlap:
        return None
    stale = lock_staleness(lock, now=now, this_host=controller)
    same_run = lock.get("run_id") == run_id
    if same_run and lock.get("pid") == pid and lock.get("controller") == controller:
        return None
    if stale is None:
        raise LockError(
            f"{len(overlap)} host(s) (first: {overlap[0]}) are locked by a running rollout: {describe_lock(lock)} ({where})"
        )
    if same_run:
        return f"took over the stale lock of an earlier attempt of this run ({stale}): {describe_lock(lock)}"
    if break_stale:
        return f"broke stale lock ({stale}): {describe_lock(lock)}"
    raise LockError(
        f"stale lock ({stale}) covers {len(overlap)} host(s) (first: {overlap[0]}): {describe_lock(lock)}"
        f" ({where}); make sure that rollout is not running, then break it deliberately with"
        " rollout_break_lock=true"
    )
