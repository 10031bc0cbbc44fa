"""The readiness gate of rollout_stage=prestaged from the pre-staging job's records (issue 19): hosts recorded as staged
cost no module execution, a recorded copy gone at apply time ends not_staged without spending the error budget,
rollout_readiness=host checks every host as before, and the records live in the run-state store (PostgreSQL too)."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore

from .rollout_harness import DemoFleet, RunResult, run_playbook

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}
RUN_ID = "FP-DEMO-myapp-1.0.1"
# an error budget of 0 that halts on the first failure: a host that spent it would stop the run
STRICT = {"canary": {"size": 1}, "waves": ["100%"], "error_budget": 0, "halt_when": "reached"}


def prestage(fleet: DemoFleet, *, env: dict[str, str] | None = None, **extra: t.Any) -> RunResult:
    extravars = {"prestage_patch_manifest": fleet.manifest(), "prestage_state_dir": fleet.state_dir,
                 "prestage_allowed_signers_file": fleet.allowed_signers, **extra}
    result = run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars, env=env)
    assert result.status == "successful", result.stdout[-3000:]
    return result


def digest_of(fleet: DemoFleet) -> str:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["artifact"]["sha256"]


def drop_copy(fleet: DemoFleet, host: str, digest: str) -> None:
    """The staged copy leaves the host's cache after the pre-staging job (an operator's cleanup, a disk replaced)."""
    for path in (os.path.join(fleet.host_root(host), "cache", "sha256", digest), os.path.join(fleet.host_root(host), "cache", "meta", f"{digest}.json")):
        os.unlink(path)


def readiness(fleet: DemoFleet) -> dict[str, t.Any]:
    with open(os.path.join(fleet.run_dir(RUN_ID), "readiness.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_recorded_hosts_cost_no_module_and_a_vanished_copy_is_not_staged(make_fleet) -> None:
    fleet = make_fleet(**SMALL)
    nodes = fleet.nodes()
    digest = digest_of(fleet)
    staged = prestage(fleet)
    assert set(staged.task_results("prestage")) >= set(nodes)
    assert sorted(fleet.store().staged_records(digest)) == nodes
    victim = nodes[-1]
    drop_copy(fleet, victim, digest)

    result = fleet.rollout(policy=STRICT, rollout_stage="prestaged")
    assert result.status == "successful", result.stdout[-3000:]
    # the readiness gate ran no module on any host: every node was staged by its record
    assert result.task_results("prestage") == {}
    report = readiness(fleet)
    assert (report["ready"], report["hosts"], report["from_records"], report["skip_hosts"]) == (len(nodes), len(nodes), len(nodes), [])
    # the apply found the victim's copy gone: not_staged, kept out, the error budget of 0 untouched
    applied = result.task_results("patch_apply")
    assert applied[victim]["not_cached"] is True
    state = fleet.run_state(RUN_ID)
    assert state["hosts"][victim]["outcome"] == "not_staged"
    assert state["hosts"][victim]["reason"].startswith(f"artifact {digest} is not in ")
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_out" and summary["failures"] == []
    assert summary["counts"]["patched"] == len(nodes) - 1
    assert fleet.current_version(victim) == "1.0.0"
    assert {host: version for host, version in fleet.versions().items() if host != victim} == {host: "1.0.1" for host in nodes if host != victim}
    fleet.assert_records_verify(RUN_ID)


def test_readiness_host_checks_every_host_as_before(make_fleet) -> None:
    fleet = make_fleet(**SMALL)
    nodes = fleet.nodes()
    digest = digest_of(fleet)
    prestage(fleet)
    victim = nodes[0]
    drop_copy(fleet, victim, digest)
    result = fleet.rollout(rollout_stage="prestaged", rollout_readiness="host", rollout_unstaged="skip")
    assert result.status == "successful", result.stdout[-3000:]
    # one prestage execution per planned host, records or not; the victim is found unready and kept out before the waves
    checked = result.task_results("prestage")
    assert sorted(checked) == nodes and not checked[victim]["ready"]
    report = readiness(fleet)
    assert report["from_records"] == 0 and report["skip_hosts"] == [victim]
    assert victim not in result.task_results("patch_apply")
    assert fleet.run_state(RUN_ID)["hosts"][victim]["outcome"] == "not_staged"
    assert fleet.summary(RUN_ID)["counts"]["patched"] == len(nodes) - 1


def test_records_on_postgresql_serve_a_controller_with_an_empty_state_dir(make_fleet, postgres, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    nodes = fleet.nodes()
    digest = digest_of(fleet)
    env = {DSN_VAR: postgres.create_database("prestaged_readiness")}
    backend = {"fleetpatch_state_backend": "postgresql"}
    prestage(fleet, env=env, **backend)
    records = PostgresStore(fleet.state_dir, environ=env).staged_records(digest)
    assert sorted(records) == nodes
    assert {record["sha256"] for record in records.values()} == {digest}
    assert all(record["signature_verified"] for record in records.values())
    # the embedded store of the pre-staging controller holds none of them
    assert fleet.store().staged_records(digest) == {}
    # the rollout job runs in a fresh container: another state dir, the same database
    result = fleet.rollout(rollout_stage="prestaged", rollout_state_dir=str(tmp_path / "fresh"), env=env, **backend)
    assert result.status == "successful", result.stdout[-3000:]
    assert result.task_results("prestage") == {}
    assert fleet.versions() == {host: "1.0.1" for host in nodes}
