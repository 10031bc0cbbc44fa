# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: change policy (classification, severity, profiles, overrides). Not a public API.

Plain data in, plain data out; the clock is an argument. ``docs/policy.md`` documents every table here.
"""

from __future__ import annotations

import copy
import datetime as _dt
import typing as t
from collections.abc import Mapping

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._inputs import NAME_MAX, TEXT_MAX, check_strings, check_text, shown

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import (
    SCOPE_KEYS,
    Calendar,
    CalendarError,
    Constraints,
    evaluate,
    iso_z,
    next_opening,
    parse_calendar,
    parse_duration,
    parse_instant,
)

__all__ = [
    "PolicyError",
    "classify",
    "constraints",
    "evaluate_wave",
    "evaluate_waves",
    "host_scopes",
    "jsonable",
    "load_change_policy",
    "merge_rollout",
    "schedule_text",
    "select_profile",
    "severity_score",
    "slo_targets",
    "validate_change",
    "validate_override",
]

CHANGE_TYPES = ("emergency", "scheduled", "feature")
CLASSIFICATIONS = ("security", "functional", "performance")
SEVERITIES = ("low", "medium", "high", "critical")
RISKS = ("low", "medium", "high")
BREAKABLE = ("freeze", "window", "peak", "release")

# severity model: score = exploitability + data exposure + affected segments (0-10)
EXPLOITABILITY = {"none": 0, "theoretical": 1, "poc": 2, "functional": 3, "active": 4}
DATA_EXPOSURE = {"none": 0, "internal": 1, "confidential": 2, "personal": 3}
SEGMENTS_MAX = 3
ALL_SEGMENTS = "all"
# lowest score of each level, highest first
SEVERITY_LEVELS = (("critical", 8), ("high", 6), ("medium", 4), ("low", 0))

# The manifest's change fields, validated with Ansible's own argument spec validator (the same rules a module's
# argument_spec would apply), so a message names the field: "missing required arguments: justification".
CHANGE_SPEC: dict[str, dict[str, t.Any]] = {
    "change_type": {"type": "str", "required": True, "choices": list(CHANGE_TYPES)},
    "classification": {"type": "str", "required": True, "choices": list(CLASSIFICATIONS)},
    "justification": {"type": "str", "required": True, "aliases": ["reason"]},
    "affected_versions": {"type": "list", "elements": "str", "required": True},
    "regression_risk": {"type": "str", "required": True, "choices": list(RISKS)},
    "requested_by": {"type": "str", "required": True, "aliases": ["requester"]},
    "approvals": {"type": "list", "elements": "raw"},
    "approved_by": {"type": "list", "elements": "str", "aliases": ["approvers"]},
    "severity": {"type": "str", "choices": list(SEVERITIES)},
    "security": {
        "type": "dict",
        "options": {
            "exploitability": {"type": "str", "required": True, "choices": list(EXPLOITABILITY)},
            "data_exposure": {"type": "str", "required": True, "choices": list(DATA_EXPOSURE)},
            "affected_segments": {"type": "list", "elements": "str", "required": True},
            "cve": {"type": "list", "elements": "str"},
        },
    },
}
CHANGE_FIELDS = frozenset(CHANGE_SPEC) | {"reason", "requester", "approvers"}
_CHANGE_RULES = {
    "required_one_of": [["approvals", "approved_by"]],
    "required_if": [["classification", "security", ["security"]]],
}

_PROFILE_KEYS = ("name", "match", "rollout", "time_to_patch", "require_window", "avoid_peak", "avoid_releases", "freeze_override")
_MATCH_KEYS = ("change_type", "classification", "severity")
_POLICY_KEYS = ("profiles", "calendar", "override", "severity")
_FAST = {"canary": {"size": 1}, "waves": ["50%", "100%"], "bake_seconds": 60, "error_budget": 0, "halt_when": "reached",
         "response": "rollback_wave", "canary_response": "rollback_all"}
# First match wins; the last profile matches everything.
DEFAULT_PROFILES: tuple[dict[str, t.Any], ...] = (
    {"name": "emergency-security", "match": {"change_type": ["emergency"], "classification": ["security"]}, "rollout": _FAST,
     "time_to_patch": {"critical": "24h", "high": "72h", "medium": "7d", "low": "30d"},
     "require_window": False, "avoid_peak": False, "avoid_releases": False, "freeze_override": True},
    {"name": "emergency", "match": {"change_type": ["emergency"]}, "rollout": _FAST,
     "require_window": False, "avoid_peak": True, "avoid_releases": False, "freeze_override": True},
    {"name": "security", "match": {"classification": ["security"]},
     "rollout": {"canary": {"size": 1}, "waves": ["25%", "100%"], "error_budget": 0, "response": "rollback_wave"},
     "time_to_patch": {"critical": "72h", "high": "7d", "medium": "30d", "low": "90d"}},
    {"name": "feature", "match": {"change_type": ["feature"]},
     "rollout": {"canary": {"size": 1}, "waves": ["10%", "50%", "100%"], "bake_seconds": 600, "error_budget": 0}},
    # routine: the planner's defaults (canary of one host, waves 25% and 100%, no error budget, halt)
    {"name": "routine", "match": {}, "rollout": {}},
)
DEFAULT_OVERRIDE = {"min_approvers": 2, "max_validity": "72h"}


class PolicyError(FleetpatchError, ValueError):
    """A manifest, change policy or override that must stop the run; the message names the field."""


def _type_name(value: t.Any) -> str:
    if value is None:
        return "None"
    return next(cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "builtins")


def _mapping(value: t.Any, where: str) -> Mapping[str, t.Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where} must be a mapping, got {_type_name(value)}")
    return value


def _unknown(data: Mapping[str, t.Any], allowed: t.Sequence[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _text(value: t.Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def jsonable(value: t.Any) -> t.Any:
    """YAML dates and times as ISO text, tuples as lists: what a result or plan.json can carry."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return value


