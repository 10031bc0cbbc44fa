"""classify_host: a pre-staged copy gone at apply time (patch_apply's not_cached) is not_staged, never a failure."""

from __future__ import annotations

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._gate import classify_host, decide

MISSING = {"failed": True, "not_cached": True, "changed": False,
           "msg": "artifact aaaa is not in /srv/fleetpatch/cache/sha256 and no artifact_url was given"}
CORRUPT = {"failed": True, "changed": False,
           "msg": "artifact /srv/fleetpatch/cache/sha256/aaaa has sha256 bbbb, expected aaaa; the cached copy is corrupt and no artifact_url was given"}


def test_missing_copy_is_not_staged_and_spends_no_budget() -> None:
    verdict = classify_host("h1", MISSING, None, target_version="1.0.1")
    assert (verdict.outcome, verdict.reason, verdict.changed) == ("not_staged", MISSING["msg"], False)
    decision = decide(verdicts=[verdict], failures_total=0, budget_limit=0, halt_when="reached", response="halt", wave_name="canary")
    assert decision.action == "continue" and decision.failed_hosts == ()


def test_missing_copy_fails_with_unstaged_fail_and_a_corrupt_copy_always_fails() -> None:
    assert classify_host("h1", MISSING, None, target_version="1.0.1", missing_copy_fails=True).outcome == "failed"
    assert classify_host("h1", CORRUPT, None, target_version="1.0.1").outcome == "failed"
