from __future__ import annotations

import copy
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import parse_instant
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._policy import (
    PolicyError,
    classify,
    constraints,
    load_change_policy,
    merge_rollout,
    select_profile,
    severity_score,
    slo_targets,
    validate_change,
    validate_override,
)

MANIFEST = {
    "patch_id": "FP-2026-0042",
    "service": "myapp",
    "target_version": "1.0.1",
    "change_type": "scheduled",
    "classification": "functional",
    "justification": "fix the report export",
    "affected_versions": ["1.0.0"],
    "regression_risk": "low",
    "requested_by": "alice",
    "approvals": [{"by": "bob"}],
    "artifact": {"url": "http://example.invalid/myapp-1.0.1.tar.gz", "sha256": "a" * 64},
}
SECURITY = {"exploitability": "active", "data_exposure": "personal", "affected_segments": ["consumer", "enterprise"]}
NOW = parse_instant("2026-03-11T05:00:00Z")


def manifest(**changes: t.Any) -> dict[str, t.Any]:
    data = copy.deepcopy(MANIFEST)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# --- manifest change fields ---------------------------------------------------------------------------------------


def test_valid_change_fields_are_normalised() -> None:
    found = validate_change(manifest(approvals=None, approvers="bob", justification=None, reason="fix it", requested_by=None,
                                     requester="alice"))
    assert (found["approved_by"], found["justification"], found["reason"], found["requested_by"]) == (["bob"], "fix it", "fix it", "alice")
    assert "approvers" not in found and "requester" not in found
    assert validate_change(found) == found  # idempotent


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"change_type": None}, "missing required arguments: change_type"),
        ({"change_type": "urgent"}, "value of change_type must be one of: emergency, scheduled, feature, got: urgent"),
        ({"classification": "bugfix"}, "value of classification must be one of: security, functional, performance, got: bugfix"),
        ({"justification": None}, "missing required arguments: justification"),
        ({"justification": "  "}, "justification must be a non-empty string"),
        ({"affected_versions": None}, "missing required arguments: affected_versions"),
        ({"affected_versions": []}, "affected_versions must list at least one version"),
        ({"regression_risk": "tiny"}, "value of regression_risk must be one of: low, medium, high, got: tiny"),
        ({"requested_by": None}, "missing required arguments: requested_by"),
        ({"approvals": None}, "one of the following is required: approvals, approved_by"),
        ({"classification": "security"}, "classification is security but all of the following are missing: security"),
        ({"classification": "security", "security": {"exploitability": "poc", "affected_segments": ["a"]}},
         "missing required arguments: data_exposure found in security"),
        ({"classification": "security", "security": dict(SECURITY, exploitability="sometimes")},
         "value of exploitability must be one of: none, theoretical, poc, functional, active, got: sometimes found in security"),
        ({"security": SECURITY}, "security (the severity inputs) is for classification security, not functional"),
        ({"reason": "other"}, "give justification or its alias reason, not both"),
    ],
)
def test_missing_or_invalid_change_fields_name_the_field(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_change(manifest(**changes), source="patch manifest p.yml")
    assert str(caught.value).startswith("patch manifest p.yml: ")
    assert message in str(caught.value)


# --- severity score --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exploitability", "exposure", "segments", "score", "severity"),
    [
        ("none", "none", [], 0, "low"),
        ("theoretical", "internal", ["internal"], 3, "low"),
        ("poc", "internal", ["internal"], 4, "medium"),
        ("poc", "confidential", ["internal"], 5, "medium"),
        ("functional", "confidential", ["consumer"], 6, "high"),
        ("functional", "personal", ["consumer"], 7, "high"),
        ("functional", "personal", ["consumer", "enterprise"], 8, "critical"),
        ("active", "personal", ["all"], 10, "critical"),
        ("active", "none", [], 4, "high"),  # floor: active exploitation is at least high
        ("theoretical", "none", ["a", "b", "c", "d", "e"], 4, "medium"),  # segments are capped at 3
        ("poc", "personal", ["payments"], 8, "critical"),  # payments weighs 3 in this policy
    ],
)
def test_severity_score_table(exploitability: str, exposure: str, segments: list[str], score: int, severity: str) -> None:
    found = severity_score({"exploitability": exploitability, "data_exposure": exposure, "affected_segments": segments},
                           weights={"payments": 3})
    assert (found["score"], found["severity"]) == (score, severity)


def test_declared_severity_may_raise_the_level_never_lower_it() -> None:
    policy = load_change_policy({})
    raised = classify(validate_change(manifest(classification="security", security=dict(SECURITY, exploitability="none",
                                                                                        data_exposure="none", affected_segments=["a"]),
                                               severity="high")), policy)
    assert (raised["severity"], raised["score"]["severity"]) == ("high", "low")
    with pytest.raises(PolicyError, match="severity low is lower than the score model's critical"):
        classify(validate_change(manifest(classification="security", security=SECURITY, severity="low")), policy)


