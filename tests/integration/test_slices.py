"""AWX sliced jobs act as one rollout (issue 17): three concurrent ansible-runner jobs, each with an inventory that
holds only its slice (``sorted(hosts)[i::3]``, as AWX builds it), the same extra vars but their own ``awx_job_id``, one
``awx_workflow_job_id``, ``fleetpatch_slice_number/count``, their own empty state dir (a fresh container each) and one
real private PostgreSQL server. One plan, one error budget (both sides of the boundary), one correlation id, resume
from fresh containers, a different plan refused, a slice that never joins reported."""

from __future__ import annotations

import concurrent.futures
import os
import typing as t

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore

from .rollout_harness import DemoFleet, RunResult, run_playbook

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
SLICES = 3
# the failures are quarantined (the budget decides, not the first failure); no disruption budget: wide batches
BASE_POLICY = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["25%", "100%"], "response": "quarantine",
               "canary_response": "quarantine"}


def _slice_inventories(fleet: DemoFleet, directory: str) -> list[tuple[str, list[str]]]:
    """One inventory file per slice holding sorted(hosts)[i::3] of the fleet's inventory, as AWX slices it."""
    with open(fleet.inventory, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    names = sorted(config["hosts"])
    slices = []
    for number in range(1, SLICES + 1):
        mine = names[number - 1::SLICES]
        path = os.path.join(directory, f"slice{number}.fleet.yml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(dict(config, hosts={name: config["hosts"][name] for name in mine}), handle)
        slices.append((path, mine))
    return slices


def _launch(fleet: DemoFleet, dsn: str, inventories: list[tuple[str, list[str]]], *, workflow: int, base: str, policy: dict[str, t.Any],
            numbers: t.Sequence[int] = (1, 2, 3), **extra: t.Any) -> dict[int, RunResult]:
    """The slices of one sliced job, started at once; each slice in its own fresh state dir (its container)."""

    def one(number: int) -> RunResult:
        extravars = {"rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": os.path.join(base, f"w{workflow}-s{number}"),
                     "rollout_policy": fleet.trusting(policy), "fleetpatch_state_backend": "postgresql", "awx_job_id": workflow * 10 + number,
                     "awx_workflow_job_id": workflow, "fleetpatch_slice_number": number, "fleetpatch_slice_count": SLICES, **extra}
        return run_playbook("rollout.yml", inventory=inventories[number - 1][0], extravars=extravars, env={DSN_VAR: dsn})

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(numbers)) as pool:
        futures = {number: pool.submit(one, number) for number in numbers}
        return {number: future.result(timeout=900) for number, future in futures.items()}


def _finish(result: RunResult) -> dict[str, t.Any]:
    return result.task_results("rollout_finish")["localhost"]


def _events(base: str, workflow: int, number: int) -> list[dict[str, t.Any]]:
    fleet = DemoFleet.__new__(DemoFleet)
    fleet.state_dir = os.path.join(base, f"w{workflow}-s{number}")
    return fleet.events(RUN_ID)


def _plan_batches(fleet: DemoFleet, policy: dict[str, t.Any]) -> list[list[str]]:
    preview = fleet.rollout(policy=policy, rollout_preview=True)
    assert preview.status == "successful", preview.stdout[-3000:]
    return [batch["hosts"] for batch in preview.task_results("rollout_plan")["localhost"]["plan"]["batches"]]


def _spread(batch: list[str], inventories: list[tuple[str, list[str]]], count: int) -> list[str]:
    """count hosts of batch, each from another slice."""
    chosen = []
    for _path, mine in inventories:
        found = [host for host in batch if host in mine]
        if found and len(chosen) < count:
            chosen.append(found[0])
    assert len(chosen) == count, f"batch {batch} does not span {count} slices"
    return chosen


def _restart_fails(hosts: list[str]) -> list[dict[str, t.Any]]:
    return [{"kind": "restart_fails", "description": f"{host} refuses to restart", "match": {"host": host}} for host in hosts]


def test_budget_b_failures_across_slices_continue_resume_from_fresh_containers_and_another_plan_is_refused(
        make_fleet, postgres, tmp_path) -> None:
    policy = dict(BASE_POLICY, error_budget=2)
    fleet = make_fleet()
    inventories = _slice_inventories(fleet, str(tmp_path))
    batches = _plan_batches(fleet, policy)
    failing = _spread(batches[-1], inventories, 2)
    fleet.create(demo_fleet_faults=_restart_fails(failing))
    dsn = postgres.create_database("slices_budget")
    base = str(tmp_path / "containers")

    results = _launch(fleet, dsn, inventories, workflow=77, base=base, policy=policy)
    for number, result in results.items():
        assert result.status == "successful", f"slice {number}: " + result.stdout[-3000:]
        finish = _finish(result)
        assert finish["status"] == "rolled_out", finish
        assert finish["summary"]["slices"]["slice"] == number and finish["summary"]["slices"]["dead"] == []
        assert sorted(finish["summary"]["failures"]) == sorted(failing)
    # one plan over the whole fleet: every slice compiled the same one, one created it, the others attached
    plans = [result.task_results("rollout_plan")["localhost"] for result in results.values()]
    assert len({plan["plan"]["fingerprint"] for plan in plans}) == 1
    assert sorted(plan["slice"]["plan"] for plan in plans) == ["attached", "attached", "created"]
    assert sorted(host for plan in plans for host in plan["host_order"]) == sorted(fleet.nodes())
    # B failures spread over the slices: every other host patched, the failed ones kept 1.0.0
    assert fleet.versions() == {host: "1.0.0" if host in failing else "1.0.1" for host in fleet.nodes()}
    store = PostgresStore(str(tmp_path / "reader"), environ={DSN_VAR: dsn})
    outcomes = {host: entry["outcome"] for host, entry in store.load_run(RUN_ID)["hosts"].items()}
    assert outcomes == {host: "quarantined" if host in failing else "patched" for host in fleet.nodes()}
    assert store.read_lock(RUN_ID) is None and all(store.read_lock(f"{RUN_ID}#slice-{n}-of-3") is None for n in (1, 2, 3))
    # one correlation id in every slice's event log
    for number in (1, 2, 3):
        events = _events(base, 77, number)
        assert events and {event.get("correlation_id") for event in events} == {"awx-workflow-77"}
        assert any(event["event"] == "slice.joined" for event in events)

    # the workflow again, from fresh containers (empty state dirs): the run resumes from PostgreSQL, nothing changes
    again = _launch(fleet, dsn, inventories, workflow=78, base=base, policy=policy)
    for number, result in again.items():
        assert result.status == "successful", f"slice {number}: " + result.stdout[-3000:]
        assert not any(res.get("changed") for res in result.task_results("patch_apply").values())
        assert _finish(result)["status"] == "rolled_out"
    assert len(store.load_run(RUN_ID)["attempts"]) == 6

    # a sliced job launched with another policy is refused before any host is touched, naming both plans
    refused = _launch(fleet, dsn, inventories, workflow=79, base=base, policy=dict(policy, waves=["50%", "100%"]))
    for number, result in refused.items():
        assert result.status == "failed"
        message = result.task_results("rollout_plan")["localhost"]["msg"]
        assert "different plan" in message and "fingerprint" in message, message
        assert not result.task_results("patch_apply")
    store.close()


def test_budget_b_plus_one_failures_across_slices_halt_every_slice_before_its_next_batch(make_fleet, postgres, tmp_path) -> None:
    policy = dict(BASE_POLICY, error_budget=2)
    fleet = make_fleet()
    inventories = _slice_inventories(fleet, str(tmp_path))
    batches = _plan_batches(fleet, policy)
    # three failures (budget 2), one in each slice, all in the first wave after the canary
    stop_batch = 1
    failing = _spread(batches[stop_batch], inventories, 3)
    fleet.create(demo_fleet_faults=_restart_fails(failing))
    dsn = postgres.create_database("slices_halt")
    base = str(tmp_path / "containers")

    results = _launch(fleet, dsn, inventories, workflow=90, base=base, policy=policy)
    later = [host for batch in batches[stop_batch + 1:] for host in batch]
    done = [host for batch in batches[: stop_batch + 1] for host in batch]
    for number, result in results.items():
        assert result.status == "failed", f"slice {number}: " + result.stdout[-3000:]
        finish = _finish(result)
        assert finish["status"] == "halted", finish
        halt = finish["summary"]["slices"]["halt"]
        assert "error budget spent" in halt["reason"]["trigger"] and "3" in halt["reason"]["trigger"], halt
        # no slice started a host of a later batch
        assert not set(result.task_results("patch_apply")) & set(later)
    versions = fleet.versions()
    assert {host: versions[host] for host in later} == {host: "1.0.0" for host in later}
    assert {host: versions[host] for host in done} == {host: "1.0.0" if host in failing else "1.0.1" for host in done}
    for number in (1, 2, 3):
        events = _events(base, 90, number)
        assert {event.get("correlation_id") for event in events} == {"awx-workflow-90"}


def test_a_slice_that_never_joins_is_reported_and_no_host_is_touched(make_fleet, postgres, tmp_path) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    inventories = _slice_inventories(fleet, str(tmp_path))
    dsn = postgres.create_database("slices_missing")
    results = _launch(fleet, dsn, inventories, workflow=95, base=str(tmp_path / "containers"), policy=dict(BASE_POLICY, error_budget=1),
                      numbers=(1, 2), fleetpatch_slice_wait=5)
    for result in results.values():
        assert result.status == "failed"
        assert "slice(s) 3 of 3 did not join" in result.task_results("rollout_plan")["localhost"]["msg"]
        assert not result.task_results("patch_apply")
    assert set(fleet.versions().values()) == {"1.0.0"}
