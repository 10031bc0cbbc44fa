# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: prestage_regions
short_description: Regions whose every edge failed to stage, and whether a play's hosts require signatures
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - O(_input) is C(hostvars). With O(edges), returns a mapping of region to reason for every region whose edges all have a
    failed or unreachable M(fleetpatch.rollout.prestage) result in O(result_var) (edges without a result yet are
    not counted); the nodes of such a region skip their edge and, with C(origin_fallback), fetch from the origin.
  - Computed once per play (reading other hosts' variables is costly), like P(fleetpatch.rollout.edge_cache_urls#filter).
options:
  _input:
    description: C(hostvars).
    type: raw
    required: true
  edges:
    description: The edge host names.
    type: list
    elements: str
    required: true
  result_var:
    description: The variable the edges registered their prestage result in.
    type: str
    default: __prestage_result
"""

EXAMPLES = r"""
- name: Regions whose edges all failed
  ansible.builtin.set_fact:
    failed_regions: "{{ hostvars | fleetpatch.rollout.prestage_regions(groups['fleet_edges']) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: Region name to the reason (each failed edge and its error, truncated).
  type: dict
  sample: {eu-west: "edge-eu-west: Failed to connect to the host via ssh"}
"""

import typing as t

from ansible.errors import AnsibleFilterError

REASON_LIMIT = 160


def edge_failure(result: t.Any) -> str | None:
    """Why an edge's prestage result is a failure, None when it staged or has not run."""
    if not isinstance(result, t.Mapping) or not result:
        return None
    if result.get("skipped"):
        return None
    if result.get("ready") and not result.get("failed") and not result.get("unreachable"):
        return None
    reason = str(result.get("msg") or result.get("reason") or ("unreachable" if result.get("unreachable") else "not staged"))
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_LIMIT else reason[:REASON_LIMIT] + "..."


def prestage_regions(hostvars: t.Any, edges: t.Any, result_var: str = "__prestage_result") -> dict[str, str]:
    if not isinstance(edges, (list, tuple)):
        raise AnsibleFilterError("fleetpatch.rollout.prestage_regions: edges must be a list of host names")
    regions: dict[str, list[tuple[str, str | None, bool]]] = {}
    for edge in edges:
        try:
            variables = hostvars[edge]
        except KeyError:
            raise AnsibleFilterError(f"fleetpatch.rollout.prestage_regions: edge {edge!r} is not in the inventory") from None
        result = variables.get(result_var)
        regions.setdefault(str(variables.get("fleet_region") or ""), []).append(
            (str(edge), edge_failure(result), isinstance(result, t.Mapping) and bool(result)))
    failed = {}
    for region, entries in regions.items():
        ran = [entry for entry in entries if entry[2]]
        if region and ran and len(ran) == len(entries) and all(reason for _edge, reason, _ran in ran):
            failed[region] = "; ".join(f"{edge}: {reason}" for edge, reason, _ran in ran)
    return dict(sorted(failed.items()))


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"prestage_regions": prestage_regions}