# --- profile selection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change_type", "classification", "severity", "profile", "ttp_hours"),
    [
        ("emergency", "security", "critical", "emergency-security", 24),
        ("emergency", "security", "high", "emergency-security", 72),
        ("emergency", "security", "low", "emergency-security", 720),
        ("emergency", "functional", None, "emergency", None),
        ("emergency", "performance", None, "emergency", None),
        ("scheduled", "security", "critical", "security", 72),
        ("scheduled", "security", "medium", "security", 720),
        ("feature", "security", "high", "security", 168),
        ("feature", "functional", None, "feature", None),
        ("scheduled", "functional", None, "routine", None),
        ("scheduled", "performance", "low", "routine", None),
    ],
)
def test_profile_selection_table(change_type: str, classification: str, severity: str | None, profile: str, ttp_hours: int | None) -> None:
    chosen = select_profile(load_change_policy({})["profiles"], change_type, classification, severity)
    assert chosen["name"] == profile
    ttp = (chosen["time_to_patch"] or {}).get(severity) if severity else None
    assert ttp == (ttp_hours * 3600 if ttp_hours else None)


def test_built_in_profiles_shape_and_calendar_flags() -> None:
    profiles = {profile["name"]: profile for profile in load_change_policy({})["profiles"]}
    emergency = profiles["emergency-security"]
    assert (emergency["require_window"], emergency["avoid_peak"], emergency["avoid_releases"], emergency["freeze_override"]) == (False, False, False, True)
    assert emergency["rollout"]["waves"] == ["50%", "100%"] and emergency["rollout"]["halt_when"] == "reached"
    routine = profiles["routine"]
    assert (routine["require_window"], routine["avoid_peak"], routine["avoid_releases"], routine["freeze_override"]) == (True, True, True, False)
    assert routine["rollout"] == {}


def test_classify_a_scored_security_patch() -> None:
    found = classify(validate_change(manifest(change_type="emergency", classification="security", security=SECURITY)), load_change_policy({}))
    assert (found["severity"], found["score"]["score"], found["profile"]["name"], found["time_to_patch_seconds"]) == (
        "critical", 9, "emergency-security", 86400.0)


def test_custom_profiles_without_a_catch_all_fail_closed() -> None:
    policy = load_change_policy({"profiles": [{"name": "only-emergencies", "match": {"change_type": "emergency"}}]})
    with pytest.raises(PolicyError, match="no profile matches change_type scheduled, classification functional, severity -"):
        select_profile(policy["profiles"], "scheduled", "functional", None)


def test_operator_policy_keys_win_over_the_profile_and_are_reported() -> None:
    profile = load_change_policy({})["profiles"][0]
    merged, overridden = merge_rollout(profile, {"bake_seconds": 0, "waves": ["50%", "100%"], "levels": ["region"]})
    assert merged["bake_seconds"] == 0 and merged["levels"] == ["region"] and merged["halt_when"] == "reached"
    assert overridden == ["bake_seconds"]


