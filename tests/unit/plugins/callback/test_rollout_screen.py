"""fleetpatch.rollout.rollout_screen and its lines (_screen): what a person sees for each batch and at the end of a run."""

from __future__ import annotations

import shlex
import types
import typing as t

import pytest
from ansible.plugins.loader import callback_loader

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _screen
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._gate import HostVerdict, decide

PLAN = {
    "batches": [{"hosts": ["c1"]}, {"hosts": ["a1", "a2"]}, {"hosts": ["b1", "b2"]}],
    "waves": [{"name": "canary", "hosts": ["c1"]}, {"name": "wave-1", "hosts": ["a1", "a2", "b1", "b2"]}],
    "error_budget": {"limit": 1, "halt_when": "exceeded"},
    "policy": {"checks": [{"name": "journey", "kind": "http", "max_error_rate": 0.1, "latency_ms": {}},
                          {"name": "latency", "kind": "http", "max_error_rate": 0, "latency_ms": {"p95": 400}}]},
}
PATCH = {"service": "myapp", "target_version": "1.0.1", "artifact": {"sha256": "ab" * 32}}


def result(host: str, *, journey: float = 0.0, p95: float = 12.5, failed: bool = False) -> list[dict[str, t.Any]]:
    """Check results of one host as wave_gate returns them (compact)."""
    return [
        {"check": "journey", "host": host, "status": "pass" if journey <= 0.1 else "fail",
         "conditions": [{"name": "error_rate", "op": "<=", "measured": journey, "threshold": 0.1, "status": "pass" if journey <= 0.1 else "fail"}]},
        {"check": "latency", "host": host, "status": "fail" if failed else "pass",
         "conditions": [{"name": "error_rate", "op": "<=", "measured": 0.0, "threshold": 0, "status": "pass"},
                        {"name": "latency_ms.p95", "op": "<=", "measured": p95, "threshold": 400, "status": "fail" if failed else "pass"}]},
    ]


def gate(batch: int, wave: str, *, action: str = "continue", **decision: t.Any) -> dict[str, t.Any]:
    hosts = PLAN["batches"][batch]["hosts"]
    bad = decision.get("failed_hosts", ())
    checks = [item for host in hosts for item in result(host, p95=1024.9 if host in bad else 12.5 + batch, failed=host in bad)]
    return {"batch": batch, "wave": wave, "action": action, "stop": action != "continue", "health": {host: {"ok": True} for host in hosts},
            "checks": {"results": checks}, "baked_seconds": 1.003 if batch == 0 else 0, "rollback_hosts": decision.pop("rollback_hosts", []),
            "decision": {"action": action, "failures_total": 0, "failed_hosts": [], "reasons": [], "trigger": "", **decision}}


def test_a_batch_line_has_wave_batch_counts_health_gates_and_budget() -> None:
    lines = _screen.batch_line(gate(0, "canary"), plan=PLAN)
    assert lines == ["canary  batch 0/2  patched 1/1 failed 0 quarantined 0 | health 1/1 | journey error_rate 0 <= 0.1"
                     " | latency p95 12 ms <= 400 ms | budget left 1/1 | continue, baked 1 s"]


def test_a_stopping_gate_says_why_names_the_failed_hosts_and_what_it_rolls_back() -> None:
    reasons = ["a2: unhealthy: check latency on a2: fail: latency_ms.p95 1024.9 > 400", "error budget: 1 failed host(s)"]
    lines = _screen.batch_line(gate(1, "wave-1", action="rollback_wave", failures_total=1, failed_hosts=["a2"], reasons=reasons,
                                    trigger="response rollback_wave of wave-1 to 1 host(s) with check latency failed (latency_ms.p95): a2",
                                    rollback_hosts=["a1", "a2"]), plan=PLAN)
    assert lines[0].startswith("wave-1  batch 1/2  patched 1/2 failed 1 quarantined 0 | health 2/2 | journey error_rate 0 <= 0.1")
    assert "latency p95 1025 ms <= 400 ms FAIL (1 host(s))" in lines[0]
    assert lines[0].endswith("| budget left 0/1 | rollback_wave")
    assert lines[1:] == ["  why: response rollback_wave of wave-1 to 1 host(s) with check latency failed (latency_ms.p95): a2",
                         "  a2: unhealthy: check latency on a2: fail: latency_ms.p95 1024.9 > 400",
                         "  rolling back 2 host(s): a1, a2"]


