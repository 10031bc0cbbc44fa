from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._patch_facts import (
    PatchFactsError,
    package_versions,
    read_patch_facts,
    read_service,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import HostLayout, record_install, switch_current

SHA = "a" * 64


def installed(root: Path, service: str, version: str, *, previous: str | None = None) -> HostLayout:
    """A host root as patch_apply leaves it: release directory, current link, manifest (written by the same code)."""
    layout = HostLayout(root=str(root), service=service)
    os.makedirs(layout.release_path(version), exist_ok=True)
    switch_current(layout, version)
    prev = {"version": previous, "artifact_sha256": "b" * 64} if previous else None
    if previous:
        os.makedirs(layout.release_path(previous), exist_ok=True)
    record_install(layout, version=version, sha256=SHA, patch_id="FP-1", previous=prev, action="install",
                   now="2026-03-01T10:00:00Z")
    return layout


def test_reads_what_patch_apply_wrote(tmp_path: Path) -> None:
    installed(tmp_path, "web", "1.0.1", previous="1.0.0")
    facts = read_service(str(tmp_path), "web")
    assert facts == {"state": "ok", "reason": None, "manifest": f"{tmp_path}/state/web.manifest.json", "version": "1.0.1",
                     "artifact_sha256": SHA, "release": f"{tmp_path}/apps/web/releases/1.0.1", "patch_id": "FP-1",
                     "installed_at": "2026-03-01T10:00:00Z", "previous_version": "1.0.0", "current": "1.0.1"}


@pytest.mark.parametrize(("content", "reason"), [
    (b"{not json", "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[1, 2]", "is not a JSON object"),
    (b'{"version": "../etc"}', "records no valid version ('../etc')"),
    (b'{"service": "other", "version": "1.0.1"}', "describes service 'other', not web"),
    (b'{"version": "1.0.1", "artifact_sha256": "xyz"}', "records an invalid artifact_sha256 ('xyz')"),
    (b"\xff\xfe", "is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_corrupt_manifest_is_reported_with_its_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    layout = installed(tmp_path, "web", "1.0.1")
    Path(layout.manifest_path).write_bytes(content)
    facts = read_service(str(tmp_path), "web")
    assert facts["state"] == "corrupt"
    assert facts["reason"] == f"{layout.manifest_path} {reason}"
    assert "version" not in facts


def test_manifest_and_current_link_must_agree(tmp_path: Path) -> None:
    layout = installed(tmp_path, "web", "1.0.1", previous="1.0.0")
    switch_current(layout, "1.0.0")
    facts = read_service(str(tmp_path), "web")
    assert (facts["state"], facts["reason"]) == (
        "inconsistent", "the current release is 1.0.0, the manifest records 1.0.1 (an apply interrupted between switch and manifest?)")
    os.unlink(layout.current_link)
    assert read_service(str(tmp_path), "web")["reason"] == "the manifest records 1.0.1 but there is no current release link"


def test_missing_and_all_services(tmp_path: Path) -> None:
    installed(tmp_path, "web", "1.0.1")
    installed(tmp_path, "api", "2.0.0")
    (tmp_path / "state" / "audit.jsonl").write_text("{}\n")
    facts = read_patch_facts(str(tmp_path))
    assert sorted(facts["services"]) == ["api", "web"] and facts["root_exists"] is True
    named = read_patch_facts(str(tmp_path), services=["web", "db"])
    assert named["services"]["db"] == {"state": "missing", "reason": f"no host manifest at {tmp_path}/state/db.manifest.json",
                                       "manifest": f"{tmp_path}/state/db.manifest.json"}
    empty = read_patch_facts(str(tmp_path / "nowhere"))
    assert (empty["services"], empty["root_exists"]) == ({}, False)


def test_refuses_a_bad_service_name(tmp_path: Path) -> None:
    with pytest.raises(PatchFactsError, match=r"^service '\.\./x' is not valid"):
        read_patch_facts(str(tmp_path), services=["../x"])


def test_never_writes(tmp_path: Path) -> None:
    installed(tmp_path, "web", "1.0.1")
    before = {str(p): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    read_patch_facts(str(tmp_path), services=["web", "db"])
    assert {str(p): p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize(("manager", "tool", "out", "expected"), [
    ("dpkg", "dpkg-query", "openssl\t3.0.15-1\tii \nlibfoo\t1.0\tun \n", {"openssl": "3.0.15-1", "libfoo": None, "zlib1g": None}),
    ("rpm", "rpm", "openssl\t3.0.7-27.el9\n", {"openssl": "3.0.7-27.el9", "libfoo": None, "zlib1g": None}),
    ("auto", "dpkg-query", "zlib1g\t1:1.2.13\tii \n", {"openssl": None, "libfoo": None, "zlib1g": "1:1.2.13"}),
])
def test_package_versions_with_one_call(manager: str, tool: str, out: str, expected: dict[str, t.Any]) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, str, str]:
        calls.append(argv)
        return 1, out, "package libfoo is not installed"

    found = package_versions(["openssl", "libfoo", "zlib1g"], manager=manager, run=run,
                             which=lambda name: f"/usr/bin/{name}" if name == tool else None)
    assert found == expected
    assert len(calls) == 1 and calls[0][0] == f"/usr/bin/{tool}"


def test_package_versions_without_a_package_manager() -> None:
    with pytest.raises(PatchFactsError, match="no package manager found"):
        package_versions(["openssl"], manager="auto", run=lambda argv: (0, "", ""), which=lambda name: None)


def test_facts_are_json(tmp_path: Path) -> None:
    installed(tmp_path, "web", "1.0.1")
    json.dumps(read_patch_facts(str(tmp_path)))