def _duration(value: t.Any, where: str) -> float:
    try:
        return parse_duration(value, where).total_seconds()
    except CalendarError as exc:
        raise PolicyError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------
# manifest change fields and severity


def _strict_types(spec: Mapping[str, Mapping[str, t.Any]], fields: Mapping[str, t.Any], source: str, path: str = "") -> None:
    """The argument spec validator turns a list into its str() for a str option; a list where a string is expected is an
    error here, and every string is bounded (free text: TEXT_MAX, anything else one line of NAME_MAX)."""
    names = {alias: name for name, option in spec.items() for alias in [name, *option.get("aliases", [])]}
    for key, value in fields.items():
        option = spec.get(names.get(key, key))
        if option is None or value is None:
            continue
        field = f"{path}{key}"
        if option["type"] == "str":
            free = names.get(key, key) == "justification"
            check_text(value, field=field, where=source, max_len=TEXT_MAX if free else NAME_MAX, multiline=free, allow_empty=True,
                       error=PolicyError)
        elif option["type"] == "list" and option.get("elements") == "str":
            if isinstance(value, str):  # "bob, carol": the validator splits it on commas
                check_text(value, field=field, where=source, max_len=TEXT_MAX, error=PolicyError)
                continue
            if not isinstance(value, (list, tuple)):
                raise PolicyError(f"{source}: {field} must be a list of strings, got {shown(value)}")
            for index, item in enumerate(value):
                check_text(item, field=f"{field}[{index}]", where=source, max_len=NAME_MAX, error=PolicyError)
        elif option["type"] == "dict" and option.get("options") and isinstance(value, Mapping):
            _strict_types(option["options"], value, source, f"{field}.")


