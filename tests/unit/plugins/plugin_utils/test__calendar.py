from __future__ import annotations

import datetime as dt
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import (
    CalendarError,
    Constraints,
    evaluate,
    iso_z,
    next_opening,
    parse_calendar,
    parse_instant,
)


def at(text: str) -> dt.datetime:
    return parse_instant(text)


def one(kind: str, **rule: t.Any):
    return getattr(parse_calendar({kind: [dict({"name": "r"}, **rule)]}), kind)[0]


def is_active(rule, text: str) -> bool:
    return rule.active(at(text)) is not None


# --- window edges: one second before and after -------------------------------------------------------------

WEEKLY_UTC = {"timezone": "UTC", "weekly": {"days": ["tue", "thu"], "start": "02:00", "end": "05:00"}}


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        ("2026-03-10T01:59:59Z", False),  # Tuesday, one second before the start
        ("2026-03-10T02:00:00Z", True),  # the start is inside
        ("2026-03-10T04:59:59Z", True),  # one second before the end
        ("2026-03-10T05:00:00Z", False),  # the end is outside (half-open)
        ("2026-03-11T03:00:00Z", False),  # Wednesday is not a window day
        ("2026-03-12T02:00:01Z", True),  # Thursday
    ],
)
def test_weekly_window_edges(moment: str, active: bool) -> None:
    assert is_active(one("windows", **WEEKLY_UTC), moment) is active


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        # Europe/Berlin is UTC+1 in January: 22:00-02:00 local is 21:00-01:00 UTC, across midnight
        ("2026-01-09T20:59:59Z", False),
        ("2026-01-09T21:00:00Z", True),
        ("2026-01-10T00:59:59Z", True),
        ("2026-01-10T01:00:00Z", False),
    ],
)
def test_window_across_midnight_in_its_time_zone(moment: str, active: bool) -> None:
    rule = one("windows", timezone="Europe/Berlin", weekly={"days": ["fri"], "start": "22:00", "end": "02:00"})
    assert is_active(rule, moment) is active


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        ("2026-12-19T22:59:59Z", False),  # Berlin 2026-12-20T00:00 is 23:00Z the day before
        ("2026-12-19T23:00:00Z", True),
        ("2027-01-04T22:59:59Z", True),
        ("2027-01-04T23:00:00Z", False),
    ],
)
def test_one_off_freeze_edges(moment: str, active: bool) -> None:
    rule = one("freezes", timezone="Europe/Berlin", once={"start": "2026-12-20T00:00", "end": "2027-01-05T00:00"})
    assert is_active(rule, moment) is active


# --- DST ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "expected"),
    [
        # Europe/Berlin springs forward 2026-03-29 at 02:00 CET (01:00Z); 01:00-04:00 lasts three real hours
        ("Europe/Berlin", "sun", "01:00", "04:00", [("2026-03-29T00:00:00Z", "2026-03-29T03:00:00Z")]),
        # a start in the skipped hour moves forward by the gap: 02:30 -> 03:30 CEST (01:30Z), still one hour long
        ("Europe/Berlin", "sun", "02:30", "03:30", [("2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z")]),
        # Europe/Berlin falls back 2026-10-25 at 03:00 CEST (01:00Z): 02:30 happens twice, the first one counts, once
        ("Europe/Berlin", "sun", "02:30", "03:30", [("2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z")]),
        ("Europe/Berlin", "sun", "01:00", "04:00", [("2026-10-24T23:00:00Z", "2026-10-25T02:00:00Z")]),
        # America/New_York springs forward 2026-03-08 at 02:00 EST (07:00Z), falls back 2026-11-01 at 02:00 EDT (06:00Z)
        ("America/New_York", "sun", "01:30", "03:30", [("2026-03-08T06:30:00Z", "2026-03-08T08:30:00Z")]),
        ("America/New_York", "sun", "02:15", "02:45", [("2026-03-08T07:15:00Z", "2026-03-08T07:45:00Z")]),
        ("America/New_York", "sun", "01:30", "02:30", [("2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z")]),
    ],
)
def test_dst_neither_skips_nor_doubles_an_hour(tz: str, day: str, start: str, end: str, expected: list[tuple[str, str]]) -> None:
    rule = one("windows", timezone=tz, weekly={"days": [day], "start": start, "end": end})
    transition_day = at(expected[0][0]).replace(hour=0, minute=0) - dt.timedelta(hours=12)
    found = rule.occurrences(transition_day, transition_day + dt.timedelta(hours=36))
    assert [(iso_z(begin), iso_z(stop)) for begin, stop in found] == expected


