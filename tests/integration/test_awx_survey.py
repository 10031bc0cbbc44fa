"""Survey-proof variables: every playbook run through ansible-runner with extra variables exactly as an AWX survey sends
them (every answer a string) ends as the typed run does, and a bad answer fails before any host is touched. Also
playbooks/reconcile.yml under an AWX slice's --limit, without ",localhost"."""

from __future__ import annotations

import json
import os
import typing as t

import pytest

from .rollout_harness import REPO_ROOT, DemoFleet, RunResult, run_playbook, tree_snapshot

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 1}
POLICY = {"canary": {"size": 1}, "waves": ["50%", "100%"], "error_budget": 1}
RUN_ID = "FP-DEMO-myapp-1.0.1"
HOST_MODULES = {f"fleetpatch.rollout.{name}" for name in ("patch_apply", "prestage", "patch_facts", "command_checks")} | {"ansible.builtin.copy"}

# every boolean and number variable of the rollout, as typed YAML would give it and as an AWX survey sends it
ROLLOUT_TYPED = {"rollout_preview": False, "rollout_break_lock": False, "rollout_lock_ttl": 1800, "rollout_retry_quarantined": False,
                 "rollout_replan": False, "rollout_health_timeout": 5.0, "rollout_fail_on_halt": True, "rollout_fail_on_wait": True,
                 "rollout_registry": True, "rollout_require_approval": False}
ROLLOUT_SURVEY = {"rollout_preview": "false", "rollout_break_lock": "no", "rollout_lock_ttl": "1800", "rollout_retry_quarantined": "0",
                  "rollout_replan": "false", "rollout_health_timeout": "5", "rollout_fail_on_halt": "yes", "rollout_fail_on_wait": "1",
                  "rollout_registry": "true", "rollout_require_approval": "no"}
PRESTAGE_TYPED = {"prestage_fail_on_error": True, "prestage_origin_fallback": True, "prestage_throughput_window": 10.0, "prestage_timeout": 30.0,
                  "prestage_retries": 3, "prestage_backoff": 1.0, "prestage_backoff_max": 30.0, "prestage_min_throughput": 0,
                  "prestage_max_time": 0.0, "prestage_keep": 3, "prestage_edge_port": 8080, "prestage_fail_below": 100, "prestage_registry": True}
PRESTAGE_SURVEY = {"prestage_fail_on_error": "true", "prestage_origin_fallback": "yes", "prestage_throughput_window": "10",
                   "prestage_timeout": "30", "prestage_retries": "3", "prestage_backoff": "1.0", "prestage_backoff_max": "30",
                   "prestage_min_throughput": "0", "prestage_max_time": "0", "prestage_keep": "3", "prestage_edge_port": "8080",
                   "prestage_fail_below": "100%", "prestage_registry": "true"}
RECONCILE_TYPED = {"reconcile_gather": True, "reconcile_registry": True, "reconcile_report": True, "reconcile_fail_on_drift": False,
                   "reconcile_html_max_rows": 2000}
RECONCILE_SURVEY = {"reconcile_gather": "true", "reconcile_registry": "yes", "reconcile_report": "1", "reconcile_fail_on_drift": "false",
                    "reconcile_html_max_rows": "2000"}


def survey_answers_are_strings(answers: dict[str, t.Any]) -> None:
    assert all(isinstance(value, str) for value in answers.values())


def prestage(fleet: DemoFleet, **extra: t.Any) -> RunResult:
    extravars = {"prestage_patch_manifest": fleet.manifest(), "prestage_state_dir": fleet.state_dir,
                 "prestage_allowed_signers_file": fleet.allowed_signers, **extra}
    return run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars)


def reconcile(fleet: DemoFleet, report_dir: str, *, cmdline: str | None = None, **extra: t.Any) -> RunResult:
    extravars = {"reconcile_state_dir": fleet.state_dir, "reconcile_report_dir": report_dir,
                 "reconcile_desired": {"environments": {"prod": {"myapp": "1.0.1"}}}, **extra}
    return run_playbook("reconcile.yml", inventory=fleet.inventory, extravars=extravars, cmdline=cmdline)