def validate_change(manifest: Mapping[str, t.Any], *, source: str = "patch manifest") -> dict[str, t.Any]:
    """The manifest with its change fields validated and normalised (canonical names, lists); raises PolicyError."""
    fields = {key: manifest[key] for key in CHANGE_FIELDS if key in manifest}
    for alias, name in (("reason", "justification"), ("requester", "requested_by"), ("approvers", "approved_by")):
        if alias in fields and name in fields and fields[alias] != fields[name]:
            raise PolicyError(f"{source}: give {name} or its alias {alias}, not both")
        if alias in fields and name in fields:
            del fields[alias]
    _strict_types(CHANGE_SPEC, fields, source)
    result = ArgumentSpecValidator(CHANGE_SPEC, **_CHANGE_RULES).validate(fields)
    if result.error_messages:
        raise PolicyError(f"{source}: " + "; ".join(result.error_messages))
    values = result.validated_parameters
    for name in ("justification", "requested_by"):
        if not _text(values.get(name)):
            raise PolicyError(f"{source}: {name} must be a non-empty string")
    if not values["affected_versions"] or not all(_text(item) for item in values["affected_versions"]):
        raise PolicyError(f"{source}: affected_versions must list at least one version")
    if values.get("security") and values["classification"] != "security":
        raise PolicyError(f"{source}: security (the severity inputs) is for classification security, not {values['classification']}")
    normalized = {key: value for key, value in manifest.items() if key not in CHANGE_FIELDS}
    for key in CHANGE_SPEC:
        if values.get(key) is not None:
            normalized[key] = values[key]
    if normalized.get("security"):
        normalized["security"] = {key: value for key, value in normalized["security"].items() if value is not None}
    # the registry and the approval chain read the justification as 'reason'
    normalized["reason"] = normalized["justification"]
    return normalized


def segment_points(segments: t.Sequence[str], weights: Mapping[str, int] | None = None) -> int:
    """Affected user segments: each segment counts its weight (1 unless the policy says otherwise), 'all' is the
    maximum; the sum is capped at SEGMENTS_MAX."""
    names = {str(name).strip().lower() for name in segments if str(name).strip()}
    if ALL_SEGMENTS in names:
        return SEGMENTS_MAX
    weights = {str(key).lower(): value for key, value in (weights or {}).items()}
    return min(SEGMENTS_MAX, sum(int(weights.get(name, 1)) for name in names))


def severity_score(security: Mapping[str, t.Any], *, weights: Mapping[str, int] | None = None) -> dict[str, t.Any]:
    """Score a security patch: exploitability + data exposure + affected segments, 0-10, and its level.

    Active exploitation is at least high, whatever the sum.
    """
    exploit = EXPLOITABILITY[security["exploitability"]]
    exposure = DATA_EXPOSURE[security["data_exposure"]]
    segments = segment_points(security["affected_segments"], weights)
    score = exploit + exposure + segments
    level = next(name for name, low in SEVERITY_LEVELS if score >= low)
    floor = None
    if security["exploitability"] == "active" and SEVERITIES.index(level) < SEVERITIES.index("high"):
        level, floor = "high", "active exploitation is at least high"
    return {"score": score, "severity": level, "components": {"exploitability": exploit, "data_exposure": exposure,
                                                              "affected_segments": segments}, "floor": floor}


# ---------------------------------------------------------------------------------------------------------
# change policy document and profiles


def _strings(value: t.Any, where: str, choices: t.Sequence[str] | None = None) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(_text(item) for item in items):
        raise PolicyError(f"{where} must be a non-empty string or a list of them")
    for item in items:
        if choices is not None and item not in choices:
            raise PolicyError(f"{where}: {item!r} is not one of {', '.join(choices)}")
    return [str(item) for item in items]


