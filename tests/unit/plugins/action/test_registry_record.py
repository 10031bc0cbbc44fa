"""fleetpatch.rollout.registry_record: the patch registry's records of a plan and of a finished run."""

from __future__ import annotations

import json
import os
import sqlite3
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import run_action, run_args, stored_run

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import Registry
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store


def record_args(run: dict[str, t.Any] | None, event: str, **changes: t.Any) -> dict[str, t.Any]:
    return {"event": event, **(run_args(run) if run is not None else {}), "secret_vars": [], **changes}


def kinds(path: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT kind FROM records ORDER BY seq")]


def test_plan_then_finish_writes_records_and_a_checkpoint(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("registry_record", record_args(planned, "plan"), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    registry = os.path.join(fleet["state_dir"], "registry.sqlite3")
    assert result["registry"] == registry and result["changed"] is True
    assert [record["kind"] for record in result["recorded"]] == ["patch.registered", "run.started"]
    assert result["fleetpatch_registry"]["run_id"] == planned["run_id"]
    assert [event["event"] for event in result["fleetpatch_events"]] == ["registry.recorded", "registry.recorded"]
    # the same manifest again: no second patch.registered
    again = run_action("registry_record", record_args(planned, "plan"), fleet["task_vars"])
    assert [record["kind"] for record in again["recorded"]] == ["run.started"]

    run_action("rollout_finish", run_args(planned), fleet["task_vars"])
    finish = run_action("registry_record", record_args(planned, "finish", finish={"status": "interrupted"}), fleet["task_vars"])
    assert [record["kind"] for record in finish["recorded"]] == ["run.finished"]
    assert os.path.exists(finish["checkpoint"]["path"])
    assert kinds(registry) == ["patch.registered", "run.started", "run.started", "run.finished"]


def test_secret_values_never_reach_the_registry(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    task_vars = dict(fleet["task_vars"], deploy_token="s3cr3t-value-123")
    run_action("registry_record", record_args(planned, "prestaged", details={"note": "staged with s3cr3t-value-123"}), task_vars)
    with open(os.path.join(fleet["state_dir"], "registry.sqlite3"), "rb") as handle:
        assert b"s3cr3t-value-123" not in handle.read()


def test_check_mode_writes_nothing(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("registry_record", record_args(planned, "plan"), fleet["task_vars"], check_mode=True)
    assert result["recorded"] == [] and result["skipped_reason"].startswith("check mode or preview")
    assert not os.path.exists(os.path.join(fleet["state_dir"], "registry.sqlite3"))


def test_without_patch_id_it_fails_with_the_reason(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("registry_record", record_args(None, "prestaged", state_dir=fleet["state_dir"]), fleet["task_vars"])
    assert result == {"failed": True, "msg": "patch registry: patch_id is required (directly or through plan)"}


def test_plan_without_manifest_is_refused(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("registry_record", record_args(dict(planned, patch=None), "plan", patch_id="FP-UNIT-1"), fleet["task_vars"])
    assert result["failed"] and "run has no patch manifest" in result["msg"]


def test_unknown_event_is_an_argument_error(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="event"):
        run_action("registry_record", record_args(planned, "started"), fleet["task_vars"])


def test_override_refusal_is_recorded(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("registry_record", record_args(None, "override_refused", patch_id="FP-UNIT-1", state_dir=fleet["state_dir"],
                                                       details={"reason": "expired"}), fleet["task_vars"])
    assert [record["kind"] for record in result["recorded"]] == ["patch.override"]
    with sqlite3.connect(os.path.join(fleet["state_dir"], "registry.sqlite3")) as db:
        body = json.loads(db.execute("SELECT body FROM records").fetchone()[0])
    assert body == {"reason": "expired", "status": "refused"}


def test_a_failed_log_write_reaches_the_finish_record_through_the_run_store(fleet: dict[str, t.Any], planned: dict[str, t.Any],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The events callback keeps a failed write in the run's store for its attempt; no environment variable carries it."""
    monkeypatch.setenv("FLEETPATCH_EVENTS_ACTIVE", str(os.getppid()))  # the callback is loaded (this process's parent)
    store = open_store(planned["state_dir"], backend=planned["state_backend"])
    correlation_id = stored_run(planned)["attempts"][-1]["correlation_id"]
    run_action("registry_record", record_args(planned, "plan"), fleet["task_vars"])
    # an earlier attempt's failure is not this attempt's
    store.record_log_status(planned["run_id"], correlation_id="an-earlier-attempt", complete=False, reason="incomplete: disk full")
    registry = Registry(os.path.join(fleet["state_dir"], "registry.sqlite3"))
    run_action("registry_record", record_args(planned, "finish", finish={"status": "interrupted"}), fleet["task_vars"])
    assert registry.latest("run.finished", patch_id=planned["run_id"])["body"]["log"] == {"callback": True, "complete": True, "reason": None}
    store.record_log_status(planned["run_id"], correlation_id=correlation_id, complete=False, reason="incomplete: [Errno 28] disk full")
    run_action("registry_record", record_args(planned, "finish", finish={"status": "interrupted"}), fleet["task_vars"])
    assert registry.latest("run.finished", patch_id=planned["run_id"])["body"]["log"] == \
        {"callback": True, "complete": False, "reason": "incomplete: [Errno 28] disk full"}
