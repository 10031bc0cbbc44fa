from __future__ import annotations

import datetime as dt
import os

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    LockError,
    RunPaths,
    acquire_lock,
    empty_state,
    failures,
    read_json,
    record_outcome,
    refresh_lock,
    release_lock,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)


def _acquire(paths: RunPaths, hosts, *, pid: int = 4242, controller: str = "ctl", now=NOW, break_stale: bool = False):
    return acquire_lock(paths, hosts=hosts, owner="ops@ctl", controller=controller, pid=pid, ttl_seconds=600, break_stale=break_stale, now=now)


def test_live_lock_over_shared_host_refuses_second_run(tmp_path) -> None:
    first = RunPaths(str(tmp_path), "FP-1")
    _acquire(first, ["a", "b"], pid=os.getpid())
    second = RunPaths(str(tmp_path), "FP-2")
    with pytest.raises(LockError, match=r"1 host\(s\) \(first: b\) are locked by a running rollout: run FP-1 owned by ops@ctl"):
        _acquire(second, ["b", "c"], pid=os.getpid() + 1)
    # Disjoint hosts are fine.
    assert _acquire(second, ["c"], pid=os.getpid())["lock"]["hosts"] == ["c"]


def test_expired_lock_is_reported_and_broken_only_deliberately(tmp_path) -> None:
    _acquire(RunPaths(str(tmp_path), "FP-1"), ["a"], pid=os.getpid(), now=NOW - dt.timedelta(hours=2))
    second = RunPaths(str(tmp_path), "FP-2")
    with pytest.raises(LockError, match=r"stale lock \(expired at 2026-11-27T10:10:00.000000Z\).*rollout_break_lock=true"):
        _acquire(second, ["a"], pid=os.getpid())
    result = _acquire(second, ["a"], pid=os.getpid(), break_stale=True)
    assert result["notes"][0].startswith("broke stale lock (expired at")
    assert not os.path.exists(os.path.join(str(tmp_path), "locks", "FP-1.json"))


def test_dead_owner_of_same_run_is_taken_over(tmp_path) -> None:
    paths = RunPaths(str(tmp_path), "FP-1")
    _acquire(paths, ["a"], pid=2**22 + 12345)  # no such process
    result = _acquire(paths, ["a"], pid=os.getpid())
    assert "took over the stale lock of an earlier attempt of this run" in result["notes"][0]
    assert read_json(paths.lock)["pid"] == os.getpid()


def test_refresh_and_release(tmp_path) -> None:
    paths = RunPaths(str(tmp_path), "FP-1")
    _acquire(paths, ["a"], pid=os.getpid())
    later = NOW + dt.timedelta(minutes=5)
    assert refresh_lock(paths, now=later)["expires"] == "2026-11-27T12:15:00.000000Z"
    assert release_lock(paths) is True
    assert release_lock(paths) is False


def test_outcomes_merge_by_host_latest_wins() -> None:
    state = empty_state("FP-1", "FP-1", "f" * 64)
    record_outcome(state, "a", "failed", at="t1", reason="boom")
    record_outcome(state, "b", "patched", at="t1")
    record_outcome(state, "c", "quarantined", at="t1")
    assert failures(state) == ["a", "c"]
    record_outcome(state, "a", "patched", at="t2")
    assert failures(state) == ["c"]
