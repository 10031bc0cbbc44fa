#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: patch_facts
short_description: Report a host's patch level from its fleetpatch host manifests
version_added: 1.0.0
description:
  - Reads, in one small execution and without gathering any other facts, what the host reports about its patch
    level, the host manifests C(<root>/state/<service>.manifest.json) that M(fleetpatch.rollout.patch_apply) writes,
    and checks each against the C(apps/<service>/current) link.
  - Each service gets a C(state). V(ok) means the manifest parsed, names a valid version and agrees with the current
    link. V(missing), V(unreadable), V(corrupt) (not JSON, not an object, no valid version, another service, an
    invalid digest) and V(inconsistent) (manifest and current link disagree) come with a C(reason), so that the drift
    report can say why it has no usable data for that service.
  - Optionally reads the installed versions of O(packages) with one C(dpkg-query) or C(rpm) call.
  - Never changes anything. M(fleetpatch.rollout.drift_report) turns the facts of many hosts into the drift report.
author:
  - fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: Reads the same files in check mode; the module never changes anything.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  root:
    description:
      - The host root that holds everything fleetpatch manages (C(fleetpatch_host_root)).
    type: path
    required: true
  services:
    description:
      - Services to report. A service without a host manifest is reported with C(state=missing).
      - Empty means every C(state/*.manifest.json) found under O(root).
    type: list
    elements: str
    default: []
  packages:
    description:
      - Packages whose installed version to report (V(null) when not installed).
    type: list
    elements: str
    default: []
  package_manager:
    description:
      - Tool that reads package versions; V(auto) uses C(dpkg-query) when present, else C(rpm).
    type: str
    choices: [auto, dpkg, rpm]
    default: auto
notes:
  - The result is returned as the fact C(fleetpatch_patch) and, for use with C(register), as RV(patch_facts).
seealso:
  - module: fleetpatch.rollout.drift_report
  - module: fleetpatch.rollout.patch_apply
"""

EXAMPLES = r"""
- name: Read the patch level of every service on the host
  fleetpatch.rollout.patch_facts:
    root: "{{ fleetpatch_host_root }}"
  register: patch_level

- name: Read one service and two package versions
  fleetpatch.rollout.patch_facts:
    root: /srv/fleetpatch
    services: [myapp]
    packages: [openssl, libc6]

- name: Show the version of myapp
  ansible.builtin.debug:
    msg: "{{ ansible_facts.fleetpatch_patch.services.myapp.version | default('unknown') }}"
"""

RETURN = r"""
patch_facts:
  description: What the host reports; the same data as the fact C(fleetpatch_patch).
  returned: success
  type: dict
  contains:
    schema:
      description: Format of this structure.
      type: int
      sample: 1
    root:
      description: The host root, normalised.
      type: str
      sample: /srv/fleetpatch
    root_exists:
      description: Whether O(root) is a directory.
      type: bool
    collected_at:
      description: UTC time the facts were read, ISO 8601.
      type: str
      sample: "2026-03-02T01:00:04Z"
    services:
      description:
        - Service name to its facts, C(state) (V(ok), V(missing), V(unreadable), V(corrupt), V(inconsistent)),
          C(reason) (V(null) when ok), C(manifest) (path), C(version), C(artifact_sha256), C(release), C(patch_id),
          C(installed_at), C(previous_version) and C(current) (the version the current link points at).
      type: dict
      sample:
        myapp:
          state: ok
          reason: null
          version: 1.0.1
          artifact_sha256: 3f0c9a4e6d2b1c8f7a5e3d9b0c4f6a2e8d1b7c5a3f9e0d2c4b6a8f1e3d5c7b9a
          patch_id: FP-2026-0042
          installed_at: "2026-03-01T22:14:09Z"
          previous_version: 1.0.0
          current: 1.0.1
    packages:
      description: Package name to installed version, V(null) when not installed.
      type: dict
      sample: {openssl: 3.0.15-1~deb12u1}
"""

import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode import install as install_bytecode_cache


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            services=dict(type="list", elements="str", default=[]),
            packages=dict(type="list", elements="str", default=[]),
            package_manager=dict(type="str", choices=["auto", "dpkg", "rpm"], default="auto"),
        ),
        supports_check_mode=True,
    )
    # the collection's own code loads from here on, through the host bytecode cache (module_utils/_bytecode.py): the
    # AnsiballZ payload is a zip, whose files zipimport compiles from source on every execution. Only the collection's
    # code is cached (the AnsiballZ wrapper imported ansible.module_utils.basic before this module ran). In main, not at
    # import time: the import sanity test refuses a module that changes sys.meta_path on import.
    install_bytecode_cache()
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._patch_facts import (
        PatchFactsError,
        read_patch_facts,
    )
    if not module.params["root"]:
        module.fail_json(msg="root is empty: set fleetpatch_host_root for this host")
    try:
        facts = read_patch_facts(
            module.params["root"],
            services=module.params["services"],
            packages=module.params["packages"],
            manager=module.params["package_manager"],
            run=lambda argv: module.run_command(argv, environ_update={"LC_ALL": "C"}),
            which=shutil.which,
        )
    except PatchFactsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, patch_facts=facts, ansible_facts={"fleetpatch_patch": facts})


if __name__ == "__main__":
    main()