def _ttp(value: t.Any, where: str) -> dict[str, float] | None:
    """A profile's time to patch: one duration for every severity, or a duration per severity."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        _unknown(value, SEVERITIES, where)
        return {severity: _duration(value[severity], f"{where}.{severity}") for severity in SEVERITIES if severity in value}
    seconds = _duration(value, where)
    return {severity: seconds for severity in SEVERITIES}


def _profile(data: t.Any, where: str) -> dict[str, t.Any]:
    spec = _mapping(data, where)
    _unknown(spec, _PROFILE_KEYS, where)
    if not _text(spec.get("name")):
        raise PolicyError(f"{where}.name is required and must be a non-empty string")
    where = f"{where} ({spec['name']})"
    match = _mapping(spec.get("match") or {}, f"{where}.match")
    _unknown(match, _MATCH_KEYS, f"{where}.match")
    choices = {"change_type": CHANGE_TYPES, "classification": CLASSIFICATIONS, "severity": SEVERITIES}
    flags = {}
    for key, default in (("require_window", True), ("avoid_peak", True), ("avoid_releases", True), ("freeze_override", False)):
        value = spec.get(key, default)
        if not isinstance(value, bool):
            raise PolicyError(f"{where}.{key} must be true or false, got {_type_name(value)}")
        flags[key] = value
    return {
        "name": str(spec["name"]),
        "match": {key: _strings(match[key], f"{where}.match.{key}", choices[key]) for key in _MATCH_KEYS if key in match},
        "rollout": copy.deepcopy(dict(_mapping(spec.get("rollout") or {}, f"{where}.rollout"))),
        "time_to_patch": _ttp(spec.get("time_to_patch"), f"{where}.time_to_patch"),
        **flags,
    }


def load_change_policy(data: t.Any, *, source: str = "change policy") -> dict[str, t.Any]:
    """Validate a change policy document (profiles, calendar, override rules, severity weights); built-in profiles
    when it names none."""
    spec = _mapping(data or {}, source)
    _unknown(spec, _POLICY_KEYS, source)
    check_strings(spec, where=source, error=PolicyError)
    raw = spec.get("profiles")
    if raw is None:
        raw = DEFAULT_PROFILES
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PolicyError(f"{source}: profiles must be a non-empty list")
    profiles = [_profile(item, f"{source}: profiles[{index}]") for index, item in enumerate(raw)]
    names = [profile["name"] for profile in profiles]
    if len(set(names)) != len(names):
        raise PolicyError(f"{source}: profiles: every name must be unique")
    try:
        calendar = parse_calendar(spec.get("calendar"), f"{source}: calendar")
    except CalendarError as exc:
        raise PolicyError(str(exc)) from None
    override = dict(DEFAULT_OVERRIDE, **_mapping(spec.get("override") or {}, f"{source}: override"))
    _unknown(override, tuple(DEFAULT_OVERRIDE), f"{source}: override")
    minimum = override["min_approvers"]
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise PolicyError(f"{source}: override.min_approvers must be a whole number >= 1, got {minimum!r}")
    severity = _mapping(spec.get("severity") or {}, f"{source}: severity")
    _unknown(severity, ("segment_weights",), f"{source}: severity")
    weights = dict(_mapping(severity.get("segment_weights") or {}, f"{source}: severity.segment_weights"))
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise PolicyError(f"{source}: severity.segment_weights.{name} must be a whole number >= 0")
    return {
        "source": source,
        "profiles": profiles,
        "calendar": calendar,
        "calendar_spec": jsonable(spec.get("calendar") or {}),
        "override": {"min_approvers": minimum, "max_validity": _duration(override["max_validity"], f"{source}: override.max_validity")},
        "segment_weights": weights,
    }


def select_profile(profiles: t.Sequence[Mapping[str, t.Any]], change_type: str, classification: str, severity: str | None) -> dict[str, t.Any]:
    """The first profile whose match admits the change; a change no profile admits stops the run."""
    values = {"change_type": change_type, "classification": classification, "severity": severity}
    for profile in profiles:
        if all(values[key] in allowed for key, allowed in profile["match"].items()):
            return dict(profile)
    raise PolicyError(f"change policy: no profile matches change_type {change_type}, classification {classification},"
                      f" severity {severity or '-'}; add a profile without match as the last one")


def classify(manifest: Mapping[str, t.Any], policy: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Change type, classification, severity (scored for security patches) and the profile that applies."""
    declared = manifest.get("severity")
    scored = None
    severity = declared
    if manifest["classification"] == "security":
        scored = severity_score(manifest["security"], weights=policy["segment_weights"])
        severity = scored["severity"]
        if declared is not None and SEVERITIES.index(declared) < SEVERITIES.index(severity):
            raise PolicyError(f"patch manifest: severity {declared} is lower than the score model's {severity}"
                              f" (score {scored['score']}); a declared severity may raise the level, never lower it")
        if declared is not None:
            severity = declared
    profile = select_profile(policy["profiles"], manifest["change_type"], manifest["classification"], severity)
    ttp = (profile.get("time_to_patch") or {}).get(severity) if severity else None
    return {"change_type": manifest["change_type"], "classification": manifest["classification"], "severity": severity,
            "declared_severity": declared, "score": scored, "regression_risk": manifest.get("regression_risk"),
            "profile": profile, "time_to_patch_seconds": ttp}


