# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the Run, the one owner of a rollout run's state. Not a public API.

A ``Run`` is loaded from (or created in) a ``_store.Store`` and owns: identity (run id, patch id), paths, the plan
fingerprint, the correlation id of its latest attempt, its status with the state machine below, host outcomes and
the error budget they spend (atomically, through the store), the host lock and its refresh, and the domain events
an action plugin returns under ``fleetpatch_events`` (``run.event(...)``; the event callback, the log's only writer,
records them). A dry run (check mode) changes the Run in memory and writes nothing.

Status transitions (anything else raises ``RunStateError``):

    =================  =====================================================================  ===========================
    from               to                                                                     who
    =================  =====================================================================  ===========================
    pending            running                                                                rollout_plan (first attempt)
    running            running (resume after a kill), waiting_window, held, halted,           rollout_plan, change_window,
                       rolling_back, rolled_out, interrupted, rolled_back and rollback_failed wave_gate, rollout_finish
                       (rollback hosts handed to rollout_finish directly)
    waiting_window     running                                                                rollout_plan (re-run)
    held               running                                                                rollout_plan (re-run)
    halted             running                                                                rollout_plan (re-run)
    rolling_back       rolled_back, rollback_failed, running                                  rollout_finish, rollout_plan
    rolled_out         held, halted, rolling_back (stabilization breach), running             wave_gate, rollout_plan
    interrupted        running                                                                rollout_plan (re-run)
    rolled_back        running                                                                rollout_plan (re-run)
    rollback_failed    running                                                                rollout_plan (re-run)
    preview            (none: a preview or check-mode run is never stored)
    =================  =====================================================================  ===========================
"""

from __future__ import annotations

import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import host_batch_index
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    DEFAULT_BACKEND,
    FAILED_OUTCOMES,
    ROW_LISTS,
    LockError,
    RunPaths,
    Store,
    empty_state,
    failed_hosts,
    failures,
    hosts_with_outcome,
    iso,
    open_store,
    outcome_entry,
    utc_now,
)

__all__ = [
    "STATUSES",
    "TRANSITIONS",
    "RUN_OPTIONS",
    "RUN_VAR_OPTIONS",
    "LockError",
    "Run",
    "RunNotFound",
    "RunPaths",
    "RunStateError",
    "append_event",
    "play_batch_index",
    "plan_for_action",
    "queued_events",
    "run_for_action",
]

STATUSES = ("pending", "running", "waiting_window", "held", "halted", "rolling_back", "rolled_out", "interrupted", "rolled_back",
            "rollback_failed", "preview")
_RERUN = "running"
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running"}),
    "running": frozenset({"running", "waiting_window", "held", "halted", "rolling_back", "rolled_out", "interrupted", "rolled_back",
                          "rollback_failed"}),
    "waiting_window": frozenset({_RERUN}),
    "held": frozenset({_RERUN}),
    "halted": frozenset({_RERUN}),
    "rolling_back": frozenset({"rolled_back", "rollback_failed", _RERUN}),
    "rolled_out": frozenset({"held", "halted", "rolling_back", _RERUN}),
    "interrupted": frozenset({_RERUN}),
    "rolled_back": frozenset({_RERUN}),
    "rollback_failed": frozenset({_RERUN}),
    "preview": frozenset(),
}
# the gate's stopping actions and the status each leaves the run in
# the lists of the run document every slice of a sliced job appends to: merged by the store, not overwritten
SLICE_MERGED = ("attempts", "decisions", "completed_batches", "waits")
STOP_STATUS = {"hold": "held", "halt": "halted", "rollback_wave": "rolling_back", "rollback_all": "rolling_back"}


class RunStateError(FleetpatchError):
    """A status change the run's state machine does not allow."""


class RunNotFound(RunStateError):
    """An action names a run its store does not hold (never planned, another state dir or backend, another plan)."""


def check_transition(current: str, new: str, *, run_id: str = "?") -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing"
        raise RunStateError(f"run {run_id}: status {current!r} cannot become {new!r} (allowed from {current!r}: {allowed})")


# ---------------------------------------------------------------------------------------------------------
# Domain events: queued by the action, returned under fleetpatch_events, written by the callback


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
# The Run


