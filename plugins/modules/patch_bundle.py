#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: patch_bundle
short_description: Build a verifiable patch bundle (and a delta against a base release) from a release
version_added: 1.0.0
description:
  - Builds, from a release directory, a release tarball or a full bundle (O(source)), a fleetpatch bundle
    C(<service>-<version>.bundle.tar.gz) in O(dest). Its first member C(fleetpatch-bundle.json) embeds who built what
    from what (O(patch_id), O(service), O(base_version), O(target_version) with its O(target_tag), O(source_commit),
    O(toolchain), O(approver), build time) and the manifest of the release tree (every file's sha256, size and mode,
    symlinks, directories) with the digest of the whole tree.
  - With O(base), also builds a delta bundle C(<service>-<base>-to-<version>.delta.tar.gz) that ships only what
    changed. Changed files get a binary delta made with C(zstd --patch-from) on their uncompressed content when
    zstd is installed (and the delta is smaller), else they are shipped whole. The delta records the full bundle's
    digest; a host builds the same tree from it (checked against the tree digest) or falls back to the full bundle.
  - With O(signing_key), writes a detached signature C(<bundle>.sig) made with C(ssh-keygen -Y sign) for every
    bundle, and verifies it at once against O(allowed_signers) when given.
  - Output is reproducible. The same release and options give byte-identical bundles (sorted members, fixed
    owners and times, the build time taken from C(SOURCE_DATE_EPOCH) or the newest file of the source), so a
    re-run changes nothing.
  - Runs where the release is, usually on the controller (C(delegate_to=localhost)).
author:
  - fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: Builds in a temporary directory, reports the digests it would write and writes nothing in O(dest).
  diff_mode:
    support: full
    details: The digests of the bundles in O(dest) before and after.
  idempotent:
    support: full
options:
  source:
    description: The release to bundle, a directory, a (compressed) tar archive or a full fleetpatch bundle.
    type: path
    required: true
  dest:
    description: Directory the bundles and signatures are written to; created when missing.
    type: path
    required: true
  patch_id:
    description: Patch identifier, as in the patch manifest.
    type: str
    required: true
  service:
    description: Service name, one path component.
    type: str
    required: true
  target_version:
    description: Version the bundle installs.
    type: str
    required: true
  target_tag:
    description:
      - The patch tag of O(target_version). V(release) marks a full release build that stands on its own.
      - V(patch) marks a patch-only build, made from O(base_version)'s tree with a targeted change (a hotfix); it
        requires O(base_version).
    type: str
    choices: [release, patch]
    default: release
  base_version:
    description: The release this patch applies to; required with O(base) and with O(target_tag=patch).
    type: str
  base:
    description: The base release (directory, tarball or full bundle) to build a delta bundle against.
    type: path
  source_commit:
    description: Version control commit the release was built from.
    type: str
  toolchain:
    description: Build toolchain of the release (compiler, build image). Defaults to this module and its tools.
    type: str
  approver:
    description: Who approved this patch for release.
    type: str
  build_time:
    description:
      - Build time recorded in the bundle, C(YYYY-MM-DDTHH:MM:SSZ) or seconds since the epoch.
      - Defaults to C(SOURCE_DATE_EPOCH) when set, else the newest modification time in O(source).
    type: str
  zstd:
    description: Make binary deltas of changed files with zstd when it is installed. V(false) ships changed files whole.
    type: bool
    default: true
  zstd_level:
    description: zstd compression level of the binary deltas (1 to 19).
    type: int
    default: 19
  signing_key:
    description:
      - Private key (or, with an agent, public key) for C(ssh-keygen -Y sign). Every bundle gets a C(.sig) file.
    type: path
  signature_namespace:
    description: Signature namespace (C(ssh-keygen -Y sign -n)); hosts verify with the same one.
    type: str
    default: fleetpatch
  allowed_signers:
    description: An allowed-signers file to verify the new signatures against before reporting success.
    type: path
  url_base:
    description:
      - Base URL where O(dest)'s files will be published; RV(artifact) then carries download URLs.
    type: str
requirements:
  - ssh-keygen (OpenSSH 8.2 or later) for O(signing_key)
  - zstd 1.4.5 or later for binary deltas (optional)
seealso:
  - module: fleetpatch.rollout.prestage
  - module: fleetpatch.rollout.patch_apply
"""

EXAMPLES = r"""
- name: Bundle myapp 1.0.1, with a delta against 1.0.0, signed
  fleetpatch.rollout.patch_bundle:
    source: /srv/build/myapp-1.0.1.tar.gz
    base: /srv/build/myapp-1.0.0.tar.gz
    dest: /srv/artifacts/myapp
    patch_id: FP-2026-0042
    service: myapp
    target_version: 1.0.1
    base_version: 1.0.0
    target_tag: patch
    source_commit: 3f0c9a1
    toolchain: gcc-12.2 debian-bookworm
    approver: alice@example.com
    signing_key: /etc/fleetpatch/signing/id_ed25519
    allowed_signers: /etc/fleetpatch/allowed_signers
    url_base: https://artifacts.example.internal/myapp/
  delegate_to: localhost
  register: bundle

