"""The run is handed over by its id: what one action writes to the run, the next sees from the store (never from the
plan result the play templates), and one correlation id per attempt in the run, its events and its registry rows."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import typing as t

from conftest import MANIFEST, plan_args, run_action, run_args, stored_run

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import RecorderOptions, RunRecorder, read_events

READY = {"ready": True, "staged": {"kind": "full"}, "bytes_by_source": {"origin": 100}}


def play_batch(fleet: dict[str, t.Any], planned: dict[str, t.Any], index: int, **hostvars: dict[str, t.Any]) -> dict[str, t.Any]:
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    for host, extra in hostvars.items():
        task_vars["hostvars"][host].update(extra)
    task_vars["ansible_play_batch"] = planned["plan"]["batches"][index]["hosts"]
    return task_vars


def stored(planned: dict[str, t.Any]) -> dict[str, t.Any]:
    return stored_run(planned)


def registry_rows(state_dir: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(os.path.join(state_dir, "registry.sqlite3")) as db:
        return list(db.execute("SELECT kind, run_id, correlation_id FROM records ORDER BY seq"))


def test_an_action_given_the_run_id_sees_the_skip_list_another_action_wrote(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    canary = planned["plan"]["batches"][0]["hosts"][0]
    # the readiness gate keeps the canary out: it writes that to the run, not to a variable of the play
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    for host in planned["host_order"]:
        task_vars["hostvars"][host]["__prestage_result"] = {"ready": False, "reason": "disk full"} if host == canary else READY
    readiness = run_action("prestage_report", {"hosts": planned["host_order"], "patch": copy.deepcopy(MANIFEST), "run": planned}, task_vars)
    assert readiness["skip_hosts"] == [canary]
    assert stored(planned)["attempts"][-1]["skip_hosts"] == [canary]

    # the plan result the play holds never changed (its skip_hosts is the plan's own), yet the window hands the run's list on
    assert planned["skip_hosts"] == []
    window = run_action("change_window", {**run_args(planned), "clock": "2026-03-11T05:00:00Z"}, play_batch(fleet, planned, 0))
    assert not window.get("failed"), window.get("msg")
    assert window["skip_hosts"] == [canary]

    # the gate, given only the run id, leaves the skipped canary alone: no result is no failure for a host it skips
    gate = run_action("wave_gate", {**run_args(planned), "bake_seconds": 0}, play_batch(fleet, planned, 0))
    assert not gate.get("failed"), gate.get("msg")
    assert gate["action"] == "continue" and stored(planned)["hosts"][canary]["outcome"] == "not_staged"


def test_run_state_comes_from_the_store_not_from_the_plan_result(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    canary = planned["plan"]["batches"][0]["hosts"][0]
    # a plan result that claims a skip list the run does not have changes nothing
    tampered = dict(planned, skip_hosts=[canary])
    window = run_action("change_window", {**run_args(tampered), "clock": "2026-03-11T05:00:00Z"}, play_batch(fleet, planned, 0))
    assert window["skip_hosts"] == []
    # the gate halts the run in the store; finish, given the same (unchanged) plan result, finishes a halted run
    halted = run_action("wave_gate", {**run_args(planned), "bake_seconds": 0},
                        play_batch(fleet, planned, 0, **{canary: {"__rollout_apply": {"failed": True, "msg": "disk full"}}}))
    assert halted["action"] == "halt"
    finish = run_action("rollout_finish", run_args(planned), fleet["task_vars"])
    assert finish["status"] == "halted" and finish["summary"]["failures"] == [canary]


def test_an_unknown_run_id_is_refused(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    other = dict(planned, run_id="FP-NEVER-PLANNED")
    result = run_action("change_window", {**run_args(other), "clock": "2026-03-11T05:00:00Z"}, play_batch(fleet, planned, 0))
    assert result["failed"] and result["msg"].startswith("run FP-NEVER-PLANNED is not in the embedded run store under ")
    mismatched = run_action("wave_gate", {"run_id": "FP-OTHER", "plan": planned}, play_batch(fleet, planned, 0))
    assert mismatched["failed"] and mismatched["msg"] == "run_id 'FP-OTHER' is not the run of the given plan ('FP-UNIT-1')"


def test_check_mode_works_without_a_stored_run(fleet: dict[str, t.Any], no_event_log: None) -> None:
    checked = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"], check_mode=True)
    assert not checked.get("failed"), checked.get("msg")
    canary = checked["plan"]["batches"][0]["hosts"][0]
    # check mode stores nothing: the readiness gate's skip list reaches the dry run through its registered result
    readiness = {"__rollout_readiness": {"skip_hosts": [canary]}}
    task_vars = play_batch(fleet, checked, 0, **{host: readiness for host in checked["host_order"]})
    window = run_action("change_window", {**run_args(checked), "clock": "2026-03-11T05:00:00Z"}, task_vars, check_mode=True)
    assert not window.get("failed"), window.get("msg")
    assert window["skip_hosts"] == [canary] and window["check_mode"] is True
    gate = run_action("wave_gate", {**run_args(checked), "bake_seconds": 0}, task_vars, check_mode=True)
    assert gate["action"] == "continue" and gate["check_mode"] is True
    finish = run_action("rollout_finish", run_args(checked), fleet["task_vars"], check_mode=True)
    assert finish["status"] == "preview"
    assert not os.path.exists(fleet["state_dir"]) or not os.listdir(fleet["state_dir"])


def test_events_and_registry_rows_of_an_attempt_share_its_correlation_id(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    # no explicit id anywhere (no_event_log clears FLEETPATCH_CORRELATION_ID): rollout_plan generated the attempt's
    correlation_id = planned["correlation_id"]
    assert correlation_id and planned["fleetpatch_correlation"] == {"id": correlation_id, "source": "generated"}
    assert planned["fleetpatch_run"]["correlation_id"] == correlation_id
    assert stored(planned)["attempts"][-1]["correlation_id"] == correlation_id

    # the callback's recorder learns it from the plan result, like the run dir: every line carries it
    recorder = RunRecorder(RecorderOptions(fsync=False), warn=lambda _text: None, say=lambda _text: None, environ={}, timer=False)
    recorder.playbook_start(playbook="playbooks/rollout.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="Plan the rollout", hosts=["localhost"], extra_vars={})
    recorder.host_task_result(host="localhost", task_uuid="plan", task="Plan", action="fleetpatch.rollout.rollout_plan", status="ok",
                              result=planned, hook="v2_runner_on_ok")
    recorded = run_action("registry_record", {"event": "plan", **run_args(planned), "secret_vars": []}, fleet["task_vars"])
    recorder.host_task_result(host="localhost", task_uuid="registry", task="Record", action="fleetpatch.rollout.registry_record",
                              status="ok", result=recorded, hook="v2_runner_on_ok")
    run_action("rollout_finish", run_args(planned), fleet["task_vars"])
    run_action("registry_record", {"event": "finish", **run_args(planned), "secret_vars": [], "finish": {"status": "interrupted"}},
               fleet["task_vars"])
    outcome = recorder.playbook_end(stats={})
    events = read_events(outcome["path"])
    assert outcome["path"] == planned["events_path"] and len(events) >= 5
    assert {event["correlation_id"] for event in events} == {correlation_id}
    rows = registry_rows(fleet["state_dir"])
    assert [kind for kind, _run, _cid in rows] == ["patch.registered", "run.started", "run.finished"]
    assert {cid for _kind, _run, cid in rows} == {correlation_id}

    # a second attempt (a re-run) has its own id, in its attempt and in its rows
    again = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert again["resumed"] is True and again["correlation_id"] != correlation_id
    run_action("registry_record", {"event": "plan", **run_args(again), "secret_vars": []}, fleet["task_vars"])
    assert stored(again)["attempts"][-1]["correlation_id"] == again["correlation_id"]
    assert registry_rows(fleet["state_dir"])[-1] == ("run.started", again["run_id"], again["correlation_id"])


def test_an_explicit_correlation_id_is_the_attempts(fleet: dict[str, t.Any], no_event_log: None) -> None:
    task_vars = dict(fleet["task_vars"], awx_job_id=4242)
    planned = run_action("rollout_plan", plan_args(fleet["state_dir"]), task_vars)
    assert planned["fleetpatch_correlation"] == {"id": "awx-job-4242", "source": "awx"}
    assert stored(planned)["attempts"][-1]["correlation_id"] == "awx-job-4242"