class Run:
    """One rollout run, loaded from its store. Actions change it only through these methods."""

    def __init__(self, *, store: Store, paths: RunPaths, state: dict[str, t.Any], dry_run: bool = False) -> None:
        self.store = store
        self.paths = paths
        self.state = state
        self.dry_run = dry_run
        # the key of this run's host lock: the run id, or one per slice of a sliced job (each slice locks its own hosts;
        # one key for all would let each slice replace the others' lock)
        self.lock_id = paths.run_id
        # a slice of a sliced job: other slices save the same run document at the same time (see save)
        self.sliced = False
        # loaded for one batch: state["hosts"] holds the outcomes of the hosts read so far, not every host's (outcomes_of)
        self.scoped = False
        self._read: set[str] = set()
        # how many entries of each per-batch list (ROW_LISTS) the store holds of what state has: a save appends the rest.
        # A run loaded for one batch holds none of the earlier ones, so a batch's save never reads or rewrites them
        self._stored_entries = self._entry_counts()

    @classmethod
    def open(cls, *, state_dir: str, run_id: str, patch_id: str, fingerprint: str, dry_run: bool = False,
             backend: str | None = None, store: Store | None = None) -> Run:
        """The stored run, or a new pending one (nothing is written until save). backend: fleetpatch_state_backend."""
        store = store or open_store(state_dir, backend=backend)
        state = store.load_run(run_id)
        return cls(store=store, paths=RunPaths(state_dir, run_id), state=state or empty_state(run_id, patch_id, fingerprint), dry_run=dry_run)

    @classmethod
    def load(cls, *, state_dir: str, run_id: str, dry_run: bool = False, backend: str | None = None,
             store: Store | None = None, hosts: t.Iterable[str] | None = None) -> Run | None:
        """The stored run, or None when it was never planned. backend: fleetpatch_state_backend.

        hosts: load only these hosts' outcomes (a batch's), so that a step per batch costs O(batch), not O(fleet); the
        others are read when asked for (outcomes_of). A dry run always loads every host (its budget counts in memory).
        """
        store = store or open_store(state_dir, backend=backend)
        scoped = hosts is not None and not dry_run
        state = store.load_run(run_id, hosts=hosts) if scoped else store.load_run(run_id)
        if state is None:
            return None
        run = cls(store=store, paths=RunPaths(state_dir, run_id), state=state, dry_run=dry_run)
        if scoped:
            run.scoped, run._read = True, set(t.cast(t.Iterable[str], hosts))
        return run

    @classmethod
    def rebuilt(cls, *, state_dir: str, run_id: str, patch_id: str, fingerprint: str, attempt: t.Mapping[str, t.Any],
                backend: str | None = None) -> Run:
        """A dry run of a run the store does not hold (check mode and preview store nothing): running, with the one
        attempt the plan described (correlation id, skip list). It changes in memory only."""
        state = empty_state(run_id, patch_id, fingerprint)
        state.update(status="running", attempts=[dict(attempt)])
        return cls(store=open_store(state_dir, backend=backend), paths=RunPaths(state_dir, run_id), state=state, dry_run=True)

    # -- identity ------------------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    @property
    def patch_id(self) -> str | None:
        return self.state.get("patch_id")

    @property
    def fingerprint(self) -> str | None:
        return self.state.get("plan_fingerprint")

    @property
    def status(self) -> str:
        return str(self.state.get("status", "pending"))

    @property
    def stored(self) -> bool:
        """Whether the store holds this run (it was planned)."""
        return self.store.load_run(self.run_id) is not None

    @property
    def attempt(self) -> dict[str, t.Any]:
        """The latest attempt (empty before the first): who started it, when, its correlation id, its skip list."""
        attempts = self.state.get("attempts") or []
        return attempts[-1] if attempts else {}

    @property
    def correlation_id(self) -> str | None:
        """The correlation id of the run's latest attempt (chosen and persisted by rollout_plan): every event and
        registry row of the attempt carries it."""
        return self.attempt.get("correlation_id")

    # -- hosts kept out of this attempt's batches --------------------------------------------------------------

    @property
    def skip_hosts(self) -> list[str]:
        """Hosts this attempt does not touch: quarantined earlier (rollout_plan), not ready (prestage_report)."""
        return list(self.attempt.get("skip_hosts") or [])

    def skip(self, hosts: t.Iterable[str]) -> list[str]:
        """Keep hosts out of the rest of this attempt (saved with the run document); returns the whole skip list."""
        attempt = self.attempt
        if not attempt:
            raise RunStateError(f"run {self.run_id}: no attempt to keep hosts out of (the run was never started)")
        attempt["skip_hosts"] = list(dict.fromkeys([*(attempt.get("skip_hosts") or []), *hosts]))
        return list(attempt["skip_hosts"])

    # -- status --------------------------------------------------------------------------------------------

    def transition(self, new: str) -> str:
        """Move to status new (RunStateError when the state machine does not allow it); returns the old status."""
        old = self.status
        check_transition(old, new, run_id=self.run_id)
        self.state["status"] = new
        return old

    def start_attempt(self, attempt: t.Mapping[str, t.Any], *, fingerprint: str) -> int:
        """A new attempt (plan, first run or resume): running, not halted. Returns the attempt's number."""
        self.state["plan_fingerprint"] = fingerprint
        self.state.setdefault("attempts", []).append(dict(attempt))
        self.transition("running")
        self.state["halted"] = None
        return len(self.state["attempts"])

    def stop(self, action: str, halted: t.Mapping[str, t.Any]) -> None:
        """The gate stopped the run (hold, halt, a rollback response): halted details and the matching status."""
        self.state["halted"] = dict(halted)
        self.transition(STOP_STATUS[action])

    def decide(self, decision: t.Mapping[str, t.Any]) -> None:
        self.state.setdefault("decisions", []).append(dict(decision))

    def settle(self, status: str) -> str:
        """A sliced run's status, as its slices agreed at the finish barrier (every slice writes the same one); the
        state machine is for one controller's steps, and another slice may have moved the stored status meanwhile."""
        if status not in STATUSES or status in ("pending", "preview"):
            raise RunStateError(f"run {self.run_id}: a sliced run cannot settle as {status!r}")
        old = self.status
        self.state["status"] = status
        return old

    def _entry_counts(self) -> dict[str, int]:
        return {key: len(self.state.get(key) or []) for key in ROW_LISTS}

    def save(self) -> None:
        if self.dry_run:
            return
        # the slices' attempts and decisions are merged in the store's transaction; the rest is this slice's
        self.store.save_run(self.run_id, self.state, merge=SLICE_MERGED if self.sliced else (), appended_from=self._stored_entries)
        self._stored_entries = self._entry_counts()

    # -- hosts and the error budget ------------------------------------------------------------------------

    @property
    def hosts(self) -> dict[str, t.Any]:
        """Outcome by host: every host's, or for a run loaded for one batch (scoped) the hosts read so far."""
        return self.state.setdefault("hosts", {})

    def outcomes_of(self, hosts: t.Iterable[str]) -> dict[str, t.Any]:
        """{host: outcome entry} of those of hosts that have one; a scoped run reads the ones it has not read from the store."""
        wanted = list(dict.fromkeys(hosts))
        known = self.hosts
        if self.scoped:
            missing = [host for host in wanted if host not in known and host not in self._read]
            if missing:
                known.update(self.store.outcomes(self.run_id, missing))
                # hosts without an outcome are remembered as read, so they are not asked for again
                self._read.update(missing)
        return {host: known[host] for host in wanted if known.get(host) is not None}

    def record_outcomes(self, outcomes: t.Mapping[str, t.Mapping[str, t.Any]]) -> int:
        """Merge outcomes by host (latest wins) through the store, atomically; returns the hosts spending the budget."""
        if self.dry_run:
            self.hosts.update({host: dict(entry) for host, entry in outcomes.items()})
            return len(failures(self.state))
        hosts, spent = self.store.record_outcomes(self.run_id, outcomes, all_hosts=not self.scoped)
        if self.scoped:
            self.hosts.update(hosts)
        else:
            self.state["hosts"] = hosts
        return spent

    def record(self, host: str, outcome: str, *, at: str, **details: t.Any) -> int:
        return self.record_outcomes({host: outcome_entry(outcome, at=at, **details)})

    def failures(self) -> list[str]:
        return failures(self.state)

    def failed_hosts(self) -> list[str]:
        return failed_hosts(self.state)

    def hosts_with_outcome(self, *outcomes: str) -> list[str]:
        return hosts_with_outcome(self.state, *outcomes)

    @staticmethod
    def spends_budget(outcome: str | None) -> bool:
        return outcome in FAILED_OUTCOMES

    # -- lock ----------------------------------------------------------------------------------------------

    def acquire_lock(self, **lock: t.Any) -> dict[str, t.Any]:
        return self.store.acquire_lock(self.lock_id, **lock)

    def refresh_lock(self, *, ttl_seconds: int | None = None) -> dict[str, t.Any] | None:
        """Renew the lock (every gate and window check does): the lock without its hosts, so O(1), not a read per locked host."""
        return None if self.dry_run else self.store.refresh_lock(self.lock_id, ttl_seconds=ttl_seconds, with_hosts=False)

    def release_lock(self) -> bool:
        return False if self.dry_run else self.store.release_lock(self.lock_id)

    # -- events --------------------------------------------------------------------------------------------

    def event(self, name: str, *, ts: str | None = None, **fields: t.Any) -> None:
        """Queue a domain event (event name, ts, host/wave/batch/status/message, the rest becomes its data)."""
        append_event(self.paths, {"ts": ts or iso(utc_now()), "event": name, **fields})

    def events(self) -> list[dict[str, t.Any]]:
        """The queued events, shaped for the result's fleetpatch_events."""
        return queued_events(self.paths)


