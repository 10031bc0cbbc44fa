# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: who may sign what is installed. Not a public API.

Two halves. The controller validates ``rollout_policy.artifacts`` (the trusted keys, whether a host's environment
requires a signature, the transfer limits) before any host is touched, and refuses a plan that would install an
unsigned artifact on a host that requires a signature. The host (``patch_apply``) verifies the detached SSH
signature of the exact file it is about to unpack against those keys, with one ``ssh-keygen -Y verify`` call; the
key that made the signature is read from the signature itself, so a refusal names the principal (or the key
fingerprint) it saw.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import math
import os
import re
import shutil
import struct
import tempfile
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils import _tools

__all__ = [
    "DEFAULTS",
    "SIGNATURE_BEGIN",
    "SIGNATURE_NAMESPACE",
    "TrustError",
    "check_armored",
    "check_plan_signatures",
    "fingerprint",
    "parse_allowed_signers",
    "signature_key",
    "signature_required",
    "validate_artifacts_policy",
    "verify_artifact_signature",
]

SIGNATURE_BEGIN = "-----BEGIN SSH SIGNATURE-----"
SIGNATURE_END = "-----END SSH SIGNATURE-----"
SIGNATURE_NAMESPACE = "fleetpatch"
SIGNATURE_LIMIT = 16 * 1024
ALLOWED_SIGNERS_LIMIT = 256 * 1024
ENVIRONMENT_LIMIT = 128
PRINCIPAL_LIMIT = 256
DEFAULT_PRODUCTION = ("prod", "production")
REQUIRE_CHOICES = (True, False, "auto")
KEY_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
DEFAULTS: dict[str, t.Any] = {
    "allowed_signers": "",
    "allowed_signers_file": None,
    "signer_identity": None,
    "require_signature": "auto",
    "production_environments": list(DEFAULT_PRODUCTION),
    # 2 GiB: the cap of a transfer whose manifest declares no size
    "max_artifact_bytes": 2 * 1024 ** 3,
    "max_time": 900,
    "min_throughput": 1024,
    # seconds over which min_throughput is averaged
    "throughput_window": 30,
    "origin_fallback": True,
}
KEYS = tuple(DEFAULTS)
_PRINCIPAL_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")
_ENVIRONMENT_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class TrustError(FleetpatchError, ValueError):
    """Trust configuration or a signature that must not be accepted; str() is the message for the operator."""


