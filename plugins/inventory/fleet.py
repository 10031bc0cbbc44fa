# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: A patchable fleet from one YAML file, grouped by region, tenant, segment and environment
version_added: 0.1.0
author: fleetpatch developers
description:
  - Reads one YAML file whose name ends with C(fleet.yml) or C(fleet.yaml) and adds its hosts, in file order.
  - Every host gets the variables of O(defaults), then its own variables on top. Hosts carry the variables the
    rollout plan groups by (C(fleet_region), C(fleet_tenant), C(fleet_segment), C(fleet_environment)) and
    C(fleet_role), V(node) (the default, patched by rollouts) or V(edge) (regional edge cache, never patched).
  - With O(fleet_groups) the plugin builds the groups C(region_<region>), C(tenant_<tenant>),
    C(segment_<segment>), C(environment_<environment>) (characters other than letters, digits and C(_) become
    C(_)), plus C(fleet_nodes) and C(fleet_edges) by C(fleet_role). They come from the same keyed-groups and
    conditional-groups machinery as O(keyed_groups) and O(groups), after O(compose), so a composed
    C(fleet_region) groups like a literal one.
  - Values under O(hosts) are data and are never templated, as they often come from an export or a generator;
    compute host variables from them with O(compose). Values under O(defaults) are configuration like group
    variables and may use templates.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as a source for this plugin.
    type: str
    required: true
    choices: [fleetpatch.rollout.fleet]
  hosts:
    description:
      - The fleet, inventory hostname to its variables, in the order hosts are added.
      - A host with no variables may be written with an empty value.
    type: dict
    required: true
  defaults:
    description: Variables given to every host of the file; a host's own variables win.
    type: dict
    default: {}
  fleet_groups:
    description:
      - Build the C(region_*), C(tenant_*), C(segment_*), C(environment_*), C(fleet_nodes) and C(fleet_edges)
        groups.
      - Hosts missing one of the variables are left out of that level's groups; O(strict) does not apply to
        these groups.
    type: bool
    default: true
notes:
  - Enable the plugin in C(ansible.cfg) with C(enable_plugins = fleetpatch.rollout.fleet) in the C([inventory])
    section, before C(ansible.builtin.yaml), which would otherwise also claim C(*.fleet.yml) files.
seealso:
  - plugin: ansible.builtin.constructed
    plugin_type: inventory
"""

EXAMPLES = r"""
# production.fleet.yml
plugin: fleetpatch.rollout.fleet
defaults:
  ansible_user: deploy
  ansible_become: true
  fleetpatch_host_root: /srv/fleetpatch
hosts:
  eu-west-acme-web-01:
    ansible_host: 10.20.1.11
    fleet_region: eu-west
    fleet_tenant: acme
    fleet_segment: web
    fleet_environment: prod
  edge-eu-west:
    ansible_host: 10.20.0.5
    fleet_role: edge
    fleet_region: eu-west
    fleet_environment: prod

# Extra groups and variables from the standard constructed options
compose:
  fleetpatch_health_url: "'http://' ~ ansible_host ~ ':8080/health'"
groups:
  canary_candidates: fleet_segment == 'web' and fleet_environment == 'staging'
keyed_groups:
  - key: fleet_region ~ '_' ~ fleet_tenant
    prefix: region_tenant
"""

from collections.abc import Mapping
import os
import typing as t

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var as make_unsafe

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core < 2.19: every string not marked unsafe is a trusted template

    def trust_as_template(value: str) -> str:  # type: ignore[misc]
        return value


_ROLES = ("node", "edge")
_SUFFIXES = ("fleet.yml", "fleet.yaml")


def _safe(var: str) -> str:
    # a group name only keeps letters, digits and _, so "eu-west" groups as region_eu_west without warnings
    return trust_as_template(f"{var} | default('') | regex_replace('[^A-Za-z0-9_]', '_')")


FLEET_KEYED_GROUPS = [
    {"key": _safe("fleet_region"), "prefix": "region"},
    {"key": _safe("fleet_tenant"), "prefix": "tenant"},
    {"key": _safe("fleet_segment"), "prefix": "segment"},
    {"key": _safe("fleet_environment"), "prefix": "environment"},
]
FLEET_ROLE_GROUPS = {
    "fleet_nodes": trust_as_template("(fleet_role | default('node')) == 'node'"),
    "fleet_edges": trust_as_template("(fleet_role | default('node')) == 'edge'"),
}


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "fleetpatch.rollout.fleet"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and os.path.basename(path).endswith(_SUFFIXES)

    def parse(self, inventory: t.Any, loader: t.Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        hosts = self.get_option("hosts")
        defaults = self.get_option("defaults") or {}
        for name, variables in hosts.items():
            if not isinstance(name, str) or not name:
                raise AnsibleParserError(f"{path}: hosts: every hostname must be a non-empty string, got {name!r}")
            if variables is None:
                variables = {}
            if not isinstance(variables, Mapping):
                raise AnsibleParserError(f"{path}: hosts.{name} must be a mapping of host variables, got {type(variables).__name__}")
            self._add_fleet_host(path, name, {**defaults, **make_unsafe(dict(variables))})

    def _add_fleet_host(self, path: str, name: str, variables: Mapping[str, t.Any]) -> None:
        strict = self.get_option("strict")
        host = self.inventory.add_host(name)
        for key, value in variables.items():
            self.inventory.set_variable(host, key, value)
        hostvars = self.inventory.get_host(host).get_vars()
        self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)

        role = self.inventory.get_host(host).get_vars().get("fleet_role", "node")
        if role not in _ROLES:
            raise AnsibleParserError(f"{path}: host {name!r}: fleet_role must be one of {', '.join(_ROLES)}, got {role!r}")
        if self.get_option("fleet_groups"):
            # built-in groups never fail the source: a host without a level simply joins no group of it
            self._add_host_to_composed_groups(FLEET_ROLE_GROUPS, hostvars, host, strict=False)
            self._add_host_to_keyed_groups(FLEET_KEYED_GROUPS, hostvars, host, strict=False)
        self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
