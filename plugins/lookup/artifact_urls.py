# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: artifact_urls
short_description: The raw artifact URLs of a patch manifest, for a no_log hand-over to the apply step
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Loads the patch manifest with the collection's strict YAML loader (duplicate keys and alias bombs refused),
    validates it like M(fleetpatch.rollout.rollout_plan) and returns C(url) and C(delta_url) as written, credentials
    (URL userinfo, query tokens) included.
  - M(fleetpatch.rollout.rollout_plan) returns the manifest with URL userinfo replaced by C(***), because its result is
    printed and recorded. The role's plan step reads the raw URLs with this lookup in a task with C(no_log) and hands
    them to M(fleetpatch.rollout.patch_apply), whose URL options are C(no_log).
  - With O(sha256), a manifest whose artifact digest is not the planned one (the file changed after planning) is refused.
options:
  _terms:
    description: The patch manifest, as a path to a YAML/JSON file or as a mapping. Exactly one.
    required: true
  sha256:
    description: The artifact digest of the plan; the manifest must still name it.
    type: str
notes:
  - Use it only in a task with C(no_log=true); its result carries credentials.
seealso:
  - module: fleetpatch.rollout.rollout_plan
"""

EXAMPLES = r"""
- name: Hand the raw artifact URLs to the apply step
  ansible.builtin.set_fact:
    artifact_urls: "{{ query('fleetpatch.rollout.artifact_urls', 'patches/FP-2026-0042.yml', sha256=plan.patch.artifact.sha256) | first }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One mapping with C(url) and C(delta_url) (V(null) when the manifest has none).
  type: list
  elements: dict
"""

import os
import typing as t

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import ManifestError, artifact_urls, validate_patch_manifest
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file


class LookupModule(LookupBase):
    def run(self, terms: list[t.Any], variables: dict[str, t.Any] | None = None, **kwargs: t.Any) -> list[dict[str, t.Any]]:
        self.set_options(var_options=variables, direct=kwargs)
        if len(terms) != 1:
            raise AnsibleLookupError(f"fleetpatch.rollout.artifact_urls takes one patch manifest, got {len(terms)}")
        term = terms[0]
        try:
            if isinstance(term, dict):
                manifest = validate_patch_manifest(term)
            elif isinstance(term, str) and term:
                path = os.path.abspath(os.path.expanduser(term))
                manifest = validate_patch_manifest(load_file(path, what="patch manifest", loader=self._loader), source=f"patch manifest {path}")
            else:
                raise AnsibleLookupError("fleetpatch.rollout.artifact_urls: the patch manifest must be a path or a mapping")
        except (ManifestError, YamlError) as exc:
            raise AnsibleLookupError(f"fleetpatch.rollout.artifact_urls: {exc}") from None
        expected = self.get_option("sha256")
        if expected and manifest["artifact"]["sha256"] != str(expected).lower():
            raise AnsibleLookupError(f"fleetpatch.rollout.artifact_urls: the patch manifest changed after planning: artifact.sha256 is"
                                     f" {manifest['artifact']['sha256']}, the plan has {expected}")
        return [artifact_urls(manifest)]
