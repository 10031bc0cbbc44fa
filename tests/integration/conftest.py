"""Fixtures shared by the integration tests that drive the embedded demo fleet."""

from __future__ import annotations

import typing as t

import pytest

from .rollout_harness import DemoFleet


@pytest.fixture
def make_fleet(tmp_path) -> t.Iterator[t.Callable[..., DemoFleet]]:
    """A factory of created demo fleets, each in its own folder under tmp_path; all are torn down after the test.

    Keyword arguments are the demo_fleet role's variables (demo_fleet_hosts_per_cell, demo_fleet_faults, ...).
    """
    fleets: list[DemoFleet] = []

    def factory(**params: t.Any) -> DemoFleet:
        fleet = DemoFleet(str(tmp_path / f"f{len(fleets)}"), **params)
        fleets.append(fleet)
        fleet.create()
        return fleet

    yield factory
    for fleet in fleets:
        fleet.teardown()