def report(report_dir: str) -> dict[str, t.Any]:
    with open(os.path.join(report_dir, "drift-report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def roots(fleet: DemoFleet) -> list[str]:
    return [fleet.host_root(host) for host in fleet.inventory_hosts()]


def failure_messages(result: RunResult) -> str:
    return " ".join(str(event["event_data"].get("res", {}).get("msg", "")) for event in result.events if event.get("event") == "runner_on_failed")


def answered(survey: dict[str, str], name: str, answer: str) -> dict[str, str]:
    """The survey's answers with one of them changed."""
    answers = dict(survey)
    answers[name] = answer
    return answers


def test_bad_survey_answers_fail_before_any_host_is_touched(make_fleet, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    before = tree_snapshot(*roots(fleet))
    cases = [
        (lambda: fleet.rollout(policy=POLICY, **answered(ROLLOUT_SURVEY, "rollout_preview", "maybe")), "rollout_preview"),
        (lambda: fleet.rollout(policy=POLICY, **answered(ROLLOUT_SURVEY, "rollout_lock_ttl", "25x")), "rollout_lock_ttl"),
        (lambda: fleet.rollout(policy=POLICY, **answered(ROLLOUT_SURVEY, "rollout_health_timeout", "5s")), "rollout_health_timeout"),
        (lambda: prestage(fleet, **answered(PRESTAGE_SURVEY, "prestage_fail_below", "25x")), "prestage_fail_below: '25x' is not a number or a percentage"),
        (lambda: prestage(fleet, **answered(PRESTAGE_SURVEY, "prestage_fail_on_error", "maybe")), "prestage_fail_on_error"),
        (lambda: reconcile(fleet, str(tmp_path / "r"), **answered(RECONCILE_SURVEY, "reconcile_fail_on_drift", "maybe")),
         "reconcile_fail_on_drift: 'maybe' is not a boolean"),
        (lambda: reconcile(fleet, str(tmp_path / "r"), **answered(RECONCILE_SURVEY, "reconcile_html_max_rows", "25x")),
         "reconcile_html_max_rows: '25x' is not an integer"),
    ]
    for run, named in cases:
        result = run()
        assert result.status == "failed", (named, result.stdout[-2000:])
        assert named in failure_messages(result), (named, failure_messages(result)[-2000:])
        # nothing ran on a host: no host-side module started
        started = {str(event["event_data"].get("task_action")) for event in result.events if event.get("event") == "runner_on_start"}
        assert not started & HOST_MODULES, (named, started)
    assert tree_snapshot(*roots(fleet)) == before
    assert not os.path.exists(os.path.join(fleet.state_dir, "runs", RUN_ID, "plan.json"))
    assert not os.path.exists(tmp_path / "r" / "drift-report.json")


def test_survey_strings_end_as_the_typed_run_on_every_playbook(make_fleet, tmp_path) -> None:
    for answers in (ROLLOUT_SURVEY, PRESTAGE_SURVEY, RECONCILE_SURVEY):
        survey_answers_are_strings(answers)
    typed, surveyed = make_fleet(**SMALL), make_fleet(**SMALL)
    nodes = typed.nodes()
    assert surveyed.nodes() == nodes

    # pre-staging: every node staged, 100% >= prestage_fail_below ("100%" from the survey)
    for fleet, answers in ((typed, PRESTAGE_TYPED), (surveyed, PRESTAGE_SURVEY)):
        result = prestage(fleet, **answers)
        assert result.status == "successful", result.stdout[-3000:]
        staged = result.task_results("prestage")
        assert all(staged[node]["ready"] for node in nodes), staged
        with open(os.path.join(fleet.state_dir, "prestage", f"{RUN_ID}.json"), encoding="utf-8") as handle:
            assert json.load(handle)["percent"] == 100.0

    # a preview from the survey ("true") previews: nothing written, no host touched
    before = tree_snapshot(*roots(surveyed))
    preview = surveyed.rollout(policy=POLICY, **answered(ROLLOUT_SURVEY, "rollout_preview", "true"))
    assert preview.status == "successful", preview.stdout[-3000:]
    assert tree_snapshot(*roots(surveyed)) == before
    assert not os.path.exists(surveyed.run_dir(RUN_ID))

    # the rollout: "false" is false - every node patched, exactly as the typed run
    outcomes = []
    for fleet, answers in ((typed, ROLLOUT_TYPED), (surveyed, ROLLOUT_SURVEY)):
        result = fleet.rollout(policy=POLICY, **answers)
        assert result.status == "successful", result.stdout[-3000:]
        summary = fleet.summary(RUN_ID)
        outcomes.append((result.status, fleet.versions(), summary["status"], summary["counts"]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][1] == {node: "1.0.1" for node in nodes}

    # drift reconciliation (read only): the same report (fingerprint) from typed and survey answers on one fleet
    fingerprints = []
    for fleet, answers in ((surveyed, RECONCILE_TYPED), (surveyed, RECONCILE_SURVEY)):
        report_dir = str(tmp_path / f"report-{len(fingerprints)}")
        result = reconcile(fleet, report_dir, reconcile_now="2026-12-01T00:00:00Z", **answers)
        assert result.status == "successful", result.stdout[-3000:]
        fingerprints.append(report(report_dir)["fingerprint"])
        assert sorted(row["host"] for row in report(report_dir)["rows"]) == nodes
    assert fingerprints[0] == fingerprints[1]

    # the workflow's failure path (awx/playbooks/rollback.yml, job template "fleetpatch rollback"): back to 1.0.0
    rollback = run_playbook(os.path.join(REPO_ROOT, "awx", "playbooks", "rollback.yml"), inventory=typed.inventory,
                            extravars={"rollout_patch_manifest": typed.manifest(), "rollout_targets": "fleet_nodes"})
    assert rollback.status == "successful", rollback.stdout[-3000:]
    assert typed.versions() == {node: "1.0.0" for node in nodes}
    assert all(result["changed"] for host, result in rollback.task_results("patch_apply").items() if host in nodes)

    # the registry playbook: verify, typed and surveyed dry-run flag
    for fleet, dry_run in ((typed, False), (surveyed, "false")):
        extravars = {"registry_command": "verify", "registry_state_dir": fleet.state_dir, "registry_dry_run": dry_run}
        result = run_playbook("registry.yml", extravars=extravars)
        assert result.status == "successful", result.stdout[-3000:]
        assert result.task_results("registry")["localhost"]["ok"] is True


def test_reconcile_under_a_slice_limit_writes_the_slice_without_localhost(make_fleet, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    part = fleet.nodes()[0::2]
    facts = str(tmp_path / "slice-0.jsonl")
    result = reconcile(fleet, str(tmp_path / "report"), cmdline=f"--limit {','.join(part)}", reconcile_save_facts=facts)
    assert result.status == "successful", result.stdout[-3000:]
    with open(facts, encoding="utf-8") as handle:
        assert sorted(json.loads(line)["host"] for line in list(handle)[1:]) == part
    assert sorted(row["host"] for row in report(str(tmp_path / "report"))["rows"]) == part
