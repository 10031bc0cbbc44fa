# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
import random
import re
import types
import typing as t
from collections import Counter

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import canonical_json
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _plan as _plan_module
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import (
    LEVELS,
    PlanError,
    compile_plan,
    error_budget_limit,
    error_budget_spent,
    host_batch_index,
    normalize_policy,
    plan_json,
    render_plan_text,
    serial_batches,
)

Hosts = t.Dict[str, t.Dict[str, t.Any]]

# a plan that keeps plan order visible: no canary, one wave, no budgets
FLAT = {"canary": {"size": 0}, "waves": ["100%"]}


def host(region: str, tenant: str = "acme", segment: str = "web", environment: str = "prod", **extra: t.Any) -> dict[str, t.Any]:
    return {"fleet_region": region, "fleet_tenant": tenant, "fleet_segment": segment, "fleet_environment": environment, **extra}


def grid(regions: t.Sequence[str], tenants: t.Sequence[str], per_group: int, segment: str = "web") -> Hosts:
    """``<region>-<tenant>-<n>`` hosts, per_group of them in every region x tenant."""
    return {
        f"{region}-{tenant}-{number}": host(region, tenant, segment)
        for region in regions
        for tenant in tenants
        for number in range(1, per_group + 1)
    }


FLEET16 = grid(["eu-west", "us-east"], ["acme", "beta"], 4)  # 16 hosts, 4 per region x tenant


def wave_hosts(plan: dict[str, t.Any]) -> dict[str, list[str]]:
    return {wave["name"]: wave["hosts"] for wave in plan["waves"]}


def batch_hosts(plan: dict[str, t.Any]) -> list[list[str]]:
    return [batch["hosts"] for batch in plan["batches"]]


def assert_budgets_hold(plan: dict[str, t.Any], hosts: Hosts) -> None:
    """Every batch respects every disruption budget and max_concurrency; structure is self-consistent."""
    policy = plan["policy"]
    fleet_size = len(hosts)
    for level, spec in policy["disruption_budget"].items():
        sizes = Counter(variables[f"fleet_{level}"] for variables in hosts.values())
        for batch in plan["batches"]:
            in_batch = Counter(hosts[name][f"fleet_{level}"] for name in batch["hosts"])
            for group, count in in_batch.items():
                if isinstance(spec, int):
                    limit = spec
                else:
                    limit = max(1, math.floor(float(spec[:-1]) * sizes[group] / 100))
                assert count <= limit, (batch, level, group)
    if policy["max_concurrency"] is not None:
        spec = policy["max_concurrency"]
        limit = spec if isinstance(spec, int) else max(1, math.floor(float(spec[:-1]) * fleet_size / 100))
        assert all(len(batch["hosts"]) <= limit for batch in plan["batches"])
    # every host exactly once, in the order the batches give
    assert sorted(plan["host_order"]) == sorted(hosts)
    assert plan["host_order"] == [name for batch in plan["batches"] for name in batch["hosts"]]
    assert plan["serial"] == [len(batch["hosts"]) for batch in plan["batches"]] == serial_batches(plan)
    assert sum(plan["serial"]) == fleet_size
    # batches are grouped by wave, in wave order, and the last one of each wave says so
    assert [batch["index"] for batch in plan["batches"]] == list(range(len(plan["batches"])))
    for wave in plan["waves"]:
        members = [plan["batches"][index] for index in wave["batches"]]
        assert all(batch["wave"] == wave["index"] for batch in members)
        assert [batch["last_in_wave"] for batch in members] == [False] * (len(members) - 1) + [True]
        assert wave["hosts"] == [name for batch in members for name in batch["hosts"]]
    assert [index for wave in plan["waves"] for index in wave["batches"]] == list(range(len(plan["batches"])))


# ---------------------------------------------------------------------------------------------------------
# grouping and ordering

ORDER_CASES: list[tuple[str, Hosts, dict[str, t.Any], list[str]]] = [
    (
        "groups sorted by region, then tenant, then segment, then hostname",
        {
            "b": host("us-east", "acme"),
            "a": host("us-east", "acme", "api"),
            "c": host("eu-west", "zeta"),
            "d": host("eu-west", "acme"),
        },
        {},
        ["d", "c", "a", "b"],
    ),
    (
        "natural sort of hostnames: web-2 before web-10",
        {"web-10": host("r"), "web-2": host("r"), "web-1": host("r"), "web-01": host("r")},
        {},
        ["web-01", "web-1", "web-2", "web-10"],
    ),
    (
        "natural sort of group names: az-2 before az-10",
        {"x": host("az-10"), "y": host("az-2"), "z": host("az-1")},
        {},
        ["z", "y", "x"],
    ),
    (
        "explicit order first, unlisted groups after, sorted",
        {"a": host("ap-south"), "b": host("eu-west"), "c": host("us-east"), "d": host("af-south")},
        {"order": {"region": ["us-east", "eu-west", "mars-1"]}},
        ["c", "b", "d", "a"],
    ),
    (
        "explicit order on a deeper level applies inside each region",
        {"a": host("eu", "acme"), "b": host("eu", "beta"), "c": host("us", "acme"), "d": host("us", "beta")},
        {"order": {"tenant": ["beta"]}},
        ["b", "a", "d", "c"],
    ),
    (
        "levels choose the grouping: environment first",
        {"a": host("eu", environment="prod"), "b": host("us", environment="dev"), "c": host("eu", environment="dev")},
        {"levels": ["environment", "region"]},
        ["c", "b", "a"],
    ),
    (
        "a level left out of levels does not group",
        {"a": host("eu", "zeta"), "b": host("eu", "acme"), "c": host("us", "acme")},
        {"levels": ["region"]},
        ["a", "b", "c"],
    ),
]


@pytest.mark.parametrize("hosts, policy, expected", [case[1:] for case in ORDER_CASES], ids=[case[0] for case in ORDER_CASES])
def test_plan_order(hosts: Hosts, policy: dict[str, t.Any], expected: list[str]) -> None:
    plan = compile_plan(hosts, {**FLAT, **policy}, "p-1")
    assert plan["host_order"] == expected
    assert plan["waves"][0]["hosts"] == expected


def test_wave_groups_are_keyed_by_the_level_path() -> None:
    plan = compile_plan({"a": host("eu", "acme"), "b": host("eu", "acme"), "c": host("us", "beta", "api")}, FLAT, "p-1")
    assert plan["levels"] == ["region", "tenant", "segment"]
    assert plan["waves"][0]["groups"] == {
        "region=eu/tenant=acme/segment=web": ["a", "b"],
        "region=us/tenant=beta/segment=api": ["c"],
    }


