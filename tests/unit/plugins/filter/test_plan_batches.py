# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json
import re
import typing as t

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.filter.plan_batches import FilterModule, plan_batches
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import compile_plan, plan_json

HOSTS = {
    f"{region}-web-{number}": {"fleet_region": region, "fleet_tenant": "acme", "fleet_segment": "web"}
    for region in ("eu-west", "us-east")
    for number in range(1, 4)
}


@pytest.mark.parametrize(
    "policy, expected",
    [
        ({}, [1, 2, 3]),
        ({"canary": {"size": 0}, "waves": ["100%"]}, [6]),
        ({"waves": [3, "100%"], "disruption_budget": {"region": 1}}, [1, 2, 1, 1, 1]),
    ],
)
def test_plan_batches(policy: dict[str, t.Any], expected: list[int]) -> None:
    plan = compile_plan(HOSTS, policy, "p-1")
    assert plan_batches(plan) == expected
    assert plan_batches(json.loads(plan_json(plan))) == expected  # read back from plan.json


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "fleetpatch.rollout.plan_batches: plan must be the mapping compile_plan returns, with a 'batches' list; got None"),
        ("plan.json", "fleetpatch.rollout.plan_batches: plan must be the mapping compile_plan returns, with a 'batches' list; got str"),
        ({"serial": [1]}, "fleetpatch.rollout.plan_batches: plan must be the mapping compile_plan returns, with a 'batches' list; got dict"),
    ],
)
def test_plan_batches_errors(value: t.Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=f"^{re.escape(message)}$"):
        plan_batches(value)


def test_filter_is_registered() -> None:
    assert FilterModule().filters() == {"plan_batches": plan_batches}
