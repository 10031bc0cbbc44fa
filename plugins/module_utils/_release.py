# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: host-side release logic (unpack via _archive, atomic switch, fetch, apply, host manifest). Not a public API."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._archive import (
    ArtifactPlan,
    DeltaNotApplicable,
    extract_into,
    inspect_release,
    inspect_tar,
    verify_release,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import (
    append_jsonl,
    fsync_directory,
    sha256_file,
    write_json_atomic,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import (
    RELEASE_METADATA,
    URL_SCHEMES,
    HostLayout,
    HostOps,
    ReleaseError,
    cache_lock,
    check_name,
    check_sha256,
    current_version,
    ensure_free_space,
    existing_parent,
    http_error,
    read_host_state,
    read_release_metadata,
    remove_path,
    url_errors,
    utc_now,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._record import Record
from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import (
    TrustError,
    check_armored,
    fingerprint,
    parse_allowed_signers,
    verify_artifact_signature,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import version_key

if t.TYPE_CHECKING:
    import tarfile

__all__ = [
    "ApplyResult",
    "DeltaNotApplicable",
    "HostLayout",
    "HostOps",
    "RELEASE_METADATA",
    "ReleaseError",
    "build_request",
    "check_health",
    "extract_release",
    "fetch_artifact",
    "inspect_artifact",
    "os",
    "parse_command",
    "plan_prune",
    "read_host_state",
    "read_release_metadata",
    "record_install",
    "run_apply",
    "switch_current",
    "unpack_release",
    "verify_release",
]

RELEASE_SCHEMA = 1
MANIFEST_SCHEMA = 1
HEALTH_BODY_LIMIT = 64 * 1024

_TMP_MARK = ".tmp-"


# ------------------------------------------------------------------------------------------- artifacts


def verify_artifact(path: str, *, sha256: str, size: int | None = None) -> None:
    """Raise unless path is a regular file with the given digest (and size, when given)."""
    if not os.path.isfile(path):
        raise ReleaseError(f"artifact {path} does not exist")
    if size is not None:
        actual_size = os.path.getsize(path)
        if actual_size != size:
            raise ReleaseError(f"artifact {path} is {actual_size} bytes, expected {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise ReleaseError(f"artifact {path} has sha256 {actual}, expected {sha256}")


def _inspect_bundle(artifact_path: str) -> ArtifactPlan:
    # imported here: only a host that installs a bundle compiles the bundle code
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import inspect_bundle

    return inspect_bundle(artifact_path)


def inspect_artifact(artifact_path: str) -> ArtifactPlan:
    """Read the tar headers of an artifact (release tarball or bundle) and validate every member (read only)."""
    return inspect_tar(artifact_path, bundle=_inspect_bundle)


def remove_stale_tmp(directory: str) -> list[str]:
    """Remove ``.<name>.tmp-*`` leftovers of killed runs (one apply runs per host at a time)."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(".") and _TMP_MARK in name:
            remove_path(os.path.join(directory, name))
            removed.append(name)
    return removed


def extract_release(
    layout: HostLayout, *, version: str, artifact_path: str, sha256: str, plan: ArtifactPlan | None = None,
    record: t.Mapping[str, t.Any] | None = None,
) -> str:
    """Unpack an artifact whose digest the caller has verified into releases/<version>, atomically.

    Replaces an existing releases/<version> that is not the current release (it was found broken or built
    from another artifact by the caller).
    """
    import tarfile

    version = check_name(version, what="version")
    sha256 = check_sha256(sha256)
    final = layout.release_path(version)
    os.makedirs(layout.releases_dir, exist_ok=True)
    remove_stale_tmp(layout.releases_dir)
    if plan is None:
        plan = inspect_artifact(artifact_path)
    ensure_free_space(layout.releases_dir, plan.total_size, what=f"unpack {version}")
    if os.path.lexists(final) and current_version(layout) == version:
        raise ReleaseError(f"release {final} is the current release; refusing to replace it")
    tmp = tempfile.mkdtemp(prefix=f".{version}{_TMP_MARK}", dir=layout.releases_dir)
    aside = ""
    try:
        extra: dict[str, t.Any] = {}
        if plan.bundle is not None:
            # imported here: only a host that installs a bundle compiles the bundle code
            from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import apply_bundle

            # a delta records the full bundle's digest as the release's artifact_sha256 (same tree, same identity)
            files, links, extra = apply_bundle(plan.bundle, tmp, service=layout.service, version=version,
                                               sha256=sha256, releases_dir=layout.releases_dir)
        else:
            files, links = extract_into(tmp, artifact_path, plan)
        metadata = {
            "schema": RELEASE_SCHEMA,
            "version": version,
            "artifact_sha256": sha256,
            "files": files,
            "links": links,
        }
        metadata.update(extra)
        # what the caller verified about the artifact (its signature), kept with the release it made
        metadata.update(record or {})
        write_json_atomic(os.path.join(tmp, RELEASE_METADATA), metadata)
        os.chmod(tmp, 0o755)
        fsync_directory(tmp)
        if os.path.lexists(final):
            aside = os.path.join(layout.releases_dir, f".{version}{_TMP_MARK}replaced-{os.urandom(4).hex()}")
            os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except OSError:
            if aside:
                os.rename(aside, final)
                aside = ""
            raise
    except (OSError, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReleaseError(f"cannot unpack {artifact_path} into {final}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(layout.releases_dir)
    if aside:
        remove_path(aside)
    return final


def unpack_release(layout: HostLayout, *, version: str, artifact_path: str, sha256: str) -> str:
    """Verify the artifact, then return releases/<version>, unpacking it unless it already verifies."""
    version = check_name(version, what="version")
    sha256 = check_sha256(sha256)
    verify_artifact(artifact_path, sha256=sha256)
    final = layout.release_path(version)
    if os.path.lexists(final):
        metadata, problems = inspect_release(final)
        if not problems and metadata and metadata.get("artifact_sha256") == sha256:
            return final
    return extract_release(layout, version=version, artifact_path=artifact_path, sha256=sha256)


# -------------------------------------------------------------------------------------------- releases


def list_releases(layout: HostLayout) -> list[str]:
    """Versions unpacked on the host, oldest first (temporary directories excluded)."""
    try:
        names = os.listdir(layout.releases_dir)
    except FileNotFoundError:
        return []
    versions = [
        name for name in names
        if not name.startswith(".") and os.path.isdir(os.path.join(layout.releases_dir, name))
        and not os.path.islink(os.path.join(layout.releases_dir, name))
    ]
    return sorted(versions, key=version_key)


def plan_prune(versions: t.Iterable[str], *, keep: int, protect: t.Iterable[str | None]) -> list[str]:
    """Versions to delete so that at most keep remain (more if protected ones push past it), oldest first."""
    ordered = sorted(set(versions), key=version_key, reverse=True)
    kept = {version for version in protect if version in ordered}
    for version in ordered:
        if len(kept) >= keep:
            break
        kept.add(version)
    return [version for version in reversed(ordered) if version not in kept]


def remove_release(layout: HostLayout, version: str) -> None:
    """Delete releases/<version>: renamed out of the way first, so no half-deleted release keeps its name."""
    version = check_name(version, what="version")
    if current_version(layout) == version:
        raise ReleaseError(f"release {version} is the current release; refusing to remove it")
    path = layout.release_path(version)
    if not os.path.lexists(path):
        return
    doomed = os.path.join(layout.releases_dir, f".{version}{_TMP_MARK}prune-{os.urandom(4).hex()}")
    os.rename(path, doomed)
    remove_path(doomed)


# ---------------------------------------------------------------------------------------- switch, state


def switch_current(layout: HostLayout, version: str) -> None:
    """Point current at releases/<version> with rename(2) of a temporary relative symlink."""
    version = check_name(version, what="version")
    target = layout.release_path(version)
    if os.path.islink(target) or not os.path.isdir(target):
        raise ReleaseError(f"release {version} does not exist at {target}")
    current = layout.current_link
    if os.path.lexists(current) and not os.path.islink(current):
        raise ReleaseError(f"{current} exists and is not a symlink; refusing to replace it")
    apps_dir = layout.apps_dir
    for name in os.listdir(apps_dir):
        if name.startswith(f"current{_TMP_MARK}"):
            remove_path(os.path.join(apps_dir, name))
    tmp = os.path.join(apps_dir, f"current{_TMP_MARK}{os.urandom(6).hex()}")
    os.symlink(f"releases/{version}", tmp)
    try:
        os.replace(tmp, current)
    except OSError as exc:
        remove_path(tmp)
        raise ReleaseError(f"cannot switch {current} to {version}: {exc}") from exc
    fsync_directory(apps_dir)


def remove_current(layout: HostLayout) -> None:
    """Remove the current link (used to undo a first install whose restart failed)."""
    if os.path.islink(layout.current_link):
        os.unlink(layout.current_link)
        fsync_directory(layout.apps_dir)


def _release_ref(layout: HostLayout, ref: t.Mapping[str, t.Any] | None) -> dict[str, t.Any] | None:
    """{version, artifact_sha256, release} of a manifest entry; the path always comes from the layout."""
    if not ref or not ref.get("version"):
        return None
    version = check_name(ref["version"], what="recorded version")
    return {"version": version, "artifact_sha256": ref.get("artifact_sha256"), "release": layout.release_path(version)}


def record_install(
    layout: HostLayout,
    *,
    version: str,
    sha256: str | None,
    patch_id: str | None,
    previous: dict[str, t.Any] | None,
    action: str,
    now: str | None = None,
) -> dict[str, t.Any]:
    """Write the host manifest atomically and append one audit line; return the manifest."""
    version = check_name(version, what="version")
    now = now or utc_now()
    prev = _release_ref(layout, previous)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "service": layout.service,
        "version": version,
        "artifact_sha256": sha256,
        "release": layout.release_path(version),
        "patch_id": patch_id,
        "installed_at": now,
        "previous": prev,
    }
    write_json_atomic(layout.manifest_path, manifest)
    append_audit(layout, action=action, from_version=prev["version"] if prev else None, to_version=version,
                 sha256=sha256, patch_id=patch_id, now=now)
    return manifest


def append_audit(
    layout: HostLayout, *, action: str, from_version: str | None, to_version: str | None,
    sha256: str | None, patch_id: str | None, now: str | None = None,
) -> dict[str, t.Any]:
    record = {
        "ts": now or utc_now(),
        "service": layout.service,
        "action": action,
        "from_version": from_version,
        "to_version": to_version,
        "sha256": sha256,
        "patch_id": patch_id,
    }
    append_jsonl(layout.audit_path, record, durable=True)
    return record


def _remove_partials(directory: str, sha256: str) -> None:
    """Remove what a download of sha256 left behind: the downloader's .part file and the randomly named partial files
    of releases before the one downloader (``.<digest>.<random>.part``)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(f".{sha256}.") and name.endswith(".part"):
            remove_path(os.path.join(directory, name))


# the apply path's transfer limits (rollout_policy.artifacts): a byte cap when no size is declared, an overall
# deadline, and a minimum throughput averaged over a window
DEFAULT_MAX_ARTIFACT_BYTES = 2 * 1024 ** 3
DEFAULT_MAX_TIME = 900.0
DEFAULT_MIN_THROUGHPUT = 1024
DEFAULT_THROUGHPUT_WINDOW = 30.0


def fetch_artifact(
    ops: HostOps, *, url: str, dest: str, sha256: str, size: int | None = None,
    headers: t.Mapping[str, str] | None = None, timeout: float = 30, max_bytes: int | None = DEFAULT_MAX_ARTIFACT_BYTES,
    max_time: float | None = DEFAULT_MAX_TIME, min_throughput: float | None = DEFAULT_MIN_THROUGHPUT,
    throughput_window: float | None = DEFAULT_THROUGHPUT_WINDOW,
) -> int:
    """Download url into the content-addressed cache at dest through prestage's downloader; return its size.

    Bounded: at most the declared size (else max_bytes), within max_time seconds, never slower than min_throughput
    bytes/s over throughput_window seconds (0 turns a limit off). Only a file with the digest is renamed to dest; on
    any failure nothing of the download is left (the apply does not resume, a failed host is retried by a new run).
    No message names the URL with its userinfo or query values.
    """
    # the transfer code is compiled only on a host that has something to download
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._fetch import (
        DownloadFailed,
        FetchPolicy,
        FetchRefused,
        Transfer,
        download,
        shown_url,
    )

    directory = os.path.dirname(dest)
    if os.path.basename(dest) != sha256:
        raise ReleaseError(f"cannot download into {dest}: the cache path of {sha256} is {directory}/{sha256}")
    os.makedirs(directory, exist_ok=True)
    policy = FetchPolicy(
        timeout=timeout, retries=2, backoff=0.5, backoff_max=5.0,
        min_throughput=int(min_throughput or 0),
        throughput_window=float(throughput_window or DEFAULT_THROUGHPUT_WINDOW),
        max_time=float(max_time or 0),
        headers=dict(headers or {}),
        max_artifact_bytes=int(max_bytes or DEFAULT_MAX_ARTIFACT_BYTES),
    )
    transfer = Transfer(sha256=sha256, kind="full")
    shown = shown_url(url)
    # one writer per digest: a prestage running on this host at the same time grows the same .part file (the cache is
    # prestage's, and so is its lock)
    with cache_lock(HostLayout(os.path.dirname(os.path.dirname(directory)), "cache"), ops):
        _remove_partials(directory, sha256)
        try:
            download(ops, cache_dir=directory, sha256=sha256, size=size, sources=[("origin", url)], policy=policy,
                     transfer=transfer, keep_partial=False)
        except FetchRefused as exc:
            raise ReleaseError(f"cannot download {shown}: {exc}") from None
        except DownloadFailed as exc:
            if "origin" in transfer.corrupt:
                raise ReleaseError(f"artifact from {shown} {transfer.corrupt['origin']}; it was not cached") from None
            # the last error is why the source was given up (the ones before it are retried attempts)
            message = transfer.errors[-1] if transfer.errors else str(exc)
            if message.startswith("origin: "):
                message = message[len("origin: "):]
            if not message.startswith("artifact transfer from "):
                message = f"cannot download {shown}: {message}"
            raise ReleaseError(message) from None
        finally:
            _remove_partials(directory, sha256)
    return os.path.getsize(dest)


def check_health(
    ops: HostOps, url: str, *, expected_version: str, timeout: float = 10, retries: int = 5, delay: float = 0.5
) -> dict[str, t.Any]:
    """GET url until it answers 200 with JSON version == expected_version, at most retries times."""
    status: int | None = None
    seen_version = None
    error = None
    latency_ms = None
    attempts = 0
    for attempt in range(1, max(1, retries) + 1):
        attempts = attempt
        started = ops.monotonic()
        body = b""
        try:
            with ops.open_url(url, headers={}, timeout=timeout) as response:
                status = getattr(response, "status", None) or response.getcode()
                body = response.read(HEALTH_BODY_LIMIT)
        except http_error() as exc:
            status, error = exc.code, f"HTTP {exc.code}"
            exc.close()
        except url_errors() as exc:
            status, error = None, str(exc) or type(exc).__name__
        latency_ms = round((ops.monotonic() - started) * 1000, 1)
        if status == 200:
            try:
                document = json.loads(body.decode("utf-8"))
            except ValueError:
                document = None
            if not isinstance(document, dict):
                error = "response is not a JSON object"
            else:
                seen_version = document.get("version")
                reported = document.get("status", "ok")
                if seen_version == expected_version and reported == "ok":
                    return {"ok": True, "status": status, "version": seen_version, "attempts": attempts,
                            "latency_ms": latency_ms}
                error = f"reports version {seen_version!r} and status {reported!r}, expected version {expected_version!r}"
        elif status is not None and error is None:
            error = f"HTTP {status}"
        if attempt < retries:
            ops.sleep(delay)
    return {"ok": False, "status": status, "version": seen_version, "attempts": attempts,
            "latency_ms": latency_ms, "error": error}


# ---------------------------------------------------------------------------------------------- apply


class ApplyRequest(Record):
    """Validated options of one patch_apply execution (build_request makes it; fields by keyword).

    delta: a delta bundle against base_version ({sha256, base_version, size, url, signature}), used when the host runs
    that base; signature: the detached SSH signature (armored text) of the artifact, allowed_signers who may have made it
    (neither in the repr, nor url_headers); affected_versions: installed versions this patch applies to (empty: any), an
    older target is refused unless allow_downgrade; the transfer limits are handed to fetch_artifact (None: the
    downloader's defaults).
    """

    __slots__ = ("version", "sha256", "state", "artifact_url", "artifact_size", "url_headers", "timeout", "patch_id",
                 "restart_command", "health_url", "health_timeout", "health_retries", "health_delay", "require_rollback_point",
                 "keep_releases", "delta", "signature", "allowed_signers", "signer_identity", "require_signature",
                 "affected_versions", "allow_downgrade", "max_artifact_bytes", "max_time", "min_throughput", "throughput_window")
    _hidden = frozenset({"url_headers", "signature", "allowed_signers"})
    _DEFAULTS: t.ClassVar[dict[str, t.Any]] = {
        "state": "present", "artifact_url": None, "artifact_size": None, "url_headers": None, "timeout": 30, "patch_id": None,
        "restart_command": None, "health_url": None, "health_timeout": 10, "health_retries": 5, "health_delay": 0.5,
        "require_rollback_point": True, "keep_releases": 3, "delta": None, "signature": None, "allowed_signers": "",
        "signer_identity": None, "require_signature": False, "affected_versions": (), "allow_downgrade": False,
        "max_artifact_bytes": None, "max_time": None, "min_throughput": None, "throughput_window": None,
    }

    def __init__(self, version: str, sha256: str, **options: t.Any) -> None:
        unknown = set(options) - set(self._DEFAULTS)
        if unknown:
            raise TypeError(f"ApplyRequest got unexpected keyword arguments {sorted(unknown)}")
        values = dict(self._DEFAULTS, **options)
        if values["url_headers"] is None:
            values["url_headers"] = {}
        self._set(version=version, sha256=sha256, **values)

    version: str
    sha256: str
    state: str
    artifact_url: str | None
    artifact_size: int | None
    url_headers: t.Mapping[str, str]
    timeout: float
    patch_id: str | None
    restart_command: tuple[str, ...] | None
    health_url: str | None
    health_timeout: float
    health_retries: int
    health_delay: float
    require_rollback_point: bool
    keep_releases: int
    delta: t.Mapping[str, t.Any] | None
    signature: str | None
    allowed_signers: str
    signer_identity: str | None
    require_signature: bool
    affected_versions: tuple[str, ...]
    allow_downgrade: bool
    max_artifact_bytes: int | None
    max_time: float | None
    min_throughput: float | None
    throughput_window: float | None

    def transfer_limits(self) -> dict[str, t.Any]:
        limits = {"max_bytes": self.max_artifact_bytes, "max_time": self.max_time, "min_throughput": self.min_throughput,
                  "throughput_window": self.throughput_window}
        return {key: value for key, value in limits.items() if value is not None}


def parse_delta(value: t.Any) -> dict[str, t.Any] | None:
    """The delta option of patch_apply: a delta bundle the host may build the release from."""
    if not value:
        return None
    if not isinstance(value, t.Mapping):
        raise ReleaseError("delta must be a mapping with sha256 and base_version (and optionally size and url)")
    url = value.get("url") or None
    if url is not None and not str(url).startswith(URL_SCHEMES):
        raise ReleaseError(f"delta url {url!r} must start with one of {', '.join(URL_SCHEMES)}")
    size = value.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ReleaseError(f"delta size must be a non-negative integer, got {size!r}")
    return {
        "sha256": check_sha256(value.get("sha256")),
        "base_version": check_name(value.get("base_version"), what="delta base_version"),
        "size": size,
        "url": url,
        "signature": _signature(value.get("signature"), what="delta signature"),
    }


def _signature(value: t.Any, *, what: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        return check_armored(value, what=what)
    except TrustError as exc:
        raise ReleaseError(str(exc)) from None


def parse_command(value: t.Any) -> tuple[str, ...] | None:
    """A restart command given as an argv list or a string split with shlex."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ReleaseError(f"restart_command {value!r} cannot be split: {exc}") from exc
    elif isinstance(value, (list, tuple)):
        for arg in value:
            # YAML turns a bare true/yes into a boolean; running "True" would only fail later, on every host
            if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
                raise ReleaseError(f"restart_command argument {arg!r} is not a string; quote it")
        argv = [str(arg) for arg in value]
    else:
        raise ReleaseError("restart_command must be a list of arguments or a string")
    if not argv:
        raise ReleaseError("restart_command must not be empty")
    return tuple(argv)


def build_request(params: t.Mapping[str, t.Any]) -> ApplyRequest:
    """Validate module-style parameters into an ApplyRequest."""
    def number(name: str, default: float, minimum: float) -> t.Any:
        value = params.get(name)
        value = default if value is None else value
        if value < minimum:
            raise ReleaseError(f"{name} must be at least {minimum}, got {value}")
        return value

    url = params.get("artifact_url") or None
    if url is not None and not url.startswith(URL_SCHEMES):
        raise ReleaseError(f"artifact_url {url!r} must start with one of {', '.join(URL_SCHEMES)}")
    size = params.get("artifact_size")
    if size is not None and size < 0:
        raise ReleaseError(f"artifact_size must not be negative, got {size}")
    state = params.get("state") or "present"
    if state not in ("present", "rollback"):
        raise ReleaseError(f"state must be present or rollback, got {state!r}")
    headers = params.get("url_headers") or {}
    affected = params.get("affected_versions") or []
    if not isinstance(affected, (list, tuple)):
        raise ReleaseError(f"affected_versions must be a list of versions, got {type(affected).__name__}")
    limits = {name: params.get(name) for name in ("max_artifact_bytes", "max_time", "min_throughput", "throughput_window")}
    for name, value in limits.items():
        if value is not None and value < 0:
            raise ReleaseError(f"{name} must not be negative, got {value}")
    return ApplyRequest(
        version=check_name(params.get("version"), what="version"),
        sha256=check_sha256(params.get("sha256")),
        state=state,
        artifact_url=url,
        artifact_size=size,
        url_headers={str(key): str(value) for key, value in headers.items()},
        timeout=number("timeout", 30, 1),
        patch_id=params.get("patch_id"),
        restart_command=parse_command(params.get("restart_command")),
        health_url=params.get("health_url") or None,
        health_timeout=number("health_timeout", 10, 0.001),
        health_retries=number("health_retries", 5, 1),
        health_delay=number("health_delay", 0.5, 0),
        require_rollback_point=bool(params.get("require_rollback_point", True)),
        keep_releases=number("keep_releases", 3, 1),
        delta=parse_delta(params.get("delta")),
        signature=_signature(params.get("signature"), what="signature"),
        allowed_signers=params.get("allowed_signers") or "",
        signer_identity=params.get("signer_identity") or None,
        require_signature=bool(params.get("require_signature")),
        affected_versions=tuple(check_name(str(item), what=f"affected_versions[{index}]") for index, item in enumerate(affected)),
        allow_downgrade=bool(params.get("allow_downgrade")),
        **limits,
    )


def _side(version: str | None, sha256: str | None, release: str | None) -> dict[str, t.Any]:
    return {"version": version, "sha256": sha256, "release": release}


class ApplyResult(Record):
    """What one execution did or (in check mode) would do; as_dict() is the module result."""

    __slots__ = ("changed", "version", "previous_version", "sha256", "release", "rollback_point", "actions", "health", "reverted",
                 "before", "after", "extra")
    _frozen = False

    def __init__(self) -> None:
        self.changed = False
        self.version: str | None = None
        self.previous_version: str | None = None
        self.sha256: str | None = None
        self.release: str | None = None
        self.rollback_point: dict[str, t.Any] | None = None
        self.actions: list[str] = []
        self.health: dict[str, t.Any] | None = None
        self.reverted = False
        self.before: dict[str, t.Any] = _side(None, None, None)
        self.after: dict[str, t.Any] = _side(None, None, None)
        self.extra: dict[str, t.Any] = {}

    def act(self, action: str) -> None:
        self.actions.append(action)
        self.changed = True

    def as_dict(self) -> dict[str, t.Any]:
        result = {
            "changed": self.changed,
            "version": self.version,
            "previous_version": self.previous_version,
            "sha256": self.sha256,
            "release": self.release,
            "rollback_point": self.rollback_point,
            "actions": list(self.actions),
            "health": self.health,
            "reverted": self.reverted,
            "diff": {"before": dict(self.before), "after": dict(self.after)},
        }
        result.update(self.extra)
        return result


def _summarise(problems: list[str], limit: int = 5) -> str:
    shown = "; ".join(problems[:limit])
    return shown if len(problems) <= limit else f"{shown}; and {len(problems) - limit} more"


def _recorded_sha(manifest: t.Mapping[str, t.Any] | None, version: str | None, release: str | None) -> str | None:
    """Artifact digest of an installed release: from the manifest when it describes it, else its metadata."""
    if version is None:
        return None
    if manifest and manifest.get("version") == version and manifest.get("artifact_sha256"):
        return manifest["artifact_sha256"]
    metadata = read_release_metadata(release) if release else None
    return metadata.get("artifact_sha256") if metadata else None


def _run_health(ops: HostOps, request: ApplyRequest, result: ApplyResult, expected: str) -> None:
    if not request.health_url:
        return
    result.health = check_health(ops, request.health_url, expected_version=expected, timeout=request.health_timeout,
                                 retries=request.health_retries, delay=request.health_delay)
    if not result.health["ok"]:
        raise ReleaseError(
            f"health check failed: {result.health.get('error')} "
            f"({result.health['attempts']} attempt(s) on {request.health_url}, expected version {expected})"
        )


def discard_cached(layout: HostLayout, sha256: str, ops: HostOps, result: ApplyResult) -> bool:
    """Remove a refused artifact and its pre-staging record from the node cache, so that nothing reuses it."""
    paths = [path for path in (layout.cache_path(sha256), f"{layout.root}/cache/meta/{sha256}.json") if os.path.lexists(path)]
    if not paths:
        return False
    result.act(f"remove refused artifact {sha256} from the cache")
    if not ops.check_mode:
        for path in paths:
            remove_path(path)
        fsync_directory(layout.cache_dir)
    return True


def _refused(layout: HostLayout, sha256: str, ops: HostOps, result: ApplyResult, message: str) -> ReleaseError:
    removed = discard_cached(layout, sha256, ops, result)
    if removed:
        message += f"; refused and {'would be ' if ops.check_mode else ''}removed from {layout.cache_dir}"
    return ReleaseError(message)


def _signer_fingerprints(allowed_signers: str) -> set[str]:
    try:
        return {fingerprint(entry["blob"]) for entry in parse_allowed_signers(allowed_signers)}
    except TrustError:
        return set()


def _still_trusted(metadata: t.Mapping[str, t.Any], request: ApplyRequest) -> bool:
    """Whether an unpacked release was built from an artifact whose signature verified with a key still trusted."""
    seen = metadata.get("signature")
    if not isinstance(seen, dict) or not seen.get("principal"):
        return False
    if request.signer_identity and seen["principal"] != request.signer_identity:
        return False
    return str(seen.get("key", "")).rsplit(" ", 1)[-1] in _signer_fingerprints(request.allowed_signers)


def _check_signature(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, *, path: str, sha256: str,
    signature: str | None, what: str,
) -> dict[str, str] | None:
    """Verify the signature of a cached file whose digest matched, right before it is used: {principal, key}, or None
    when it carries none and none is required. A refused file leaves the cache."""
    if not signature:
        if request.require_signature:
            raise _refused(layout, sha256, ops, result, f"no signature: {what} {sha256} carries no signature and this "
                                                        "host installs only signed artifacts (require_signature)")
        return None
    if not request.allowed_signers:
        if request.require_signature:
            raise ReleaseError(f"the signature of {what} {sha256} cannot be verified: no allowed_signers were given and "
                               "this host installs only signed artifacts (require_signature)")
        ops.warn(f"{what} {sha256} is signed but no allowed_signers were given; its signature is not checked")
        return None
    try:
        seen = verify_artifact_signature(path, signature=signature, allowed_signers=request.allowed_signers,
                                         identity=request.signer_identity, what=f"{what} {sha256}")
    except TrustError as exc:
        raise _refused(layout, sha256, ops, result, str(exc)) from None
    return dict(seen, artifact=what)


def _delta_artifact(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, cur_version: str | None
) -> tuple[str, str, dict[str, str] | None] | None:
    """(path, digest, signature seen) of the verified delta bundle to build the release from ("" as path in check
    mode when it would be downloaded), or None to use the full artifact: the host does not run the delta's base, the
    full artifact is already cached, or the delta is neither cached nor downloadable (nor signed when it must be)."""
    delta = request.delta
    if not delta or cur_version != delta["base_version"] or os.path.isfile(layout.cache_path(request.sha256)):
        return None
    if request.require_signature and not delta["signature"]:
        ops.warn(f"delta bundle {delta['sha256']} carries no signature and this host installs only signed artifacts; "
                 "using the full artifact")
        return None
    path = layout.cache_path(delta["sha256"])
    if os.path.isfile(path):
        try:
            verify_artifact(path, sha256=delta["sha256"], size=delta["size"])
        except ReleaseError as exc:
            discard_cached(layout, delta["sha256"], ops, result)
            ops.warn(f"{exc}; removed the cached delta bundle")
        else:
            seen = _check_signature(layout, request, ops, result, path=path, sha256=delta["sha256"],
                                    signature=delta["signature"], what="delta bundle")
            return path, delta["sha256"], seen
    if not delta["url"]:
        return None
    result.act("download delta bundle")
    if ops.check_mode:
        return "", delta["sha256"], None
    try:
        fetch_artifact(ops, url=delta["url"], dest=path, sha256=delta["sha256"], size=delta["size"],
                       headers=request.url_headers, timeout=request.timeout, **request.transfer_limits())
    except ReleaseError as exc:
        ops.warn(f"{exc}; using the full artifact instead")
        return None
    seen = _check_signature(layout, request, ops, result, path=path, sha256=delta["sha256"], signature=delta["signature"],
                            what="delta bundle")
    return path, delta["sha256"], seen


def _ensure_artifact(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult
) -> tuple[str | None, dict[str, str] | None]:
    """(path of the verified artifact in the cache, signature seen); path None in check mode when it would be
    downloaded. A cached copy is verified (digest, size, signature) right before it is used, and removed when refused."""
    path = layout.cache_path(request.sha256)
    if os.path.isfile(path):
        try:
            verify_artifact(path, sha256=request.sha256, size=request.artifact_size)
        except ReleaseError as exc:
            if not request.artifact_url:
                raise _refused(layout, request.sha256, ops, result,
                               f"{exc}; the cached copy is corrupt and no artifact_url was given") from exc
            discard_cached(layout, request.sha256, ops, result)
            ops.warn(f"{exc}; removed the cached copy, downloading it again")
        else:
            return path, _check_signature(layout, request, ops, result, path=path, sha256=request.sha256,
                                          signature=request.signature, what="artifact")
    elif not request.artifact_url:
        # said as a result key: the gate keeps a pre-staged host whose copy is gone out (not_staged), not as a failure
        result.extra["not_cached"] = True
        raise ReleaseError(f"artifact {request.sha256} is not in {layout.cache_dir} and no artifact_url was given")
    result.act("download artifact")
    if ops.check_mode:
        return None, None
    fetch_artifact(ops, url=request.artifact_url, dest=path, sha256=request.sha256, size=request.artifact_size,
                   headers=request.url_headers, timeout=request.timeout, **request.transfer_limits())
    return path, _check_signature(layout, request, ops, result, path=path, sha256=request.sha256,
                                  signature=request.signature, what="artifact")


def _restart_or_revert(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, previous: dict[str, t.Any] | None
) -> None:
    if not request.restart_command:
        return
    result.act("restart")
    if ops.check_mode:
        return
    rc, out, err = ops.run(request.restart_command)
    if rc == 0:
        return
    result.extra.update(rc=rc, stdout=out, stderr=err)
    result.reverted = True
    failed = f"restart command failed (rc={rc}): {(err or out).strip()[-2000:]}"
    target = _side(request.version, request.sha256, layout.release_path(request.version))
    if previous and os.path.isdir(layout.release_path(previous["version"])):
        result.actions.append(f"switch current {request.version} -> {previous['version']}")
        switch_current(layout, previous["version"])
        rc2, _out2, err2 = ops.run(request.restart_command)
        result.extra["revert_rc"] = rc2
        result.actions.append("record manifest")
        record_install(layout, version=previous["version"], sha256=previous.get("artifact_sha256"),
                       patch_id=request.patch_id, previous={"version": request.version, "artifact_sha256": request.sha256,
                                                            "release": target["release"]},
                       action="revert", now=ops.now())
        result.version = previous["version"]
        result.sha256 = previous.get("artifact_sha256")
        result.release = layout.release_path(previous["version"])
        result.after = _side(result.version, result.sha256, result.release)
        tail = "" if rc2 == 0 else f"; the restart after switching back also failed (rc={rc2}): {err2.strip()[-2000:]}"
        raise ReleaseError(f"{failed}; switched back to {previous['version']}{tail}")
    result.actions.append("remove current")
    remove_current(layout)
    append_audit(layout, action="revert", from_version=request.version, to_version=None, sha256=request.sha256,
                 patch_id=request.patch_id, now=ops.now())
    result.version = result.sha256 = result.release = None
    result.after = _side(None, None, None)
    raise ReleaseError(f"{failed}; no previous release to switch back to, so the current link was removed")


def _complete_present(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, previous: dict[str, t.Any] | None
) -> None:
    """Restart (reverting on failure), record, health, prune: the tail shared by a fresh and a resumed switch."""
    _restart_or_revert(layout, request, ops, result, previous)
    result.act("record manifest")
    if not ops.check_mode:
        record_install(layout, version=request.version, sha256=request.sha256, patch_id=request.patch_id,
                       previous=previous, action="install", now=ops.now())
    # nothing was switched in check mode, so the service would answer for the old version
    if not ops.check_mode:
        _run_health(ops, request, result, request.version)
    existing = set(list_releases(layout)) | {request.version}
    for version in plan_prune(existing, keep=request.keep_releases,
                              protect=[request.version, previous["version"] if previous else None]):
        result.act(f"prune {version}")
        if not ops.check_mode:
            remove_release(layout, version)


def _not_applicable(
    layout: HostLayout, request: ApplyRequest, result: ApplyResult, cur_version: str | None, cur_release: str | None,
    manifest: t.Mapping[str, t.Any] | None,
) -> bool:
    """True (and the result says why) when this patch does not apply to the installed version; raise on a downgrade.

    Decided before anything is downloaded or written: a host outside affected_versions (a fresh host too, when the
    list is not empty) is left exactly as it is.
    """
    if request.affected_versions and cur_version not in request.affected_versions:
        sha = _recorded_sha(manifest, cur_version, cur_release)
        result.version, result.sha256, result.release = cur_version, sha, cur_release
        result.before = result.after = _side(cur_version, sha, cur_release)
        installed = f"{layout.service} {cur_version} is installed" if cur_version else f"{layout.service} is not installed"
        result.extra.update(not_applicable=True, installed_version=cur_version,
                            msg=f"not applicable: {installed}, and patch {request.patch_id or request.version} applies only "
                                f"to {', '.join(request.affected_versions)}; nothing was changed")
        return True
    if cur_version is not None and version_key(request.version) < version_key(cur_version):
        if not request.allow_downgrade:
            raise ReleaseError(f"downgrade refused: {layout.service} {cur_version} is installed and the target {request.version} "
                               "is older; a downgrade needs allow_downgrade (with its justification in the patch manifest)")
        result.extra["downgrade"] = {"from": cur_version, "to": request.version}
    return False


def _present_already(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, *,
    cur_version: str, cur_release: str | None, manifest: dict[str, t.Any] | None,
) -> None:
    """The target is current already: verify it and check health, or finish a run killed before its manifest."""
    target_release = layout.release_path(request.version)
    metadata, problems = inspect_release(target_release)
    result.before = _side(cur_version, metadata.get("artifact_sha256") if metadata else None, cur_release)
    if problems:
        raise ReleaseError(f"current release {cur_version} does not verify: {_summarise(problems)}")
    if metadata["artifact_sha256"] != request.sha256:
        raise ReleaseError(
            f"version {cur_version} is installed from artifact {metadata['artifact_sha256']}, not {request.sha256}; "
            "a published version must not change, publish a new version instead"
        )
    if manifest and manifest.get("version") == cur_version and manifest.get("artifact_sha256") == request.sha256:
        prev = _release_ref(layout, manifest.get("previous"))
        result.rollback_point = {"version": prev["version"], "release": prev["release"], "verified": None} if prev else None
        _run_health(ops, request, result, request.version)
        return
    # killed between the switch and the manifest: finish that run
    previous = None
    if manifest and manifest.get("version") and manifest.get("version") != cur_version:
        previous = _release_ref(layout, manifest)
    result.before = _side(previous["version"], previous["artifact_sha256"], previous["release"]) if previous else _side(None, None, None)
    result.previous_version = previous["version"] if previous else None
    if previous:
        result.rollback_point = {"version": previous["version"], "release": previous["release"],
                                 "verified": not verify_release(layout.release_path(previous["version"]))}
    else:
        result.rollback_point = {"version": None, "release": None, "verified": False}
    _complete_present(layout, request, ops, result, previous)


def _rollback_point(
    layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, *,
    cur_version: str | None, cur_release: str | None, manifest: dict[str, t.Any] | None,
) -> dict[str, t.Any] | None:
    """Verify the release a rollback would return to (result.rollback_point); the previous side of the manifest."""
    previous = None
    if cur_version is not None:
        metadata, problems = inspect_release(cur_release)
        result.rollback_point = {"version": cur_version, "release": cur_release, "verified": not problems}
        if problems:
            message = f"rollback point {cur_version} ({cur_release}) cannot be verified: {_summarise(problems)}"
            if request.require_rollback_point:
                raise ReleaseError(f"{message}; refusing to patch this host")
            ops.warn(message)
        sha = metadata.get("artifact_sha256") if metadata else _recorded_sha(manifest, cur_version, cur_release)
        previous = {"version": cur_version, "artifact_sha256": sha, "release": cur_release}
        result.before = _side(cur_version, sha, cur_release)
    else:
        result.rollback_point = {"version": None, "release": None, "verified": False}
        if request.require_rollback_point:
            raise ReleaseError(
                f"{layout.service} has no current release ({layout.current_link} is missing), so there is no rollback "
                "point; set require_rollback_point=false to allow a first install"
            )
    return previous


def _target_ready(target_release: str, request: ApplyRequest) -> bool:
    """The target release is unpacked already from the requested artifact (and, when required, a trusted signature)."""
    ready = False
    if os.path.lexists(target_release):
        metadata, problems = inspect_release(target_release)
        ready = not problems and metadata is not None and metadata.get("artifact_sha256") == request.sha256
        # unpacked by a run that verified no signature (or with a key no longer trusted): build it again from a verified artifact
        ready = ready and (not request.require_signature or _still_trusted(t.cast(dict, metadata), request))
    return ready


def _unpack_target(layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult, *, cur_version: str | None) -> None:
    """Unpack the target release: from a delta bundle when one applies (falling back to the full artifact), else full."""
    if request.require_signature and not request.signature:
        # refused before anything is downloaded; a copy already staged in the cache leaves it
        raise _refused(layout, request.sha256, ops, result, f"no signature: artifact {request.sha256} carries no signature "
                                                            "and this host installs only signed artifacts (require_signature)")
    delta = _delta_artifact(layout, request, ops, result, cur_version)
    if delta:
        artifact, digest, seen = delta
    else:
        (artifact, seen), digest = _ensure_artifact(layout, request, ops, result), request.sha256
    try:
        plan = inspect_artifact(artifact) if artifact else None
    except ReleaseError as exc:
        # a bundle with a bad member never stays in the cache to be offered again
        raise _refused(layout, digest, ops, result, str(exc)) from None
    if plan is not None and plan.bundle is not None and plan.bundle.kind == "delta" and (
            plan.bundle.metadata["delta"]["full_sha256"] != request.sha256):
        raise ReleaseError(f"delta bundle {artifact} builds the release of artifact "
                           f"{plan.bundle.metadata['delta']['full_sha256']}, not {request.sha256}")
    if seen:
        result.extra["signature"] = seen
    result.act(f"unpack {request.version}" + (" from the delta bundle" if delta else ""))
    if plan is not None:
        ensure_free_space(existing_parent(layout.releases_dir), plan.total_size, what=f"unpack {request.version}")
    if not ops.check_mode:
        try:
            extract_release(layout, version=request.version, artifact_path=t.cast(str, artifact),
                            sha256=digest, plan=plan, record={"signature": seen} if seen else None)
        except DeltaNotApplicable as exc:
            if not delta:
                raise
            ops.warn(f"{exc}; falling back to the full artifact")
            result.act(f"unpack {request.version} from the full artifact (fallback)")
            artifact, seen = _ensure_artifact(layout, request, ops, result)
            if seen:
                result.extra["signature"] = seen
            extract_release(layout, version=request.version, artifact_path=t.cast(str, artifact),
                            sha256=request.sha256, record={"signature": seen} if seen else None)


def apply_present(layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult) -> None:
    """Make request.version current: verify what is there, keep a rollback point, unpack, switch, health, manifest."""
    host = read_host_state(layout)
    cur_version, cur_release, manifest = host["current_version"], host["current_release"], host["manifest"]
    target_release = layout.release_path(request.version)
    result.version, result.sha256, result.release = request.version, request.sha256, target_release
    result.after = _side(request.version, request.sha256, target_release)
    result.previous_version = cur_version

    if cur_version == request.version:
        _present_already(layout, request, ops, result, cur_version=cur_version, cur_release=cur_release, manifest=manifest)
        return
    if _not_applicable(layout, request, result, cur_version, cur_release, manifest):
        return
    previous = _rollback_point(layout, request, ops, result, cur_version=cur_version, cur_release=cur_release, manifest=manifest)
    if not _target_ready(target_release, request):
        _unpack_target(layout, request, ops, result, cur_version=cur_version)
    result.act(f"switch current {cur_version or '(none)'} -> {request.version}")
    if not ops.check_mode:
        os.makedirs(layout.apps_dir, exist_ok=True)
        switch_current(layout, request.version)
    _complete_present(layout, request, ops, result, previous)


def apply_rollback(layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult) -> None:
    host = read_host_state(layout)
    cur_version, cur_release, manifest = host["current_version"], host["current_release"], host["manifest"]
    recorded = manifest if manifest and manifest.get("version") else None

    resume = False
    if cur_version == request.version:
        if recorded and recorded["version"] == cur_version:
            target = _release_ref(layout, recorded.get("previous"))
        else:
            # killed between a switch and its manifest: the manifest still describes the release before
            target = _release_ref(layout, recorded)
        if not target or target["version"] == cur_version:
            raise ReleaseError(f"no previous release of {layout.service} is recorded in {layout.manifest_path}; "
                               "nothing to roll back to")
        rolled_from = {"version": cur_version, "artifact_sha256": _recorded_sha(recorded, cur_version, cur_release),
                       "release": cur_release}
    elif (cur_version is not None and recorded and recorded["version"] == request.version
          and (_release_ref(layout, recorded.get("previous")) or {}).get("version") == cur_version):
        # killed between switching back and recording the rollback: finish it
        resume = True
        target = t.cast(dict, _release_ref(layout, recorded.get("previous")))
        rolled_from = t.cast(dict, _release_ref(layout, recorded))
    else:
        sha = _recorded_sha(recorded, cur_version, cur_release)
        result.version, result.previous_version, result.sha256, result.release = cur_version, cur_version, sha, cur_release
        result.before = result.after = _side(cur_version, sha, cur_release)
        if cur_version is not None:
            _run_health(ops, request, result, cur_version)
        return

    target_version = check_name(target["version"], what="previous version")
    target_release = layout.release_path(target_version)
    metadata, problems = inspect_release(target_release)
    result.rollback_point = {"version": target_version, "release": target_release, "verified": not problems}
    result.previous_version = rolled_from["version"]
    result.before = _side(rolled_from["version"], rolled_from["artifact_sha256"], rolled_from["release"])
    if problems:
        raise ReleaseError(f"rollback point {target_version} ({target_release}) cannot be verified: "
                           f"{_summarise(problems)}; refusing to roll back")
    sha = t.cast(dict, metadata)["artifact_sha256"]
    result.version, result.sha256, result.release = target_version, sha, target_release
    result.after = _side(target_version, sha, target_release)
    if not resume:
        result.act(f"switch current {cur_version} -> {target_version}")
        if not ops.check_mode:
            switch_current(layout, target_version)
    if request.restart_command:
        result.act("restart")
        if not ops.check_mode:
            rc, out, err = ops.run(request.restart_command)
            if rc != 0:
                result.extra.update(rc=rc, stdout=out, stderr=err)
                raise ReleaseError(f"restart command failed after rolling back to {target_version} (rc={rc}): "
                                   f"{(err or out).strip()[-2000:]}")
    result.act("record manifest")
    if not ops.check_mode:
        record_install(layout, version=target_version, sha256=sha, patch_id=request.patch_id, previous=rolled_from,
                       action="rollback", now=ops.now())
        _run_health(ops, request, result, target_version)


def run_apply(layout: HostLayout, request: ApplyRequest, ops: HostOps, result: ApplyResult) -> ApplyResult:
    """One host step: state=present installs request.version, state=rollback leaves it for the recorded previous."""
    try:
        if request.state == "rollback":
            apply_rollback(layout, request, ops, result)
        else:
            apply_present(layout, request, ops, result)
    except OSError as exc:
        # permissions, a full disk, a read-only mount: report it with what was done so far
        raise ReleaseError(f"{layout.service}: filesystem error under {layout.root}: {exc}") from exc
    return result