- name: Write the patch manifest from the result
  ansible.builtin.copy:
    dest: /srv/patches/FP-2026-0042.yml
    mode: "0644"
    content: "{{ {'patch_id': 'FP-2026-0042', 'service': 'myapp', 'target_version': '1.0.1', 'base_version': '1.0.0',
                  'artifact': bundle.artifact} | to_nice_yaml }}"
  delegate_to: localhost
"""

RETURN = r"""
bundle:
  description: The full bundle.
  returned: always
  type: dict
  sample: {path: /srv/artifacts/myapp/myapp-1.0.1.bundle.tar.gz, name: myapp-1.0.1.bundle.tar.gz,
           sha256: 4c1e0f3b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f, size: 5242880,
           tree_sha256: 9f2c6a0d2f6cbb9c5fd3c4e0c1f4c0f0b76f5f2b7d6cfd7c9d3e3a4b5c6d7e8f, files: 412,
           signature_path: /srv/artifacts/myapp/myapp-1.0.1.bundle.tar.gz.sig, signer: builder@example.com}
delta:
  description:
    - The delta bundle (same keys as RV(bundle)), with C(base_version), C(ops) (how many files are kept from the
      base, patched or shipped whole) and C(percent_of_full). V(null) without O(base).
  returned: always
  type: dict
metadata:
  description: The full bundle's metadata without the file list (what C(fleetpatch-bundle.json) says about the build).
  returned: always
  type: dict
artifact:
  description:
    - The C(artifact) section of a patch manifest for these bundles (url with O(url_base), path, sha256, size,
      signature, and C(delta)).
  returned: always
  type: dict
actions:
  description: What was written (or would be in check mode).
  returned: always
  type: list
  elements: str
