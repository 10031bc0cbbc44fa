# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: drift reconciliation of host facts against the desired state. Not a public API.

Pure functions and one accumulator over plain data. The desired state (what every environment should run, the
promotion order, the patches with the version lines that carry their fix, compatibility rules and time-to-patch
targets) comes from a YAML/JSON document, optionally completed from the patch registry. Host facts are the records
that ``fleetpatch.rollout.patch_facts`` returns, one per host, merged by host name (latest ``collected_at`` wins), so
facts of several runs or AWX slices give the same report as one unsliced run.

Every host and service gets exactly one status: ``in_sync``, ``drifted`` (another version than desired, without a
missing fix), ``missing_patch`` (lacks a fix the desired version carries), ``unexpected_version`` (a version or build
the catalogue does not know) or ``unknown`` (unreachable, no data, corrupt data, no desired state). Nothing is ever
``in_sync`` without data. The patch registry adds what facts cannot tell (HostMark, applied to a host's rows after the
classification its shape shares): ``quarantined`` and ``unhealthy`` (the host's latest rollout outcome for the service
was quarantine, or a failure or rollback; whatever its facts say, so never ``in_sync``) and ``not_applicable`` (the
patch that installs the desired version does not apply to the installed version: outside its affected_versions).

The accumulator keeps one small tuple per host (name, times) pointing at the host's shape: what all hosts of one kind
share (attributes, state, per service version, build, state and reason). Classification, the plan of a host's rows
and the text around the values of every row are made once per shape; hosts are merged by name when the report is
built (a fleet whose hosts come once each needs nothing but sorting), so 100,000 hosts cost little more than parsing
their facts.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import dataclasses
import fnmatch
import gc
import hashlib
import heapq
import html
import itertools
import json
import operator
import re
import time
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import version_key

__all__ = [
    "BATCH", "DEFAULT_SLO_TARGETS", "DRIFT_STATUSES", "DesiredState", "DriftError", "FACTS_FORMAT", "FACTS_TYPE",
    "HOST_CLASSES", "HOST_CLASS_LABELS", "HeatCell", "HeatMap", "HostMark", "JsonRowsPiece", "NotApplicable", "Patch",
    "Reconciler", "RegistryApplied", "RegistryMarks", "Report", "Row", "RowJson", "STATUSES", "STATUS_RANK", "VersionSpec",
    "apply_registry", "fingerprint", "fingerprint_start", "format_time", "gc_paused", "host_record", "page_view",
    "parse_desired_state", "parse_duration", "parse_time", "registry_marks", "row_json", "version_line", "with_slo_targets",
]

REPORT_SCHEMA = "fleetpatch.drift-report/1"
FACTS_TYPE = "fleetpatch.patch_facts"
FACTS_FORMAT = 1
STATUSES = ("in_sync", "drifted", "missing_patch", "unexpected_version", "unknown", "not_applicable", "quarantined", "unhealthy")
# statuses that need someone's action: failures in JUnit, what fail_on_drift fails on by default, summary.drift
DRIFT_STATUSES = ("drifted", "missing_patch", "unexpected_version", "quarantined", "unhealthy")
# worst first: the status a matrix cell shows
STATUS_RANK = ("unexpected_version", "unhealthy", "quarantined", "missing_patch", "drifted", "unknown", "not_applicable", "in_sync")
# the registry's latest host outcome of a service (by the time it was recorded) that makes the host's rows of that
# service quarantined or unhealthy, whatever its facts say (plugins/plugin_utils/_store.py's outcomes)
REGISTRY_QUARANTINED = ("quarantined",)
REGISTRY_UNHEALTHY = ("failed", "unhealthy", "unreachable", "rolled_back", "rollback_failed")
SEVERITIES = ("critical", "high", "medium", "low")
DAY = 86400.0
DEFAULT_SLO_TARGETS = {"critical": 7 * DAY, "high": 30 * DAY, "medium": 90 * DAY, "low": 180 * DAY}
MATCH_KEYS = ("region", "tenant", "segment")
NO_SERVICE = "*"
# the start of an unreachable host's reason ("unreachable: <what the connection said>")
UNREACHABLE = "unreachable"
# row fields, in the order the JSON report writes them (docs/drift-report.schema.json)
ROW_FIELDS = ("host", "environment", "service", "status", "reason", "version", "desired", "missing_patches",
              "equivalent_to", "artifact_sha256", "installed_at", "region", "tenant", "segment", "collected_at")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")
_DURATION_UNITS = {"w": 7 * DAY, "d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0}
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE)
_CLAUSE = re.compile(r"^(==|!=|>=|<=|>|<|=)?\s*([0-9A-Za-z*][^\s]*)$")
_LINE_PART = re.compile(r"[0-9A-Za-z]+")


class DriftError(FleetpatchError):
    """The desired state or a facts input cannot be used; str() names where and why."""


@contextlib.contextmanager
def gc_paused() -> t.Iterator[None]:
    """Pause the cyclic garbage collector while a report holds one small tuple per host.

    The report creates no reference cycles; without the pause every full collection walks the growing host table
    again, which costs a large fleet about a fifth of its CPU time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------- small parsers


def parse_duration(value: t.Any, *, where: str) -> float:
    """Seconds of ``7d``, ``12h``, ``1d12h``, ``2w``, ``90m``, ``30s`` or a number of seconds."""
    if isinstance(value, bool):
        raise DriftError(f"{where}: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise DriftError(f"{where}: a duration must not be negative")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise DriftError(f"{where}: {value!r} is not a duration (use e.g. 7d, 12h, 1d12h, 2w, 90m or seconds)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


_DAY_CACHE: dict[str, int] = {}


def parse_time(value: t.Any) -> float | None:
    """Epoch seconds of an ISO 8601 time (``2026-03-01T10:00:00Z``; no zone means UTC), None when not one."""
    if not isinstance(value, str):
        if hasattr(value, "timetuple"):  # a date/datetime that YAML already parsed
            if getattr(value, "utcoffset", None) is not None and value.utcoffset() is not None:
                return calendar.timegm(value.utctimetuple())
            return float(calendar.timegm(value.timetuple()))
        return None
    # fast path for what fleetpatch itself writes: YYYY-MM-DDTHH:MM:SSZ
    if len(value) == 20 and value[10] == "T" and value[19] == "Z":
        day = _DAY_CACHE.get(value[:10])
        try:
            if day is None:
                day = calendar.timegm((int(value[:4]), int(value[5:7]), int(value[8:10]), 0, 0, 0))
                _DAY_CACHE[value[:10]] = day
            return float(day + int(value[11:13]) * 3600 + int(value[14:16]) * 60 + int(value[17:19]))
        except ValueError:
            return None
    match = _TIMESTAMP.match(value.strip())
    if not match:
        return None
    year, month, mday, hour, minute, second, zone = match.groups()
    try:
        epoch = calendar.timegm((int(year), int(month), int(mday), int(hour or 0), int(minute or 0), int(second or 0)))
    except ValueError:
        return None
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        epoch -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return float(epoch)


def format_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    parts = time.gmtime(int(epoch))
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % parts[:6]


def version_line(version: str, depth: int = 2) -> str:
    """The supported-version line of a version: its first ``depth`` parts (``1.4.2`` -> ``1.4``)."""
    core = version.partition("+")[0].partition("-")[0]
    return ".".join(_LINE_PART.findall(core)[:depth])


_KEYS: dict[str, tuple[t.Any, ...]] = {}


def vkey(version: str) -> tuple[t.Any, ...]:
    key = _KEYS.get(version)
    if key is None:
        key = _KEYS[version] = version_key(version)
    return key


@dataclasses.dataclass(frozen=True)
class VersionSpec:
    """``>=1.0.1,<2``, ``==1.4.*``, ``!=1.2.0`` or a bare version (exact). Every clause must hold."""

    text: str
    clauses: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, value: t.Any, *, where: str) -> VersionSpec:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
            raise DriftError(f"{where}: {value!r} is not a version range (e.g. '>=1.0.1,<2')")
        clauses = []
        for part in str(value).split(","):
            match = _CLAUSE.match(part.strip())
            if not match:
                raise DriftError(f"{where}: {part.strip()!r} is not a version clause (e.g. '>=1.0.1')")
            operator, version = match.group(1) or "==", match.group(2)
            operator = "==" if operator == "=" else operator
            if "*" in version and operator not in ("==", "!="):
                raise DriftError(f"{where}: a wildcard only goes with == or != ({part.strip()!r})")
            clauses.append((operator, version))
        return cls(text=str(value).strip(), clauses=tuple(clauses))

    def matches(self, version: str) -> bool:
        for operator, bound in self.clauses:
            if "*" in bound:
                hit = fnmatch.fnmatchcase(version, bound)
                ok = hit if operator == "==" else not hit
            else:
                left, right = vkey(version), vkey(bound)
                ok = {"==": left == right, "!=": left != right, ">=": left >= right, "<=": left <= right,
                      ">": left > right, "<": left < right}[operator]
            if not ok:
                return False
        return True


# --------------------------------------------------------------------------------------------- desired state


@dataclasses.dataclass(frozen=True)
class Desired:
    version: str
    sha256: str | None = None
    source: str = "desired state"


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    name: str
    builds: t.Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    supported_lines: tuple[str, ...] | None = None
    match: t.Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def applies_to(self, attrs: t.Sequence[str | None]) -> bool:
        """attrs: (region, tenant, segment) of a host."""
        for index, key in enumerate(MATCH_KEYS):
            patterns = self.match.get(key)
            if patterns and not (attrs[index] and any(fnmatch.fnmatchcase(t.cast(str, attrs[index]), p) for p in patterns)):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class Patch:
    """One remediation: a fix, possibly delivered on several version lines (backports count once)."""

    id: str
    service: str
    fixed_in: tuple[str, ...]
    severity: str | None = None
    released_at: float | None = None
    patch_ids: tuple[str, ...] = ()
    affects: VersionSpec | None = None
    title: str | None = None
    source: str = "desired state"

    def applies(self, version: str) -> bool:
        return self.affects is None or self.affects.matches(version)

    def fixed(self, version: str, depth: int) -> bool:
        """version carries the fix: at or after a fix on its own line, or newer than every fix (forward-ported)."""
        line = version_line(version, depth)
        same = [fix for fix in self.fixed_in if version_line(fix, depth) == line]
        key = vkey(version)
        if same:
            return any(key >= vkey(fix) for fix in same)
        return all(key > vkey(fix) for fix in self.fixed_in)

    def as_dict(self) -> dict[str, t.Any]:
        return {"id": self.id, "service": self.service, "fixed_in": list(self.fixed_in), "severity": self.severity,
                "released_at": format_time(self.released_at), "patch_ids": list(self.patch_ids),
                "affects": self.affects.text if self.affects else None, "title": self.title, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Compatibility: hosts of ``service`` (at ``versions``) need ``requires_service`` at ``requires``."""

    name: str
    service: str
    requires_service: str
    requires: VersionSpec
    versions: VersionSpec | None = None
    scope: str = "environment"
    environments: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, t.Any]:
        return {"name": self.name, "service": self.service, "versions": self.versions.text if self.versions else None,
                "requires": {"service": self.requires_service, "versions": self.requires.text}, "scope": self.scope}


@dataclasses.dataclass(frozen=True)
class DesiredState:
    promotion: tuple[str, ...] = ()
    environments: t.Mapping[str, t.Mapping[str, Desired]] = dataclasses.field(default_factory=dict)
    services: t.Mapping[str, ServiceSpec] = dataclasses.field(default_factory=dict)
    patches: tuple[Patch, ...] = ()
    rules: tuple[Rule, ...] = ()
    line_depth: int = 2
    slo_targets: t.Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SLO_TARGETS))
    slo_target_source: str = "default"
    slo_environments: tuple[str, ...] | None = None
    source: str = "desired state"

    def desired(self, environment: str, service: str) -> Desired | None:
        return self.environments.get(environment, {}).get(service)

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "source": self.source,
            "promotion": list(self.promotion),
            "line_depth": self.line_depth,
            "environments": {env: {svc: {"version": d.version, "sha256": d.sha256, "source": d.source}
                                   for svc, d in sorted(services.items())}
                             for env, services in sorted(self.environments.items())},
            "patches": [patch.as_dict() for patch in self.patches],
            "compatibility": [rule.as_dict() for rule in self.rules],
            "slo": {"targets": {sev: self.slo_targets[sev] for sev in _severity_order(self.slo_targets)},
                    "target_source": self.slo_target_source,
                    "environments": list(self.slo_environments) if self.slo_environments is not None else None},
        }


