# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: release archives and the trees they unpack into (host side). Not a public API.

Tar member validation, safe extraction and release tree verification, shared by plain release tarballs
(``_release``) and fleetpatch bundles (``_bundle``): both build on this module, so neither imports the other to
unpack or verify a tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import RELEASE_METADATA, SHA256_PATTERN, ReleaseError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import CHUNK_SIZE, fsync_directory, read_json, sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._record import Record

if t.TYPE_CHECKING:
    import tarfile

__all__ = [
    "ArtifactPlan",
    "BUNDLE_METADATA",
    "DeltaNotApplicable",
    "extract_into",
    "inspect_release",
    "inspect_tar",
    "symlink_stays_inside",
    "validate_members",
    "verify_release",
    "walk_release",
    "write_member",
]

# first member of a fleetpatch bundle (plugins/module_utils/_bundle.py); a plain tarball never starts with it
BUNDLE_METADATA = "fleetpatch-bundle.json"


class DeltaNotApplicable(ReleaseError):
    """A delta bundle cannot build its release on this host (base missing or different, no zstd): use the full bundle."""


# ------------------------------------------------------------------------------------------- members


class Entry(Record):
    """One validated tar member. kind: skip (the archive root), dir, file, hardlink, symlink."""

    __slots__ = ("name", "kind", "path", "mode", "size", "target")
    name: str
    kind: str
    path: str
    mode: int
    size: int
    target: str

    def __init__(self, name: str, kind: str, path: str = "", mode: int = 0o644, size: int = 0, target: str = "") -> None:
        self._set(name=name, kind=kind, path=path, mode=mode, size=size, target=target)


class ArtifactPlan(Record):
    """Every member of an artifact, validated, in archive order; bundle: a fleetpatch bundle (_bundle.BundlePlan)
    instead of a plain release tarball."""

    __slots__ = ("artifact", "entries", "total_size", "bundle")
    artifact: str
    entries: tuple[Entry, ...]
    total_size: int
    bundle: t.Any

    def __init__(self, artifact: str, entries: tuple[Entry, ...], total_size: int, bundle: t.Any = None) -> None:
        self._set(artifact=artifact, entries=entries, total_size=total_size, bundle=bundle)


def _refuse(artifact: str, member: str, reason: str) -> ReleaseError:
    return ReleaseError(f"refusing to unpack {artifact}: member {member!r} {reason}")


