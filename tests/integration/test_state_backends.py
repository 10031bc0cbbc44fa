"""The demo rollout with its run state in SQL: a real private PostgreSQL server, and the embedded default (SQLite), read back from the store."""

from __future__ import annotations

import json
import os
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import open_registry, verify_all
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore

from .rollout_harness import DemoFleet

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
POLICY = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["25%", "100%"], "disruption_budget": {"segment": 2}}


def _assert_rolled_out(fleet: DemoFleet, stored: dict[str, t.Any], plan_text: str | None) -> None:
    nodes = fleet.nodes()
    assert fleet.versions() == {host: "1.0.1" for host in nodes}
    for host in nodes:
        assert fleet.health(host)["version"] == "1.0.1"
        assert fleet.host_manifest(host)["previous"]["version"] == "1.0.0"
    assert stored["status"] == "rolled_out" and stored["patch_id"] == RUN_ID
    assert {host: entry["outcome"] for host, entry in stored["hosts"].items()} == {host: "patched" for host in nodes}
    # the store's plan is the operator's plan.json, byte for byte
    with open(os.path.join(fleet.run_dir(RUN_ID), "plan.json"), encoding="utf-8") as handle:
        assert handle.read() == plan_text
    assert fleet.summary(RUN_ID)["status"] == "rolled_out"
    # nothing of the run state is left in files: no state.json, no lock file
    assert not os.path.exists(os.path.join(fleet.run_dir(RUN_ID), "state.json"))
    assert not os.path.exists(os.path.join(fleet.state_dir, "locks"))


def test_rollout_keeps_its_run_state_in_postgresql_and_resumes_from_an_empty_state_dir(make_fleet, postgres, tmp_path, monkeypatch) -> None:
    dsn = postgres.create_database("rollout")
    fleet = make_fleet()
    result = fleet.rollout(policy=POLICY, env={DSN_VAR: dsn}, fleetpatch_state_backend="postgresql")
    assert result.status == "successful", result.stdout[-3000:]
    store = PostgresStore(str(tmp_path / "reader"), environ={DSN_VAR: dsn})
    stored = store.load_run(RUN_ID)
    _assert_rolled_out(fleet, stored, store.read_plan(RUN_ID))
    assert store.read_lock(RUN_ID) is None
    assert json.loads(store.read_plan(RUN_ID))["host_order"][0] == "eu-west-acme-api-prod-01"

    # a fresh controller (an AWX job's new container: empty state dir) resumes the same run from the database
    fleet.state_dir = str(tmp_path / "fresh-controller")
    again = fleet.rollout(policy=POLICY, env={DSN_VAR: dsn}, fleetpatch_state_backend="postgresql")
    assert again.status == "successful", again.stdout[-3000:]
    assert not any(res.get("changed") for res in again.task_results("patch_apply").values())
    resumed = store.load_run(RUN_ID)
    assert len(resumed["attempts"]) == len(stored["attempts"]) + 1
    _assert_rolled_out(fleet, resumed, store.read_plan(RUN_ID))
    # the patch registry and the event log's lines are in the database as well: no registry file on either controller,
    # one chain of both attempts (each sealed its log; the fresh controller's log went on from the stored lines),
    # verified from a third, empty state dir
    assert not os.path.exists(os.path.join(fleet.state_dir, "registry.sqlite3"))
    monkeypatch.setenv(DSN_VAR, dsn)
    registry = open_registry(str(tmp_path / "auditor"), backend="postgresql")
    kinds = [record["kind"] for record in registry.records(patch_id=RUN_ID)]
    assert kinds.count("run.started") == 2 and kinds.count("run.finished") == 2 and kinds.count("log.sealed") == 2
    report = verify_all(str(tmp_path / "auditor"), backend="postgresql")
    assert report["ok"] and report["head"]["records"] == len(registry.rows()), report["findings"]
    with open(os.path.join(fleet.run_dir(RUN_ID), "events.jsonl"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert [(item["store"], item["lines"]) for item in report["event_files"]] == [(True, len(lines))]
    assert json.loads(lines[-1])["seq"] == len(lines) and any('"event":"log.opened"' in line for line in lines)
    store.close()


def test_rollout_keeps_its_run_state_in_the_embedded_sqlite_store_by_default(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    result = fleet.rollout(policy=POLICY)
    assert result.status == "successful", result.stdout[-3000:]
    assert result.task_results("rollout_plan")["localhost"]["state_backend"] == "embedded"
    store = SqliteStore(fleet.state_dir)
    _assert_rolled_out(fleet, store.load_run(RUN_ID), store.read_plan(RUN_ID))
    assert os.stat(os.path.join(fleet.state_dir, "fleetpatch.db")).st_mode & 0o777 == 0o600
    store.close()