def test_a_budget_below_the_planning_levels_splits_hosts_alike_in_plan_order() -> None:
    """Hosts of one region differ only in the budgeted tenant: one place in the plan order (natural by name within the
    region), and one group per region path however the batches interleave their tenants."""
    hosts = {"a": host("eu", "zeta"), "b": host("eu", "acme"), "c": host("us", "acme"), "d": host("eu", "zeta")}
    plan = compile_plan(hosts, {**FLAT, "levels": ["region"], "disruption_budget": {"tenant": 1}}, "p-1")
    assert plan["host_order"] == ["a", "b", "d", "c"]  # batch by batch
    assert [batch["hosts"] for batch in plan["batches"]] == [["a", "b"], ["d", "c"]]
    assert plan["waves"][0]["groups"] == {"region=eu": ["a", "b", "d"], "region=us": ["c"]}


# ---------------------------------------------------------------------------------------------------------
# determinism


def test_same_inputs_give_identical_bytes() -> None:
    policy = {"canary": {"size": 2}, "disruption_budget": {"tenant": "25%"}, "bake_seconds": 30}
    first = plan_json(compile_plan(FLEET16, policy, "p-1"))
    second = plan_json(compile_plan(json.loads(json.dumps(FLEET16)), json.loads(json.dumps(policy)), "p-1"))
    assert first == second
    assert first == canonical_json(json.loads(first))  # canonical: sorted keys, compact, one trailing newline
    assert "\n" not in first[:-1] and ": " not in first


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_host_and_policy_key_order_do_not_matter(seed: int) -> None:
    policy = {"waves": [3, "50%", "100%"], "disruption_budget": {"region": 3, "tenant": "50%"}, "max_concurrency": 5}
    expected = plan_json(compile_plan(FLEET16, policy, "p-1"))
    rng = random.Random(seed)
    names = list(FLEET16)
    rng.shuffle(names)
    shuffled_hosts = {name: dict(reversed(list(FLEET16[name].items()))) for name in names}
    shuffled_policy = dict(reversed(list(policy.items())))
    assert plan_json(compile_plan(shuffled_hosts, shuffled_policy, "p-1")) == expected


def test_plan_has_no_clock_and_the_documented_shape() -> None:
    plan = compile_plan(FLEET16, None, "p-1")
    assert set(plan) == {"schema", "patch_id", "policy", "fleet_size", "levels", "error_budget", "waves", "batches", "serial", "host_order", "fingerprint"}
    assert plan["schema"] == 1 and plan["patch_id"] == "p-1" and plan["fleet_size"] == 16
    assert set(plan["waves"][0]) == {"index", "name", "hosts", "groups", "batches", "bake_seconds", "response", "gates"}
    assert set(plan["batches"][0]) == {"index", "wave", "hosts", "last_in_wave"}
    assert plan["error_budget"] == {"spec": 0, "limit": 0, "halt_when": "exceeded"}


def test_fingerprint_covers_level_attributes_policy_and_patch_id() -> None:
    plan = compile_plan(FLEET16, None, "p-1")
    hosts_part = {name: {f"fleet_{level}": FLEET16[name][f"fleet_{level}"] for level in ("region", "tenant", "segment")} for name in FLEET16}
    payload = canonical_json({"hosts": hosts_part, "patch_id": "p-1", "policy": normalize_policy(None)})
    assert plan["fingerprint"] == hashlib.sha256(payload.encode()).hexdigest()

    other_vars = {name: {**variables, "ansible_host": "10.0.0.1"} for name, variables in FLEET16.items()}
    assert compile_plan(other_vars, None, "p-1")["fingerprint"] == plan["fingerprint"]
    assert compile_plan(FLEET16, None, "p-2")["fingerprint"] != plan["fingerprint"]
    assert compile_plan(FLEET16, {"bake_seconds": 1}, "p-1")["fingerprint"] != plan["fingerprint"]
    moved = {**FLEET16, "eu-west-acme-1": host("eu-west", "beta")}
    assert compile_plan(moved, None, "p-1")["fingerprint"] != plan["fingerprint"]


# ---------------------------------------------------------------------------------------------------------
# canary

CANARY_CASES: list[tuple[str, Hosts, dict[str, t.Any], list[str]]] = [
    ("default is one host, the first in plan order", FLEET16, {}, ["eu-west-acme-1"]),
    ("count", FLEET16, {"canary": {"size": 3}}, ["eu-west-acme-1", "eu-west-acme-2", "eu-west-acme-3"]),
    ("percent rounds up: 5% of 16 is 1", FLEET16, {"canary": {"size": "5%"}}, ["eu-west-acme-1"]),
    ("percent rounds up: 10% of 16 is 2", FLEET16, {"canary": {"size": "10%"}}, ["eu-west-acme-1", "eu-west-acme-2"]),
    ("percent rounds up: 12.5% of 16 is exactly 2", FLEET16, {"canary": {"size": "12.5%"}}, ["eu-west-acme-1", "eu-west-acme-2"]),
    ("percent is at least one host", grid(["r"], ["t"], 3), {"canary": {"size": "1%"}}, ["r-t-1"]),
    (
        "pinned group is taken first",
        FLEET16,
        {"canary": {"size": 2, "groups": ["region=us-east"]}},
        ["us-east-acme-1", "us-east-acme-2"],
    ),
    (
        "pinned on two levels",
        FLEET16,
        {"canary": {"size": 1, "groups": ["region=us-east,tenant=beta"]}},
        ["us-east-beta-1"],
    ),
    (
        "several pinned groups are taken in plan order, not list order",
        FLEET16,
        {"canary": {"size": 2, "groups": ["region=us-east,tenant=beta", "tenant=beta,region=eu-west"]}},
        ["eu-west-beta-1", "eu-west-beta-2"],
    ),
    (
        "too few pinned hosts: the rest comes from plan order, the wave keeps plan order",
        grid(["eu", "us"], ["a"], 2),
        {"canary": {"size": 3, "groups": ["region=us"]}},
        ["eu-a-1", "us-a-1", "us-a-2"],
    ),
    ("the whole fleet", grid(["r"], ["t"], 2), {"canary": {"size": "100%"}}, ["r-t-1", "r-t-2"]),
]


@pytest.mark.parametrize("hosts, policy, expected", [case[1:] for case in CANARY_CASES], ids=[case[0] for case in CANARY_CASES])
def test_canary(hosts: Hosts, policy: dict[str, t.Any], expected: list[str]) -> None:
    plan = compile_plan(hosts, policy, "p-1")
    canary = plan["waves"][0]
    assert canary["name"] == "canary" and canary["index"] == 0
    assert canary["hosts"] == expected
    assert canary["batches"] == [0] and plan["batches"][0]["hosts"] == expected  # one batch
    assert plan["batches"][0]["last_in_wave"] is True
    assert_budgets_hold(plan, hosts)


@pytest.mark.parametrize("size", [0, "0%"])
def test_no_canary(size: int | str) -> None:
    plan = compile_plan(FLEET16, {"canary": {"size": size}}, "p-1")
    assert [wave["name"] for wave in plan["waves"]] == ["wave-1", "wave-2"]
    assert plan["waves"][0]["index"] == 0 and plan["serial"] == [4, 12]


