# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the host layout, its names and state, and the side effects of a host step. Not a public API.

Kept apart from _release (unpack, switch, apply) so that a step which only reads what is on the host, such as a
prestage re-run that finds its artifact cached, compiles this small module and not the whole apply logic:
every module execution recompiles what it imports.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import shutil
import subprocess
import time
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import read_json
from ansible_collections.fleetpatch.rollout.plugins.module_utils._record import Record

__all__ = [
    "HostLayout",
    "HostOps",
    "RELEASE_METADATA",
    "ReleaseError",
    "SHA256_PATTERN",
    "StageError",
    "URL_SCHEMES",
    "cache_lock",
    "check_name",
    "check_sha256",
    "current_version",
    "ensure_free_space",
    "existing_parent",
    "http_error",
    "read_host_state",
    "read_release_metadata",
    "remove_path",
    "url_errors",
    "utc_now",
]

RELEASE_METADATA = ".fleetpatch-release.json"
FREE_SPACE_MARGIN = 16 * 1024 * 1024
URL_SCHEMES = ("http://", "https://", "file://")
PART_SUFFIX = ".part"
LOCK_TIMEOUT = 120.0
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# versions and service names become one path component each
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


# The HTTP stack and tarfile are imported where they are used: a host whose artifact and release are already in
# place (a re-run, a resumed rollout) never loads them, and every module execution pays for what it imports.
def url_errors() -> tuple[type[BaseException], ...]:
    """Transport failures from urllib / http.client; the module maps ansible's own URL errors onto OSError."""
    import http.client

    return (OSError, http.client.HTTPException, ValueError)


def http_error() -> type[BaseException]:
    """The exception urllib and ansible's open_url raise for an HTTP error status (it carries code and reason)."""
    import urllib.error

    return urllib.error.HTTPError


class ReleaseError(FleetpatchError):
    """A host step that cannot or must not go ahead; str() is the message for the operator."""


class StageError(ReleaseError):
    """The artifact cannot be staged on this host; str() is the message for the operator."""


# --------------------------------------------------------------------------------------------- layout


class HostLayout(Record):
    """Paths under ``fleetpatch_host_root`` for one service (see docs/architecture.md)."""

    __slots__ = ("root", "service")
    root: str
    service: str

    def __init__(self, root: str, service: str) -> None:
        if not root:
            raise ReleaseError("host root must not be empty")
        check_name(service, what="service")
        # "/srv/fp/" and "/srv/fp" must give the same paths in manifests and results
        self._set(root=os.path.normpath(root), service=service)

    @property
    def apps_dir(self) -> str:
        return f"{self.root}/apps/{self.service}"

    @property
    def releases_dir(self) -> str:
        return f"{self.root}/apps/{self.service}/releases"

    @property
    def current_link(self) -> str:
        return f"{self.root}/apps/{self.service}/current"

    @property
    def cache_dir(self) -> str:
        return f"{self.root}/cache/sha256"

    def cache_path(self, sha256: str) -> str:
        return f"{self.cache_dir}/{sha256}"

    def part_path(self, sha256: str) -> str:
        """Where a download of sha256 grows: hidden, next to its final path, never mistaken for it."""
        return f"{self.cache_dir}/.{sha256}{PART_SUFFIX}"

    def release_path(self, version: str) -> str:
        return f"{self.releases_dir}/{version}"

    @property
    def state_dir(self) -> str:
        return f"{self.root}/state"

    @property
    def manifest_path(self) -> str:
        return f"{self.root}/state/{self.service}.manifest.json"

    @property
    def audit_path(self) -> str:
        return f"{self.root}/state/audit.jsonl"


