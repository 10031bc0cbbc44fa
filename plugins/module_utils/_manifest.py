# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: patch manifest validation. Not a public API."""

from __future__ import annotations

import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._inputs import (
    NAME_MAX,
    TEXT_MAX,
    InputError,
    check_bool,
    check_path,
    check_strings,
    check_text,
    check_url,
    label,
    redact_url,
    shown,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import SIGNATURE_BEGIN
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import compare_versions, version_key

__all__ = [
    "ManifestError",
    "PATCH_ID_RE",
    "artifact_urls",
    "downgrade_text",
    "prestage_module_args",
    "redacted",
    "run_id_for",
    "validate_patch_manifest",
]

# matched whole (re.fullmatch): "1.0.1\n" is not a version; every name is at most NAME_MAX (128) characters
PATCH_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,127}")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
URL_SCHEMES = ("http", "https", "file")
# free-text fields may span lines (an armored signature, a justification); every other string is one line
MULTILINE = frozenset({"description", "justification", "reason", "downgrade_justification", "signature"})

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
    # change policy fields (plugins/plugin_utils/_policy.py validates them for a rollout)
    "justification",
    "affected_versions",
    "regression_risk",
    "requester",
    "approvers",
    "security",
    # direction: a target older than base_version / affected_versions needs both (docs/security.md)
    "allow_downgrade",
    "downgrade_justification",
    "downgrade",  # computed: a validated manifest validates again unchanged
}
ARTIFACT_KNOWN = frozenset({"name", "url", "path", "sha256", "size", "signature", "delta", "url_redacted"})
# artifact.delta: a delta bundle against base_version (fleetpatch.rollout.patch_bundle)
DELTA_KNOWN = frozenset({"name", "url", "path", "sha256", "size", "signature", "base_version", "url_redacted"})
# an artifact's file name in a cache or a release record: no directory part
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class ManifestError(InputError):
    """A patch manifest that must not be used."""


def _require_str(data: t.Mapping[str, t.Any], key: str, pattern: re.Pattern[str], where: str) -> str:
    value = data.get(key)
    if value is None or value == "":
        raise ManifestError(f"{where}{key} is required and must be a non-empty string")
    return check_text(value, field=key, where=where, max_len=NAME_MAX, pattern=pattern, error=ManifestError)