def shown(value: t.Any, limit: int = 60) -> str:
    """repr of a value, truncated: an error names what it refused without copying a megabyte into the log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ------------------------------------------------------------------------------------ allowed signers


def _read_string(data: bytes, offset: int, what: str) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise TrustError(f"{what} is truncated")
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise TrustError(f"{what} is truncated")
    return data[offset + 4:end], end


def _key_type(blob: bytes, what: str) -> str:
    name, _end = _read_string(blob, 0, what)
    return name.decode("ascii", "replace")


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (what ssh-keygen -l prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def parse_allowed_signers(text: t.Any, *, source: str = "allowed_signers") -> list[dict[str, t.Any]]:
    """Entries of an ssh allowed_signers text: [{principals, options, keytype, blob, line}]; raise naming the line."""
    if not isinstance(text, str):
        raise TrustError(f"{source} must be the text of an ssh allowed_signers file, got {type(text).__name__}")
    if len(text) > ALLOWED_SIGNERS_LIMIT:
        raise TrustError(f"{source} is {len(text)} characters, more than the limit of {ALLOWED_SIGNERS_LIMIT}")
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise TrustError(f"{source} line {number}: contains a NUL character")
        tokens = line.split()
        index = next((i for i, token in enumerate(tokens) if i >= 1 and (token in KEY_TYPES or token.endswith("-cert-v01@openssh.com"))),
                     None)
        if index is None or index + 1 >= len(tokens):
            raise TrustError(f"{source} line {number}: expected 'principals [options] key-type base64-key', got {shown(line)}")
        keytype = tokens[index]
        try:
            blob = base64.b64decode(tokens[index + 1], validate=True)
            inner = _key_type(blob, "key")
        except (binascii.Error, ValueError) as exc:
            raise TrustError(f"{source} line {number}: the {keytype} key is not valid base64 key data ({exc})") from None
        if inner != keytype:
            raise TrustError(f"{source} line {number}: the key data is a {inner} key, the line says {keytype}")
        principals = [item for item in tokens[0].split(",") if item]
        if not principals or not all(_PRINCIPAL_RE.fullmatch(item) for item in principals):
            raise TrustError(f"{source} line {number}: principals {shown(tokens[0])} are not valid")
        options = ",".join(tokens[1:index]).lower()
        entries.append({"principals": principals, "options": options, "keytype": keytype, "blob": blob, "line": number})
    return entries


def signers_summary(entries: t.Sequence[t.Mapping[str, t.Any]], limit: int = 5) -> str:
    names = [principal for entry in entries for principal in entry["principals"]]
    text = ", ".join(names[:limit])
    return text if len(names) <= limit else f"{text} and {len(names) - limit} more"


# ------------------------------------------------------------------------------------ signatures


def check_armored(signature: t.Any, *, what: str = "signature") -> str:
    """The armored text of a detached ssh-keygen -Y sign signature, normalised; raise when it is not one."""
    if not isinstance(signature, str) or SIGNATURE_BEGIN not in signature or SIGNATURE_END not in signature:
        raise TrustError(f"{what} is not an armored SSH signature (it must contain {SIGNATURE_BEGIN} ... {SIGNATURE_END}), "
                         f"got {shown(signature, 40)}")
    if len(signature) > SIGNATURE_LIMIT:
        raise TrustError(f"{what} is {len(signature)} characters, more than the limit of {SIGNATURE_LIMIT}")
    start = signature.index(SIGNATURE_BEGIN)
    end = signature.index(SIGNATURE_END, start) + len(SIGNATURE_END)
    return signature[start:end] + "\n"


def signature_key(signature: str, *, what: str = "signature") -> tuple[str, bytes]:
    """(key type, public key blob) of the key that made an SSHSIG signature, read from the signature itself."""
    text = check_armored(signature, what=what)
    body = "".join(text.strip().splitlines()[1:-1])
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TrustError(f"{what} is not valid base64 ({exc})") from None
    if not data.startswith(b"SSHSIG"):
        raise TrustError(f"{what} is not an SSHSIG signature (wrong magic)")
    blob, _end = _read_string(data, 10, what)
    return _key_type(blob, what), blob


def _matches(pattern: str, identity: str) -> bool:
    # allowed_signers principals are OpenSSH patterns (* and ?), matched case-sensitively
    return fnmatch.fnmatchcase(identity, pattern)


def verify_artifact_signature(
    path: str, *, signature: str, allowed_signers: str, identity: str | None = None, what: str = "artifact",
    namespace: str = SIGNATURE_NAMESPACE, runner: t.Callable[..., tuple[int, str, str]] | None = None,
    scratch_dir: str | None = None,
) -> dict[str, str]:
    """Verify the detached signature of path against allowed_signers: {principal, key}, or raise TrustError.

    The signing key is read from the signature, matched against the allowed signers here, and one ssh-keygen -Y verify
    proves the signature over the file's bytes. A certificate signature (cert-authority lines) is left to ssh-keygen's
    find-principals.
    """
    runner = runner or _tools.run_tool
    keytype, blob = signature_key(signature, what=f"signature of {what}")
    key = f"{keytype} key {fingerprint(blob)}"
    entries = parse_allowed_signers(allowed_signers)
    if not entries:
        raise TrustError(f"allowed_signers holds no key: the signature of {what} cannot be verified")
    principals = [principal for entry in entries if entry["blob"] == blob and "cert-authority" not in entry["options"]
                  for principal in entry["principals"]]
    certificates = keytype.endswith("-cert-v01@openssh.com") and any("cert-authority" in entry["options"] for entry in entries)
    if not principals and not certificates:
        raise TrustError(f"signature of {what} was made by {key}, which is not in allowed_signers "
                         f"(trusted: {signers_summary(entries)})")
    if identity:
        if principals and not any(_matches(pattern, identity) for pattern in principals):
            raise TrustError(f"signature of {what} is by {', '.join(principals)} ({key}), not by the required "
                             f"signer_identity {identity!r}")
        principal = identity
    else:
        principal = principals[0] if principals else ""
    ssh_keygen = _tools.find_tool("ssh-keygen")
    if not ssh_keygen:
        raise TrustError(f"verifying the signature of {what} needs ssh-keygen (OpenSSH client), which is not installed "
                         "on this host")
    scratch = tempfile.mkdtemp(prefix=".fleetpatch-sig.tmp-", dir=scratch_dir)
    try:
        sig_path = os.path.join(scratch, "artifact.sig")
        signers_path = os.path.join(scratch, "allowed_signers")
        for file_path, content in ((sig_path, check_armored(signature)), (signers_path, allowed_signers.strip() + "\n")):
            with open(file_path, "w", encoding="utf-8") as handle:
                handle.write(content)
        if not principal:
            rc, out, err = runner([ssh_keygen, "-Y", "find-principals", "-s", sig_path, "-f", signers_path])
            found = [line.strip() for line in out.splitlines() if line.strip()]
            if rc != 0 or not found:
                raise TrustError(f"signature of {what} was made by {key}, which no certificate authority in allowed_signers "
                                 f"vouches for ({(err or out).strip()[-300:] or 'no principal matches'})")
            principal = found[0]
        rc, out, err = runner([ssh_keygen, "-Y", "verify", "-f", signers_path, "-I", principal, "-n", namespace,
                               "-s", sig_path], stdin_path=path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if rc != 0:
        raise TrustError(f"signature of {what} by {principal} ({key}) does not verify: "
                         f"{(err or out).strip()[-300:] or f'ssh-keygen exited {rc}'}")
    return {"principal": principal, "key": key}


# ------------------------------------------------------------------------------------ policy


def _bool(value: t.Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise TrustError(f"{where} must be true or false, got {shown(value)}")


def _number(value: t.Any, where: str, *, minimum: float, integer: bool) -> int | float:
    number: int | float
    if isinstance(value, bool):
        raise TrustError(f"{where} must be a number, got {shown(value)}")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d{1,15}(\.\d{1,6})?\s*", value):
        number = float(value) if "." in value else int(value)
    else:
        raise TrustError(f"{where} must be a number, got {shown(value)}")
    if not math.isfinite(number):
        raise TrustError(f"{where} must be a finite number, got {shown(value)}")
    if integer and not float(number).is_integer():
        raise TrustError(f"{where} must be a whole number, got {shown(value)}")
    if number < minimum:
        raise TrustError(f"{where} must be at least {minimum:g}, got {shown(value)}")
    return int(number) if integer or float(number).is_integer() else float(number)


def _read_signers_file(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read(ALLOWED_SIGNERS_LIMIT + 1)
    if len(data) > ALLOWED_SIGNERS_LIMIT:
        raise TrustError(f"is larger than {ALLOWED_SIGNERS_LIMIT} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrustError(f"is not UTF-8 text ({exc})") from None


def validate_artifacts_policy(
    data: t.Any, *, source: str = "policy.artifacts", read_file: t.Callable[[str], str] | None = None
) -> dict[str, t.Any]:
    """Normalise rollout_policy.artifacts (every key filled, see DEFAULTS) or raise TrustError naming the field.

    allowed_signers_file is read here (on the controller), so hosts receive the trusted keys' text, never a path
    into the controller's filesystem.
    """
    if data is None:
        data = {}
    if not isinstance(data, t.Mapping):
        raise TrustError(f"{source} must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in KEYS)
    if unknown:
        raise TrustError(f"{source}: unknown key(s) {', '.join(shown(key, 40) for key in unknown)}; allowed: {', '.join(KEYS)}")
    result = dict(DEFAULTS, production_environments=list(DEFAULT_PRODUCTION))
    text, path = data.get("allowed_signers"), data.get("allowed_signers_file")
    if text not in (None, "") and path not in (None, ""):
        raise TrustError(f"{source}: give allowed_signers or allowed_signers_file, not both")
    if path not in (None, ""):
        if not isinstance(path, str) or "\x00" in path:
            raise TrustError(f"{source}.allowed_signers_file must be a path, got {shown(path)}")
        path = os.path.abspath(os.path.expanduser(path))
        try:
            text = (read_file or _read_signers_file)(path)
        except FileNotFoundError:
            raise TrustError(f"{source}.allowed_signers_file {shown(path, 200)} does not exist") from None
        except (OSError, TrustError) as exc:
            raise TrustError(f"{source}.allowed_signers_file {shown(path, 200)} {exc}") from None
        result["allowed_signers_file"] = path
    if text not in (None, ""):
        where = f"{source}.allowed_signers_file {path}" if result["allowed_signers_file"] else f"{source}.allowed_signers"
        entries = parse_allowed_signers(text, source=where)
        if not entries:
            raise TrustError(f"{where} holds no key (only blank or comment lines)")
        # hosts get the keys only
        result["allowed_signers"] = "".join(f"{line.strip()}\n" for line in t.cast(str, text).splitlines()
                                            if line.strip() and not line.strip().startswith("#"))
    else:
        entries = []
    identity = data.get("signer_identity")
    if identity not in (None, ""):
        if not isinstance(identity, str) or not _PRINCIPAL_RE.fullmatch(identity):
            raise TrustError(f"{source}.signer_identity must be one principal (at most {PRINCIPAL_LIMIT} characters, no "
                             f"whitespace), got {shown(identity)}")
        if entries and not any(_matches(pattern, identity) for entry in entries for pattern in entry["principals"]):
            raise TrustError(f"{source}.signer_identity {identity!r} is not a principal of the allowed signers "
                             f"({signers_summary(entries)})")
        result["signer_identity"] = identity
    require = data.get("require_signature", "auto")
    if isinstance(require, str) and require.strip().lower() == "auto":
        result["require_signature"] = "auto"
    else:
        try:
            result["require_signature"] = _bool(require, f"{source}.require_signature")
        except TrustError:
            raise TrustError(f"{source}.require_signature must be true, false or auto, got {shown(require)}") from None
    environments = data.get("production_environments")
    if environments is not None:
        if isinstance(environments, str):
            environments = [item.strip() for item in environments.split(",") if item.strip()]
        if not isinstance(environments, (list, tuple)):
            raise TrustError(f"{source}.production_environments must be a list of environment names, got {shown(environments)}")
        for index, name in enumerate(environments):
            if not isinstance(name, str) or not _ENVIRONMENT_RE.fullmatch(name):
                raise TrustError(f"{source}.production_environments[{index}] must be a name of 1 to {ENVIRONMENT_LIMIT} "
                                 f"printable characters, got {shown(name)}")
        result["production_environments"] = list(dict.fromkeys(environments))
    limits = (("max_artifact_bytes", 1, True), ("max_time", 1, False), ("min_throughput", 0, False), ("throughput_window", 1, False))
    for key, minimum, integer in limits:
        if data.get(key) is not None:
            result[key] = _number(data[key], f"{source}.{key}", minimum=minimum, integer=integer)
    if data.get("origin_fallback") is not None:
        result["origin_fallback"] = _bool(data["origin_fallback"], f"{source}.origin_fallback")
    return result


def signature_required(artifacts: t.Mapping[str, t.Any], environment: t.Any) -> bool:
    """Whether a host of this fleet_environment installs only signed artifacts."""
    require = artifacts.get("require_signature", "auto")
    if require == "auto":
        return environment in artifacts.get("production_environments", DEFAULT_PRODUCTION)
    return bool(require)


def _hosts_text(hosts: t.Sequence[str], limit: int = 5) -> str:
    text = ", ".join(hosts[:limit])
    return text if len(hosts) <= limit else f"{text} and {len(hosts) - limit} more"


def check_plan_signatures(
    artifacts: t.Mapping[str, t.Any], manifest: t.Mapping[str, t.Any], hosts: t.Mapping[str, t.Mapping[str, t.Any]],
    *, source: str = "patch manifest",
) -> list[str]:
    """Refuse (TrustError) a plan that would install an unsigned artifact where a signature is required; return the
    hosts that require one. hosts: {host: {fleet_environment: ...}} (the plan's host attributes)."""
    required: dict[str, list[str]] = {}
    for host in sorted(hosts):
        environment = hosts[host].get("fleet_environment")
        if signature_required(artifacts, environment):
            required.setdefault(str(environment), []).append(host)
    if not required:
        return []
    why = "; ".join(f"environment {env!r} requires signed artifacts (hosts {_hosts_text(names)})" for env, names in sorted(required.items()))
    artifact = manifest.get("artifact") or {}
    if not artifact.get("signature"):
        raise TrustError(f"{source}: artifact.signature is missing and {why}; sign the artifact (ssh-keygen -Y sign -n "
                         f"{SIGNATURE_NAMESPACE}) or set policy.artifacts.require_signature")
    delta = artifact.get("delta")
    if isinstance(delta, t.Mapping) and not delta.get("signature"):
        raise TrustError(f"{source}: artifact.delta.signature is missing and {why}")
    if not artifacts.get("allowed_signers"):
        raise TrustError(f"policy.artifacts has no allowed_signers (or allowed_signers_file) to verify signatures against, "
                         f"and {why}")
    return [host for names in required.values() for host in names]