def _severity_order(names: t.Iterable[str]) -> list[str]:
    return sorted(names, key=lambda name: (SEVERITIES.index(name) if name in SEVERITIES else len(SEVERITIES), name))


def _strings(value: t.Any, *, where: str) -> tuple[str, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)) or not str(item).strip():
            raise DriftError(f"{where}: {item!r} is not a non-empty string")
        out.append(str(item).strip())
    return tuple(out)


def _mapping(value: t.Any, *, where: str) -> t.Mapping[str, t.Any]:
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise DriftError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _version(value: t.Any, *, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise DriftError(f"{where}: {value!r} is not a version")
    return str(value).strip()


_KNOWN_TOP = {"promotion", "environments", "services", "patches", "compatibility", "slo", "line_depth", "schema"}


def parse_desired_state(data: t.Any, *, source: str = "desired state") -> DesiredState:
    """Validate a desired-state document (docs/drift.md) and return it typed; raise DriftError naming the field."""
    data = _mapping(data, where=source)
    unknown = sorted(set(data) - _KNOWN_TOP)
    if unknown:
        raise DriftError(f"{source}: unknown key(s) {', '.join(unknown)} (expected {', '.join(sorted(_KNOWN_TOP))})")
    promotion = _strings(data.get("promotion") or [], where=f"{source}: promotion") if data.get("promotion") else ()
    if len(set(promotion)) != len(promotion):
        raise DriftError(f"{source}: promotion lists an environment twice")
    depth = data.get("line_depth", 2)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 4:
        raise DriftError(f"{source}: line_depth must be an integer from 1 to 4")

    services = _parse_services(data.get("services"), source=source)
    environments = _parse_environments(data.get("environments"), source=source)
    # an environment in the promotion order without an entry here may take its desired state from the registry
    patches = _parse_patches(data.get("patches"), source=source)
    rules = _parse_rules(data.get("compatibility"), source=source)
    slo = _parse_slo(data.get("slo"), source=source)
    return DesiredState(promotion=promotion, environments=environments, services=services, patches=patches,
                        rules=rules, line_depth=depth, slo_targets=slo.targets, slo_target_source=slo.target_source,
                        slo_environments=slo.environments, source=source)


def _parse_services(value: t.Any, *, source: str) -> dict[str, ServiceSpec]:
    """The desired state's services: known builds (version -> sha256), supported lines, facts match patterns."""
    services: dict[str, ServiceSpec] = {}
    for name, spec in _mapping(value, where=f"{source}: services").items():
        where = f"{source}: services.{name}"
        spec = _mapping(spec, where=where)
        extra = sorted(set(spec) - {"builds", "supported_lines", "match"})
        if extra:
            raise DriftError(f"{where}: unknown key(s) {', '.join(extra)} (expected builds, supported_lines, match)")
        builds: dict[str, str | None] = {}
        raw_builds = spec.get("builds") or {}
        if isinstance(raw_builds, list):
            raw_builds = {_version(item, where=f"{where}.builds"): None for item in raw_builds}
        for version, build in _mapping(raw_builds, where=f"{where}.builds").items():
            sha = build.get("sha256") if isinstance(build, t.Mapping) else build
            if sha is not None and not (isinstance(sha, str) and re.match(r"^[0-9a-fA-F]{64}$", sha)):
                raise DriftError(f"{where}.builds.{version}: sha256 must be 64 hex digits")
            builds[_version(version, where=f"{where}.builds")] = sha.lower() if sha else None
        lines = spec.get("supported_lines")
        match = {}
        for key, patterns in _mapping(spec.get("match"), where=f"{where}.match").items():
            if key not in MATCH_KEYS:
                raise DriftError(f"{where}.match: unknown key {key} (expected {', '.join(MATCH_KEYS)})")
            match[key] = _strings(patterns, where=f"{where}.match.{key}")
        services[str(name)] = ServiceSpec(name=str(name), builds=builds,
                                          supported_lines=_strings(lines, where=f"{where}.supported_lines") if lines else None,
                                          match=match)
    return services


def _parse_environments(value: t.Any, *, source: str) -> dict[str, dict[str, Desired]]:
    """The desired version (and optionally sha256) of every service per environment."""
    environments: dict[str, dict[str, Desired]] = {}
    for env, wanted in _mapping(value, where=f"{source}: environments").items():
        entries: dict[str, Desired] = {}
        for service, value in _mapping(wanted, where=f"{source}: environments.{env}").items():
            where = f"{source}: environments.{env}.{service}"
            if isinstance(value, t.Mapping):
                extra = sorted(set(value) - {"version", "sha256"})
                if extra:
                    raise DriftError(f"{where}: unknown key(s) {', '.join(extra)} (expected version, sha256)")
                sha = value.get("sha256")
                if sha is not None and not (isinstance(sha, str) and re.match(r"^[0-9a-fA-F]{64}$", sha)):
                    raise DriftError(f"{where}.sha256 must be 64 hex digits")
                entries[str(service)] = Desired(_version(value.get("version"), where=f"{where}.version"),
                                                sha.lower() if sha else None, source)
            else:
                entries[str(service)] = Desired(_version(value, where=where), None, source)
        environments[str(env)] = entries
    return environments


def _parse_patches(value: t.Any, *, source: str) -> tuple[Patch, ...]:
    """The patches the fleet must carry: id, service, the versions that fix it, severity and release time."""
    patches = []
    seen: set[str] = set()
    for index, item in enumerate(value or []):
        where = f"{source}: patches[{index}]"
        item = _mapping(item, where=where)
        extra = sorted(set(item) - {"id", "service", "fixed_in", "severity", "released_at", "patch_ids", "affects", "title"})
        if extra:
            raise DriftError(f"{where}: unknown key(s) {', '.join(extra)}")
        patch_id = _strings(item.get("id"), where=f"{where}.id")[0] if item.get("id") else None
        if not patch_id:
            raise DriftError(f"{where}: id is required")
        if patch_id in seen:
            raise DriftError(f"{where}: patch {patch_id} is listed twice")
        seen.add(patch_id)
        if not item.get("service"):
            raise DriftError(f"{where} ({patch_id}): service is required")
        if not item.get("fixed_in"):
            raise DriftError(f"{where} ({patch_id}): fixed_in (the version(s) that carry the fix) is required")
        fixed_in = tuple(_version(v, where=f"{where}.fixed_in") for v in
                         (item["fixed_in"] if isinstance(item["fixed_in"], list) else [item["fixed_in"]]))
        released = item.get("released_at")
        released_at = parse_time(released) if released is not None else None
        if released is not None and released_at is None:
            raise DriftError(f"{where} ({patch_id}): released_at {released!r} is not an ISO 8601 time")
        severity = str(item["severity"]).lower() if item.get("severity") is not None else None
        patches.append(Patch(
            id=patch_id, service=str(item["service"]), fixed_in=fixed_in, severity=severity, released_at=released_at,
            patch_ids=_strings(item["patch_ids"], where=f"{where}.patch_ids") if item.get("patch_ids") else (),
            affects=VersionSpec.parse(item["affects"], where=f"{where}.affects") if item.get("affects") else None,
            title=str(item["title"]) if item.get("title") else None, source=source))
    return tuple(patches)


def _parse_rules(value: t.Any, *, source: str) -> tuple[Rule, ...]:
    """Compatibility rules: a service's versions that require versions of another service."""
    rules = []
    for index, item in enumerate(value or []):
        where = f"{source}: compatibility[{index}]"
        item = _mapping(item, where=where)
        extra = sorted(set(item) - {"name", "service", "versions", "requires", "scope", "environments"})
        if extra:
            raise DriftError(f"{where}: unknown key(s) {', '.join(extra)}")
        requires = _mapping(item.get("requires"), where=f"{where}.requires")
        if not item.get("service") or not requires.get("service") or not requires.get("versions"):
            raise DriftError(f"{where}: needs service and requires.service with requires.versions")
        scope = item.get("scope", "environment")
        if scope not in ("environment", "host"):
            raise DriftError(f"{where}: scope must be environment or host")
        versions = VersionSpec.parse(item["versions"], where=f"{where}.versions") if item.get("versions") else None
        needed = VersionSpec.parse(requires["versions"], where=f"{where}.requires.versions")
        name = str(item.get("name") or f"{item['service']}{' ' + versions.text if versions else ''} requires "
                   f"{requires['service']} {needed.text}")
        rules.append(Rule(name=name, service=str(item["service"]), requires_service=str(requires["service"]), requires=needed,
                          versions=versions, scope=scope,
                          environments=_strings(item["environments"], where=f"{where}.environments") if item.get("environments") else None))
    return tuple(rules)


class SloSettings(t.NamedTuple):
    """The desired state's time-to-patch settings (its ``slo`` key)."""

    targets: dict[str, float]  # severity -> seconds
    target_source: str  # where the targets came from: "default" or the desired state's source
    environments: tuple[str, ...] | None  # the environments they apply to; None: every environment


def _parse_slo(value: t.Any, *, source: str) -> SloSettings:
    """Time-to-patch targets per severity (and where they came from), and the environments they apply to."""
    slo = _mapping(value, where=f"{source}: slo")
    extra = sorted(set(slo) - {"targets", "environments"})
    if extra:
        raise DriftError(f"{source}: slo: unknown key(s) {', '.join(extra)} (expected targets, environments)")
    targets = dict(DEFAULT_SLO_TARGETS)
    target_source = "default"
    if slo.get("targets"):
        targets = {str(sev).lower(): parse_duration(value, where=f"{source}: slo.targets.{sev}")
                   for sev, value in _mapping(slo["targets"], where=f"{source}: slo.targets").items()}
        target_source = source
    slo_envs = _strings(slo["environments"], where=f"{source}: slo.environments") if slo.get("environments") else None
    return SloSettings(targets, target_source, slo_envs)


def with_slo_targets(desired: DesiredState, targets: t.Mapping[str, t.Any], *, source: str) -> DesiredState:
    """Targets from the patch policy (or a role variable) win over the desired-state file's."""
    if not targets:
        return desired
    parsed = {str(sev).lower(): parse_duration(value, where=f"{source}: {sev}") for sev, value in targets.items()}
    return dataclasses.replace(desired, slo_targets=parsed, slo_target_source=source)


PATCHED_OUTCOMES = ("patched", "rolled_out", "success", "ok")


class RegistryApplied(t.NamedTuple):
    """apply_registry's result: the completed desired state, and what the registry added (patches used, derived versions)."""

    desired: DesiredState
    info: dict[str, t.Any]


def apply_registry(desired: DesiredState, views: t.Iterable[t.Mapping[str, t.Any]],
                   host_environments: t.Mapping[str, str]) -> RegistryApplied:
    """Complete the desired state from the patch registry's folded patch records.

    A registry patch that the desired state names (by id, in ``patch_ids``, or by a ``fixed_in`` version of the same
    service) lends it missing severity and release time; any other becomes a remediation of its own. An environment
    that the desired state gives no version of a service takes the newest target version that a completed rollout
    (state ``rolled_out``) patched on one of its hosts.
    """
    patches = list(desired.patches)
    derived: dict[str, dict[str, tuple[Desired, tuple[t.Any, ...]]]] = {}
    used = 0
    for view in views:
        patch_id, service, target = view.get("patch_id"), view.get("service"), view.get("target_version")
        if not patch_id or not service or not target:
            continue
        used += 1
        target = str(target)
        severity = str(view["severity"]).lower() if view.get("severity") else None
        released = parse_time(view.get("registered_at"))
        for index, patch in enumerate(patches):
            if patch.service == service and (patch.id == patch_id or patch_id in patch.patch_ids or target in patch.fixed_in):
                patches[index] = dataclasses.replace(
                    patch, severity=patch.severity or severity,
                    released_at=patch.released_at if patch.released_at is not None else released,
                    patch_ids=patch.patch_ids if patch_id in patch.patch_ids else patch.patch_ids + (patch_id,))
                break
        else:
            patches.append(Patch(id=patch_id, service=service, fixed_in=(target,), severity=severity, released_at=released,
                                 patch_ids=(patch_id,), title=view.get("purpose"), source="registry"))
        if view.get("state") != "rolled_out":
            continue
        sha = (view.get("artifact") or {}).get("sha256") if isinstance(view.get("artifact"), t.Mapping) else None
        for host, outcome in (view.get("hosts") or {}).items():
            if not isinstance(outcome, t.Mapping) or outcome.get("outcome") not in PATCHED_OUTCOMES:
                continue
            env = host_environments.get(host)
            if env is None or service in desired.environments.get(env, {}):
                continue
            current = derived.setdefault(env, {}).get(service)
            if current is None or vkey(target) > current[1]:
                derived[env][service] = (Desired(target, sha, f"registry {patch_id}"), vkey(target))
    environments = {env: dict(services) for env, services in desired.environments.items()}
    for env, services in derived.items():
        for service, (wanted, _key) in services.items():
            environments.setdefault(env, {})[service] = wanted
    derived_text = [f"{env}/{svc}={d.version} ({d.source})" for env, services in derived.items() for svc, (d, _k) in services.items()]
    info = {"patches": used, "derived": sorted(derived_text)}
    return RegistryApplied(dataclasses.replace(desired, patches=tuple(patches), environments=environments), info)


class NotApplicable(t.NamedTuple):
    """A patch whose rollout found a host's installed version outside the patch's affected_versions."""

    target: str  # the version the patch installs
    affected: tuple[str, ...]  # the patch's affected_versions (empty: it has no list)
    recorded: str | None  # the version the rollout recorded on the host
    patch_id: str


@dataclasses.dataclass(frozen=True)
class HostMark:
    """What the patch registry knows about one host and service that the host's facts cannot tell.

    ``status`` (quarantined or unhealthy, with ``reason``) comes from the host's latest recorded outcome for the
    service across every patch (REGISTRY_QUARANTINED, REGISTRY_UNHEALTHY; None when that outcome is fine); it overrides
    whatever the facts say, so such a host is never in_sync. ``not_applicable`` lists the patches whose rollout found the
    installed version outside their affected_versions (NotApplicable).
    """

    service: str
    status: str | None = None
    reason: str | None = None
    not_applicable: tuple[NotApplicable, ...] = ()

    def not_applicable_reason(self, verdict: Verdict) -> str | None:
        """Why a row the facts call drifted or missing_patch is not_applicable instead, or None when it is not.

        Only for the patch that installs the row's desired version, and only while the version still lies outside its
        affected_versions (without a list: while the host still runs the version the rollout recorded).
        """
        version = verdict.version
        if verdict.status not in ("drifted", "missing_patch") or version is None or version == verdict.desired:
            return None
        for entry in self.not_applicable:
            affected = entry.affected
            if entry.target != verdict.desired or (version in affected if affected else version != entry.recorded):
                continue
            scope = ", ".join(affected[:10]) + (f" and {len(affected) - 10} more" if len(affected) > 10 else "")
            return (f"runs {version}, and {entry.patch_id}, which installs desired {entry.target}, applies only to {scope}"
                    if affected else f"runs {version}, which the rollout of {entry.patch_id} (desired {entry.target}) recorded as not applicable")
        return None


def _short(value: t.Any, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RegistryMarks(t.NamedTuple):
    """registry_marks' result: per host, its HostMarks (one per service); and how many of each kind there are."""

    marks: dict[str, tuple[HostMark, ...]]
    counts: dict[str, int]  # quarantined, unhealthy, not_applicable


def registry_marks(views: t.Iterable[t.Mapping[str, t.Any]]) -> RegistryMarks:
    """Per host, what the registry's host rows say beyond the facts (HostMark, one per service), and counts of them.

    ``views`` are the registry's folded patch records (their ``hosts``: host -> the latest outcome of that patch's runs,
    with ``at``, ``reason`` and ``version``). A host's latest outcome for a service is the one recorded last across every
    patch of the service (by ``at``; at equal times the patch registered later).
    """
    latest: dict[tuple[str, str], tuple[tuple[str, int], str, t.Mapping[str, t.Any]]] = {}
    not_applicable: dict[tuple[str, str], list[NotApplicable]] = {}
    for order, view in enumerate(views):
        service, patch_id, hosts = view.get("service"), view.get("patch_id"), view.get("hosts")
        if not isinstance(service, str) or not service or not isinstance(patch_id, str) or not isinstance(hosts, t.Mapping):
            continue
        target = view.get("target_version")
        raw = view.get("affected_versions")
        affected = tuple(str(item) for item in raw if isinstance(item, (str, int, float)) and not isinstance(item, bool)) \
            if isinstance(raw, (list, tuple)) else ()
        for host, entry in hosts.items():
            if not isinstance(host, str) or not isinstance(entry, t.Mapping):
                continue
            at = entry.get("at")
            key = (at if isinstance(at, str) else "", order)
            current = latest.get((host, service))
            if current is None or key > current[0]:
                latest[(host, service)] = (key, patch_id, entry)
            if entry.get("outcome") == "not_applicable" and isinstance(target, (str, int, float)) and str(target):
                version = entry.get("version")
                not_applicable.setdefault((host, service), []).append(
                    NotApplicable(str(target), affected, str(version) if isinstance(version, (str, int, float)) else None, patch_id))
    marks: dict[str, list[HostMark]] = {}
    counts = {"quarantined": 0, "unhealthy": 0, "not_applicable": 0}
    for host, service in sorted(set(latest) | set(not_applicable)):
        status = reason = None
        found = latest.get((host, service))
        if found is not None:
            (at, _order), patch_id, entry = found
            outcome = entry.get("outcome")
            why = f": {_short(entry['reason'])}" if entry.get("reason") else ""
            if outcome in REGISTRY_QUARANTINED:
                status, reason = "quarantined", f"quarantined by the rollout of {patch_id} at {at or 'an unrecorded time'}{why}"
            elif outcome in REGISTRY_UNHEALTHY:
                status = "unhealthy"
                reason = f"{str(outcome).replace('_', ' ')} in the rollout of {patch_id} at {at or 'an unrecorded time'}{why}"
        listed = tuple(not_applicable.get((host, service), ()))
        if status is None and not listed:
            continue
        if status is not None:
            counts[status] += 1
        counts["not_applicable"] += len(listed)
        marks.setdefault(host, []).append(HostMark(service, status, reason, listed))
    return RegistryMarks({host: tuple(found) for host, found in marks.items()}, counts)


# --------------------------------------------------------------------------------------------- host records


def host_record(host: str, *, attrs: t.Mapping[str, t.Any], result: t.Mapping[str, t.Any] | None,
                collected_at: str) -> dict[str, t.Any]:
    """One facts record (the line format of a facts file) from a host's inventory attributes and its registered
    patch_facts result (None when the host returned nothing)."""
    record: dict[str, t.Any] = {
        "host": host,
        "environment": attrs.get("environment"),
        "region": attrs.get("region"),
        "tenant": attrs.get("tenant"),
        "segment": attrs.get("segment"),
        "collected_at": collected_at,
        "state": "ok",
        "reason": None,
        "services": {},
        "packages": {},
    }
    facts = None
    if isinstance(result, t.Mapping):
        facts = (result.get("ansible_facts") or {}).get("fleetpatch_patch") or result.get("patch_facts")
    if result is None:
        record.update(state="no_data", reason="no facts from this host (not in the run, or it left the play)")
    elif result.get("unreachable"):
        record.update(state="unreachable", reason=f"{UNREACHABLE}: {str(result.get('msg') or '').strip()[:500]}")
    elif result.get("skipped"):
        record.update(state="no_data", reason=f"facts were skipped: {str(result.get('skip_reason') or '').strip()[:200]}")
    elif result.get("failed") or result.get("failed_when_result") or not isinstance(facts, t.Mapping):
        record.update(state="failed", reason=f"facts failed: {str(result.get('msg') or 'no patch facts returned').strip()[:500]}")
    else:
        record["collected_at"] = facts.get("collected_at") or collected_at
        record["services"] = dict(facts.get("services") or {})
        record["packages"] = dict(facts.get("packages") or {})
    return record


# --------------------------------------------------------------------------------------------- the accumulator


json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C-accelerated, quotes and escapes


def _j(value: t.Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return json_str(value)
    return json.dumps(value, ensure_ascii=False)


class Verdict:
    """The status of every host that runs one version (and build) of a service in one environment.

    Rows point at their verdict, so classification and most of each row's JSON happen once per distinct version.
    """

    __slots__ = ("environment", "service", "status", "reason", "version", "desired", "missing", "equivalent_to", "sha256",
                 "count", "installed", "first_host", "fragment", "fingerprint_fragment", "facts_status")

    def __init__(self, environment: str, service: str, status: str, reason: str | None, *, version: str | None = None,
                 desired: str | None = None, missing: tuple[str, ...] = (), equivalent_to: str | None = None,
                 sha256: str | None = None) -> None:
        self.environment, self.service, self.status, self.reason = environment, service, status, reason
        self.version, self.desired, self.missing, self.equivalent_to, self.sha256 = version, desired, missing, equivalent_to, sha256
        self.count = 0
        # the status the host's facts alone give (another than status when the registry overrides it: HostMark)
        self.facts_status = status
        # where its hosts' installed_at values are: (index in the host tuple, host tuples)
        self.installed: list[tuple[int, list[t.Any]]] = []
        self.first_host: str | None = None
        # everything of a row's JSON between the host and installed_at (ROW_FIELDS order)
        self.fragment = self._fragment(reason)
        # what the fingerprint hashes instead: the same, but an unreachable host's reason without the transport's
        # wording, which varies for one cause (ansible-core's ssh connection reports a refused connection with or
        # without ssh's own message, depending on whether ssh had exited when the module was written to it)
        self.fingerprint_fragment = (self._fragment(UNREACHABLE) if status == "unknown" and reason is not None
                                     and reason.startswith(UNREACHABLE + ": ") else self.fragment)

    def _fragment(self, reason: str | None) -> str:
        return (',"environment":' + _j(self.environment) + ',"service":' + _j(self.service) + ',"status":"' + self.status
                + '","reason":' + _j(reason) + ',"version":' + _j(self.version) + ',"desired":' + _j(self.desired)
                + ',"missing_patches":' + _j(list(self.missing)) + ',"equivalent_to":' + _j(self.equivalent_to)
                + ',"artifact_sha256":' + _j(self.sha256))

    def as_dict(self) -> dict[str, t.Any]:
        return {"status": self.status, "reason": self.reason, "desired": self.desired, "missing": list(self.missing),
                "equivalent_to": self.equivalent_to}


# Rows, hosts and the rows of a shape stay plain tuples, on purpose: they are made and read once per host (or per row)
# on the measured hot path (bench/drift_bench.py: 100,000 hosts), where a tuple display and unpacking are the cheapest
# Python has (a NamedTuple's constructor is a function call per host; shapes already cache everything else). The named
# types (NamedTuple) are for what is made once per report, patch or piece of hosts.
# A row: (host, verdict, installed_at, collected_at, (environment, region, tenant, segment))
Row = t.Tuple[str, Verdict, t.Optional[str], str, t.Tuple[str, t.Optional[str], t.Optional[str], t.Optional[str]]]
# A host: (host, collected_at or "", its Shape, the installed_at of each of its services in the order the record
# names them ("" when it gives none), "")
_HostEntry = t.Tuple[t.Any, ...]
# A row of a shape: (verdict, index of the row's installed_at in the host tuple, classified from the host's own facts,
# installed_at given)
_PlanRow = t.Tuple[Verdict, int, bool, bool]
# the fields of a record that add_all's short way reads, and what makes a service's facts a kind (with its name)
_QUICK_RECORD_FIELDS = operator.itemgetter("host", "collected_at", "state", "environment", "region", "tenant", "segment",
                                           "services")
_FACT_KEY_FIELDS = operator.itemgetter("version", "artifact_sha256", "state", "reason")
_FIRST = operator.itemgetter(0)
# records a facts file hands on at a time (read_facts_file, Reconciler.add_batch)
BATCH = 64
# records read before they are merged by host at the latest (Reconciler._merge)
_MERGE_AT = 250_000
# the characters a JSON string holds as they are: printable ASCII but " and \\
_JSON_PLAIN = bytes(sorted(set(range(0x20, 0x7f)) - set(b'"\\')))


def _by_name(entry: tuple[t.Any, ...]) -> str:
    return t.cast(str, entry[0][1])


def _canonical_time(value: t.Any) -> str | None:
    """A time as fleetpatch writes it (YYYY-MM-DDTHH:MM:SSZ: sorts by time, needs no JSON escaping), or None."""
    if isinstance(value, str) and len(value) == 20 and value[10] == "T" and value[19] == "Z":
        return value
    return format_time(parse_time(value)) if value else None


def _service_parts(raw: dict[t.Any, t.Any], parts: list[t.Any], entry: list[t.Any]) -> bool:
    """Reconciler._add_record's part for the services of a record: per service, its part of the shape's key (name,
    version, sha256, state, reason, installed_at known) onto parts and its installed_at onto the host's entry. True when
    every state and reason is text or none (equal ones say the same: 1 and True would not)."""
    exact = True
    for name, fact in raw.items():
        if not isinstance(fact, dict):
            parts += (name, None, None, "corrupt", "service facts are not an object", False)
            entry.append("")
            continue
        fget = fact.get
        version, sha, installed = fget("version"), fget("artifact_sha256"), fget("installed_at")
        if installed is not None and (not isinstance(installed, str) or len(installed) != 20 or installed[19] != "Z"):
            installed = _canonical_time(installed)
        fstate, freason = fget("state"), fget("reason")
        if not ((fstate is None or fstate.__class__ is str) and (freason is None or freason.__class__ is str)):
            exact = False
        fstate = fstate or "ok"
        # the reason of an unknown row (an absent service has its own)
        freason = None if fstate in ("ok", "absent") else freason or f"host manifest is {fstate}"
        parts += (name, version, sha, fstate, freason, installed is not None)
        entry.append(installed or "")
    return exact


class Shape:
    """What every host of one kind has in common: attributes, state, and per service its key, state and reason.

    A large fleet has few kinds of hosts (environment, region, tenant, segment, which version and build of which
    service, whether times are known); a host is a small tuple pointing at its shape, so that classification, the
    plan of its rows and the text around every value of a row are made once per shape instead of once per host.
    """

    __slots__ = ("attrs", "state", "reason", "collected", "came_ok", "services", "blank", "token", "rows", "violations",
                 "members", "base", "marks")

    def __init__(self, attrs: tuple[t.Any, ...], state: t.Any, reason: str | None, collected: bool,
                 services: t.Sequence[t.Any], came_ok: bool | None = None) -> None:
        """services: (name, version, sha256, state, reason, installed_at given) of each service, flat, in record order;
        came_ok: the record said state ok (though it became failed for want of services)."""
        self.attrs = attrs
        self.state = state
        self.came_ok = state == "ok" if came_ok is None else came_ok
        self.reason = reason
        self.collected = collected  # the host tuple's collected_at is not ""
        env = attrs[0]
        # (key (environment, name, version, sha256), state, reason, index of its installed_at in the host tuple,
        # installed_at given), sorted by name
        found = []
        for index in range(0, len(services), 6):
            name, version, sha, fstate, freason, given = services[index:index + 6]
            key = (env, name, version if isinstance(version, str) else None, sha if isinstance(sha, str) else None)
            found.append((key, fstate, freason, 3 + index // 6, given))
        if len(found) > 2 or (len(found) == 2 and found[0][0][1] > found[1][0][1]):
            found.sort(key=_by_name)
        self.services = tuple(found)
        self.blank = 3 + len(found)  # index of the host tuple's trailing ""
        self.token: object = None
        self.rows: tuple[_PlanRow, ...] = ()
        self.violations: tuple[tuple[int, str, str, str], ...] = ()
        self.members: list[_HostEntry] = []
        # a shape of hosts the registry marks: the shape of their facts, and the marks (Reconciler._marked_entries)
        self.base: Shape | None = None
        self.marks: tuple[HostMark, ...] | None = None

    def marked(self, marks: tuple[HostMark, ...]) -> Shape:
        """This shape for hosts that the registry marks so: the same facts, rows made from this shape's (_plan)."""
        shape = Shape.__new__(Shape)
        for name in Shape.__slots__:
            setattr(shape, name, getattr(self, name))
        shape.token, shape.rows, shape.violations, shape.members = None, (), (), []
        shape.base, shape.marks = self, marks
        return shape


class Reconciler:
    """Feed facts records (``add``), then ``build`` the report. Records of one host merge by ``collected_at``."""

    def __init__(self, desired: DesiredState, *, now: float) -> None:
        self.now = now
        # the hosts merged so far (host -> its tuple), and the tuples of the records read since, in the order read:
        # merged when needed (build), so that a fleet whose hosts come once each is merged by sorting alone
        self._hosts: dict[str, _HostEntry] = {}
        self._read: list[_HostEntry] = []
        # the text values of the keys of _quick_shapes, each kept once
        self._values: dict[str, str] = {}
        # attributes other than text, each kept once (_add_record)
        self._attrs: dict[tuple[t.Any, ...], tuple[t.Any, ...]] = {}
        # collection times, each kept once (the hosts of a run share a few thousand)
        self._times: dict[str, str] = {}
        self._shapes: dict[tuple[t.Any, ...], Shape] = {}
        # (environment, region, tenant, segment, then per service name and _FACT_KEY_FIELDS) of a record that
        # add_all takes the short way -> its shape
        self._quick_shapes: dict[tuple[t.Any, ...], Shape] = {}
        self.rejected: list[str] = []
        self.rejected_count = 0
        self.records = 0
        # host -> what the patch registry says of it beyond its facts (use_registry_marks)
        self._marks: dict[str, tuple[HostMark, ...]] = {}
        self.use_desired(desired)

    def use_registry_marks(self, marks: t.Mapping[str, tuple[HostMark, ...]]) -> None:
        """Apply the registry's host marks (registry_marks): quarantined, unhealthy and not_applicable hosts.

        They are applied to the rows of a host's shape when the report is built, after (and apart from) the
        classification that every host of the shape shares, so the cache of verdicts per version stays valid.
        """
        self._marks = dict(marks)

    def use_desired(self, desired: DesiredState) -> None:
        """Reconcile against this desired state (for example once completed from the registry's records)."""
        self.desired = desired
        self._verdicts: dict[tuple[t.Any, ...], Verdict] = {}
        # (verdict, mark) -> the verdict of a marked host's row (the same verdict when the mark does not change it)
        self._marked_verdicts: dict[tuple[Verdict, HostMark], Verdict] = {}
        self._fixed: dict[tuple[int, str], bool] = {}
        self._by_service: dict[str, list[tuple[int, Patch]]] = collections.defaultdict(list)
        for index, patch in enumerate(desired.patches):
            self._by_service[patch.service].append((index, patch))
        self._applicable: dict[tuple[t.Any, ...], tuple[str, ...]] = {}
        self._supported: dict[tuple[str, str], frozenset[str]] = {}
        self._host_rules = [rule for rule in desired.rules if rule.scope == "host"]

    # -- input

    def reject(self, why: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < 20:
            self.rejected.append(why)

    def add(self, record: t.Any) -> None:
        self.add_all((record,))

    def add_batch(self, records: t.Iterable[t.Any]) -> None:
        """Merge a batch of records in (add_all; a facts file is read and merged a batch of lines at a time)."""
        self.add_all(records)

    def add_all(self, records: t.Iterable[t.Any]) -> None:
        """Merge records in, one per host (a record of a host already held replaces it only when collected later).

        This loop runs once per host of the fleet: it keeps the host's name and times in a small tuple that points at
        the host's shape (shared by every host of the same kind), and nothing else. A record as fleetpatch writes it
        (every field there, times canonical, state ok, every service with an installation time) of a kind seen before
        takes the short way; any other the general one (_add_record), with the same result. The short way of a host
        with one or two services (bench/drift_bench.py measures them) is written out here; three or more services and a
        host without data are _quick_many and _quick_failed (a call more per host).
        """
        read, quick, intern = self._read.append, self._quick_shapes, self._times.setdefault
        quick_many, quick_failed = self._quick_many, self._quick_failed
        record_fields = _QUICK_RECORD_FIELDS
        add_record = self._add_record
        count = self.records
        try:
            for record in records:
                count += 1
                if record.__class__ is not dict:
                    add_record(record, count)
                    continue
                key = None
                try:
                    host, collected, state, env, region, tenant, segment, raw = record_fields(record)
                    entry = None
                    if host.__class__ is str and host and state == "ok" and env.__class__ is str and env and raw.__class__ is dict:
                        if len(raw) == 2:
                            (name1, fact1), (name2, fact2) = raw.items()
                            if fact1.__class__ is fact2.__class__ is dict:
                                installed1, installed2 = fact1["installed_at"], fact2["installed_at"]
                                # times as fleetpatch writes them: str of 20 characters that end in Z
                                if (collected.__class__ is installed1.__class__ is installed2.__class__ is str
                                        and len(collected) == len(installed1) == len(installed2) == 20
                                        and collected[19] == installed1[19] == installed2[19] == "Z"):
                                    key = (env, region, tenant, segment, name1, fact1["version"], fact1["artifact_sha256"],
                                           fact1["state"], fact1["reason"], name2, fact2["version"], fact2["artifact_sha256"],
                                           fact2["state"], fact2["reason"])
                                    shape = quick.get(key)
                                    if shape is not None:
                                        entry = (host, intern(collected, collected), shape, installed1, installed2, "")
                        elif len(raw) == 1:
                            ((name1, fact1),) = raw.items()
                            if fact1.__class__ is dict:
                                installed1 = fact1["installed_at"]
                                if (collected.__class__ is installed1.__class__ is str and len(collected) == len(installed1) == 20
                                        and collected[19] == installed1[19] == "Z"):
                                    key = (env, region, tenant, segment, name1, fact1["version"], fact1["artifact_sha256"],
                                           fact1["state"], fact1["reason"])
                                    shape = quick.get(key)
                                    if shape is not None:
                                        entry = (host, intern(collected, collected), shape, installed1, "")
                        else:
                            key, entry = quick_many(host, collected, (env, region, tenant, segment), raw)
                    elif (state.__class__ is str and state and state != "ok" and host.__class__ is str and host
                          and collected.__class__ is str and len(collected) == 20 and collected[19] == "Z"):
                        key, entry = quick_failed(host, collected, (env, region, tenant, segment), state, record["reason"])
                    if entry is not None:
                        read(entry)
                        continue
                except (KeyError, TypeError):
                    key = None
                shape = add_record(record, count)
                if key is not None and shape is not None:
                    self._remember(key, shape)
        finally:
            self.records = count
            if len(self._read) > max(_MERGE_AT, 2 * len(self._hosts)):
                self._merge()

    def _quick_many(self, host: str, collected: t.Any, attrs: tuple[t.Any, ...],
                    raw: dict[str, t.Any]) -> tuple[tuple[t.Any, ...] | None, _HostEntry | None]:
        """add_all's short way for a host with data and three or more services (or none): (its kind's key or None, the
        host's tuple when the kind is known)."""
        if not (collected.__class__ is str and len(collected) == 20 and collected[19] == "Z"):
            return None, None
        parts: list[t.Any] = list(attrs)
        times: list[t.Any] = [host, collected, None]
        key_fields = _FACT_KEY_FIELDS
        for name1, fact1 in raw.items():
            if fact1.__class__ is not dict:
                return None, None
            installed1 = fact1["installed_at"]
            if installed1.__class__ is not str or len(installed1) != 20 or installed1[19] != "Z":
                return None, None
            parts += (name1, key_fields(fact1))
            times.append(installed1)
        key = tuple(parts)
        shape = self._quick_shapes.get(key)
        if shape is None:
            return key, None
        times[2] = shape
        times.append("")
        return key, tuple(times)

    def _quick_failed(self, host: str, collected: str, attrs: tuple[t.Any, ...], state: str,
                      reason: t.Any) -> tuple[tuple[t.Any, ...] | None, _HostEntry | None]:
        """add_all's short way for a host without data (unreachable, failed, no data: no services are read)."""
        if not (reason is None or reason.__class__ is str):
            return None, None
        key = (None, *attrs, state, reason)
        shape = self._quick_shapes.get(key)
        return key, None if shape is None else (host, self._times.setdefault(collected, collected), shape, "")

    def _remember(self, key: tuple[t.Any, ...], shape: Shape) -> None:
        """add_all's short way knows the kind of key from now on; the key's text values are shared by every key (comparing
        a record's key with it reads memory at hand)."""
        share = self._values.setdefault
        self._quick_shapes[tuple([share(value, value) if value.__class__ is str else value for value in key])] = shape

    def _merge(self) -> dict[str, _HostEntry]:
        """Merge the records read since into the hosts: the latest collection wins; at the same time, data beats no
        data, then the first one read stays."""
        hosts = self._hosts
        for entry in self._read:
            existing = hosts.setdefault(entry[0], entry)
            if existing is not entry and (entry[1], entry[2].came_ok) > (existing[1], existing[2].state == "ok"):
                hosts[entry[0]] = entry
        self._read.clear()  # the same list: add_all appends to it
        return hosts

    def _entries(self) -> list[_HostEntry]:
        """Every host's tuple, merged (_merge), in host order."""
        read = self._read
        if not self._hosts and len(set(map(_FIRST, read))) == len(read):
            # a fleet whose hosts come once each is merged already
            return sorted(read, key=_FIRST)
        return sorted(self._merge().values(), key=_FIRST)

    def _add_record(self, record: t.Any, count: int) -> Shape | None:
        """Merge one record in (the count-th); return the host's shape when hosts of the same record fields (but
        name and times) share it."""
        try:
            get = record.get
            host, collected, state, env, region, tenant, segment, reason, raw = (
                get("host"), get("collected_at"), get("state"), get("environment"), get("region"), get("tenant"),
                get("segment"), get("reason"), get("services"))
            if (host.__class__ is not str and not isinstance(host, str)) or not host:
                self.records = count
                self.reject(f"record {count} has no host name")
                return None
            if collected is not None and (not isinstance(collected, str) or len(collected) != 20 or collected[19] != "Z"):
                collected = _canonical_time(collected)
            collected = collected or ""
            state = state or "ok"
            if not isinstance(env, str) or not env:
                env = "unassigned"
            attrs = (env, region, tenant, segment)
            # attributes other than text or none (1 == True == 1.0): hosts with equal ones share the first taken
            held = None
            if not (region.__class__ is str or region is None) or not (tenant.__class__ is str or tenant is None) \
                    or not (segment.__class__ is str or segment is None):
                held = self._merge()
                existing = held.get(host)
                if existing is not None and (collected, state == "ok") <= (existing[1], existing[2].state == "ok"):
                    return None
                attrs = self._attrs.setdefault(attrs, attrs)
            # the shape's key: attributes, state, reason, collected_at known, then per service (name, version, sha256,
            # state, reason, installed_at known); the host: name, collected_at, shape, installed_at per service, ""
            parts: list[t.Any] = [attrs, state, None, collected != ""]
            entry: list[t.Any] = [host, collected, None]
            # states and reasons that are text (or none): equal ones say the same (1 and True would not)
            exact = state.__class__ is str and (reason is None or reason.__class__ is str)
            if state == "ok" and isinstance(raw, dict):
                exact = _service_parts(raw, parts, entry) and exact
            came_ok = state == "ok"
            if came_ok and not isinstance(raw, dict):
                state, reason = "failed", "facts record has no services"
                parts[1] = state
            if state != "ok":
                parts[2] = str(reason or f"no data ({state})")
            # (a record that said ok and became failed for want of services still counts as data when merged)
            key = tuple(parts) if state == "ok" or not came_ok else (*parts, True)
            exact = exact and held is None
            shape = None
            try:
                if exact:
                    shape = self._shapes.get(key)
            except TypeError:  # an unhashable state or reason (unhashable attributes are refused)
                hash(attrs)
                exact = False
            if shape is None:
                # a host of a new kind; of a kind of its own unless all of it is text (or none) and hashable
                shape = Shape(attrs, parts[1], parts[2], parts[3], parts[4:], came_ok)
                if exact:
                    self._shapes[key] = shape
            entry[2] = shape
            entry.append("")
            if held is not None:
                held[host] = tuple(entry)
                return None
            self._read.append(tuple(entry))
            return shape if exact else None
        except (AttributeError, TypeError) as exc:
            self.records = count
            self.reject(f"record {count} is not a facts record ({exc})")
            return None

    @property
    def host_count(self) -> int:
        return len(self._merge())

    def host_environments(self) -> dict[str, str]:
        return {host: entry[2].attrs[0] for host, entry in self._merge().items()}

    # -- classification

    def is_fixed(self, index: int, patch: Patch, version: str) -> bool:
        key = (index, version)
        hit = self._fixed.get(key)
        if hit is None:
            hit = self._fixed[key] = patch.fixed(version, self.desired.line_depth)
        return hit

    def _supported_lines(self, service: str, wanted: str) -> frozenset[str]:
        key = (service, wanted)
        lines = self._supported.get(key)
        if lines is None:
            spec = self.desired.services.get(service)
            depth = self.desired.line_depth
            if spec is not None and spec.supported_lines is not None:
                lines = frozenset(spec.supported_lines)
            else:
                found = {version_line(wanted, depth)}
                for _index, patch in self._by_service.get(service, ()):
                    found.update(version_line(fix, depth) for fix in patch.fixed_in)
                for services in self.desired.environments.values():
                    if service in services:
                        found.add(version_line(services[service].version, depth))
                lines = frozenset(found)
            self._supported[key] = lines
        return lines

    def missing_patches(self, service: str, wanted: str, version: str) -> tuple[str, ...]:
        """Remediations the desired version carries and version lacks (each counted once across version lines)."""
        return tuple(patch.id for index, patch in self._by_service.get(service, ())
                     if patch.applies(wanted) and self.is_fixed(index, patch, wanted)
                     and patch.applies(version) and not self.is_fixed(index, patch, version))

    def classify(self, environment: str, service: str, version: str | None, sha256: str | None) -> Verdict:
        """The verdict for a host of environment that runs version (built from sha256) of service."""
        key = (environment, service, version, sha256)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self._classify(*key)
        return verdict

    def _classify(self, environment: str, service: str, version: str | None, sha256: str | None) -> Verdict:
        wanted = self.desired.desired(environment, service)
        desired = wanted.version if wanted else None
        if not version:
            return Verdict(environment, service, "unknown", f"the host manifest of {service} names no version",
                           desired=desired, sha256=sha256)
        if wanted is None:
            return Verdict(environment, service, "unknown", f"no desired state for {service} in environment {environment}",
                           version=version, sha256=sha256)
        spec = self.desired.services.get(service)
        unexpected = None
        if spec is not None and spec.builds:
            if version not in spec.builds:
                unexpected = f"{service} {version} is not a known build (catalogue: {', '.join(sorted(spec.builds, key=vkey))})"
            elif spec.builds[version] and sha256 and sha256 != spec.builds[version]:
                unexpected = (f"{service} {version} was installed from artifact {sha256[:12]}..., "
                              f"not the published build {t.cast(str, spec.builds[version])[:12]}...")
        if unexpected is None and wanted.sha256 and version == wanted.version and sha256 and sha256 != wanted.sha256:
            unexpected = f"{service} {version} was installed from artifact {sha256[:12]}..., desired {wanted.sha256[:12]}..."
        missing = self.missing_patches(service, wanted.version, version)
        common = {"version": version, "desired": desired, "sha256": sha256}
        if unexpected:
            return Verdict(environment, service, "unexpected_version", unexpected + (f"; lacks {', '.join(missing)}" if missing else ""),
                           missing=missing, **common)
        if version == wanted.version:
            return Verdict(environment, service, "in_sync", None, **common)
        if missing:
            return Verdict(environment, service, "missing_patch",
                           f"runs {version}, lacks {', '.join(missing)} that desired {wanted.version} carries", missing=missing, **common)
        depth = self.desired.line_depth
        line = version_line(version, depth)
        if line != version_line(wanted.version, depth) and line in self._supported_lines(service, wanted.version):
            return Verdict(environment, service, "in_sync", f"runs {version} on supported line {line}: carries every fix of desired "
                           f"{wanted.version} (backport equivalent)", equivalent_to=wanted.version, **common)
        if line != version_line(wanted.version, depth):
            return Verdict(environment, service, "drifted", f"runs {version} on unsupported line {line}, desired {wanted.version}", **common)
        relation = "newer" if vkey(version) > vkey(wanted.version) else "older"
        return Verdict(environment, service, "drifted", f"runs {version}, {relation} than desired {wanted.version}", **common)

    def _unknown(self, environment: str, service: str, reason: str, version: str | None = None, sha256: str | None = None) -> Verdict:
        key = ("unknown", environment, service, reason, version, sha256)
        verdict = self._verdicts.get(key)
        if verdict is None:
            wanted = self.desired.desired(environment, service)
            verdict = self._verdicts[key] = Verdict(environment, service, "unknown", reason, version=version,
                                                    desired=wanted.version if wanted else None, sha256=sha256)
        return verdict

    def _applicable_services(self, attrs: tuple[t.Any, ...]) -> tuple[str, ...]:
        """Services the desired state wants on a host of these (environment, region, tenant, segment)."""
        names = self._applicable.get(attrs)
        if names is None:
            wanted = self.desired.environments.get(attrs[0], {})
            services = self.desired.services
            names = self._applicable[attrs] = tuple(sorted(name for name in wanted
                                                           if name not in services or services[name].applies_to(attrs[1:])))
        return names

    # -- output

    def _plan(self, shape: Shape) -> None:
        """The rows of every host of a shape (in service order) and the host-scope compatibility rules it breaks."""
        if shape.marks is not None:
            self._plan_marked(shape)
            return
        attrs = shape.attrs
        env = attrs[0]
        applicable = self._applicable.get(attrs)
        if applicable is None:
            applicable = self._applicable_services(attrs)
        blank = shape.blank
        rows: list[_PlanRow] = []
        shape.rows, shape.violations = (), ()
        if shape.state != "ok":
            for service in applicable or (NO_SERVICE,):
                rows.append((self._unknown(env, service, t.cast(str, shape.reason)), blank, False, False))
            shape.rows = tuple(rows)
            return
        services: tuple[t.Any, ...] = shape.services
        names = tuple([entry[0][1] for entry in services])
        if names != applicable:
            if not applicable and not names:
                rows.append((self._unknown(env, NO_SERVICE, "no host manifest found and no desired service for this host"),
                             blank, False, False))
                shape.rows = tuple(rows)
                return
            present = set(names)
            services = tuple(sorted(services + tuple(((env, name, None, None), "absent", None, blank, False)
                                                     for name in applicable if name not in present), key=_by_name))
        verdicts = self._verdicts
        for key, fstate, freason, slot, given in services:
            if fstate == "ok":
                verdict = verdicts.get(key)
                if verdict is None:
                    verdict = verdicts[key] = self._classify(*key)
                rows.append((verdict, slot, True, given))
            elif fstate == "absent":
                rows.append((self._unknown(env, key[1], f"no host manifest of {key[1]}"), slot, False, given))
            else:
                rows.append((self._unknown(env, key[1], freason, key[2], key[3]), slot, False, given))
        shape.rows = tuple(rows)
        if self._host_rules:
            versions = {entry[0][1]: entry[0][2] for entry in services if entry[1] == "ok"}
            violations = []
            for index, rule in enumerate(self._host_rules):
                left, right = versions.get(rule.service), versions.get(rule.requires_service)
                if left is None or (rule.environments and env not in rule.environments):
                    continue
                if rule.versions is not None and not rule.versions.matches(left):
                    continue
                if right is None or not rule.requires.matches(right):
                    violations.append((index, env, left, right or ""))
            shape.violations = tuple(violations)

    def _plan_marked(self, shape: Shape) -> None:
        """The rows of hosts the registry marks: their facts' rows (the base shape's), with each mark applied."""
        base = t.cast(Shape, shape.base)
        self._plan(base)
        by_service = {mark.service: mark for mark in t.cast(tuple, shape.marks)}
        rows: list[_PlanRow] = []
        for verdict, slot, own, given in base.rows:
            mark = by_service.get(verdict.service)
            rows.append((verdict if mark is None else self._marked(verdict, mark), slot, own, given))
        shape.rows, shape.violations = tuple(rows), base.violations

    def _marked(self, verdict: Verdict, mark: HostMark) -> Verdict:
        """The verdict of a row whose host the registry marks: quarantined or unhealthy whatever the facts say (they
        stay in the reason), not_applicable instead of drifted or missing_patch (HostMark.not_applicable_reason)."""
        key = (verdict, mark)
        marked = self._marked_verdicts.get(key)
        if marked is None:
            status, reason = mark.status, None
            if status is not None:
                facts = verdict.reason or f"runs {verdict.version}, desired {verdict.desired}"
                reason = f"{mark.reason}; its facts say {verdict.status}: {facts}"
            else:
                reason = mark.not_applicable_reason(verdict)
                status = "not_applicable" if reason else None
            if status is None:
                marked = verdict
            else:
                marked = Verdict(verdict.environment, verdict.service, status, reason, version=verdict.version,
                                 desired=verdict.desired, missing=verdict.missing, equivalent_to=verdict.equivalent_to,
                                 sha256=verdict.sha256)
                marked.facts_status = verdict.status
                self._verdicts[("marked", verdict, mark)] = marked
            self._marked_verdicts[key] = marked
        return marked

    def _marked_entries(self, entries: list[_HostEntry]) -> list[_HostEntry]:
        """entries, with every host the registry marks pointing at a marked copy of its shape (one per shape and marks)."""
        marks = self._marks
        derived: dict[tuple[Shape, tuple[HostMark, ...]], Shape] = {}
        for index, entry in enumerate(entries):
            found = marks.get(entry[0])
            if found is None:
                continue
            key = (entry[2], found)
            shape = derived.get(key)
            if shape is None:
                shape = derived[key] = entry[2].marked(found)
            entries[index] = (entry[0], entry[1], shape, *entry[3:])
        return entries

    def build(self) -> Report:
        """Classify every host and service, then aggregate alignment, compatibility, lag and time-to-patch.

        The report is valid until this reconciler builds again.
        """
        entries = self._entries()
        if self._marks:
            # only the few hosts the registry marks take this way; the others keep their shape
            entries = self._marked_entries(entries)
        token = object()
        # the hosts of every shape, in host order; the shapes in the order of their first host, so that verdicts come
        # into being in the same order as rows do
        shapes: list[Shape] = []
        firsts: dict[Shape, str] = {}
        for entry in entries:
            shape = entry[2]
            if shape.token is not token:
                shape.token = token
                shape.members = []
                shapes.append(shape)
                firsts[shape] = entry[0]
            shape.members.append(entry)
        hosts_per_env: dict[str, int] = collections.Counter()
        host_violations: dict[tuple[int, str, str, str], list[t.Any]] = {}
        for shape in shapes:
            self._plan(shape)
            members = shape.members
            count = len(members)
            hosts_per_env[shape.attrs[0]] += count
            first = firsts[shape]
            for verdict, slot, own, given in shape.rows:
                verdict.count += count
                if own:
                    if verdict.first_host is None or first < verdict.first_host:
                        verdict.first_host = first
                    if given:
                        verdict.installed.append((slot, members))
            for key in shape.violations:
                entry = host_violations.setdefault(key, [0, []])
                entry[0] += count
                entry[1].extend(heapq.nsmallest(20, map(_FIRST, members)))
        for entry in host_violations.values():
            entry[1] = sorted(entry[1])[:20]
        return Report(self, entries, shapes, [v for v in self._verdicts.values() if v.count], hosts_per_env, host_violations)


class Coverage(t.NamedTuple):
    """Which hosts of an environment a patch applies to and which of them carry it (Report.lag)."""

    hosts: int  # hosts the patch applies to
    patched: int  # of those, hosts that carry it
    installed_at: list[str]  # the first and last installed_at of each group of hosts that carry it
    first_lacking: str | None  # the first host (by name) that lacks it


class JsonRowsPiece(t.NamedTuple):
    """A piece of the JSON report's rows array (Report.json_rows)."""

    hosts: list[_HostEntry]  # the hosts whose rows it holds
    text: str  # their rows as the file has them
    fingerprint_text: str  # their rows as the fingerprint hashes them


# The heat map's classes of hosts, worst first: a host is in the worst class any of its rows is in (Report.heatmap)
HOST_CLASSES = ("failed", "drifted", "unknown", "in_sync")
HOST_CLASS = {"in_sync": "in_sync", "not_applicable": "in_sync", "drifted": "drifted", "missing_patch": "drifted",
              "unexpected_version": "drifted", "unknown": "unknown", "quarantined": "failed", "unhealthy": "failed"}
NO_ATTR = "(none)"


def _attr_label(value: t.Any) -> str:
    """A region or tenant as the heat map names it: text as it is, anything else as text, none as NO_ATTR."""
    if value is None or value == "":
        return NO_ATTR
    return value if value.__class__ is str else str(value)


class HeatCell(t.NamedTuple):
    """One region and tenant of the heat map (Report.heatmap)."""

    region: str
    tenant: str
    counts: dict[str, int]  # hosts per class (HOST_CLASSES)
    examples: list[tuple[str, str]]  # (host, worst status) of the first hosts by name that are not in sync


class HeatMap(t.NamedTuple):
    """Hosts per region and tenant by class (Report.heatmap)."""

    regions: list[str]
    tenants: list[str]
    cells: dict[tuple[str, str], HeatCell]


def _environment_order(desired: DesiredState, seen: t.Iterable[str]) -> list[str]:
    order = list(desired.promotion)
    return order + sorted(set(seen) - set(order))


class Report:
    """The result of Reconciler.build: ``document()`` is the JSON report without its rows; ``rows`` hold them.

    ``entries`` are the hosts in name order, each (host, collected_at or "", shape, installed_at of each service or "",
    ""); a row of a host is one of its shape's ``rows`` (verdict, index of the row's installed_at in the host tuple, ...).
    """

    def __init__(self, rec: Reconciler, entries: list[_HostEntry], shapes: list[Shape], verdicts: list[Verdict],
                 hosts_per_env: t.Mapping[str, int], host_violations: dict[tuple[int, str, str, str], list[t.Any]]) -> None:
        self.rec = rec
        self.desired = rec.desired
        self.now = rec.now
        self.entries = entries
        self.shapes = shapes
        self._rows: list[Row] | None = None
        self.verdicts = verdicts
        self.hosts = len(entries)
        self.hosts_per_env = hosts_per_env
        self.host_violations = host_violations
        status_index = {status: index for index, status in enumerate(STATUSES)}
        self.counts: dict[tuple[str, str], list[int]] = {}
        # (environment, service, version) -> [hosts, installed_at values, first host, earliest and latest installed_at]
        self.groups: dict[tuple[str, str, str], list[t.Any]] = {}
        # hosts a patch of the desired state does not apply to ((environment, service, version) -> hosts): never lacking
        # a fix in lag and time to patch; and the rows without usable facts per (environment, service), whatever their
        # status (a quarantined host without data is unknown to time to patch)
        self.not_applicable: dict[tuple[str, str, str], int] = collections.Counter()
        self.facts_unknown: dict[tuple[str, str], int] = collections.Counter()
        for verdict in verdicts:
            self.counts.setdefault((verdict.environment, verdict.service), [0] * len(STATUSES))[status_index[verdict.status]] += verdict.count
            if verdict.facts_status == "unknown":
                self.facts_unknown[(verdict.environment, verdict.service)] += verdict.count
            if verdict.version is None or verdict.facts_status == "unknown":
                continue
            if verdict.status == "not_applicable":
                self.not_applicable[(verdict.environment, verdict.service, verdict.version)] += verdict.count
            group = self.groups.setdefault((verdict.environment, verdict.service, verdict.version), [0, [], verdict.first_host])
            group[0] += verdict.count
            for slot, members in verdict.installed:
                group[1].extend(map(operator.itemgetter(slot), members))
            if verdict.first_host is not None and (group[2] is None or verdict.first_host < group[2]):
                group[2] = verdict.first_host
        for group in self.groups.values():
            times = group[1]
            group += (min(times), max(times)) if times else (None, None)
        self.environments = _environment_order(self.desired, [env for env, _svc in self.counts])
        self.services = sorted({svc for _env, svc in self.counts})
        self.totals = {status: sum(c[i] for c in self.counts.values()) for i, status in enumerate(STATUSES)}
        self.row_count = sum(self.totals.values())  # every row counts once, for its verdict

    # -- rows

    @property
    def rows(self) -> list[Row]:
        """Every row, in host and then service order (made on first use: the report writers do not need them)."""
        if self._rows is None:
            rows: list[Row] = []
            append = rows.append
            for entry in self.entries:
                host, collected, shape = entry[0], entry[1], entry[2]
                attrs = shape.attrs
                for verdict, slot, _own, _given in shape.rows:
                    append((host, verdict, entry[slot] or None, collected, attrs))
            self._rows = rows
        return self._rows

    def row_dicts(self) -> t.Iterator[dict[str, t.Any]]:
        """Every row as the JSON report holds it (ROW_FIELDS)."""
        for host, verdict, installed, collected, attrs in self.rows:
            yield {"host": host, "environment": verdict.environment, "service": verdict.service, "status": verdict.status,
                   "reason": verdict.reason, "version": verdict.version, "desired": verdict.desired,
                   "missing_patches": list(verdict.missing), "equivalent_to": verdict.equivalent_to,
                   "artifact_sha256": verdict.sha256, "installed_at": installed, "region": attrs[1], "tenant": attrs[2],
                   "segment": attrs[3], "collected_at": collected or None}

    def json_rows(self, hosts: int = 500) -> t.Iterator[JsonRowsPiece]:
        """The rows array of the JSON report in pieces of ``hosts`` hosts (JsonRowsPiece: those hosts, text, fingerprint text).

        The texts joined are every row as row_json writes it, the first after "\\n    ", the others after ",\\n    "
        (the file), and "\\n" + row_core + "}" of every row (what the fingerprint hashes after the document). The
        text around a host's values is made once per shape; a host name is written as it is unless it needs escaping.
        """
        middles: dict[tuple[Verdict, bool], str] = {}
        specs = {shape: _json_spec(shape, middles) for shape in self.shapes}
        entries = self.entries
        first = True
        for start in range(0, len(entries), hosts):
            chunk = part = entries[start:start + hosts]
            names = "".join(map(_FIRST, chunk))
            if not names.isascii() or names.encode("ascii").translate(None, _JSON_PLAIN):
                # a host name that may need escaping: the host names as JSON writes them (without the quotes)
                chunk = [(json_str(entry[0])[1:-1], *entry[1:]) for entry in chunk]
            text: list[str] = []
            fingerprint_text: list[str] = []
            put, put_fingerprint = text.extend, fingerprint_text.extend
            for entry in chunk:
                spec = specs[entry[2]]
                if spec[0] == 2:
                    _size, s1, s2, f0, f1, f2, f3, f4, f5, f6, d0, d1, d2, d3, d4 = spec
                    host = entry[0]
                    collected, i1, i2 = entry[1], entry[s1], entry[s2]
                    put((f0, host, f1, i1, f2, collected, f3, host, f4, i2, f5, collected, f6))
                    put_fingerprint((d0, host, d1, i1, d2, host, d3, i2, d4))
                elif spec[0] == 1:
                    _size, s1, f0, f1, f2, f3, d0, d1, d2 = spec
                    host = entry[0]
                    collected, i1 = entry[1], entry[s1]
                    put((f0, host, f1, i1, f2, collected, f3))
                    put_fingerprint((d0, host, d1, i1, d2))
                elif spec[0]:
                    _size, slots, fixed, fixed_fingerprint = spec
                    host, collected = entry[0], entry[1]
                    text.append(fixed[0])
                    fingerprint_text.append(fixed_fingerprint[0])
                    for index, slot in enumerate(slots):
                        installed = entry[slot]
                        put((host, fixed[3 * index + 1], installed, fixed[3 * index + 2], collected, fixed[3 * index + 3]))
                        put_fingerprint((host, fixed_fingerprint[2 * index + 1], installed, fixed_fingerprint[2 * index + 2]))
            if text:
                if first:
                    text[0] = text[0][1:]  # the first row follows "[", not another row
                    first = False
                yield JsonRowsPiece(part, "".join(text), "".join(fingerprint_text))

    @property
    def drift_found(self) -> bool:
        return any(self.totals[status] for status in DRIFT_STATUSES)

    # -- sections

    def _versions(self, env: str, service: str) -> dict[str, int]:
        found = {version: group[0] for (g_env, g_svc, version), group in self.groups.items() if g_env == env and g_svc == service}
        return dict(sorted(found.items(), key=lambda item: vkey(item[0])))

    def matrix(self) -> list[dict[str, t.Any]]:
        cells = []
        for env in self.environments:
            for service in self.services:
                count = self.counts.get((env, service))
                if count is None:
                    continue
                statuses = dict(zip(STATUSES, count))
                worst = next(status for status in STATUS_RANK if statuses[status])
                wanted = self.desired.desired(env, service)
                cells.append({"environment": env, "service": service, "desired": wanted.version if wanted else None,
                              "desired_source": wanted.source if wanted else None, "hosts": sum(count),
                              "statuses": statuses, "status": worst,
                              "in_sync_share": round(statuses["in_sync"] / sum(count), 4)})
        return cells

    def alignment(self) -> list[dict[str, t.Any]]:
        depth = self.desired.line_depth
        out = []
        for env in self.environments:
            for service in self.services:
                if (env, service) not in self.counts or service == NO_SERVICE:
                    continue
                versions = self._versions(env, service)
                lines: dict[str, int] = {}
                for version, hosts in versions.items():
                    line = version_line(version, depth)
                    lines[line] = lines.get(line, 0) + hosts
                wanted = self.desired.desired(env, service)
                out.append({"environment": env, "service": service, "desired": wanted.version if wanted else None,
                            "versions": versions, "lines": lines, "mixed": len(versions) > 1, "mixed_lines": len(lines) > 1,
                            "unknown": self.counts[(env, service)][STATUSES.index("unknown")],
                            "not_applicable": self.counts[(env, service)][STATUSES.index("not_applicable")]})
        return out

    def compatibility(self) -> list[dict[str, t.Any]]:
        out = []
        host_rules = [rule for rule in self.desired.rules if rule.scope == "host"]
        for rule in self.desired.rules:
            if rule.scope == "host":
                index = host_rules.index(rule)
                for (r_index, env, left, right), (hosts, examples) in sorted(self.host_violations.items()):
                    if r_index == index:
                        out.append({"rule": rule.name, "scope": "host", "environment": env, "service": rule.service,
                                    "versions": [left], "requires": {"service": rule.requires_service, "versions": rule.requires.text},
                                    "found": [right] if right else [], "hosts": hosts, "example_hosts": examples})
                continue
            for env in self.environments:
                if rule.environments and env not in rule.environments:
                    continue
                left = [v for v in self._versions(env, rule.service) if rule.versions is None or rule.versions.matches(v)]
                if not left:
                    continue
                right = self._versions(env, rule.requires_service)
                bad = [v for v in right if not rule.requires.matches(v)]
                if bad or not right:
                    out.append({"rule": rule.name, "scope": "environment", "environment": env, "service": rule.service,
                                "versions": left, "requires": {"service": rule.requires_service, "versions": rule.requires.text},
                                "found": bad, "hosts": sum(right[v] for v in bad) if bad else 0,
                                "example_hosts": [self.groups[(env, rule.requires_service, v)][2] for v in bad][:20]})
        return out

    def _coverage(self, env: str, index: int, patch: Patch) -> Coverage:
        """Which hosts of an environment a patch applies to and which of them carry it."""
        total = fixed = 0
        times: list[str] = []
        lacking: str | None = None
        for (g_env, g_svc, version), group in self.groups.items():
            if g_env != env or g_svc != patch.service or not patch.applies(version):
                continue
            if self.rec.is_fixed(index, patch, version):
                total += group[0]
                fixed += group[0]
                if group[1]:
                    times += [group[3], group[4]]
                continue
            hosts = group[0] - self.not_applicable.get((g_env, g_svc, version), 0)
            total += hosts
            if hosts and (lacking is None or group[2] < lacking):
                lacking = group[2]
        return Coverage(total, fixed, times, lacking)

    def lag(self) -> list[dict[str, t.Any]]:
        order = self.desired.promotion
        out = []
        for upstream, downstream in zip(order, order[1:]):
            for index, patch in enumerate(self.desired.patches):
                up = self._coverage(upstream, index, patch)
                if not up.patched:
                    continue
                down = self._coverage(downstream, index, patch)
                if not down.hosts or down.patched == down.hosts:
                    continue
                since = parse_time(min(up.installed_at)) if up.installed_at else None
                complete = parse_time(max(up.installed_at)) if up.installed_at and up.patched == up.hosts else None
                wanted = self.desired.desired(downstream, patch.service)
                promoted = bool(wanted and patch.applies(wanted.version) and self.rec.is_fixed(index, patch, wanted.version))
                out.append({"from": upstream, "to": downstream, "service": patch.service, "patch": patch.id,
                            "severity": patch.severity, "patch_ids": list(patch.patch_ids),
                            "from_hosts": up.hosts, "from_patched": up.patched, "to_hosts": down.hosts, "to_patched": down.patched,
                            "to_lacking": down.hosts - down.patched, "example_host": down.first_lacking,
                            "since": format_time(since), "complete_since": format_time(complete),
                            "lag_seconds": round(max(0.0, self.now - since), 1) if since is not None else None,
                            "promoted": promoted})
        return out

    def lag_summary(self, lag: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        order = self.desired.promotion
        out = []
        for upstream, downstream in zip(order, order[1:]):
            entries = [entry for entry in lag if entry["from"] == upstream and entry["to"] == downstream]
            lags = [entry["lag_seconds"] for entry in entries if entry["lag_seconds"] is not None]
            out.append({"from": upstream, "to": downstream, "patches": len(entries),
                        "patch_ids": [entry["patch"] for entry in entries],
                        "max_lag_seconds": max(lags) if lags else None,
                        "hosts_lacking": sum(entry["to_lacking"] for entry in entries)})
        return out

    def slo(self) -> dict[str, t.Any]:
        targets = self.desired.slo_targets
        scope = self.desired.slo_environments
        envs = [env for env in self.environments if scope is None or env in scope]
        per_patch = []
        skipped = []
        for index, patch in enumerate(self.desired.patches):
            target = targets.get(patch.severity or "")
            if patch.severity is None or target is None or patch.released_at is None:
                skipped.append({"patch": patch.id, "reason": "no severity" if patch.severity is None else
                                "no target for severity " + patch.severity if target is None else "no release time"})
                continue
            released = patch.released_at
            deadline = released + target
            deadline_text = t.cast(str, format_time(deadline))
            age = max(0.0, self.now - released)
            entry = {"patch": patch.id, "service": patch.service, "severity": patch.severity,
                     "released_at": format_time(released), "target_seconds": target, "hosts": 0, "within": 0, "late": 0,
                     "open": 0, "overdue": 0, "unknown": 0, "age_seconds": round(age, 1),
                     "target_used": round(age / target, 4) if target else None, "example_overdue_host": None}
            for env in envs:
                for (g_env, g_svc, version), group in self.groups.items():
                    if g_env != env or g_svc != patch.service or not patch.applies(version):
                        continue
                    hosts, times, first = group[:3]
                    if self.rec.is_fixed(index, patch, version):
                        # installed at or before the deadline (a host installed before the release counts as in time)
                        in_time = sum(map(operator.le, times, itertools.repeat(deadline_text)))
                        no_time = hosts - len(times)
                        entry["within"] += in_time + (no_time if self.now <= deadline else 0)
                        entry["late"] += len(times) - in_time + (0 if self.now <= deadline else no_time)
                        continue
                    hosts -= self.not_applicable.get((g_env, g_svc, version), 0)
                    if not hosts:
                        continue
                    if age > target:
                        entry["overdue"] += hosts
                        if entry["example_overdue_host"] is None or first < entry["example_overdue_host"]:
                            entry["example_overdue_host"] = first
                    else:
                        entry["open"] += hosts
                entry["unknown"] += self.facts_unknown.get((env, patch.service), 0)
            entry["hosts"] = entry["within"] + entry["late"] + entry["open"] + entry["overdue"] + entry["unknown"]
            entry["share_within_target"] = round((entry["within"] + entry["open"]) / entry["hosts"], 4) if entry["hosts"] else None
            if not entry["open"] and not entry["overdue"]:
                entry["target_used"] = None
            per_patch.append(entry)
        severities = []
        for severity in _severity_order(set(targets) | {p["severity"] for p in per_patch}):
            entries = [p for p in per_patch if p["severity"] == severity]
            total = {key: sum(p[key] for p in entries) for key in ("hosts", "within", "late", "open", "overdue", "unknown")}
            overdue = [p for p in entries if p["overdue"]]
            oldest = max(overdue, key=lambda p: (p["age_seconds"], p["patch"])) if overdue else None
            used = [p["target_used"] for p in entries if p["target_used"] is not None]
            severities.append(dict(
                severity=severity, target_seconds=targets.get(severity), patches=len(entries), **total,
                share_within_target=round((total["within"] + total["open"]) / total["hosts"], 4) if total["hosts"] else None,
                target_used=max(used) if used else None,
                oldest_overdue={"patch": oldest["patch"], "service": oldest["service"], "released_at": oldest["released_at"],
                                "age_seconds": oldest["age_seconds"],
                                "overdue_seconds": round(oldest["age_seconds"] - oldest["target_seconds"], 1),
                                "hosts": oldest["overdue"], "example_host": oldest["example_overdue_host"]} if oldest else None))
        return {"targets": {sev: targets[sev] for sev in _severity_order(targets)}, "target_source": self.desired.slo_target_source,
                "environments": envs, "severities": severities, "patches": per_patch, "skipped": skipped}

    def document(self) -> dict[str, t.Any]:
        """Everything but the rows (the caller adds inputs, generated_at, the rows and the fingerprint)."""
        alignment = self.alignment()
        compatibility = self.compatibility()
        lag = self.lag()
        slo = self.slo()
        summary = {
            "hosts": self.hosts,
            "rows": self.row_count,
            "statuses": dict(self.totals),
            "drift": sum(self.totals[status] for status in DRIFT_STATUSES),
            "drift_found": self.drift_found,
            "environments": self.environments,
            "services": self.services,
            "hosts_per_environment": {env: self.hosts_per_env.get(env, 0) for env in self.environments},
            "mixed_versions": sum(1 for entry in alignment if entry["mixed"]),
            "compatibility_violations": len(compatibility),
            "lagging_patches": len(lag),
            "slo_overdue": sum(entry["overdue"] for entry in slo["severities"]),
        }
        return {
            "schema": REPORT_SCHEMA,
            "now": format_time(self.now),
            "summary": summary,
            "desired": self.desired.as_dict(),
            "matrix": self.matrix(),
            "alignment": alignment,
            "compatibility": compatibility,
            "lag": lag,
            "lag_summary": self.lag_summary(lag),
            "slo": slo,
        }

    # -- views of the HTML page (made from the shapes: once per kind of host, never once per host)

    def host_classes(self) -> t.Iterator[tuple[Shape, str, str]]:
        """(shape, worst status of its rows, host class) of every shape: a host's class is the worst class of its rows
        (HOST_CLASSES order), its status the worst of its rows (STATUS_RANK order). Made once per set of statuses."""
        class_rank = {name: index for index, name in enumerate(HOST_CLASSES)}
        status_rank = {status: index for index, status in enumerate(STATUS_RANK)}
        known: dict[tuple[str, ...], tuple[str, str]] = {}
        for shape in self.shapes:
            key = tuple([row[0].status for row in shape.rows])
            found = known.get(key)
            if found is None:
                statuses = set(key) or {"unknown"}
                found = known[key] = (min(statuses, key=status_rank.__getitem__),
                                      min((HOST_CLASS[status] for status in statuses), key=class_rank.__getitem__))
            yield shape, found[0], found[1]

    def heatmap(self, *, examples: int = 12) -> HeatMap:
        """Hosts per region and tenant, counted by host class (HOST_CLASSES), with the first hosts (by name) of each
        cell that are not in sync and their worst status."""
        cells: dict[tuple[str, str], HeatCell] = {}
        # per cell, the first hosts of each shape not in sync (a shape's members are in name order), merged at the end
        firsts: dict[tuple[str, str], list[list[_HostEntry]]] = collections.defaultdict(list)
        worst_of: dict[Shape, str] = {}
        labels: dict[t.Any, str] = {}
        for shape, worst, kind in self.host_classes():
            attrs = shape.attrs
            region, tenant = attrs[1], attrs[2]
            key = (labels.get(region) or labels.setdefault(region, _attr_label(region)),
                   labels.get(tenant) or labels.setdefault(tenant, _attr_label(tenant)))
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = HeatCell(key[0], key[1], dict.fromkeys(HOST_CLASSES, 0), [])
            members = shape.members
            cell.counts[kind] += len(members)
            if kind != "in_sync":
                firsts[key].append(members[:examples])
                worst_of[shape] = worst
        for key, lists in firsts.items():
            cells[key].examples.extend((entry[0], worst_of[entry[2]]) for entry in itertools.islice(heapq.merge(*lists, key=_FIRST), examples))
        return HeatMap(sorted({region for region, _tenant in cells}), sorted({tenant for _region, tenant in cells}), cells)


# --------------------------------------------------------------------------------------------- the HTML page's data

# what the heat map calls each class of hosts (text beside every colour)
HOST_CLASS_LABELS = {"failed": "failed", "drifted": "drifted", "unknown": "no data", "in_sync": "in sync"}
_HTML_SPECIAL = re.compile("[&<>\"']")


def _h(value: t.Any) -> str:
    """value as the page writes it: html.escape(str(value), quote=True), none as nothing."""
    if value is None:
        return ""
    text = value if value.__class__ is str else str(value)
    return html.escape(text, quote=True) if _HTML_SPECIAL.search(text) else text


class BarPart(t.NamedTuple):
    """One part of a stacked bar: its status or class, its width (percent, two decimals) and how many it stands for."""

    kind: str
    width: str
    count: int


def _bar(counts: t.Mapping[str, int], order: t.Sequence[str]) -> list[BarPart]:
    total = sum(counts.values()) or 1
    return [BarPart(kind, f"{counts[kind] * 100 / total:.2f}", counts[kind]) for kind in order if counts.get(kind)]


def _heat_band(in_sync: int, hosts: int) -> int:
    """The heat map cell's colour band from its share of hosts in sync: 4 all, 3 from 90%, 2 from 75%, 1 from 50%, else 0."""
    share = in_sync / hosts if hosts else 0.0
    return 4 if in_sync == hosts else 3 if share >= 0.9 else 2 if share >= 0.75 else 1 if share >= 0.5 else 0


def heatmap_rows(heat: HeatMap) -> list[tuple[str, list[dict[str, t.Any] | None]]]:
    """The heat map as the page lays it out: per region, per tenant a cell (None where no host is) with counts,
    colour band, bar and the first hosts not in sync."""
    rows = []
    for region in heat.regions:
        cells: list[dict[str, t.Any] | None] = []
        for tenant in heat.tenants:
            cell = heat.cells.get((region, tenant))
            if cell is None:
                cells.append(None)
                continue
            counts = cell.counts
            hosts = sum(counts.values())
            cells.append({"hosts": hosts, "counts": counts, "band": _heat_band(counts["in_sync"], hosts),
                          "bar": _bar(counts, HOST_CLASSES[::-1]), "examples": cell.examples,
                          "not_in_sync": hosts - counts["in_sync"]})
        rows.append((region, cells))
    return rows


def matrix_rows(document: t.Mapping[str, t.Any]) -> list[tuple[str, list[dict[str, t.Any] | None]]]:
    """The environment x service matrix as the page lays it out: per environment, per service the document's cell (None
    where no host runs it) with its bar and the statuses other than in sync that it counts."""
    cells = {(cell["environment"], cell["service"]): cell for cell in document["matrix"]}
    source = document["desired"]["source"]
    rows = []
    for env in document["summary"]["environments"]:
        line: list[dict[str, t.Any] | None] = []
        for service in document["summary"]["services"]:
            cell = cells.get((env, service))
            if cell is None:
                line.append(None)
                continue
            statuses = cell["statuses"]
            line.append({**cell, "bar": _bar(statuses, STATUSES),
                         "others": [(status, statuses[status]) for status in STATUSES[1:] if statuses[status]],
                         "desired_note": cell["desired_source"] if cell["desired_source"] and cell["desired_source"] != source else None})
        rows.append((env, line))
    return rows


def _drift_row_parts(verdict: Verdict, labels: t.Mapping[str, str]) -> tuple[str, str, str]:
    """The text of a drift list row around its host (before the host, the detail after the times, after the detail)."""
    head = (f'<tr><td><span class="badge s-{verdict.status}">{_h(labels[verdict.status])}</span></td><td>{_h(verdict.environment)}</td>'
            '<td class="mono host"><details><summary>')
    detail = ""
    if verdict.sha256:
        detail += f"<dt>build</dt><dd>sha256 {_h(verdict.sha256[:16])}</dd>"
    if verdict.missing:
        detail += f"<dt>missing</dt><dd>{_h(', '.join(verdict.missing))}</dd>"
    if verdict.equivalent_to:
        detail += f"<dt>equivalent to</dt><dd>{_h(verdict.equivalent_to)}</dd>"
    if verdict.facts_status != verdict.status:
        detail += f"<dt>facts alone</dt><dd>{_h(labels[verdict.facts_status])}</dd>"
    tail = (f"</dl></details></td><td>{_h(verdict.service)}</td><td class=\"mono\">{_h(verdict.version or '-')}</td>"
            f"<td class=\"mono\">{_h(verdict.desired or '-')}</td><td>{_h(verdict.reason)}</td></tr>")
    return head, detail, tail


def drift_rows_html(drift: t.Sequence[Row], labels: t.Mapping[str, str]) -> str:
    """The drift list's rows, each with its host's detail on demand (<details>: works without JavaScript).

    They are most of a large fleet's page and most of its cost in a template (a call per value): written here from
    text made once per verdict and once per kind of host, every value escaped as the template escapes it.
    """
    by_verdict: dict[Verdict, tuple[str, str, str]] = {}
    by_attrs: dict[tuple[t.Any, ...], str] = {}
    special = _HTML_SPECIAL.search
    out = []
    for host, verdict, installed, collected, attrs in drift:
        parts = by_verdict.get(verdict)
        if parts is None:
            parts = by_verdict[verdict] = _drift_row_parts(verdict, labels)
        where = by_attrs.get(attrs)
        if where is None:
            where = by_attrs[attrs] = (f'</summary><dl class="host"><dt>region</dt><dd>{_h(attrs[1]) or "-"}</dd><dt>tenant</dt>'
                                       f'<dd>{_h(attrs[2]) or "-"}</dd><dt>segment</dt><dd>{_h(attrs[3]) or "-"}</dd>')
        if special(host):
            host = html.escape(host, quote=True)
        if installed and special(installed):
            installed = html.escape(installed, quote=True)
        if collected and special(collected):
            collected = html.escape(collected, quote=True)
        out.append(f"{parts[0]}{host}{where}<dt>collected</dt><dd>{collected or '-'}</dd><dt>installed</dt><dd>{installed or '-'}</dd>"
                   f"{parts[1]}{parts[2]}")
    return "".join(out)


def page_view(document: t.Mapping[str, t.Any], report: Report, drift: t.Sequence[Row], *, max_rows: int,
              labels: t.Mapping[str, str]) -> dict[str, t.Any]:
    """What the HTML page's template (templates/drift_report.html.j2) shows beyond the document, made here so that
    the template only writes it: heat map, matrix, and the first max_rows drift rows (Row, worst first)."""
    heat = report.heatmap()
    listed = drift[:max(max_rows, 0)]
    return {
        "heat": heat, "heat_rows": heatmap_rows(heat), "host_classes": HOST_CLASSES, "class_labels": HOST_CLASS_LABELS,
        "matrix_rows": matrix_rows(document), "drift_html": drift_rows_html(listed, labels), "drift_listed": len(listed),
        "drift_total": len(drift),
    }


def _json_spec(shape: Shape, middles: dict[tuple[Verdict, bool], str]) -> tuple[t.Any, ...]:
    """The fixed text around the values (host, installed_at, collected_at) of the rows of every host of a shape.

    Per row the file has f[3i] host f[3i+1] installed_at f[3i+2] collected_at f[3i+3] (the last of a row and the
    first of the next are one), the fingerprint d[2i] host d[2i+1] installed_at d[2i+2]; null values are "" with
    null in the fixed text. (size, slots..., f..., d...) for one or two rows, else (size, slots, f, d). middles: the
    text from a host to its installed_at per verdict, kept for the next shape.
    """
    collected = shape.collected
    attrs_text = attrs_json(shape.attrs)
    fixed = [',\n    {"host":"']
    fixed_fingerprint = ['\n{"host":"']
    slots = []
    for verdict, slot, _own, given in shape.rows:
        middle = middles.get((verdict, given))
        if middle is None:
            middle = middles[(verdict, given)] = '"' + verdict.fragment + ',"installed_at":' + ('"' if given else "null")
        fixed += [middle, ('"' if given else "") + attrs_text + ',"collected_at":' + ('"' if collected else "null"),
                  ('"' if collected else "") + '},\n    {"host":"']
        if verdict.fingerprint_fragment is not verdict.fragment:
            middle = '"' + verdict.fingerprint_fragment + ',"installed_at":' + ('"' if given else "null")
        fixed_fingerprint += [middle, ('"' if given else "") + attrs_text + '}\n{"host":"']
        slots.append(slot)
    if slots:
        fixed[-1] = fixed[-1][: -len(',\n    {"host":"')]
        fixed_fingerprint[-1] = fixed_fingerprint[-1][: -len('\n{"host":"')]
    if len(slots) <= 2:
        return (len(slots), *slots, *fixed, *fixed_fingerprint)
    return (len(slots), tuple(slots), tuple(fixed), tuple(fixed_fingerprint))


# --------------------------------------------------------------------------------------------- rows as JSON

_ATTR_JSON: dict[tuple[t.Any, ...], str] = {}


def json_text(value: str | None) -> str:
    """A JSON string (or null), without the encoder's work for the usual plain host names and times."""
    if value is None:
        return "null"
    if value.isprintable() and '"' not in value and "\\" not in value:
        return '"' + value + '"'
    return t.cast(str, json_str(value))


def attrs_json(attrs: tuple[t.Any, ...]) -> str:
    text = _ATTR_JSON.get(attrs)
    if text is None:
        text = _ATTR_JSON[attrs] = ',"region":' + _j(attrs[1]) + ',"tenant":' + _j(attrs[2]) + ',"segment":' + _j(attrs[3])
    return text


def row_core(row: Row, *, fingerprint: bool = False) -> str:
    """One row's JSON up to, not including, collected_at and the closing brace (ROW_FIELDS order); with fingerprint,
    as the fingerprint hashes it (Verdict.fingerprint_fragment)."""
    host, verdict, installed, _collected, attrs = row
    fragment = verdict.fingerprint_fragment if fingerprint else verdict.fragment
    return '{"host":%s%s,"installed_at":%s%s' % (json_text(host), fragment, json_text(installed), attrs_json(attrs))


class RowJson(t.NamedTuple):
    full: str  # the JSON text of one row
    core: str  # what the fingerprint hashes of it: no collected_at, an unreachable host's reason without its wording


def row_json(row: Row) -> RowJson:
    return RowJson(row_core(row) + ',"collected_at":' + json_text(row[3] or None) + "}", row_core(row, fingerprint=True) + "}")


VOLATILE_KEYS = ("generated_at", "inputs", "fingerprint", "rows")


def fingerprint_start(document: t.Mapping[str, t.Any]) -> t.Any:
    """A sha256 over the document without its volatile keys; then feed it b"\\n" + every row core + "}", in order."""
    stable = {key: value for key, value in document.items() if key not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def fingerprint(document: t.Mapping[str, t.Any], rows: t.Iterable[Row]) -> str:
    """sha256 of the report's content: the document without volatile keys, then every row without collected_at.

    Two reports with the same fingerprint say the same thing about the same hosts, however their facts were gathered
    (one run or slices) and whenever they were written; an unreachable host counts as unreachable, whatever words
    the connection found for it.
    """
    digest = fingerprint_start(document)
    for row in rows:
        digest.update(("\n" + row_core(row, fingerprint=True) + "}").encode("utf-8"))
    return digest.hexdigest()
