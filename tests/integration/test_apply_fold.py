"""rollout_stage=copy on the demo fleet: the artifact travels with the one patch_apply execution per host (the action
plugin's transfer), no separate staging task runs, and the cached copy is the verified artifact."""

from __future__ import annotations

import collections
import hashlib
import os

import pytest

from .rollout_harness import DemoFleet

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_regions": ["eu-west", "us-east"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"],
         "demo_fleet_hosts_per_cell": 2}


def test_copy_stage_stages_and_applies_in_one_execution_per_host(make_fleet) -> None:
    fleet: DemoFleet = make_fleet(**SMALL)
    artifact = fleet.fleet()["artifacts"]["1.0.1"]
    result = fleet.rollout(policy={"canary": {"size": 1}, "waves": ["100%"]}, rollout_stage="copy")
    assert result.status == "successful", result.stdout[-3000:]
    nodes = fleet.nodes()
    assert fleet.versions() == {host: "1.0.1" for host in nodes}
    # per node: one task that ran a module on it, patch_apply; nothing else touched it (no copy, no stat)
    ran: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("host") in nodes:
            action = str(data.get("task_action", "")).rsplit(".", 1)[-1]
            if action not in ("set_fact", "add_host", "debug", "meta", "change_window", "synthetic_checks", "wave_gate", "validate_argument_spec"):
                ran[data["host"]][action] += 1
    assert {host: dict(counts) for host, counts in ran.items()} == {host: {"patch_apply": 1} for host in nodes}
    for host in nodes:
        cached = os.path.join(fleet.host_root(host), "cache", "sha256", artifact["sha256"])
        with open(cached, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == artifact["sha256"]
        assert fleet.host_manifest(host)["artifact_sha256"] == artifact["sha256"]