"""

import datetime
import os
import shutil
import sys
import tarfile
import tempfile
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import (
    BuildInfo,
    BundleError,
    Materialized,
    built_at_from,
    bundle_name,
    delta_name,
    newest_mtime,
    sign_file,
    verify_signature,
    write_delta_bundle,
    write_full_bundle,
    zstd_version,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file, write_file_atomic
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import ReleaseError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._tools import find_tool

BUILDER = "fleetpatch.rollout.patch_bundle 0.2.0"


def source_epoch(source: str, build_time: str | None) -> int:
    if build_time:
        if build_time.isdigit():
            return int(build_time)
        try:
            moment = datetime.datetime.strptime(build_time, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise BundleError(f"build_time {build_time!r} is neither YYYY-MM-DDTHH:MM:SSZ nor seconds since the epoch") from None
        return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    if os.path.isdir(source):
        return int(newest_mtime(source))
    try:
        with tarfile.open(source, "r:*") as tar:
            return int(max((member.mtime for member in tar), default=0))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"cannot read {source}: {exc}") from exc


class BundleBuild:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode
        self.actions: list[str] = []
        self.dest = os.path.abspath(self.params["dest"])

    def publish(self, built: str, name: str) -> dict[str, t.Any]:
        """Move a freshly built file to dest/name unless an identical one is there; sign it."""
        final = os.path.join(self.dest, name)
        digest = sha256_file(built)
        before = sha256_file(final) if os.path.isfile(final) else None
        if before != digest:
            self.actions.append(f"{'write' if before is None else 'replace'} {name}")
            if not self.check_mode:
                os.makedirs(self.dest, exist_ok=True)
                shutil.move(built, final + ".tmp")
                os.replace(final + ".tmp", final)
        info: dict[str, t.Any] = {"path": final, "name": name, "sha256": digest, "size": os.path.getsize(final if
                                  not self.check_mode else built), "before": before}
        key = self.params["signing_key"]
        if key:
            signed = final if not self.check_mode else built
            signature = sign_file(signed, key=key, namespace=self.params["signature_namespace"])
            if self.params["allowed_signers"]:
                with open(self.params["allowed_signers"], encoding="utf-8") as handle:
                    info["signer"] = verify_signature(signed, signature=signature, allowed_signers=handle.read(),
                                                      namespace=self.params["signature_namespace"])
            sig_path = final + ".sig"
            current = None
            if os.path.isfile(sig_path):
                with open(sig_path, encoding="utf-8") as handle:
                    current = handle.read()
            if current != signature:
                self.actions.append(f"{'write' if current is None else 'replace'} {name}.sig")
                if not self.check_mode:
                    write_file_atomic(sig_path, signature)
            info.update(signature=signature, signature_path=sig_path)
        return info

    def run(self) -> dict[str, t.Any]:
        params = self.params
        if params["base"] and not params["base_version"]:
            raise BundleError("base needs base_version: the version of the release the delta is made against")
        if not 1 <= params["zstd_level"] <= 19:
            raise BundleError(f"zstd_level must be from 1 to 19, got {params['zstd_level']}")
        epoch = source_epoch(params["source"], params["build_time"])
        zstd = find_tool("zstd") if params["zstd"] else None
        zstd_ver = zstd_version(zstd) if zstd else None
        toolchain = params["toolchain"] or (
            f"{BUILDER}; python {sys.version.split()[0]}; " + (f"zstd {zstd_ver}" if zstd_ver else "no zstd")
        )
        info = BuildInfo(
            patch_id=params["patch_id"], service=params["service"], target_version=params["target_version"],
            target_tag=params["target_tag"], base_version=params["base_version"], source_commit=params["source_commit"],
            toolchain=toolchain, approver=params["approver"], built_at=built_at_from(epoch),
        ).validate()
        scratch = tempfile.mkdtemp(prefix="fleetpatch-bundle-")
        try:
            with Materialized(params["source"], scratch_dir=scratch) as source:
                full_tmp = os.path.join(scratch, "full.tar.gz")
                metadata = write_full_bundle(source.tree, info, full_tmp, mtime=epoch)
                bundle = self.publish(full_tmp, bundle_name(info.service, info.target_version))
                bundle.update(tree_sha256=metadata["tree_sha256"], files=len(metadata["files"]))
                delta = None
                if params["base"]:
                    with Materialized(params["base"], scratch_dir=scratch) as base:
                        delta_tmp = os.path.join(scratch, "delta.tar.gz")
                        delta_meta = write_delta_bundle(
                            source.tree, base.tree, info, delta_tmp, mtime=epoch, full_sha256=bundle["sha256"],
                            full_size=bundle["size"], zstd=zstd, level=params["zstd_level"], scratch_dir=scratch,
                        )
                        ops = {op: sum(1 for entry in delta_meta["files"].values() if entry["op"] == op)
                               for op in ("keep", "patch", "file")}
                        name = delta_name(info.service, t.cast(str, info.base_version), info.target_version)
                        delta = self.publish(delta_tmp, name)
                        delta.update(base_version=info.base_version, tree_sha256=delta_meta["tree_sha256"],
                                     files=len(delta_meta["files"]), ops=ops, tool=delta_meta["delta"]["tool"],
                                     percent_of_full=round(100.0 * delta["size"] / bundle["size"], 2))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        summary = {key: value for key, value in metadata.items() if key not in ("files", "links", "dirs")}
        before = {item["name"]: item.pop("before") for item in (bundle, delta) if item}
        after = {item["name"]: item["sha256"] for item in (bundle, delta) if item}
        return {
            "changed": bool(self.actions),
            "actions": self.actions,
            "bundle": bundle,
            "delta": delta,
            "metadata": summary,
            "artifact": self.manifest_artifact(bundle, delta),
            "diff": {"before": before, "after": after},
        }

    def manifest_artifact(self, bundle: dict[str, t.Any], delta: dict[str, t.Any] | None) -> dict[str, t.Any]:
        url_base = self.params["url_base"]

        def entry(item: dict[str, t.Any]) -> dict[str, t.Any]:
            data = {"name": item["name"], "path": item["path"], "sha256": item["sha256"], "size": item["size"]}
            if url_base:
                data["url"] = url_base.rstrip("/") + "/" + item["name"]
            if item.get("signature"):
                data["signature"] = item["signature"]
            return data

        artifact = entry(bundle)
        if delta:
            artifact["delta"] = dict(entry(delta), base_version=delta["base_version"])
        return artifact


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            patch_id=dict(type="str", required=True),
            service=dict(type="str", required=True),
            target_version=dict(type="str", required=True),
            target_tag=dict(type="str", default="release", choices=["release", "patch"]),
            base_version=dict(type="str"),
            base=dict(type="path"),
            source_commit=dict(type="str"),
            toolchain=dict(type="str"),
            approver=dict(type="str"),
            build_time=dict(type="str"),
            zstd=dict(type="bool", default=True),
            zstd_level=dict(type="int", default=19),
            signing_key=dict(type="path", no_log=False),
            signature_namespace=dict(type="str", default="fleetpatch"),
            allowed_signers=dict(type="path"),
            url_base=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    build = BundleBuild(module)
    try:
        result = build.run()
    except (ReleaseError, OSError) as exc:
        module.fail_json(msg=str(exc), actions=build.actions)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
