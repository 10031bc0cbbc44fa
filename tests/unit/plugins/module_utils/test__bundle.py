from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import typing as t
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _tools
from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import (
    BUNDLE_METADATA,
    BuildInfo,
    BundleError,
    Materialized,
    apply_bundle,
    inspect_bundle,
    scan_tree,
    sign_file,
    tree_digest,
    verify_signature,
    write_delta_bundle,
    write_full_bundle,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import canonical_json, sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    DeltaNotApplicable,
    HostLayout,
    extract_release,
    inspect_artifact,
    read_release_metadata,
    unpack_release,
    verify_release,
)

ZSTD = shutil.which("zstd")
SSH_KEYGEN = shutil.which("ssh-keygen")
needs_zstd = pytest.mark.skipif(ZSTD is None, reason="zstd is not installed")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")
INFO = BuildInfo(patch_id="FP-1", service="myapp", target_version="1.0.1", base_version="1.0.0",
                 source_commit="3f0c9a1", toolchain="gcc-12", approver="alice", built_at="2024-01-01T00:00:00Z")


def write_release(root: Path, version: str, *, blob_change: bytes = b"") -> Path:
    """A small release: text files, a 64 KiB binary, an executable, a symlink and an empty directory."""
    # 64 KiB of incompressible bytes, the same in every version unless blob_change says otherwise
    blob = bytearray(b"".join(hashlib.sha256(index.to_bytes(4, "big")).digest() for index in range(2048)))
    blob[1000:1000 + len(blob_change)] = blob_change
    files = {
        "VERSION": f"{version}\n".encode(),
        "bin/app": b"#!/bin/sh\necho app\n",
        "lib/app/data.bin": bytes(blob),
        "share/doc/README": b"unchanged readme\n" * 50,
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "bin/app").chmod(0o755)
    (root / "share/empty").mkdir(parents=True, exist_ok=True)
    os.symlink("../lib/app/data.bin", root / "bin/data")
    return root


def sha(path: str | Path) -> str:
    return sha256_file(str(path))


@pytest.fixture
def releases(tmp_path: Path) -> tuple[Path, Path]:
    base = write_release(tmp_path / "src-1.0.0", "1.0.0")
    new = write_release(tmp_path / "src-1.0.1", "1.0.1", blob_change=b"PATCHED")
    return base, new


def build(tmp_path: Path, base: Path, new: Path, *, zstd: str | None = ZSTD) -> tuple[str, str, dict, dict]:
    full, delta = str(tmp_path / "full.tar.gz"), str(tmp_path / "delta.tar.gz")
    full_meta = write_full_bundle(scan_tree(str(new)), INFO, full, mtime=0)
    delta_meta = write_delta_bundle(scan_tree(str(new)), scan_tree(str(base)), INFO, delta, mtime=0,
                                    full_sha256=sha(full), full_size=os.path.getsize(full), zstd=zstd)
    return full, delta, full_meta, delta_meta


def install_base(tmp_path: Path, base: Path, name: str = "host") -> HostLayout:
    layout = HostLayout(str(tmp_path / name), "myapp")
    tarball = tmp_path / f"{name}-base.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(base, arcname=".")
    unpack_release(layout, version="1.0.0", artifact_path=str(tarball), sha256=sha(tarball))
    return layout


# ---------------------------------------------------------------------------------------------- build


def test_scan_tree_describes_files_links_and_directories(releases: tuple[Path, Path]) -> None:
    tree = scan_tree(str(releases[0]))
    assert sorted(tree.files) == ["VERSION", "bin/app", "lib/app/data.bin", "share/doc/README"]
    assert tree.files["bin/app"]["mode"] == "0755"
    assert tree.files["VERSION"]["mode"] == "0644"
    assert tree.links == {"bin/data": "../lib/app/data.bin"}
    assert "share/empty" in tree.dirs


