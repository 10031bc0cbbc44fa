"""Fixtures shared by the integration tests that drive the embedded demo fleet."""

from __future__ import annotations

import os
import typing as t

import pytest

from .rollout_harness import DemoFleet


@pytest.fixture(scope="session", autouse=True)
def host_bytecode_cache(tmp_path_factory) -> t.Iterator[str]:
    """The demo hosts run as the user running the tests: their module_utils bytecode cache goes to a session temp dir,
    not to that user's ~/.cache/fleetpatch (a test that studies the cache points FLEETPATCH_BYTECODE_CACHE_DIR elsewhere)."""
    cache = str(tmp_path_factory.mktemp("host-bytecode"))
    before = os.environ.get("FLEETPATCH_BYTECODE_CACHE_DIR")
    os.environ["FLEETPATCH_BYTECODE_CACHE_DIR"] = cache
    yield cache
    if before is None:
        os.environ.pop("FLEETPATCH_BYTECODE_CACHE_DIR", None)
    else:
        os.environ["FLEETPATCH_BYTECODE_CACHE_DIR"] = before


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
