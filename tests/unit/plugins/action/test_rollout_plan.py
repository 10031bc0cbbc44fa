"""fleetpatch.rollout.rollout_plan: the plan, its files, the lock, and the refusals before any host is touched."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import HOSTS, MANIFEST, plan_args, run_action, stored_lock, stored_run


def test_plan_writes_plan_state_lock_and_masks_credentials(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    assert result["run_id"] == "FP-UNIT-1"
    assert sorted(result["host_order"]) == HOSTS
    assert sum(result["serial"]) == len(HOSTS)
    run_dir = os.path.join(fleet["state_dir"], "runs", "FP-UNIT-1")
    # the run document and lock are the store's (embedded: fleetpatch.db); plan.json is the one file written
    assert result["run_dir"] == run_dir and result["written"] == [os.path.join(run_dir, "plan.json")]
    assert result["state_backend"] == "embedded" and os.listdir(run_dir) == ["plan.json"]
    with open(os.path.join(run_dir, "plan.json"), encoding="utf-8") as handle:
        assert json.load(handle)["fingerprint"] == result["plan"]["fingerprint"]
    state = stored_run(result)
    assert state["status"] == "running" and len(state["attempts"]) == 1 and not state["attempts"][0]["resumed"]
    assert stored_lock(result)["hosts"] == sorted(HOSTS)
    assert "hunter22" not in json.dumps(result["patch"])
    assert [event["event"] for event in result["fleetpatch_events"]][:3] == ["run.started", "plan.compiled", "change.classified"]


def test_second_plan_resumes_the_same_run(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    again = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert not again.get("failed"), again.get("msg")
    assert again["plan"]["fingerprint"] == planned["plan"]["fingerprint"]
    attempts = stored_run(planned)["attempts"]
    assert [attempt["resumed"] for attempt in attempts] == [False, True]


def test_preview_writes_nothing(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True), fleet["task_vars"])
    assert result["preview"] is True and result["written"] == [] and result["run_dir"] is None
    assert not os.path.exists(fleet["state_dir"])


def test_check_mode_is_a_preview(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"], check_mode=True)
    assert result["preview"] is True and not os.path.exists(fleet["state_dir"])


def test_refuses_without_event_log(fleet: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETPATCH_EVENTS_REQUIRED", raising=False)
    monkeypatch.delenv("FLEETPATCH_EVENTS_ACTIVE", raising=False)
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert result["failed"] and "the event callback fleetpatch.rollout.events is not enabled" in result["msg"]
    assert not os.path.exists(fleet["state_dir"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"targets": []}, "no target hosts"),
        ({"manifest": 42}, "manifest must be a path to a patch manifest file or a mapping"),
        ({"manifest": "/nonexistent/patch.yml"}, "patch manifest /nonexistent/patch.yml does not exist"),
        ({"manifest": dict(MANIFEST, approvals=[{"by": "alice"}])}, "alice requested this patch and cannot approve it"),
    ],
)
def test_bad_input_fails_with_its_reason(fleet: dict[str, t.Any], no_event_log: None, changes: dict[str, t.Any], message: str) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], **changes), fleet["task_vars"])
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not os.path.exists(os.path.join(fleet["state_dir"], "runs"))


def test_host_without_root_is_named(fleet: dict[str, t.Any], no_event_log: None) -> None:
    del fleet["task_vars"]["hostvars"]["node3"]["fleetpatch_host_root"]
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert result["failed"] and result["msg"] == "host 'node3': variable 'fleetpatch_host_root' is missing"


def test_edges_are_excluded_with_a_warning(fleet: dict[str, t.Any], no_event_log: None) -> None:
    fleet["task_vars"]["hostvars"]["node4"]["fleet_role"] = "edge"
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True), fleet["task_vars"])
    assert "node4" not in result["host_order"]
    assert result["warnings"] == ["1 edge host(s) excluded from the rollout targets: node4"]


def test_unknown_option_is_an_argument_error(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="lock_tll"):
        run_action("rollout_plan", plan_args(fleet["state_dir"], lock_tll=5), fleet["task_vars"])
