# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import re
import typing as t

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.filter.error_budget import FilterModule, error_budget


@pytest.mark.parametrize(
    "spec, fleet_size, expected",
    [
        (0, 40, 0),
        (2, 40, 2),
        ("2", 40, 2),
        ("5%", 40, 2),
        ("5%", 39, 1),
        ("5%", 19, 0),
        ("100%", 40, 40),
        ("2.5%", 200, 5),
    ],
)
def test_error_budget(spec: t.Any, fleet_size: int, expected: int) -> None:
    assert error_budget(spec, fleet_size) == expected


@pytest.mark.parametrize(
    "spec, fleet_size, message",
    [
        ("150%", 40, "fleetpatch.rollout.error_budget: policy.error_budget: percent 150% is outside 0-100"),
        ("many", 40, "fleetpatch.rollout.error_budget: policy.error_budget: expected a count such as 5 or a percent such as '25%', got 'many'"),
        (-3, 40, "fleetpatch.rollout.error_budget: policy.error_budget: count -3 must be at least 0"),
        ("5%", None, "fleetpatch.rollout.error_budget: fleet_size must be a count >= 0, got None"),
        ("5%", True, "fleetpatch.rollout.error_budget: fleet_size must be a count >= 0, got True"),
    ],
)
def test_error_budget_errors(spec: t.Any, fleet_size: t.Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=f"^{re.escape(message)}$"):
        error_budget(spec, fleet_size)


def test_filter_is_registered() -> None:
    assert FilterModule().filters() == {"error_budget": error_budget}