def test_check_summaries_show_the_worst_value_and_hide_only_passing_side_conditions() -> None:
    checks = {"results": result("h1", p95=20) + result("h2", journey=0.5, p95=80)}
    # the latency check's error_rate <= 0 is not what it is there for: shown only when it fails
    assert _screen.check_summaries(checks, specs=PLAN["policy"]["checks"]) == [
        "journey error_rate 0.5 <= 0.1 FAIL (1 host(s))", "latency p95 80 ms <= 400 ms"]
    # without the specs every condition shows
    assert "latency error_rate 0 <= 0" in _screen.check_summaries(checks)
    assert _screen.check_summaries(None) == []


@pytest.mark.parametrize(("failures", "limit", "halt_when", "left"), [
    (0, 1, "exceeded", 1), (1, 1, "exceeded", 0), (2, 1, "exceeded", 0), (0, 2, "reached", 1), (0, 0, "reached", 0)])
def test_budget_left_is_the_failures_the_run_still_takes(failures: int, limit: int, halt_when: str, left: int) -> None:
    assert _screen.budget_left(failures=failures, limit=limit, halt_when=halt_when) == left


def summary(hosts: dict[str, dict[str, t.Any]], status: str, **extra: t.Any) -> dict[str, t.Any]:
    counts: dict[str, int] = {}
    for entry in hosts.values():
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    untouched = [host for wave in PLAN["waves"] for host in wave["hosts"] if host not in hosts]
    return {"status": status, "hosts": hosts, "counts": dict(counts, untouched=len(untouched)), "fleet_size": 5,
            "failures": extra.pop("failures", []), "error_budget": PLAN["error_budget"], **extra}


def test_the_final_table_has_a_row_per_wave_and_the_next_commands() -> None:
    hosts = {"c1": {"outcome": "patched"}, "a1": {"outcome": "rolled_back"}, "a2": {"outcome": "rolled_back", "cause": "unhealthy"}}
    finish = {"status": "rolled_back", "paths": {"run_dir": "/state/runs/FP-1"},
              "summary": summary(hosts, "rolled_back", failures=["a2"],
                                 halted={"wave": "wave-1", "batch": 1, "action": "rollback_wave", "trigger": "response rollback_wave of wave-1 to ..."})}
    lines = _screen.finish_lines(plan=PLAN, finish=finish, patch=PATCH, resume="bin/demo run", report="bin/demo report", inventory="fleet.yml")
    assert lines[1] == "status: rolled_back: 1 of 5 host(s) patched, 1 failed, 2 rolled back, 2 untouched; error budget 0 left"
    assert lines[2] == "stopped at wave-1 batch 1: response rollback_wave of wave-1 to ..."
    table = lines[3:6]
    assert table[0].split() == ["wave", "hosts", "patched", "failed", "quarant.", "rolled", "back", "untouched", "gate", "next"]
    assert table[1].split() == ["canary", "1", "1", "0", "0", "0", "0", "continue", "report"]
    # a2 failed and was rolled back: it counts in both columns, as in the status line
    assert table[2].split() == ["wave-1", "4", "0", "1", "0", "2", "2", "rollback_wave", "resume"]
    assert lines[6:] == ["next:", "  resume:   bin/demo run   (the same command: the run continues where it stopped)",
                         "  report:   bin/demo report", "files: /state/runs/FP-1/ (plan.json, events.jsonl, summary.json)"]


def test_a_held_run_offers_the_rollback_of_what_it_patched() -> None:
    hosts = {"c1": {"outcome": "patched"}, "a1": {"outcome": "patched"}, "a2": {"outcome": "unhealthy"}}
    finish = {"status": "held", "summary": summary(hosts, "held", failures=["a2"], halted={"wave": "wave-1", "action": "hold"})}
    lines = _screen.finish_lines(plan=PLAN, finish=finish, patch=PATCH, resume="again", report="report", inventory="fleet.yml")
    rollback = [line for line in lines if line.startswith("  rollback: ")]
    assert len(rollback) == 1
    argv = shlex.split(rollback[0][len("  rollback: "):])
    assert argv[:6] == ["ansible", "-i", "fleet.yml", "a1:a2:c1", "-m", "fleetpatch.rollout.patch_apply"]
    assert '"state": "rollback"' in argv[7] and f'"sha256": "{"ab" * 32}"' in argv[7] and '"version": "1.0.1"' in argv[7]
    assert any(line.startswith("  resume:   again") for line in lines)
    assert lines[4].split()[-3:] == ["rollback", "or", "resume"]  # wave-1: a failed host to roll back, hosts not started


