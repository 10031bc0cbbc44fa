# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: prestage_args
short_description: The fleetpatch.rollout.prestage arguments a play shares, from a patch manifest
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Validates a patch manifest like P(fleetpatch.rollout.patch_manifest#filter) with O(fleetpatch.rollout.patch_manifest#filter:require_sizes=true)
    and returns the arguments of M(fleetpatch.rollout.prestage) that are the same on every host (service, version,
    digest, size, URL, signature, delta bundle) merged with the play's options.
  - Computed once per play and handed to every host through C(module_defaults), the module task templates one value
    per host instead of twenty; the host-specific arguments (C(root), C(edge_url), C(delta_mode)) stay in the task.
  - Options that are V(null) or empty strings are left out, so the module's defaults apply.
options:
  _input:
    description: The patch manifest (raw or already validated).
    type: dict
    required: true
  options:
    description:
      - Shared module options, any of C(state), C(allowed_signers), C(signer_identity), C(require_signature),
        C(url_headers), C(timeout), C(retries), C(backoff), C(backoff_max), C(min_throughput), C(max_time), C(keep).
    type: dict
    default: {}
seealso:
  - module: fleetpatch.rollout.prestage
  - plugin: fleetpatch.rollout.patch_manifest
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Resolve the shared arguments once
  ansible.builtin.set_fact:
    stage_args: "{{ lookup('ansible.builtin.file', 'patches/FP-2026-0042.yml') | from_yaml | fleetpatch.rollout.prestage_args({'retries': 5}) }}"
  run_once: true

- name: Stage on every host
  fleetpatch.rollout.prestage:
    root: "{{ fleetpatch_host_root }}"
  module_defaults:
    fleetpatch.rollout.prestage: "{{ stage_args }}"
"""

RETURN = r"""
_value:
  description: Module arguments.
  type: dict
  sample: {service: myapp, version: 2.0.0, sha256: "4c1e0f3b...", size: 8409148, url: "https://origin/myapp-2.0.0.bundle.tar.gz", retries: 5}
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import ManifestError, prestage_module_args


def prestage_args(data: t.Any, options: t.Any = None) -> dict[str, t.Any]:
    if options is not None and not isinstance(options, dict):
        raise AnsibleFilterError("fleetpatch.rollout.prestage_args: options must be a mapping")
    try:
        return prestage_module_args(data, options)
    except ManifestError as exc:
        raise AnsibleFilterError(f"fleetpatch.rollout.prestage_args: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"prestage_args": prestage_args}
