"""The Run: its state machine (every legal and illegal transition), the atomic error budget and the host lock."""

from __future__ import annotations

import datetime as dt
import os
import threading
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import STATUSES, TRANSITIONS, Run, RunStateError, plan_for_action, play_batch_index
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    LockError,
    SqliteStore,
    StoreError,
    open_store,
    outcome_entry,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)
LEGAL = [(old, new) for old in STATUSES for new in STATUSES if new in TRANSITIONS[old]]
ILLEGAL = [(old, new) for old in STATUSES for new in STATUSES if new not in TRANSITIONS[old]]


def _run(tmp_path, status: str = "pending", *, dry_run: bool = False) -> Run:
    run = Run.open(state_dir=str(tmp_path), run_id="FP-1", patch_id="FP-1", fingerprint="f" * 64, dry_run=dry_run)
    run.state["status"] = status
    return run


def test_every_status_has_a_row_and_targets_are_statuses() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    assert all(set(targets) <= set(STATUSES) for targets in TRANSITIONS.values())
    # every stored run can be resumed by a re-run, and a preview is never stored
    assert all("running" in TRANSITIONS[status] for status in STATUSES if status != "preview")
    assert TRANSITIONS["preview"] == frozenset()


@pytest.mark.parametrize(("old", "new"), LEGAL)
def test_legal_transition(tmp_path, old: str, new: str) -> None:
    run = _run(tmp_path, old)
    assert run.transition(new) == old
    assert run.status == new


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_illegal_transition_raises_and_keeps_status(tmp_path, old: str, new: str) -> None:
    run = _run(tmp_path, old)
    with pytest.raises(RunStateError, match=rf"run FP-1: status '{old}' cannot become '{new}'"):
        run.transition(new)
    assert run.status == old


def test_attempt_starts_running_and_is_saved(tmp_path) -> None:
    run = _run(tmp_path)
    assert run.stored is False
    assert run.start_attempt({"correlation_id": "corr-1", "started": "t0"}, fingerprint="a" * 64) == 1
    run.save()
    loaded = Run.load(state_dir=str(tmp_path), run_id="FP-1")
    assert loaded is not None and loaded.status == "running" and loaded.correlation_id == "corr-1" and loaded.fingerprint == "a" * 64
    loaded.stop("rollback_all", {"action": "rollback_all"})
    assert loaded.status == "rolling_back" and loaded.state["halted"] == {"action": "rollback_all"}


def test_dry_run_writes_nothing(tmp_path) -> None:
    run = _run(tmp_path, "running", dry_run=True)
    assert run.record("a", "failed", at="t1") == 1
    run.save()
    assert run.refresh_lock() is None and run.release_lock() is False
    assert not os.listdir(tmp_path)


def test_events_are_queued_in_the_callback_shape(tmp_path) -> None:
    run = _run(tmp_path, "running")
    run.event("gate.decision", ts="t0", batch=1, wave="w", action="halt", reasons=["r"])
    assert run.events() == [{"event": "gate.decision", "ts": "t0", "wave": "w", "batch": 1, "status": "halt",
                             "data": {"action": "halt", "reasons": ["r"]}}]
    assert not os.listdir(tmp_path)


def test_budget_counts_latest_outcome_per_host(tmp_path) -> None:
    run = _run(tmp_path, "running")
    run.save()
    assert run.record_outcomes({"a": outcome_entry("failed", at="t1"), "b": outcome_entry("patched", at="t1")}) == 1
    assert run.record("c", "quarantined", at="t1") == 2
    assert run.record("a", "patched", at="t2") == 1
    stored = open_store(str(tmp_path)).load_run("FP-1")
    assert stored["hosts"]["a"] == {"outcome": "patched", "at": "t2"} and stored["status"] == "running"