def test_daily_rule_across_both_transitions_gives_one_occurrence_per_day_of_equal_length() -> None:
    rule = one("peak_hours", timezone="Europe/Berlin", weekly={"start": "01:30", "end": "03:30"})
    for begin, days in (("2026-03-27T12:00:00Z", ["2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"]),
                        ("2026-10-23T12:00:00Z", ["2026-10-24", "2026-10-25", "2026-10-26", "2026-10-27"])):
        found = rule.occurrences(at(begin), at(begin) + dt.timedelta(days=4))
        # one per local date, none skipped, none doubled, each two real hours long
        assert [start.astimezone(rule.tz).date().isoformat() for start, _stop in found] == days
        assert {stop - start for start, stop in found} == {dt.timedelta(hours=2)}


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        ("2026-03-29T00:59:59Z", True),  # 01:59:59 CET, the last second before the jump
        ("2026-03-29T01:00:00Z", True),  # 03:00:00 CEST
        ("2026-03-29T01:59:59Z", True),
        ("2026-03-29T02:00:00Z", False),  # 01:00 CET + 2 h: the window's two real hours are over
    ],
)
def test_edges_on_the_spring_forward_night(moment: str, active: bool) -> None:
    rule = one("windows", timezone="Europe/Berlin", weekly={"days": ["sun"], "start": "01:00", "duration": "2h"})
    assert is_active(rule, moment) is active


# --- second Tuesday plus N days ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "month_start", "expected_local_date"),
    [
        (0, "2026-03-01", "2026-03-10"),  # second Tuesday of March 2026
        (2, "2026-03-01", "2026-03-12"),
        (6, "2026-06-01", "2026-06-15"),  # June 9 + 6
        (20, "2026-03-25", "2026-03-30"),  # March 10 + 20 stays in March
        (20, "2026-04-25", "2026-05-04"),  # April 14 + 20 crosses into May
        (20, "2026-12-01", "2026-12-28"),  # December 8 + 20, year end
    ],
)
def test_second_tuesday_plus_n_days(offset: int, month_start: str, expected_local_date: str) -> None:
    rule = one("windows", timezone="America/New_York", monthly={"weekday": "tue", "nth": 2, "offset_days": offset, "start": "22:00",
                                                                "duration": "4h"})
    begin = at(f"{month_start}T12:00:00Z")
    first = rule.occurrences(begin, begin + dt.timedelta(days=40))[0]
    local = first[0].astimezone(rule.tz)
    assert local.date().isoformat() == expected_local_date
    assert (local.hour, local.minute) == (22, 0)


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        # Jan 2026: second Tuesday Jan 13 + 20 days = Mon Feb 2, 22:00 EST = Feb 3 03:00Z, four hours
        ("2026-02-03T02:59:59Z", False),
        ("2026-02-03T03:00:00Z", True),
        ("2026-02-03T06:59:59Z", True),
        ("2026-02-03T07:00:00Z", False),
        # Mar 2026: second Tuesday Mar 10 + 20 = Mon Mar 30, 22:00 EDT (after the March 8 switch) = Mar 31 02:00Z
        ("2026-03-31T01:59:59Z", False),
        ("2026-03-31T02:00:00Z", True),
        ("2026-03-31T05:59:59Z", True),
        ("2026-03-31T06:00:00Z", False),
        # Dec 2026: second Tuesday Dec 8 + 20 = Mon Dec 28 (year end): 22:00 EST = Dec 29 03:00Z
        ("2026-12-29T03:00:00Z", True),
    ],
)
def test_second_tuesday_plus_20_days_across_month_ends(moment: str, active: bool) -> None:
    rule = one("windows", timezone="America/New_York", monthly={"weekday": "tue", "nth": 2, "offset_days": 20, "start": "22:00",
                                                                "end": "02:00"})
    assert is_active(rule, moment) is active


def test_last_weekday_and_missing_month_days() -> None:
    last_friday = one("freezes", timezone="UTC", monthly={"weekday": "fri", "nth": -1, "start": "00:00", "duration": "1d"})
    assert is_active(last_friday, "2026-02-27T12:00:00Z")
    assert not is_active(last_friday, "2026-02-20T12:00:00Z")
    day_31 = one("windows", timezone="UTC", monthly={"day": 31, "start": "00:00", "duration": "1h"})
    found = day_31.occurrences(at("2026-01-01T00:00:00Z"), at("2026-06-30T00:00:00Z"))
    assert [iso_z(start)[:10] for start, _stop in found] == ["2026-01-31", "2026-03-31", "2026-05-31"]


