from __future__ import annotations

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._gate import (
    HostVerdict,
    budget_spent,
    classify_host,
    decide,
)


@pytest.mark.parametrize(
    ("failures", "limit", "halt_when", "spent"),
    [
        (0, 0, "exceeded", False),
        (1, 0, "exceeded", True),
        (0, 0, "reached", False),
        (1, 0, "reached", True),
        (2, 2, "exceeded", False),
        (3, 2, "exceeded", True),
        (1, 2, "reached", False),
        (2, 2, "reached", True),
    ],
)
def test_budget_boundary(failures: int, limit: int, halt_when: str, spent: bool) -> None:
    assert budget_spent(failures, limit, halt_when) is spent


@pytest.mark.parametrize(
    ("apply_result", "health", "skipped", "outcome"),
    [
        (None, None, False, "unreachable"),
        ({"unreachable": True, "msg": "ssh: connect refused"}, None, False, "unreachable"),
        ({"failed": True, "msg": "sha256 mismatch"}, None, False, "failed"),
        ({"changed": True, "version": "1.0.1"}, {"ok": False, "status": 503}, False, "unhealthy"),
        ({"changed": True, "version": "1.0.1"}, {"ok": True, "status": 200, "version": "1.0.0"}, False, "unhealthy"),
        ({"changed": True, "version": "1.0.1"}, {"ok": True, "status": 200, "version": "1.0.1"}, False, "patched"),
        ({"changed": False, "version": "1.0.1"}, None, False, "patched"),
        (None, None, True, "skipped"),
    ],
)
def test_classify_host(apply_result, health, skipped: bool, outcome: str) -> None:
    verdict = classify_host("web-1", apply_result, health, target_version="1.0.1", skipped=skipped)
    assert verdict.outcome == outcome


def test_unhealthy_reason_names_the_measured_value() -> None:
    verdict = classify_host("web-1", {"version": "1.0.1"}, {"ok": True, "status": 200, "version": "1.0.0"}, target_version="1.0.1")
    assert verdict.reason == "health reports version 1.0.0, expected 1.0.1"


def _verdicts(*outcomes: str) -> list[HostVerdict]:
    return [HostVerdict(f"h{i}", outcome, "why") for i, outcome in enumerate(outcomes)]


@pytest.mark.parametrize(
    ("outcomes", "failures_total", "limit", "response", "action", "spent"),
    [
        (("patched", "patched"), 0, 0, "halt", "continue", False),
        (("patched", "failed"), 1, 2, "quarantine", "quarantine", False),
        (("patched", "failed"), 1, 2, "hold", "hold", False),
        (("patched", "failed"), 1, 2, "rollback_wave", "rollback_wave", False),
        (("failed",), 3, 2, "quarantine", "halt", True),
        (("failed",), 3, 2, "hold", "halt", True),
        (("failed",), 3, 2, "rollback_all", "rollback_all", True),
        (("unreachable",), 1, 0, "quarantine", "halt", True),
        # A budget spent by earlier batches halts even a clean batch: no new host starts.
        (("patched",), 3, 2, "quarantine", "halt", True),
    ],
)
def test_decide(outcomes, failures_total: int, limit: int, response: str, action: str, spent: bool) -> None:
    decision = decide(
        verdicts=_verdicts(*outcomes), failures_total=failures_total, budget_limit=limit, halt_when="exceeded", response=response, wave_name="wave-1"
    )
    assert (decision.action, decision.budget_spent) == (action, spent)


def test_decision_reasons_show_value_and_threshold() -> None:
    decision = decide(verdicts=_verdicts("failed"), failures_total=2, budget_limit=1, halt_when="exceeded", response="halt", wave_name="wave-1")
    assert decision.reasons[-1] == "error budget: 2 failed host(s) across the run, limit 1 (halts when failures > 1): spent"
    assert decision.failed_hosts == ("h0",)


def test_unknown_response_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown response 'explode'"):
        decide(verdicts=[], failures_total=0, budget_limit=0, halt_when="exceeded", response="explode", wave_name="w")