def test_scan_tree_refuses_a_symlink_leaving_the_tree(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    os.symlink("../../etc/passwd", tmp_path / "r" / "escape")
    with pytest.raises(BundleError, match="points outside the release tree"):
        scan_tree(str(tmp_path / "r"))


def test_a_symlinked_directory_is_a_link_never_entered(tmp_path: Path) -> None:
    """scan_tree and verify_release walk a tree the same way (_archive.walk_release): sorted, metadata left out, a
    symlink to a directory listed as a link and not followed."""
    root = tmp_path / "1.0.0"
    (root / "lib" / "b").mkdir(parents=True)
    (root / "lib" / "a").mkdir()
    (root / "lib" / "b" / "x.txt").write_bytes(b"x")
    (root / "lib" / "a" / "y.txt").write_bytes(b"y")
    os.symlink("b", root / "lib" / "current")
    (root / ".fleetpatch-release.json").write_text("{}")
    tree = scan_tree(str(root))
    assert sorted(tree.files) == ["lib/a/y.txt", "lib/b/x.txt"]
    assert tree.links == {"lib/current": "b"}
    assert tree.dirs == ["lib", "lib/a", "lib/b"]
    files = {path: entry["sha256"] for path, entry in tree.files.items()}
    (root / ".fleetpatch-release.json").write_text(json.dumps({"schema": 1, "service": "myapp", "version": "1.0.0",
                                                               "artifact_sha256": "0" * 64, "files": files, "links": tree.links}))
    assert verify_release(str(root)) == []
    (root / "lib" / "b" / "z.txt").write_bytes(b"z")
    assert verify_release(str(root)) == ["unexpected file lib/b/z.txt"]


def test_full_bundle_is_reproducible_and_embeds_the_build(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    first = tmp_path / "a.tar.gz"
    second = tmp_path / "b.tar.gz"
    meta = write_full_bundle(scan_tree(str(releases[1])), INFO, str(first), mtime=1704067200)
    write_full_bundle(scan_tree(str(releases[1])), INFO, str(second), mtime=1704067200)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
        embedded = json.loads(t.cast(t.IO[bytes], tar.extractfile(BUNDLE_METADATA)).read())
    assert names[0] == BUNDLE_METADATA
    assert sorted(names[1:]) == ["files/VERSION", "files/bin/app", "files/lib/app/data.bin", "files/share/doc/README"]
    assert embedded == meta
    keys = ("kind", "patch_id", "service", "target_version", "target_tag", "base_version", "source_commit", "toolchain",
            "approver", "built_at")
    assert {key: embedded[key] for key in keys} == {
        "kind": "full", "patch_id": "FP-1", "service": "myapp", "target_version": "1.0.1", "target_tag": "release",
        "base_version": "1.0.0", "source_commit": "3f0c9a1", "toolchain": "gcc-12", "approver": "alice",
        "built_at": "2024-01-01T00:00:00Z"}
    assert embedded["tree_sha256"] == tree_digest(embedded["files"], embedded["links"], embedded["dirs"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_tag": "hotfix"}, "target_tag must be one of release, patch, got 'hotfix'"),
        ({"target_tag": "patch", "base_version": None}, "target_tag patch (a patch-only build) needs the base_version it was built from"),
        ({"patch_id": "../x"}, "patch_id '../x' does not match"),
        ({"target_version": "1.0/1"}, "target_version '1.0/1' is not valid"),
        ({"approver": "a\nb"}, "approver must be one line of at most 512 printable characters"),
    ],
)
def test_build_info_is_validated(changes: dict[str, t.Any], message: str) -> None:
    with pytest.raises(BundleError) as exc:
        BuildInfo(**dict(INFO.as_dict(), **changes)).validate()
    assert str(exc.value).startswith(message)


@needs_zstd
def test_delta_keeps_unchanged_files_and_patches_the_changed_binary(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    full, delta, _full_meta, meta = build(tmp_path, *releases)
    ops = {path: entry["op"] for path, entry in meta["files"].items()}
    assert ops == {"VERSION": "file", "bin/app": "keep", "lib/app/data.bin": "patch", "share/doc/README": "keep"}
    assert meta["delta"]["full_sha256"] == sha(full)
    assert meta["delta"]["tool"].startswith("zstd ")
    assert os.path.getsize(delta) < os.path.getsize(full) / 10
    with tarfile.open(delta) as tar:
        assert sorted(tar.getnames()[1:]) == ["files/VERSION", "patches/lib/app/data.bin.zst"]


def test_delta_without_zstd_ships_changed_files_whole(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    _full, delta, _full_meta, meta = build(tmp_path, *releases, zstd=None)
    assert meta["files"]["lib/app/data.bin"]["op"] == "file"
    assert meta["delta"]["tool"] is None
    with tarfile.open(delta) as tar:
        assert sorted(tar.getnames()[1:]) == ["files/VERSION", "files/lib/app/data.bin"]


def test_materialized_tarball_gives_the_same_tree(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    tarball = tmp_path / "r.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(releases[1], arcname=".")
    with Materialized(str(tarball)) as source:
        assert source.tree.digest == scan_tree(str(releases[1])).digest
        scratch = source.tree.root
    assert not os.path.exists(scratch)


# ---------------------------------------------------------------------------------------------- apply


def test_full_bundle_unpacks_through_patch_apply_code(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    full, _delta, meta, _dmeta = build(tmp_path, *releases, zstd=None)
    layout = HostLayout(str(tmp_path / "host"), "myapp")
    release = extract_release(layout, version="1.0.1", artifact_path=full, sha256=sha(full))
    assert verify_release(release) == []
    metadata = read_release_metadata(release)
    assert metadata["artifact_sha256"] == sha(full)
    assert metadata["tree_sha256"] == meta["tree_sha256"]
    assert metadata["bundle"]["kind"] == "full"
    assert os.readlink(os.path.join(release, "bin/data")) == "../lib/app/data.bin"
    assert os.path.isdir(os.path.join(release, "share/empty"))
    assert os.stat(os.path.join(release, "bin/app")).st_mode & 0o777 == 0o755


@needs_zstd
def test_delta_on_the_base_gives_the_full_bundles_tree(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    full, delta, full_meta, _dmeta = build(tmp_path, *releases)
    from_delta = install_base(tmp_path, releases[0], "a")
    release = extract_release(from_delta, version="1.0.1", artifact_path=delta, sha256=sha(delta))
    from_full = HostLayout(str(tmp_path / "b"), "myapp")
    reference = extract_release(from_full, version="1.0.1", artifact_path=full, sha256=sha(full))
    got, want = read_release_metadata(release), read_release_metadata(reference)
    # same files, same tree digest, recorded under the full bundle's digest
    assert got["files"] == want["files"]
    assert got["tree_sha256"] == want["tree_sha256"] == full_meta["tree_sha256"]
    assert got["artifact_sha256"] == want["artifact_sha256"] == sha(full)
    assert got["bundle"]["kind"] == "delta" and got["bundle"]["sha256"] == sha(delta)
    assert verify_release(release) == []


@needs_zstd
def test_delta_without_its_base_is_not_applicable(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    _full, delta, _meta, _dmeta = build(tmp_path, *releases)
    layout = HostLayout(str(tmp_path / "empty"), "myapp")
    with pytest.raises(DeltaNotApplicable, match="needs release 1.0.0, which is not installed here"):
        extract_release(layout, version="1.0.1", artifact_path=delta, sha256=sha(delta))
    assert os.listdir(layout.releases_dir) == []


@needs_zstd
def test_delta_against_a_changed_base_is_not_applicable(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    _full, delta, _meta, _dmeta = build(tmp_path, *releases)
    layout = install_base(tmp_path, releases[0])
    readme = os.path.join(layout.release_path("1.0.0"), "share/doc/README")
    os.chmod(readme, 0o644)
    with open(readme, "ab") as handle:
        handle.write(b"local edit\n")
    with pytest.raises(DeltaNotApplicable, match="share/doc/README of release 1.0.0 differs"):
        extract_release(layout, version="1.0.1", artifact_path=delta, sha256=sha(delta))
    assert sorted(os.listdir(layout.releases_dir)) == ["1.0.0"]


@needs_zstd
def test_delta_with_patches_needs_zstd_on_the_host(tmp_path: Path, releases: tuple[Path, Path], monkeypatch) -> None:
    _full, delta, _meta, _dmeta = build(tmp_path, *releases)
    layout = install_base(tmp_path, releases[0])
    monkeypatch.setattr(_tools, "find_tool", lambda name: None)
    with pytest.raises(DeltaNotApplicable, match="zstd is not installed on this host"):
        extract_release(layout, version="1.0.1", artifact_path=delta, sha256=sha(delta))


# ---------------------------------------------------------------------------------------------- refusals


def forge(path: Path, metadata: dict[str, t.Any], members: list[tuple[str, t.Any]], *, fix_digest: bool = True) -> str:
    """A bundle with arbitrary metadata and members: (name, bytes) files or (name, TarInfo) special members."""
    if fix_digest:
        metadata["tree_sha256"] = tree_digest(metadata["files"], metadata["links"], metadata["dirs"])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = canonical_json(metadata).encode()
        info = tarfile.TarInfo(BUNDLE_METADATA)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, payload in members:
            if isinstance(payload, tarfile.TarInfo):
                tar.addfile(payload)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return str(path)


def base_metadata(files: dict[str, bytes], links: dict[str, str] | None = None) -> dict[str, t.Any]:
    return dict(
        format="fleetpatch-bundle", schema=1, kind="full", **INFO.as_dict(),
        files={name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": "0644", "op": "file"}
               for name, data in files.items()},
        links=links or {}, dirs=[], unpacked_size=sum(len(data) for data in files.values()),
    )


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("files", "links", "members", "message"),
    [
        ({"a": b"x"}, None, [("files/a", b"x"), ("files/../../etc/passwd", b"x")],
         "member 'files/../../etc/passwd' leaves the release tree ('..')"),
        ({"a": b"x"}, None, [("/etc/passwd", b"x")], "member '/etc/passwd' has an absolute path"),
        ({"a": b"x"}, None, [("files/a", b"x"), ("files/b", b"y")], "member 'files/b' is not in its signed manifest"),
        ({"a": b"x"}, None, [("files/a", special("files/a", tarfile.SYMTYPE, "/etc/passwd"))],
         "member 'files/a' is a link (/etc/passwd); links are manifest entries"),
        ({"a": b"x"}, None, [("files/a", special("files/a", tarfile.CHRTYPE))], "member 'files/a' is a device file"),
        ({"a": b"x"}, None, [("files/a", special("files/a", tarfile.LNKTYPE, "files/b"))],
         "member 'files/a' is a link (files/b); links are manifest entries"),
        ({"a": b"x"}, None, [("files/a", b"xy")], "member 'files/a' is 2 bytes, its manifest says 1"),
        ({"a": b"x"}, None, [], "members listed in its manifest are missing: files/a"),
        ({"../evil": b"x"}, None, [("files/../evil", b"x")], "file '../evil' leaves the release tree ('..')"),
        ({"a": b"x"}, {"lib": "../../../etc"}, [("files/a", b"x")], "symlink 'lib' points outside the release tree (../../../etc)"),
        ({"a": b"x"}, {"abs": "/etc/passwd"}, [("files/a", b"x")], "symlink 'abs' points outside the release tree (/etc/passwd)"),
        ({".fleetpatch-release.json": b"{}"}, None, [("files/.fleetpatch-release.json", b"{}")],
         "file '.fleetpatch-release.json' uses the reserved name .fleetpatch-release.json"),
    ],
)
def test_inspect_refuses_bad_bundles_before_writing(
    tmp_path: Path, files: dict[str, bytes], links: dict[str, str] | None, members: list[tuple[str, t.Any]], message: str
) -> None:
    bundle = forge(tmp_path / "evil.tar.gz", base_metadata(files, links), members)
    with pytest.raises(BundleError) as exc:
        inspect_artifact(bundle)
    assert str(exc.value) == f"refusing bundle {bundle}: {message}"
    layout = HostLayout(str(tmp_path / "host"), "myapp")
    with pytest.raises(BundleError):
        extract_release(layout, version="1.0.1", artifact_path=bundle, sha256=sha(bundle))
    assert not os.path.exists(tmp_path / "etc") and not os.path.exists(tmp_path / "evil")
    assert os.listdir(layout.releases_dir) == []


def test_inspect_refuses_a_manifest_that_does_not_match_its_tree_digest(tmp_path: Path) -> None:
    metadata = base_metadata({"a": b"x"})
    metadata["tree_sha256"] = "0" * 64
    bundle = forge(tmp_path / "b.tar.gz", metadata, [("files/a", b"x")], fix_digest=False)
    with pytest.raises(BundleError, match="its manifest does not match its own tree_sha256"):
        inspect_bundle(bundle)


def test_a_member_with_other_content_than_its_manifest_is_refused(tmp_path: Path) -> None:
    metadata = base_metadata({"a": b"x"})
    bundle = forge(tmp_path / "b.tar.gz", metadata, [("files/a", b"y")])
    layout = HostLayout(str(tmp_path / "host"), "myapp")
    with pytest.raises(BundleError, match="member 'files/a' does not match its manifest digest"):
        extract_release(layout, version="1.0.1", artifact_path=bundle, sha256=sha(bundle))
    assert os.listdir(layout.releases_dir) == []


def test_bundle_for_another_version_is_refused(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    full, _delta, _meta, _dmeta = build(tmp_path, *releases, zstd=None)
    layout = HostLayout(str(tmp_path / "host"), "myapp")
    with pytest.raises(BundleError, match="builds myapp 1.0.1, not myapp 2.0.0"):
        extract_release(layout, version="2.0.0", artifact_path=full, sha256=sha(full))


def test_apply_bundle_rejects_a_delta_without_releases_dir(tmp_path: Path, releases: tuple[Path, Path]) -> None:
    _full, delta, _meta, _dmeta = build(tmp_path, *releases, zstd=None)
    plan = inspect_bundle(delta).bundle
    (tmp_path / "out").mkdir()
    with pytest.raises(DeltaNotApplicable):
        apply_bundle(plan, str(tmp_path / "out"), service="myapp", version="1.0.1", sha256=None)


# ---------------------------------------------------------------------------------------------- signatures


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("builder", "rogue"):
        key = tmp_path / name
        subprocess.run([t.cast(str, SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
        found[name] = str(key)
        found[f"{name}_signers"] = f"{name}@fleetpatch namespaces=\"fleetpatch\" {(tmp_path / (name + '.pub')).read_text()}"
    return found


@needs_ssh_keygen
def test_signature_verifies_and_names_the_principal(tmp_path: Path, keys: dict[str, str]) -> None:
    payload = tmp_path / "bundle"
    payload.write_bytes(b"content")
    signature = sign_file(str(payload), key=keys["builder"])
    assert signature.startswith("-----BEGIN SSH SIGNATURE-----")
    assert sign_file(str(payload), key=keys["builder"]) == signature  # ed25519: deterministic
    assert verify_signature(str(payload), signature=signature, allowed_signers=keys["builder_signers"]) == "builder@fleetpatch"
    assert verify_signature(str(payload), signature=signature, allowed_signers=keys["builder_signers"],
                            identity="builder@fleetpatch") == "builder@fleetpatch"


@needs_ssh_keygen
def test_wrong_key_tampered_content_and_wrong_namespace_are_refused(tmp_path: Path, keys: dict[str, str]) -> None:
    payload = tmp_path / "bundle"
    payload.write_bytes(b"content")
    rogue = sign_file(str(payload), key=keys["rogue"])
    with pytest.raises(BundleError, match=r"signature of bundle was made by ssh-ed25519 key SHA256:\S+, which is not in allowed_signers"):
        verify_signature(str(payload), signature=rogue, allowed_signers=keys["builder_signers"])
    good = sign_file(str(payload), key=keys["builder"])
    payload.write_bytes(b"tampered")
    with pytest.raises(BundleError, match="signature of bundle by builder@fleetpatch .* does not verify"):
        verify_signature(str(payload), signature=good, allowed_signers=keys["builder_signers"], identity="builder@fleetpatch")
    payload.write_bytes(b"content")
    with pytest.raises(BundleError, match="does not verify"):
        verify_signature(str(payload), signature=good, allowed_signers=keys["builder_signers"], namespace="other",
                         identity="builder@fleetpatch")


@needs_ssh_keygen
def test_verification_without_ssh_keygen_fails_clearly(tmp_path: Path, keys: dict[str, str], monkeypatch) -> None:
    payload = tmp_path / "bundle"
    payload.write_bytes(b"content")
    signature = sign_file(str(payload), key=keys["builder"])
    monkeypatch.setattr(_tools, "find_tool", lambda name: None)
    with pytest.raises(BundleError, match="verifying the signature of bundle needs ssh-keygen"):
        verify_signature(str(payload), signature=signature, allowed_signers=keys["builder_signers"])


@pytest.mark.parametrize("signature", ["", "not a signature", None])
def test_signature_text_must_be_armored(tmp_path: Path, signature: t.Any) -> None:
    with pytest.raises(BundleError, match="is not an armored SSH signature"):
        verify_signature(str(tmp_path), signature=signature, allowed_signers="x")