def test_slo_targets_for_the_drift_report_are_the_strictest_profile_targets() -> None:
    assert slo_targets(load_change_policy({})) == {"critical": 86400.0, "high": 259200.0, "medium": 604800.0, "low": 2592000.0}
    custom = load_change_policy({"profiles": [{"name": "sec", "match": {"classification": ["security"]}, "time_to_patch": "2d"},
                                              {"name": "rest", "time_to_patch": {"critical": "1h"}}]})
    assert slo_targets(custom) == {"critical": 3600.0, "high": 172800.0, "medium": 172800.0, "low": 172800.0}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"profiles": []}, "change policy: profiles must be a non-empty list"),
        ({"profiles": [{"match": {}}]}, "change policy: profiles[0].name is required"),
        ({"profiles": [{"name": "p", "match": {"change_type": "urgent"}}]},
         "change policy: profiles[0] (p).match.change_type: 'urgent' is not one of emergency, scheduled, feature"),
        ({"profiles": [{"name": "p", "time_to_patch": "soon"}]}, "change policy: profiles[0] (p).time_to_patch: 'soon' is not a duration"),
        ({"profiles": [{"name": "p", "avoid_peak": "yes"}]}, "change policy: profiles[0] (p).avoid_peak must be true or false"),
        ({"override": {"min_approvers": 0}}, "change policy: override.min_approvers must be a whole number >= 1"),
        ({"calendar": {"windows": [{"name": "w"}]}}, "change policy: calendar.windows[0] (w): give exactly one of weekly, monthly or once"),
        ({"windows": []}, "change policy: unknown key(s) windows"),
    ],
)
def test_bad_change_policy_names_the_field(document: dict[str, t.Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_change_policy(document)
    assert str(caught.value).startswith(message)


# --- overrides ----------------------------------------------------------------------------------------------------------

EMERGENCY = validate_change(manifest(change_type="emergency", classification="security", security=SECURITY))
OVERRIDE = {
    "patch_id": "FP-2026-0042",
    "hosts": ["us-1", "us-2"],
    "justification": "CVE-2026-1234 exploited in the wild",
    "ticket": "INC-4711",
    "requested_by": "carol",
    "approvers": ["dave", {"by": "erin", "at": "2026-03-11T04:00:00Z"}],
    "expires": "2026-03-11T09:00:00Z",
}
TARGETS = ["us-1", "us-2", "eu-1"]


def override(**changes: t.Any) -> dict[str, t.Any]:
    data = copy.deepcopy(OVERRIDE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def check(data: dict[str, t.Any], *, patch: dict[str, t.Any] = EMERGENCY, rules: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    policy = load_change_policy({"override": rules or {}})
    profile = classify(patch, policy)["profile"]
    return validate_override(data, manifest=patch, profile=profile, targets=TARGETS, now=NOW, rules=policy["override"])


def test_a_valid_override_is_normalised_and_scoped() -> None:
    found = check(override())
    assert found == {"patch_id": "FP-2026-0042", "hosts": ["us-1", "us-2"], "justification": "CVE-2026-1234 exploited in the wild",
                     "ticket": "INC-4711", "requested_by": "carol", "approvers": ["dave", "erin"], "expires": "2026-03-11T09:00:00Z",
                     "breaks": ["freeze"], "accepted_at": "2026-03-11T05:00:00Z"}
    limits = constraints(classify(EMERGENCY, load_change_policy({}))["profile"], found)
    assert limits.override_hosts == frozenset({"us-1", "us-2"}) and limits.breaks == frozenset({"freeze"})
    assert limits.override_until == parse_instant("2026-03-11T09:00:00Z")


@pytest.mark.parametrize(
    ("changes", "rules", "message"),
    [
        ({"approvers": ["carol", "dave"]}, None, "override.approvers[0]: carol requested the override and cannot approve the override"),
        ({"approvers": ["dave", "Alice"]}, None, "override.approvers[1]: Alice requested the patch and cannot approve the override"),
        ({"approvers": ["dave"]}, None, "override.approvers: 1 approver(s) other than the requester, the policy needs 2"),
        ({"approvers": ["dave", "dave"]}, None, "override.approvers: 1 approver(s) other than the requester, the policy needs 2"),
        ({"approvers": ["dave", "erin"]}, {"min_approvers": 3}, "override.approvers: 2 approver(s) other than the requester, the policy needs 3"),
        ({"justification": None}, None, "override.justification: a justification is required"),
        ({"justification": " "}, None, "override.justification: a justification is required"),
        ({"ticket": None}, None, "override.ticket: an incident or ticket reference is required"),
        ({"requested_by": None}, None, "override.requested_by: who asks for it is required"),
        ({"expires": None}, None, "override.expires: an override needs an expiry"),
        ({"expires": "2026-03-11T04:59:59Z"}, None, "override.expires: the override expired at 2026-03-11T04:59:59Z (now 2026-03-11T05:00:00Z)"),
        ({"expires": "2026-03-11T05:00:00Z"}, None, "override.expires: the override expired at 2026-03-11T05:00:00Z"),
        ({"expires": "2026-03-11T09:00:00"}, None, "override.expires: '2026-03-11T09:00:00' has no time zone"),
        ({"expires": "2026-03-20T00:00:00Z"}, None, "override.expires: 2026-03-20T00:00:00Z is more than 72 hours away"),
        ({"patch_id": "FP-OTHER"}, None, "override.patch_id: the override is for 'FP-OTHER', not for patch FP-2026-0042"),
        ({"hosts": []}, None, "override.hosts: name the hosts the override covers"),
        ({"hosts": ["us-1", "ap-9"]}, None, "override.hosts: ap-9 is not a target of this rollout"),
        ({"breaks": ["everything"]}, None, "override.breaks: a list of freeze, window, peak, release"),
        ({"note": "x"}, None, "override: unknown key(s) note"),
    ],
)
def test_incomplete_expired_or_out_of_scope_overrides_are_refused(changes: dict[str, t.Any], rules, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        check(override(**changes), rules=rules)
    assert str(caught.value).startswith(message)


def test_only_profiles_that_allow_it_take_an_override() -> None:
    routine = validate_change(manifest())
    with pytest.raises(PolicyError, match="override: profile routine .scheduled/functional. does not allow overrides"):
        check(override(), patch=routine)