def _member_path(artifact: str, name: str) -> str:
    """Normalised relative path of a member name; '' for the archive root itself."""
    if not name or "\x00" in name:
        raise _refuse(artifact, name, "has an empty or invalid name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise _refuse(artifact, name, "has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(artifact, name, "leaves the release tree ('..')")
    return "/".join(parts)


def symlink_stays_inside(path: str, target: str, kinds: t.Mapping[str, str]) -> bool:
    """Resolve target relative to the link's directory, refusing to walk through another symlink."""
    if not target or target.startswith("/"):
        return False
    parts = path.split("/")[:-1]
    components = target.split("/")
    for index, component in enumerate(components):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                return False
            parts.pop()
            continue
        parts.append(component)
        # a symlink in the middle would make the lexical answer wrong
        if index < len(components) - 1 and kinds.get("/".join(parts)) == "symlink":
            return False
    return True


def validate_members(artifact: str, members: t.Iterable[tarfile.TarInfo]) -> ArtifactPlan:
    """Check every member before anything is written; raise ReleaseError naming the first bad one."""
    entries: list[Entry] = []
    kinds: dict[str, str] = {}
    total = 0
    for member in members:
        path = _member_path(artifact, member.name)
        if not path:
            if not member.isdir():
                raise _refuse(artifact, member.name, "is not a directory but names the release root")
            entries.append(Entry(name=member.name, kind="skip"))
            continue
        if path == RELEASE_METADATA:
            raise _refuse(artifact, member.name, f"uses the reserved name {RELEASE_METADATA}")
        if member.isreg():
            kind = "file"
        elif member.isdir():
            kind = "dir"
        elif member.issym():
            kind = "symlink"
        elif member.islnk():
            kind = "hardlink"
        elif member.ischr() or member.isblk():
            raise _refuse(artifact, member.name, "is a device file")
        elif member.isfifo():
            raise _refuse(artifact, member.name, "is a fifo")
        else:
            raise _refuse(artifact, member.name, "has an unsupported member type")
        if path in kinds and not (kind == "dir" and kinds[path] == "dir"):
            raise _refuse(artifact, member.name, "appears more than once")
        target = ""
        if kind == "hardlink":
            try:
                target = _member_path(artifact, member.linkname)
            except ReleaseError:
                target = ""
            if not target:
                raise _refuse(artifact, member.name, f"is a hardlink pointing outside the release tree ({member.linkname})")
            if kinds.get(target) != "file":
                raise _refuse(artifact, member.name, f"is a hardlink to {member.linkname!r}, which is not a regular file earlier in the archive")
        elif kind == "symlink":
            target = member.linkname
        kinds[path] = kind
        size = member.size if kind == "file" else 0
        if kind == "hardlink":
            size = next(entry.size for entry in reversed(entries) if entry.path == target)
        total += size
        entries.append(Entry(name=member.name, kind=kind, path=path, mode=member.mode, size=size, target=target))
    for entry in entries:
        if entry.kind == "skip":
            continue
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent_kind = kinds.get("/".join(parts[:depth]))
            if parent_kind not in (None, "dir"):
                raise _refuse(artifact, entry.name, f"lies inside {'/'.join(parts[:depth])!r}, which is a {parent_kind}")
        if entry.kind == "symlink" and not symlink_stays_inside(entry.path, entry.target, kinds):
            raise _refuse(artifact, entry.name, f"is a symlink pointing outside the release tree ({entry.target})")
    return ArtifactPlan(artifact=artifact, entries=tuple(entries), total_size=total)


def inspect_tar(artifact_path: str, *, bundle: t.Callable[[str], ArtifactPlan]) -> ArtifactPlan:
    """Read the tar headers of an artifact and validate every member (read only).

    The one place that tells a fleetpatch bundle (first member BUNDLE_METADATA) from a plain release tarball: a bundle
    is handed to bundle(path), so this module never needs _bundle.
    """
    import tarfile

    try:
        with tarfile.open(artifact_path, "r:*") as tar:
            first = tar.next()
            if first is not None and first.name == BUNDLE_METADATA:
                return bundle(artifact_path)
            return validate_members(artifact_path, tar.getmembers())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ReleaseError(f"cannot read artifact {artifact_path} as a tar archive: {exc}") from exc


# ------------------------------------------------------------------------------------------- extraction


def write_member(dest: str, source: t.BinaryIO, mode: int) -> str:
    """Create dest (never through a symlink) from source with the release file mode; return its sha256."""
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
            digest.update(chunk)
            handle.write(chunk)
        handle.flush()
        os.fchmod(handle.fileno(), (mode & 0o755) | 0o600)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def extract_into(tmp: str, artifact_path: str, plan: ArtifactPlan) -> tuple[dict[str, str], dict[str, str]]:
    """Write the validated members of plan into tmp: (sha256 per file, target per symlink)."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    directories = {tmp}
    import tarfile

    with tarfile.open(artifact_path, "r:*") as tar:
        members = iter(tar)
        for entry in plan.entries:
            member = next(members, None)
            if member is None or member.name != entry.name:
                raise ReleaseError(f"artifact {artifact_path} changed while it was unpacked")
            if entry.kind == "skip":
                continue
            dest = os.path.join(tmp, entry.path)
            parent = os.path.dirname(dest)
            if parent not in directories:
                os.makedirs(parent, mode=0o755, exist_ok=True)
                directories.add(parent)
            if entry.kind == "dir":
                os.makedirs(dest, mode=0o755, exist_ok=True)
                os.chmod(dest, (entry.mode & 0o755) | 0o700)
                directories.add(dest)
            elif entry.kind == "file":
                source = tar.extractfile(member)
                if source is None:
                    raise ReleaseError(f"cannot read member {entry.name!r} of {artifact_path}")
                with source:
                    files[entry.path] = write_member(dest, source, entry.mode)
            elif entry.kind == "hardlink":
                # a copy, so that editing one path of a release can never change another
                with open(os.path.join(tmp, entry.target), "rb") as source:
                    files[entry.path] = write_member(dest, source, entry.mode)
            else:
                os.symlink(entry.target, dest)
                links[entry.path] = entry.target
        if next(members, None) is not None:
            raise ReleaseError(f"artifact {artifact_path} changed while it was unpacked")
    for directory in directories:
        fsync_directory(directory)
    return files, links


# ------------------------------------------------------------------------------------------- release trees


def walk_release(root: str) -> t.Iterator[tuple[str, str, os.stat_result]]:
    """Every entry of a release tree as (path relative to root, full path, lstat), directories in sorted order.

    The release's own top-level metadata file is left out; a symlink to a directory is listed, never entered."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel == RELEASE_METADATA:
                continue
            full = os.path.join(dirpath, name)
            yield rel, full, os.lstat(full)


def _metadata_problems(release_dir: str, metadata: t.Any) -> list[str]:
    if not isinstance(metadata, dict):
        return [f"metadata {RELEASE_METADATA} is not a JSON object"]
    problems = []
    if metadata.get("version") != os.path.basename(os.path.normpath(release_dir)):
        problems.append(f"metadata version {metadata.get('version')!r} does not match the release directory name")
    if not isinstance(metadata.get("artifact_sha256"), str) or not SHA256_PATTERN.match(metadata["artifact_sha256"]):
        problems.append("metadata artifact_sha256 is missing or invalid")
    files = metadata.get("files")
    links = metadata.get("links", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        problems.append("metadata files is missing or invalid")
    if not isinstance(links, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
        problems.append("metadata links is invalid")
    return problems


def inspect_release(release_dir: str) -> tuple[dict[str, t.Any] | None, list[str]]:
    """Hash a release tree once against its metadata; return (metadata, problems). [] means it verifies."""
    if os.path.islink(release_dir) or not os.path.isdir(release_dir):
        return None, [f"release directory {release_dir} does not exist"]
    meta_path = os.path.join(release_dir, RELEASE_METADATA)
    try:
        metadata = read_json(meta_path)
    except (OSError, ValueError) as exc:
        return None, [f"metadata {RELEASE_METADATA} is unreadable: {exc}"]
    if metadata is None:
        return None, [f"metadata {RELEASE_METADATA} is missing"]
    problems = _metadata_problems(release_dir, metadata)
    if problems:
        return (metadata if isinstance(metadata, dict) else None), problems
    expected_files: dict[str, str] = metadata["files"]
    expected_links: dict[str, str] = metadata.get("links", {})
    seen: set[str] = set()
    for rel, full, info in walk_release(release_dir):
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            if rel not in expected_links:
                problems.append(f"unexpected symlink {rel}")
            elif os.readlink(full) != expected_links[rel]:
                problems.append(f"modified symlink {rel}")
            seen.add(rel)
        elif stat.S_ISREG(mode):
            if rel not in expected_files:
                problems.append(f"unexpected file {rel}")
            elif sha256_file(full) != expected_files[rel]:
                problems.append(f"modified file {rel}")
            seen.add(rel)
        elif stat.S_ISDIR(mode):
            if rel in expected_files or rel in expected_links:
                problems.append(f"{rel} is a directory")
                seen.add(rel)
        else:
            problems.append(f"unexpected special file {rel}")
    for rel in sorted(set(expected_files) - seen):
        problems.append(f"missing file {rel}")
    for rel in sorted(set(expected_links) - seen):
        problems.append(f"missing symlink {rel}")
    return metadata, problems


def verify_release(release_dir: str) -> list[str]:
    """Problems found in a release tree (missing, changed or extra files, bad metadata); [] means it verifies."""
    return inspect_release(release_dir)[1]