@pytest.mark.parametrize(
    ("outcomes", "fleet_failures", "inconclusive", "response", "inconclusive_response", "failures_total", "action"),
    [
        # no data is never a pass: inconclusive holds by default, or applies its own response
        (("patched",), (), ("check x: inconclusive: no data",), "rollback_wave", "hold", 0, "hold"),
        (("patched",), (), ("check x: inconclusive: no data",), "halt", "rollback_all", 0, "rollback_all"),
        # a failure outranks inconclusive checks
        (("patched", "unhealthy"), (), ("check x: inconclusive: no data",), "rollback_wave", "hold", 1, "rollback_wave"),
        # a failed fleet-wide check applies the response; there is no host to quarantine, so quarantine halts
        (("patched",), ("check errors: fail: value 0.5 > max 0.05",), (), "rollback_all", "hold", 0, "rollback_all"),
        (("patched",), ("check errors: fail: value 0.5 > max 0.05",), (), "quarantine", "hold", 0, "halt"),
        # a spent budget still halts a batch whose checks were only inconclusive
        (("patched",), (), ("check x: inconclusive: no data",), "quarantine", "hold", 3, "halt"),
    ],
)
def test_decide_with_check_outcomes(outcomes, fleet_failures, inconclusive, response: str, inconclusive_response: str,
                                    failures_total: int, action: str) -> None:
    decision = decide(
        verdicts=_verdicts(*outcomes), failures_total=failures_total, budget_limit=2, halt_when="exceeded", response=response,
        wave_name="canary", fleet_failures=fleet_failures, inconclusive=inconclusive, inconclusive_response=inconclusive_response,
    )
    assert decision.action == action


def test_inconclusive_reasons_say_no_pass_without_data() -> None:
    decision = decide(verdicts=_verdicts("patched"), failures_total=0, budget_limit=0, halt_when="exceeded", response="halt",
                      wave_name="canary", inconclusive=("check x on h0: inconclusive: no data (3 samples, none measured)",))
    assert decision.reasons[0] == "canary: inconclusive, no pass without data: check x on h0: inconclusive: no data (3 samples, none measured)"
    assert decision.failed_hosts == ()


def test_fleet_failure_reason_names_the_wave() -> None:
    decision = decide(verdicts=_verdicts("patched"), failures_total=0, budget_limit=0, halt_when="exceeded", response="halt",
                      wave_name="wave-2", fleet_failures=("check errors: fail: value 0.5 > max 0.05",))
    assert decision.reasons[0] == "wave-2: check errors: fail: value 0.5 > max 0.05"


def test_inconclusive_cannot_quarantine() -> None:
    with pytest.raises(ValueError, match="unknown inconclusive response 'quarantine'"):
        decide(verdicts=[], failures_total=0, budget_limit=0, halt_when="exceeded", response="halt", wave_name="w",
               inconclusive=("x",), inconclusive_response="quarantine")


def test_not_applicable_is_its_own_outcome_and_never_a_failure() -> None:
    verdict = classify_host("h1", {"failed": False, "changed": False, "not_applicable": True, "installed_version": "0.9.0",
                                   "msg": "installed version 0.9.0 is not in affected_versions [1.0.0]"}, None, target_version="1.0.1")
    assert (verdict.outcome, verdict.version, verdict.changed) == ("not_applicable", "0.9.0", False)
    decision = decide(verdicts=[verdict], failures_total=0, budget_limit=0, halt_when="reached", response="rollback_wave", wave_name="canary")
    assert (decision.action, decision.failed_hosts, decision.trigger) == ("continue", (), "")


def test_rollback_wave_trigger_names_the_response_not_the_budget() -> None:
    verdicts = [HostVerdict("h1", "unhealthy", "health check failed: status 503"), HostVerdict("h2", "patched")]
    decision = decide(verdicts=verdicts, failures_total=1, budget_limit=3, halt_when="exceeded", response="rollback_wave", wave_name="wave-1")
    assert decision.action == "rollback_wave" and not decision.budget_spent
    assert decision.trigger == "response rollback_wave of wave-1 to 1 host(s) with health check failed: h1"


def test_budget_trigger_when_the_budget_turns_a_soft_response_into_halt() -> None:
    verdicts = [HostVerdict("h1", "failed", "signature: principal evil@example.com is not allowed")]
    decision = decide(verdicts=verdicts, failures_total=2, budget_limit=1, halt_when="exceeded", response="quarantine", wave_name="canary")
    assert decision.action == "halt"
    assert decision.trigger == ("error budget spent: 2 failed host(s) across the run, limit 1 (exceeded);"
                                " in canary: 1 host(s) with signature failure: h1")


def test_fleet_check_trigger_says_it_was_a_check() -> None:
    decision = decide(verdicts=[HostVerdict("h1", "patched")], failures_total=0, budget_limit=0, halt_when="exceeded",
                      response="quarantine", wave_name="wave-2", fleet_failures=["check errors: fail: value 0.5 > max 0.05"])
    assert decision.action == "halt"
    assert decision.trigger == "1 failed fleet check(s): check errors: fail: value 0.5 > max 0.05 in wave-2: halt (a fleet check has no host to quarantine)"
