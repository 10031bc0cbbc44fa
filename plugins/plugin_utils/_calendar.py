# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: change calendar (maintenance windows, freezes, peak hours, releases). Not a public API.

Every rule is written in its own time zone's wall time and evaluated against one UTC instant; nothing here reads a
clock. Intervals are half-open, ``[start, end)``: a window that ends at 05:00 is closed at 05:00:00.

DST, explicitly:

* A recurring occurrence starts at its wall time on its local date, resolved with ``fold=0``: an ambiguous wall time
  (the hour a fall-back repeats) means its first occurrence; a wall time that does not exist (the hour a
  spring-forward skips) moves forward by the gap (02:30 becomes 03:30 in Europe/Berlin).
* It lasts its nominal length in real time (``end`` minus ``start`` on the wall clock, or ``duration``), so a
  three-hour window is three hours on DST nights too: DST neither skips nor doubles an hour of it, and one local
  date gives exactly one occurrence.
* A one-off range (``once``, a release's blackout) converts its start and its end separately, same ``fold=0`` rule.
"""

from __future__ import annotations

import calendar as _calendar
import dataclasses
import datetime as _dt
import re
import typing as t
from collections.abc import Mapping

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python < 3.9 controllers have no zoneinfo
    ZoneInfo = None  # type: ignore[assignment,misc]
    ZoneInfoNotFoundError = KeyError  # type: ignore[assignment,misc]

__all__ = [
    "Calendar",
    "CalendarError",
    "Constraints",
    "SCOPE_KEYS",
    "evaluate",
    "iso_z",
    "next_opening",
    "parse_calendar",
    "parse_duration",
    "parse_instant",
]

UTC = _dt.timezone.utc
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KINDS = ("windows", "freezes", "peak_hours", "releases")
SCOPE_KEYS = ("region", "tenant", "environment")
_RULE_KEYS = ("name", "scope", "timezone", "weekly", "monthly", "once")
_RELEASE_KEYS = ("name", "scope", "timezone", "at", "before", "after")
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")
_UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DAY = _dt.timedelta(days=1)
# how far ahead next_change looks for a moment when a wave may start
HORIZON = _dt.timedelta(days=400)


class CalendarError(FleetpatchError, ValueError):
    """A calendar rule that cannot be evaluated; the message names the rule and the field."""


def _type_name(value: t.Any) -> str:
    if value is None:
        return "None"
    return next(cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "builtins")


def parse_duration(value: t.Any, where: str) -> _dt.timedelta:
    """``3h``, ``1d12h``, ``90m``, ``2w``, ``30s`` or a number of seconds."""
    if isinstance(value, bool) or value is None:
        raise CalendarError(f"{where}: expected a duration such as '3h' or '1d12h', got {_type_name(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if not text or _DURATION.sub("", text):
            raise CalendarError(f"{where}: {value!r} is not a duration such as '3h', '1d12h' or '90m'")
        seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(text))
    if seconds < 0:
        raise CalendarError(f"{where}: a duration must not be negative")
    return _dt.timedelta(seconds=seconds)


def parse_instant(value: t.Any, where: str = "clock") -> _dt.datetime:
    """An ISO 8601 timestamp with ``Z`` or an offset, as an aware UTC datetime. A naive timestamp is refused."""
    if isinstance(value, _dt.datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            moment = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise CalendarError(f"{where}: {value!r} is not an ISO 8601 timestamp such as 2026-03-10T01:00:00Z") from None
    else:
        raise CalendarError(f"{where}: expected an ISO 8601 UTC timestamp such as 2026-03-10T01:00:00Z, got {_type_name(value)}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CalendarError(f"{where}: {value!r} has no time zone; write it in UTC with a Z (2026-03-10T01:00:00Z)")
    return moment.astimezone(UTC)


def iso_z(moment: _dt.datetime) -> str:
    """Second-precision UTC text, ``2026-03-10T01:00:00Z`` (the calendar's resolution)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zone(name: t.Any, where: str) -> _dt.tzinfo:
    if not isinstance(name, str) or not name:
        raise CalendarError(f"{where}: expected an IANA time zone name such as Europe/Berlin, got {_type_name(name)}")
    if name.upper() == "UTC":
        return UTC
    if ZoneInfo is None:  # pragma: no cover
        raise CalendarError(f"{where}: time zones need Python 3.9+ (zoneinfo) on the controller")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"{where}: unknown time zone {name!r}") from None


def to_utc(local: _dt.datetime, tz: _dt.tzinfo) -> _dt.datetime:
    """A wall time in tz as a UTC instant: ``fold=0`` (first of two; past a gap by the gap's length)."""
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _time(value: t.Any, where: str) -> _dt.time:
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if not match:
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        raise CalendarError(f"{where}: expected a wall time HH:MM or HH:MM:SS, got {shown}")
    return _dt.time(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def _local_datetime(value: t.Any, where: str) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        moment = value
    elif isinstance(value, _dt.date):
        moment = _dt.datetime.combine(value, _dt.time())
    elif isinstance(value, str):
        try:
            moment = _dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise CalendarError(f"{where}: {value!r} is not a local date-time such as 2026-12-20T00:00 or a date 2026-12-20") from None
    else:
        raise CalendarError(f"{where}: expected a local date-time such as 2026-12-20T00:00, got {_type_name(value)}")
    if moment.tzinfo is not None:
        raise CalendarError(f"{where}: write local wall time without an offset; the rule's timezone says where")
    return moment


def _mapping(value: t.Any, where: str) -> Mapping[str, t.Any]:
    if not isinstance(value, Mapping):
        raise CalendarError(f"{where} must be a mapping, got {_type_name(value)}")
    return value


def _unknown(data: Mapping[str, t.Any], allowed: t.Sequence[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise CalendarError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _strings(value: t.Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(item, str) and item for item in items):
        raise CalendarError(f"{where} must be a non-empty string or a list of them")
    return tuple(str(item) for item in items)


def _scope(value: t.Any, where: str) -> dict[str, tuple[str, ...]]:
    data = _mapping(value or {}, where)
    _unknown(data, SCOPE_KEYS, where)
    return {key: _strings(data[key], f"{where}.{key}") for key in SCOPE_KEYS if key in data}


def scope_matches(scope: Mapping[str, t.Sequence[str]], attributes: Mapping[str, t.Any]) -> bool:
    """Whether a host (``{region, tenant, environment}``) is in a rule's scope; an empty scope is everything."""
    return all(attributes.get(key) in values for key, values in scope.items())


# ---------------------------------------------------------------------------------------------------------
# rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """One calendar entry of a kind (window, freeze, peak, release) with its occurrences in wall time."""

    kind: str
    name: str
    tz_name: str
    tz: _dt.tzinfo
    scope: Mapping[str, tuple[str, ...]]
    repeat: str  # weekly | monthly | once
    days: tuple[int, ...] = ()
    start_time: _dt.time = _dt.time()
    length: _dt.timedelta = _dt.timedelta()
    month_day: int | None = None
    weekday: int | None = None
    nth: int | None = None
    offset_days: int = 0
    start_local: _dt.datetime | None = None
    end_local: _dt.datetime | None = None

    def as_dict(self) -> dict[str, t.Any]:
        data: dict[str, t.Any] = {"kind": self.kind, "name": self.name, "timezone": self.tz_name,
                                  "scope": {key: list(values) for key, values in self.scope.items()}, "repeat": self.repeat}
        if self.repeat == "once":
            data.update(start=self.start_local.isoformat(), end=self.end_local.isoformat())  # type: ignore[union-attr]
        else:
            data.update(start=self.start_time.isoformat(), seconds=int(self.length.total_seconds()))
        if self.repeat == "weekly":
            data["days"] = [DAYS[day] for day in self.days]
        if self.repeat == "monthly":
            data.update(day=self.month_day, weekday=DAYS[self.weekday] if self.weekday is not None else None, nth=self.nth,
                        offset_days=self.offset_days)
        return data

    def _start(self, day: _dt.date) -> _dt.datetime:
        return to_utc(_dt.datetime.combine(day, self.start_time), self.tz)

    def _monthly_date(self, year: int, month: int) -> _dt.date | None:
        if self.month_day is not None:
            if self.month_day > _calendar.monthrange(year, month)[1]:
                return None  # a month without that day has no occurrence
            anchor = _dt.date(year, month, self.month_day)
        else:
            weeks = [week[self.weekday] for week in _calendar.monthcalendar(year, month) if week[self.weekday]]  # type: ignore[index]
            index = self.nth - 1 if self.nth > 0 else self.nth  # type: ignore[operator]
            if not -len(weeks) <= index < len(weeks):
                return None  # no fifth Tuesday this month
            anchor = _dt.date(year, month, weeks[index])
        return anchor + _dt.timedelta(days=self.offset_days)

    def occurrences(self, begin: _dt.datetime, end: _dt.datetime) -> list[tuple[_dt.datetime, _dt.datetime]]:
        """Occurrences ``[start, end)`` in UTC that overlap ``[begin, end]``, in order."""
        if self.repeat == "once":
            start, stop = to_utc(self.start_local, self.tz), to_utc(self.end_local, self.tz)  # type: ignore[arg-type]
            return [(start, stop)] if start <= end and stop > begin else []
        # local dates whose occurrence could overlap: back by the length (an occurrence runs into later days)
        first = (begin - self.length).astimezone(self.tz).date() - _DAY
        last = end.astimezone(self.tz).date() + _DAY
        days: list[_dt.date] = []
        if self.repeat == "weekly":
            day = first
            while day <= last:
                if day.weekday() in self.days:
                    days.append(day)
                day += _DAY
        else:
            # an anchor month's occurrence can fall into a later (or earlier) month by offset_days
            spread = abs(self.offset_days) // 28 + 1
            low = first.year * 12 + first.month - 1 - spread
            high = last.year * 12 + last.month - 1 + spread
            for index in range(low, high + 1):
                found = self._monthly_date(index // 12, index % 12 + 1)
                if found is not None and first <= found <= last:
                    days.append(found)
            days.sort()
        found_occurrences = []
        for day in days:
            start = self._start(day)
            stop = start + self.length
            if start <= end and stop > begin:
                found_occurrences.append((start, stop))
        return found_occurrences

    def active(self, moment: _dt.datetime) -> tuple[_dt.datetime, _dt.datetime] | None:
        """The occurrence ``moment`` falls in, or None."""
        for start, stop in self.occurrences(moment, moment):
            if start <= moment < stop:
                return start, stop
        return None


def _recurring_length(spec: Mapping[str, t.Any], start: _dt.time, where: str) -> _dt.timedelta:
    if ("end" in spec) == ("duration" in spec):
        raise CalendarError(f"{where}: give exactly one of end (a wall time) or duration")
    if "duration" in spec:
        length = parse_duration(spec["duration"], f"{where}.duration")
    else:
        end = _time(spec["end"], f"{where}.end")
        seconds = (end.hour * 3600 + end.minute * 60 + end.second) - (start.hour * 3600 + start.minute * 60 + start.second)
        length = _dt.timedelta(seconds=seconds % 86400 or 86400)  # an end at or before the start is on the next day
    if length <= _dt.timedelta() or length > _dt.timedelta(days=7):
        raise CalendarError(f"{where}: an occurrence must last more than 0 seconds and at most 7 days")
    return length


def _day(value: t.Any, where: str) -> int:
    if not isinstance(value, str) or value.lower()[:3] not in DAYS:
        raise CalendarError(f"{where}: expected a day such as mon, tue, ... sun, got {value!r}")
    return DAYS.index(value.lower()[:3])


def _integer(value: t.Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CalendarError(f"{where}: expected a whole number from {low} to {high}, got {value!r}")
    return value


def _named(spec: Mapping[str, t.Any], where: str, default_tz: str) -> tuple[str, str, t.Any, _dt.tzinfo]:
    """A rule's name (required), the place to name in its errors from now on, and its time zone (name and zone)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise CalendarError(f"{where}.name is required and must be a non-empty string")
    where = f"{where} ({name})"
    tz_name = spec.get("timezone", default_tz)
    return name, where, tz_name, zone(tz_name, f"{where}.timezone")


def parse_rule(data: t.Any, kind: str, where: str, *, default_tz: str = "UTC") -> Rule:
    spec = _mapping(data, where)
    if kind == "releases":
        return _parse_release(spec, where, default_tz)
    _unknown(spec, _RULE_KEYS, where)
    name, where, tz_name, tz = _named(spec, where, default_tz)
    scope = _scope(spec.get("scope"), f"{where}.scope")
    repeats = [key for key in ("weekly", "monthly", "once") if key in spec]
    if len(repeats) != 1:
        raise CalendarError(f"{where}: give exactly one of weekly, monthly or once")
    repeat = repeats[0]
    body = _mapping(spec[repeat], f"{where}.{repeat}")
    common = {"kind": kind, "name": name, "tz_name": str(tz_name), "tz": tz, "scope": scope, "repeat": repeat}
    if repeat == "once":
        _unknown(body, ("start", "end"), f"{where}.once")
        start = _local_datetime(body.get("start"), f"{where}.once.start")
        end = _local_datetime(body.get("end"), f"{where}.once.end")
        if to_utc(end, tz) <= to_utc(start, tz):
            raise CalendarError(f"{where}.once: end {end.isoformat()} is not after start {start.isoformat()}")
        return Rule(start_local=start, end_local=end, **common)
    start_time = _time(body.get("start"), f"{where}.{repeat}.start")
    length = _recurring_length(body, start_time, f"{where}.{repeat}")
    if repeat == "weekly":
        _unknown(body, ("days", "start", "end", "duration"), f"{where}.weekly")
        raw_days = body.get("days", list(DAYS))
        days = sorted({_day(item, f"{where}.weekly.days") for item in _strings(raw_days, f"{where}.weekly.days")})
        return Rule(days=tuple(days), start_time=start_time, length=length, **common)
    _unknown(body, ("day", "weekday", "nth", "offset_days", "start", "end", "duration"), f"{where}.monthly")
    offset = _integer(body.get("offset_days", 0), f"{where}.monthly.offset_days", -366, 366)
    if ("day" in body) == ("weekday" in body):
        raise CalendarError(f"{where}.monthly: give either day (1-31) or weekday with nth (2nd Tuesday: weekday tue, nth 2)")
    if "day" in body:
        if "nth" in body:
            raise CalendarError(f"{where}.monthly.nth goes with weekday, not with day")
        return Rule(month_day=_integer(body["day"], f"{where}.monthly.day", 1, 31), offset_days=offset, start_time=start_time,
                    length=length, **common)
    nth = _integer(body.get("nth"), f"{where}.monthly.nth", -5, 5)
    if nth == 0:
        raise CalendarError(f"{where}.monthly.nth: 1 to 5 counts from the start of the month, -1 to -5 from its end; not 0")
    return Rule(weekday=_day(body["weekday"], f"{where}.monthly.weekday"), nth=nth, offset_days=offset, start_time=start_time,
                length=length, **common)


def _parse_release(spec: Mapping[str, t.Any], where: str, default_tz: str) -> Rule:
    """A major release: a blackout from ``before`` ahead of it until ``after`` it (one day each by default)."""
    _unknown(spec, _RELEASE_KEYS, where)
    name, where, tz_name, tz = _named(spec, where, default_tz)
    at = _local_datetime(spec.get("at"), f"{where}.at")
    before = parse_duration(spec.get("before", "1d"), f"{where}.before")
    after = parse_duration(spec.get("after", "1d"), f"{where}.after")
    if before + after <= _dt.timedelta():
        raise CalendarError(f"{where}: before and after leave no blackout")
    return Rule(kind="releases", name=name, tz_name=str(tz_name), tz=tz, scope=_scope(spec.get("scope"), f"{where}.scope"),
                repeat="once", start_local=at - before, end_local=at + after)


@dataclasses.dataclass(frozen=True)
class Calendar:
    windows: tuple[Rule, ...] = ()
    freezes: tuple[Rule, ...] = ()
    peak_hours: tuple[Rule, ...] = ()
    releases: tuple[Rule, ...] = ()

    def rules(self) -> tuple[Rule, ...]:
        return self.windows + self.freezes + self.peak_hours + self.releases

    def as_dict(self) -> dict[str, t.Any]:
        return {kind: [rule.as_dict() for rule in getattr(self, kind)] for kind in KINDS}


def parse_calendar(data: t.Any, where: str = "calendar") -> Calendar:
    spec = _mapping(data or {}, where)
    _unknown(spec, KINDS + ("timezone",), where)
    default_tz = spec.get("timezone", "UTC")
    zone(default_tz, f"{where}.timezone")
    parsed: dict[str, tuple[Rule, ...]] = {}
    for kind in KINDS:
        items = spec.get(kind) or []
        if not isinstance(items, (list, tuple)):
            raise CalendarError(f"{where}.{kind} must be a list, got {_type_name(items)}")
        rules = tuple(parse_rule(item, kind, f"{where}.{kind}[{index}]", default_tz=default_tz) for index, item in enumerate(items))
        names = [rule.name for rule in rules]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise CalendarError(f"{where}.{kind}: name(s) {', '.join(duplicated)} used twice")
        parsed[kind] = rules
    return Calendar(**parsed)


# ---------------------------------------------------------------------------------------------------------
# decisions


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a change's profile asks of the calendar, and what an override lets it break."""

    require_window: bool = True
    avoid_peak: bool = True
    avoid_releases: bool = True
    breaks: frozenset[str] = frozenset()  # kinds an override lets through: freeze, window, peak, release
    override_hosts: frozenset[str] = frozenset()
    override_until: _dt.datetime | None = None


def host_blockers(calendar: Calendar, attributes: Mapping[str, t.Any], moment: _dt.datetime, constraints: Constraints,
                  *, host: str | None = None) -> tuple[list[str], list[str]]:
    """(blockers, allowances) for one host at one instant. Blockers name the rule and until when it holds."""
    blockers: list[str] = []
    notes: list[str] = []
    overridden = (host is not None and host in constraints.override_hosts and constraints.override_until is not None
                  and moment < constraints.override_until)

    def matching(rules: tuple[Rule, ...]) -> list[Rule]:
        return [rule for rule in rules if scope_matches(rule.scope, attributes)]

    def block(kind: str, text: str) -> None:
        if overridden and kind in constraints.breaks:
            notes.append(f"override: {text}")
        else:
            blockers.append(text)

    for rule in matching(calendar.freezes):
        hit = rule.active(moment)
        if hit:
            block("freeze", f"freeze {rule.name} until {iso_z(hit[1])}")
    if constraints.require_window:
        windows = matching(calendar.windows)
        open_in = [(rule, rule.active(moment)) for rule in windows]
        open_in = [(rule, hit) for rule, hit in open_in if hit]
        if windows and not open_in:
            block("window", "outside maintenance window " + ", ".join(rule.name for rule in windows))
        for rule, hit in open_in:
            notes.append(f"window {rule.name} until {iso_z(hit[1])}")  # type: ignore[index]
    if constraints.avoid_peak:
        for rule in matching(calendar.peak_hours):
            hit = rule.active(moment)
            if hit:
                block("peak", f"peak hours {rule.name} until {iso_z(hit[1])}")
    if constraints.avoid_releases:
        for rule in matching(calendar.releases):
            hit = rule.active(moment)
            if hit:
                block("release", f"release {rule.name} blackout until {iso_z(hit[1])}")
    return blockers, notes


def evaluate(calendar: Calendar, hosts: Mapping[str, Mapping[str, t.Any]], moment: _dt.datetime,
             constraints: Constraints) -> dict[str, t.Any]:
    """May a wave (these hosts) start at moment? ``{fits, reasons, notes, blocked_hosts}``; hosts with equal scope
    attributes are evaluated once."""
    by_scope: dict[tuple[t.Any, ...], list[str]] = {}
    for host, attributes in hosts.items():
        key = tuple(attributes.get(name) for name in SCOPE_KEYS) + ((host,) if host in constraints.override_hosts else ())
        by_scope.setdefault(key, []).append(host)
    reasons: list[str] = []
    notes: list[str] = []
    blocked: list[str] = []
    for members in by_scope.values():
        found, allowed = host_blockers(calendar, hosts[members[0]], moment, constraints, host=members[0])
        for text in found:
            if text not in reasons:
                reasons.append(text)
        for text in allowed:
            if text not in notes:
                notes.append(text)
        if found:
            blocked.extend(members)
    return {"fits": not reasons, "reasons": reasons, "notes": notes, "blocked_hosts": sorted(blocked)}


def next_opening(calendar: Calendar, hosts: Mapping[str, Mapping[str, t.Any]], moment: _dt.datetime, constraints: Constraints,
                 *, horizon: _dt.timedelta = HORIZON) -> _dt.datetime | None:
    """The first instant at or after moment when the wave fits, or None within the horizon. Only rule edges can
    change the answer, so those (and moment itself) are the candidates."""
    if evaluate(calendar, hosts, moment, constraints)["fits"]:
        return moment
    until = moment + horizon
    edges = {until}
    if constraints.override_until is not None and moment < constraints.override_until:
        edges.add(constraints.override_until)
    for rule in calendar.rules():
        for start, stop in rule.occurrences(moment, until):
            edges.update(edge for edge in (start, stop) if moment < edge <= until)
    for edge in sorted(edges):
        if evaluate(calendar, hosts, edge, constraints)["fits"]:
            return edge
    return None
