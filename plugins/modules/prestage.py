#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: prestage
short_description: Put a verified patch artifact into a host's content-addressed cache before the window opens
version_added: 1.0.0
description:
  - Makes sure the artifact a rollout will install sits verified at C(<root>/cache/sha256/<digest>), in one
    execution per host, and applies the cache's retention policy.
  - What is staged depends on O(delta_mode). With V(auto) a host that runs O(delta.base_version) (and has zstd)
    gets the small delta bundle, any other host the full artifact; RV(fallback_reason) says why the full one was
    chosen. With V(both) (edge hosts, which serve either) both are staged; with V(never) only the full one.
  - Sources are tried in order, the region's edge cache (O(edge_url) followed by the digest) then the origin
    (O(url), O(delta.url)). A source that fails, is too slow or serves bytes with another digest is left for the next
    one; bytes with a wrong digest are never kept.
  - A download writes only C(cache/sha256/.<digest>.part). Free space is checked before every request. After a
    connection reset the download resumes with an HTTP Range request, with up to O(retries) retries per source and
    exponential backoff; it never reads past the declared O(size). Only when the digest matches (and the detached
    signature verifies against O(allowed_signers), and a fleetpatch bundle's members all check out) is the file
    renamed to its final path, so a complete file is the only thing ever found there. When the disk fills up the
    partial file is removed.
  - A cached artifact is re-hashed on every run; its signature and members are checked again whenever its cache
    record does not say they verified (a file cached by other means, another signature) and always with
    O(state=verified). Caches hold only verified content, so a cached artifact that is refused (signature, member
    list) is removed with its cache record, and never reported staged.
  - A run that finds everything staged transfers nothing.
  - With O(state=verified) nothing is transferred or removed; RV(ready) tells whether the host holds what the apply
    needs (the rollout's readiness gate).
requirements:
  - C(ssh-keygen) (OpenSSH client) on the host when signatures are verified.
author:
  - fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be downloaded and, in RV(would_remove), what retention would remove.
  diff_mode:
    support: full
    details: The digests of the service's cached artifacts before and after.
  idempotent:
    support: full
options:
  root:
    description: The host root that holds everything fleetpatch manages (C(fleetpatch_host_root)).
    type: path
    required: true
  service:
    description: Service the artifact belongs to; retention counts versions per service.
    type: str
    required: true
  version:
    description: The version the artifact installs (the patch manifest's C(target_version)).
    type: str
    required: true
  sha256:
    description: Hex sha256 digest of the full artifact (plain release tarball or fleetpatch bundle).
    type: str
    required: true
  size:
    description: Declared size of the full artifact in bytes. Transfers stop there; another size is refused.
    type: int
    required: true
  name:
    description: File name of the artifact, for messages and the cache record.
    type: str
  url:
    description:
      - Origin URL of the full artifact (V(http://), V(https://) or V(file://)).
      - Never logged (it may hold credentials in its userinfo or query string); messages show it as
        C(https://***@host/path?***).
    type: str
  signature:
    description:
      - Detached signature of the full artifact, the armored text printed by C(ssh-keygen -Y sign).
      - Verified with C(ssh-keygen -Y verify) against O(allowed_signers) before the file reaches its final path.
    type: str
  delta:
    description: A delta bundle against a base release, from M(fleetpatch.rollout.patch_bundle).
    type: dict
    suboptions:
      sha256:
        description: Hex sha256 digest of the delta bundle.
        type: str
        required: true
      size:
        description: Declared size of the delta bundle in bytes.
        type: int
        required: true
      base_version:
        description: The release the delta turns into O(version).
        type: str
        required: true
      url:
        description: Origin URL of the delta bundle. Never logged.
        type: str
      signature:
        description: Detached signature of the delta bundle (armored text).
        type: str
      name:
        description: File name of the delta bundle.
        type: str
  edge_url:
    description:
      - Base URL of the region's edge cache, for example C(http://edge-eu-west:8080/cache/sha256/); the digest is
        appended. Tried before the origin. Leave it out on edge hosts themselves.
    type: str
  edge_failed:
    description:
      - Set when every edge of this host's region failed to stage (the prestage play passes the edges' errors). The
        edge is then not tried; with O(origin_fallback) the host fetches from the origin and RV(origin_fallback) says
        why, without it the host fails with the reason.
    type: str
  origin_fallback:
    description:
      - Whether a host that has an O(edge_url) may fetch from the origin when its edge fails (the region-level
        fallback of C(rollout_policy.artifacts.origin_fallback)).
      - V(false) keeps the origin's load to one copy per region; a node whose edge fails then fails.
    type: bool
    default: true
  delta_mode:
    description:
      - V(auto) stages the delta when the host runs its base release and has zstd, else the full artifact.
      - V(both) stages the full artifact and the delta (edge hosts serve both).
      - V(never) stages only the full artifact.
    type: str
    choices: [auto, both, never]
    default: auto
  state:
    description:
      - V(present) stages (and applies retention).
      - V(verified) only checks. RV(ready) is V(true) when the host runs O(version) already or holds a copy of what it
        needs that verifies now (digest, signature, bundle members or tar headers); nothing is transferred, and a host
        that is not ready does not fail. A cached copy that is refused is removed (RV(purged)).
    type: str
    choices: [present, verified]
    default: present
  allowed_signers:
    description:
      - Content of an OpenSSH allowed-signers file (C(ssh-keygen(1)), ALLOWED SIGNERS). When set, every signed
        artifact must carry a signature by one of these keys; the host needs C(ssh-keygen).
    type: str
  signer_identity:
    description: Principal the signature must belong to; by default any principal of O(allowed_signers) that matches.
    type: str
  signature_namespace:
    description: Namespace the signature was made for (C(ssh-keygen -Y sign -n)).
    type: str
    default: fleetpatch
  require_signature:
    description: Refuse artifacts that carry no signature.
    type: bool
    default: false
  inspect_bundles:
    description:
      - Check every member of a fleetpatch bundle against its manifest before caching it (traversal, links
        leaving the tree, device files, names the manifest does not list, service and version).
    type: bool
    default: true
  url_headers:
    description: HTTP headers sent with every download, for example an authorization token.
    type: dict
  timeout:
    description: Seconds to wait for a connection or for the next bytes of a transfer before retrying.
    type: float
    default: 30
  retries:
    description: Retries per source after a reset, a timeout or a 5xx answer.
    type: int
    default: 3
  backoff:
    description: Seconds before the first retry; every further retry waits twice as long.
    type: float
    default: 1.0
  backoff_max:
    description: Longest wait between two retries, in seconds.
    type: float
    default: 30
  min_throughput:
    description:
      - Bytes per second a source must deliver, measured over O(throughput_window); a slower source is left for the
        next one. V(0) disables the check.
    type: int
    default: 0
  throughput_window:
    description: Seconds over which O(min_throughput) is measured.
    type: float
    default: 10
  max_time:
    description: Give up staging after this many seconds over all sources and retries. V(0) means no limit.
    type: float
    default: 0
  keep:
    description:
      - Retention. After staging, keep the cached artifacts of the newest O(keep) versions of O(service) (by version,
        then by staging time) and remove the others. Artifacts of the current release, its rollback point and
        O(version) are never removed; artifacts without a cache record (cached by other means) are left alone.
      - V(0) disables retention.
    type: int
    default: 3
notes:
  - The cache record C(<root>/cache/meta/<digest>.json) holds the service, version, kind, source, staging time
    and the verified signature's principal.
  - One execution per host at a time (an flock on C(<root>/cache/.prestage.lock)).
seealso:
  - module: fleetpatch.rollout.patch_bundle
  - module: fleetpatch.rollout.patch_apply
  - module: fleetpatch.rollout.prestage_report
"""

EXAMPLES = r"""
- name: Fill the edge cache from the origin (full artifact and delta)
  fleetpatch.rollout.prestage:
    root: "{{ fleetpatch_host_root }}"
    service: myapp
    version: 1.0.1
    sha256: "{{ patch.artifact.sha256 }}"
    size: "{{ patch.artifact.size }}"
    url: "{{ patch.artifact.url }}"
    signature: "{{ patch.artifact.signature }}"
    allowed_signers: "{{ lookup('ansible.builtin.file', 'allowed_signers') }}"
    delta: "{{ patch.artifact.delta }}"
    delta_mode: both

- name: Stage on a node from its edge, origin as fallback
  fleetpatch.rollout.prestage:
    root: "{{ fleetpatch_host_root }}"
    service: myapp
    version: 1.0.1
    sha256: "{{ patch.artifact.sha256 }}"
    size: "{{ patch.artifact.size }}"
    url: "{{ patch.artifact.url }}"
    edge_url: http://edge-eu-west.example.internal:8080/cache/sha256/
    min_throughput: 65536
    max_time: 900
  register: staged

- name: Only check that the artifact is staged and verified
  fleetpatch.rollout.prestage:
    root: "{{ fleetpatch_host_root }}"
    service: myapp
    version: 1.0.1
    sha256: "{{ patch.artifact.sha256 }}"
    size: "{{ patch.artifact.size }}"
    state: verified
"""

RETURN = r"""
ready:
  description: Whether the host holds a verified copy of what the apply needs (or runs O(version) already).
  returned: always
  type: bool
  sample: true
staged:
  description:
    - What the apply will use, V(null) when not ready; C(signature_verified) says whether the copy's signature was
      verified against O(allowed_signers) (what M(fleetpatch.rollout.prestage_report) records for a rollout's readiness gate).
  returned: always
  type: dict
  sample: {sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, kind: delta, size: 20480,
           path: /srv/fleetpatch/cache/sha256/4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, signature_verified: true}
artifacts:
  description:
    - One entry per artifact considered, with C(action) V(present) or V(download), and for downloads the
      source that delivered, the bytes moved, whether it resumed, the attempts and every error on the way.
  returned: always
  type: list
  elements: dict
  sample:
    - {sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, kind: full, action: download,
       source: origin, bytes: 204800, resumed: false, attempts: 2,
       errors: ["edge: served 204800 bytes with sha256 0f1e..., expected 4c1e... (corrupt); the bytes were discarded"]}
transferred_bytes:
  description: Payload bytes written to the cache by this execution (V(0) when everything was staged already).
  returned: always
  type: int
  sample: 204800
bytes_by_source:
  description: RV(transferred_bytes) by source name (V(edge), V(origin)).
  returned: always
  type: dict
  sample: {edge: 204800}
fallback_reason:
  description: With O(delta_mode=auto), why the full artifact was staged instead of the delta.
  returned: always
  type: str
  sample: the host runs 0.9.0, the delta needs 1.0.0
reason:
  description: With O(state=verified), why the host is not ready.
  returned: always
  type: str
  sample: "not staged: full 4c1e0f3b0a9d is not cached"
removed:
  description: Cache entries retention removed.
  returned: unless check mode
  type: list
  elements: dict
  sample: [{sha256: 0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f4c1e0f3b, version: 0.9.0, kind: full, size: 204800}]
would_remove:
  description: Cache entries retention would remove.
  returned: in check mode
  type: list
  elements: dict
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["download full 4c1e0f3b0a9d from edge then origin", "remove full 0a9d8e7f6a5b (0.9.0) from the cache"]
purged:
  description: Refused artifacts removed from this host's cache (a bad signature or member), with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, kind: full,
            reason: "cached full artifact 4c1e... is refused: signature of 4c1e... was made by ssh-ed25519 key SHA256:..., which is not in allowed_signers"}]
edge_refused:
  description:
    - The edge served bytes that did not have the declared digest (V(null) otherwise); the bytes were discarded.
      M(fleetpatch.rollout.prestage_report) names the edge, and C(playbooks/prestage.yml) has it re-verify its cache.
  returned: always
  type: dict
  sample: {sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, reason: "served 204800 bytes with sha256 0f1e..."}
edge_error:
  description: Why the edge source failed, when it did.
  returned: always
  type: str
  sample: "edge: [Errno 111] Connection refused (after 4 attempts)"
origin_fallback:
  description: Why this host fetched from the origin instead of its edge (every edge of its region failed).
  returned: always
  type: str
  sample: "every edge of the region failed (edge-eu-west: connection refused)"
diff:
  description: Digests of the cached artifacts with a cache record, before and after.
  returned: always
  type: dict
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode import install as install_bytecode_cache


def main() -> None:
    argument_spec = dict(
        root=dict(type="path", required=True),
        service=dict(type="str", required=True),
        version=dict(type="str", required=True),
        sha256=dict(type="str", required=True),
        size=dict(type="int", required=True),
        name=dict(type="str"),
        url=dict(type="str", no_log=True),
        signature=dict(type="str"),
        delta=dict(type="dict", options=dict(
            sha256=dict(type="str", required=True),
            size=dict(type="int", required=True),
            base_version=dict(type="str", required=True),
            url=dict(type="str", no_log=True),
            signature=dict(type="str"),
            name=dict(type="str"),
        )),
        edge_url=dict(type="str"),
        edge_failed=dict(type="str"),
        origin_fallback=dict(type="bool", default=True),
        delta_mode=dict(type="str", default="auto", choices=["auto", "both", "never"]),
        state=dict(type="str", default="present", choices=["present", "verified"]),
        allowed_signers=dict(type="str"),
        signer_identity=dict(type="str"),
        signature_namespace=dict(type="str", default="fleetpatch"),
        require_signature=dict(type="bool", default=False),
        inspect_bundles=dict(type="bool", default=True),
        url_headers=dict(type="dict", no_log=True),
        timeout=dict(type="float", default=30),
        retries=dict(type="int", default=3),
        backoff=dict(type="float", default=1.0),
        backoff_max=dict(type="float", default=30),
        min_throughput=dict(type="int", default=0),
        throughput_window=dict(type="float", default=10),
        max_time=dict(type="float", default=0),
        keep=dict(type="int", default=3),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    # the collection's own code loads from here on, through the host bytecode cache (module_utils/_bytecode.py): the
    # AnsiballZ payload is a zip, whose files zipimport compiles from source on every execution. Only the collection's
    # code is cached (the AnsiballZ wrapper imported ansible.module_utils.basic before this module ran). In main, not at
    # import time: the import sanity test refuses a module that changes sys.meta_path on import.
    install_bytecode_cache()
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostLayout, ReleaseError
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._module_ops import ModuleOps
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._prestage import (
        StageResult,
        build_stage_request,
        run_stage,
    )
    result = StageResult()
    try:
        layout = HostLayout(root=module.params["root"], service=module.params["service"])
        run_stage(layout, build_stage_request(module.params), ModuleOps(module), result=result)
    except ReleaseError as exc:
        failure = result.as_dict(check_mode=module.check_mode)
        failure["ready"] = False
        module.fail_json(msg=str(exc), **failure)
    module.exit_json(**result.as_dict(check_mode=module.check_mode))


if __name__ == "__main__":
    main()