def test_the_plan_lines_are_a_headline_the_waves_and_the_gates_or_the_whole_plan_in_preview() -> None:
    plan_result = {"plan_text": "plan FP-1: 5 hosts, 2 waves\nwave batch group hosts\ncanary 0 g c1\n", "plan": PLAN}
    assert _screen.plan_lines(plan_result, preview=False) == [
        "plan FP-1: 5 hosts, 2 waves", "waves: canary 1 host(s), wave-1 4 host(s)",
        "gates: health, journey (error_rate <= 0.1), latency (p95 <= 400 ms)"]
    previewed = _screen.plan_lines(plan_result, preview=True)
    assert previewed[:3] == ["plan FP-1: 5 hosts, 2 waves", "wave batch group hosts", "canary 0 g c1"]
    assert previewed[-1] == "preview: nothing was touched, nothing was written"


def test_a_rollback_caused_by_a_check_names_the_check_not_the_error_budget() -> None:
    verdicts = [HostVerdict("h1", "unhealthy", "check latency on h1: fail: latency_ms.p95 1024.9 > 400 (5 samples)"),
                HostVerdict("h2", "unhealthy", "check latency on h2: fail: latency_ms.p95 1017.2 > 400"), HostVerdict("h3", "patched")]
    decision = decide(verdicts=verdicts, failures_total=2, budget_limit=1, halt_when="exceeded", response="rollback_wave", wave_name="wave-3")
    assert decision.action == "rollback_wave" and decision.budget_spent
    assert decision.trigger == ("response rollback_wave of wave-3 to 2 host(s) with check latency failed (latency_ms.p95): h1, h2;"
                                " error budget spent too (2 of limit 1)")
    within = decide(verdicts=verdicts[:1], failures_total=1, budget_limit=1, halt_when="exceeded", response="rollback_wave", wave_name="wave-3")
    assert within.trigger == "response rollback_wave of wave-3 to 1 host(s) with check latency failed (latency_ms.p95): h1"
    assert "budget" not in within.trigger


# -- the callback -----------------------------------------------------------------------------------------------------