def test_canary_uses_its_own_response() -> None:
    plan = compile_plan(FLEET16, {"response": "rollback_wave", "canary_response": "quarantine"}, "p-1")
    assert [wave["response"] for wave in plan["waves"]] == ["quarantine", "rollback_wave", "rollback_wave"]
    plan = compile_plan(FLEET16, {"response": "hold"}, "p-1")
    assert [wave["response"] for wave in plan["waves"]] == ["hold", "hold", "hold"]


# ---------------------------------------------------------------------------------------------------------
# waves

WAVE_CASES: list[tuple[str, Hosts, dict[str, t.Any], list[tuple[str, int]]]] = [
    ("default 25% then 100%", FLEET16, {}, [("canary", 1), ("wave-1", 4), ("wave-2", 11)]),
    ("counts", FLEET16, {"waves": [2, 5, 100]}, [("canary", 1), ("wave-1", 2), ("wave-2", 5), ("wave-3", 8)]),
    ("percent of the whole fleet, rounded up", FLEET16, {"waves": ["10%", "30%", "100%"]}, [("canary", 1), ("wave-1", 2), ("wave-2", 5), ("wave-3", 8)]),
    ("last wave truncated", FLEET16, {"waves": [10, 10]}, [("canary", 1), ("wave-1", 10), ("wave-2", 5)]),
    ("empty trailing waves dropped", FLEET16, {"waves": [15, 5, "100%"]}, [("canary", 1), ("wave-1", 15)]),
    ("one host fleet", grid(["r"], ["t"], 1), {}, [("canary", 1)]),
    ("two host fleet", grid(["r"], ["t"], 2), {}, [("canary", 1), ("wave-1", 1)]),
    (
        "boundary cuts a wave at the region change; the last size repeats",
        FLEET16,
        {"canary": {"size": 0}, "waves": [6, "100%"], "wave_boundary": "region"},
        [("wave-1", 6), ("wave-2", 2), ("wave-3", 8)],
    ),
    (
        "boundary on tenant cuts inside a region",
        FLEET16,
        {"canary": {"size": 1}, "waves": [5, "100%"], "wave_boundary": "tenant"},
        [("canary", 1), ("wave-1", 3), ("wave-2", 4), ("wave-3", 4), ("wave-4", 4)],
    ),
    (
        "boundary on tenant follows the region path: acme in two regions is two groups",
        grid(["eu", "us"], ["acme"], 3),
        {"canary": {"size": 0}, "levels": ["region", "tenant"], "waves": ["100%"], "wave_boundary": "tenant"},
        [("wave-1", 3), ("wave-2", 3)],
    ),
]


@pytest.mark.parametrize("hosts, policy, expected", [case[1:] for case in WAVE_CASES], ids=[case[0] for case in WAVE_CASES])
def test_waves(hosts: Hosts, policy: dict[str, t.Any], expected: list[tuple[str, int]]) -> None:
    plan = compile_plan(hosts, policy, "p-1")
    assert [(wave["name"], len(wave["hosts"])) for wave in plan["waves"]] == expected
    assert [wave["index"] for wave in plan["waves"]] == list(range(len(expected)))
    assert_budgets_hold(plan, hosts)
    boundary = plan["policy"]["wave_boundary"]
    if boundary:
        depth = plan["levels"].index(boundary) + 1
        for wave in plan["waves"][1 if plan["waves"][0]["name"] == "canary" else 0 :]:
            paths = {tuple(hosts[name][f"fleet_{level}"] for level in plan["levels"][:depth]) for name in wave["hosts"]}
            assert len(paths) == 1, wave


def test_wave_gates_and_bake() -> None:
    plan = compile_plan(FLEET16, {"bake_seconds": 90}, "p-1")
    assert {tuple(wave["gates"]) for wave in plan["waves"]} == {("health", "error_budget", "bake:90s")}
    assert {wave["bake_seconds"] for wave in plan["waves"]} == {90}
    plan = compile_plan(FLEET16, {"bake_seconds": 2.5}, "p-1")
    assert plan["waves"][0]["gates"] == ["health", "error_budget", "bake:2.5s"]
    plan = compile_plan(FLEET16, None, "p-1")
    assert plan["waves"][0]["gates"] == ["health", "error_budget"] and plan["waves"][0]["bake_seconds"] == 0


# ---------------------------------------------------------------------------------------------------------
# batches: disruption budgets and max_concurrency

BATCH_CASES: list[tuple[str, Hosts, dict[str, t.Any], list[int]]] = [
    ("no budgets: one batch per wave", FLEET16, {}, [1, 4, 11]),
    ("region budget count", FLEET16, {"disruption_budget": {"region": 2}}, [1, 2, 2, 4, 3, 2, 2]),
    (
        "tenant budget percent of its own size: 25% of 8 is 2",
        FLEET16,
        {"disruption_budget": {"tenant": "25%"}},
        [1, 3, 1, 4, 4, 2, 1],
    ),
    ("percent budget is at least one host: 1% of 8", FLEET16, {"disruption_budget": {"region": "1%"}}, [1] + [1] * 4 + [2, 2, 2, 1, 1, 1, 1, 1]),
    ("max_concurrency count", FLEET16, {"max_concurrency": 3}, [1, 3, 1, 3, 3, 3, 2]),
    ("max_concurrency percent of the fleet, rounded down: 20% of 16 is 3", FLEET16, {"max_concurrency": "20%"}, [1, 3, 1, 3, 3, 3, 2]),
    (
        "several budgets at once",
        FLEET16,
        {"canary": {"size": 0}, "waves": ["100%"], "disruption_budget": {"region": 4, "tenant": 3}, "max_concurrency": 5},
        [5, 5, 4, 2],
    ),
]


@pytest.mark.parametrize("hosts, policy, expected", [case[1:] for case in BATCH_CASES], ids=[case[0] for case in BATCH_CASES])
def test_batches(hosts: Hosts, policy: dict[str, t.Any], expected: list[int]) -> None:
    plan = compile_plan(hosts, policy, "p-1")
    assert plan["serial"] == expected
    assert_budgets_hold(plan, hosts)


def test_first_fit_fills_earlier_batches_in_plan_order() -> None:
    plan = compile_plan(FLEET16, {"canary": {"size": 0}, "waves": ["100%"], "disruption_budget": {"tenant": 2}}, "p-1")
    assert batch_hosts(plan)[0] == ["eu-west-acme-1", "eu-west-acme-2", "eu-west-beta-1", "eu-west-beta-2"]
    assert batch_hosts(plan)[1] == ["eu-west-acme-3", "eu-west-acme-4", "eu-west-beta-3", "eu-west-beta-4"]


BIG = {
    **grid(["eu-west", "us-east", "ap-south"], ["acme", "beta", "gamma"], 5),
    **grid(["eu-west"], ["delta"], 7, segment="api"),
}


@pytest.mark.parametrize(
    "policy",
    [
        {"disruption_budget": {level: spec}, "max_concurrency": concurrency, "waves": waves, "canary": {"size": canary}}
        for level, spec, concurrency, waves, canary in itertools.product(
            ["region", "tenant", "segment"], [1, 3, "10%", "50%"], [None, 4, "15%"], [["25%", "100%"], [1, 5, 10, "100%"]], [0, 1]
        )
    ],
)
def test_every_batch_respects_every_budget(policy: dict[str, t.Any]) -> None:
    assert_budgets_hold(compile_plan(BIG, policy, "p-1"), BIG)