def check_name(value: t.Any, *, what: str) -> str:
    """Return value if it is safe as a single path component (service names, versions)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ReleaseError(
            f"{what} {value!r} is not valid: use letters, digits, '.', '_', '+' and '-', starting with a letter or digit"
        )
    return value


def check_sha256(value: t.Any) -> str:
    """Return the lower-case hex digest, or raise when value is not 64 hex digits."""
    digest = value.lower() if isinstance(value, str) else ""
    if not SHA256_PATTERN.match(digest):
        raise ReleaseError(f"sha256 {value!r} is not a 64 hex digit digest")
    return digest


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_free_space(directory: str, needed: int, *, what: str) -> None:
    """Raise unless the filesystem holding directory has needed bytes plus a safety margin available."""
    info = os.statvfs(directory)
    available = info.f_bavail * info.f_frsize
    required = needed + FREE_SPACE_MARGIN
    if available < required:
        raise ReleaseError(
            f"not enough free space in {directory} to {what}: need {required} bytes "
            f"({needed} + {FREE_SPACE_MARGIN} margin), {available} available"
        )


def existing_parent(path: str) -> str:
    """path, or its nearest existing ancestor (free space is a property of the filesystem)."""
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def read_release_metadata(release_dir: str) -> dict[str, t.Any] | None:
    """The release's .fleetpatch-release.json, or None when absent or unreadable (no tree hashing)."""
    try:
        data = read_json(os.path.join(release_dir, RELEASE_METADATA))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def current_version(layout: HostLayout) -> str | None:
    """Version the current link points at, None when there is no link."""
    current = layout.current_link
    if os.path.islink(current):
        target = os.readlink(current)
        resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
        if os.path.dirname(resolved) != os.path.normpath(layout.releases_dir):
            raise ReleaseError(f"{current} points to {target}, outside {layout.releases_dir}")
        return os.path.basename(resolved)
    if os.path.lexists(current):
        raise ReleaseError(f"{current} exists and is not a symlink")
    return None


def read_host_state(layout: HostLayout) -> dict[str, t.Any]:
    """{"current_version", "current_release", "manifest"} as found on disk (no hashing)."""
    version = current_version(layout)
    release = layout.release_path(version) if version is not None else None
    try:
        manifest = read_json(layout.manifest_path)
    except ValueError as exc:
        raise ReleaseError(f"host manifest {layout.manifest_path} is not valid JSON: {exc}") from exc
    if manifest is not None and not isinstance(manifest, dict):
        raise ReleaseError(f"host manifest {layout.manifest_path} is not a JSON object")
    return {"current_version": version, "current_release": release, "manifest": manifest}


# The cache's lock lives here, not in _prestage: patch_apply takes it around a download, and must not compile the
# whole pre-staging module for that.
@contextlib.contextmanager
def cache_lock(layout: HostLayout, ops: HostOps, *, timeout: float = LOCK_TIMEOUT) -> t.Iterator[None]:
    """One staging at a time per host (an flock on cache/.prestage.lock)."""
    os.makedirs(os.path.dirname(layout.cache_dir), exist_ok=True)
    fd = os.open(f"{os.path.dirname(layout.cache_dir)}/.prestage.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = ops.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if ops.monotonic() > deadline:
                    raise StageError(f"another prestage holds {layout.root}/cache/.prestage.lock for more than {timeout:g}s") from None
                ops.sleep(0.2)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------- side effects


class HostOps:
    """The side effects an apply needs besides the filesystem: commands, URLs, clock.

    The module passes an AnsibleModule-backed subclass; tests use this stdlib one or a fake.
    """

    def __init__(self, *, check_mode: bool = False) -> None:
        self.check_mode = check_mode
        self.warnings: list[str] = []

    def run(self, argv: t.Sequence[str]) -> tuple[int, str, str]:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        except OSError as exc:
            return 127, "", f"cannot run {argv[0]}: {exc}"
        return proc.returncode, proc.stdout, proc.stderr

    def open_url(self, url: str, *, headers: t.Mapping[str, str], timeout: float) -> t.Any:
        # plain urllib for tests and standalone callers; the module goes through ansible's open_url
        import urllib.request

        opener = urllib.request.build_opener()
        return opener.open(urllib.request.Request(url, headers=dict(headers)), timeout=timeout)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> str:
        return utc_now()

    def warn(self, message: str) -> None:
        self.warnings.append(message)