class Screen:
    """The callback with its display captured."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, verbosity: int = 0) -> None:
        self.plugin = callback_loader.get("fleetpatch.rollout.rollout_screen")
        assert self.plugin is not None
        self.plugin.set_options(direct={"resume_command": "bin/demo run", "report_command": "bin/demo report"})
        self.lines: list[str] = []
        display = self.plugin._display
        monkeypatch.setattr(display, "verbosity", verbosity)
        monkeypatch.setattr(display, "display", lambda msg, *args, **kwargs: self.lines.extend(str(msg).splitlines() or [""]))


def task(action: str, name: str = "a task", *, role: str = "", parent: t.Any = None) -> t.Any:
    role_object = types.SimpleNamespace(get_name=lambda: role) if role else None
    return types.SimpleNamespace(action=action, get_name=lambda: name, _role=role_object, _parent=parent, ignore_unreachable=False,
                                 _uuid=f"uuid-{name}", loop=None, check_mode=False, no_log=False, delegate_to=None, args={})


def outcome(action: str, data: dict[str, t.Any], *, host: str = "localhost", **kwargs: t.Any) -> t.Any:
    return types.SimpleNamespace(task=task(action, **kwargs), result=dict(data), host=types.SimpleNamespace(get_name=lambda: host))


def test_the_callback_prints_plan_batches_and_the_table_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Screen(monkeypatch)
    plugin = screen.plugin
    plugin.v2_playbook_on_play_start(types.SimpleNamespace(get_name=lambda: "Plan", hosts=["localhost"]))
    plugin.v2_playbook_on_task_start(task("fleetpatch.rollout.rollout_plan"), False)
    plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.rollout_plan", {"plan_text": "plan FP-1: 5 hosts", "plan": PLAN, "patch": PATCH}))
    plugin.v2_runner_on_skipped(outcome("ansible.builtin.copy", {"skipped": True}))
    plugin.v2_runner_on_ok(outcome("ansible.builtin.debug", {"msg": ["the plan table"]}, role="fleetpatch.rollout.rollout"))
    plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.patch_apply", {"changed": True}, host="c1"))
    plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.wave_gate", gate(0, "canary")))
    # the apply step's failure is the gate's to report; so is a rescued one
    plugin.v2_runner_on_failed(outcome("fleetpatch.rollout.patch_apply", {"msg": "boom"}, host="a1"))
    hosts = {host: {"outcome": "patched"} for wave in PLAN["waves"] for host in wave["hosts"]}
    plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.rollout_finish", {"status": "rolled_out", "summary": summary(hosts, "rolled_out")}))
    plugin.v2_playbook_on_stats(types.SimpleNamespace(processed={}, summarize=lambda host: {}))
    assert screen.lines[:3] == ["plan FP-1: 5 hosts", "waves: canary 1 host(s), wave-1 4 host(s)",
                                "gates: health, journey (error_rate <= 0.1), latency (p95 <= 400 ms)"]
    assert screen.lines[3].startswith("canary  batch 0/2  patched 1/1")
    assert screen.lines[4:6] == ["", "status: rolled_out: 5 of 5 host(s) patched, 0 failed, 0 rolled back, 0 untouched; error budget 1 left"]
    assert screen.lines[-2:] == ["next:", "  report:   bin/demo report"]
    assert not [line for line in screen.lines if "skipping" in line or "TASK [" in line or "boom" in line or "plan table" in line]


def test_failures_are_printed_once_unless_a_block_rescues_them(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Screen(monkeypatch)
    failing = task("fleetpatch.rollout.rollout_plan", "Plan")
    block = types.SimpleNamespace(block=[failing], rescue=[task("ansible.builtin.fail", "Stop")], always=[], _parent=None)
    failing._parent = block
    localhost = types.SimpleNamespace(get_name=lambda: "localhost")
    screen.plugin.v2_runner_on_failed(types.SimpleNamespace(task=failing, result={"msg": "bad policy"}, host=localhost))
    assert screen.lines == []
    screen.plugin.v2_runner_on_failed(outcome("ansible.builtin.fail", {"msg": "bad\n  policy", "exception": "Traceback ..."}, name="Stop", parent=block))
    assert screen.lines == ["FAILED Stop on localhost: bad policy"]


def test_other_playbooks_get_their_messages_and_a_one_line_recap(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Screen(monkeypatch)
    screen.plugin.v2_runner_on_ok(outcome("ansible.builtin.debug", {"msg": ["inventory: x", "origin: y"]}))
    # a report's action result is not repeated: its playbook's debug task prints it
    screen.plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.drift_report", {"msg": "drift found: 2 missing_patch"}, name="Report"))
    screen.plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.prestage_report", {"msg": "eu-west 100%"}, role="fleetpatch.rollout.rollout"))
    stats = {"h1": {"failures": 0, "unreachable": 0, "changed": 1}, "h2": {"failures": 1, "unreachable": 0, "changed": 0}}
    screen.plugin.v2_playbook_on_stats(types.SimpleNamespace(processed=stats, summarize=stats.__getitem__))
    assert screen.lines == ["  inventory: x", "  origin: y", "readiness: eu-west 100%", "done: 2 host(s), 1 changed, 1 failed: h2"]


def test_verbose_delegates_to_the_default_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Screen(monkeypatch, verbosity=1)
    seen: list[str] = []
    default = type(screen.plugin).__mro__[1]
    monkeypatch.setattr(default, "v2_playbook_on_task_start", lambda self, task, is_conditional: seen.append("task"))
    monkeypatch.setattr(default, "v2_runner_on_skipped", lambda self, result: seen.append("skipped"))
    monkeypatch.setattr(default, "v2_runner_on_ok", lambda self, result: seen.append("ok"))
    screen.plugin.v2_playbook_on_task_start(task("ansible.builtin.copy"), False)
    screen.plugin.v2_runner_on_skipped(outcome("ansible.builtin.copy", {"skipped": True}))
    screen.plugin.v2_runner_on_ok(outcome("fleetpatch.rollout.wave_gate", gate(0, "canary")))
    assert seen == ["task", "skipped", "ok"]
    assert screen.lines == []
