#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: patch_apply
short_description: Install a verified release on a host, or roll it back, in one step
version_added: 1.0.0
description:
  - Does one host's whole step of a fleetpatch rollout in one execution.
  - With O(state=present) it verifies the host's rollback point, makes sure the artifact is in the host's
    content-addressed cache (downloading it from O(artifact_url) when absent), unpacks it safely into
    C(apps/<service>/releases/<version>), switches C(apps/<service>/current) to it with an atomic rename, runs
    O(restart_command), records the host manifest and audit line, checks O(health_url), and prunes old releases.
  - With O(state=rollback) it switches back to the release recorded as previous in the host manifest.
  - Every step is resumable; a host killed at any moment holds either the old or the new complete state,
    and the next execution finishes the job.
  - The controller decides; this module only acts. It never reverts on a failed health check (the wave gate
    decides that), only when O(restart_command) fails.
requirements:
  - C(ssh-keygen) (OpenSSH client) on the host when the artifact's signature is verified (O(allowed_signers) given, or
    O(require_signature=true)).
author:
  - fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details:
      - Walks the same path as a real run and returns the same RV(actions) and RV(diff); the artifact is checked
        when it is already cached. Health is only checked in check mode when nothing would change.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  root:
    description:
      - The host root that holds everything fleetpatch manages (C(fleetpatch_host_root)).
    type: path
    required: true
  service:
    description:
      - Name of the service, one path component.
    type: str
    required: true
  version:
    description:
      - With O(state=present), the version to install.
      - With O(state=rollback), the version to roll back from; a host that does not run it is left alone.
    type: str
    required: true
  sha256:
    description:
      - Hex sha256 digest (64 digits) of the release artifact (a tar archive, optionally compressed).
    type: str
    required: true
  artifact_url:
    description:
      - Where to get the artifact when C(cache/sha256/<digest>) is absent or corrupt.
      - V(http://), V(https://) and V(file://) URLs are supported. The download (the one downloader
        M(fleetpatch.rollout.prestage) uses, bounded by O(max_artifact_bytes), O(max_time) and O(min_throughput)) goes to
        C(cache/sha256/.<digest>.part) and is renamed into place only after its digest (and O(artifact_size)) matched.
      - Never logged (it may hold credentials in its userinfo or query string).
    type: str
  src:
    description:
      - Path of the artifact on the controller, staged over the task's connection by the action plugin of this module
        and taken from there like a V(file://) O(artifact_url) (same bounds and checks), in the one module execution
        that applies it; a host whose cache already holds a verified copy uses that copy.
      - Mutually exclusive with O(artifact_url); only with O(state=present). Nothing is transferred in check mode.
    type: path
  plan_var:
    description:
      - Name of the variable of C(localhost) that holds the registered result of M(fleetpatch.rollout.rollout_plan) (the
        role C(fleetpatch.rollout.rollout) registers C(__rollout_plan)). The action plugin of this module then builds
        O(root), O(service), O(version), O(sha256), O(patch_id), the artifact's source for O(stage), O(artifact_size),
        O(signature), O(allowed_signers), O(signer_identity), O(require_signature) (from the policy and the host's
        C(fleet_environment)), O(affected_versions), O(allow_downgrade), the transfer bounds, O(delta) and the plan's
        command checks (O(command_checks)) from that result, and O(restart_command) and O(health_url) from the host's
        C(fleetpatch_restart_command) and C(fleetpatch_health_url), once per host, in Python.
      - Options given in the task win over the ones built from the plan. Handled by the action plugin, never passed to
        the host.
    type: str
  urls_var:
    description:
      - With O(plan_var), name of the variable of C(localhost) that holds the raw artifact URLs (C(url), C(delta_url);
        the plan's are masked), set by a C(no_log) task with the P(fleetpatch.rollout.artifact_urls#lookup) lookup.
        Without it, or when C(localhost) has no such variable, the plan's own URLs are used.
    type: str
  skip_var:
    description:
      - Name of a variable of this host that holds the registered result of M(fleetpatch.rollout.change_window) (the role
        C(fleetpatch.rollout.rollout) registers C(__rollout_window)). A host its C(skip_hosts) lists (one this attempt of the
        run skips) is skipped by the action plugin of this module, with nothing run on it, and the result says
        RV(skipped=true), as a C(when) on the task would. Handled by the action plugin, never passed to the host.
    type: str
  stage:
    description:
      - With O(plan_var), how the artifact reaches the host's cache (the role's C(rollout_stage)). V(url) downloads from
        the raw URL (O(artifact_url), and the delta's), V(copy) stages the manifest's C(artifact.path) from the controller
        (O(src)), V(prestaged) expects it in the cache already.
    type: str
    choices: [url, copy, prestaged]
    default: url
  stage_var:
    description:
      - With O(plan_var) and without O(stage), name of a variable of this host that holds the stage (the role passes
        C(rollout_stage)); read by the action plugin, as the task would have templated it. Unset, or the variable undefined,
        means O(stage)'s default. Handled by the action plugin, never passed to the host.
    type: str
  artifact_size:
    description:
      - Declared size of the artifact in bytes; a download or cached copy of another size is refused.
    type: int
  url_headers:
    description:
      - HTTP headers sent with the artifact download, for example an authorization token. Never logged.
    type: dict
  signature:
    description:
      - Detached signature of the artifact O(sha256), the armored text C(ssh-keygen -Y sign -n fleetpatch) prints
        (the patch manifest's C(artifact.signature)).
      - When given and O(allowed_signers) is set, it is verified against the exact cached file right before that file is
        unpacked, before the release directory exists, whatever brought the file into the cache (a download, a copy from the
        controller, pre-staging). A file whose signature does not verify is removed from the cache and the task fails,
        naming the principal (or the key fingerprint) that signed it.
    type: str
  allowed_signers:
    description:
      - The text of an ssh C(allowed_signers) file listing the keys trusted to sign artifacts (C(rollout_policy.artifacts)).
    type: str
  signer_identity:
    description:
      - The principal that must have made the signature; by default any principal of O(allowed_signers) whose key signed it.
    type: str
  require_signature:
    description:
      - Install only signed artifacts. An artifact without O(signature) (or a host without O(allowed_signers)) fails with
        V(no signature) before anything is downloaded, and a copy already in the cache is removed.
      - The rollout role sets it per host from C(rollout_policy.artifacts.require_signature) (V(auto) requires it for the
        policy's production environments).
      - An installed release (nothing to do) is not verified again, so re-runs stay cheap; a release directory that was
        unpacked without a verified signature is rebuilt from a verified artifact.
    type: bool
    default: false
  affected_versions:
    description:
      - The installed versions this patch applies to; empty means any.
      - A host that runs another version (or nothing yet, when the list is not empty) is left unchanged; nothing is
        downloaded or written and the result says RV(not_applicable=true).
    type: list
    elements: str
    default: []
  allow_downgrade:
    description:
      - Allow O(version) to be older than the installed version. Without it such a host fails with V(downgrade refused).
    type: bool
    default: false
  max_artifact_bytes:
    description:
      - The most bytes a download of the artifact (or delta bundle) may bring when no size is declared
        (O(artifact_size), O(delta.size)); an origin that sends more, or never ends its response, is stopped there.
      - With a declared size, the download never reads past it.
      - The rollout role passes C(rollout_policy.artifacts.max_artifact_bytes).
    type: int
    default: 2147483648
  max_time:
    description:
      - Overall deadline of one artifact download in seconds, retries included; V(0) means none.
      - A breach fails the host with the reason and removes the partial file.
    type: float
    default: 900
  min_throughput:
    description:
      - Minimum download speed in bytes per second, averaged over O(throughput_window); V(0) means none.
      - An origin that sends slower (or stalls) fails the host within the window, with the reason
        (C(artifact transfer from <url> stopped - slower than 1024 B/s for 30 s)), and the partial file is removed.
        URLs in messages never show their userinfo or query string.
    type: int
    default: 1024
  throughput_window:
    description: The window in seconds over which O(min_throughput) is averaged.
    type: float
    default: 30
  timeout:
    description:
      - Timeout in seconds of the artifact download connection.
    type: int
    default: 30
  state:
    description:
      - V(present) installs O(version).
      - V(rollback) switches back to the release recorded as previous in the host manifest, after verifying it.
    type: str
    choices: [present, rollback]
    default: present
  patch_id:
    description:
      - Patch identifier recorded in the host manifest and the audit line.
    type: str
  restart_command:
    description:
      - Command that restarts the service after the switch, as a list of arguments or a string split with
        shell quoting rules (no shell is involved).
      - With O(state=present), a non-zero exit switches back to the previous release, runs the command again,
        records that, and fails with RV(reverted=true).
    type: raw
  health_url:
    description:
      - >-
        URL whose GET answers 200 with a JSON object C({"status": "ok", "version": ...}) when the service is healthy.
      - Checked after the switch and restart until it reports the expected version or O(health_retries) is spent;
        the outcome is returned in RV(health). A failed check fails the task but does not revert.
      - Also checked when nothing changes, so a re-run reports the current health.
    type: str
  health_timeout:
    description:
      - Timeout in seconds of each health request.
    type: float
    default: 10
  health_retries:
    description:
      - Maximum number of health requests.
    type: int
    default: 5
  health_delay:
    description:
      - Seconds to wait between two health requests.
    type: float
    default: 0.5
  require_rollback_point:
    description:
      - With O(state=present), refuse a host whose current release cannot be verified against its recorded
        digests, before anything is touched.
      - Also refuse a host that has no current release at all; set V(false) to allow a first install.
    type: bool
    default: true
  keep_releases:
    description:
      - After a successful change with O(state=present), keep at most this many release directories
        (newest versions first). The current release and the rollback point are always kept.
    type: int
    default: 3
  delta:
    description:
      - A delta bundle (built by M(fleetpatch.rollout.patch_bundle)) that turns release O(delta.base_version) into
        O(version). It is used only when the host currently runs O(delta.base_version) and the full artifact
        O(sha256) is not already cached; it is taken from the cache (pre-staged by M(fleetpatch.rollout.prestage))
        or downloaded from O(delta.url).
      - Unchanged files are copied from the installed base release and changed ones rebuilt with zstd; every file
        and the digest of the whole tree are checked against the bundle's manifest. When that fails (the base
        differs, zstd is missing), the module falls back to the full artifact (O(artifact_url) or the cache).
      - The release is recorded under the full artifact's digest O(sha256), exactly as a full install would be.
    type: dict
    suboptions:
      sha256:
        description: Hex sha256 digest of the delta bundle.
        type: str
        required: true
      base_version:
        description: The release the delta was made against.
        type: str
        required: true
      size:
        description: Declared size of the delta bundle in bytes.
        type: int
      url:
        description: Where to download the delta bundle when it is not cached. Never logged.
        type: str
      signature:
        description:
          - Detached signature of the delta bundle (armored text), verified like O(signature) before the bundle is used.
          - With O(require_signature), an unsigned delta is not used (the full artifact is); a delta whose signature does
            not verify fails the task and is removed from the cache.
        type: str
  command_checks:
    description:
      - The rollout policy's checks of kind V(command), run on the host by this same execution after the step succeeded
        (after the restart and the health check; also when the host already ran O(version), or the patch does not apply
        to it), so a batch needs no second module execution per host for them. Checks of other kinds are ignored.
      - Same schema as O(fleetpatch.rollout.command_checks#module:checks), checked the same way before anything on the
        host is touched. Each has C(name), C(command) (argv list, or a string split
        like a shell would, without a shell), C(expect_rc) (default V(0)), C(stdout_regex), C(samples), C(interval),
        C(initial_delay) and C(timeout).
      - A failed step runs no check. A command that cannot be started gives V(unavailable) samples; a failing check never
        fails the task, M(fleetpatch.rollout.wave_gate) judges the samples (RV(command_checks.samples)).
      - In check mode no command runs and RV(command_checks.samples) is empty, as with M(fleetpatch.rollout.command_checks).
    type: list
    elements: dict
    default: []
notes:
  - O(sha256) may name a plain release tarball or a fleetpatch bundle (M(fleetpatch.rollout.patch_bundle)); a bundle
    is recognised by its first member and unpacked only after every member was checked against its manifest.
  - The host layout is described in the collection's C(docs/architecture.md).
seealso:
  - name: fleetpatch architecture
    description: Host layout and the contracts between plan, gate and apply.
    link: https://example.invalid/fleetpatch/rollout/docs
"""

EXAMPLES = r"""
- name: Install 1.0.1 on this host
  fleetpatch.rollout.patch_apply:
    root: "{{ fleetpatch_host_root }}"
    service: web
    version: 1.0.1
    sha256: "{{ patch.artifact.sha256 }}"
    artifact_url: "{{ patch.artifact.url }}"
    artifact_size: "{{ patch.artifact.size }}"
    signature: "{{ patch.artifact.signature }}"
    allowed_signers: "{{ lookup('ansible.builtin.file', 'allowed_signers') }}"
    require_signature: true
    affected_versions: [1.0.0]
    url_headers:
      Authorization: "Bearer {{ artifact_token }}"
    patch_id: "{{ patch.id }}"
    restart_command: "{{ fleetpatch_restart_command }}"
    health_url: "{{ fleetpatch_health_url }}"
  register: fleetpatch_apply

- name: First install on an empty host, no rollback point yet
  fleetpatch.rollout.patch_apply:
    root: /srv/fleetpatch
    service: web
    version: 1.0.0
    sha256: 9f2c6a0d2f6cbb9c5fd3c4e0c1f4c0f0b76f5f2b7d6cfd7c9d3e3a4b5c6d7e8f
    artifact_url: file:///srv/artifacts/web-1.0.0.tar.gz
    require_rollback_point: false
    restart_command: [systemctl, restart, web]

- name: One host of a rollout the role planned (arguments from the plan result on localhost and this host's variables)
  fleetpatch.rollout.patch_apply:
    plan_var: __rollout_plan
    urls_var: __rollout_artifact_urls
    stage: url
  register: fleetpatch_apply

- name: Roll this host back from 1.0.1
  fleetpatch.rollout.patch_apply:
    root: "{{ fleetpatch_host_root }}"
    service: web
    version: 1.0.1
    sha256: "{{ patch.artifact.sha256 }}"
    state: rollback
    restart_command: "{{ fleetpatch_restart_command }}"
    health_url: "{{ fleetpatch_health_url }}"
"""

RETURN = r"""
changed:
  description: Whether anything on the host changed (or would change in check mode).
  returned: always
  type: bool
  sample: true
version:
  description:
    - Version current on the host after this execution (what it would be in check mode).
    - After RV(reverted=true) this is the release switched back to.
  returned: always
  type: str
  sample: 1.0.1
previous_version:
  description:
    - Version that was current before this execution's change; equal to RV(version) when nothing changed.
    - With O(state=rollback), the version rolled back from.
  returned: always
  type: str
  sample: 1.0.0
sha256:
  description: Artifact digest of RV(version).
  returned: always
  type: str
  sample: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f
release:
  description: Release directory of RV(version).
  returned: always
  type: str
  sample: /srv/fleetpatch/apps/web/releases/1.0.1
rollback_point:
  description:
    - The release this host can go back to.
    - With O(state=present), the release that was current before the change; with O(state=rollback), the
      release rolled back to.
    - C(verified) is V(null) when this execution had no reason to hash it (nothing changed).
  returned: always
  type: dict
  sample: {version: 1.0.0, release: /srv/fleetpatch/apps/web/releases/1.0.0, verified: true}
  contains:
    version:
      description: Version of the rollback point, V(null) on a first install.
      type: str
      returned: always
    release:
      description: Its release directory.
      type: str
      returned: always
    verified:
      description: Whether every file of it matched its recorded digest.
      type: bool
      returned: always
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [download artifact, unpack 1.0.1, switch current 1.0.0 -> 1.0.1, restart, record manifest, prune 0.9.0]
health:
  description: Outcome of the health check; V(null) when O(health_url) is not set or the check was not run.
  returned: always
  type: dict
  sample: {ok: true, status: 200, version: 1.0.1, attempts: 2, latency_ms: 3.1}
  contains:
    ok:
      description: Whether the service answered 200 with the expected version.
      type: bool
      returned: always
    status:
      description: HTTP status of the last request, V(null) when it did not connect.
      type: int
      returned: always
    version:
      description: Version the service reported last.
      type: str
      returned: always
    attempts:
      description: Number of requests made.
      type: int
      returned: always
    latency_ms:
      description: Duration of the last request in milliseconds.
      type: float
      returned: always
    error:
      description: Why the check failed.
      type: str
      returned: when RV(health.ok) is false
skipped:
  description:
    - V(true) when O(skip_var) lists this host; nothing ran on it, and the result holds only RV(changed), RV(skipped) and
      RV(skip_reason).
  returned: when the host is skipped
  type: bool
  sample: true
skip_reason:
  description: Why the host was skipped.
  returned: when the host is skipped
  type: str
  sample: this attempt skips the host (__rollout_window.skip_hosts)
not_applicable:
  description:
    - V(true) when the installed version is not in O(affected_versions); the host was not changed (RV(version) is the
      installed one) and C(msg) says why.
  returned: when the patch does not apply to this host
  type: bool
  sample: true
installed_version:
  description: The version installed on a host the patch does not apply to (V(null) when nothing is installed).
  returned: when RV(not_applicable=true)
  type: str
  sample: 0.9.0
not_cached:
  description:
    - V(true) when the artifact is not in the host's cache and there is no O(artifact_url) to fetch it from (a
      pre-staged copy that is gone); the execution failed before anything was changed. The wave gate records such a
      host as C(not_staged), not as a failure. A cached copy that is corrupt or refused is a failure without this key.
  returned: when the cached copy is missing and cannot be fetched
  type: bool
  sample: true
signature:
  description: The verified signature of the artifact (or delta bundle) this execution unpacked.
  returned: when a signature was verified
  type: dict
  sample: {principal: release@example.com, key: ssh-ed25519 key SHA256:uh3qSOWf5gZq8vsBcrydg4Ng2yPg9GAgqGGvOJV52YQ, artifact: artifact}
  contains:
    principal:
      description: The allowed signer whose key made the signature.
      type: str
      returned: always
    key:
      description: Type and SHA256 fingerprint of that key.
      type: str
      returned: always
    artifact:
      description: V(artifact) or V(delta bundle).
      type: str
      returned: always
downgrade:
  description: The installed and target versions of a downgrade allowed by O(allow_downgrade).
  returned: when the target is older than the installed version
  type: dict
  sample: {from: 1.1.0, to: 1.0.1}
reverted:
  description: Whether O(restart_command) failed and the host was switched back to its previous release.
  returned: always
  type: bool
  sample: false
rc:
  description: Exit code of the failed O(restart_command).
  returned: when O(restart_command) failed
  type: int
  sample: 1
stdout:
  description: Standard output of the failed O(restart_command).
  returned: when O(restart_command) failed
  type: str
stderr:
  description: Standard error of the failed O(restart_command).
  returned: when O(restart_command) failed
  type: str
revert_rc:
  description: Exit code of O(restart_command) run again after switching back (RV(reverted=true)).
  returned: when the host was reverted to a previous release
  type: int
  sample: 0
command_checks:
  description:
    - The samples of O(command_checks), in the shape M(fleetpatch.rollout.command_checks) returns.
  returned: when O(command_checks) is not empty and the step succeeded
  type: dict
  sample: {samples: {queue-drained: [{outcome: ok, latency_ms: 12.5, reason: ""}]}}
  contains:
    samples:
      description: Check name to its samples, each with outcome (V(ok), V(error) or V(unavailable)), latency_ms and reason.
      type: dict
      returned: always
diff:
  description: Installed release before and after, as data.
  returned: always
  type: dict
  sample:
    before: {version: 1.0.0, sha256: 9f2c6a0d2f6cbb9c5fd3c4e0c1f4c0f0b76f5f2b7d6cfd7c9d3e3a4b5c6d7e8f, release: /srv/fleetpatch/apps/web/releases/1.0.0}
    after: {version: 1.0.1, sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, release: /srv/fleetpatch/apps/web/releases/1.0.1}
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode import install as install_bytecode_cache


def main() -> None:
    argument_spec = dict(
        root=dict(type="path", required=True),
        service=dict(type="str", required=True),
        version=dict(type="str", required=True),
        sha256=dict(type="str", required=True),
        artifact_url=dict(type="str", no_log=True),
        # handled by the action plugin (plugins/action/patch_apply.py), which hands the module a file:// artifact_url instead
        src=dict(type="path"),
        # handled by the action plugin too: the rollout's arguments built from the plan result (never reach the module)
        plan_var=dict(type="str"),
        urls_var=dict(type="str"),
        skip_var=dict(type="str"),
        stage_var=dict(type="str"),
        stage=dict(type="str", default="url", choices=["url", "copy", "prestaged"]),
        artifact_size=dict(type="int"),
        url_headers=dict(type="dict", no_log=True),
        timeout=dict(type="int", default=30),
        state=dict(type="str", default="present", choices=["present", "rollback"]),
        patch_id=dict(type="str"),
        restart_command=dict(type="raw"),
        health_url=dict(type="str"),
        health_timeout=dict(type="float", default=10),
        health_retries=dict(type="int", default=5),
        health_delay=dict(type="float", default=0.5),
        require_rollback_point=dict(type="bool", default=True),
        keep_releases=dict(type="int", default=3),
        delta=dict(type="dict", options=dict(
            sha256=dict(type="str", required=True),
            base_version=dict(type="str", required=True),
            size=dict(type="int"),
            url=dict(type="str", no_log=True),
            signature=dict(type="str"),
        )),
        signature=dict(type="str"),
        allowed_signers=dict(type="str"),
        signer_identity=dict(type="str"),
        require_signature=dict(type="bool", default=False),
        affected_versions=dict(type="list", elements="str", default=[]),
        allow_downgrade=dict(type="bool", default=False),
        max_artifact_bytes=dict(type="int", default=2147483648),
        max_time=dict(type="float", default=900),
        min_throughput=dict(type="int", default=1024),
        throughput_window=dict(type="float", default=30),
        command_checks=dict(type="list", elements="dict", default=[]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    # the collection's own code loads from here on, through the host bytecode cache (module_utils/_bytecode.py): the
    # AnsiballZ payload is a zip, whose files zipimport compiles from source on every execution. Only the collection's
    # code is cached (the AnsiballZ wrapper imported ansible.module_utils.basic before this module ran). In main, not at
    # import time: the import sanity test refuses a module that changes sys.meta_path on import.
    install_bytecode_cache()
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._module_ops import ModuleOps
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
        ApplyResult,
        HostLayout,
        ReleaseError,
        build_request,
        run_apply,
    )
    # checked before the host is touched
    checks = _command_checks(module) if module.params["command_checks"] else None
    result = ApplyResult()
    try:
        layout = HostLayout(root=module.params["root"], service=module.params["service"])
        run_apply(layout, build_request(module.params), ModuleOps(module), result)
    except ReleaseError as exc:
        module.fail_json(msg=str(exc), **result.as_dict())
    if checks is not None:
        # in this execution, not a second one per host: the samples travel with the result the gate reads
        result.extra["command_checks"] = {"samples": {} if module.check_mode else _command_samples(module, checks)}
    module.exit_json(**result.as_dict())


# imported in the functions: a host with no command checks never loads module_utils/_checks.py
def _command_checks(module: AnsibleModule) -> list[dict[str, object]]:
    """The normalized command checks; the module fails on an invalid one."""
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._checks import CheckError, normalize_checks

    try:
        return normalize_checks(module.params["command_checks"], "command_checks")
    except CheckError as exc:
        module.fail_json(msg=str(exc))


def _command_samples(module: AnsibleModule, checks: list[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    """Check name to its samples (the same sampling as the command_checks module)."""
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._checks import run_command_checks

    return run_command_checks(checks, run=lambda argv: module.run_command(argv, check_rc=False, handle_exceptions=False),
                              timeout_bin=module.get_bin_path("timeout"))


if __name__ == "__main__":
    main()
