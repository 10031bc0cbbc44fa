# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: A patchable fleet from one YAML file, grouped by region, tenant, segment and environment
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Reads one YAML file whose name ends with C(fleet.yml) or C(fleet.yaml) and adds its hosts, in file order.
  - Every host gets the variables of O(defaults), then its own variables on top. Hosts carry the variables the
    rollout plan groups by (C(fleet_region), C(fleet_tenant), C(fleet_segment), C(fleet_environment)) and
    C(fleet_role), V(node) (the default, patched by rollouts) or V(edge) (regional edge cache, never patched).
  - With O(fleet_groups) the plugin builds the groups C(region_<region>), C(tenant_<tenant>),
    C(segment_<segment>) and C(environment_<environment>), named exactly as O(keyed_groups) entries with
    C(key=fleet_region) and C(prefix=region) (and so on) would name them (characters not valid in a group name
    become C(_)), plus C(fleet_nodes) and C(fleet_edges) by C(fleet_role). They are built after O(compose), so
    a composed C(fleet_region) groups like a literal one, and before O(groups) and O(keyed_groups).
  - Values under O(hosts) are data and are never templated, as they often come from an export or a generator;
    compute host variables from them with O(compose). Values under O(defaults) are configuration like group
    variables and may use templates.
  - The file is refused, naming the file and the key, when a mapping repeats a key (YAML would keep the last one
    silently), when it expands to more than a million nodes through aliases (an alias bomb) or is larger than 32 MiB.
  - Hostnames are at most 255 characters, without control characters. The C(fleet_*) values (literal or composed)
    are checked by M(fleetpatch.rollout.rollout_plan), which names the host.
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

from ansible_collections.fleetpatch.rollout.plugins.module_utils._inputs import InputError, check_text
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.template import is_trusted_as_template, trust_as_template

LEVELS = ("region", "tenant", "segment", "environment")
ROLE_GROUPS = {"node": "fleet_nodes", "edge": "fleet_edges"}
_SUFFIXES = ("fleet.yml", "fleet.yaml")


def _type_name(value: t.Any) -> str:
    return next(cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "builtins")


