# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: edge_cache_urls
short_description: Cache URLs of the edge hosts, by edge and by region
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Looks at every edge host once and returns where its content-addressed cache is served, so that each node can
    find its edge's URL without reading other hosts' variables itself (which costs a full variable resolution each
    time).
  - An edge's URL is its C(fleet_edge_cache_url), else C(http://<ansible_host or name>:<port>/cache/sha256/).
  - The first edge of a region (in O(_input) order) serves the region's nodes that do not name their C(fleet_edge).
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  edges:
    description: Names of the edge hosts, for example C(groups['fleet_edges']).
    type: list
    elements: str
    required: true
  port:
    description: Port of the edge's web server when it has no C(fleet_edge_cache_url).
    type: int
    default: 8080
seealso:
  - module: fleetpatch.rollout.prestage
"""

EXAMPLES = r"""
- name: Map edges and regions to their cache URLs (once)
  ansible.builtin.set_fact:
    edge_urls: "{{ hostvars | fleetpatch.rollout.edge_cache_urls(groups['fleet_edges'] | default([])) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: C(by_host) maps every edge to its URL, C(by_region) every region to the URL of its edge.
  type: dict
  sample: {by_host: {edge-eu-west: "http://10.0.1.5:8080/cache/sha256/"}, by_region: {eu-west: "http://10.0.1.5:8080/cache/sha256/"}}
"""

import typing as t

from ansible.errors import AnsibleFilterError


def edge_cache_urls(hostvars: t.Any, edges: t.Any, port: int = 8080) -> dict[str, dict[str, str]]:
    if not isinstance(edges, (list, tuple)):
        raise AnsibleFilterError("fleetpatch.rollout.edge_cache_urls: edges must be a list of host names")
    by_host: dict[str, str] = {}
    by_region: dict[str, str] = {}
    for edge in edges:
        try:
            variables = hostvars[edge]
        except KeyError:
            raise AnsibleFilterError(f"fleetpatch.rollout.edge_cache_urls: edge {edge!r} is not in the inventory") from None
        url = variables.get("fleet_edge_cache_url") or f"http://{variables.get('ansible_host') or edge}:{port}/cache/sha256/"
        by_host[str(edge)] = str(url)
        region = variables.get("fleet_region")
        if region and region not in by_region:
            by_region[str(region)] = str(url)
    return {"by_host": by_host, "by_region": by_region}


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"edge_cache_urls": edge_cache_urls}
