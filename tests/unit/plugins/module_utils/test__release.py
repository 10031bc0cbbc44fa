from __future__ import annotations

import io
import json
import os
import re
import tarfile
import types
import typing as t
import urllib.error
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _release
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    RELEASE_METADATA,
    HostLayout,
    HostOps,
    ReleaseError,
    build_request,
    check_health,
    fetch_artifact,
    inspect_artifact,
    parse_command,
    plan_prune,
    read_host_state,
    record_install,
    switch_current,
    unpack_release,
    verify_release,
)

Member = t.Tuple[t.Any, ...]


def build_tar(path: Path, members: list[Member]) -> str:
    """Write a gzipped tar from (kind, name, payload) tuples; return its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "blk":
                info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return sha256_file(str(path))


def release_members(version: str) -> list[Member]:
    return [
        ("dir", "./"),
        ("dir", "bin"),
        ("file", "bin/app", f"#!/bin/sh\necho {version}\n".encode(), 0o755),
        ("symlink", "bin/run", "app"),
        ("file", "etc/app.conf", f"version={version}\n".encode()),
        ("hardlink", "etc/app.conf.default", "etc/app.conf"),
        ("file", "VERSION", f"{version}\n".encode()),
    ]


@pytest.fixture
def layout(tmp_path: Path) -> HostLayout:
    return HostLayout(root=str(tmp_path / "host"), service="web")


def artifact(tmp_path: Path, version: str, members: list[Member] | None = None) -> tuple[str, str]:
    path = tmp_path / f"web-{version}.tar.gz"
    sha = build_tar(path, release_members(version) if members is None else members)
    return str(path), sha


def install(layout: HostLayout, tmp_path: Path, version: str) -> str:
    path, sha = artifact(tmp_path, version)
    release = unpack_release(layout, version=version, artifact_path=path, sha256=sha)
    switch_current(layout, version)
    return release


def entries(directory: str) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# ------------------------------------------------------------------------------------------ layout


def test_layout_paths() -> None:
    layout = HostLayout(root="/srv/fp", service="web")
    assert layout.releases_dir == "/srv/fp/apps/web/releases"
    assert layout.current_link == "/srv/fp/apps/web/current"
    assert layout.cache_dir == "/srv/fp/cache/sha256"
    assert layout.cache_path("ab" * 32) == "/srv/fp/cache/sha256/" + "ab" * 32
    assert layout.manifest_path == "/srv/fp/state/web.manifest.json"
    assert layout.audit_path == "/srv/fp/state/audit.jsonl"


@pytest.mark.parametrize("service", ["", "../web", "a/b", ".hidden", "web app"])
def test_layout_refuses_unsafe_service(service: str) -> None:
    with pytest.raises(ReleaseError, match=re.escape(f"service {service!r} is not valid")):
        HostLayout(root="/srv/fp", service=service)


# ------------------------------------------------------------------------------------------ unpack


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("file", "../x", b"x")], "member '../x' leaves the release tree ('..')"),
        ([("file", "a/../../x", b"x")], "member 'a/../../x' leaves the release tree ('..')"),
        ([("file", "/etc/x", b"x")], "member '/etc/x' has an absolute path"),
        ([("symlink", "link", "../../etc/passwd")], "member 'link' is a symlink pointing outside the release tree (../../etc/passwd)"),
        ([("symlink", "link", "/etc/passwd")], "member 'link' is a symlink pointing outside the release tree (/etc/passwd)"),
        (
            [("dir", "d"), ("symlink", "d/up", ".."), ("symlink", "esc", "d/up/..")],
            "member 'esc' is a symlink pointing outside the release tree (d/up/..)",
        ),
        ([("symlink", "l", "."), ("file", "l/x", b"x")], "member 'l/x' lies inside 'l', which is a symlink"),
        ([("hardlink", "h", "../../etc/shadow")], "member 'h' is a hardlink pointing outside the release tree (../../etc/shadow)"),
        ([("hardlink", "h", "/etc/shadow")], "member 'h' is a hardlink pointing outside the release tree (/etc/shadow)"),
        ([("hardlink", "h", "later"), ("file", "later", b"x")], "member 'h' is a hardlink to 'later', which is not a regular file earlier in the archive"),
        ([("chr", "dev/null")], "member 'dev/null' is a device file"),
        ([("blk", "dev/sda")], "member 'dev/sda' is a device file"),
        ([("fifo", "pipe")], "member 'pipe' is a fifo"),
        ([("file", RELEASE_METADATA, b"{}")], f"member '{RELEASE_METADATA}' uses the reserved name {RELEASE_METADATA}"),
        ([("file", "a", b"1"), ("file", "./a", b"2")], "member './a' appears more than once"),
        ([("file", "a", b"1"), ("file", "a/b", b"2")], "member 'a/b' lies inside 'a', which is a file"),
    ],
)
def test_unpack_refuses_unsafe_members(tmp_path: Path, layout: HostLayout, members: list[Member], message: str) -> None:
    path, sha = artifact(tmp_path, "1.0.0", [("file", "ok", b"ok")] + members)
    with pytest.raises(ReleaseError, match=re.escape(f"refusing to unpack {path}: {message}")):
        unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    assert entries(layout.releases_dir) == []
    assert not os.path.lexists(os.path.join(str(tmp_path), "etc"))


def test_unpack_writes_release_and_metadata(tmp_path: Path, layout: HostLayout) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    release = unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    assert release == f"{layout.releases_dir}/1.0.0"
    assert entries(layout.releases_dir) == ["1.0.0"]
    with open(os.path.join(release, RELEASE_METADATA), encoding="utf-8") as handle:
        metadata = json.load(handle)
    app = b"#!/bin/sh\necho 1.0.0\n"
    conf_sha = sha256_file(os.path.join(release, "etc/app.conf"))
    assert metadata["version"] == "1.0.0"
    assert metadata["artifact_sha256"] == sha
    assert metadata["files"] == {
        "VERSION": sha256_file(os.path.join(release, "VERSION")),
        "bin/app": sha256_file(os.path.join(release, "bin/app")),
        "etc/app.conf": conf_sha,
        "etc/app.conf.default": conf_sha,
    }
    assert metadata["links"] == {"bin/run": "app"}
    assert Path(release, "bin/app").read_bytes() == app
    assert os.stat(os.path.join(release, "bin/app")).st_mode & 0o777 == 0o755
    assert os.readlink(os.path.join(release, "bin/run")) == "app"
    # hardlinks become copies: editing one path of a release never changes another
    assert os.stat(os.path.join(release, "etc/app.conf")).st_ino != os.stat(os.path.join(release, "etc/app.conf.default")).st_ino
    assert verify_release(release) == []


def test_unpack_sha256_mismatch_writes_nothing(tmp_path: Path, layout: HostLayout) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    wrong = "0" * 64
    with pytest.raises(ReleaseError, match=re.escape(f"artifact {path} has sha256 {sha}, expected {wrong}")):
        unpack_release(layout, version="1.0.0", artifact_path=path, sha256=wrong)
    assert not os.path.exists(layout.root)


def test_unpack_free_space_failure_leaves_no_tmp_dir(tmp_path: Path, layout: HostLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    monkeypatch.setattr(os, "statvfs", lambda _path: types.SimpleNamespace(f_bavail=10, f_frsize=4096))
    message = r"^not enough free space in .*/apps/web/releases to unpack 1\.0\.0: need \d+ bytes \(\d+ \+ \d+ margin\), 40960 available$"
    with pytest.raises(ReleaseError, match=message):
        unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    assert entries(layout.releases_dir) == []


def test_unpack_is_idempotent(tmp_path: Path, layout: HostLayout) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    release = unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    before = os.stat(os.path.join(release, RELEASE_METADATA))
    assert unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha) == release
    after = os.stat(os.path.join(release, RELEASE_METADATA))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_unpack_replaces_broken_release_and_removes_leftover_tmp(tmp_path: Path, layout: HostLayout) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    release = unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    Path(release, "VERSION").write_text("tampered\n")
    os.makedirs(os.path.join(layout.releases_dir, ".1.0.0.tmp-killed/bin"))
    assert unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha) == release
    assert Path(release, "VERSION").read_text() == "1.0.0\n"
    assert entries(layout.releases_dir) == ["1.0.0"]
    assert verify_release(release) == []


def test_unpack_refuses_to_replace_the_current_release(tmp_path: Path, layout: HostLayout) -> None:
    release = install(layout, tmp_path, "1.0.0")
    Path(release, "VERSION").write_text("tampered\n")
    path, sha = artifact(tmp_path, "1.0.0")
    with pytest.raises(ReleaseError, match=re.escape(f"release {release} is the current release; refusing to replace it")):
        unpack_release(layout, version="1.0.0", artifact_path=path, sha256=sha)
    assert Path(release, "VERSION").read_text() == "tampered\n"


def test_inspect_artifact_counts_sizes(tmp_path: Path) -> None:
    path, _sha = artifact(tmp_path, "1.0.0", [("file", "a", b"12345"), ("hardlink", "b", "a"), ("dir", "d")])
    plan = inspect_artifact(path)
    assert plan.total_size == 10
    assert [(e.kind, e.path) for e in plan.entries] == [("file", "a"), ("hardlink", "b"), ("dir", "d")]


def test_inspect_artifact_refuses_non_tar(tmp_path: Path) -> None:
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(b"not a tarball")
    with pytest.raises(ReleaseError, match=re.escape(f"cannot read artifact {path} as a tar archive")):
        inspect_artifact(str(path))


# ------------------------------------------------------------------------------------------ verify


def _edit(release: str) -> None:
    Path(release, "bin/app").write_text("#!/bin/sh\necho evil\n")


def _remove(release: str) -> None:
    os.unlink(os.path.join(release, "etc/app.conf"))


def _extra(release: str) -> None:
    Path(release, "bin/extra").write_text("x")


def _relink(release: str) -> None:
    os.unlink(os.path.join(release, "bin/run"))
    os.symlink("/bin/sh", os.path.join(release, "bin/run"))


def _drop_metadata(release: str) -> None:
    os.unlink(os.path.join(release, RELEASE_METADATA))


def _bad_metadata(release: str) -> None:
    Path(release, RELEASE_METADATA).write_text("{not json")


def _file_becomes_dir(release: str) -> None:
    os.unlink(os.path.join(release, "VERSION"))
    os.mkdir(os.path.join(release, "VERSION"))


@pytest.mark.parametrize(
    ("mutate", "problems"),
    [
        (_edit, ["modified file bin/app"]),
        (_remove, ["missing file etc/app.conf"]),
        (_extra, ["unexpected file bin/extra"]),
        (_relink, ["modified symlink bin/run"]),
        (_file_becomes_dir, ["VERSION is a directory"]),
        (_drop_metadata, [f"metadata {RELEASE_METADATA} is missing"]),
    ],
)
def test_verify_release_detects(tmp_path: Path, layout: HostLayout, mutate: t.Callable[[str], None], problems: list[str]) -> None:
    release = install(layout, tmp_path, "1.0.0")
    mutate(release)
    assert verify_release(release) == problems


def test_verify_release_bad_metadata_and_missing_dir(tmp_path: Path, layout: HostLayout) -> None:
    release = install(layout, tmp_path, "1.0.0")
    _bad_metadata(release)
    [problem] = verify_release(release)
    assert problem.startswith(f"metadata {RELEASE_METADATA} is unreadable: ")
    missing = f"{layout.releases_dir}/9.9.9"
    assert verify_release(missing) == [f"release directory {missing} does not exist"]


def test_verify_release_checks_metadata_version(tmp_path: Path, layout: HostLayout) -> None:
    release = install(layout, tmp_path, "1.0.0")
    os.rename(release, f"{layout.releases_dir}/2.0.0")
    assert verify_release(f"{layout.releases_dir}/2.0.0") == [
        "metadata version '1.0.0' does not match the release directory name"
    ]


# ------------------------------------------------------------------------------------------ switch


def test_switch_current_is_relative_and_atomic(tmp_path: Path, layout: HostLayout) -> None:
    install(layout, tmp_path, "1.0.0")
    assert os.readlink(layout.current_link) == "releases/1.0.0"
    path, sha = artifact(tmp_path, "1.0.1")
    unpack_release(layout, version="1.0.1", artifact_path=path, sha256=sha)
    os.symlink("releases/1.0.0", os.path.join(layout.apps_dir, "current.tmp-killed"))
    switch_current(layout, "1.0.1")
    assert os.readlink(layout.current_link) == "releases/1.0.1"
    assert Path(layout.current_link, "VERSION").read_text() == "1.0.1\n"
    assert sorted(os.listdir(layout.apps_dir)) == ["current", "releases"]


def test_switch_current_failure_keeps_old_link(tmp_path: Path, layout: HostLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    install(layout, tmp_path, "1.0.0")
    path, sha = artifact(tmp_path, "1.0.1")
    unpack_release(layout, version="1.0.1", artifact_path=path, sha256=sha)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(_release.os, "replace", broken_replace)
    with pytest.raises(ReleaseError, match=re.escape(f"cannot switch {layout.current_link} to 1.0.1: [Errno 5] I/O error")):
        switch_current(layout, "1.0.1")
    monkeypatch.undo()
    assert os.readlink(layout.current_link) == "releases/1.0.0"
    assert sorted(os.listdir(layout.apps_dir)) == ["current", "releases"]


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        ("missing", "release 2.0.0 does not exist at {releases}/2.0.0"),
        ("current_is_dir", "{current} exists and is not a symlink; refusing to replace it"),
    ],
)
def test_switch_current_refuses(tmp_path: Path, layout: HostLayout, prepare: str, message: str) -> None:
    path, sha = artifact(tmp_path, "2.0.0")
    if prepare == "current_is_dir":
        unpack_release(layout, version="2.0.0", artifact_path=path, sha256=sha)
        os.makedirs(layout.current_link)
    else:
        os.makedirs(layout.releases_dir)
    with pytest.raises(ReleaseError, match=re.escape(message.format(releases=layout.releases_dir, current=layout.current_link))):
        switch_current(layout, "2.0.0")


# ------------------------------------------------------------------------------------------ state


def test_read_host_state(tmp_path: Path, layout: HostLayout) -> None:
    assert read_host_state(layout) == {"current_version": None, "current_release": None, "manifest": None}
    release = install(layout, tmp_path, "1.0.0")
    assert read_host_state(layout) == {"current_version": "1.0.0", "current_release": release, "manifest": None}
    os.unlink(layout.current_link)
    os.symlink("/etc", layout.current_link)
    with pytest.raises(ReleaseError, match=re.escape(f"{layout.current_link} points to /etc, outside {layout.releases_dir}")):
        read_host_state(layout)


def test_record_install_writes_manifest_and_audit(tmp_path: Path, layout: HostLayout) -> None:
    first = record_install(layout, version="1.0.0", sha256="a" * 64, patch_id=None, previous=None, action="install",
                           now="2025-01-01T00:00:00Z")
    second = record_install(
        layout, version="1.0.1", sha256="b" * 64, patch_id="PATCH-7",
        previous={"version": "1.0.0", "artifact_sha256": "a" * 64, "release": f"{layout.releases_dir}/1.0.0"},
        action="install", now="2025-01-02T00:00:00Z",
    )
    expected = {
        "schema": 1,
        "service": "web",
        "version": "1.0.1",
        "artifact_sha256": "b" * 64,
        "release": f"{layout.releases_dir}/1.0.1",
        "patch_id": "PATCH-7",
        "installed_at": "2025-01-02T00:00:00Z",
        "previous": {"version": "1.0.0", "artifact_sha256": "a" * 64, "release": f"{layout.releases_dir}/1.0.0"},
    }
    assert second == expected
    assert first["previous"] is None
    with open(layout.manifest_path, encoding="utf-8") as handle:
        assert json.load(handle) == expected
    assert read_host_state(layout)["manifest"] == expected
    with open(layout.audit_path, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    assert lines == [
        {"ts": "2025-01-01T00:00:00Z", "service": "web", "action": "install", "from_version": None,
         "to_version": "1.0.0", "sha256": "a" * 64, "patch_id": None},
        {"ts": "2025-01-02T00:00:00Z", "service": "web", "action": "install", "from_version": "1.0.0",
         "to_version": "1.0.1", "sha256": "b" * 64, "patch_id": "PATCH-7"},
    ]
    assert [name for name in os.listdir(layout.state_dir) if name.startswith(".")] == []


def test_read_host_state_refuses_corrupt_manifest(layout: HostLayout) -> None:
    os.makedirs(layout.state_dir)
    Path(layout.manifest_path).write_text("{oops")
    with pytest.raises(ReleaseError, match=re.escape(f"host manifest {layout.manifest_path} is not valid JSON")):
        read_host_state(layout)


# ------------------------------------------------------------------------------------------ prune


@pytest.mark.parametrize(
    ("versions", "keep", "protect", "removed"),
    [
        (["1.0.0", "1.0.1", "1.0.2"], 3, ["1.0.2", "1.0.1"], []),
        (["1.0.0", "1.0.1", "1.0.2", "1.0.10"], 2, ["1.0.10", "1.0.2"], ["1.0.0", "1.0.1"]),
        (["1.0.0", "1.0.1", "1.0.2", "1.0.3"], 1, ["1.0.3", "1.0.0"], ["1.0.1", "1.0.2"]),
        (["1.0.0", "1.0.1", "2.0.0"], 2, ["1.0.0", None], ["1.0.1"]),
        (["1.0.0-rc1", "1.0.0", "0.9.0"], 2, ["1.0.0"], ["0.9.0"]),
    ],
)
def test_plan_prune(versions: list[str], keep: int, protect: list[str | None], removed: list[str]) -> None:
    assert plan_prune(versions, keep=keep, protect=protect) == removed


# ------------------------------------------------------------------------------------------ download, health


def test_fetch_artifact_file_url(tmp_path: Path, layout: HostLayout) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    size = os.path.getsize(path)
    dest = layout.cache_path(sha)
    assert fetch_artifact(HostOps(), url=f"file://{path}", dest=dest, sha256=sha, size=size) == size
    assert sha256_file(dest) == sha
    assert entries(layout.cache_dir) == [sha]


@pytest.mark.parametrize(
    ("digest", "size", "message"),
    [
        ("0" * 64, None, "bytes with sha256 {sha}, expected " + "0" * 64 + " (corrupt); the bytes were discarded; it was not cached"),
        (None, 10, "bytes, the declared size is 10"),
        (None, 10**6, "bytes, the declared size is 1000000"),
    ],
)
def test_fetch_artifact_refuses_and_leaves_nothing(tmp_path: Path, layout: HostLayout, digest: str | None, size: int | None, message: str) -> None:
    path, sha = artifact(tmp_path, "1.0.0")
    digest = digest or sha
    with pytest.raises(ReleaseError, match=re.escape(message.format(sha=sha))):
        fetch_artifact(HostOps(), url=f"file://{path}", dest=layout.cache_path(digest), sha256=digest, size=size)
    assert entries(layout.cache_dir) == []


def test_fetch_artifact_unreachable(tmp_path: Path, layout: HostLayout) -> None:
    with pytest.raises(ReleaseError, match=re.escape(f"cannot download file://{tmp_path}/absent.tar.gz: ")):
        fetch_artifact(HostOps(), url=f"file://{tmp_path}/absent.tar.gz", dest=layout.cache_path("a" * 64), sha256="a" * 64)
    assert entries(layout.cache_dir) == []


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = io.BytesIO(body)

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def getcode(self) -> int:
        return self.status

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        return None


class ScriptedOps(HostOps):
    """Answers health requests from a script; records sleeps instead of sleeping."""

    def __init__(self, answers: list[t.Any]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sleeps: list[float] = []

    def open_url(self, url: str, *, headers: t.Mapping[str, str], timeout: float) -> t.Any:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return FakeResponse(*answer)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _ok(version: str) -> tuple[int, bytes]:
    return 200, json.dumps({"status": "ok", "version": version}).encode()


@pytest.mark.parametrize(
    ("answers", "retries", "expected"),
    [
        ([_ok("1.0.1")], 3, {"ok": True, "status": 200, "version": "1.0.1", "attempts": 1}),
        ([ConnectionRefusedError(111, "refused"), _ok("1.0.0"), _ok("1.0.1")], 3,
         {"ok": True, "status": 200, "version": "1.0.1", "attempts": 3}),
        ([_ok("1.0.0"), _ok("1.0.0")], 2,
         {"ok": False, "status": 200, "version": "1.0.0", "attempts": 2,
          "error": "reports version '1.0.0' and status 'ok', expected version '1.0.1'"}),
        ([urllib.error.HTTPError("http://h/health", 503, "busy", {}, io.BytesIO(b""))], 1,  # type: ignore[arg-type]
         {"ok": False, "status": 503, "version": None, "attempts": 1, "error": "HTTP 503"}),
        ([(200, b"<html>")], 1,
         {"ok": False, "status": 200, "version": None, "attempts": 1, "error": "response is not a JSON object"}),
    ],
)
def test_check_health(answers: list[t.Any], retries: int, expected: dict[str, t.Any]) -> None:
    ops = ScriptedOps(answers)
    result = check_health(ops, "http://h/health", expected_version="1.0.1", retries=retries, delay=0.25)
    latency = result.pop("latency_ms")
    assert isinstance(latency, float)
    assert result == expected
    assert ops.sleeps == [0.25] * (expected["attempts"] - 1 if expected["ok"] else retries - 1)


# ------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        (None, None),
        ("systemctl restart 'my web'", ("systemctl", "restart", "my web")),
        (["systemctl", "restart", "web"], ("systemctl", "restart", "web")),
    ],
)
def test_parse_command(value: t.Any, argv: tuple[str, ...] | None) -> None:
    assert parse_command(value) == argv


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sha256": "abc"}, "sha256 'abc' is not a 64 hex digit digest"),
        ({"version": "../1.0"}, "version '../1.0' is not valid"),
        ({"artifact_url": "ftp://x/a.tgz"}, "artifact_url 'ftp://x/a.tgz' must start with one of http://, https://, file://"),
        ({"restart_command": []}, "restart_command must not be empty"),
        ({"restart_command": [True]}, "restart_command argument True is not a string; quote it"),
        ({"restart_command": {"cmd": "x"}}, "restart_command must be a list of arguments or a string"),
        ({"restart_command": "a 'b"}, "restart_command \"a 'b\" cannot be split"),
        ({"keep_releases": 0}, "keep_releases must be at least 1, got 0"),
        ({"health_retries": 0}, "health_retries must be at least 1, got 0"),
    ],
)
def test_build_request_refuses(params: dict[str, t.Any], message: str) -> None:
    base = {"version": "1.0.1", "sha256": "A" * 64}
    with pytest.raises(ReleaseError, match=re.escape(message)):
        build_request({**base, **params})


def test_build_request_normalises_digest() -> None:
    request = build_request({"version": "1.0.1", "sha256": "AB" * 32, "restart_command": "true"})
    assert request.sha256 == "ab" * 32
    assert request.restart_command == ("true",)
    assert (request.state, request.keep_releases, request.health_retries) == ("present", 3, 5)
