# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: patch bundles (build, delta, validation, apply, signatures). Not a public API.

A bundle is a gzip'd tar whose first member ``fleetpatch-bundle.json`` holds the build metadata and the manifest
of the release tree it produces (every file's sha256, size and mode, symlinks, directories, and the digest of
the whole tree). The other members are ``files/<path>`` (content sent whole) and, in a delta bundle,
``patches/<path>.zst`` (zstd ``--patch-from`` binary deltas against the base release's file). Nothing else is
allowed in a bundle: every member is checked against the manifest before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _tools
from ansible_collections.fleetpatch.rollout.plugins.module_utils._archive import (
    BUNDLE_METADATA,
    ArtifactPlan,
    DeltaNotApplicable,
    extract_into,
    inspect_tar,
    symlink_stays_inside,
    walk_release,
    write_member,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import RELEASE_METADATA, ReleaseError, check_name, check_sha256
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import CHUNK_SIZE, canonical_json
from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import PATCH_ID_RE
from ansible_collections.fleetpatch.rollout.plugins.module_utils._tools import Runner, run_tool
from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import SIGNATURE_BEGIN, SIGNATURE_NAMESPACE, TrustError, verify_artifact_signature

__all__ = [
    "BUNDLE_METADATA",
    "BuildInfo",
    "BundleError",
    "Materialized",
    "apply_bundle",
    "built_at_from",
    "bundle_name",
    "delta_name",
    "inspect_bundle",
    "newest_mtime",
    "scan_tree",
    "sign_file",
    "tree_digest",
    "verify_signature",
    "write_delta_bundle",
    "write_full_bundle",
    "zstd_version",
]

BUNDLE_FORMAT = "fleetpatch-bundle"
BUNDLE_SCHEMA = 1
FILES_DIR = "files/"
PATCHES_DIR = "patches/"
PATCH_SUFFIX = ".zst"
KINDS = ("full", "delta")
# release: a complete release build that stands on its own; patch: a patch-only build made from base_version's
# tree with a targeted change (a hotfix), installable only as the successor of that base.
TARGET_TAGS = ("release", "patch")
OPS = ("file", "patch", "keep")
METADATA_LIMIT = 64 * 1024 * 1024
# smaller changed files are shipped whole: a binary delta would not save anything worth a zstd run
MIN_PATCH_SIZE = 4096
ZSTD_LEVEL = 19
# zstd decompresses windows up to 2**27 without --long; larger bases need the window given on both sides
ZSTD_DEFAULT_WINDOW_LOG = 27
_MODE_RE = re.compile(r"^0[0-7]{3}$")
_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,512}$")


class BundleError(ReleaseError):
    """A bundle that must not be built, trusted or unpacked; str() is the message for the operator."""


def normalize_mode(mode: int) -> int:
    """The mode a release file gets on a host (what _release writes): owner rw always, no group/other write."""
    return (mode & 0o755) | 0o600


def format_mode(mode: int) -> str:
    return f"{normalize_mode(mode):04o}"


def tree_digest(files: t.Mapping[str, t.Mapping[str, t.Any]], links: t.Mapping[str, str], dirs: t.Iterable[str]) -> str:
    """sha256 of a release tree: every file's path, content digest and mode, every symlink, every directory."""
    document = {
        "files": {path: [entry["sha256"], entry["mode"]] for path, entry in sorted(files.items())},
        "links": dict(sorted(links.items())),
        "dirs": sorted(set(dirs)),
    }
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------- trees


@dataclasses.dataclass
class Tree:
    """A release tree on disk: files {path: {sha256, size, mode}}, links {path: target}, dirs [path]."""

    root: str
    files: dict[str, dict[str, t.Any]]
    links: dict[str, str]
    dirs: list[str]

    @property
    def digest(self) -> str:
        return tree_digest(self.files, self.links, self.dirs)

    @property
    def size(self) -> int:
        return sum(entry["size"] for entry in self.files.values())

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def scan_tree(root: str) -> Tree:
    """Describe a release directory; refuse special files and symlinks that leave it.

    A top-level .fleetpatch-release.json (an installed release's own metadata) is not part of the tree.
    """
    if os.path.islink(root) or not os.path.isdir(root):
        raise BundleError(f"release directory {root} does not exist")
    files: dict[str, dict[str, t.Any]] = {}
    links: dict[str, str] = {}
    dirs: list[str] = []
    kinds: dict[str, str] = {}
    for rel, full, info in walk_release(root):
        if stat.S_ISLNK(info.st_mode):
            links[rel] = os.readlink(full)
            kinds[rel] = "symlink"
        elif stat.S_ISREG(info.st_mode):
            digest, size = _hash_file(full)
            files[rel] = {"sha256": digest, "size": size, "mode": format_mode(info.st_mode)}
            kinds[rel] = "file"
        elif stat.S_ISDIR(info.st_mode):
            dirs.append(rel)
            kinds[rel] = "dir"
        else:
            raise BundleError(f"{full} is a special file (device, fifo or socket); a release holds only files, "
                              "directories and symlinks")
    for rel, target in links.items():
        if not symlink_stays_inside(rel, target, kinds):
            raise BundleError(f"symlink {rel} in {root} points outside the release tree ({target})")
    return Tree(root=root, files=files, links=links, dirs=dirs)


class Materialized:
    """A release source (directory, release tarball or full bundle) as a directory, removed on close()."""

    def __init__(self, source: str, *, scratch_dir: str | None = None) -> None:
        self.source = source
        self._tmp: str | None = None
        if os.path.isdir(source):
            self.tree = scan_tree(source)
            return
        if not os.path.isfile(source):
            raise BundleError(f"release source {source} does not exist")
        plan = inspect_tar(source, bundle=inspect_bundle)
        self._tmp = tempfile.mkdtemp(prefix=".fleetpatch-source.tmp-", dir=scratch_dir)
        try:
            if plan.bundle is not None:
                if plan.bundle.kind != "full":
                    raise BundleError(f"{source} is a delta bundle; use its full bundle or the release itself as a source")
                apply_bundle(plan.bundle, self._tmp, service=plan.bundle.metadata["service"],
                             version=plan.bundle.metadata["target_version"], sha256=None)
            else:
                extract_into(self._tmp, source, plan)
            self.tree = scan_tree(self._tmp)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Materialized:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- build


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    """Who built what from what: embedded in every bundle."""

    patch_id: str
    service: str
    target_version: str
    target_tag: str = "release"
    base_version: str | None = None
    source_commit: str | None = None
    toolchain: str | None = None
    approver: str | None = None
    built_at: str = ""

    def validate(self) -> BuildInfo:
        if not isinstance(self.patch_id, str) or not PATCH_ID_RE.match(self.patch_id):
            raise BundleError(f"patch_id {self.patch_id!r} does not match {PATCH_ID_RE.pattern}")
        try:
            check_name(self.service, what="service")
            check_name(self.target_version, what="target_version")
            if self.base_version is not None:
                check_name(self.base_version, what="base_version")
        except ReleaseError as exc:
            raise BundleError(str(exc)) from None
        if self.target_tag not in TARGET_TAGS:
            raise BundleError(f"target_tag must be one of {', '.join(TARGET_TAGS)}, got {self.target_tag!r}")
        if self.target_tag == "patch" and not self.base_version:
            raise BundleError("target_tag patch (a patch-only build) needs the base_version it was built from")
        for name in ("source_commit", "toolchain", "approver", "built_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _TEXT_RE.match(value)):
                raise BundleError(f"{name} must be one line of at most 512 printable characters")
        return self

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


def built_at_from(epoch: float | None) -> str:
    moment = datetime.datetime.fromtimestamp(int(epoch or 0), tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def newest_mtime(root: str) -> float:
    """Reproducible build time: the newest mtime in the source tree (SOURCE_DATE_EPOCH overrides it)."""
    newest = 0.0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def zstd_version(zstd: str, runner: Runner = run_tool) -> str | None:
    """'1.5.4' when zstd runs and supports --patch-from (1.4.5 and later), else None."""
    rc, out, err = runner([zstd, "--version"])
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out + err)
    if rc != 0 or not match:
        return None
    if tuple(int(part) for part in match.groups()) < (1, 4, 5):
        return None
    return ".".join(match.groups())


def window_log(*sizes: int) -> int:
    return max(10, math.ceil(math.log2(max((*sizes, 1)) + 1)))


def _zstd_long(wlog: int) -> list[str]:
    return [f"--long={wlog}"] if wlog > ZSTD_DEFAULT_WINDOW_LOG else []


class _Writer:
    """A deterministic gzip'd tar: fixed mtimes and owners, gzip header without name or time."""

    def __init__(self, path: str, *, mtime: int) -> None:
        self.mtime = mtime
        self._raw = open(path, "wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0)
        self._tar = tarfile.open(fileobj=self._gzip, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, name: str, size: int, stream: t.BinaryIO) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self.mtime
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, stream)

    def add_bytes(self, name: str, data: bytes) -> None:
        import io  # noqa: PLC0415 - only the metadata member is built in memory

        self.add(name, len(data), io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._gzip.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()


def _metadata(info: BuildInfo, kind: str, tree: Tree, files: dict[str, dict[str, t.Any]]) -> dict[str, t.Any]:
    document: dict[str, t.Any] = {
        "format": BUNDLE_FORMAT,
        "schema": BUNDLE_SCHEMA,
        "kind": kind,
    }
    document.update(info.as_dict())
    document.update(
        tree_sha256=tree.digest,
        unpacked_size=tree.size,
        files=files,
        links=dict(sorted(tree.links.items())),
        dirs=sorted(tree.dirs),
    )
    return document


def write_full_bundle(tree: Tree, info: BuildInfo, output: str, *, mtime: int) -> dict[str, t.Any]:
    """Write a full bundle of tree to output (the caller renames it into place); return its metadata."""
    files = {path: dict(entry, op="file") for path, entry in sorted(tree.files.items())}
    metadata = _metadata(info, "full", tree, files)
    writer = _Writer(output, mtime=mtime)
    try:
        writer.add_bytes(BUNDLE_METADATA, canonical_json(metadata).encode("utf-8"))
        for path, entry in files.items():
            with open(tree.path(path), "rb") as stream:
                writer.add(FILES_DIR + path, entry["size"], stream)
    finally:
        writer.close()
    return metadata


def write_delta_bundle(
    tree: Tree, base: Tree, info: BuildInfo, output: str, *, mtime: int, full_sha256: str, full_size: int,
    zstd: str | None, level: int = ZSTD_LEVEL, runner: Runner = run_tool, scratch_dir: str | None = None,
) -> dict[str, t.Any]:
    """Write a delta bundle: unchanged files are kept from the base, changed ones patched or sent whole."""
    if not info.base_version:
        raise BundleError("a delta bundle needs base_version")
    tool = zstd_version(zstd, runner) if zstd else None
    scratch = tempfile.mkdtemp(prefix=".fleetpatch-delta.tmp-", dir=scratch_dir)
    try:
        files: dict[str, dict[str, t.Any]] = {}
        patches: dict[str, str] = {}
        for index, (path, entry) in enumerate(sorted(tree.files.items())):
            old = base.files.get(path)
            if old is not None and old["sha256"] == entry["sha256"]:
                files[path] = dict(entry, op="keep", base_sha256=old["sha256"])
                continue
            if old is not None and tool and entry["size"] >= MIN_PATCH_SIZE and old["size"] > 0:
                wlog = window_log(old["size"], entry["size"])
                patch = os.path.join(scratch, f"{index}.zst")
                argv = [t.cast(str, zstd), "-q", "-f", f"-{min(level, 19)}", *_zstd_long(wlog),
                        f"--patch-from={base.path(path)}", tree.path(path), "-o", patch]
                rc, out, err = runner(argv)
                if rc != 0:
                    raise BundleError(f"zstd --patch-from failed for {path} (rc={rc}): {(err or out).strip()[-2000:]}")
                patch_size = os.path.getsize(patch)
                if patch_size < entry["size"] * 0.9:
                    extra = {"window_log": wlog} if wlog > ZSTD_DEFAULT_WINDOW_LOG else {}
                    files[path] = dict(entry, op="patch", base_sha256=old["sha256"], patch_size=patch_size, **extra)
                    patches[path] = patch
                    continue
            files[path] = dict(entry, op="file")
        metadata = _metadata(info, "delta", tree, files)
        metadata["delta"] = {
            "base_version": info.base_version,
            "base_tree_sha256": base.digest,
            "full_sha256": full_sha256,
            "full_size": full_size,
            "tool": f"zstd {tool}" if tool else None,
        }
        writer = _Writer(output, mtime=mtime)
        try:
            writer.add_bytes(BUNDLE_METADATA, canonical_json(metadata).encode("utf-8"))
            for path, entry in files.items():
                if entry["op"] == "file":
                    with open(tree.path(path), "rb") as stream:
                        writer.add(FILES_DIR + path, entry["size"], stream)
            for path, patch in patches.items():
                with open(patch, "rb") as stream:
                    writer.add(PATCHES_DIR + path + PATCH_SUFFIX, os.path.getsize(patch), stream)
        finally:
            writer.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return metadata


# ------------------------------------------------------------------------------------------- inspect


@dataclasses.dataclass(frozen=True)
class BundlePlan:
    """A bundle whose metadata and every member were validated; apply_bundle() builds its tree."""

    path: str
    metadata: dict[str, t.Any]
    members: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def base_version(self) -> str | None:
        return self.metadata.get("base_version") if self.kind == "delta" else None

    @property
    def needs_zstd(self) -> bool:
        return any(entry["op"] == "patch" for entry in self.metadata["files"].values())

    @property
    def transfer_ops(self) -> dict[str, int]:
        counts = {op: 0 for op in OPS}
        for entry in self.metadata["files"].values():
            counts[entry["op"]] += 1
        return counts


def _refuse(bundle: str, what: str) -> BundleError:
    return BundleError(f"refusing bundle {bundle}: {what}")


def path_problem(name: str) -> str | None:
    """Why a member or manifest name must not be used (same rules as plain release tarballs), or None."""
    if not name or "\x00" in name:
        return "has an empty or invalid name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "has an absolute path"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "leaves the release tree ('..')"
    if "/".join(parts) != name:
        return "is not a normalised relative path"
    return None


def _manifest_path(bundle: str, name: t.Any, what: str) -> str:
    if not isinstance(name, str):
        raise _refuse(bundle, f"{what} {name!r} is not a string")
    problem = path_problem(name)
    if problem:
        raise _refuse(bundle, f"{what} {name!r} {problem}")
    if name == RELEASE_METADATA:
        raise _refuse(bundle, f"{what} {name!r} uses the reserved name {RELEASE_METADATA}")
    return name


def validate_metadata(bundle: str, metadata: t.Any) -> dict[str, t.Any]:
    """Check a bundle's metadata document: fields, every path, symlinks staying inside the tree."""
    if not isinstance(metadata, dict) or metadata.get("format") != BUNDLE_FORMAT:
        raise _refuse(bundle, f"{BUNDLE_METADATA} is not a {BUNDLE_FORMAT} document")
    if metadata.get("schema") != BUNDLE_SCHEMA:
        raise _refuse(bundle, f"schema {metadata.get('schema')!r} is not supported (expected {BUNDLE_SCHEMA})")
    if metadata.get("kind") not in KINDS:
        raise _refuse(bundle, f"kind {metadata.get('kind')!r} is not one of {', '.join(KINDS)}")
    try:
        BuildInfo(**{field.name: metadata.get(field.name) for field in dataclasses.fields(BuildInfo)}).validate()
    except (BundleError, ReleaseError, TypeError) as exc:
        raise _refuse(bundle, f"metadata: {exc}") from None
    files, links, dirs = metadata.get("files"), metadata.get("links"), metadata.get("dirs")
    if not isinstance(files, dict) or not isinstance(links, dict) or not isinstance(dirs, list):
        raise _refuse(bundle, "files, links and dirs are missing or malformed")
    kinds: dict[str, str] = {}
    for name in dirs:
        kinds[_manifest_path(bundle, name, "directory")] = "dir"
    for name, entry in files.items():
        path = _manifest_path(bundle, name, "file")
        if path in kinds:
            raise _refuse(bundle, f"{path!r} is listed twice")
        if not isinstance(entry, dict) or entry.get("op") not in OPS or not _MODE_RE.match(str(entry.get("mode"))):
            raise _refuse(bundle, f"file {path!r} has a malformed entry")
        try:
            check_sha256(entry.get("sha256"))
            if entry["op"] != "file":
                check_sha256(entry.get("base_sha256"))
        except ReleaseError:
            raise _refuse(bundle, f"file {path!r} has a malformed digest") from None
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _refuse(bundle, f"file {path!r} has a malformed size")
        if entry["op"] != "file" and metadata["kind"] != "delta":
            raise _refuse(bundle, f"file {path!r} refers to a base release, but this is a full bundle")
        kinds[path] = "file"
    for name, target in links.items():
        path = _manifest_path(bundle, name, "symlink")
        if path in kinds:
            raise _refuse(bundle, f"{path!r} is listed twice")
        if not isinstance(target, str) or not target:
            raise _refuse(bundle, f"symlink {path!r} has no target")
        kinds[path] = "symlink"
    for path, kind in kinds.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if kinds.get(parent, "dir") != "dir":
                raise _refuse(bundle, f"{path!r} lies inside {parent!r}, which is a {kinds[parent]}")
        if kind == "symlink" and not symlink_stays_inside(path, links[path], kinds):
            raise _refuse(bundle, f"symlink {path!r} points outside the release tree ({links[path]})")
    if metadata["kind"] == "delta":
        delta = metadata.get("delta")
        if not isinstance(delta, dict) or delta.get("base_version") != metadata.get("base_version"):
            raise _refuse(bundle, "a delta bundle needs a delta section naming its base_version")
        try:
            check_sha256(delta.get("full_sha256"))
            check_sha256(delta.get("base_tree_sha256"))
        except ReleaseError:
            raise _refuse(bundle, "the delta section has malformed digests") from None
    try:
        check_sha256(metadata.get("tree_sha256"))
    except ReleaseError:
        raise _refuse(bundle, "tree_sha256 is malformed") from None
    if tree_digest(files, links, dirs) != metadata["tree_sha256"]:
        raise _refuse(bundle, "its manifest does not match its own tree_sha256")
    return metadata


def _expected_members(metadata: dict[str, t.Any]) -> dict[str, tuple[str, str, int | None]]:
    """member name -> (op, path, size when known)."""
    expected: dict[str, tuple[str, str, int | None]] = {}
    for path, entry in metadata["files"].items():
        if entry["op"] == "file":
            expected[FILES_DIR + path] = ("file", path, entry["size"])
        elif entry["op"] == "patch":
            expected[PATCHES_DIR + path + PATCH_SUFFIX] = ("patch", path, None)
    return expected


def inspect_bundle(path: str) -> ArtifactPlan:
    """Read a bundle's metadata and check every member against it; nothing is written."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != BUNDLE_METADATA or not first.isreg():
                raise _refuse(path, f"its first member is not {BUNDLE_METADATA}")
            if first.size > METADATA_LIMIT:
                raise _refuse(path, f"{BUNDLE_METADATA} is larger than {METADATA_LIMIT} bytes")
            stream = tar.extractfile(first)
            try:
                metadata = json.loads(t.cast(t.BinaryIO, stream).read().decode("utf-8"))
            except ValueError as exc:
                raise _refuse(path, f"{BUNDLE_METADATA} is not valid JSON: {exc}") from None
            metadata = validate_metadata(path, metadata)
            expected = _expected_members(metadata)
            seen: list[str] = []
            for index, member in enumerate(tar):
                if index == 0:
                    continue
                name = member.name
                problem = path_problem(name)
                if problem:
                    raise _refuse(path, f"member {name!r} {problem}")
                if member.ischr() or member.isblk():
                    raise _refuse(path, f"member {name!r} is a device file")
                if member.issym() or member.islnk():
                    raise _refuse(path, f"member {name!r} is a link ({member.linkname}); links are manifest entries")
                if not member.isreg():
                    raise _refuse(path, f"member {name!r} is not a regular file")
                if name not in expected:
                    raise _refuse(path, f"member {name!r} is not in its signed manifest")
                if name in seen:
                    raise _refuse(path, f"member {name!r} appears more than once")
                size = expected[name][2]
                if size is not None and member.size != size:
                    raise _refuse(path, f"member {name!r} is {member.size} bytes, its manifest says {size}")
                seen.append(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"cannot read bundle {path}: {exc}") from exc
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise _refuse(path, f"members listed in its manifest are missing: {', '.join(missing[:5])}")
    plan = BundlePlan(path=path, metadata=metadata, members=tuple(seen))
    return ArtifactPlan(artifact=path, entries=(), total_size=int(metadata.get("unpacked_size") or 0), bundle=plan)


def read_bundle_metadata(path: str) -> dict[str, t.Any] | None:
    """The validated metadata of a bundle, or None when path is not a bundle (a plain tarball or not a tar)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != BUNDLE_METADATA:
                return None
    except (tarfile.TarError, EOFError, OSError):
        return None
    return t.cast(BundlePlan, inspect_bundle(path).bundle).metadata


# ------------------------------------------------------------------------------------------- apply


def _copy_verified(source: str, dest: str, mode: int, expected: str) -> str:
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        digest = write_member(dest, handle, mode)
    if digest != expected:
        os.unlink(dest)
    return digest


def _delta_base(plan: BundlePlan, *, releases_dir: str | None, zstd: str | None) -> tuple[str, str | None]:
    """(the installed base release a delta builds on, the zstd to patch with); DeltaNotApplicable when one is missing."""
    base_version = check_name(plan.metadata["base_version"], what="base_version")
    base_dir = os.path.join(releases_dir or "", base_version)
    if not releases_dir or os.path.islink(base_dir) or not os.path.isdir(base_dir):
        raise DeltaNotApplicable(f"delta bundle {plan.path} needs release {base_version}, which is not installed here")
    if plan.needs_zstd:
        zstd = zstd or _tools.find_tool("zstd")
        if not zstd:
            raise DeltaNotApplicable(f"delta bundle {plan.path} holds zstd patches and zstd is not installed on this host")
    return base_dir, zstd


def _apply_patch(plan: BundlePlan, *, path: str, patch: str, target: str, base_dir: str, zstd: str | None, runner: Runner) -> str:
    """Rebuild one file from its base and a zstd patch; its sha256 (checked against the manifest)."""
    metadata = plan.metadata
    entry = metadata["files"][path]
    base_file = os.path.join(base_dir, path)
    digest = _hash_file(base_file)[0] if os.path.isfile(base_file) and not os.path.islink(base_file) else None
    if digest != entry["base_sha256"]:
        raise DeltaNotApplicable(f"delta bundle {plan.path}: base file {path} of release "
                                 f"{metadata['base_version']} is missing or differs from the one the delta was made against")
    argv = [t.cast(str, zstd), "-d", "-q", "-f", *_zstd_long(int(entry.get("window_log") or 0)),
            f"--patch-from={base_file}", patch, "-o", target]
    rc, out, err = runner(argv)
    os.unlink(patch)
    if rc != 0:
        raise DeltaNotApplicable(f"zstd could not apply the patch of {path} (rc={rc}): {(err or out).strip()[-500:]}")
    os.chmod(target, normalize_mode(int(entry["mode"], 8)))
    written = _hash_file(target)[0]
    if written != entry["sha256"]:
        raise DeltaNotApplicable(f"delta bundle {plan.path}: patched {path} does not match its manifest digest")
    return written


def _unpack_members(plan: BundlePlan, dest: str, *, base_dir: str, zstd: str | None, runner: Runner) -> dict[str, str]:
    """Write every file the bundle carries (whole, or patched against the base); {path: sha256}."""
    entries: dict[str, dict[str, t.Any]] = plan.metadata["files"]
    expected = _expected_members(plan.metadata)
    files: dict[str, str] = {}
    scratch = tempfile.mkdtemp(prefix=".patches.tmp-", dir=os.path.dirname(os.path.normpath(dest)))
    try:
        with tarfile.open(plan.path, "r:*") as tar:
            members = iter(tar)
            next(members)  # the metadata, validated by inspect_bundle
            for member, name in zip(members, plan.members):
                if member.name != name:
                    raise BundleError(f"bundle {plan.path} changed while it was unpacked")
                op, path, _size = expected[name]
                entry = entries[path]
                source = tar.extractfile(member)
                if source is None:
                    raise BundleError(f"cannot read member {name!r} of {plan.path}")
                target = os.path.join(dest, path)
                with source:
                    if op == "file":
                        files[path] = write_member(target, source, int(entry["mode"], 8))
                        if files[path] != entry["sha256"]:
                            raise BundleError(f"bundle {plan.path}: member {name!r} does not match its manifest digest")
                        continue
                    patch = os.path.join(scratch, "patch.zst")
                    write_member(patch, source, 0o600)
                files[path] = _apply_patch(plan, path=path, patch=patch, target=target, base_dir=base_dir, zstd=zstd, runner=runner)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"cannot unpack bundle {plan.path}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files


def _copy_kept(plan: BundlePlan, dest: str, *, base_dir: str, files: dict[str, str]) -> None:
    """Copy the files a delta keeps from the base release into files, each checked against its base digest."""
    for path, entry in plan.metadata["files"].items():
        if entry["op"] != "keep":
            continue
        base_file = os.path.join(base_dir, path)
        try:
            files[path] = _copy_verified(base_file, os.path.join(dest, path), int(entry["mode"], 8), entry["base_sha256"])
        except OSError as exc:
            raise DeltaNotApplicable(f"delta bundle {plan.path}: base file {path} cannot be read: {exc}") from exc
        if files[path] != entry["base_sha256"]:
            raise DeltaNotApplicable(f"delta bundle {plan.path}: base file {path} of release {plan.metadata['base_version']} "
                                     "differs from the one the delta was made against")


def _release_record(plan: BundlePlan, *, sha256: str | None, tree_sha256: str) -> dict[str, t.Any]:
    """What the release metadata says about the bundle it was built from."""
    metadata = plan.metadata
    record: dict[str, t.Any] = {
        "tree_sha256": tree_sha256,
        "bundle": {
            "kind": plan.kind,
            "sha256": sha256,
            "patch_id": metadata["patch_id"],
            "target_tag": metadata["target_tag"],
            "base_version": metadata.get("base_version"),
            "source_commit": metadata.get("source_commit"),
            "approver": metadata.get("approver"),
            "built_at": metadata.get("built_at"),
        },
    }
    if plan.kind == "delta":
        # the same tree as the full bundle, so the release is recorded under the full bundle's digest
        record["artifact_sha256"] = metadata["delta"]["full_sha256"]
    return record


def apply_bundle(
    plan: BundlePlan, dest: str, *, service: str, version: str, sha256: str | None, releases_dir: str | None = None,
    zstd: str | None = None, runner: Runner = run_tool,
) -> tuple[dict[str, str], dict[str, str], dict[str, t.Any]]:
    """Build a bundle's release tree in the empty directory dest.

    Returns (files {path: sha256}, links, extra release metadata). A delta takes unchanged files from
    releases_dir/<base_version> and raises DeltaNotApplicable when that base is missing or differs, when zstd is
    missing, or when the result does not have the full tree's digest: the caller then uses the full bundle.
    """
    metadata = plan.metadata
    if metadata["service"] != service or metadata["target_version"] != version:
        raise BundleError(
            f"bundle {plan.path} builds {metadata['service']} {metadata['target_version']}, not {service} {version}"
        )
    delta = plan.kind == "delta"
    base_dir = ""
    if delta:
        base_dir, zstd = _delta_base(plan, releases_dir=releases_dir, zstd=zstd)
    entries: dict[str, dict[str, t.Any]] = metadata["files"]
    for directory in metadata["dirs"]:
        os.makedirs(os.path.join(dest, directory), mode=0o755, exist_ok=True)
    for path in entries:
        os.makedirs(os.path.dirname(os.path.join(dest, path)), mode=0o755, exist_ok=True)
    files = _unpack_members(plan, dest, base_dir=base_dir, zstd=zstd, runner=runner)
    _copy_kept(plan, dest, base_dir=base_dir, files=files)
    for path, link_target in metadata["links"].items():
        os.symlink(link_target, os.path.join(dest, path))
    written = {path: {"sha256": files.get(path), "mode": format_mode(os.lstat(os.path.join(dest, path)).st_mode)}
               for path in entries}
    result = tree_digest(written, metadata["links"], metadata["dirs"])
    if result != metadata["tree_sha256"]:
        error = DeltaNotApplicable if delta else BundleError
        raise error(f"bundle {plan.path}: the unpacked tree has digest {result}, its manifest says {metadata['tree_sha256']}")
    return files, dict(metadata["links"]), _release_record(plan, sha256=sha256, tree_sha256=result)


# ------------------------------------------------------------------------------------------- signatures


def check_signature_text(signature: t.Any) -> str:
    if not isinstance(signature, str) or SIGNATURE_BEGIN not in signature:
        raise BundleError(f"signature is not an armored SSH signature (it must contain {SIGNATURE_BEGIN})")
    return signature.strip() + "\n"


def sign_file(path: str, *, key: str, namespace: str = SIGNATURE_NAMESPACE, ssh_keygen: str | None = None,
              runner: Runner = run_tool) -> str:
    """Detached ``ssh-keygen -Y sign`` signature of a file's bytes, as armored text."""
    ssh_keygen = ssh_keygen or _tools.find_tool("ssh-keygen")
    if not ssh_keygen:
        raise BundleError("signing needs ssh-keygen (OpenSSH client), which is not installed here")
    if not os.path.isfile(key):
        raise BundleError(f"signing key {key} does not exist")
    rc, out, err = runner([ssh_keygen, "-q", "-Y", "sign", "-f", key, "-n", namespace], stdin_path=path)
    if rc != 0 or SIGNATURE_BEGIN not in out:
        raise BundleError(f"ssh-keygen -Y sign failed (rc={rc}): {err.strip()[-1000:]}")
    return out[out.index(SIGNATURE_BEGIN):].strip() + "\n"


def verify_signature(
    path: str, *, signature: str, allowed_signers: str, identity: str | None = None,
    namespace: str = SIGNATURE_NAMESPACE, runner: Runner = run_tool, scratch_dir: str | None = None,
) -> str:
    """Verify a detached SSH signature of path against allowed signers (file content); return the principal.

    One verifier for every path that trusts a file (bundles, pre-staging, the apply step): _trust's, which names the key
    that signed when it is not trusted.
    """
    try:
        return verify_artifact_signature(path, signature=signature, allowed_signers=allowed_signers, identity=identity,
                                         what=os.path.basename(path) or path, namespace=namespace, runner=runner,
                                         scratch_dir=scratch_dir)["principal"]
    except TrustError as exc:
        raise BundleError(str(exc)) from None


# ------------------------------------------------------------------------------------------- names


def bundle_name(service: str, version: str) -> str:
    return f"{service}-{version}.bundle.tar.gz"


def delta_name(service: str, base_version: str, version: str) -> str:
    return f"{service}-{base_version}-to-{version}.delta.tar.gz"
