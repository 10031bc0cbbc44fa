#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: command_checks
short_description: Run the command checks of a rollout policy on a host and return their samples
version_added: 1.0.0
description:
  - Runs every check of kind V(command) on the managed host, C(samples) times each, and returns the samples
    (outcome, latency, reason) for M(fleetpatch.rollout.wave_gate) to judge with the other checks of the batch.
  - One module execution per host runs all command checks. HTTP, TCP, DNS and metric checks need no module, the
    controller runs them (M(fleetpatch.rollout.synthetic_checks)).
  - A sample is an error when the exit code is not C(expect_rc) or the output does not match C(stdout_regex), or when
    the command runs longer than C(timeout) seconds (it is then stopped, when the C(timeout) program is available on
    the host).
  - A command that cannot be started (not found, not executable) gives V(unavailable) samples, which the gate counts as
    inconclusive.
  - The module reports samples and never fails because a check failed; the gate decides.
  - M(fleetpatch.rollout.patch_apply) runs the same checks in its own execution (its O(fleetpatch.rollout.patch_apply#module:command_checks)
    option), which is how the rollout role runs them; this module is for playbooks that run the checks as a task of their own.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: In check mode no command runs and RV(samples) is empty.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The module changes nothing itself; what the commands do is up to them (checks should only observe).
options:
  checks:
    description:
      - Checks of kind V(command), as in the rollout policy's C(checks) key; checks of other kinds are ignored.
      - Each has C(name), C(command) (argv list, or a string split like a shell would, without a shell),
        C(expect_rc) (default V(0)), C(stdout_regex), C(samples), C(interval) and C(timeout).
    type: list
    elements: dict
    required: true
seealso:
  - module: fleetpatch.rollout.wave_gate
  - module: fleetpatch.rollout.synthetic_checks
"""

EXAMPLES = r"""
- name: Run the policy's command checks on this host
  fleetpatch.rollout.command_checks:
    checks:
      - name: queue-drained
        kind: command
        command: [/usr/local/bin/queue-depth, --max, "10"]
        samples: 3
        interval: 1
  register: command_checks
"""

RETURN = r"""
samples:
  description: Check name to its samples, each with outcome (V(ok), V(error) or V(unavailable)), latency_ms and reason.
  returned: always
  type: dict
  sample:
    queue-drained:
      - {outcome: ok, latency_ms: 12.5, reason: ""}
      - {outcome: error, latency_ms: 10.1, reason: "exit code 1, expected 0"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode import install as install_bytecode_cache


def main() -> None:
    module = AnsibleModule(
        argument_spec={"checks": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    # the collection's own code loads from here on, through the host bytecode cache (module_utils/_bytecode.py): the
    # AnsiballZ payload is a zip, whose files zipimport compiles from source on every execution. Only the collection's
    # code is cached (the AnsiballZ wrapper imported ansible.module_utils.basic before this module ran). In main, not at
    # import time: the import sanity test refuses a module that changes sys.meta_path on import.
    install_bytecode_cache()
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._checks import CheckError, normalize_checks, run_command_checks
    try:
        checks = normalize_checks(module.params["checks"], "checks")
    except CheckError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=False, samples={})
    # the same sampling as patch_apply's command_checks option (module_utils/_checks.py)
    samples = run_command_checks(checks, run=lambda argv: module.run_command(argv, check_rc=False, handle_exceptions=False),
                                 timeout_bin=module.get_bin_path("timeout"))
    module.exit_json(changed=False, samples=samples)


if __name__ == "__main__":
    main()