# ---------------------------------------------------------------------------------------------------------
# How an action plugin finds its run

# The options of every action that reads or changes a run: its id, the state dir (resolved like rollout_plan's:
# option, FLEETPATCH_STATE_DIR, default) and the plan's immutable outputs (rollout_plan's registered result: plan,
# patch, change, checks; read as data, never as run state).
RUN_OPTIONS: dict[str, dict[str, t.Any]] = {
    "run_id": {"type": "str", "required": True},
    "state_dir": {"type": "str"},
    "plan": {"type": "dict", "required": True},
}
# The same for the steps that run once per batch (change_window, synthetic_checks, wave_gate): the plan result is read
# by variable name from the plan host's variables (plan_for_action) unless a playbook passes it as plan. A templated
# plan argument costs a walk and a copy of the whole plan (every host) per task, so per batch O(fleet).
RUN_VAR_OPTIONS: dict[str, dict[str, t.Any]] = {
    **RUN_OPTIONS,
    "plan": {"type": "dict"},
    "plan_var": {"type": "str", "default": "__rollout_plan"},
}
# the host rollout_plan runs on (the role's plan play): its variables hold the registered plan result
PLAN_HOST = "localhost"


def plan_for_action(args: t.Mapping[str, t.Any], task_vars: t.Mapping[str, t.Any]) -> dict[str, t.Any] | None:
    """The plan result an action works with: its plan argument, else the variable plan_var of the plan host, read as
    stored (hostvars' raw_get: Ansible's item access would template, walk and copy the whole result). Read only: the
    play's variable is not copied, so the caller never changes it. None when neither is there."""
    if args.get("plan") is not None:
        return dict(args["plan"])
    hostvars = task_vars.get("hostvars") or {}
    raw_get = getattr(hostvars, "raw_get", None)
    found = raw_get(PLAN_HOST) if raw_get is not None else hostvars.get(PLAN_HOST)
    value = found.get(args.get("plan_var") or "__rollout_plan") if isinstance(found, t.Mapping) else None
    if value is None and isinstance(task_vars.get(args.get("plan_var") or "__rollout_plan"), t.Mapping):
        # a play on the plan host itself
        value = task_vars[args.get("plan_var") or "__rollout_plan"]
    return dict(value) if isinstance(value, t.Mapping) else None


