"""AWX identity from the extra variables AWX passes (names as in awx/main/models/unified_jobs.py awx_meta_vars)."""

from __future__ import annotations

import re
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._awx import (
    AwxIdentity,
    AwxIdentityError,
    awx_correlation_id,
    awx_identity,
)

# what AWX sends a job that a user launched from a workflow node, under both prefixes
WORKFLOW_NODE = {
    **{f"{prefix}_{key}": value for prefix in ("awx", "tower") for key, value in {
        "job_id": 4711, "job_launch_type": "workflow", "job_template_id": 12, "job_template_name": "fleetpatch rollout",
        "workflow_job_id": 4700, "workflow_job_name": "fleetpatch staged rollout", "workflow_job_launch_type": "manual",
        "user_name": "alice", "inventory_id": 3, "project_revision": "1cc8f6c", "execution_node": "awx-ee-1"}.items()},
}


def test_a_workflow_node_launched_by_a_user() -> None:
    identity = awx_identity(WORKFLOW_NODE)
    assert identity == AwxIdentity(job_id=4711, job_launch_type="workflow", job_template_id=12, job_template_name="fleetpatch rollout",
                                   workflow_job_id=4700, workflow_job_name="fleetpatch staged rollout", workflow_job_launch_type="manual",
                                   user_name="alice", inventory_id=3, project_revision="1cc8f6c", execution_node="awx-ee-1")
    assert identity.launched_by == "alice"
    assert identity.correlation_id == "awx-workflow-4700"
    assert identity.event_data()["launched_by"] == "alice"
    assert "schedule_id" not in identity.event_data() and "slice_number" not in identity.event_data()


def test_a_scheduled_job_has_no_user_and_is_launched_by_its_schedule() -> None:
    identity = awx_identity({"awx_job_id": "81", "awx_job_launch_type": "scheduled", "awx_schedule_id": "9",
                             "awx_schedule_name": "drift nightly"})
    assert identity is not None
    assert (identity.job_id, identity.schedule_id, identity.schedule_name) == (81, 9, "drift nightly")
    assert identity.launched_by == "schedule 9"
    assert identity.correlation_id == "awx-job-81"


def test_a_workflow_a_schedule_launched_takes_the_parent_schedule() -> None:
    identity = awx_identity({"awx_job_id": 5, "awx_workflow_job_id": 4, "awx_parent_job_schedule_id": 2,
                             "awx_parent_job_schedule_name": "prestage before window", "awx_job_launch_type": "workflow"})
    assert identity is not None and identity.schedule_id == 2 and identity.schedule_name == "prestage before window"
    assert identity.launched_by == "schedule 2"


def test_tower_prefix_alone_is_enough() -> None:
    identity = awx_identity({"tower_job_id": 17, "tower_user_name": "bob"})
    assert identity is not None and identity.job_id == 17 and identity.launched_by == "bob"


def test_slices_of_one_workflow_share_one_correlation_id() -> None:
    ids = {awx_correlation_id({"awx_job_id": 100 + index, "awx_workflow_job_id": 99, "fleetpatch_slice_number": index,
                               "fleetpatch_slice_count": 3}) for index in (1, 2, 3)}
    assert ids == {"awx-workflow-99"}
    identity = awx_identity({"awx_job_id": 102, "awx_workflow_job_id": 99, "fleetpatch_slice_number": "2", "fleetpatch_slice_count": "3"})
    assert identity is not None and (identity.slice_number, identity.slice_count) == (2, 3)


def test_outside_awx_there_is_no_identity() -> None:
    assert awx_identity({}) is None
    assert awx_identity({"awx_user_name": "alice"}) is None
    assert awx_correlation_id({"rollout_preview": True}) is None


@pytest.mark.parametrize(("extra_vars", "message"), [
    ({"awx_job_id": "12; rm -rf /"}, "awx_job_id: '12; rm -rf /' is not an AWX id (a positive integer)"),
    ({"awx_job_id": 0}, "awx_job_id: '0' is not an AWX id (a positive integer)"),
    ({"awx_job_id": True}, "awx_job_id: 'True' is not an AWX id (a positive integer)"),
    ({"awx_job_id": 1, "awx_workflow_job_id": "x"}, "awx_workflow_job_id: 'x' is not an AWX id (a positive integer)"),
    ({"awx_job_id": 1, "fleetpatch_slice_number": 2}, "fleetpatch_slice_number and fleetpatch_slice_count go together"),
    ({"awx_job_id": 1, "fleetpatch_slice_number": 4, "fleetpatch_slice_count": 3}, "fleetpatch_slice_number: 4 is more than fleetpatch_slice_count 3"),
])
def test_malformed_identity_is_refused_naming_the_variable(extra_vars: dict[str, t.Any], message: str) -> None:
    with pytest.raises(AwxIdentityError, match=f"^{re.escape(message)}$"):
        awx_identity(extra_vars)
    assert awx_correlation_id(extra_vars) is None


def test_names_lose_control_characters_and_are_bounded() -> None:
    identity = awx_identity({"awx_job_id": 1, "awx_user_name": "eve\n[fake] line", "awx_job_template_name": "x" * 500})
    assert identity is not None
    assert identity.user_name == "eve [fake] line"
    assert identity.job_template_name is not None and len(identity.job_template_name) == 128


def test_the_first_play_event_names_the_awx_job(tmp_path) -> None:
    import json  # noqa: PLC0415

    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import RecorderOptions, RunRecorder  # noqa: PLC0415

    path = tmp_path / "events.jsonl"
    warnings: list[str] = []
    recorder = RunRecorder(RecorderOptions(path=str(path)), warn=warnings.append, say=lambda _line: None, environ={}, timer=False)
    recorder.playbook_start(playbook="playbooks/reconcile.yml", check_mode=False, ansible_version="2.19.14")
    extra_vars = {"awx_job_id": 102, "awx_workflow_job_id": 99, "awx_schedule_id": 7, "awx_job_launch_type": "workflow",
                  "fleetpatch_slice_number": 2, "fleetpatch_slice_count": 3}
    recorder.play_start(name="Gather", hosts=["h1"], extra_vars=extra_vars)
    recorder.play_start(name="Report", hosts=["localhost"], extra_vars=extra_vars)
    recorder.playbook_end(stats={})
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    plays = [event for event in events if event["event"] == "play.started"]
    assert plays[0]["data"]["awx"] == {"job_id": 102, "job_launch_type": "workflow", "workflow_job_id": 99, "schedule_id": 7,
                                       "slice_number": 2, "slice_count": 3, "launched_by": "schedule 7"}
    assert "awx" not in plays[1]["data"]
    assert {event["correlation_id"] for event in events} == {"awx-workflow-99"}
    assert not warnings


def test_a_malformed_awx_identity_is_a_warning_not_a_failure(tmp_path) -> None:
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import RecorderOptions, RunRecorder  # noqa: PLC0415

    warnings: list[str] = []
    recorder = RunRecorder(RecorderOptions(path=str(tmp_path / "events.jsonl")), warn=warnings.append, say=lambda _line: None, environ={},
                           timer=False)
    recorder.play_start(name="Gather", hosts=["h1"], extra_vars={"awx_job_id": 5, "fleetpatch_slice_number": 9, "fleetpatch_slice_count": 3})
    recorder.playbook_end(stats={})
    assert warnings == ["fleetpatch.rollout.events: AWX identity not recorded: fleetpatch_slice_number: 9 is more than fleetpatch_slice_count 3"]