def merge_rollout(profile: Mapping[str, t.Any], policy: Mapping[str, t.Any] | None) -> tuple[dict[str, t.Any], list[str]]:
    """The rollout policy for the planner: the profile's keys, then the operator's (which win). Returns the policy
    and the keys the operator overrode."""
    merged = copy.deepcopy(dict(profile.get("rollout") or {}))
    given = dict(policy or {})
    overridden = sorted(key for key in given if key in merged and merged[key] != given[key])
    merged.update(copy.deepcopy(given))
    return merged, overridden


def constraints(profile: Mapping[str, t.Any], override: Mapping[str, t.Any] | None = None) -> Constraints:
    return Constraints(
        require_window=bool(profile["require_window"]),
        avoid_peak=bool(profile["avoid_peak"]),
        avoid_releases=bool(profile["avoid_releases"]),
        breaks=frozenset(override["breaks"]) if override else frozenset(),
        override_hosts=frozenset(override["hosts"]) if override else frozenset(),
        override_until=parse_instant(override["expires"], "override.expires") if override else None,
    )


def slo_targets(policy: Mapping[str, t.Any]) -> dict[str, float]:
    """Time-to-patch targets per severity for the drift report: for each severity, the strictest target of the
    profiles that a security patch of that severity can select."""
    targets: dict[str, float] = {}
    for severity in SEVERITIES:
        for profile in policy["profiles"]:
            match = profile["match"]
            if "security" not in match.get("classification", ["security"]) or severity not in match.get("severity", [severity]):
                continue
            seconds = (profile.get("time_to_patch") or {}).get(severity)
            if seconds is not None:
                targets[severity] = min(seconds, targets.get(severity, seconds))
    return targets


# ---------------------------------------------------------------------------------------------------------
# overrides


_OVERRIDE_KEYS = ("patch_id", "hosts", "justification", "ticket", "requested_by", "approvers", "expires", "breaks")