def _trusted(value: t.Any) -> t.Any:
    """Configuration (defaults, compose, groups, keyed_groups) as Ansible's loader reads a plugin's file: every string
    trusted as a template."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, Mapping):
        return {key: _trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    return value


def _check_role(path: str, name: str, variables: Mapping[str, t.Any]) -> str:
    role = variables.get("fleet_role", "node")
    if role not in ROLE_GROUPS:
        raise AnsibleParserError(f"{path}: host {name!r}: fleet_role must be one of {', '.join(ROLE_GROUPS)}, got {role!r}")
    return str(role)


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "fleetpatch.rollout.fleet"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and os.path.basename(path).endswith(_SUFFIXES)

    def parse(self, inventory: t.Any, loader: t.Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        config = self._read_config_data(path)
        unknown = sorted(str(key) for key in config if key not in self._options)
        if unknown:
            raise AnsibleParserError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(self._options))}")
        hosts = self.get_option("hosts")
        defaults = self.get_option("defaults") or {}
        fleet = []
        # check the whole file before adding anything, so a bad host leaves no half-built inventory behind
        for name, variables in hosts.items():
            if not isinstance(name, str) or not name:
                raise AnsibleParserError(f"{path}: hosts: every hostname must be a non-empty string, got {name!r}")
            try:
                check_text(name, field="hostname", where=f"fleet file {path}", max_len=255)
            except InputError as exc:
                raise AnsibleParserError(str(exc)) from None
            if variables is None:
                variables = {}
            if not isinstance(variables, Mapping):
                raise AnsibleParserError(f"{path}: hosts.{name} must be a mapping of host variables, got {_type_name(variables)}")
            # host values come from the safe loader untrusted: data, never templated
            merged = {**defaults, **variables}
            _check_role(path, name, merged)
            fleet.append((name, merged))
        options = {name: self.get_option(name) for name in ("strict", "compose", "groups", "keyed_groups", "fleet_groups")}
        shared: dict[tuple[t.Any, ...], t.Any] = {}
        for name, variables in fleet:
            self._add_fleet_host(path, name, variables, options, shared)
        # the file's host data is in the inventory now: the plugin (which the inventory manager keeps) drops its copy
        self.set_option("hosts", {})

    def _read_config_data(self, path: str) -> dict[str, t.Any]:
        """The file read once, by the strict loader (duplicate keys, alias bombs and size refused, naming the file), with
        the template trust Ansible's loader would give the configuration keys and none on the hosts' values. (Ansible's
        loader read the file a second time, tagged every node with its origin and deep-copied it: most of the parse time
        of a large fleet.)"""
        try:
            data = load_file(path, what="fleet file", loader=self.loader)
        except YamlError as exc:
            raise AnsibleParserError(str(exc)) from None
        # the messages of Ansible's own _read_config_data
        if not data:
            raise AnsibleParserError(f"{path} is empty")
        if not isinstance(data, Mapping):
            raise AnsibleParserError(f"inventory source has invalid structure, it should be a dictionary, got: {_type_name(data)}")
        if data.get("plugin") not in (getattr(self, "_redirected_names", None) or [self.NAME]):
            raise AnsibleParserError(f"Incorrect plugin name in file: {data.get('plugin', 'none found')}")
        config = {key: value if key == "hosts" else _trusted(value) for key, value in data.items()}
        self.set_options(direct=config, var_options=self._vars)
        return config

    def _add_fleet_host(self, path: str, name: str, variables: Mapping[str, t.Any], options: Mapping[str, t.Any],
                        shared: dict[tuple[t.Any, ...], t.Any]) -> None:
        strict = options["strict"]
        host = self.inventory.add_host(name)
        for key, value in variables.items():
            self.inventory.set_variable(host, key, self._shared_value(shared, value))
            if isinstance(value, str):
                # the inventory stores a copy of a string with the file's origin tag; a string already tagged so is stored
                # as it is: one copy per distinct value (fleet_region of 100,000 hosts) instead of one per host and variable
                shared.setdefault((type(value), is_trusted_as_template(value), value), self.inventory.get_host(host).vars[key])
        constructed = options["compose"] or options["groups"] or options["keyed_groups"]
        # the host's variables as compose/groups see them; without those, the fleet variables as set are all we read
        hostvars = self.inventory.get_host(host).get_vars() if constructed else variables
        # the constructed order: compose first, so composed fleet_* variables group like literal ones
        if options["compose"]:
            self._set_composite_vars(options["compose"], hostvars, host, strict=strict)
        if options["fleet_groups"]:
            self._add_fleet_groups(path, host, self.inventory.get_host(host).get_vars() if options["compose"] else hostvars)
        if options["groups"]:
            self._add_host_to_composed_groups(options["groups"], hostvars, host, strict=strict)
        if options["keyed_groups"]:
            self._add_host_to_keyed_groups(options["keyed_groups"], hostvars, host, strict=strict)

    @staticmethod
    def _shared_value(shared: dict[tuple[t.Any, ...], t.Any], value: t.Any) -> t.Any:
        """The copy the inventory made of an equal string (same type, same template trust), if any."""
        if not isinstance(value, str):
            return value
        return shared.get((type(value), is_trusted_as_template(value), value), value)

    def _add_fleet_groups(self, path: str, host: str, hostvars: Mapping[str, t.Any]) -> None:
        """The groups ``keyed_groups: [{key: fleet_region, prefix: region}, ...]`` would build, without Jinja.

        ansible-core compiles every keyed-group key and conditional anew for every host (about 1 ms each); six
        built-in expressions per host made a 2,000-host fleet parse in 15 s instead of 2 s. Names go through the
        same sanitizer and inventory calls as keyed groups, and a unit test holds the two equal.
        """
        names = []
        for level in LEVELS:
            value = hostvars.get(f"fleet_{level}")
            if isinstance(value, str) and value:  # keyed groups skip a missing or empty key the same way
                names.append(f"{level}_{value}")
        names.append(ROLE_GROUPS[_check_role(path, host, hostvars)])
        for name in names:
            self.inventory.add_child(self.inventory.add_group(self._sanitize_group_name(name)), host)
