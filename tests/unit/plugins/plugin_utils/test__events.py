from __future__ import annotations

import json
import os
import typing as t

import jsonschema
import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _event_verify, _events
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import (
    GENESIS,
    EventLog,
    RecorderOptions,
    RunRecorder,
    line_hash,
    parse_traceparent,
    read_events,
    resolve_correlation_id,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import verify_event_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import CENSORED, MASK
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
with open(os.path.join(REPO, "docs", "events.schema.json"), encoding="utf-8") as _handle:
    SCHEMA = json.load(_handle)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
CANARY = "CANARY-7f3a9c-do-not-log"


@pytest.mark.parametrize(
    ("option", "extra_vars", "runner_dir", "expected"),
    [
        ("ops-42", {"awx_job_id": 7}, "/x/artifacts/abc", ("ops-42", "option")),
        (None, {"fleetpatch_correlation_id": "chg 1234", "awx_job_id": 7}, None, ("chg_1234", "extra_var")),
        (None, {"awx_job_id": 7}, "/x/artifacts/abc", ("awx-job-7", "awx")),
        (None, {"tower_job_id": "8"}, None, ("awx-job-8", "awx")),
        (None, {}, "/tmp/private/artifacts/5f1e-ident/", ("runner-5f1e-ident", "ansible-runner")),
    ],
)
def test_correlation_id_sources(option, extra_vars, runner_dir, expected) -> None:
    assert resolve_correlation_id(option=option, extra_vars=extra_vars, runner_dir=runner_dir) == expected


def test_correlation_id_is_generated_as_a_last_resort() -> None:
    value, source = resolve_correlation_id(option=None, extra_vars={}, runner_dir=None)
    assert source == "generated" and len(value) == 36


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_traceparent_parsing(value, parsed) -> None:
    assert parse_traceparent(value) == parsed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_recorder(path: str | None = None, *, environ: dict[str, str] | None = None, clock: Clock | None = None,
                  **options: t.Any) -> tuple[RunRecorder, list[str], list[str]]:
    warnings: list[str] = []
    said: list[str] = []
    clock = clock or Clock()
    recorder = RunRecorder(RecorderOptions(path=path, secret_vars=("deploy_blob",), **options), warn=warnings.append, say=said.append,
                           environ={} if environ is None else environ, monotonic=clock, timer=False)
    return recorder, warnings, said


def announcement(tmp_path, run_id: str = "FP-1") -> dict[str, t.Any]:
    return {
        "run_id": run_id, "patch_id": run_id, "state_dir": str(tmp_path), "events_path": str(tmp_path / "runs" / run_id / "events.jsonl"),
        "plan_group": "fleetpatch_plan_hosts",
        "waves": {"canary": {"index": 0, "hosts": 1, "batches": [0]}, "wave-1": {"index": 1, "hosts": 2, "batches": [1]}},
        "hosts": {"h1": {"wave": "canary", "batch": 0, "region": "eu", "tenant": "acme", "segment": "web", "environment": "prod"},
                  "h2": {"wave": "wave-1", "batch": 1, "region": "us", "tenant": "acme", "segment": "web", "environment": "prod"},
                  "h3": {"wave": "wave-1", "batch": 1, "region": "us", "tenant": "globex", "segment": "api", "environment": "prod"}},
    }


def gate(batch: int, wave: str, action: str = "continue") -> dict[str, t.Any]:
    return {"event": "gate.decision", "ts": "2026-01-01T00:00:00.000000Z", "wave": wave, "batch": batch, "status": action,
            "data": {"action": action, "reasons": ["fine"], "failed_hosts": [], "failures_total": 0, "budget_limit": 1,
                     "budget_spent": False, "rollback_hosts": [], "last_in_wave": True, "baked_seconds": 0}}


def simulate_rollout(recorder: RunRecorder, tmp_path, *, extra_vars: dict[str, t.Any] | None = None,
                     correlation: dict[str, str] | None = None, rollout_hosts: list[str] | None = None) -> dict[str, t.Any]:
    """The hook calls of a two-wave rollout, as the callback makes them. correlation: the attempt's correlation id
    as rollout_plan returns it (fleetpatch_correlation); rollout_hosts: the rollout play's hosts (default: the plan group)."""
    recorder.playbook_start(playbook="playbooks/rollout.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="Plan the rollout", hosts=["localhost"], extra_vars=extra_vars or {},
                        variables=[{"db": {"password": "vars-secret-value"}}], host_attributes={"h1": {"region": "eu"}})
    recorder.host_task_start(host="localhost", task_uuid="plan")
    recorder.host_task_result(host="localhost", task_uuid="plan", task="Compile", action="fleetpatch.rollout.rollout_plan", status="ok",
                              result={"changed": False, "fleetpatch_run": announcement(tmp_path), "msg": f"uses {CANARY}",
                                      **({"fleetpatch_correlation": correlation} if correlation else {}),
                                      "fleetpatch_events": [{"event": "run.started", "ts": "2026-01-01T00:00:00.000000Z", "status": "started",
                                                             "data": {"owner": "ops"}}]},
                              hook="v2_runner_on_ok")
    recorder.play_start(name="Readiness", hosts=["fleetpatch_plan_hosts"], extra_vars={})  # not serial: starts no wave
    for host in ("h1", "h2", "h3"):
        recorder.host_task_start(host=host, task_uuid="ready")
        recorder.host_task_result(host=host, task_uuid="ready", task="Ready", action="fleetpatch.rollout.ready", status="ok",
                                  result={"changed": False}, hook="v2_runner_on_ok")
    recorder.play_start(name="Roll out", hosts=rollout_hosts or ["fleetpatch_plan_hosts"], extra_vars={}, serial=True)
    for batch, (wave, hosts) in enumerate([("canary", ["h1"]), ("wave-1", ["h2", "h3"])]):
        for host in hosts:
            recorder.host_task_start(host=host, task_uuid=f"apply{batch}")
        for host in hosts:
            status = "failed" if host == "h3" else "ok"
            recorder.host_task_result(host=host, task_uuid=f"apply{batch}", task="Apply", action="fleetpatch.rollout.patch_apply",
                                      status=status, result={"changed": True, "msg": "applied", "stdout": "x" * 9000},
                                      hook=f"v2_runner_on_{'failed' if status == 'failed' else 'ok'}")
        recorder.host_task_start(host=hosts[0], task_uuid=f"gate{batch}")
        recorder.host_task_result(host=hosts[0], task_uuid=f"gate{batch}", task="Gate", action="fleetpatch.rollout.wave_gate", status="ok",
                                  result={"changed": False, "fleetpatch_events": [gate(batch, wave)]}, hook="v2_runner_on_ok")
    recorder.host_task_result(host="h2", task_uuid="skip", task="Stage", action="ansible.builtin.copy", status="skipped",
                              result={"changed": False, "skip_reason": "Conditional result was False"}, hook="v2_runner_on_skipped")
    recorder.host_task_result(host="h3", task_uuid="secret", task="Secret", action="ansible.builtin.command", status="ok",
                              result={"changed": True, "stdout": CANARY, "_ansible_no_log": True}, hook="v2_runner_on_ok")
    return recorder.playbook_end(stats={"h1": {"ok": 2}, "h3": {"failures": 1}})


def test_a_rollout_play_over_the_plan_hosts_list_starts_the_waves(tmp_path) -> None:
    """playbooks/rollout.yml's batch play names the plan's hosts (__rollout_plan_hosts, a list in plan order), not a group;
    its play.started events name the first hosts and their count, not the whole plan at every batch."""
    recorder, warnings, _said = make_recorder()
    simulate_rollout(recorder, tmp_path, rollout_hosts=["h1", "h2", "h3"])
    events = read_events(str(tmp_path / "runs" / "FP-1" / "events.jsonl"))
    names = [event["event"] for event in events]
    rollout_play = [index for index, name in enumerate(names) if name == "play.started"][2]
    assert names.index("wave.started") == rollout_play + 1 and names.count("wave.started") == 2 and not warnings
    assert events[rollout_play]["data"]["hosts"] == ["h1", "h2", "h3"] and "host_count" not in events[rollout_play]["data"]
    # a serial play over hosts that are not planned starts no wave; a long list is named by its first hosts and its count
    recorder, _warnings, _said = make_recorder()
    recorder.play_start(name="Other", hosts=[f"x{index}" for index in range(50)], extra_vars={}, serial=True)
    assert not recorder.in_plan_play
    assert recorder.pre_run[-1]["data"] == {"play": "Other", "hosts": [f"x{index}" for index in range(20)], "serial": True, "host_count": 50}


def test_a_rollout_gives_a_chained_schema_valid_log(tmp_path) -> None:
    environ: dict[str, str] = {}
    recorder, warnings, said = make_recorder(environ=environ)
    outcome = simulate_rollout(recorder, tmp_path, extra_vars={"awx_job_id": 99, "deploy_blob": CANARY, "api_token": "tok-123456"})
    path = str(tmp_path / "runs" / "FP-1" / "events.jsonl")
    assert outcome["path"] == path and outcome["complete"] and not warnings
    # the capability check only: the correlation id reaches no action through the environment
    assert _events.CORRELATION_ENV not in environ and environ[_events.ACTIVE_ENV] == str(os.getpid())
    assert any("correlation id awx-job-99 (awx)" in line for line in said)
    raw = open(path, encoding="utf-8").read()
    assert CANARY not in raw and "tok-123456" not in raw and "vars-secret-value" not in raw
    events = read_events(path)
    for event in events:
        VALIDATOR.validate(event)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    names = [event["event"] for event in events]
    assert names[:3] == ["playbook.started", "play.started", "run.started"]
    assert names.count("wave.started") == 2 and names[-1] == "playbook.finished"
    rollout_play = [index for index, name in enumerate(names) if name == "play.started"][2]
    assert names.index("wave.started") == rollout_play + 1  # the readiness play over the same hosts starts no wave
    assert {event["correlation_id"] for event in events} == {"awx-job-99"}
    assert len({event["traceparent"].split("-")[1] for event in events}) == 1
    applied = [event for event in events if event["event"] == "host.task" and event["task"] == "Apply"]
    assert [(event["host"], event["wave"], event["region"], event["status"]) for event in applied] == [
        ("h1", "canary", "eu", "ok"), ("h2", "wave-1", "us", "ok"), ("h3", "wave-1", "us", "failed")]
    assert len({event["traceparent"] for event in applied}) == 3  # a span per host task
    assert applied[0]["data"]["result"]["stdout"]["truncated"] is True
    secret = next(event for event in events if event["task"] == "Secret")
    assert secret["data"]["result"] == {"changed": True, "censored": CENSORED}
    assert next(event for event in events if event["event"] == "host.task" and event["task"] == "Compile")["message"] == f"uses {MASK}"
    assert events[-1]["data"]["hooks"] == {"v2_playbook_on_play_start": 3, "v2_playbook_on_start": 1, "v2_playbook_on_stats": 1,
                                           "v2_runner_on_failed": 1, "v2_runner_on_ok": 9, "v2_runner_on_skipped": 1, "v2_runner_on_start": 9}
    report = verify_event_file(path, anchors=[{"seq": outcome["last_seq"], "head": outcome["head"]}])
    assert report.ok and not report.findings and report.last_seq == len(events)


def test_incoming_traceparent_is_joined() -> None:
    recorder, warnings, _said = make_recorder(traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert recorder.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and recorder.parent_span == "00f067aa0ba902b7" and not warnings
    _recorder, warnings, _said = make_recorder(traceparent="nonsense")
    assert warnings == ["fleetpatch.rollout.events: ignoring invalid traceparent 'nonsense'"]


def test_nothing_is_written_without_a_run_or_a_path(tmp_path) -> None:
    recorder, _warnings, _said = make_recorder()
    recorder.playbook_start(playbook="p.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="p", hosts=["all"], extra_vars={})
    outcome = recorder.playbook_end(stats={})
    assert outcome == {"path": None, "complete": True, "lines": 0, "reason": None}
    assert not list(tmp_path.iterdir())


def test_the_log_carries_the_correlation_id_the_plan_chose_from_its_first_line(tmp_path) -> None:
    # no explicit id: rollout_plan generates the attempt's and returns it; lines queued before it carry it too
    recorder, warnings, said = make_recorder()
    outcome = simulate_rollout(recorder, tmp_path, correlation={"id": "attempt-7f3a", "source": "generated"})
    events = read_events(outcome["path"])
    assert {event["correlation_id"] for event in events} == {"attempt-7f3a"} and not warnings
    assert events[0]["event"] == "playbook.started" and outcome["correlation_id"] == "attempt-7f3a"
    assert any("correlation id attempt-7f3a (generated)" in line for line in said)


def test_without_a_run_the_log_owns_a_new_id_once_the_flush_bounds_say_so(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    recorder, _warnings, said = make_recorder(path, flush_events=3)
    recorder.playbook_start(playbook="p.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="p", hosts=["all"], extra_vars={})
    assert not os.path.exists(path)  # a run may still announce its attempt's id
    recorder.emit("custom.one")  # three queued: no longer
    events = read_events(path)
    assert [event["event"] for event in events] == ["playbook.started", "play.started", "custom.one"]
    assert len({event["correlation_id"] for event in events}) == 1 and any("(generated)" in line for line in said)


def test_path_option_with_run_id_waits_for_the_run(tmp_path) -> None:
    recorder, _warnings, _said = make_recorder(str(tmp_path / "{run_id}-{correlation_id}.jsonl"), correlation_id="cid")
    outcome = simulate_rollout(recorder, tmp_path)
    assert outcome["path"] == str(tmp_path / "FP-1-cid.jsonl")
    assert read_events(outcome["path"])[0]["event"] == "playbook.started"
    assert not os.path.exists(tmp_path / "runs")


def test_flushes_every_n_events_after_a_second_and_at_wave_boundaries(tmp_path) -> None:
    clock = Clock()
    path = str(tmp_path / "e.jsonl")
    recorder, _warnings, _said = make_recorder(path, clock=clock, flush_events=3, flush_seconds=1.0)
    recorder.playbook_start(playbook="p.yml", check_mode=False, ansible_version="2.19.0")
    # an explicit correlation id: nothing to wait for, the file opens here
    recorder.play_start(name="p", hosts=["all"], extra_vars={"fleetpatch_correlation_id": "chg-1"})

    def lines() -> int:
        return len(read_events(path))

    assert lines() == 1  # playbook.started, written when the file opened; play.started is queued
    recorder.emit("custom.one")
    assert lines() == 1
    recorder.emit("custom.two")
    assert lines() == 4  # three queued: written
    recorder.emit("custom.three")
    clock.now += 1.5
    recorder.emit("custom.four")  # the oldest queued event is older than a second
    assert lines() == 6
    recorder.emit("wave.finished", wave="canary", status="continue")
    assert lines() == 7  # a wave boundary writes at once


def test_a_failed_write_warns_keeps_the_events_and_marks_the_log_incomplete(tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    environ: dict[str, str] = {}
    recorder, warnings, _said = make_recorder(str(blocker / "events.jsonl"), environ=environ)
    outcome = simulate_rollout(recorder, tmp_path)
    assert not outcome["complete"] and "Error: [Errno" in outcome["reason"] and "21 event(s) could not be written" in outcome["reason"]
    # the run's store keeps it for registry_record (no environment channel), with the attempt's correlation id
    assert recorder.log_status is not None and recorder.log_status.startswith("incomplete: ") and "FLEETPATCH_EVENTS_STATUS" not in environ
    stored = open_store(str(tmp_path)).log_status("FP-1")
    assert stored is not None and stored["complete"] is False and stored["reason"] == recorder.log_status
    assert stored["correlation_id"] == recorder.correlation_id
    assert len([warning for warning in warnings if "cannot write" in warning]) == 1  # one warning per distinct error
    # The queue survives: once the path works, everything is written, in order, with an unbroken chain.
    blocker.unlink()
    blocker.mkdir()
    assert recorder.flush()
    events = read_events(str(blocker / "events.jsonl"))
    assert events[0]["event"] == "playbook.started" and events[-1]["event"] == "playbook.finished"
    assert verify_event_file(str(blocker / "events.jsonl")).ok


def test_a_partial_write_leaves_a_declared_torn_line(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "e.jsonl")
    log = EventLog(path, fsync=False, on_open=lambda tail, again: json.dumps({"event": "log.opened", "data": {"torn_tail": tail.torn}})
                   if tail.torn or again else None)
    for index in range(3):
        log.append(json.dumps({"event": f"e{index}"}))
    assert log.flush()
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2 + 5])
        raise OSError(28, "No space left on device")

    for index in range(3, 6):
        log.append(json.dumps({"event": f"e{index}"}))
    monkeypatch.setattr(_events.os, "write", flaky)
    assert not log.flush()
    monkeypatch.setattr(_events.os, "write", real_write)
    assert log.flush()
    report = verify_event_file(path)
    assert report.ok, report.findings
    assert [finding.kind for finding in report.findings] == ["torn_line"]
    names = [event["event"] for event in read_events(path)]
    assert names[:3] == ["e0", "e1", "e2"] and names[-1] == "e5" and "log.opened" in names


def write_log(path: str, count: int) -> list[bytes]:
    log = EventLog(path, fsync=False)
    for index in range(count):
        log.append(json.dumps({"event": "custom.line", "data": {"n": index}}, sort_keys=True, separators=(",", ":")))
    assert log.flush()
    log.close()
    with open(path, "rb") as handle:
        return handle.read().split(b"\n")[:-1]


def rewrite(path: str, lines: list[bytes], *, newline: bool = True) -> None:
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + (b"\n" if newline else b""))


def test_killed_mid_line_is_an_incomplete_tail_and_the_next_writer_declares_it(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    lines = write_log(path, 5)
    rewrite(path, lines[:4] + [lines[4][:30]], newline=False)
    report = verify_event_file(path)
    assert report.ok and report.last_seq == 4
    assert [(finding.kind, finding.where, finding.severity) for finding in report.findings] == [("incomplete_tail", "e.jsonl line 5", "warning")]
    recorder, _warnings, _said = make_recorder(path)
    recorder.playbook_start(playbook="p.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="p", hosts=["all"], extra_vars={})
    recorder.playbook_end(stats={})
    report = verify_event_file(path)
    assert report.ok and [finding.kind for finding in report.findings] == ["torn_line"]
    opened = read_events(path)[4]
    assert opened["event"] == "log.opened" and opened["seq"] == 5 and opened["data"]["continues_seq"] == 4
    assert opened["data"]["torn_tail"] == {"bytes": 30, "sha256": line_hash(lines[4][:30])}
    VALIDATOR.validate(opened)


def test_a_second_run_continues_the_chain(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    write_log(path, 3)
    recorder, _warnings, _said = make_recorder(path)
    recorder.playbook_start(playbook="p.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="p", hosts=["all"], extra_vars={})
    outcome = recorder.playbook_end(stats={})
    events = read_events(path)
    assert [event["seq"] for event in events] == list(range(1, 8))
    assert events[3]["event"] == "log.opened"
    assert events[3]["data"] == {"continues_seq": 3, "torn_tail": None, "reopened_after_error": False, "dropped_before_run": 0}
    assert outcome["first_seq"] == 4 and outcome["last_seq"] == 7
    assert verify_event_file(path).findings == []


def swap(lines: list[bytes], first: int, second: int) -> list[bytes]:
    lines = list(lines)
    lines[first], lines[second] = lines[second], lines[first]
    return lines


@pytest.mark.parametrize(
    ("tamper", "kind", "where"),
    [
        (lambda lines: lines[:3] + [lines[3].replace(b'"n":3', b'"n":33')] + lines[4:], "edited", "e.jsonl line 4 (seq 4)"),
        (lambda lines: lines[:3] + lines[4:], "deleted", "e.jsonl line 4 (seq 5)"),
        (lambda lines: lines[:3] + lines[6:], "deleted", "e.jsonl line 4 (seq 7)"),
        (lambda lines: swap(lines, 3, 4), "reordered", "e.jsonl line 4 (seq 5)"),
        (lambda lines: lines[:4] + [lines[3]] + lines[4:], "duplicated", "e.jsonl line 5 (seq 4)"),
        (lambda lines: lines[:2] + [b'{"not": "an event"}'] + lines[2:], "corrupt", "e.jsonl line 3"),
        (lambda lines: lines[1:], "deleted", "e.jsonl line 1 (seq 2)"),
    ],
)
def test_tampering_is_found_and_placed(tmp_path, tamper, kind: str, where: str) -> None:
    path = str(tmp_path / "e.jsonl")
    rewrite(path, tamper(write_log(path, 8)))
    report = verify_event_file(path)
    assert not report.ok
    assert (kind, where) in [(finding.kind, finding.where) for finding in report.findings], report.findings


def test_anchors_catch_truncation_and_a_rewritten_chain(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    lines = write_log(path, 8)
    anchor = {"seq": 8, "head": line_hash(lines[7]), "where": "registry record #3"}
    assert verify_event_file(path, anchors=[anchor]).findings == []
    rewrite(path, lines[:6])
    report = verify_event_file(path, anchors=[anchor])
    assert [(finding.kind, finding.where) for finding in report.findings] == [("truncated", "e.jsonl after seq 6")]
    assert "registry record #3 recorded line seq 8" in report.findings[0].message
    # An edit whose chain was recomputed to the end looks intact, except against the anchor.
    os.unlink(path)
    forged = EventLog(path, fsync=False)
    for index in range(8):
        forged.append(json.dumps({"data": {"n": 99 if index == 2 else index}, "event": "custom.line"}, separators=(",", ":")))
    forged.flush()
    report = verify_event_file(path, anchors=[anchor])
    assert [(finding.kind, finding.where) for finding in report.findings] == [("edited", "e.jsonl seq 8")]


def test_the_fast_path_and_the_slow_path_agree_on_a_clean_file(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    lines = write_log(path, 50)
    fast = verify_event_file(path)
    slow = _event_verify._verify_slow(path, _event_verify.FileReport(path), "e.jsonl", True, [])  # pylint: disable=protected-access
    assert (fast.lines, fast.last_seq, fast.head, fast.findings) == (50, 50, line_hash(lines[-1]), [])
    assert (slow.last_seq, slow.head, slow.findings) == (50, fast.head, [])
    assert lines[0].startswith(b'{"prev":"' + GENESIS.encode() + b'","seq":1,')


def first_and_last_line(path: str, start: int, end: int) -> tuple[bytes, bytes, int]:
    with open(path, "rb") as handle:
        handle.seek(start)
        lines = handle.read(end - start).splitlines()
    return lines[0], lines[-1], len(lines)


def test_scan_ranges_cuts_on_line_boundaries_and_returns_results_in_file_order(tmp_path) -> None:
    path = str(tmp_path / "e.jsonl")
    lines = write_log(path, 30)
    ranges, results = _event_verify.scan_ranges(path, first_and_last_line, workers=3)
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == os.path.getsize(path)
    assert all(end == next_start for (_start, end), (next_start, _end) in zip(ranges, ranges[1:]))
    assert [first for first, _last, _count in results][0] == lines[0] and results[-1][1] == lines[-1]
    assert sum(count for _first, _last, count in results) == 30
    assert [line for first, last, _count in results for line in (first, last)] == sorted(
        [line for first, last, _count in results for line in (first, last)], key=lines.index)
    assert _event_verify.scan_ranges(path, first_and_last_line) == ([(0, os.path.getsize(path))], [(lines[0], lines[-1], 30)])


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_ranges_checked_in_parallel_agree_with_one_pass(tmp_path, workers: int) -> None:
    path = str(tmp_path / "e.jsonl")
    lines = write_log(path, 40)
    anchors = [{"seq": 17, "head": line_hash(lines[16])}, {"seq": 40, "head": line_hash(lines[39])}]
    parallel = verify_event_file(path, anchors=anchors, workers=workers)
    assert (parallel.lines, parallel.last_seq, parallel.head, parallel.findings) == (40, 40, line_hash(lines[39]), [])
    wrong = verify_event_file(path, anchors=[{"seq": 17, "head": "0" * 64, "where": "registry record #9"}], workers=workers)
    assert [(finding.kind, finding.where) for finding in wrong.findings] == [("edited", "e.jsonl seq 17")]
    wrong_seal = verify_event_file(path, anchors=[{"seq": 40, "head": "0" * 64, "where": "registry record #9"}], workers=workers)
    assert [(finding.kind, finding.where) for finding in wrong_seal.findings] == [("edited", "e.jsonl seq 40")]
    rewrite(path, lines[:20] + lines[21:])
    assert [(finding.kind, finding.where) for finding in verify_event_file(path, workers=workers).findings] == [
        ("deleted", "e.jsonl line 21 (seq 22)")]
