# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: read what a host reports about its patch level. Not a public API.

Host side and read only: the host manifests ``<root>/state/<service>.manifest.json`` that patch_apply writes
(docs/architecture.md, host layout), the ``apps/<service>/current`` link they must agree with and, optionally,
package versions. Kept free of the release code so the module that ships it stays small and starts fast.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = ["PatchFactsError", "package_versions", "read_patch_facts", "read_service"]

FACTS_SCHEMA = 1
MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]


class PatchFactsError(FleetpatchError):
    """The request itself is wrong (a bad service name); str() is the message."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _current_version(root: str, service: str) -> tuple[str | None, str | None]:
    """(version the current link points at, problem)."""
    link = os.path.join(root, "apps", service, "current")
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{link} is not a symlink ({exc.strerror})"
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    if os.path.dirname(resolved) != os.path.normpath(os.path.join(root, "apps", service, "releases")):
        return None, f"{link} points to {target}, outside the releases directory"
    return os.path.basename(resolved), None


def read_service(root: str, service: str) -> dict[str, t.Any]:
    """Facts of one service: state ok, missing, unreadable, corrupt or inconsistent, with a reason unless ok."""
    path = os.path.join(root, "state", service + MANIFEST_SUFFIX)
    facts: dict[str, t.Any] = {"state": "ok", "reason": None, "manifest": path}
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return dict(facts, state="missing", reason=f"no host manifest at {path}")
    except OSError as exc:
        return dict(facts, state="unreadable", reason=f"cannot read {path}: {exc.strerror or exc}")
    if len(raw) > MAX_MANIFEST_BYTES:
        return dict(facts, state="corrupt", reason=f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return dict(facts, state="corrupt", reason=f"{path} is not valid JSON: {exc}")
    if not isinstance(manifest, dict):
        return dict(facts, state="corrupt", reason=f"{path} is not a JSON object")
    version = manifest.get("version")
    if not isinstance(version, str) or not _NAME.match(version):
        return dict(facts, state="corrupt", reason=f"{path} records no valid version ({version!r})")
    if manifest.get("service") not in (None, service):
        return dict(facts, state="corrupt", reason=f"{path} describes service {manifest.get('service')!r}, not {service}")
    sha = manifest.get("artifact_sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        return dict(facts, state="corrupt", reason=f"{path} records an invalid artifact_sha256 ({str(sha)[:80]!r})")
    previous = manifest.get("previous")
    facts.update(
        version=version,
        artifact_sha256=sha,
        release=manifest.get("release"),
        patch_id=manifest.get("patch_id"),
        installed_at=manifest.get("installed_at"),
        previous_version=previous.get("version") if isinstance(previous, dict) else None,
    )
    current, problem = _current_version(root, service)
    facts["current"] = current
    if problem:
        facts.update(state="inconsistent", reason=problem)
    elif current is None:
        facts.update(state="inconsistent", reason=f"the manifest records {version} but there is no current release link")
    elif current != version:
        facts.update(state="inconsistent", reason=f"the current release is {current}, the manifest records {version}"
                                                  " (an apply interrupted between switch and manifest?)")
    return facts


def list_services(root: str) -> list[str]:
    try:
        names = os.listdir(os.path.join(root, "state"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name[: -len(MANIFEST_SUFFIX)] for name in names
                  if name.endswith(MANIFEST_SUFFIX) and _NAME.match(name[: -len(MANIFEST_SUFFIX)]))


def package_versions(packages: t.Sequence[str], *, manager: str, run: Runner, which: t.Callable[[str], str | None]) -> dict[str, t.Any]:
    """Installed version of each package (None when not installed), with one package manager call."""
    if not packages:
        return {}
    if manager == "auto":
        manager = "dpkg" if which("dpkg-query") else "rpm" if which("rpm") else ""
    found: dict[str, t.Any] = {name: None for name in packages}
    if manager == "dpkg":
        rc, out, _err = run([which("dpkg-query") or "dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n", *packages])
        for line in out.splitlines():
            name, _tab, rest = line.partition("\t")
            version, _tab, status = rest.partition("\t")
            if name in found and version and status.startswith("i"):
                found[name] = version
    elif manager == "rpm":
        rc, out, _err = run([which("rpm") or "rpm", "-q", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n", *packages])
        for line in out.splitlines():
            name, _tab, version = line.partition("\t")
            if name in found and version:
                found[name] = version
    else:
        raise PatchFactsError("no package manager found (dpkg-query or rpm) to read package versions")
    del rc  # a package that is not installed makes the tool exit non-zero; its entry stays None
    return found


def read_patch_facts(root: str, *, services: t.Sequence[str] = (), packages: t.Sequence[str] = (), manager: str = "auto",
                     run: Runner | None = None, which: t.Callable[[str], str | None] | None = None) -> dict[str, t.Any]:
    """Everything the drift report needs from one host, in one pass over a few small files."""
    for name in services:
        if not _NAME.match(name):
            raise PatchFactsError(f"service {name!r} is not valid: use letters, digits, '.', '_', '+' and '-'")
    root = os.path.normpath(root)
    names = list(services) or list_services(root)
    facts: dict[str, t.Any] = {
        "schema": FACTS_SCHEMA,
        "root": root,
        "root_exists": os.path.isdir(root),
        "collected_at": utc_now(),
        "services": {name: read_service(root, name) for name in names},
        "packages": {},
    }
    if packages:
        if run is None or which is None:
            raise PatchFactsError("reading package versions needs a command runner")
        facts["packages"] = package_versions(packages, manager=manager, run=run, which=which)
    return facts
