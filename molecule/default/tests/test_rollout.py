"""What a rollout of FP-MOLECULE-1 (myapp 1.0.0 -> 1.0.1) leaves on every node."""

from __future__ import annotations

import json
import typing as t

ROOT = "/opt/fleetpatch"
APP = f"{ROOT}/apps/myapp"
BASE = "1.0.0"
TARGET = "1.0.1"


def read_json(host: t.Any, path: str) -> t.Any:
    file = host.file(path)
    assert file.is_file, f"{path} is missing"
    return json.loads(file.content_string)


def test_current_points_at_the_target_release(host: t.Any) -> None:
    current = host.file(f"{APP}/current")
    assert current.is_symlink
    assert current.linked_to == f"{APP}/releases/{TARGET}"
    assert host.file(f"{APP}/current/VERSION").content_string == f"{TARGET}\n"
    assert host.run(f"{APP}/current/bin/myapp").stdout == f"myapp {TARGET}\n"


def test_target_release_records_the_signer_it_was_verified_with(host: t.Any) -> None:
    metadata = read_json(host, f"{APP}/releases/{TARGET}/.fleetpatch-release.json")
    assert metadata["signature"]["principal"] == "release@molecule"
    assert metadata["signature"]["key"].startswith("ssh-ed25519 key SHA256:")


def test_rollback_point_is_kept_with_its_metadata(host: t.Any) -> None:
    assert host.file(f"{APP}/releases/{BASE}").is_directory
    assert host.file(f"{APP}/releases/{BASE}/VERSION").content_string == f"{BASE}\n"
    metadata = read_json(host, f"{APP}/releases/{BASE}/.fleetpatch-release.json")
    assert metadata["version"] == BASE


def test_no_temporary_release_directories_remain(host: t.Any) -> None:
    leftovers = host.run(f"find {APP}/releases -mindepth 1 -maxdepth 1 -name '.*'").stdout.split()
    assert not leftovers


def test_target_artifact_is_cached_by_digest(host: t.Any, patch_manifest: dict[str, t.Any]) -> None:
    sha256 = patch_manifest["artifact"]["sha256"]
    cached = host.file(f"{ROOT}/cache/sha256/{sha256}")
    assert cached.is_file
    assert cached.sha256sum == sha256
    assert cached.size == patch_manifest["artifact"]["size"]


def test_host_manifest_records_the_patch(host: t.Any, patch_manifest: dict[str, t.Any]) -> None:
    manifest = read_json(host, f"{ROOT}/state/myapp.manifest.json")
    assert manifest["service"] == "myapp"
    assert manifest["version"] == TARGET
    assert manifest["artifact_sha256"] == patch_manifest["artifact"]["sha256"]
    assert manifest["release"] == f"{APP}/releases/{TARGET}"
    assert manifest["patch_id"] == patch_manifest["patch_id"]
    assert manifest["previous"]["version"] == BASE
    assert manifest["previous"]["release"] == f"{APP}/releases/{BASE}"


def test_audit_has_both_installs_and_nothing_else(host: t.Any, patch_manifest: dict[str, t.Any]) -> None:
    lines = host.file(f"{ROOT}/state/audit.jsonl").content_string.splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["action"], r["from_version"], r["to_version"]) for r in records] == [
        ("install", None, BASE),
        ("install", BASE, TARGET),
    ]
    assert records[1]["sha256"] == patch_manifest["artifact"]["sha256"]
    assert records[1]["patch_id"] == patch_manifest["patch_id"]
    assert all(r["service"] == "myapp" for r in records)


def test_controller_run_rolled_out_canary_first(run_summary: dict[str, t.Any], platform_names: list[str]) -> None:
    assert run_summary["status"] == "rolled_out"
    assert run_summary["target_version"] == TARGET
    assert run_summary["counts"]["patched"] == len(platform_names)
    hosts = run_summary["hosts"]
    assert sorted(hosts) == sorted(platform_names)
    assert {entry["outcome"] for entry in hosts.values()} == {"patched"}
    canary = [name for name, entry in hosts.items() if entry["wave"] == "canary"]
    assert len(canary) == 1
    assert hosts[canary[0]]["batch"] == 0
    assert all(entry["batch"] > 0 for name, entry in hosts.items() if name not in canary)