# --- decisions -------------------------------------------------------------------------------------------------

CALENDAR = {
    "windows": [{"name": "eu-nightly", "scope": {"region": "eu-west"}, "timezone": "Europe/Berlin",
                 "weekly": {"start": "01:00", "end": "05:00"}}],
    "freezes": [{"name": "us-launch", "scope": {"region": "us-east"}, "timezone": "UTC",
                 "once": {"start": "2026-03-10T00:00", "end": "2026-03-12T00:00"}}],
    "peak_hours": [{"name": "us-business", "scope": {"region": "us-east"}, "timezone": "America/New_York",
                    "weekly": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"}}],
    "releases": [{"name": "v5", "scope": {"environment": "prod"}, "timezone": "UTC", "at": "2026-04-15T12:00", "before": "6h",
                  "after": "6h"}],
}
EU = {"eu-1": {"region": "eu-west", "tenant": "acme", "environment": "prod"}}
US = {"us-1": {"region": "us-east", "tenant": "acme", "environment": "prod"}}


@pytest.mark.parametrize(
    ("hosts", "moment", "constraints", "fits", "reasons"),
    [
        (EU, "2026-03-10T00:30:00Z", Constraints(), True, []),  # 01:30 in Berlin
        (EU, "2026-03-10T04:00:00Z", Constraints(), False, ["outside maintenance window eu-nightly"]),
        (EU, "2026-03-10T04:00:00Z", Constraints(require_window=False), True, []),
        (US, "2026-03-11T05:00:00Z", Constraints(), False, ["freeze us-launch until 2026-03-12T00:00:00Z"]),
        (US, "2026-03-12T14:00:00Z", Constraints(), False, ["peak hours us-business until 2026-03-12T22:00:00Z"]),
        (US, "2026-03-12T14:00:00Z", Constraints(avoid_peak=False), True, []),
        (US, "2026-04-15T08:00:00Z", Constraints(avoid_peak=False), False, ["release v5 blackout until 2026-04-15T18:00:00Z"]),
        (US, "2026-04-15T08:00:00Z", Constraints(avoid_peak=False, avoid_releases=False), True, []),
        (dict(EU, **US), "2026-03-11T01:00:00Z", Constraints(), False, ["freeze us-launch until 2026-03-12T00:00:00Z"]),
    ],
)
def test_evaluate(hosts, moment: str, constraints: Constraints, fits: bool, reasons: list[str]) -> None:
    found = evaluate(parse_calendar(CALENDAR), hosts, at(moment), constraints)
    assert (found["fits"], found["reasons"]) == (fits, reasons)


def test_override_breaks_only_what_it_names_for_the_hosts_it_names_until_it_expires() -> None:
    calendar = parse_calendar(CALENDAR)
    hosts = {"us-1": US["us-1"], "us-2": US["us-1"]}
    override = Constraints(require_window=False, avoid_peak=False, breaks=frozenset({"freeze"}), override_hosts=frozenset({"us-1", "us-2"}),
                           override_until=at("2026-03-11T06:00:00Z"))
    allowed = evaluate(calendar, hosts, at("2026-03-11T05:00:00Z"), override)
    assert allowed["fits"] and allowed["notes"] == ["override: freeze us-launch until 2026-03-12T00:00:00Z"]
    assert not evaluate(calendar, hosts, at("2026-03-11T06:00:00Z"), override)["fits"]  # expired
    partial = Constraints(require_window=False, avoid_peak=False, breaks=frozenset({"freeze"}), override_hosts=frozenset({"us-1"}),
                          override_until=at("2026-03-11T06:00:00Z"))
    assert evaluate(calendar, hosts, at("2026-03-11T05:00:00Z"), partial)["blocked_hosts"] == ["us-2"]
    peak_too = Constraints(require_window=False, breaks=frozenset({"freeze"}), override_hosts=frozenset({"us-1"}),
                           override_until=at("2026-03-12T23:00:00Z"))
    assert evaluate(calendar, {"us-1": US["us-1"]}, at("2026-03-12T14:00:00Z"), peak_too)["reasons"] == [
        "peak hours us-business until 2026-03-12T22:00:00Z"]


@pytest.mark.parametrize(
    ("hosts", "moment", "expected"),
    [
        (EU, "2026-03-10T00:30:00Z", "2026-03-10T00:30:00Z"),  # fits now
        (EU, "2026-03-10T04:00:00Z", "2026-03-11T00:00:00Z"),  # next night, 01:00 CET
        (US, "2026-03-11T05:00:00Z", "2026-03-12T00:00:00Z"),  # the freeze ends at midnight UTC (19:00 EST, after peak)
        (US, "2026-03-12T14:00:00Z", "2026-03-12T22:00:00Z"),  # peak ends 18:00 EDT
    ],
)
def test_next_opening(hosts, moment: str, expected: str) -> None:
    found = next_opening(parse_calendar(CALENDAR), hosts, at(moment), Constraints())
    assert found is not None and iso_z(found) == expected


def test_next_opening_is_none_when_nothing_opens_within_the_horizon() -> None:
    calendar = parse_calendar({"freezes": [{"name": "forever", "once": {"start": "2026-01-01T00:00", "end": "2030-01-01T00:00"}}]})
    assert next_opening(calendar, EU, at("2026-03-10T00:00:00Z"), Constraints(), horizon=dt.timedelta(days=30)) is None


@pytest.mark.parametrize(
    ("calendar", "message"),
    [
        ({"windows": [{"weekly": {"start": "01:00", "end": "02:00"}}]}, "calendar.windows[0].name is required"),
        ({"windows": [{"name": "w", "timezone": "Mars/Olympus", "weekly": {"start": "01:00", "end": "02:00"}}]},
         "calendar.windows[0] (w).timezone: unknown time zone 'Mars/Olympus'"),
        ({"windows": [{"name": "w", "weekly": {"start": "25:00", "end": "02:00"}}]},
         "calendar.windows[0] (w).weekly.start: expected a wall time HH:MM or HH:MM:SS, got '25:00'"),
        ({"windows": [{"name": "w", "weekly": {"days": ["funday"], "start": "01:00", "end": "02:00"}}]},
         "calendar.windows[0] (w).weekly.days: expected a day such as mon, tue, ... sun, got 'funday'"),
        ({"windows": [{"name": "w", "weekly": {"start": "01:00"}}]}, "calendar.windows[0] (w).weekly: give exactly one of end (a wall time) or duration"),
        ({"windows": [{"name": "w", "monthly": {"weekday": "tue", "nth": 0, "start": "01:00", "end": "02:00"}}]},
         "calendar.windows[0] (w).monthly.nth: 1 to 5 counts from the start of the month"),
        ({"freezes": [{"name": "f", "once": {"start": "2026-01-02T00:00", "end": "2026-01-01T00:00"}}]},
         "calendar.freezes[0] (f).once: end 2026-01-01T00:00:00 is not after start 2026-01-02T00:00:00"),
        ({"freezes": [{"name": "f", "once": {"start": "2026-01-01T00:00+01:00", "end": "2026-01-02T00:00"}}]},
         "calendar.freezes[0] (f).once.start: write local wall time without an offset"),
        ({"windows": [{"name": "w", "scope": {"rack": "a"}, "weekly": {"start": "01:00", "end": "02:00"}}]},
         "calendar.windows[0] (w).scope: unknown key(s) rack; allowed: region, tenant, environment"),
        ({"windows": [{"name": "w", "weekly": {"start": "01:00", "end": "02:00"}, "once": {}}]},
         "calendar.windows[0] (w): give exactly one of weekly, monthly or once"),
        ({"releases": [{"name": "v5", "at": "soon"}]}, "calendar.releases[0] (v5).at: 'soon' is not a local date-time"),
        ({"holidays": []}, "calendar: unknown key(s) holidays"),
    ],
)
def test_bad_rules_name_the_field(calendar, message: str) -> None:
    with pytest.raises(CalendarError) as caught:
        parse_calendar(calendar)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-03-10T01:00:00", "clock: '2026-03-10T01:00:00' has no time zone; write it in UTC with a Z (2026-03-10T01:00:00Z)"),
        ("tomorrow", "clock: 'tomorrow' is not an ISO 8601 timestamp such as 2026-03-10T01:00:00Z"),
    ],
)
def test_clock_must_be_utc(value: str, message: str) -> None:
    with pytest.raises(CalendarError) as caught:
        parse_instant(value)
    assert str(caught.value) == message
    assert iso_z(parse_instant("2026-03-10T02:00:00+01:00")) == "2026-03-10T01:00:00Z"
