# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import importlib
import pathlib
import re
import sys
import textwrap
import typing as t

import pytest
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, inventory_loader
from ansible.template import is_trusted_as_template

COLLECTIONS_PATH = str(pathlib.Path(__file__).resolve().parents[4] / "collections")

FLEET = """
plugin: fleetpatch.rollout.fleet
defaults:
  ansible_connection: local
  ansible_python_interpreter: "{{ ansible_playbook_python }}"
  fleetpatch_host_root: /srv/fleetpatch
hosts:
  eu-west-acme-web-prod-02:
    fleet_region: eu-west
    fleet_tenant: acme
    fleet_segment: web
    fleet_environment: prod
    note: "{{ lookup('pipe', 'id') }}"
  eu-west-acme-web-prod-01: {fleet_region: eu-west, fleet_tenant: acme, fleet_segment: web, fleet_environment: prod}
  us-east-beta-api-stg-01:
    fleet_region: us-east
    fleet_tenant: beta.corp
    fleet_segment: api
    fleet_environment: staging
    fleetpatch_host_root: /opt/fp
  edge-eu-west: {fleet_role: edge, fleet_region: eu-west, fleet_environment: prod}
"""


@pytest.fixture(scope="module", autouse=True)
def _plugin_loader() -> None:
    init_plugin_loader([COLLECTIONS_PATH])
    # Tests collected earlier import the collection as a plain namespace package (tests/conftest.py), which lacks
    # the metadata the plugin loader needs; reload the two package modules through the collection finder, as
    # ansible-core does for ansible_collections itself. Submodules already imported stay the same objects.
    for name in ("ansible_collections.fleetpatch", "ansible_collections.fleetpatch.rollout"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def parse(tmp_path: pathlib.Path, content: str, name: str = "test.fleet.yml") -> InventoryData:
    path = tmp_path / name
    path.write_text(textwrap.dedent(content))
    inventory = InventoryData()
    plugin = inventory_loader.get("fleetpatch.rollout.fleet")
    assert plugin.verify_file(str(path))
    plugin.parse(inventory, DataLoader(), str(path), cache=False)
    return inventory


def own_vars(inventory: InventoryData, name: str) -> dict[str, t.Any]:
    """A host's variables without the inventory_file/inventory_dir magic the manager would fill in."""
    return {key: value for key, value in inventory.get_host(name).vars.items() if key not in ("inventory_file", "inventory_dir")}


def members(inventory: InventoryData) -> dict[str, list[str]]:
    """Group name -> host names, for the groups that have hosts."""
    return {name: [host.name for host in group.hosts] for name, group in inventory.groups.items() if group.hosts}


def test_hosts_in_file_order_with_fleet_groups(tmp_path: pathlib.Path) -> None:
    inventory = parse(tmp_path, FLEET)
    assert list(inventory.hosts) == ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01", "us-east-beta-api-stg-01", "edge-eu-west"]
    assert members(inventory) == {
        "fleet_nodes": ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01", "us-east-beta-api-stg-01"],
        "fleet_edges": ["edge-eu-west"],
        "region_eu_west": ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01", "edge-eu-west"],
        "region_us_east": ["us-east-beta-api-stg-01"],
        "tenant_acme": ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01"],
        "tenant_beta_corp": ["us-east-beta-api-stg-01"],
        "segment_web": ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01"],
        "segment_api": ["us-east-beta-api-stg-01"],
        "environment_prod": ["eu-west-acme-web-prod-02", "eu-west-acme-web-prod-01", "edge-eu-west"],
        "environment_staging": ["us-east-beta-api-stg-01"],
    }


def test_host_variables_over_defaults(tmp_path: pathlib.Path) -> None:
    inventory = parse(tmp_path, FLEET)
    assert own_vars(inventory, "us-east-beta-api-stg-01") == {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "fleetpatch_host_root": "/opt/fp",
        "fleet_region": "us-east",
        "fleet_tenant": "beta.corp",
        "fleet_segment": "api",
        "fleet_environment": "staging",
    }
    assert inventory.get_host("edge-eu-west").vars["fleet_role"] == "edge"


def test_host_data_is_never_a_template_but_defaults_are(tmp_path: pathlib.Path) -> None:
    variables = parse(tmp_path, FLEET).get_host("eu-west-acme-web-prod-02").vars
    assert variables["note"] == "{{ lookup('pipe', 'id') }}"
    assert not is_trusted_as_template(variables["note"])
    assert not is_trusted_as_template(variables["fleet_region"])
    assert is_trusted_as_template(variables["ansible_python_interpreter"])


def test_constructed_options(tmp_path: pathlib.Path) -> None:
    inventory = parse(
        tmp_path,
        """
        plugin: fleetpatch.rollout.fleet
        hosts:
          dc1-a: {site: DC-1, fleet_tenant: acme, fleet_segment: web, fleet_environment: prod}
          dc2-b: {site: DC-2, fleet_tenant: beta, fleet_segment: web, fleet_environment: dev}
        compose:
          fleet_region: site | lower
          fleetpatch_health_url: "'http://' ~ inventory_hostname ~ ':8080/health'"
        groups:
          production: fleet_environment == 'prod'
        keyed_groups:
          - key: fleet_tenant
            prefix: t
          - key: fleet_region ~ '_' ~ fleet_segment
            prefix: rs
        """,
    )
    host = inventory.get_host("dc1-a")
    assert host.vars["fleet_region"] == "dc-1"
    assert host.vars["fleetpatch_health_url"] == "http://dc1-a:8080/health"
    groups = members(inventory)
    assert groups["region_dc_1"] == ["dc1-a"]  # built from the composed fleet_region
    assert groups["production"] == ["dc1-a"]
    assert groups["t_acme"] == ["dc1-a"] and groups["t_beta"] == ["dc2-b"]
    assert groups["rs_dc_2_web"] == ["dc2-b"]


def test_fleet_groups_off(tmp_path: pathlib.Path) -> None:
    inventory = parse(tmp_path, FLEET + "fleet_groups: false\n")
    assert members(inventory) == {}
    assert len(inventory.hosts) == 4


def test_fleet_groups_match_what_keyed_groups_would_build(tmp_path: pathlib.Path) -> None:
    keyed = FLEET + textwrap.dedent(
        """
        fleet_groups: false
        keyed_groups:
          - {key: fleet_region, prefix: region}
          - {key: fleet_tenant, prefix: tenant}
          - {key: fleet_segment, prefix: segment}
          - {key: fleet_environment, prefix: environment}
        groups:
          fleet_nodes: (fleet_role | default('node')) == 'node'
          fleet_edges: (fleet_role | default('node')) == 'edge'
        """
    )
    built_in = members(parse(tmp_path, FLEET))
    assert members(parse(tmp_path, keyed, name="keyed.fleet.yml")) == built_in


def test_strict_applies_to_user_options_not_to_fleet_groups(tmp_path: pathlib.Path) -> None:
    content = "plugin: fleetpatch.rollout.fleet\nstrict: true\nhosts:\n  edge-1: {fleet_role: edge, fleet_region: eu}\n"
    assert members(parse(tmp_path, content)) == {"fleet_edges": ["edge-1"], "region_eu": ["edge-1"]}
    with pytest.raises(AnsibleError, match="^Could not set health for host edge-1: "):
        parse(tmp_path, content + "compose: {health: fleet_tenant ~ 'x'}\n")


def test_host_without_variables(tmp_path: pathlib.Path) -> None:
    inventory = parse(tmp_path, "plugin: fleetpatch.rollout.fleet\nhosts:\n  lonely:\n")
    assert own_vars(inventory, "lonely") == {}
    assert members(inventory) == {"fleet_nodes": ["lonely"]}


PLUGIN = "plugin: fleetpatch.rollout.fleet\n"
ERROR_CASES: list[tuple[str, str, type[Exception], str]] = [
    (
        "hosts not a mapping",
        "plugin: fleetpatch.rollout.fleet\nhosts: [a, b]\n",
        AnsibleError,
        "Config 'hosts' for 'ansible_collections.fleetpatch.rollout.plugins.inventory.fleet' inventory plugin from 'Direct' "
        "has an invalid value: Invalid value provided for 'dict': ['a', 'b']",
    ),
    (
        "hosts missing",
        "plugin: fleetpatch.rollout.fleet\n",
        AnsibleError,
        "Required config 'hosts' for 'ansible_collections.fleetpatch.rollout.plugins.inventory.fleet' inventory plugin not provided.",
    ),
    ("host variables not a mapping", PLUGIN + "hosts: {web-1: [1]}\n", AnsibleParserError, "{path}: hosts.web-1 must be a mapping of host variables, got list"),
    ("host variables a string", PLUGIN + "hosts: {web-1: eu-west}\n", AnsibleParserError, "{path}: hosts.web-1 must be a mapping of host variables, got str"),
    ("hostname not a string", PLUGIN + "hosts: {1: {}}\n", AnsibleParserError, "{path}: hosts: every hostname must be a non-empty string, got 1"),
    (
        "unknown role",
        "plugin: fleetpatch.rollout.fleet\nhosts: {ok: {}, web-1: {fleet_role: edgy}}\n",
        AnsibleParserError,
        "{path}: host 'web-1': fleet_role must be one of node, edge, got 'edgy'",
    ),
    (
        "unknown role from defaults",
        "plugin: fleetpatch.rollout.fleet\ndefaults: {fleet_role: cache}\nhosts: {web-1: {}}\n",
        AnsibleParserError,
        "{path}: host 'web-1': fleet_role must be one of node, edge, got 'cache'",
    ),
    (
        "unknown top-level key",
        "plugin: fleetpatch.rollout.fleet\nhosts: {}\nkeyed_group: []\n",
        AnsibleParserError,
        "{path}: unknown key(s) keyed_group; allowed: compose, defaults, fleet_groups, groups, hosts, keyed_groups, "
        "leading_separator, plugin, strict, use_extra_vars",
    ),
    ("empty file", "", AnsibleParserError, "{path} is empty"),
    ("another plugin's file", "plugin: ansible.builtin.constructed\n", AnsibleParserError, "Incorrect plugin name in file: ansible.builtin.constructed"),
]


@pytest.mark.parametrize("content, error, message", [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_errors(tmp_path: pathlib.Path, content: str, error: type[Exception], message: str) -> None:
    path = tmp_path / "bad.fleet.yml"
    with pytest.raises(error, match=f"^{re.escape(message.format(path=path))}$"):
        parse(tmp_path, content, name=path.name)


def test_a_bad_host_adds_nothing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.fleet.yml"
    path.write_text("plugin: fleetpatch.rollout.fleet\nhosts: {a: {}, b: {}, c: [oops]}\n")
    inventory = InventoryData()
    with pytest.raises(AnsibleParserError):
        inventory_loader.get("fleetpatch.rollout.fleet").parse(inventory, DataLoader(), str(path), cache=False)
    assert set(inventory.hosts) == set()


@pytest.mark.parametrize(
    "name, accepted",
    [
        ("production.fleet.yml", True),
        ("fleet.yaml", True),
        ("staging-fleet.yml", True),
        ("fleet.yml.bak", False),
        ("hosts.yml", False),
        ("fleet.json", False),
    ],
)
def test_verify_file(tmp_path: pathlib.Path, name: str, accepted: bool) -> None:
    path = tmp_path / name
    path.write_text("plugin: fleetpatch.rollout.fleet\nhosts: {}\n")
    assert inventory_loader.get("fleetpatch.rollout.fleet").verify_file(str(path)) is accepted


def test_verify_file_needs_a_readable_file(tmp_path: pathlib.Path) -> None:
    assert inventory_loader.get("fleetpatch.rollout.fleet").verify_file(str(tmp_path / "missing.fleet.yml")) is False


def test_example_inventory_parses(tmp_path: pathlib.Path) -> None:
    example = pathlib.Path(__file__).resolve().parents[4] / "inventories" / "example" / "production.fleet.yml"
    inventory = parse(tmp_path, example.read_text(), name="production.fleet.yml")
    groups = members(inventory)
    assert groups["fleet_edges"] == ["edge-eu-west", "edge-us-east"]
    assert len(groups["fleet_nodes"]) == 7
    node_vars = [own_vars(inventory, name) for name in groups["fleet_nodes"]]
    assert all(all(variables.get(f"fleet_{level}") for level in ("region", "tenant", "segment", "environment")) for variables in node_vars)


def test_equal_values_are_stored_once_with_their_own_trust(tmp_path: pathlib.Path) -> None:
    """One stored copy per distinct value (the inventory tags a copy of each value it is given, per host and variable),
    and a value from defaults (a template) never stands in for an equal one from a host (data), or the reverse."""
    inventory = parse(tmp_path, """
        plugin: fleetpatch.rollout.fleet
        defaults:
          fleetpatch_host_root: "/srv/{{ inventory_hostname }}"
          fleet_environment: prod
        hosts:
          a-1: {fleet_region: eu, fleet_tenant: acme, fleet_segment: web}
          a-2: {fleet_region: eu, fleet_tenant: acme, fleet_segment: web, fleet_environment: prod}
          a-3: {fleet_region: eu, fleet_tenant: acme, fleet_segment: web, note: "/srv/{{ inventory_hostname }}"}
    """)
    one, two, three = (inventory.get_host(name).vars for name in ("a-1", "a-2", "a-3"))
    assert one["fleet_region"] is two["fleet_region"] is three["fleet_region"]
    assert one["fleet_region"] == "eu"
    assert one["fleetpatch_host_root"] is three["fleetpatch_host_root"] and is_trusted_as_template(one["fleetpatch_host_root"])
    assert three["note"] == three["fleetpatch_host_root"] and not is_trusted_as_template(three["note"])
    assert is_trusted_as_template(one["fleet_environment"]) and not is_trusted_as_template(two["fleet_environment"])
    assert inventory.get_host("a-1").vars == {**one}  # nothing else changed
