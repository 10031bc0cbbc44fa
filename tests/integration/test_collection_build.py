"""`ansible-galaxy collection build` gives a tarball that installs and works by FQCN outside the repository."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from .rollout_harness import REPO_ROOT

pytestmark = pytest.mark.integration
BIN = os.path.dirname(sys.executable)
# What the tarball must not hold (galaxy.yml's build_ignore): the repository's tests, benchmarks, molecule scenarios,
# developer entry points and dev config, and the demo fleet (its own collection, fleetpatch.demo, under collections/).
NOT_SHIPPED_DIRS = ("tests/", "bench/", "molecule/", "collections/", "bin/", ".venv/", ".ci/", ".git/", "changelogs/fragments/", "awx/")
DEV_CONFIG = {"pytest.ini", ".ansible-lint", "ansible.cfg", "requirements-dev.txt", "requirements.yml", ".gitignore", "execution-environment.yml"}
DEMO_MARKERS = ("demo_fleet", "fleet_service.py", "fleetctl.py", "inventories/demo")


def _run(args: list[str], cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _release_tarball(path: str, version: str) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in (("VERSION", f"{version}\n"), ("bin/app", "#!/bin/sh\necho app\n")):
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_built_collection_installs_and_runs_by_fqcn(tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
        "ANSIBLE_INVENTORY_ENABLED": "fleetpatch.rollout.fleet,ansible.builtin.yaml",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
    }
    build = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), REPO_ROOT], str(outside), env)
    assert build.returncode == 0, build.stderr
    with open(os.path.join(REPO_ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        version = yaml.safe_load(handle)["version"]
    tarball = tmp_path / f"fleetpatch-rollout-{version}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    print("tarball members:", *sorted(names), sep="\n  ")
    assert {"plugins/modules/patch_apply.py", "playbooks/rollout.yml", "roles/rollout/tasks/main.yml", "meta/runtime.yml", "README.md"} <= names
    assert not [name for name in names if (name + "/").startswith(NOT_SHIPPED_DIRS)]
    assert not names & DEV_CONFIG
    assert not [name for name in names if any(marker in name for marker in DEMO_MARKERS)]

    install = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(tmp_path / "collections"), str(tarball)], str(outside), env)
    assert install.returncode == 0, install.stderr

    doc = _run([os.path.join(BIN, "ansible-doc"), "--json", "fleetpatch.rollout.patch_apply"], str(outside), env)
    assert doc.returncode == 0, doc.stderr
    assert "sha256" in json.loads(doc.stdout)["fleetpatch.rollout.patch_apply"]["doc"]["options"]

    root = tmp_path / "host"
    sha = _release_tarball(str(tmp_path / "app-1.0.0.tar.gz"), "1.0.0")
    playbook = outside / "install.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Install a first release by FQCN",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [{
            "name": "Install",
            "fleetpatch.rollout.patch_apply": {
                "root": str(root), "service": "app", "version": "1.0.0", "sha256": sha,
                "artifact_url": f"file://{tmp_path}/app-1.0.0.tar.gz", "require_rollback_point": False,
            },
        }],
    }]))
    played = _run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", str(playbook)], str(outside), env)
    assert played.returncode == 0, played.stdout + played.stderr
    assert (root / "apps" / "app" / "current" / "VERSION").read_text() == "1.0.0\n"

    fleet = outside / "tiny.fleet.yml"
    fleet.write_text(yaml.safe_dump({
        "plugin": "fleetpatch.rollout.fleet",
        "defaults": {"ansible_connection": "local", "fleetpatch_host_root": str(root)},
        "hosts": {f"web-{i}": {"fleet_region": "eu", "fleet_tenant": "t", "fleet_segment": "web", "fleet_environment": "staging"} for i in range(1, 4)},
    }))
    manifest = outside / "patch.yml"
    manifest.write_text(yaml.safe_dump({"patch_id": "FP-T-1", "service": "app", "target_version": "1.0.1",
                                        "change_type": "scheduled", "classification": "functional", "justification": "build test",
                                        "affected_versions": ["1.0.0"], "regression_risk": "low", "requested_by": "alice",
                                        "approved_by": ["bob"],
                                        "artifact": {"url": "file:///nonexistent/app.tar.gz", "sha256": "0" * 64}}))
    preview = _run([os.path.join(BIN, "ansible-playbook"), "-i", str(fleet), "fleetpatch.rollout.rollout",
                    "-e", f"rollout_patch_manifest={manifest}", "-e", "rollout_preview=true",
                    "-e", f"rollout_state_dir={tmp_path / 'state'}"], str(outside), env)
    assert preview.returncode == 0, preview.stdout[-3000:] + preview.stderr
    assert "plan FP-T-1: 3 hosts" in preview.stdout
    assert not (tmp_path / "state").exists()
