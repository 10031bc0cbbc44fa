"""Store primitives for sliced jobs (issue 17): one plan per run (attach or create), slice leases and wave barriers,
on SQLite and on a real private PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import time
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PlanConflict, PostgresStore, SqliteStore

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)
_DATABASES = itertools.count(1)
PLAN = json.dumps({"patch_id": "FP-1", "waves": [["a", "b"], ["c", "d"]]}, sort_keys=True) + "\n"


class Spec(t.NamedTuple):
    backend: str
    state_dir: str
    dsn: str

    def open(self) -> t.Any:
        if self.backend == "postgresql":
            return PostgresStore(self.state_dir, environ={DSN_VAR: self.dsn})
        return SqliteStore(self.state_dir)


@pytest.fixture(params=("sqlite", "postgresql"))
def spec(request, tmp_path) -> Spec:
    dsn = ""
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres").create_database(f"slices_{os.getpid()}_{next(_DATABASES)}")
    return Spec(request.param, str(tmp_path / "state"), dsn)


def _join(store: t.Any, slice_no: int, *, slices: int = 3, now: dt.datetime = NOW, ttl: int = 600) -> dict[str, t.Any]:
    return store.join_slice("FP-1", slice_no=slice_no, slices=slices, owner=f"awx job {slice_no}", controller=f"job-{slice_no}", pid=100 + slice_no,
                            ttl_seconds=ttl, now=now)


def _attach(spec: Spec, content: str, start: t.Any, results: t.Any) -> None:
    store = spec.open()
    start.wait(timeout=60)
    try:
        results.put(("created" if store.attach_plan("FP-1", content)["created"] else "attached"))
    except PlanConflict as exc:
        results.put(f"conflict: {exc}")


def test_slices_started_at_once_share_one_plan_the_first_creates_it(spec) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    results = context.Queue()
    processes = [context.Process(target=_attach, args=(spec, PLAN, start, results)) for _slice in range(4)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _process in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == ["attached", "attached", "attached", "created"]
    store = spec.open()
    assert store.read_plan("FP-1") == PLAN
    with open(os.path.join(spec.state_dir, "runs", "FP-1", "plan.json"), encoding="utf-8") as handle:
        assert handle.read() == PLAN


def test_a_different_plan_is_refused_naming_both_digests(spec) -> None:
    store = spec.open()
    assert store.attach_plan("FP-1", PLAN)["created"] is True
    other = PLAN.replace('"d"', '"e"')
    with pytest.raises(PlanConflict, match=r"run FP-1 already has plan sha256:[0-9a-f]{16} .*; this plan is sha256:[0-9a-f]{16}: every slice"):
        store.attach_plan("FP-1", other)
    assert store.read_plan("FP-1") == PLAN
    assert store.attach_plan("FP-1", PLAN) == {"created": False, "digest": store.attach_plan("FP-1", PLAN)["digest"]}


def test_wave_barrier_opens_when_every_slice_finished_the_wave(spec) -> None:
    store = spec.open()
    for number in (1, 2, 3):
        _join(store, number)
    first = store.arrive("FP-1", wave=1, slice_no=2, slices=3, now=NOW)
    assert (first["done"], first["waiting"], first["dead"], first["open"]) == ([2], [1, 3], [], False)
    store.arrive("FP-1", wave=1, slice_no=1, slices=3, now=NOW)
    assert store.arrive("FP-1", wave=1, slice_no=2, slices=3, now=NOW)["done"] == [1, 2]  # arriving twice changes nothing
    assert store.barrier("FP-1", wave=1, slices=3, now=NOW)["open"] is False
    last = store.arrive("FP-1", wave=1, slice_no=3, slices=3, now=NOW)
    assert (last["done"], last["waiting"], last["open"]) == ([1, 2, 3], [], True)
    # wave 2 starts closed again
    assert store.barrier("FP-1", wave=2, slices=3, now=NOW)["waiting"] == [1, 2, 3]


def test_a_slice_whose_lease_expired_is_reported_not_waited_for(spec) -> None:
    store = spec.open()
    _join(store, 1)
    _join(store, 2, ttl=60)  # dies: its lease ends at 12:01
    _join(store, 3)
    store.arrive("FP-1", wave=1, slice_no=1, slices=3, now=NOW)
    store.arrive("FP-1", wave=1, slice_no=3, slices=3, now=NOW)
    assert store.barrier("FP-1", wave=1, slices=3, now=NOW)["waiting"] == [2]
    later = store.barrier("FP-1", wave=1, slices=3, now=NOW + dt.timedelta(minutes=2))
    assert later["dead"] == [{"slice": 2, "expired": "2026-11-27T12:01:00.000000Z"}] and later["waiting"] == [] and later["open"] is True
    # a heartbeat keeps a slice alive
    _join(store, 2, now=NOW + dt.timedelta(minutes=2))
    assert store.barrier("FP-1", wave=1, slices=3, now=NOW + dt.timedelta(minutes=3))["waiting"] == [2]


def test_slices_must_agree_on_their_number(spec) -> None:
    store = spec.open()
    _join(store, 1, slices=3)
    with pytest.raises(StoreError, match=r"run FP-1 is sliced 3 ways .*, not 4"):
        _join(store, 2, slices=4)
    with pytest.raises(StoreError, match=r"slice 4 of 3: slices are numbered 1..N"):
        store.arrive("FP-1", wave=1, slice_no=4, slices=3)


def _finish_later(spec: Spec, delay: float) -> None:
    time.sleep(delay)
    spec.open().arrive("FP-1", wave=1, slice_no=2, slices=2)


def test_wait_barrier_waits_for_the_other_slice_or_times_out(spec) -> None:
    store = spec.open()
    store.arrive("FP-1", wave=1, slice_no=1, slices=2)
    timed_out = store.wait_barrier("FP-1", wave=1, slices=2, timeout=0.3, poll=0.05)
    assert timed_out["timed_out"] is True and timed_out["waiting"] == [2]
    process = multiprocessing.get_context("fork").Process(target=_finish_later, args=(spec, 0.5))
    process.start()
    started = time.monotonic()
    opened = store.wait_barrier("FP-1", wave=1, slices=2, timeout=30, poll=0.05)
    process.join(timeout=30)
    assert opened["open"] is True and opened["timed_out"] is False and opened["done"] == [1, 2]
    assert time.monotonic() - started >= 0.4
