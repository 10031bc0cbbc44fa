# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: pre-staging artifacts into a host's content-addressed cache. Not a public API.

One execution on one host: choose what to stage (the full artifact, or a delta bundle when the host runs its
base), make sure it sits verified at ``cache/sha256/<digest>`` (downloading it from the region's edge, then the
origin, with HTTP Range resume, retries and limits), record it in ``cache/meta/<digest>.json`` and apply the
retention policy. A download only ever writes ``cache/sha256/.<digest>.part``; the final path appears by
rename(2) after the digest (and the signature, when configured) verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import (
    URL_SCHEMES,
    HostLayout,
    HostOps,
    ReleaseError,
    StageError,
    cache_lock,
    check_name,
    check_sha256,
    current_version,
    read_host_state,
    read_release_metadata,
    remove_path,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import (
    read_json,
    sha256_file,
    write_json_atomic,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._tools import find_tool
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import version_key

if t.TYPE_CHECKING:
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._fetch import Transfer

__all__ = [
    "StageError",
    "StageResult",
    "build_stage_request",
    "cache_lock",
    "cached_entries",
    "meta_path",
    "plan_retention",
    "readiness_report",
    "region_verdicts",
    "render_report",
    "run_stage",
]

META_SCHEMA = 1
DELTA_MODES = ("auto", "both", "never")
STATES = ("present", "verified")


def _bundle() -> t.Any:
    """_bundle (signatures, bundle inspection), imported only when a download or a signature needs it: a run that
    finds everything staged stays as cheap as hashing the cached file."""
    from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bundle as bundle

    return bundle


# ------------------------------------------------------------------------------------------ requests


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One artifact to stage: the full one or a delta bundle."""

    sha256: str
    size: int
    kind: str = "full"
    name: str = ""
    url: str | None = None
    signature: str | None = None
    base_version: str | None = None


@dataclasses.dataclass(frozen=True)
class StageRequest:
    service: str
    version: str
    full: Artifact
    delta: Artifact | None = None
    edge_url: str | None = None
    delta_mode: str = "auto"
    state: str = "present"
    allowed_signers: str | None = None
    signer_identity: str | None = None
    signature_namespace: str = "fleetpatch"
    require_signature: bool = False
    inspect_bundles: bool = True
    keep: int = 3
    # when the region's edge failed (edge_failed says why), nodes fetch from the origin only if this allows it
    origin_fallback: bool = True
    edge_failed: str | None = None
    # the downloader's settings (_fetch.FetchPolicy keyword arguments), validated here; the policy itself is made only
    # when something is downloaded, so a host that finds everything staged never compiles the transfer code
    fetch_settings: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict, repr=False)  # headers may hold secrets


def _artifact(value: t.Mapping[str, t.Any], *, kind: str, what: str) -> Artifact:
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise StageError(f"{what} size is required (the declared size in bytes) and must be positive, got {size!r}")
    url = value.get("url") or None
    if url is not None and not str(url).startswith(URL_SCHEMES):
        raise StageError(f"{what} url {url!r} must start with one of {', '.join(URL_SCHEMES)}")
    base = value.get("base_version")
    return Artifact(
        sha256=check_sha256(value.get("sha256")),
        size=size,
        kind=kind,
        name=str(value.get("name") or ""),
        url=url,
        signature=value.get("signature") or None,
        base_version=check_name(base, what=f"{what} base_version") if kind == "delta" else None,
    )


def build_stage_request(params: t.Mapping[str, t.Any]) -> StageRequest:
    """Validate module-style parameters."""
    def number(name: str, default: float, minimum: float) -> t.Any:
        value = params.get(name)
        value = default if value is None else value
        if value < minimum:
            raise StageError(f"{name} must be at least {minimum}, got {value}")
        return value

    if params.get("delta_mode", "auto") not in DELTA_MODES:
        raise StageError(f"delta_mode must be one of {', '.join(DELTA_MODES)}")
    if params.get("state", "present") not in STATES:
        raise StageError(f"state must be one of {', '.join(STATES)}")
    edge_url = params.get("edge_url") or None
    if edge_url is not None and not edge_url.startswith(URL_SCHEMES):
        raise StageError(f"edge_url {edge_url!r} must start with one of {', '.join(URL_SCHEMES)}")
    full = _artifact({key: params.get(key) for key in ("sha256", "size", "name", "url", "signature")}, kind="full", what="artifact")
    delta = _artifact(params["delta"], kind="delta", what="delta") if params.get("delta") else None
    headers = params.get("url_headers") or {}
    return StageRequest(
        service=check_name(params.get("service"), what="service"),
        version=check_name(params.get("version"), what="version"),
        full=full,
        delta=delta,
        edge_url=edge_url,
        delta_mode=params.get("delta_mode") or "auto",
        state=params.get("state") or "present",
        allowed_signers=params.get("allowed_signers") or None,
        signer_identity=params.get("signer_identity") or None,
        signature_namespace=params.get("signature_namespace") or "fleetpatch",
        require_signature=bool(params.get("require_signature")),
        inspect_bundles=bool(params.get("inspect_bundles", True)),
        keep=number("keep", 3, 0),
        origin_fallback=bool(params.get("origin_fallback", True)),
        edge_failed=str(params.get("edge_failed") or "")[:500] or None,
        fetch_settings={
            "timeout": number("timeout", 30, 0.1),
            "retries": number("retries", 3, 0),
            "backoff": number("backoff", 1.0, 0),
            "backoff_max": number("backoff_max", 30.0, 0),
            "min_throughput": number("min_throughput", 0, 0),
            "throughput_window": number("throughput_window", 10.0, 0.1),
            "max_time": number("max_time", 0, 0),
            "headers": {str(key): str(value) for key, value in headers.items()},
        },
    )


# ------------------------------------------------------------------------------------------ layout


def meta_dir(layout: HostLayout) -> str:
    return f"{layout.root}/cache/meta"


def meta_path(layout: HostLayout, sha256: str) -> str:
    return f"{meta_dir(layout)}/{sha256}.json"


def read_meta(layout: HostLayout, sha256: str) -> dict[str, t.Any] | None:
    try:
        data = read_json(meta_path(layout, sha256))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_entries(layout: HostLayout) -> list[dict[str, t.Any]]:
    """Meta records of every cached artifact that has one (artifacts cached by other means have none)."""
    entries = []
    try:
        names = sorted(os.listdir(meta_dir(layout)))
    except FileNotFoundError:
        return []
    for name in names:
        sha = name[:-5] if name.endswith(".json") else ""
        if len(sha) == 64 and os.path.isfile(layout.cache_path(sha)):
            meta = read_meta(layout, sha)
            if meta and meta.get("sha256") == sha:
                entries.append(meta)
    return entries


# ------------------------------------------------------------------------------------------ staging


@dataclasses.dataclass
class StageResult:
    changed: bool = False
    ready: bool = False
    staged: dict[str, t.Any] | None = None
    artifacts: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    transferred_bytes: int = 0
    bytes_by_source: dict[str, int] = dataclasses.field(default_factory=dict)
    fallback_reason: str | None = None
    removed: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    # refused artifacts removed from this host's cache (bad signature or members), with the reason
    purged: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    # the edge served bytes that did not verify ({sha256, reason}): the report names the edge, which re-verifies
    edge_refused: dict[str, t.Any] | None = None
    # why the edge source failed, when it did; and why this host fetched from the origin instead of its edge
    edge_error: str | None = None
    origin_fallback: str | None = None
    actions: list[str] = dataclasses.field(default_factory=list)
    reason: str | None = None
    before: list[str] = dataclasses.field(default_factory=list)
    after: list[str] = dataclasses.field(default_factory=list)

    def act(self, action: str) -> None:
        self.actions.append(action)
        self.changed = True

    def add_transfer(self, transfer: Transfer) -> None:
        self.transferred_bytes += transfer.bytes
        for name, count in transfer.bytes_by_source.items():
            self.bytes_by_source[name] = self.bytes_by_source.get(name, 0) + count

    def as_dict(self, *, check_mode: bool) -> dict[str, t.Any]:
        key = "would_remove" if check_mode else "removed"
        return {
            "changed": self.changed,
            "ready": self.ready,
            "staged": self.staged,
            "artifacts": self.artifacts,
            "transferred_bytes": self.transferred_bytes,
            "bytes_by_source": dict(sorted(self.bytes_by_source.items())),
            "fallback_reason": self.fallback_reason,
            key: self.removed,
            "purged": self.purged,
            "edge_refused": self.edge_refused,
            "edge_error": self.edge_error,
            "origin_fallback": self.origin_fallback,
            "actions": self.actions,
            "reason": self.reason,
            "diff": {"before": {"cached": self.before}, "after": {"cached": self.after}},
        }


class Stager:
    def __init__(self, layout: HostLayout, request: StageRequest, ops: HostOps, *, zstd: str | None | bool = None,
                 result: StageResult | None = None) -> None:
        self.layout = layout
        self.request = request
        self.ops = ops
        self.result = result if result is not None else StageResult()
        self._warned: set[str] = set()
        # None: look it up; False: known to be absent (tests)
        self._zstd = find_tool("zstd") if zstd is None else (zstd or None)

    # --------------------------------------------------------------- checks

    def sources(self, artifact: Artifact) -> list[tuple[str, str]]:
        """The edge, then the origin. When every edge of the region failed (edge_failed), the edge is not tried and
        the origin only with origin_fallback; with origin_fallback off a node with an edge never goes to the origin
        (the origin is sized for the edges, not for every node of a region)."""
        request = self.request
        found = []
        if request.edge_url and request.edge_failed:
            if not request.origin_fallback:
                raise StageError(f"every edge of this host's region failed ({request.edge_failed}) and origin_fallback "
                                 "is off: nothing to stage from")
            if artifact.url:
                self.result.origin_fallback = f"every edge of the region failed ({request.edge_failed})"
        elif request.edge_url:
            found.append(("edge", request.edge_url.rstrip("/") + "/" + artifact.sha256))
        if artifact.url and (request.origin_fallback or not found):
            found.append(("origin", artifact.url))
        return found

    def _signature_needed(self, artifact: Artifact) -> bool:
        if self.request.require_signature and not artifact.signature:
            raise StageError(f"{artifact.kind} artifact {artifact.sha256} has no signature and require_signature is set")
        if artifact.signature and not self.request.allowed_signers:
            if self.request.require_signature:
                raise StageError("require_signature is set but no allowed_signers were given to verify against")
            if artifact.sha256 not in self._warned:
                self._warned.add(artifact.sha256)
                self.ops.warn(f"{artifact.kind} artifact {artifact.sha256[:12]} is signed but no allowed_signers were "
                              "given; the signature is not checked")
            return False
        return bool(artifact.signature)

    def _verify_signature(self, artifact: Artifact, path: str) -> dict[str, t.Any] | None:
        if not self._signature_needed(artifact):
            return None
        principal = _bundle().verify_signature(
            path, signature=t.cast(str, artifact.signature), allowed_signers=t.cast(str, self.request.allowed_signers),
            identity=self.request.signer_identity, namespace=self.request.signature_namespace,
            scratch_dir=os.path.dirname(self.layout.cache_dir),
        )
        return {"sha256": _text_digest(t.cast(str, artifact.signature)), "principal": principal,
                "namespace": self.request.signature_namespace}

    def _inspect(self, artifact: Artifact, path: str) -> None:
        if not self.request.inspect_bundles:
            return
        metadata = _bundle().read_bundle_metadata(path)  # raises BundleError (a ReleaseError) for a malformed bundle
        if metadata is None:
            _check_tar_members(path)
            return
        if metadata["service"] != self.request.service:
            raise StageError(f"bundle {artifact.sha256[:12]} is for service {metadata['service']}, not {self.request.service}")
        if metadata["target_version"] != self.request.version:
            raise StageError(f"bundle {artifact.sha256[:12]} builds {metadata['target_version']}, not {self.request.version}")
        if artifact.kind == "delta" and (metadata["kind"] != "delta" or metadata.get("base_version") != artifact.base_version):
            raise StageError(f"{artifact.sha256[:12]} is not a delta bundle against {artifact.base_version}")

    def cached(self, artifact: Artifact, *, thorough: bool = False) -> str | None:
        """'ok' when the cached copy verifies, 'corrupt' when it lacks the declared size or digest, 'refused' when it
        has them but its signature or members are refused (it is then purged: removed with its cache record), None
        when absent.

        The digest is checked on every run. Signature and members are checked when the cache record does not say
        they were (a file cached by other means, another signature), and always when thorough (readiness: "staged"
        means verified now, not once).
        """
        path = self.layout.cache_path(artifact.sha256)
        if not os.path.isfile(path):
            return None
        if os.path.getsize(path) != artifact.size or sha256_file(path) != artifact.sha256:
            return "corrupt"
        meta = read_meta(self.layout, artifact.sha256) or {}
        needed = self._signature_needed(artifact)
        signed = not needed or (meta.get("signature") or {}).get("sha256") == _text_digest(t.cast(str, artifact.signature))
        inspected = not self.request.inspect_bundles or bool(meta.get("members_verified"))
        if signed and inspected and meta and not thorough:
            return "ok"
        try:
            record = self._verify_signature(artifact, path)
            self._inspect(artifact, path)
        except ReleaseError as exc:
            self.purge(artifact, f"cached {artifact.kind} artifact {artifact.sha256} is refused: {exc}")
            return "refused"
        if signed and inspected and meta or self.request.state == "verified":
            # readiness re-verifies and reports; it records nothing
            return "ok"
        self.result.act(f"record the verified cached {artifact.kind} {artifact.sha256[:12]}")
        if not self.ops.check_mode:
            self._write_meta(artifact, source=meta.get("source"), signature=record or meta.get("signature"),
                             staged_at=meta.get("staged_at"))
        return "ok"

    def purge(self, artifact: Artifact, reason: str) -> None:
        """Caches hold only verified content: a refused artifact leaves the cache with its record."""
        self.ops.warn(f"{reason}; removing it from the cache")
        self.result.act(f"remove refused {artifact.kind} {artifact.sha256[:12]} from the cache")
        self.result.purged.append({"sha256": artifact.sha256, "kind": artifact.kind, "reason": reason[:1000]})
        if not self.ops.check_mode:
            remove_path(self.layout.cache_path(artifact.sha256))
            remove_path(meta_path(self.layout, artifact.sha256))

    def _write_meta(self, artifact: Artifact, *, source: str | None, signature: dict[str, t.Any] | None,
                    staged_at: str | None) -> None:
        now = self.ops.now()
        write_json_atomic(meta_path(self.layout, artifact.sha256), {
            "schema": META_SCHEMA,
            "sha256": artifact.sha256,
            "size": artifact.size,
            "service": self.request.service,
            "version": self.request.version,
            "kind": artifact.kind,
            "base_version": artifact.base_version,
            "name": artifact.name,
            "source": source,
            "signature": signature,
            # the members were checked (bundle manifest or tar headers) before this record was written
            "members_verified": self.request.inspect_bundles,
            "staged_at": staged_at or now,
            "verified_at": now,
        })

    def delta_usable(self) -> str | None:
        """None when this host can build the release from the delta, else why not."""
        delta = self.request.delta
        if delta is None:
            return "no delta bundle is offered"
        current = current_version(self.layout)
        if current != delta.base_version:
            return f"the host runs {current or 'nothing'}, the delta needs {delta.base_version}"
        if not self._zstd:
            return "zstd is not installed on this host"
        return None

    # --------------------------------------------------------------- staging

    def stage(self, artifact: Artifact, *, verify_base: bool = False) -> dict[str, t.Any]:
        """Make sure artifact is cached and verified; return its entry for RV(artifacts)."""
        entry: dict[str, t.Any] = {"sha256": artifact.sha256, "kind": artifact.kind, "size": artifact.size,
                                   "path": self.layout.cache_path(artifact.sha256)}
        state = self.cached(artifact)
        if state == "ok":
            entry["action"] = "present"
            return entry
        if state == "refused":
            # the digest is the manifest's, so every source serves the same refused bytes: do not fetch them again
            raise StageError(f"{self.result.purged[-1]['reason']}; it was removed from the cache")
        if state == "corrupt":
            self.ops.warn(f"cached {artifact.kind} artifact {artifact.sha256} does not match its digest; staging it again")
            self.result.act(f"remove corrupt cached {artifact.kind} {artifact.sha256[:12]}")
            if not self.ops.check_mode:
                remove_path(self.layout.cache_path(artifact.sha256))
        if verify_base and artifact.kind == "delta":
            # the apply logic is only compiled when a delta is about to be staged
            from ansible_collections.fleetpatch.rollout.plugins.module_utils._archive import verify_release

            problems = verify_release(self.layout.release_path(t.cast(str, artifact.base_version)))
            if problems:
                raise _BaseProblem(f"base release {artifact.base_version} does not verify: {'; '.join(problems[:3])}")
        sources = self.sources(artifact)
        if not sources:
            raise StageError(f"{artifact.kind} artifact {artifact.sha256} is not cached and there is no edge_url or url to get it from")
        self.result.act(f"download {artifact.kind} {artifact.sha256[:12]} from {' then '.join(name for name, _url in sources)}")
        entry["action"] = "download"
        if self.ops.check_mode:
            entry["sources"] = [name for name, _url in sources]
            return entry
        transfer = self.fetch(artifact, sources)
        entry.update(transfer.as_dict())
        return entry

    def fetch(self, artifact: Artifact, sources: list[tuple[str, str]]) -> Transfer:
        # the transfer code (shared with patch_apply) is only compiled on a host that has something to download
        from ansible_collections.fleetpatch.rollout.plugins.module_utils._fetch import (
            DownloadFailed,
            FetchPolicy,
            FetchRefused,
            Refused,
            Transfer,
            download,
            part_path,
        )

        transfer = Transfer(sha256=artifact.sha256, kind=artifact.kind)
        verified: dict[str, t.Any] = {}

        def check(path: str) -> None:
            verified["signature"] = self._verify_signature(artifact, path)
            self._inspect(artifact, path)

        try:
            download(self.ops, cache_dir=self.layout.cache_dir, sha256=artifact.sha256, size=artifact.size, sources=sources,
                     policy=FetchPolicy(**self.request.fetch_settings), transfer=transfer, check=check)
        except FetchRefused as exc:
            raise StageError(str(exc)) from None
        except Refused as exc:
            raise StageError(f"{artifact.kind} artifact {artifact.sha256} has the right digest but is refused: {exc}; "
                             "nothing was cached") from None
        except DownloadFailed as exc:
            note = f"; {exc.kept} bytes kept in {part_path(self.layout.cache_dir, artifact.sha256)} to resume from" if exc.kept else ""
            raise StageError(f"could not stage {artifact.kind} artifact {artifact.sha256} ({artifact.name or 'unnamed'}): "
                             f"{exc}{note}") from None
        finally:
            self.result.add_transfer(transfer)
            if "edge" in transfer.corrupt:
                self.result.edge_refused = {"sha256": artifact.sha256, "reason": transfer.corrupt["edge"]}
            edge_errors = [error for error in transfer.errors if error.startswith("edge")]
            if edge_errors:
                self.result.edge_error = edge_errors[-1][:500]
        self._write_meta(artifact, source=transfer.source, signature=verified.get("signature"), staged_at=None)
        return transfer

    # --------------------------------------------------------------- the step

    def run(self) -> StageResult:
        request, result = self.request, self.result
        result.before = sorted(entry["sha256"] for entry in cached_entries(self.layout))
        if request.state == "verified":
            self.readiness()
        else:
            os.makedirs(self.layout.cache_dir, exist_ok=True)
            with cache_lock(self.layout, self.ops):
                self.present()
                if request.keep:
                    self.retention()
        result.after = sorted(set(result.before) - {entry["sha256"] for entry in result.removed}
                              | {entry["sha256"] for entry in result.artifacts if entry.get("action") == "download"
                                 or entry.get("action") == "present"})
        return result

    def _ready_with(self, entry: dict[str, t.Any]) -> None:
        self.result.ready = True
        self.result.staged = {key: entry[key] for key in ("sha256", "kind", "size", "path")}
        # what the pre-staging job records for a rollout's readiness gate: a signed copy that was verified against
        # allowed_signers (a verification that failed never gets here: the copy is refused)
        artifact = next((item for item in (self.request.full, self.request.delta) if item is not None and item.sha256 == entry["sha256"]), None)
        self.result.staged["signature_verified"] = bool(artifact is not None and artifact.signature and self.request.allowed_signers)

    def installed(self) -> bool:
        """The host already runs the target version: nothing to stage for it (the apply only re-verifies)."""
        if self.request.delta_mode == "both" or current_version_or_none(self.layout) != self.request.version:
            return False
        self.result.ready = True
        self.result.staged = {"installed": self.request.version, "path": self.layout.release_path(self.request.version)}
        return True

    def present(self) -> None:
        request, result = self.request, self.result
        full, delta = request.full, request.delta
        if self.installed():
            return
        if request.delta_mode == "both":
            result.artifacts.append(self.stage(full))
            if delta is not None:
                result.artifacts.append(self.stage(delta))
            self._ready_with(result.artifacts[0])
            return
        if request.delta_mode == "never" or delta is None:
            result.artifacts.append(self.stage(full))
            self._ready_with(result.artifacts[0])
            return
        # auto: the full artifact when it is here already, else the delta when this host can use it
        if self.cached(full) == "ok":
            result.artifacts.append(dict(self._entry(full), action="present"))
            self._ready_with(result.artifacts[0])
            return
        why_not = self.delta_usable()
        if why_not is None:
            try:
                entry = self.stage(delta, verify_base=True)
                result.artifacts.append(entry)
                self._ready_with(entry)
                return
            except (StageError, _BaseProblem) as exc:
                why_not = f"the delta bundle could not be staged: {exc}"
        result.fallback_reason = why_not
        entry = self.stage(full)
        result.artifacts.append(entry)
        self._ready_with(entry)

    def _entry(self, artifact: Artifact) -> dict[str, t.Any]:
        return {"sha256": artifact.sha256, "kind": artifact.kind, "size": artifact.size,
                "path": self.layout.cache_path(artifact.sha256)}

    def readiness(self) -> None:
        """state=verified: report whether the artifact the apply needs is cached and verified; never transfer."""
        request, result = self.request, self.result
        if self.installed():
            return
        candidates = [request.full]
        if request.delta is not None and request.delta_mode != "never":
            candidates.append(request.delta)
        reasons = []
        for artifact in candidates:
            if artifact.kind == "delta" and request.delta_mode == "auto":
                why_not = self.delta_usable()
                if why_not:
                    reasons.append(f"delta: {why_not}")
                    continue
            try:
                state = self.cached(artifact, thorough=True)
            except StageError as exc:
                reasons.append(str(exc))
                continue
            if state == "refused":
                reasons.append(f"{self.result.purged[-1]['reason']}; it was removed from the cache")
                continue
            if state == "ok":
                entry = dict(self._entry(artifact), action="present")
                result.artifacts.append(entry)
                self._ready_with(entry)
                return
            reasons.append(f"{artifact.kind} {artifact.sha256[:12]} is {'not cached' if state is None else state}")
        result.reason = "not staged: " + "; ".join(reasons)

    def retention(self) -> None:
        """Keep the artifacts of the newest `keep` versions of this service; never current or rollback ones."""
        request, result = self.request, self.result
        protect_versions, protect_digests = protected(self.layout)
        protect_versions.add(request.version)
        protect_digests.update(entry["sha256"] for entry in result.artifacts)
        entries = [entry for entry in cached_entries(self.layout) if entry.get("service") == request.service]
        if not any(entry.get("version") == request.version for entry in entries):
            # what this run stages counts as cached, in check mode too
            entries.append({"version": request.version, "sha256": "", "staged_at": self.ops.now()})
        for entry in plan_retention(entries, keep=request.keep, protect_versions=protect_versions,
                                    protect_digests=protect_digests):
            result.act(f"remove {entry.get('kind', 'full')} {entry['sha256'][:12]} ({entry.get('version')}) from the cache")
            result.removed.append({key: entry.get(key) for key in ("sha256", "version", "kind", "size")})
            if not self.ops.check_mode:
                remove_path(self.layout.cache_path(entry["sha256"]))
                remove_path(meta_path(self.layout, entry["sha256"]))


def _check_tar_members(path: str) -> None:
    """A plain release tarball's members, checked as the apply will check them (no escape, no device, no link out).

    A file that is not a tar archive at all is left to the apply, which refuses it before writing anything.
    """
    import tarfile

    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError):
        return
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._archive import validate_members

    validate_members(path, members)


class _BaseProblem(FleetpatchError):
    """The base release a delta needs does not verify."""


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def protected(layout: HostLayout) -> tuple[set[str], set[str]]:
    """Versions and digests retention must never remove: the current release and its rollback point."""
    versions: set[str] = set()
    digests: set[str] = set()
    try:
        state = read_host_state(layout)
    except ReleaseError:
        state = {"current_version": current_version_or_none(layout), "manifest": None}
    manifest = state.get("manifest") or {}
    refs = [{"version": state.get("current_version")}, manifest, manifest.get("previous") or {}]
    for ref in refs:
        version = ref.get("version")
        if isinstance(version, str) and version:
            versions.add(version)
            metadata = read_release_metadata(layout.release_path(version)) or {}
            for sha in (metadata.get("artifact_sha256"), (metadata.get("bundle") or {}).get("sha256")):
                if isinstance(sha, str):
                    digests.add(sha)
        if isinstance(ref.get("artifact_sha256"), str):
            digests.add(ref["artifact_sha256"])
    return versions, digests


def current_version_or_none(layout: HostLayout) -> str | None:
    try:
        return current_version(layout)
    except ReleaseError:
        return None


def plan_retention(
    entries: t.Iterable[t.Mapping[str, t.Any]], *, keep: int, protect_versions: t.Iterable[str],
    protect_digests: t.Iterable[str],
) -> list[t.Mapping[str, t.Any]]:
    """Cache entries to remove: all but those of the newest `keep` versions, protected ones always kept.

    Versions are ordered by version number, then by when they were staged.
    """
    protect_versions, protect_digests = set(protect_versions), set(protect_digests)
    by_version: dict[str, list[t.Mapping[str, t.Any]]] = {}
    for entry in entries:
        by_version.setdefault(str(entry.get("version")), []).append(entry)

    def order(version: str) -> tuple[t.Any, str]:
        return version_key(version), max(str(entry.get("staged_at") or "") for entry in by_version[version])

    newest = sorted(by_version, key=order, reverse=True)
    kept = set(newest[:keep]) if keep > 0 else set(newest)
    doomed = [entry for version in newest if version not in kept and version not in protect_versions
              for entry in by_version[version] if entry.get("sha256") not in protect_digests]
    return sorted(doomed, key=lambda entry: (version_key(str(entry.get("version"))), str(entry.get("sha256"))))


def run_stage(layout: HostLayout, request: StageRequest, ops: HostOps, *, zstd: str | None | bool = None,
              result: StageResult | None = None) -> StageResult:
    """One prestage step on one host (see the module for the contract); result collects what was done even when
    it fails."""
    stager = Stager(layout, request, ops, zstd=zstd, result=result)
    try:
        return stager.run()
    except OSError as exc:
        raise StageError(f"{layout.service}: filesystem error under {layout.root}: {exc}") from exc


# ------------------------------------------------------------------------------------------ report


def readiness_report(hosts: t.Mapping[str, t.Mapping[str, t.Any]]) -> dict[str, t.Any]:
    """Staged percent per region from per-host {region, result} (result: a prestage module result or None).

    A host is ready when its result says ready and did not fail; an unreachable or missing result is not.
    """
    regions: dict[str, dict[str, t.Any]] = {}
    not_ready: dict[str, str] = {}
    bytes_by_source: dict[str, int] = {}
    kinds: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    for host in sorted(hosts):
        info = hosts[host]
        region = str(info.get("region") or "(none)")
        result = info.get("result")
        bucket = regions.setdefault(region, {"hosts": 0, "ready": 0, "not_ready": []})
        bucket["hosts"] += 1
        if isinstance(result, t.Mapping):
            for name, count in (result.get("bytes_by_source") or {}).items():
                bytes_by_source[name] = bytes_by_source.get(name, 0) + int(count)
            if result.get("fallback_reason"):
                fallbacks[host] = str(result["fallback_reason"])
        ok = isinstance(result, t.Mapping) and result.get("ready") and not result.get("failed") and not result.get("unreachable")
        if ok:
            bucket["ready"] += 1
            staged = t.cast(t.Mapping[str, t.Any], result).get("staged") or {}
            kind = "installed" if staged.get("installed") else str(staged.get("kind") or "unknown")
            kinds[kind] = kinds.get(kind, 0) + 1
            continue
        bucket["not_ready"].append(host)
        if not isinstance(result, t.Mapping):
            not_ready[host] = "no prestage result (unreachable or not run)"
        else:
            not_ready[host] = str(result.get("reason") or result.get("msg") or "not staged").strip()[:500]
    for bucket in regions.values():
        bucket["percent"] = _percent(bucket["ready"], bucket["hosts"])
    total = sum(bucket["hosts"] for bucket in regions.values())
    ready = sum(bucket["ready"] for bucket in regions.values())
    return {
        "hosts": total,
        "ready": ready,
        "percent": _percent(ready, total),
        "regions": dict(sorted(regions.items())),
        "not_ready": not_ready,
        "bytes_by_source": dict(sorted(bytes_by_source.items())),
        "kinds": dict(sorted(kinds.items())),
        "fallbacks": fallbacks,
    }


def region_verdicts(
    report: t.Mapping[str, t.Any], nodes: t.Mapping[str, t.Mapping[str, t.Any]],
    edge_failures: t.Mapping[str, str] | None = None,
) -> dict[str, dict[str, t.Any]]:
    """One verdict per region: staged, staged_from_origin (every edge failed, the nodes fell back) or failed, with
    the reason and the line the report prints.

    nodes is the readiness_report input ({host: {region, result}}); edge_failures maps a region whose every edge
    failed to why (the edges' own results, or, without them, what the region's nodes saw from their edge).
    """
    verdicts: dict[str, dict[str, t.Any]] = {}
    for region, bucket in report["regions"].items():
        members = [host for host in sorted(nodes) if str(nodes[host].get("region") or "(none)") == region]
        results = [nodes[host].get("result") for host in members]
        results = [result for result in results if isinstance(result, t.Mapping)]
        fell_back = [host for host in members if isinstance(nodes[host].get("result"), t.Mapping)
                     and nodes[host]["result"].get("origin_fallback")]
        edge_errors = [str(result.get("edge_error")) for result in results if result.get("edge_error")]
        transferred = [result for result in results if result.get("transferred_bytes") or result.get("edge_error")]
        edges_failed = (edge_failures or {}).get(region)
        if not edges_failed and transferred and len(edge_errors) == len(transferred) and all(
                (result.get("bytes_by_source") or {}).get("edge", 0) == 0 for result in transferred):
            # no edge results (the rollout's readiness gate): every node that needed bytes found its edge failing
            edges_failed = edge_errors[0]
        refused = [host for host in members if isinstance(nodes[host].get("result"), t.Mapping) and nodes[host]["result"].get("edge_refused")]
        if bucket["not_ready"]:
            first = bucket["not_ready"][0]
            why = str(report["not_ready"].get(first, "not staged"))
            reason = (f"every edge failed ({edges_failed}); " if edges_failed else "") + (
                f"{len(bucket['not_ready'])} of {bucket['hosts']} nodes not staged ({first}: {why})")
            verdict = {"verdict": "failed", "reason": reason[:1000], "line": f"region {region}: failed: {reason}"[:1000]}
        elif edges_failed or fell_back:
            count = len(fell_back) or len([result for result in results if (result.get("bytes_by_source") or {}).get("origin")])
            reason = f"every edge failed ({edges_failed or 'the edge'}); {count} node{'s' if count != 1 else ''} fell back to the origin"
            verdict = {"verdict": "staged_from_origin", "reason": reason[:1000], "line": f"region {region}: {reason}"[:1000]}
        else:
            verdict = {"verdict": "staged", "reason": None, "line": f"region {region}: staged"}
        if refused:
            verdict["edge_refused"] = refused
            verdict["line"] += (f"; the edge served bytes that did not verify to {len(refused)} node(s) (discarded; the "
                                "edge's next prestage re-verifies and purges its copy)")
        verdicts[region] = verdict
    return verdicts


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 100.0


def render_report(report: t.Mapping[str, t.Any]) -> list[str]:
    lines = [f"staged {report['ready']}/{report['hosts']} hosts ({report['percent']}%)"]
    for region, bucket in report["regions"].items():
        line = f"  {region}: {bucket['ready']}/{bucket['hosts']} ({bucket['percent']}%)"
        if bucket["not_ready"]:
            shown = ", ".join(bucket["not_ready"][:5]) + (" ..." if len(bucket["not_ready"]) > 5 else "")
            line += f" not ready: {shown}"
        lines.append(line)
    if report.get("kinds"):
        lines.append("  staged: " + ", ".join(f"{kind} {count}" for kind, count in report["kinds"].items()))
    if report.get("bytes_by_source"):
        lines.append("  bytes moved: " + ", ".join(f"{name} {count}" for name, count in report["bytes_by_source"].items()))
    for verdict in (report.get("verdicts") or {}).values():
        if verdict["verdict"] != "staged" or verdict.get("edge_refused"):
            lines.append("  " + verdict["line"])
    return lines
