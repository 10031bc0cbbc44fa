# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: patch manifest validation. Not a public API."""

from __future__ import annotations

import re
import typing as t

PATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
URL_SCHEMES = ("http://", "https://", "file://")

REQUIRED = ("patch_id", "service", "target_version", "artifact")
KNOWN = frozenset(REQUIRED) | {
    "base_version",
    "description",
    "reason",
    "change_type",
    "classification",
    "severity",
    "approvals",
    "requested_by",
    "approved_by",
    "references",
    "build",
    # change policy fields (plugins/module_utils/_policy.py validates them for a rollout)
    "justification",
    "affected_versions",
    "regression_risk",
    "requester",
    "approvers",
    "security",
}
ARTIFACT_KNOWN = frozenset({"name", "url", "path", "sha256", "size", "signature", "delta"})
# artifact.delta: a delta bundle against base_version (fleetpatch.rollout.patch_bundle)
DELTA_KNOWN = frozenset({"name", "url", "path", "sha256", "size", "signature", "base_version"})
SIGNATURE_BEGIN = "-----BEGIN SSH SIGNATURE-----"


class ManifestError(ValueError):
    """A patch manifest that must not be used."""


def _require_str(data: t.Mapping[str, t.Any], key: str, pattern: re.Pattern[str], where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}{key} is required and must be a non-empty string")
    if not pattern.match(value):
        raise ManifestError(f"{where}{key} {value!r} does not match {pattern.pattern}")
    return value


def _check_signature(signature: t.Any, where: str) -> None:
    """A detached signature is carried inline, as the armored text ssh-keygen -Y sign prints."""
    if signature is not None and (not isinstance(signature, str) or SIGNATURE_BEGIN not in signature):
        raise ManifestError(f"{where} must be an armored SSH signature (the text of ssh-keygen -Y sign, {SIGNATURE_BEGIN} ...)")


def _validate_delta(delta: t.Any, where: str) -> dict[str, t.Any]:
    if not isinstance(delta, dict):
        raise ManifestError(f"{where} must be a mapping")
    unknown = sorted(set(delta) - DELTA_KNOWN)
    if unknown:
        raise ManifestError(f"{where} has unknown field(s) {', '.join(unknown)}")
    sha256 = delta.get("sha256")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256.lower()):
        raise ManifestError(f"{where}.sha256 must be 64 hexadecimal characters")
    base = delta.get("base_version")
    if not isinstance(base, str) or not VERSION_RE.match(base):
        raise ManifestError(f"{where}.base_version is required and must match {VERSION_RE.pattern}")
    url, path = delta.get("url"), delta.get("path")
    if url is None and path is None:
        raise ManifestError(f"{where} needs a url or a path")
    if url is not None and (not isinstance(url, str) or not url.startswith(URL_SCHEMES)):
        raise ManifestError(f"{where}.url must start with one of {', '.join(URL_SCHEMES)}")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ManifestError(f"{where}.path must be an absolute path")
    size = delta.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ManifestError(f"{where}.size must be a positive integer")
    _check_signature(delta.get("signature"), f"{where}.signature")
    normalized = dict(delta, sha256=sha256.lower())
    normalized.setdefault("name", (url or path or "").rstrip("/").rsplit("/", 1)[-1] or sha256.lower())
    return normalized