# ---------------------------------------------------------------------------------------------------------
# errors

EXPECTED_LEVELS = "; expected one of region, tenant, segment, environment"

ERROR_CASES: list[tuple[str, t.Any, t.Any, t.Any, str]] = [
    ("empty fleet", {}, None, "p-1", "hosts: the fleet is empty; there is nothing to plan"),
    ("hosts not a mapping", ["web-1"], None, "p-1", "hosts must be a mapping, got list"),
    ("host vars not a mapping", {"web-1": "eu"}, None, "p-1", "host 'web-1': variables must be a mapping, got str"),
    ("missing level", {"web-1": {"fleet_tenant": "a", "fleet_segment": "s"}}, None, "p-1", "host 'web-1': variable 'fleet_region' is missing"),
    ("level not a string", {"web-1": host("eu", 7)}, None, "p-1", "host 'web-1': variable 'fleet_tenant' must be a non-empty string, got int"),
    ("level is None", {"web-1": host("eu", None)}, None, "p-1", "host 'web-1': variable 'fleet_tenant' must be a non-empty string, got None"),
    ("level empty", {"web-1": host("")}, None, "p-1", "host 'web-1': variable 'fleet_region' must be a non-empty string, got an empty string"),
    (
        "first bad host in natural order wins",
        {"web-10": {}, "web-2": {}},
        None,
        "p-1",
        "host 'web-2': variable 'fleet_region' is missing",
    ),
    (
        "environment required when a budget uses it",
        {"web-1": {"fleet_region": "r", "fleet_tenant": "t", "fleet_segment": "s"}},
        {"disruption_budget": {"environment": 1}},
        "p-1",
        "host 'web-1': variable 'fleet_environment' is missing",
    ),
    ("patch id empty", FLEET16, None, "", "patch_id must be a non-empty string, got an empty string"),
    ("patch id not a string", FLEET16, None, 5, "patch_id must be a non-empty string, got int"),
    ("policy not a mapping", FLEET16, ["waves"], "p-1", "policy must be a mapping, got list"),
    (
        "unknown policy key",
        FLEET16,
        {"wave": ["100%"]},
        "p-1",
        "policy: unknown key 'wave'; allowed: bake_seconds, canary, canary_response, checks, disruption_budget, error_budget, "
        "halt_when, inconclusive_response, levels, max_concurrency, order, response, stabilization, wave_boundary, waves",
    ),
    ("unknown level", FLEET16, {"levels": ["region", "zone"]}, "p-1", "policy.levels[1]: unknown level 'zone'" + EXPECTED_LEVELS),
    ("bad check", FLEET16, {"checks": [{"name": "items", "url": "http://x/", "expect": {"json": ["items["]}}]}, "p-1",
     "policy.checks[0] (items).request.expect.json[0]: invalid JMESPath expression 'items[': incomplete expression at column 6"),
    ("inconclusive cannot continue", FLEET16, {"inconclusive_response": "continue"}, "p-1",
     "policy.inconclusive_response: expected one of hold, halt, rollback_wave, rollback_all, got 'continue'"),
    ("stabilization without checks", FLEET16, {"stabilization": {"seconds": 60}}, "p-1",
     "policy.stabilization.seconds: a stabilization window needs policy.checks to watch"),
    ("stabilization unknown key", FLEET16, {"stabilization": {"minutes": 1}}, "p-1",
     "policy.stabilization: unknown key 'minutes'; allowed: interval, response, seconds"),
    ("stabilization cannot quarantine", FLEET16, {"stabilization": {"response": "quarantine"}}, "p-1",
     "policy.stabilization.response: expected one of hold, halt, rollback_wave, rollback_all, got 'quarantine'"),
    ("duplicate level", FLEET16, {"levels": ["region", "region"]}, "p-1", "policy.levels[1]: level 'region' is listed twice"),
    ("no levels", FLEET16, {"levels": []}, "p-1", "policy.levels must name at least one level"),
    ("levels not a list", FLEET16, {"levels": "region"}, "p-1", "policy.levels must be a list, got str"),
    ("order on unknown level", FLEET16, {"order": {"zone": ["a"]}}, "p-1", "policy.order: unknown level 'zone'" + EXPECTED_LEVELS),
    ("order on unused level", FLEET16, {"order": {"environment": ["prod"]}}, "p-1", "policy.order.environment: level 'environment' is not in policy.levels"),
    ("order twice", FLEET16, {"order": {"region": ["eu-west", "eu-west"]}}, "p-1", "policy.order.region[1]: 'eu-west' is listed twice"),
    ("unknown canary key", FLEET16, {"canary": {"count": 1}}, "p-1", "policy.canary: unknown key 'count'; allowed: groups, size"),
    ("canary not a mapping", FLEET16, {"canary": 2}, "p-1", "policy.canary must be a mapping, got int"),
    ("canary size negative", FLEET16, {"canary": {"size": -1}}, "p-1", "policy.canary.size: count -1 must be at least 0"),
    ("canary size bool", FLEET16, {"canary": {"size": True}}, "p-1", "policy.canary.size: expected a count such as 5 or a percent such as '25%', got bool"),
    ("canary bigger than fleet", FLEET16, {"canary": {"size": 20}}, "p-1", "policy.canary.size: 20 hosts is more than the fleet of 16 hosts"),
    ("canary percent over 100", FLEET16, {"canary": {"size": "101%"}}, "p-1", "policy.canary.size: percent 101% is outside 0-100"),
    ("wave percent over 100", FLEET16, {"waves": ["25%", "120%"]}, "p-1", "policy.waves[1]: percent 120% is outside 0-100"),
    ("wave size text", FLEET16, {"waves": ["half"]}, "p-1", "policy.waves[0]: expected a count such as 5 or a percent such as '25%', got 'half'"),
    ("wave size zero", FLEET16, {"waves": [0, "100%"]}, "p-1", "policy.waves[0]: count 0 must be at least 1"),
    ("wave percent zero", FLEET16, {"waves": ["0%", "100%"]}, "p-1", "policy.waves[0]: percent 0% would select no host; use at least 1 host"),
    ("no waves", FLEET16, {"waves": []}, "p-1", "policy.waves must list at least one wave size, such as ['25%', '100%']"),
    ("waves do not cover", FLEET16, {"waves": [4, 6]}, "p-1", "policy.waves cover 10 of 15 hosts after the canary; add a final wave such as '100%'"),
    (
        "waves do not cover without canary",
        FLEET16,
        {"canary": {"size": 0}, "waves": ["25%", "25%"]},
        "p-1",
        "policy.waves cover 8 of 16 hosts after the canary; add a final wave such as '100%'",
    ),
    ("boundary not a level", FLEET16, {"wave_boundary": "rack"}, "p-1", "policy.wave_boundary: unknown level 'rack'" + EXPECTED_LEVELS),
    ("boundary not in levels", FLEET16, {"wave_boundary": "environment"}, "p-1", "policy.wave_boundary: level 'environment' is not in policy.levels"),
    ("budget unknown level", FLEET16, {"disruption_budget": {"rack": 1}}, "p-1", "policy.disruption_budget: unknown level 'rack'" + EXPECTED_LEVELS),
    ("budget zero", FLEET16, {"disruption_budget": {"region": 0}}, "p-1", "policy.disruption_budget.region: count 0 must be at least 1"),
    ("budget percent over 100", FLEET16, {"disruption_budget": {"tenant": "150%"}}, "p-1", "policy.disruption_budget.tenant: percent 150% is outside 0-100"),
    ("max_concurrency zero", FLEET16, {"max_concurrency": 0}, "p-1", "policy.max_concurrency: count 0 must be at least 1"),
    ("error budget negative", FLEET16, {"error_budget": -2}, "p-1", "policy.error_budget: count -2 must be at least 0"),
    ("error budget percent", FLEET16, {"error_budget": "100.5%"}, "p-1", "policy.error_budget: percent 100.5% is outside 0-100"),
    ("halt_when", FLEET16, {"halt_when": "over"}, "p-1", "policy.halt_when: expected one of exceeded, reached, got 'over'"),
    ("bake negative", FLEET16, {"bake_seconds": -1}, "p-1", "policy.bake_seconds must be >= 0, got -1"),
    ("bake text", FLEET16, {"bake_seconds": "30s"}, "p-1", "policy.bake_seconds must be a number of seconds, got str"),
    ("response", FLEET16, {"response": "panic"}, "p-1", "policy.response: expected one of quarantine, hold, halt, rollback_wave, rollback_all, got 'panic'"),
    (
        "canary response",
        FLEET16,
        {"canary_response": None},
        "p-1",
        "policy.canary_response: expected one of quarantine, hold, halt, rollback_wave, rollback_all, got None",
    ),
    (
        "canary selector malformed",
        FLEET16,
        {"canary": {"groups": ["eu-west"]}},
        "p-1",
        "policy.canary.groups[0]: 'eu-west' is not a selector such as 'region=eu-west' or 'region=eu-west,tenant=acme'",
    ),
    ("canary selector level", FLEET16, {"canary": {"groups": ["zone=a"]}}, "p-1", "policy.canary.groups[0]: unknown level 'zone'" + EXPECTED_LEVELS),
    (
        "canary selector level twice",
        FLEET16,
        {"canary": {"groups": ["region=a,region=b"]}},
        "p-1",
        "policy.canary.groups[0]: level 'region' appears twice in 'region=a,region=b'",
    ),
    (
        "duplicate canary groups, also when written in another order",
        FLEET16,
        {"canary": {"groups": ["region=eu-west,tenant=acme", "tenant=acme, region=eu-west"]}},
        "p-1",
        "policy.canary.groups[1]: 'region=eu-west,tenant=acme' is listed twice",
    ),
    (
        "canary group does not exist",
        FLEET16,
        {"canary": {"groups": ["region=eu-west", "region=ap-south"]}},
        "p-1",
        "policy.canary.groups[1]: no host matches 'region=ap-south'",
    ),
    (
        "canary over a disruption budget",
        FLEET16,
        {"canary": {"size": 2}, "disruption_budget": {"region": 1}},
        "p-1",
        "canary puts 2 hosts in region=eu-west but policy.disruption_budget.region allows 1",
    ),
    (
        "canary over a percent disruption budget",
        FLEET16,
        {"canary": {"size": 3}, "disruption_budget": {"tenant": "25%"}},
        "p-1",
        "canary puts 3 hosts in tenant=acme but policy.disruption_budget.tenant allows 2 (25% of its hosts)",
    ),
    ("canary over max_concurrency", FLEET16, {"canary": {"size": 3}, "max_concurrency": 2}, "p-1", "canary has 3 hosts but policy.max_concurrency allows 2"),
    (
        "canary over percent max_concurrency",
        FLEET16,
        {"canary": {"size": 4}, "max_concurrency": "20%"},
        "p-1",
        "canary has 4 hosts but policy.max_concurrency allows 3 (20% of the fleet)",
    ),
]


