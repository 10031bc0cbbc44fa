"""Sliced jobs acting as one rollout (issue 17): the slices' hosts joined into one plan, their part of each batch, batch
barriers, one error budget and one halt across the slices, the end every slice waits for. SQLite and real PostgreSQL."""

from __future__ import annotations

import itertools
import os
import threading
import time
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import compile_plan
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._slices import (
    SliceError,
    after_batch,
    at_finish,
    before_batch,
    join_slices,
    own_part,
    slice_context,
    slice_from_plan,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import outcome_entry
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore

RUN = "FP-9"
_DATABASES = itertools.count(1)
IDENTITY = {"owner": "tester", "controller": "here", "pid": os.getpid()}
HOSTS = {f"h{index:02d}": {"fleet_region": "eu" if index % 2 else "us", "fleet_tenant": "t", "fleet_segment": "s", "fleet_environment": "prod"}
         for index in range(12)}


@pytest.fixture(params=("sqlite", "postgresql"))
def opener(request, tmp_path) -> t.Callable[[], t.Any]:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres").create_database(f"slicing_{os.getpid()}_{next(_DATABASES)}")
        return lambda: PostgresStore(str(tmp_path / "state"), environ={DSN_VAR: dsn})
    return lambda: SqliteStore(str(tmp_path / "state"))


def _ctx(number: int, count: int = 3, **extra: t.Any) -> t.Any:
    return slice_context({"fleetpatch_slice_number": str(number), "fleetpatch_slice_count": count, "fleetpatch_slice_wait": 20, **extra},
                         run_id=RUN, generation="awx-workflow-7")


def _slice_hosts(number: int, count: int = 3) -> dict[str, dict[str, str]]:
    return {host: HOSTS[host] for host in sorted(HOSTS)[number - 1::count]}


def test_slice_context_reads_the_slice_variables_and_refuses_bad_ones() -> None:
    ctx = _ctx(2)
    assert (ctx.number, ctx.count, ctx.key, ctx.lock_id) == (2, 3, "FP-9@awx-workflow-7", "FP-9#slice-2-of-3")
    assert slice_from_plan({"slice": dict(ctx.as_result(), hosts=4)}) == ctx
    assert slice_context({}, run_id=RUN, generation="x") is None
    assert slice_context({"fleetpatch_slice_number": 1, "fleetpatch_slice_count": 1}, run_id=RUN, generation="x") is None
    for bad, message in (({"fleetpatch_slice_number": 4, "fleetpatch_slice_count": 3}, "from 1 to 3"),
                         ({"fleetpatch_slice_number": "one", "fleetpatch_slice_count": 3}, "not a whole number"),
                         ({"fleetpatch_slice_count": 3}, "go together")):
        with pytest.raises(SliceError, match=message):
            slice_context(bad, run_id=RUN, generation="x")
    with pytest.raises(SliceError, match="correlation id"):
        slice_context({"fleetpatch_slice_number": 1, "fleetpatch_slice_count": 2}, run_id=RUN, generation="")


def test_three_slices_join_into_one_plan_and_each_runs_its_part(opener) -> None:
    joined: dict[int, dict[str, t.Any]] = {}

    def join(number: int) -> None:
        joined[number] = join_slices(opener(), _ctx(number), hosts=_slice_hosts(number), identity=IDENTITY)

    threads = [threading.Thread(target=join, args=(number,)) for number in (3, 1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(joined) == [1, 2, 3]
    # every slice sees the whole fleet and the same clock: the plans they compile are equal
    assert all(found["hosts"] == HOSTS for found in joined.values())
    assert len({found["last_joined"] for found in joined.values()}) == 1
    plan = compile_plan(joined[1]["hosts"], {"canary": {"size": 1}, "waves": ["50%", "100%"], "max_concurrency": 2}, RUN)
    parts = [own_part(plan, _slice_hosts(number)) for number in (1, 2, 3)]
    # each slice's serial covers exactly its hosts, in plan order, and together they are the plan
    assert sorted(host for _serial, order in parts for host in order) == sorted(HOSTS)
    for serial, order in parts:
        assert sum(serial) == len(order) == 4
        assert order == [host for host in plan["host_order"] if host in order]


def test_a_slice_that_never_joins_is_named_after_the_bounded_wait(opener) -> None:
    started = time.monotonic()
    with pytest.raises(SliceError, match=r"slice\(s\) 2, 3 of 3 did not join FP-9@awx-workflow-7 within 1 s"):
        join_slices(opener(), _ctx(1, fleetpatch_slice_wait=1), hosts=_slice_hosts(1), identity=IDENTITY)
    assert time.monotonic() - started < 10


def test_barriers_budget_and_halt_reach_every_slice(opener) -> None:
    store = opener()
    plan = {"batches": [{"index": index} for index in range(4)], "error_budget": {"limit": 1, "halt_when": "exceeded"}}
    one, two = _ctx(1, 2), _ctx(2, 2)
    for ctx in (one, two):
        store.join_slice(ctx.key, slice_no=ctx.number, slices=2, owner="o", controller="c", pid=1, ttl_seconds=60)
    # slice 1 may start batch 0 at once; batch 1 waits for slice 2's batch 0
    assert before_batch(store, one, run_id=RUN, plan=plan, index=0, identity=IDENTITY)["stop"] is False
    after_batch(store, one, index=0, stop=None, identity=IDENTITY)
    waiting = before_batch(store, dict_replace(one, wait=1), run_id=RUN, plan=plan, index=1, identity=IDENTITY)
    assert waiting["stop"] and waiting["waiting"] == [2] and "did not finish batch 0" in waiting["reason"]
    # slice 2 has no hosts in batches 0 and 1: starting batch 2 passes them, and batch 2 may start once slice 1 gated 1
    after_batch(store, one, index=1, stop=None, identity=IDENTITY)
    assert before_batch(store, two, run_id=RUN, plan=plan, index=2, identity=IDENTITY)["stop"] is False
    # one failure is within the budget of 1; two (one per slice) stop every slice before its next batch
    store.record_outcomes(RUN, {"h01": outcome_entry("failed", at="x")})
    assert before_batch(store, one, run_id=RUN, plan=plan, index=2, identity=IDENTITY)["stop"] is False
    store.record_outcomes(RUN, {"h02": outcome_entry("quarantined", at="x")})
    stopped = before_batch(store, two, run_id=RUN, plan=plan, index=3, identity=IDENTITY)
    assert stopped["stop"] and stopped["spent"] == 2 and "error budget spent across the slices: 2 failed host(s), limit 1" in stopped["reason"]
    assert before_batch(store, one, run_id=RUN, plan=plan, index=3, identity=IDENTITY)["halt"]["slice"] == 2
    # the end: both slices pass what is left; neither waits for the other once both are there
    assert at_finish(store, one, plan=plan, identity=IDENTITY)["halt"]["slice"] == 2
    ended = at_finish(store, two, plan=plan, identity=IDENTITY)
    assert ended["waiting"] == [] and ended["dead"] == []


def test_a_gate_that_stops_halts_the_other_slices_and_a_dead_slice_is_not_waited_for(opener) -> None:
    store = opener()
    plan = {"batches": [{"index": index} for index in range(3)], "error_budget": {"limit": 5, "halt_when": "exceeded"}}
    one, two, three = _ctx(1), _ctx(2), dict_replace(_ctx(3), lease=5)
    for ctx in (one, two):
        store.join_slice(ctx.key, slice_no=ctx.number, slices=3, owner="o", controller="c", pid=1, ttl_seconds=60)
    store.join_slice(three.key, slice_no=3, slices=3, owner="o", controller="c", pid=1, ttl_seconds=1)
    after_batch(store, one, index=0, stop=None, identity=IDENTITY)
    after_batch(store, two, index=0, stop=None, identity=IDENTITY)
    time.sleep(1.5)
    # slice 3 took a one-second lease and never came back: reported dead, batch 1 starts without it
    going = before_batch(store, one, run_id=RUN, plan=plan, index=1, identity=IDENTITY)
    assert going["stop"] is False and [dead["slice"] for dead in going["dead"]] == [3]
    after_batch(store, two, index=1, stop={"trigger": "check latency failed", "action": "halt"}, identity=IDENTITY)
    stopped = before_batch(store, one, run_id=RUN, plan=plan, index=2, identity=IDENTITY)
    assert stopped["stop"] and stopped["reason"] == "slice 2 stopped the run: check latency failed"


def dict_replace(ctx: t.Any, **changes: t.Any) -> t.Any:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(ctx, **changes)


def test_slices_saving_the_run_document_at_once_keep_each_others_attempts_and_decisions(opener) -> None:
    store = opener()
    merged = ("attempts", "decisions")
    first = {"started": "t1", "owner": "job 1", "pid": 1, "skip_hosts": []}
    second = {"started": "t2", "owner": "job 2", "pid": 2, "skip_hosts": []}
    store.save_run(RUN, {"status": "running", "attempts": [first], "decisions": [{"batch": 0, "slice": 1}]}, merge=merged)
    # slice 2 loaded the document before slice 1 saved: its save keeps slice 1's attempt and decision
    store.save_run(RUN, {"status": "running", "attempts": [second], "decisions": [{"batch": 0, "slice": 2}]}, merge=merged)
    # slice 1 changes its own attempt later (its skip list): replaced where it stands, not added twice
    store.save_run(RUN, {"status": "halted", "attempts": [dict(first, skip_hosts=["h01"])]}, merge=merged)
    document = store.load_run(RUN)
    assert document["attempts"] == [dict(first, skip_hosts=["h01"]), second]
    assert document["decisions"] == [{"batch": 0, "slice": 1}, {"batch": 0, "slice": 2}]
    assert document["status"] == "halted"
