# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: patch_manifest
short_description: Validate a patch manifest and return its normalised form
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Checks a patch manifest (a mapping, for example loaded with C(from_yaml)) the way
    M(fleetpatch.rollout.rollout_plan) does, and returns it normalised (lower-case digests, artifact names filled in).
  - Fails with a message naming the first bad field, so a pre-staging play stops before it touches any host.
  - Besides C(url), C(path), C(sha256) and C(size), the C(artifact) may carry C(signature) (the armored text of
    C(ssh-keygen -Y sign)) and C(delta), a delta bundle against C(delta.base_version) with the same fields.
options:
  _input:
    description: The patch manifest.
    type: dict
    required: true
  require_sizes:
    description:
      - Also require C(artifact.size) (and C(artifact.delta.size) when there is a delta), as pre-staging does,
        because every transfer stops at the declared size.
    type: bool
    default: false
seealso:
  - module: fleetpatch.rollout.rollout_plan
  - module: fleetpatch.rollout.patch_bundle
"""

EXAMPLES = r"""
- name: Load and validate the patch manifest
  ansible.builtin.set_fact:
    patch: "{{ lookup('ansible.builtin.file', 'patches/FP-2026-0042.yml') | from_yaml | fleetpatch.rollout.patch_manifest }}"

- name: Load a manifest for pre-staging (declared sizes required)
  ansible.builtin.set_fact:
    patch: >-
      {{ lookup('ansible.builtin.file', 'patches/FP-2026-0042.yml') | from_yaml
         | fleetpatch.rollout.patch_manifest(require_sizes=true) }}
"""

RETURN = r"""
_value:
  description: The normalised patch manifest.
  type: dict
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import ManifestError, validate_patch_manifest


def patch_manifest(data: t.Any, require_sizes: bool = False) -> dict[str, t.Any]:
    try:
        return validate_patch_manifest(data, require_sizes=bool(require_sizes))
    except ManifestError as exc:
        raise AnsibleFilterError(f"fleetpatch.rollout.patch_manifest: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"patch_manifest": patch_manifest}
