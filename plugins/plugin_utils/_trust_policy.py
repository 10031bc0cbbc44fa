# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the controller's half of artifact trust, rollout_policy.artifacts. Not a public API.

The controller validates ``rollout_policy.artifacts`` (the trusted keys, whether a host's environment requires a
signature, the transfer limits) before any host is touched, and refuses a plan that would install an unsigned
artifact on a host that requires a signature. The host's half (allowed signers, ``ssh-keygen -Y verify``) is
``module_utils/_trust.py``: kept apart so that a host, which compiles every module_utils file it imports on every
execution, never compiles the policy code.
"""

from __future__ import annotations

import math
import os
import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import (
    ALLOWED_SIGNERS_LIMIT,
    PRINCIPAL_LIMIT,
    PRINCIPAL_RE,
    SIGNATURE_NAMESPACE,
    TrustError,
    parse_allowed_signers,
    principal_matches,
    shown,
    signers_summary,
)

__all__ = [
    "DEFAULTS",
    "KEYS",
    "check_plan_signatures",
    "signature_required",
    "validate_artifacts_policy",
]

ENVIRONMENT_LIMIT = 128
DEFAULT_PRODUCTION = ("prod", "production")
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
_ENVIRONMENT_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


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
        if not isinstance(identity, str) or not PRINCIPAL_RE.fullmatch(identity):
            raise TrustError(f"{source}.signer_identity must be one principal (at most {PRINCIPAL_LIMIT} characters, no "
                             f"whitespace), got {shown(identity)}")
        if entries and not any(principal_matches(pattern, identity) for entry in entries for pattern in entry["principals"]):
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