def validate_patch_manifest(data: t.Any, *, source: str = "patch manifest", require_sizes: bool = False) -> dict[str, t.Any]:
    """Return a normalised copy of a patch manifest or raise ManifestError naming the bad field.

    require_sizes: pre-staging stops every transfer at the declared size, so it needs artifact.size (and
    artifact.delta.size when there is a delta).
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise ManifestError(f"{source}: unknown field(s) {', '.join(unknown)}")
    prefix = f"{source}: "
    manifest = dict(data)
    manifest["patch_id"] = _require_str(data, "patch_id", PATCH_ID_RE, prefix)
    manifest["service"] = _require_str(data, "service", SERVICE_RE, prefix)
    manifest["target_version"] = _require_str(data, "target_version", VERSION_RE, prefix)
    if data.get("base_version") is not None:
        manifest["base_version"] = _require_str(data, "base_version", VERSION_RE, prefix)
    artifact = data.get("artifact")
    if not isinstance(artifact, dict):
        raise ManifestError(f"{prefix}artifact is required and must be a mapping")
    unknown = sorted(set(artifact) - ARTIFACT_KNOWN)
    if unknown:
        raise ManifestError(f"{prefix}artifact has unknown field(s) {', '.join(unknown)}")
    sha256 = artifact.get("sha256")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256.lower()):
        raise ManifestError(f"{prefix}artifact.sha256 must be 64 hexadecimal characters")
    normalized_artifact = dict(artifact, sha256=sha256.lower())
    url = artifact.get("url")
    path = artifact.get("path")
    if url is None and path is None:
        raise ManifestError(f"{prefix}artifact needs a url or a path")
    if url is not None and (not isinstance(url, str) or not url.startswith(URL_SCHEMES)):
        raise ManifestError(f"{prefix}artifact.url must start with one of {', '.join(URL_SCHEMES)}")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ManifestError(f"{prefix}artifact.path must be an absolute path")
    size = artifact.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ManifestError(f"{prefix}artifact.size must be a positive integer")
    if "name" not in normalized_artifact:
        source_name = (url or path or "").rstrip("/").rsplit("/", 1)[-1]
        normalized_artifact["name"] = source_name or f"{manifest['service']}-{manifest['target_version']}"
    _check_signature(artifact.get("signature"), f"{prefix}artifact.signature")
    if artifact.get("delta") is not None:
        normalized_artifact["delta"] = _validate_delta(artifact["delta"], f"{prefix}artifact.delta")
    manifest["artifact"] = normalized_artifact
    if require_sizes and (size is None or (artifact.get("delta") is not None and artifact["delta"].get("size") is None)):
        raise ManifestError(f"patch {manifest['patch_id']}: pre-staging needs artifact.size (and artifact.delta.size) "
                            "in the patch manifest")
    return manifest


def run_id_for(patch_id: str) -> str:
    """The controller run id for a patch: running the same patch again resumes the same run."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", patch_id)


# Options of fleetpatch.rollout.prestage a play passes the same to every host (role variable -> module argument).
PRESTAGE_SHARED_OPTIONS = (
    "state", "allowed_signers", "signer_identity", "require_signature", "url_headers", "timeout", "retries", "backoff",
    "backoff_max", "min_throughput", "max_time", "keep",
)


def prestage_module_args(data: t.Any, options: t.Mapping[str, t.Any] | None = None) -> dict[str, t.Any]:
    """The fleetpatch.rollout.prestage arguments every host of a play shares, from a patch manifest (validated here,
    sizes required) and the play's options; options that are None or empty strings are left to the module's defaults.

    The host-specific ones (root, edge_url, delta_mode) are not included.
    """
    manifest = validate_patch_manifest(data, require_sizes=True)
    artifact = manifest["artifact"]
    args: dict[str, t.Any] = {
        "service": manifest["service"],
        "version": manifest["target_version"],
        "sha256": artifact["sha256"],
        "size": artifact["size"],
        "name": artifact.get("name"),
        "url": artifact.get("url"),
        "signature": artifact.get("signature"),
        # the controller-side path of a delta is of no use on a host
        "delta": {key: value for key, value in artifact["delta"].items() if key != "path"} if artifact.get("delta") else None,
    }
    unknown = sorted(set(options or {}) - set(PRESTAGE_SHARED_OPTIONS))
    if unknown:
        raise ManifestError(f"unknown prestage option(s) {', '.join(unknown)}")
    args.update(options or {})
    return {key: value for key, value in args.items() if value is not None and value != ""}