def _sha256(value: t.Any, field: str, where: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise ManifestError(f"{where}{field} must be 64 hexadecimal characters, got {shown(value)}")
    return value.lower()


def _url(value: t.Any, field: str, where: str) -> str:
    return check_url(value, field=field, where=where, schemes=URL_SCHEMES, error=ManifestError)


def _size(value: t.Any, field: str, where: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ManifestError(f"{where}{field} must be a positive integer, got {shown(value)}")
    return value


def _check_signature(signature: t.Any, field: str, prefix: str) -> None:
    """A detached signature is carried inline, as the armored text ssh-keygen -Y sign prints."""
    if signature is None:
        return
    check_text(signature, field=field, where=prefix, max_len=TEXT_MAX, multiline=True, error=ManifestError)
    if SIGNATURE_BEGIN not in signature:
        raise ManifestError(f"{prefix}{field} must be an armored SSH signature (the text of ssh-keygen -Y sign, {SIGNATURE_BEGIN} ...)")


def _default_name(url: str | None, path: str | None) -> str:
    """The file name of the artifact's URL or path; never its query string (it may carry a token)."""
    source = (url or "").partition("?")[0].partition("#")[0] or path or ""
    return source.rstrip("/").rsplit("/", 1)[-1]


def _validate_artifact(artifact: t.Any, field: str, prefix: str, known: frozenset[str]) -> dict[str, t.Any]:
    """artifact or artifact.delta: a digest, a url (http, https, file) or an absolute path, a size, a signature."""
    if not isinstance(artifact, dict):
        raise ManifestError(f"{prefix}{field} is required and must be a mapping" if field == "artifact" else f"{prefix}{field} must be a mapping")
    unknown = sorted(str(key) for key in set(artifact) - known)
    if unknown:
        raise ManifestError(f"{prefix}{field} has unknown field(s) {', '.join(label(key) for key in unknown)}")
    normalized = dict(artifact, sha256=_sha256(artifact.get("sha256"), f"{field}.sha256", prefix))
    url, path = artifact.get("url"), artifact.get("path")
    if url is None and path is None:
        raise ManifestError(f"{prefix}{field} needs a url or a path")
    if url is not None:
        url = normalized["url"] = _url(url, f"{field}.url", prefix)
    if path is not None:
        path = normalized["path"] = check_path(path, field=f"{field}.path", where=prefix, error=ManifestError)
    _size(artifact.get("size"), f"{field}.size", prefix)
    _check_signature(artifact.get("signature"), f"{field}.signature", prefix)
    if "name" in artifact:
        normalized["name"] = check_text(artifact["name"], field=f"{field}.name", where=prefix, max_len=255, pattern=_FILE_NAME_RE,
                                        error=ManifestError)
    return normalized


def _validate_delta(delta: t.Any, prefix: str) -> dict[str, t.Any]:
    field = "artifact.delta"
    normalized = _validate_artifact(delta, field, prefix, DELTA_KNOWN)
    if delta.get("base_version") is None:
        raise ManifestError(f"{prefix}{field}.base_version is required and must match {VERSION_RE.pattern}")
    normalized["base_version"] = check_text(delta["base_version"], field=f"{field}.base_version", where=prefix, pattern=VERSION_RE,
                                            error=ManifestError)
    normalized.setdefault("name", _default_name(normalized.get("url"), normalized.get("path")) or normalized["sha256"])
    return normalized


def _versions(value: t.Any, field: str, prefix: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ManifestError(f"{prefix}{field} must be a list of versions, got {shown(value)}")
    if len(value) > 1000:
        raise ManifestError(f"{prefix}{field} lists {len(value)} versions; at most 1000")
    versions: list[str] = []
    for index, item in enumerate(value):
        version = check_text(item, field=f"{field}[{index}]", where=prefix, pattern=VERSION_RE, error=ManifestError)
        if version not in versions:
            versions.append(version)
    return versions


def _direction(manifest: dict[str, t.Any], prefix: str) -> dict[str, t.Any] | None:
    """Refuse a target older than base_version or any affected version unless the manifest allows the downgrade with a
    justification. Returns the allowed downgrade (from, to, justification), or None when the patch goes forward."""
    target = manifest["target_version"]
    older_than = [version for version in [manifest.get("base_version")] + manifest["affected_versions"]
                  if version is not None and compare_versions(target, version) < 0]
    if not older_than:
        return None
    newest = max(older_than, key=version_key)
    which = "base_version" if newest == manifest.get("base_version") else "affected_versions"
    if not manifest["allow_downgrade"]:
        raise ManifestError(f"{prefix}target_version {target} is older than {which} {newest}: a downgrade is refused unless the"
                            " manifest sets allow_downgrade: true with a downgrade_justification")
    if not manifest.get("downgrade_justification"):
        raise ManifestError(f"{prefix}target_version {target} is older than {which} {newest}: allow_downgrade needs a non-empty"
                            " downgrade_justification")
    return {"from": newest, "to": target, "justification": manifest["downgrade_justification"]}


def downgrade_text(downgrade: t.Mapping[str, t.Any] | None) -> str:
    """The plan's line for an allowed downgrade ('' when the patch goes forward)."""
    if not downgrade:
        return ""
    return f"DOWNGRADE {downgrade['from']} -> {downgrade['to']} allowed: {downgrade['justification']}\n"


def validate_patch_manifest(data: t.Any, *, source: str = "patch manifest", require_sizes: bool = False) -> dict[str, t.Any]:
    """Return a normalised copy of a patch manifest or raise ManifestError naming the bad field.

    Every string is checked whole (no trailing newline), bounded and typed; URLs parse (http, https, file). Always present
    in the result: affected_versions (list, [] = any installed version), allow_downgrade (bool), downgrade (the allowed
    downgrade or None).

    require_sizes: pre-staging stops every transfer at the declared size, so it needs artifact.size (and
    artifact.delta.size when there is a delta).
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(key) for key in set(data) - KNOWN)
    if unknown:
        raise ManifestError(f"{source}: unknown field(s) {', '.join(label(key) for key in unknown)}")
    prefix = f"{source}: "
    # no value anywhere is a megabyte or carries a control character into a log line (the fields below say more)
    check_strings(data, where=source, max_len=TEXT_MAX, error=ManifestError)
    manifest = dict(data)
    manifest["patch_id"] = _require_str(data, "patch_id", PATCH_ID_RE, prefix)
    manifest["service"] = _require_str(data, "service", SERVICE_RE, prefix)
    manifest["target_version"] = _require_str(data, "target_version", VERSION_RE, prefix)
    if data.get("base_version") is not None:
        manifest["base_version"] = _require_str(data, "base_version", VERSION_RE, prefix)
    for key in ("description", "justification", "reason", "downgrade_justification"):
        if data.get(key) is not None:
            manifest[key] = check_text(data[key], field=key, where=prefix, max_len=TEXT_MAX, multiline=True, allow_empty=True,
                                       error=ManifestError).strip()
    manifest["affected_versions"] = _versions(data.get("affected_versions"), "affected_versions", prefix)
    manifest["allow_downgrade"] = check_bool(data.get("allow_downgrade", False), field="allow_downgrade", where=prefix, error=ManifestError)
    manifest["downgrade"] = _direction(manifest, prefix)
    artifact = _validate_artifact(data.get("artifact"), "artifact", prefix, ARTIFACT_KNOWN)
    artifact.setdefault("name", _default_name(artifact.get("url"), artifact.get("path")) or f"{manifest['service']}-{manifest['target_version']}")
    if artifact.get("delta") is not None:
        artifact["delta"] = _validate_delta(artifact["delta"], prefix)
    manifest["artifact"] = artifact
    if require_sizes and (artifact.get("size") is None or (artifact.get("delta") is not None and artifact["delta"].get("size") is None)):
        raise ManifestError(f"patch {manifest['patch_id']}: pre-staging needs artifact.size (and artifact.delta.size) "
                            "in the patch manifest")
    return manifest


def redacted(manifest: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The validated manifest with the userinfo of artifact.url and artifact.delta.url replaced by ``***`` (and
    ``url_redacted: true`` where it was): what the plan result, -v output, events and the registry may carry."""
    result = dict(manifest)
    artifact = dict(result["artifact"])
    if artifact.get("delta"):
        artifact["delta"] = dict(artifact["delta"])
    for holder in (artifact, artifact.get("delta")):
        if holder and holder.get("url"):
            masked = redact_url(holder["url"])
            holder["url_redacted"] = masked != holder["url"]
            holder["url"] = masked
    result["artifact"] = artifact
    return result


def artifact_urls(manifest: t.Mapping[str, t.Any]) -> dict[str, str | None]:
    """The raw (credential-bearing) URLs of a validated manifest, for the apply step's no_log options only."""
    artifact = manifest["artifact"]
    delta = artifact.get("delta") or {}
    return {"url": artifact.get("url"), "delta_url": delta.get("url")}


def run_id_for(patch_id: str) -> str:
    """The controller run id for a patch: running the same patch again resumes the same run."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", patch_id)


# Options of fleetpatch.rollout.prestage a play passes the same to every host (role variable -> module argument).
PRESTAGE_SHARED_OPTIONS = (
    "state", "allowed_signers", "signer_identity", "require_signature", "url_headers", "timeout", "retries", "backoff",
    "backoff_max", "min_throughput", "max_time", "keep", "origin_fallback", "throughput_window",
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
        # the controller-side path of a delta is of no use on a host, nor is the plan's note that a URL was masked
        "delta": {key: value for key, value in artifact["delta"].items() if key not in ("path", "url_redacted")}
        if artifact.get("delta") else None,
    }
    unknown = sorted(set(options or {}) - set(PRESTAGE_SHARED_OPTIONS))
    if unknown:
        raise ManifestError(f"unknown prestage option(s) {', '.join(unknown)}")
    args.update(options or {})
    return {key: value for key, value in args.items() if value is not None and value != ""}