def test_concurrent_budget_spending_never_loses_an_increment(tmp_path) -> None:
    """Two writers (separate store objects, as two workers would be) record failures at the same time."""
    SqliteStore(str(tmp_path)).save_run("FP-1", {"run_id": "FP-1", "status": "running", "hosts": {}})
    per_writer = 40
    seen: dict[str, list[int]] = {"w1": [], "w2": []}

    def spend(name: str) -> None:
        store = SqliteStore(str(tmp_path))
        for index in range(per_writer):
            _hosts, spent = store.record_outcomes("FP-1", {f"{name}-{index}": outcome_entry("failed", at="t")})
            seen[name].append(spent)

    threads = [threading.Thread(target=spend, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _hosts, total = SqliteStore(str(tmp_path)).record_outcomes("FP-1", {})
    assert total == 2 * per_writer
    # every answer was a count at some instant: all distinct across both writers, each writer's increasing
    answers = seen["w1"] + seen["w2"]
    assert len(set(answers)) == len(answers) and max(answers) == 2 * per_writer
    assert all(seen[name] == sorted(seen[name]) for name in seen)


def test_save_keeps_outcomes_recorded_by_another_writer(tmp_path) -> None:
    first = _run(tmp_path, "running")
    first.save()
    other = Run.load(state_dir=str(tmp_path), run_id="FP-1")
    assert other is not None
    other.record("z", "failed", at="t1")
    first.state["note"] = "x"
    first.save()
    assert open_store(str(tmp_path)).load_run("FP-1")["hosts"]["z"]["outcome"] == "failed"


def _lock(run: Run, hosts, *, pid: int, now=NOW, break_stale: bool = False):
    return run.acquire_lock(hosts=hosts, owner="ops@ctl", controller="ctl", pid=pid, ttl_seconds=600, break_stale=break_stale, now=now)


def test_second_taker_is_refused_naming_the_lock(tmp_path) -> None:
    first = Run.open(state_dir=str(tmp_path), run_id="FP-1", patch_id="FP-1", fingerprint="f")
    second = Run.open(state_dir=str(tmp_path), run_id="FP-2", patch_id="FP-2", fingerprint="f")
    _lock(first, ["a", "b"], pid=os.getpid())
    database = os.path.join(str(tmp_path), "fleetpatch.db")
    with pytest.raises(LockError, match=rf"locked by a running rollout: run FP-1 owned by ops@ctl.*\(lock of run FP-1 in run-state database {database}\)"):
        _lock(second, ["b"], pid=os.getpid() + 1)


def test_expired_lock_is_reported_and_refresh_extends(tmp_path) -> None:
    first = Run.open(state_dir=str(tmp_path), run_id="FP-1", patch_id="FP-1", fingerprint="f")
    second = Run.open(state_dir=str(tmp_path), run_id="FP-2", patch_id="FP-2", fingerprint="f")
    _lock(first, ["a"], pid=os.getpid(), now=NOW - dt.timedelta(hours=2))
    with pytest.raises(LockError, match=r"stale lock \(expired at 2026-11-27T10:10:00.000000Z\)"):
        _lock(second, ["a"], pid=os.getpid())
    refreshed = first.store.refresh_lock("FP-1", now=NOW)
    assert refreshed is not None and refreshed["expires"] == "2026-11-27T12:10:00.000000Z"
    with pytest.raises(LockError, match=r"are locked by a running rollout: run FP-1"):
        _lock(second, ["a"], pid=os.getpid())
    assert first.release_lock() is True and first.release_lock() is False
    assert _lock(second, ["a"], pid=os.getpid())["lock"]["run_id"] == "FP-2"


def test_unknown_backend_is_named(tmp_path) -> None:
    assert isinstance(open_store(str(tmp_path)), SqliteStore)
    with pytest.raises(StoreError, match=r"unknown fleetpatch_state_backend 'nosuch': choose one of embedded"):
        open_store(str(tmp_path), backend="nosuch")


def test_play_batch_index_uses_the_plans_announcement_or_indexes_the_plan() -> None:
    plan = {"batches": [{"index": 0, "hosts": ["a"]}, {"index": 1, "hosts": ["b", "c"]}]}
    announced = {"plan": plan, "fleetpatch_run": {"hosts": {"a": {"batch": 0}, "b": {"batch": 1}, "c": {"batch": 1}}}}
    for run in (announced, {"plan": plan}):
        assert play_batch_index(run, ["b", "c"]) == {1}
        assert play_batch_index(run, ["a", "b", "stranger"]) == {0, 1}
        assert play_batch_index(run, ["stranger"]) == set()


def test_plan_for_action_prefers_the_argument_then_reads_the_variable_as_stored() -> None:
    class HostVars(dict):
        def raw_get(self, host: str) -> t.Any:
            return {"__rollout_plan": {"run_id": f"raw-{host}"}, "other": {"run_id": "other"}}

    task_vars = {"hostvars": HostVars(localhost={"__rollout_plan": {"run_id": "templated"}})}
    assert plan_for_action({"plan": {"run_id": "given"}, "plan_var": "__rollout_plan"}, task_vars) == {"run_id": "given"}
    assert plan_for_action({"plan": None, "plan_var": "__rollout_plan"}, task_vars) == {"run_id": "raw-localhost"}
    assert plan_for_action({"plan": None, "plan_var": "other"}, task_vars) == {"run_id": "other"}
    assert plan_for_action({"plan": None, "plan_var": "missing"}, task_vars) is None
    # plain task variables (a play on localhost itself, or unit tests): a dict of hosts, or the variable at the top level
    assert plan_for_action({"plan": None, "plan_var": "__rollout_plan"}, {"hostvars": {"localhost": {"__rollout_plan": {"run_id": "x"}}}}) == {"run_id": "x"}
    assert plan_for_action({"plan": None, "plan_var": "__rollout_plan"}, {"__rollout_plan": {"run_id": "top"}}) == {"run_id": "top"}
