from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import typing as t
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    ApplyResult,
    HostLayout,
    HostOps,
    build_request,
    read_host_state,
    run_apply,
    switch_current,
    unpack_release,
    verify_release,
)
from ansible_collections.fleetpatch.rollout.plugins.modules import patch_apply

SERVICE = "web"
TRUE = ["true"]


def build_artifact(directory: Path, version: str) -> tuple[str, str]:
    path = directory / f"{SERVICE}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("bin/app", f"#!/bin/sh\necho {version}\n".encode()), ("VERSION", f"{version}\n".encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/run")
        link.type, link.linkname = tarfile.SYMTYPE, "app"
        tar.addfile(link)
    return str(path), sha256_file(str(path))


class Fleet:
    """One host root plus origin artifacts for a few versions."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = str(tmp_path / "host")
        self.origin = tmp_path / "origin"
        self.origin.mkdir()
        self.layout = HostLayout(root=self.root, service=SERVICE)
        self.artifacts = {version: build_artifact(self.origin, version) for version in ("1.0.0", "1.0.1", "1.0.2", "1.0.3")}

    def args(self, version: str, **extra: t.Any) -> dict[str, t.Any]:
        path, sha = self.artifacts[version]
        args = {"root": self.root, "service": SERVICE, "version": version, "sha256": sha, "artifact_url": f"file://{path}"}
        args.update(extra)
        return args

    def run(self, args: dict[str, t.Any], *, check: bool = False) -> dict[str, t.Any]:
        return run_module({**args, "_ansible_check_mode": check, "_ansible_diff": True})

    def install(self, version: str, **extra: t.Any) -> dict[str, t.Any]:
        result = self.run(self.args(version, **{"restart_command": TRUE, "require_rollback_point": False, **extra}))
        assert not result.get("failed"), result
        return result

    def current(self) -> str | None:
        return read_host_state(self.layout)["current_version"]

    def manifest(self) -> dict[str, t.Any]:
        return t.cast(dict, read_host_state(self.layout)["manifest"])

    def audit(self) -> list[dict[str, t.Any]]:
        with open(self.layout.audit_path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def snapshot(self) -> dict[str, t.Any]:
        """Every path under the host root with its type, content digest or link target, and mode."""
        tree: dict[str, t.Any] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                st = os.lstat(full)
                if os.path.islink(full):
                    tree[rel] = ("link", os.readlink(full))
                elif os.path.isdir(full):
                    tree[rel] = ("dir", st.st_mode)
                else:
                    tree[rel] = ("file", st.st_mode, st.st_mtime_ns, hashlib.sha256(Path(full).read_bytes()).hexdigest())
        return tree


def run_module(args: dict[str, t.Any]) -> dict[str, t.Any]:
    stdout = io.StringIO()
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            with contextlib.redirect_stdout(stdout):
                patch_apply.main()
    result = json.loads(stdout.getvalue())
    assert (exc.value.code != 0) == bool(result.get("failed")), result
    return result


COMPARED = ("changed", "version", "previous_version", "sha256", "release", "rollback_point", "actions", "diff", "reverted")


def same_outcome(check: dict[str, t.Any], real: dict[str, t.Any]) -> None:
    assert {key: check[key] for key in COMPARED} == {key: real[key] for key in COMPARED}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


class HealthServer:
    """Answers like the demo service: the version current on the host, or a fixed one."""

    def __init__(self, fleet: Fleet, fixed: str | None = None) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                version = fixed or fleet.current()
                body = json.dumps({"status": "ok", "version": version}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: t.Any) -> None:
                return None

        self.hits = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health(fleet: Fleet) -> t.Iterator[HealthServer]:
    server = HealthServer(fleet)
    yield server
    server.close()


# ------------------------------------------------------------------------------------------ first install


def test_first_install_requires_opt_in(fleet: Fleet) -> None:
    result = fleet.run(fleet.args("1.0.0", restart_command=TRUE))
    assert result["failed"] is True
    assert result["msg"] == (
        f"web has no current release ({fleet.layout.current_link} is missing), so there is no rollback point; "
        "set require_rollback_point=false to allow a first install"
    )
    assert result["actions"] == []
    assert not os.path.exists(fleet.root)


def test_first_install(fleet: Fleet) -> None:
    result = fleet.install("1.0.0", patch_id="BASE")
    path, sha = fleet.artifacts["1.0.0"]
    release = f"{fleet.layout.releases_dir}/1.0.0"
    assert result["changed"] is True
    assert result["actions"] == ["download artifact", "unpack 1.0.0", "switch current (none) -> 1.0.0", "restart", "record manifest"]
    assert result["diff"] == {"before": {"version": None, "sha256": None, "release": None},
                              "after": {"version": "1.0.0", "sha256": sha, "release": release}}
    assert result["rollback_point"] == {"version": None, "release": None, "verified": False}
    assert (result["version"], result["previous_version"], result["reverted"], result["health"]) == ("1.0.0", None, False, None)
    assert os.readlink(fleet.layout.current_link) == "releases/1.0.0"
    assert sha256_file(fleet.layout.cache_path(sha)) == sha
    assert verify_release(release) == []
    manifest = fleet.manifest()
    assert {k: manifest[k] for k in ("version", "artifact_sha256", "release", "patch_id", "previous")} == {
        "version": "1.0.0", "artifact_sha256": sha, "release": release, "patch_id": "BASE", "previous": None}
    assert [(a["action"], a["from_version"], a["to_version"]) for a in fleet.audit()] == [("install", None, "1.0.0")]


def test_first_install_restart_failure_removes_current(fleet: Fleet) -> None:
    result = fleet.run(fleet.args("1.0.0", restart_command=["false"], require_rollback_point=False))
    assert result["failed"] is True
    assert result["msg"].startswith("restart command failed (rc=1)")
    assert result["msg"].endswith("no previous release to switch back to, so the current link was removed")
    assert (result["reverted"], result["rc"]) == (True, 1)
    assert not os.path.lexists(fleet.layout.current_link)
    assert fleet.manifest() is None
    assert [(a["action"], a["from_version"], a["to_version"]) for a in fleet.audit()] == [("revert", "1.0.0", None)]


# ------------------------------------------------------------------------------------------ patch


def test_patch_check_real_and_idempotent(fleet: Fleet, health: HealthServer) -> None:
    fleet.install("1.0.0")
    args = fleet.args("1.0.1", restart_command=TRUE, patch_id="P-1", health_url=health.url, health_delay=0)
    before = fleet.snapshot()

    check = fleet.run(args, check=True)
    assert fleet.snapshot() == before
    assert health.hits == 0
    assert check["changed"] is True and check["health"] is None

    real = fleet.run(args)
    same_outcome(check, real)
    sha0 = fleet.artifacts["1.0.0"][1]
    sha1 = fleet.artifacts["1.0.1"][1]
    releases = fleet.layout.releases_dir
    assert real["actions"] == ["download artifact", "unpack 1.0.1", "switch current 1.0.0 -> 1.0.1", "restart", "record manifest"]
    assert real["diff"] == {"before": {"version": "1.0.0", "sha256": sha0, "release": f"{releases}/1.0.0"},
                            "after": {"version": "1.0.1", "sha256": sha1, "release": f"{releases}/1.0.1"}}
    assert real["rollback_point"] == {"version": "1.0.0", "release": f"{releases}/1.0.0", "verified": True}
    assert (real["version"], real["previous_version"]) == ("1.0.1", "1.0.0")
    assert real["health"]["ok"] is True and real["health"]["version"] == "1.0.1" and real["health"]["attempts"] == 1
    assert Path(fleet.layout.current_link, "VERSION").read_text() == "1.0.1\n"
    manifest = fleet.manifest()
    assert (manifest["version"], manifest["patch_id"]) == ("1.0.1", "P-1")
    assert manifest["previous"] == {"version": "1.0.0", "artifact_sha256": sha0, "release": f"{releases}/1.0.0"}
    assert [a["action"] for a in fleet.audit()] == ["install", "install"]

    after = fleet.snapshot()
    check_again = fleet.run(args, check=True)
    real_again = fleet.run(args)
    assert fleet.snapshot() == after
    same_outcome(check_again, real_again)
    assert real_again["changed"] is False and real_again["actions"] == []
    assert real_again["diff"]["before"] == real_again["diff"]["after"] == real["diff"]["after"]
    assert real_again["rollback_point"] == {"version": "1.0.0", "release": f"{releases}/1.0.0", "verified": None}
    assert check_again["health"]["ok"] is True and real_again["health"]["ok"] is True


def test_restart_failure_reverts(fleet: Fleet) -> None:
    fleet.install("1.0.0", patch_id="BASE")
    result = fleet.run(fleet.args("1.0.1", restart_command=["sh", "-c", "echo boom >&2; exit 3"], patch_id="P-1"))
    assert result["failed"] is True
    assert result["msg"] == "restart command failed (rc=3): boom; switched back to 1.0.0; " \
        "the restart after switching back also failed (rc=3): boom"
    assert (result["reverted"], result["rc"], result["stderr"]) == (True, 3, "boom\n")
    assert result["actions"] == ["download artifact", "unpack 1.0.1", "switch current 1.0.0 -> 1.0.1", "restart",
                                 "switch current 1.0.1 -> 1.0.0", "record manifest"]
    assert result["version"] == "1.0.0"
    assert result["diff"]["after"]["version"] == "1.0.0"
    assert os.readlink(fleet.layout.current_link) == "releases/1.0.0"
    manifest = fleet.manifest()
    assert (manifest["version"], manifest["previous"]["version"]) == ("1.0.0", "1.0.1")
    assert [(a["action"], a["from_version"], a["to_version"]) for a in fleet.audit()][-1] == ("revert", "1.0.1", "1.0.0")


def test_restart_failure_with_false_reverts_and_next_run_patches(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    failed = fleet.run(fleet.args("1.0.1", restart_command=["false"]))
    assert failed["failed"] is True and failed["reverted"] is True
    assert failed["msg"].startswith("restart command failed (rc=1)")
    assert fleet.current() == "1.0.0"
    again = fleet.run(fleet.args("1.0.1", restart_command=TRUE))
    assert again["actions"] == ["switch current 1.0.0 -> 1.0.1", "restart", "record manifest"]
    assert fleet.current() == "1.0.1"


def test_health_failure_fails_without_revert(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    stuck = HealthServer(fleet, fixed="1.0.0")
    try:
        result = fleet.run(fleet.args("1.0.1", restart_command=TRUE, health_url=stuck.url, health_retries=2, health_delay=0))
    finally:
        stuck.close()
    assert result["failed"] is True
    assert result["msg"] == ("health check failed: reports version '1.0.0' and status 'ok', expected version '1.0.1' "
                             f"(2 attempt(s) on {stuck.url}, expected version 1.0.1)")
    assert result["health"]["ok"] is False and result["health"]["attempts"] == 2
    assert result["reverted"] is False and result["changed"] is True
    assert fleet.current() == "1.0.1"
    assert fleet.manifest()["version"] == "1.0.1"


def test_unverifiable_rollback_point_refused(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    Path(fleet.layout.current_link, "bin/app").write_text("#!/bin/sh\necho hotfixed\n")
    before = fleet.snapshot()
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE))
    assert result["failed"] is True
    assert result["msg"] == (f"rollback point 1.0.0 ({fleet.layout.releases_dir}/1.0.0) cannot be verified: "
                             "modified file bin/app; refusing to patch this host")
    assert result["rollback_point"]["verified"] is False
    assert result["actions"] == [] and result["changed"] is False
    assert fleet.snapshot() == before


def test_unverifiable_rollback_point_allowed_when_not_required(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    Path(fleet.layout.current_link, "bin/app").write_text("#!/bin/sh\necho hotfixed\n")
    # through the logic layer: under the test conftest's plugin loader, module warnings go to the display
    ops = HostOps()
    request = build_request(fleet.args("1.0.1", restart_command=TRUE, require_rollback_point=False))
    result = run_apply(fleet.layout, request, ops, ApplyResult()).as_dict()
    assert result["changed"] is True and fleet.current() == "1.0.1"
    assert result["rollback_point"]["verified"] is False
    assert ops.warnings == [f"rollback point 1.0.0 ({fleet.layout.releases_dir}/1.0.0) cannot be verified: modified file bin/app"]
    assert fleet.manifest()["previous"]["version"] == "1.0.0"


def test_wrong_digest_download_refused(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    before = fleet.snapshot()
    path, _sha = fleet.artifacts["1.0.1"]
    wrong = "f" * 64
    result = fleet.run({**fleet.args("1.0.1", restart_command=TRUE), "sha256": wrong})
    assert result["failed"] is True
    assert f"sha256 {fleet.artifacts['1.0.1'][1]}, expected {wrong}" in result["msg"] and "it was not cached" in result["msg"]
    # artifact_url is no_log: it may carry credentials, so it never appears in a result
    assert path not in json.dumps(result)
    assert os.listdir(fleet.layout.cache_dir) == [fleet.artifacts["1.0.0"][1]]
    assert fleet.snapshot() == before


def test_corrupt_cache_is_downloaded_again_or_refused(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    _path, sha = fleet.artifacts["1.0.1"]
    Path(fleet.layout.cache_path(sha)).write_bytes(b"bitrot")
    refused = fleet.run({k: v for k, v in fleet.args("1.0.1").items() if k != "artifact_url"})
    assert refused["failed"] is True
    assert refused["msg"].endswith(f"the cached copy is corrupt and no artifact_url was given; refused and removed from {fleet.layout.cache_dir}")
    # a refused cache entry is never left to be reused
    assert not os.path.exists(fleet.layout.cache_path(sha))
    healed = fleet.run(fleet.args("1.0.1"))
    assert healed["changed"] is True and healed["actions"][0] == "download artifact"
    assert sha256_file(fleet.layout.cache_path(sha)) == sha


def test_same_version_other_artifact_refused(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    _path, sha1 = fleet.artifacts["1.0.1"]
    result = fleet.run({**fleet.args("1.0.0"), "sha256": sha1})
    assert result["failed"] is True
    assert result["msg"].startswith(f"version 1.0.0 is installed from artifact {fleet.artifacts['1.0.0'][1]}, not {sha1}")


def test_resume_after_kill_between_switch_and_manifest(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    path, sha = fleet.artifacts["1.0.1"]
    unpack_release(fleet.layout, version="1.0.1", artifact_path=path, sha256=sha)
    switch_current(fleet.layout, "1.0.1")
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE))
    assert result["changed"] is True
    assert result["actions"] == ["restart", "record manifest"]
    assert result["diff"]["before"]["version"] == "1.0.0" and result["previous_version"] == "1.0.0"
    assert result["rollback_point"] == {"version": "1.0.0", "release": f"{fleet.layout.releases_dir}/1.0.0", "verified": True}
    manifest = fleet.manifest()
    assert (manifest["version"], manifest["previous"]["version"]) == ("1.0.1", "1.0.0")
    assert fleet.run(fleet.args("1.0.1", restart_command=TRUE))["changed"] is False


def test_prune_keeps_current_and_rollback_point(fleet: Fleet) -> None:
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        fleet.install(version, keep_releases=5)
    check = fleet.run(fleet.args("1.0.3", restart_command=TRUE, keep_releases=1), check=True)
    real = fleet.run(fleet.args("1.0.3", restart_command=TRUE, keep_releases=1))
    same_outcome(check, real)
    assert real["actions"][-2:] == ["prune 1.0.0", "prune 1.0.1"]
    assert sorted(os.listdir(fleet.layout.releases_dir)) == ["1.0.2", "1.0.3"]


# ------------------------------------------------------------------------------------------ rollback


def test_rollback_and_idempotence(fleet: Fleet, health: HealthServer) -> None:
    fleet.install("1.0.0")
    fleet.install("1.0.1", patch_id="P-1")
    args = fleet.args("1.0.1", state="rollback", restart_command=TRUE, health_url=health.url, patch_id="P-1")
    before = fleet.snapshot()
    check = fleet.run(args, check=True)
    assert fleet.snapshot() == before
    real = fleet.run(args)
    same_outcome(check, real)
    releases = fleet.layout.releases_dir
    sha0 = fleet.artifacts["1.0.0"][1]
    sha1 = fleet.artifacts["1.0.1"][1]
    assert real["actions"] == ["switch current 1.0.1 -> 1.0.0", "restart", "record manifest"]
    assert (real["version"], real["previous_version"], real["sha256"]) == ("1.0.0", "1.0.1", sha0)
    assert real["rollback_point"] == {"version": "1.0.0", "release": f"{releases}/1.0.0", "verified": True}
    assert real["diff"] == {"before": {"version": "1.0.1", "sha256": sha1, "release": f"{releases}/1.0.1"},
                            "after": {"version": "1.0.0", "sha256": sha0, "release": f"{releases}/1.0.0"}}
    assert real["health"]["ok"] is True and real["health"]["version"] == "1.0.0"
    assert os.readlink(fleet.layout.current_link) == "releases/1.0.0"
    manifest = fleet.manifest()
    assert (manifest["version"], manifest["previous"]["version"]) == ("1.0.0", "1.0.1")
    assert [(a["action"], a["from_version"], a["to_version"]) for a in fleet.audit()][-1] == ("rollback", "1.0.1", "1.0.0")

    after = fleet.snapshot()
    again = fleet.run(args)
    assert (again["changed"], again["actions"], again["version"]) == (False, [], "1.0.0")
    assert again["health"]["ok"] is True
    assert fleet.snapshot() == after


def test_rollback_refuses_unverifiable_previous(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    fleet.install("1.0.1")
    os.unlink(f"{fleet.layout.releases_dir}/1.0.0/VERSION")
    before = fleet.snapshot()
    result = fleet.run(fleet.args("1.0.1", state="rollback", restart_command=TRUE))
    assert result["failed"] is True
    assert result["msg"] == (f"rollback point 1.0.0 ({fleet.layout.releases_dir}/1.0.0) cannot be verified: "
                             "missing file VERSION; refusing to roll back")
    assert fleet.snapshot() == before


def test_rollback_without_previous_fails(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    result = fleet.run(fleet.args("1.0.0", state="rollback"))
    assert result["failed"] is True
    assert result["msg"] == (f"no previous release of web is recorded in {fleet.layout.manifest_path}; nothing to roll back to")


def test_rollback_of_a_version_the_host_does_not_run_is_a_no_op(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    before = fleet.snapshot()
    result = fleet.run(fleet.args("1.0.1", state="rollback", restart_command=TRUE))
    assert (result["changed"], result["actions"], result["version"]) == (False, [], "1.0.0")
    assert fleet.snapshot() == before


def test_rollback_resumes_after_kill_between_switch_and_manifest(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    fleet.install("1.0.1")
    switch_current(fleet.layout, "1.0.0")
    result = fleet.run(fleet.args("1.0.1", state="rollback", restart_command=TRUE))
    assert result["changed"] is True
    assert result["actions"] == ["restart", "record manifest"]
    manifest = fleet.manifest()
    assert (manifest["version"], manifest["previous"]["version"]) == ("1.0.0", "1.0.1")


# ------------------------------------------------------------------------------------------ options


def test_invalid_sha256_fails_cleanly(fleet: Fleet) -> None:
    result = fleet.run({**fleet.args("1.0.0"), "sha256": "xyz"})
    assert result["failed"] is True
    assert result["msg"] == "sha256 'xyz' is not a 64 hex digit digest"


def test_url_headers_are_not_logged(fleet: Fleet) -> None:
    result = fleet.install("1.0.0", url_headers={"Authorization": "Bearer s3cr3t-token"})
    assert "s3cr3t-token" not in json.dumps(result)


def test_restart_command_as_string(fleet: Fleet) -> None:
    marker = Path(fleet.root).parent / "restarted"
    result = fleet.install("1.0.0", restart_command=f"touch '{marker}'")
    assert "restart" in result["actions"]
    assert marker.exists()


# ------------------------------------------------------------------------------ signatures, applicability, direction


class Signer:
    """An ed25519 key made with ssh-keygen, its allowed_signers line and detached signatures of files."""

    def __init__(self, directory: Path, principal: str) -> None:
        import subprocess

        self._run = subprocess.run
        self.key = str(directory / principal.split("@")[0])
        self._run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", self.key], check=True)
        public = Path(self.key + ".pub").read_text().split()
        self.line = f"{principal} {public[0]} {public[1]}\n"
        self.fingerprint = self._run(["ssh-keygen", "-lf", self.key + ".pub"], check=True, capture_output=True, text=True).stdout.split()[1]

    def sign(self, path: str) -> str:
        with open(path, "rb") as handle:
            return self._run(["ssh-keygen", "-q", "-Y", "sign", "-f", self.key, "-n", "fleetpatch"], stdin=handle, check=True,
                             capture_output=True, text=True).stdout


@pytest.fixture
def signers(tmp_path: Path) -> dict[str, Signer]:
    keys = tmp_path / "keys"
    keys.mkdir()
    return {name: Signer(keys, f"{name}@example.com") for name in ("release", "rogue")}


def signed(fleet: Fleet, signers: dict[str, Signer], version: str, *, by: str = "release", **extra: t.Any) -> dict[str, t.Any]:
    path, _sha = fleet.artifacts[version]
    return fleet.args(version, restart_command=TRUE, signature=signers[by].sign(path), allowed_signers=signers["release"].line,
                      require_signature=True, **extra)


def test_signed_artifact_installs_and_records_its_signer(fleet: Fleet, signers: dict[str, Signer]) -> None:
    fleet.install("1.0.0")
    result = fleet.run(signed(fleet, signers, "1.0.1"))
    assert not result.get("failed"), result
    assert result["signature"] == {"principal": "release@example.com", "key": f"ssh-ed25519 key {signers['release'].fingerprint}",
                                   "artifact": "artifact"}
    metadata = json.loads(Path(fleet.layout.release_path("1.0.1"), ".fleetpatch-release.json").read_text())
    assert metadata["signature"]["principal"] == "release@example.com"
    # an installed release is not verified again: a re-run stays cheap and unchanged
    again = fleet.run(signed(fleet, signers, "1.0.1"))
    assert again["changed"] is False and "signature" not in again


@pytest.mark.parametrize("cached", [True, False], ids=["copied-into-cache", "downloaded"])
def test_wrong_key_is_refused_before_any_release_directory_and_leaves_the_cache(
        fleet: Fleet, signers: dict[str, Signer], cached: bool) -> None:
    fleet.install("1.0.0")
    path, sha = fleet.artifacts["1.0.1"]
    args = signed(fleet, signers, "1.0.1", by="rogue")
    if cached:
        # rollout_stage=copy / prestaged: the bytes are in the cache, the digest is right, the signer is not trusted
        os.makedirs(fleet.layout.cache_dir, exist_ok=True)
        Path(fleet.layout.cache_path(sha)).write_bytes(Path(path).read_bytes())
        args.pop("artifact_url")
    before = fleet.snapshot()
    # check mode verifies what is cached the same way; what it would download it cannot verify yet
    for check in (True, False) if cached else (False,):
        result = fleet.run(args, check=check)
        assert result["failed"] is True
        assert result["msg"].startswith(f"signature of artifact {sha} was made by ssh-ed25519 key {signers['rogue'].fingerprint}, which is "
                                        "not in allowed_signers (trusted: release@example.com); refused and ")
        assert result["msg"].endswith(f"removed from {fleet.layout.cache_dir}")
        assert fleet.current() == "1.0.0" and os.listdir(fleet.layout.releases_dir) == ["1.0.0"]
    assert not os.path.exists(fleet.layout.cache_path(sha))
    before.pop(os.path.relpath(fleet.layout.cache_path(sha), fleet.root), None)
    assert fleet.snapshot() == before


def test_missing_signature_when_required(fleet: Fleet, signers: dict[str, Signer]) -> None:
    fleet.install("1.0.0")
    path, sha = fleet.artifacts["1.0.1"]
    Path(fleet.layout.cache_path(sha)).write_bytes(Path(path).read_bytes())
    args = {k: v for k, v in signed(fleet, signers, "1.0.1").items() if k != "signature"}
    result = fleet.run(args)
    assert result["failed"] is True
    assert result["msg"] == (f"no signature: artifact {sha} carries no signature and this host installs only signed artifacts "
                             f"(require_signature); refused and removed from {fleet.layout.cache_dir}")
    assert not os.path.exists(fleet.layout.cache_path(sha)) and fleet.current() == "1.0.0"
    no_signers = fleet.run(dict(signed(fleet, signers, "1.0.1"), allowed_signers=None))
    assert no_signers["failed"] is True and "no allowed_signers were given" in no_signers["msg"]
    # not required: an unsigned artifact installs (a dev host)
    assert not fleet.run(dict(args, require_signature=False)).get("failed")


def test_release_unpacked_without_a_verified_signature_is_rebuilt(fleet: Fleet, signers: dict[str, Signer]) -> None:
    fleet.install("1.0.0")
    path, sha = fleet.artifacts["1.0.1"]
    unpack_release(fleet.layout, version="1.0.1", artifact_path=path, sha256=sha)
    result = fleet.run(signed(fleet, signers, "1.0.1"))
    assert not result.get("failed"), result
    assert "unpack 1.0.1" in result["actions"] and result["signature"]["principal"] == "release@example.com"


def test_not_applicable_host_is_left_alone(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    fleet.install("1.0.2")
    before = fleet.snapshot()
    for check in (True, False):
        result = fleet.run(fleet.args("1.0.3", restart_command=TRUE, affected_versions=["1.0.0", "1.0.1"]), check=check)
        assert not result.get("failed") and result["changed"] is False and result["not_applicable"] is True
        assert result["installed_version"] == "1.0.2" and result["version"] == "1.0.2" and result["actions"] == []
        assert result["msg"] == "not applicable: web 1.0.2 is installed, and patch 1.0.3 applies only to 1.0.0, 1.0.1; nothing was changed"
    assert fleet.snapshot() == before
    applies = fleet.run(fleet.args("1.0.3", restart_command=TRUE, affected_versions=["1.0.2"]))
    assert not applies.get("failed") and "not_applicable" not in applies and fleet.current() == "1.0.3"


def test_fresh_host_applies_only_without_affected_versions(fleet: Fleet) -> None:
    result = fleet.run(fleet.args("1.0.0", require_rollback_point=False, affected_versions=["0.9.0"]))
    assert result["not_applicable"] is True and result["installed_version"] is None
    assert not os.path.exists(fleet.root)
    assert not fleet.run(fleet.args("1.0.0", require_rollback_point=False)).get("failed")


def test_downgrade_refused_unless_allowed(fleet: Fleet) -> None:
    fleet.install("1.0.0")
    fleet.install("1.0.2")
    before = fleet.snapshot()
    refused = fleet.run(fleet.args("1.0.1", restart_command=TRUE, affected_versions=["1.0.2"]))
    assert refused["failed"] is True
    assert refused["msg"] == ("downgrade refused: web 1.0.2 is installed and the target 1.0.1 is older; a downgrade needs "
                              "allow_downgrade (with its justification in the patch manifest)")
    assert fleet.snapshot() == before
    allowed = fleet.run(fleet.args("1.0.1", restart_command=TRUE, affected_versions=["1.0.2"], allow_downgrade=True))
    assert not allowed.get("failed") and allowed["downgrade"] == {"from": "1.0.2", "to": "1.0.1"} and fleet.current() == "1.0.1"


def test_missing_cached_copy_without_url_says_not_cached(fleet: Fleet) -> None:
    # rollout_stage=prestaged: the copy the readiness gate trusted is gone; the gate keeps the host out (not_staged)
    fleet.install("1.0.0")
    _path, sha = fleet.artifacts["1.0.1"]
    before = fleet.snapshot()
    missing = fleet.run({k: v for k, v in fleet.args("1.0.1").items() if k != "artifact_url"})
    assert missing["failed"] is True and missing["not_cached"] is True and missing["changed"] is False
    assert missing["msg"] == f"artifact {sha} is not in {fleet.layout.cache_dir} and no artifact_url was given"
    assert fleet.snapshot() == before
    # a copy that is there but corrupt is not "not cached": it stays a failure of its own
    os.makedirs(fleet.layout.cache_dir, exist_ok=True)
    Path(fleet.layout.cache_path(sha)).write_bytes(b"bitrot")
    corrupt = fleet.run({k: v for k, v in fleet.args("1.0.1").items() if k != "artifact_url"})
    assert corrupt["failed"] is True and "not_cached" not in corrupt