def validate_override(data: t.Any, *, manifest: Mapping[str, t.Any], profile: Mapping[str, t.Any], targets: t.Sequence[str],
                      now: _dt.datetime, rules: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """An emergency override, or PolicyError. Fails closed: anything missing, expired or out of scope refuses it."""
    spec = dict(_mapping(data, "override"))
    _unknown(spec, _OVERRIDE_KEYS, "override")
    check_strings(spec, where="override", path="override", error=PolicyError)
    patch_id = manifest["patch_id"]
    if not profile.get("freeze_override"):
        raise PolicyError(f"override: profile {profile['name']} ({manifest['change_type']}/{manifest['classification']})"
                          " does not allow overrides; only emergency changes may break a freeze")
    if spec.get("patch_id") != patch_id:
        raise PolicyError(f"override.patch_id: the override is for {spec.get('patch_id')!r}, not for patch {patch_id}")
    for key, what in (("justification", "a justification"), ("ticket", "an incident or ticket reference"),
                      ("requested_by", "who asks for it")):
        if not _text(spec.get(key)):
            raise PolicyError(f"override.{key}: {what} is required")
    hosts = spec.get("hosts")
    if not isinstance(hosts, (list, tuple)) or not hosts or not all(_text(host) for host in hosts):
        raise PolicyError("override.hosts: name the hosts the override covers (a non-empty list)")
    unknown = sorted(set(hosts) - set(targets))
    if unknown:
        raise PolicyError(f"override.hosts: {', '.join(unknown)} is not a target of this rollout")
    requester = str(spec["requested_by"]).strip()
    patch_requester = str(manifest.get("requested_by") or "").strip()
    approvers: list[str] = []
    raw = spec.get("approvers")
    if not isinstance(raw, (list, tuple)):
        raise PolicyError("override.approvers must be a list of names")
    for index, item in enumerate(raw):
        name = item.get("by") if isinstance(item, Mapping) else item
        if not _text(name):
            raise PolicyError(f"override.approvers[{index}] must be a name (or a mapping with 'by')")
        name = str(name).strip()
        for who, role in ((requester, "requested the override"), (patch_requester, "requested the patch")):
            if who and name.casefold() == who.casefold():
                raise PolicyError(f"override.approvers[{index}]: {name} {role} and cannot approve the override")
        if name.casefold() not in {known.casefold() for known in approvers}:
            approvers.append(name)
    if len(approvers) < rules["min_approvers"]:
        raise PolicyError(f"override.approvers: {len(approvers)} approver(s) other than the requester, the policy needs"
                          f" {rules['min_approvers']}")
    if spec.get("expires") is None:
        raise PolicyError("override.expires: an override needs an expiry (ISO 8601 UTC, such as 2026-03-10T06:00:00Z)")
    try:
        expires = parse_instant(spec["expires"], "override.expires")
    except CalendarError as exc:
        raise PolicyError(str(exc)) from None
    if expires <= now:
        raise PolicyError(f"override.expires: the override expired at {iso_z(expires)} (now {iso_z(now)})")
    if (expires - now).total_seconds() > rules["max_validity"]:
        raise PolicyError(f"override.expires: {iso_z(expires)} is more than {rules['max_validity'] / 3600:g} hours away;"
                          " the policy's override.max_validity allows no longer")
    breaks = spec.get("breaks", ["freeze"])
    breaks = [breaks] if isinstance(breaks, str) else breaks
    if not isinstance(breaks, (list, tuple)) or not breaks or any(item not in BREAKABLE for item in breaks):
        raise PolicyError(f"override.breaks: a list of {', '.join(BREAKABLE)}")
    return {"patch_id": patch_id, "hosts": sorted(hosts), "justification": spec["justification"].strip(), "ticket": str(spec["ticket"]).strip(),
            "requested_by": requester, "approvers": approvers, "expires": iso_z(expires), "breaks": sorted(set(breaks)),
            "accepted_at": iso_z(now)}


# ---------------------------------------------------------------------------------------------------------
# schedule: which waves fit


def host_scopes(hosts: Mapping[str, Mapping[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """Inventory variables (fleet_region, ...) -> the calendar's scope attributes (region, tenant, environment)."""
    return {host: {key: variables.get(f"fleet_{key}") for key in SCOPE_KEYS} for host, variables in hosts.items()}


def evaluate_wave(calendar: Calendar, scopes: Mapping[str, Mapping[str, t.Any]], moment: _dt.datetime, limits: Constraints,
                  *, next_open: bool = True) -> dict[str, t.Any]:
    """Whether these hosts may start at moment, why not, and (when not) when they next may."""
    found = evaluate(calendar, scopes, moment, limits)
    opening = None
    if not found["fits"] and next_open:
        upcoming = next_opening(calendar, scopes, moment, limits)
        opening = iso_z(upcoming) if upcoming else None
    return dict(found, next_open=opening)


def evaluate_waves(plan: Mapping[str, t.Any], scopes: Mapping[str, Mapping[str, t.Any]], calendar: Calendar, moment: _dt.datetime,
                   limits: Constraints) -> list[dict[str, t.Any]]:
    """Each wave evaluated at one instant (the plan's clock): the plan preview's 'which waves fit now'."""
    return [dict(evaluate_wave(calendar, {host: scopes[host] for host in wave["hosts"]}, moment, limits), wave=wave["name"])
            for wave in plan["waves"]]


def schedule_text(change: Mapping[str, t.Any], schedule: t.Sequence[Mapping[str, t.Any]]) -> str:
    score = change.get("score") or {}
    lines = [
        f"change {change['change_type']}/{change['classification']}, severity {change.get('severity') or '-'}"
        + (f" (score {score['score']})" if score else "")
        + f", profile {change['profile']}, time to patch "
        + (f"{change['time_to_patch_seconds'] / 3600:g}h" if change.get("time_to_patch_seconds") else "-"),
        f"calendar at {change['clock']} ({change['clock_source']})"
        + (f"; override {change['override']['ticket']} until {change['override']['expires']}" if change.get("override") else ""),
    ]
    width = max([len(str(entry["wave"])) for entry in schedule] or [4])
    for entry in schedule:
        if entry["fits"]:
            detail = "; ".join(entry["notes"]) or "no calendar rule applies"
            lines.append(f"  {str(entry['wave']).ljust(width)}  fits   {detail}")
        else:
            after = f"; next opening {entry['next_open']}" if entry.get("next_open") else "; no opening within 400 days"
            lines.append(f"  {str(entry['wave']).ljust(width)}  waits  {'; '.join(entry['reasons'])}{after}")
    return "\n".join(lines) + "\n"
