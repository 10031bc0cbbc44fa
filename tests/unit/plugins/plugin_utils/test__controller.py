from __future__ import annotations

import datetime

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import CalendarError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import CLOCK_ENV, decision_clock


def test_rollout_clock_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_ENV, "2026-01-01T00:00:00Z")
    now, source = decision_clock("2026-03-29T01:30:00Z")
    assert (now, source) == (datetime.datetime(2026, 3, 29, 1, 30, tzinfo=datetime.timezone.utc), "rollout_clock")


def test_the_environment_injects_the_clock_when_no_rollout_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_ENV, "2026-01-01T00:00:00Z")
    assert decision_clock(None) == (datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), CLOCK_ENV)


def test_otherwise_the_controller_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    before = datetime.datetime.now(datetime.timezone.utc)
    now, source = decision_clock("")
    assert source == "controller"
    assert before - datetime.timedelta(seconds=1) <= now <= datetime.datetime.now(datetime.timezone.utc)


def test_a_bad_clock_is_refused_naming_it() -> None:
    with pytest.raises(CalendarError, match="rollout_clock"):
        decision_clock("yesterday")