def play_batch_index(run: t.Mapping[str, t.Any], play_batch: t.Iterable[str]) -> set[int]:
    """The plan batches the hosts of a play batch belong to (one, when the play runs the plan's serial), by the host ->
    batch index rollout_plan computed once (``fleetpatch_run.hosts``), so O(batch); a plan result without it (an older
    one) is indexed here."""
    announced = (run.get("fleetpatch_run") or {}).get("hosts")
    if isinstance(announced, t.Mapping) and announced:
        found = (announced.get(host) for host in play_batch)
        return {int(entry["batch"]) for entry in found if isinstance(entry, t.Mapping) and entry.get("batch") is not None}
    index_of = host_batch_index(run["plan"])
    return {index_of[host] for host in play_batch if host in index_of}


def run_for_action(*, run_id: str, plan: t.Mapping[str, t.Any], state_dir: str | None, check_mode: bool,
                   hosts: t.Iterable[str] | None = None) -> Run:
    """The Run an action works on, loaded by its id from the store the plan chose (``plan["state_backend"]``).

    In check mode or a preview nothing was stored: the action gets a dry run, the stored run when there is one (a
    check over a run in progress sees its outcomes), else one rebuilt from the plan's outputs. A run that should be
    stored and is not (never planned, another state dir or backend) is a RunNotFound. hosts: the outcomes to load (a
    batch's, see Run.load; None: every host's).
    """
    if plan.get("run_id") not in (None, run_id):
        raise RunNotFound(f"run_id {run_id!r} is not the run of the given plan ({plan.get('run_id')!r})")
    directory = resolve_state_dir(state_dir or plan.get("state_dir"))
    backend = plan.get("state_backend")
    dry_run = bool(check_mode or plan.get("preview"))
    stored = Run.load(state_dir=directory, run_id=run_id, dry_run=dry_run, backend=backend, hosts=hosts)
    if stored is not None and isinstance(plan.get("slice"), dict):
        stored.lock_id, stored.sliced = str(plan["slice"]["lock_id"]), True
    if not dry_run:
        if stored is None:
            raise RunNotFound(f"run {run_id} is not in the {backend or DEFAULT_BACKEND} run store under {directory}: was it planned"
                              " (fleetpatch.rollout.rollout_plan) with this state dir and fleetpatch_state_backend?")
        return stored
    # the attempt the plan would have started, in memory only
    attempt = {"correlation_id": plan.get("correlation_id"), "skip_hosts": list(plan.get("skip_hosts") or []), "dry_run": True}
    if stored is not None:
        stored.state.setdefault("attempts", []).append(attempt)
        return stored
    inner = plan.get("plan") or {}
    return Run.rebuilt(state_dir=directory, run_id=run_id, patch_id=str(inner.get("patch_id", "")), fingerprint=str(inner.get("fingerprint", "")),
                       attempt=attempt, backend=backend)