@pytest.mark.parametrize("hosts, policy, patch_id, message", [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_errors(hosts: t.Any, policy: t.Any, patch_id: t.Any, message: str) -> None:
    with pytest.raises(PlanError, match=f"^{re.escape(message)}$"):
        compile_plan(hosts, policy, patch_id)


def test_plan_error_is_a_value_error() -> None:
    assert issubclass(PlanError, ValueError)


@pytest.mark.parametrize("collecting", [True, False])
def test_compile_pauses_the_garbage_collector_and_sets_it_back_as_it_was(collecting: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_read_fleet = _plan_module._read_fleet

    def read_fleet(*args: t.Any) -> t.Any:
        seen.append(gc.isenabled())
        return real_read_fleet(*args)

    monkeypatch.setattr(_plan_module, "_read_fleet", read_fleet)
    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        compile_plan(FLEET16, FLAT, "p-1")
        assert gc.isenabled() is collecting
        # also when the plan is refused half way
        with pytest.raises(PlanError):
            compile_plan({"a": host("eu-west"), "b": {"fleet_region": "eu-west"}}, FLAT, "p-1")
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [False, False]


# ---------------------------------------------------------------------------------------------------------
# normalize_policy

DEFAULT_POLICY = {
    "levels": ["region", "tenant", "segment"],
    "order": {},
    "canary": {"size": 1, "groups": []},
    "waves": ["25%", "100%"],
    "wave_boundary": None,
    "disruption_budget": {},
    "max_concurrency": None,
    "error_budget": 0,
    "halt_when": "exceeded",
    "bake_seconds": 0,
    "response": "halt",
    "canary_response": "halt",
    "checks": [],
    "inconclusive_response": "hold",
    "stabilization": {"seconds": 0, "interval": 5, "response": "rollback_all"},
}

NORMALIZE_CASES: list[tuple[str, t.Any, dict[str, t.Any]]] = [
    ("None is all defaults", None, {}),
    ("empty is all defaults", {}, {}),
    ("percent text normalized", {"waves": [" 25.0 %", "100.00%"], "error_budget": "2.50%"}, {"waves": ["25%", "100%"], "error_budget": "2.5%"}),
    ("digit strings are counts", {"waves": ["3", 100], "max_concurrency": "4"}, {"waves": [3, 100], "max_concurrency": 4}),
    ("canary size only", {"canary": {"size": "5%"}}, {"canary": {"size": "5%", "groups": []}}),
    ("selectors in level order", {"canary": {"groups": [" tenant = acme , region=eu "]}}, {"canary": {"size": 1, "groups": ["region=eu,tenant=acme"]}}),
    ("canary response follows response", {"response": "rollback_all"}, {"response": "rollback_all", "canary_response": "rollback_all"}),
    ("integral float bake is an int", {"bake_seconds": 30.0}, {"bake_seconds": 30}),
    ("null order and budgets", {"order": None, "disruption_budget": None}, {}),
    ("all levels", {"levels": list(LEVELS), "order": {"environment": ["prod"]}}, {"levels": list(LEVELS), "order": {"environment": ["prod"]}}),
    ("stabilization filled in", {"checks": [{"name": "p", "kind": "tcp", "address": "${host}", "port": 22}], "stabilization": {"seconds": 30.0}},
     {"checks": [{"name": "p", "kind": "tcp", "address": "${host}", "port": 22, "samples": 3, "interval": 0, "initial_delay": 0, "timeout": 5,
                  "max_error_rate": 0, "max_consecutive_errors": None, "must_have_data": True, "latency_ms": {}, "baseline": None}],
      "stabilization": {"seconds": 30, "interval": 5, "response": "rollback_all"}}),
]


@pytest.mark.parametrize("policy, changes", [case[1:] for case in NORMALIZE_CASES], ids=[case[0] for case in NORMALIZE_CASES])
def test_normalize_policy(policy: t.Any, changes: dict[str, t.Any]) -> None:
    normalized = normalize_policy(policy)
    assert normalized == {**DEFAULT_POLICY, **changes}
    assert normalize_policy(normalized) == normalized  # idempotent
    assert json.loads(json.dumps(normalized)) == normalized


# ---------------------------------------------------------------------------------------------------------
# error budget


@pytest.mark.parametrize(
    "spec, fleet_size, limit",
    [
        (0, 10, 0),
        (3, 10, 3),
        (30, 10, 30),
        ("3", 10, 3),
        ("5%", 19, 0),
        ("5%", 20, 1),
        ("33%", 100, 33),
        ("7%", 100, 7),  # 0.07 * 100 is 7.000000000000001 in floats; exact arithmetic gives 7
        ("0.5%", 1000, 5),
        ("100%", 7, 7),
        ("50%", 0, 0),
    ],
)
def test_error_budget_limit(spec: int | str, fleet_size: int, limit: int) -> None:
    assert error_budget_limit(spec, fleet_size) == limit


@pytest.mark.parametrize(
    "spec, fleet_size, message",
    [
        ("120%", 10, "policy.error_budget: percent 120% is outside 0-100"),
        (-1, 10, "policy.error_budget: count -1 must be at least 0"),
        ([], 10, "policy.error_budget: expected a count such as 5 or a percent such as '25%', got list"),
        (1, -1, "fleet_size must be a count >= 0, got -1"),
        (1, "10", "fleet_size must be a count >= 0, got '10'"),
    ],
)
def test_error_budget_limit_errors(spec: t.Any, fleet_size: t.Any, message: str) -> None:
    with pytest.raises(PlanError, match=f"^{re.escape(message)}$"):
        error_budget_limit(spec, fleet_size)


BUDGET_GRID = list(itertools.product(range(1, 51), [0, 1, 5, 10, 33, 50, 100]))


@pytest.mark.parametrize("fleet_size, percent", BUDGET_GRID)
def test_error_budget_boundary(fleet_size: int, percent: int) -> None:
    limit = error_budget_limit(f"{percent}%", fleet_size)
    assert limit == percent * fleet_size // 100
    # exceeded: the limit itself is absorbed, one more halts
    assert error_budget_spent(limit, limit, "exceeded") is False
    assert error_budget_spent(limit + 1, limit, "exceeded") is True
    assert error_budget_spent(limit + 1, limit, "reached") is True
    # reached: the limit itself halts; a run with no failures never does
    assert error_budget_spent(limit, limit, "reached") is (limit > 0)
    if limit > 0:
        assert error_budget_spent(limit - 1, limit, "reached") is False
    assert error_budget_spent(0, limit, "exceeded") is False
    assert error_budget_spent(0, limit, "reached") is False
    # the plan carries the same limit
    plan = compile_plan(grid(["r"], ["t"], fleet_size), {"error_budget": f"{percent}%", "halt_when": "reached"}, "p-1")
    assert plan["error_budget"] == {"spec": f"{percent}%", "limit": limit, "halt_when": "reached"}


def test_error_budget_spent_defaults_to_exceeded() -> None:
    assert error_budget_spent(2, 2) is False
    assert error_budget_spent(3, 2) is True


@pytest.mark.parametrize(
    "failures, limit, halt_when, message",
    [
        (1, 1, "over", "halt_when: expected one of exceeded, reached, got 'over'"),
        (-1, 1, "exceeded", "failures must be a count >= 0, got -1"),
        (1, None, "exceeded", "limit must be a count >= 0, got None"),
    ],
)
def test_error_budget_spent_errors(failures: t.Any, limit: t.Any, halt_when: t.Any, message: str) -> None:
    with pytest.raises(PlanError, match=f"^{re.escape(message)}$"):
        error_budget_spent(failures, limit, halt_when)


# ---------------------------------------------------------------------------------------------------------
# reading plans


def test_serial_and_host_batch_index() -> None:
    plan = compile_plan(FLEET16, {"disruption_budget": {"tenant": "25%"}}, "p-1")
    assert serial_batches(plan) == [1, 3, 1, 4, 4, 2, 1]
    index = host_batch_index(plan)
    assert set(index) == set(FLEET16)
    assert index["eu-west-acme-1"] == 0
    for batch in plan["batches"]:
        assert all(index[name] == batch["index"] for name in batch["hosts"])
    # a plan read back from plan.json works the same
    again = json.loads(plan_json(plan))
    assert serial_batches(again) == serial_batches(plan) and host_batch_index(again) == index


@pytest.mark.parametrize("plan, kind", [(None, "None"), ([], "list"), ({"waves": []}, "dict"), ({"batches": "1,2"}, "dict")])
def test_reading_a_non_plan(plan: t.Any, kind: str) -> None:
    message = f"plan must be the mapping compile_plan returns, with a 'batches' list; got {kind}"
    for reader in (serial_batches, host_batch_index):
        with pytest.raises(PlanError, match=f"^{re.escape(message)}$"):
            reader(plan)


def test_render_plan_text() -> None:
    hosts = grid(["eu", "us"], ["a"], 2)
    plan = compile_plan(hosts, {"waves": [1, "100%"], "disruption_budget": {"region": 1}, "bake_seconds": 10}, "p-1")
    text = render_plan_text(plan)
    assert text == (
        f"plan p-1: 4 hosts, 3 waves, 4 batches, serial [1 x 4], error budget 0 (halts when exceeded), fingerprint {plan['fingerprint'][:12]}\n"
        "wave    batches  hosts  group                           first hosts\n"
        "canary  0            1  region=eu/tenant=a/segment=web  eu-a-1\n"
        "wave-1  1            1  region=eu/tenant=a/segment=web  eu-a-2\n"
        "wave-2  2-3          2  region=us/tenant=a/segment=web  us-a-1, us-a-2\n"
    )
    mixed = compile_plan(hosts, FLAT, "p-1")
    assert render_plan_text(mixed).splitlines()[2:] == [
        "wave-1  0            2  region=eu/tenant=a/segment=web  eu-a-1, eu-a-2",
        "                     2  region=us/tenant=a/segment=web  us-a-1, us-a-2",
    ]


def test_render_plan_text_stays_a_summary_whatever_the_fleet_size() -> None:
    """The screen names a bounded number of groups per wave and hosts per group; the counts still add up to the fleet."""
    for per_group in (1, 40):
        hosts = grid([f"r{index}" for index in range(10)], [f"t{index}" for index in range(20)], per_group)
        plan = compile_plan(hosts, {"waves": ["1%", "10%", "100%"], "max_concurrency": 20}, "p-big")
        lines = render_plan_text(plan).splitlines()
        assert len(lines) <= 2 + len(plan["waves"]) * 13
        assert sum(int(line[17:22]) for line in lines[2:]) == len(hosts)
        assert max(line.count(", ") for line in lines[2:]) <= 2
        assert f"serial [1, {plan['serial'][1]}" in lines[0] and " x " in lines[0]


def _first_fit(hosts: list[str], attributes: dict[str, dict[str, str]], limits: dict[str, dict[str, int]], concurrency: int | None) -> list[list[str]]:
    """The plain first fit (every batch tried from the first), what _Budgets.split must equal."""
    batches: list[tuple[list[str], Counter[tuple[str, str]]]] = []
    for host in hosts:
        for batch, counts in batches:
            if (concurrency is None or len(batch) < concurrency) and all(
                    counts[(level, attributes[host][level])] < limits[level][attributes[host][level]] for level in limits):
                break
        else:
            batch, counts = [], Counter()
            batches.append((batch, counts))
        batch.append(host)
        counts.update((level, attributes[host][level]) for level in limits)
    return [batch for batch, _counts in batches]


@pytest.mark.parametrize("seed", range(40))
def test_batches_are_the_plain_first_fit(seed: int) -> None:
    rng = random.Random(seed)
    hosts = {
        f"h{index}": {"fleet_region": rng.choice("abc"), "fleet_tenant": rng.choice("xyzw"), "fleet_segment": rng.choice(["web", "api"]),
                      "fleet_environment": "prod"}
        for index in range(rng.randint(5, 120))
    }
    budget = {level: rng.choice([1, 2, 3, "25%", "50%"]) for level in rng.sample(["region", "tenant", "segment"], rng.randint(0, 3))}
    policy = {"canary": {"size": 0}, "waves": ["100%"], "disruption_budget": budget, "max_concurrency": rng.choice([None, 3, 7, "10%"])}
    plan = compile_plan(hosts, {key: value for key, value in policy.items() if value is not None}, "p-ff")
    order = plan["host_order"]
    attributes = {host: {level: hosts[host][f"fleet_{level}"] for level in ("region", "tenant", "segment")} for host in hosts}
    limits = {}
    for level, spec in budget.items():
        sizes = Counter(attrs[level] for attrs in attributes.values())
        limits[level] = {group: max(1, math.floor(count * int(spec[:-1]) / 100)) if isinstance(spec, str) else spec for group, count in sizes.items()}
    concurrency = policy["max_concurrency"]
    if isinstance(concurrency, str):
        concurrency = max(1, math.floor(len(hosts) * int(concurrency[:-1]) / 100))
    assert [batch["hosts"] for batch in plan["batches"]] == _first_fit(order, attributes, limits, concurrency)


# ---------------------------------------------------------------------------------------------------------
# golden digests: the bytes of plans compiled before the compile was made a linear pass (issue 19); any change to
# plan order, canary, waves, batches, groups or fingerprint changes them


def _golden_mixed_fleet() -> Hosts:
    """84 hosts: three regions, tenants whose natural order differs from the text order (t2 < t10), uneven groups."""
    hosts: Hosts = {}
    index = 0
    for region in ("eu-west", "us-east", "ap-south"):
        for tenant in ("acme", "beta", "t10", "t2"):
            for segment in ("web", "api", "worker"):
                for number in range(1, 2 + index % 7):
                    hosts[f"{segment}-{region}-{tenant}-{number}"] = host(region, tenant, segment, "prod" if index % 3 else "staging", other=number)
                    index += 1
    return hosts


def _golden_bench_fleet(size: int) -> Hosts:
    """bench/plan_bench.py's layout: 10 regions x 20 tenants x 5 segments, hosts dealt over the cells in turn."""
    cells = [(f"r{region:02d}", f"t{tenant:02d}", segment) for region in range(1, 11) for tenant in range(1, 21)
             for segment in ("web", "api", "worker", "batch", "cron")]
    return {f"{cells[index % len(cells)][0]}-{cells[index % len(cells)][1]}-{cells[index % len(cells)][2]}-{index // len(cells) + 1:03d}":
            host(*cells[index % len(cells)], "staging") for index in range(size)}


GOLDEN = [
    (_golden_mixed_fleet, None, 3, "3b652efa1f1039258197759fa25c04caf33650f18f509123957d5916c10724b5", "59af8c018b534d7f"),
    (_golden_mixed_fleet, {"canary": {"size": 2}, "waves": ["1%", "10%", "50%", "100%"], "max_concurrency": "5%", "error_budget": "2%",
                           "disruption_budget": {"tenant": "25%", "region": 4}},
     24, "71f81d94819c6f46d80fbe8361a68f5da5c7b13a5d695c4f80c0b4b91f42e301", "08484625066b8208"),
    (_golden_mixed_fleet, {"levels": ["environment", "region", "tenant", "segment"], "order": {"region": ["us-east", "eu-west"]},
                           "canary": {"size": 3, "groups": ["region=ap-south,tenant=t2"]}, "waves": [5, "30%", "100%"], "wave_boundary": "region",
                           "disruption_budget": {"segment": "50%"}, "bake_seconds": 30, "response": "rollback_wave"},
     8, "7b88ed86bdfe18824e769712bf4ae68a534068d2cb3553825f3656e52a2216f9", "4623c33450722bf6"),
]


@pytest.mark.parametrize(("fleet", "policy", "batches", "digest", "text_digest"), GOLDEN)
def test_golden_plan_bytes(fleet: t.Callable[[], Hosts], policy: t.Any, batches: int, digest: str, text_digest: str) -> None:
    plan = compile_plan(fleet(), policy, "FP-GOLD-1")
    assert len(plan["batches"]) == batches
    assert hashlib.sha256(plan_json(plan).encode()).hexdigest() == digest
    assert hashlib.sha256(render_plan_text(plan).encode()).hexdigest()[:16] == text_digest


def test_golden_plan_bytes_of_the_bench_fleet() -> None:
    policy = {"canary": {"size": 1}, "waves": ["1%", "10%", "50%", "100%"], "max_concurrency": "2%", "error_budget": "1%",
              "disruption_budget": {"tenant": "25%"}}
    plan = compile_plan(_golden_bench_fleet(3000), policy, "FP-PLAN-BENCH")
    assert len(plan["batches"]) == 52
    assert hashlib.sha256(plan_json(plan).encode()).hexdigest() == "5a5620938ad9b744f673360f09fd1889f23590de427a2da204ad6f25f43fc80f"


# ---------------------------------------------------------------------------------------------------------
# the bulk paths of the compile (natural order by translate, fingerprint from fragments, hosts read by itemgetter) give
# what the careful paths give


def _reference_fingerprint(hosts: Hosts, policy: t.Any, patch_id: str, levels: t.Sequence[str] = ("region", "tenant", "segment")) -> str:
    part = {name: {f"fleet_{level}": hosts[name][f"fleet_{level}"] for level in levels} for name in hosts}
    payload = canonical_json({"hosts": part, "patch_id": patch_id, "policy": normalize_policy(policy)})
    return hashlib.sha256(payload.encode()).hexdigest()


@pytest.mark.parametrize("names", [
    ["web 1", "web!2", "web-3", "web1"],  # below the quote: sorted by name as canonical_json sorts
    ['we"b-1', "web\\2", "web-3"],  # a quote or backslash: canonical_json of the mapping
    ["wéb-1", "web-2", "веб-3", "web-10"],  # non-ASCII: the natural_key path
    ["a1", "a01", "a001", "a-1", "a.1", "a", "a10b", "a9b", "b"],  # digit runs of several lengths after one text
])
def test_fingerprint_and_order_of_unusual_hostnames(names: list[str]) -> None:
    hosts = {name: host("eu", "acme") for name in names}
    plan = compile_plan(hosts, FLAT, "p-1")
    assert plan["fingerprint"] == _reference_fingerprint(hosts, FLAT, "p-1")
    assert plan["host_order"] == sorted(names, key=natural_order_key)


def natural_order_key(text: str) -> tuple[t.Any, ...]:
    parts: list[t.Any] = re.split(r"(\d+)", text)
    parts[1::2] = map(int, parts[1::2])
    return (tuple(parts), text)


@pytest.mark.parametrize("seed", range(30))
def test_natural_order_of_random_hostnames(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = rng.choice(["ab-.09", "ab0123456789", "a-_ 7!", "xyz"])
    names = {"".join(rng.choice(alphabet) for _letter in range(rng.randint(1, 6))) for _name in range(rng.randint(1, 60))}
    names.discard("")
    names = {name for name in names if name.strip() == name} or {"h1"}
    hosts = {name: host(rng.choice(["eu", "us"]), rng.choice(["a", "b"])) for name in sorted(names)}
    plan = compile_plan(hosts, {**FLAT, "levels": ["region"]}, "p-1")
    expected = sorted(names, key=lambda name: (0 if hosts[name]["fleet_region"] == "eu" else 1, natural_order_key(name)))
    assert plan["host_order"] == expected
    assert plan["fingerprint"] == _reference_fingerprint(hosts, {**FLAT, "levels": ["region"]}, "p-1", ("region",))


class _Vars(dict):  # a Mapping that is not a plain dict (as Ansible's host variables can be): read in bulk all the same
    pass


def test_host_variables_that_are_not_plain_dicts_plan_the_same() -> None:
    policy = {"canary": {"size": 2, "groups": ["region=us-east"]}, "disruption_budget": {"tenant": "50%"}, "max_concurrency": 3}
    expected = plan_json(compile_plan(FLEET16, policy, "p-1"))
    assert plan_json(compile_plan({name: _Vars(variables) for name, variables in FLEET16.items()}, policy, "p-1")) == expected
    assert plan_json(compile_plan({name: _Vars(variables) if index % 2 else variables for index, (name, variables) in enumerate(FLEET16.items())},
                                  policy, "p-1")) == expected
    assert plan_json(compile_plan({name: types.MappingProxyType(variables) for name, variables in FLEET16.items()}, policy, "p-1")) == expected


class _Tagged(str):  # a str subclass, as Ansible's tagged or unsafe strings are
    pass


def test_group_values_of_a_str_subclass_plan_the_same_as_plain_strings() -> None:
    policy = {"canary": {"size": 2, "groups": ["region=us-east"]}, "disruption_budget": {"tenant": "50%"}, "max_concurrency": 3}
    tagged = {name: {key: _Tagged(value) if isinstance(value, str) else value for key, value in variables.items()} for name, variables in FLEET16.items()}
    plan = compile_plan(tagged, policy, "p-1")
    assert plan_json(plan) == plan_json(compile_plan(FLEET16, policy, "p-1"))
    # the groups' names in the plan are plain str: nothing of the inputs' types reaches the plan's consumers
    assert {type(name) for wave in plan["waves"] for name in wave["groups"]} == {str}


@pytest.mark.parametrize("size", [2047, 2048, 2049, 4500])
@pytest.mark.parametrize("shuffled", [False, True])
def test_fingerprint_of_fleets_hashed_in_several_pieces(size: int, shuffled: bool) -> None:
    """The fingerprint hashes its text in pieces of hosts; the digest is the one of the whole canonical JSON, whether
    the plan order is the name order or not (tenant t2 ranks before t10 but sorts after it by name)."""
    names = [f"{tenant}-{segment}-{number:04d}" for number in range(size // 6 + 1) for tenant in ("t10", "t2") for segment in ("api", "web", "db")][:size]
    if shuffled:
        random.Random(size).shuffle(names)
    hosts = {name: host("eu", name.split("-")[0], name.split("-")[1]) for name in names}
    plan = compile_plan(hosts, FLAT, "p-1")
    assert plan["fingerprint"] == _reference_fingerprint(hosts, FLAT, "p-1")


@pytest.mark.parametrize(("value", "message"), [
    (["eu"], "variable 'fleet_region' must be a non-empty string, got list"),
    (("eu",), "variable 'fleet_region' must be a non-empty string, got tuple"),
    ("eu west", "does not match"),
    ("x" * 129, "is longer than 128 characters"),
])
def test_bad_group_values_are_named_by_the_first_host_in_natural_order(value: t.Any, message: str) -> None:
    hosts = {f"web-{number}": host("eu") for number in (10, 2, 1)}
    hosts["web-10"]["fleet_region"] = value
    hosts["web-2"]["fleet_region"] = value
    with pytest.raises(PlanError, match=re.escape(message)) as caught:
        compile_plan(hosts, None, "p-1")
    assert "host 'web-2'" in str(caught.value)


@pytest.mark.parametrize("spec", ["25%", "2.5%", "33.3%", "0.01%", "100%", "0%", 3])
def test_group_budgets_in_integers_match_the_exact_resolution(spec: t.Any) -> None:
    """The budget per group, computed for many groups at once in integers, is _resolve's exact fraction rounded down."""
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _plan  # pylint: disable=import-outside-toplevel

    totals = list(range(0, 400)) + [9999, 10000, 100001]
    expected = [_plan._resolve(spec, total, rounding="floor", at_least_one=True) for total in totals]  # pylint: disable=protected-access
    assert _plan._floor_at_least_one(spec, totals) == expected  # pylint: disable=protected-access
