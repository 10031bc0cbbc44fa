"""Hostile input that fleetpatch already refused before issue 15, kept as tests so it stays refused.

Template injection through the manifest and the inventory, path injection through names, state directories that
cannot be written: each must fail (or pass untemplated) before any host is touched, and leave every host as it was.
One demo fleet serves every case; each case asserts the error, the hosts' files, and that nothing was executed.
"""

from __future__ import annotations

import os
import typing as t

import pytest
import yaml

from .rollout_harness import DemoFleet, run_playbook, tree_snapshot

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> t.Iterator[DemoFleet]:
    demo = DemoFleet(str(tmp_path_factory.mktemp("held")), demo_fleet_hosts_per_cell=1)
    demo.create()
    yield demo
    demo.teardown()


def _manifest(fleet: DemoFleet) -> dict[str, t.Any]:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _write(path: os.PathLike[str] | str, data: t.Any) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return str(path)


def _lookup_marker(marker: str) -> str:
    """A template that, if anything ever rendered it, would create `marker` on the controller."""
    return "{{ lookup('ansible.builtin.pipe', 'touch " + marker + "') }}"


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        pytest.param("patch_id", "patch_id", id="template-in-patch-id"),
        pytest.param("service", "service", id="template-in-service"),
        pytest.param("target_version", "target_version", id="template-in-target-version"),
    ],
)
def test_a_template_in_a_manifest_name_is_refused_and_never_rendered(fleet, tmp_path, field: str, expected: str) -> None:
    marker = str(tmp_path / "rendered")
    manifest = _manifest(fleet)
    manifest[field] = _lookup_marker(marker)
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    result = fleet.rollout(rollout_patch_manifest=_write(tmp_path / "patch.yml", manifest))
    assert result.status == "failed"
    assert expected in result.stdout
    assert not os.path.exists(marker), "a template in the manifest was rendered"
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before


def test_a_template_in_free_text_is_kept_as_text_and_never_rendered(fleet, tmp_path) -> None:
    marker = str(tmp_path / "rendered")
    manifest = _manifest(fleet)
    manifest["description"] = "fix " + _lookup_marker(marker)
    manifest["justification"] = "needed " + _lookup_marker(marker)
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    result = fleet.rollout(rollout_patch_manifest=_write(tmp_path / "patch.yml", manifest), rollout_preview=True)
    assert result.status == "successful", result.stdout[-3000:]
    assert not os.path.exists(marker), "a template in the manifest's description was rendered"
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before


def test_a_template_in_an_inventory_variable_is_never_rendered(fleet, tmp_path) -> None:
    marker = str(tmp_path / "rendered")
    with open(fleet.inventory, encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    victim = fleet.nodes()[2]
    inventory["hosts"][victim]["fleet_segment"] = _lookup_marker(marker)
    broken = _write(tmp_path / "templated.fleet.yml", inventory)
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    result = run_playbook("rollout.yml", inventory=broken, extravars={
        "rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": str(tmp_path / "state"), "rollout_preview": True})
    assert not os.path.exists(marker), "a template in an inventory variable was rendered"
    # Either refused as a bad name or planned as the literal text; never executed, and no host touched.
    if result.status == "failed":
        assert victim in result.stdout and "fleet_segment" in result.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        pytest.param("service", "../../etc", "service", id="service-path-traversal"),
        pytest.param("service", "app/../../x", "service", id="service-with-slash"),
        pytest.param("target_version", "../1.0.1", "target_version", id="version-path-traversal"),
        pytest.param("target_version", "1.0.1/../../etc", "target_version", id="version-with-slash"),
        pytest.param("patch_id", "../../../tmp/run", "patch_id", id="patch-id-path-traversal"),
    ],
)
def test_a_path_in_a_name_is_refused_before_any_host(fleet, tmp_path, field: str, value: str, expected: str) -> None:
    manifest = _manifest(fleet)
    manifest[field] = value
    state_dir = str(tmp_path / "state")
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    result = fleet.rollout(rollout_patch_manifest=_write(tmp_path / "patch.yml", manifest), rollout_state_dir=state_dir)
    assert result.status == "failed"
    assert expected in result.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    assert not os.path.exists(os.path.join(state_dir, "runs")), "a refused manifest created a run"


def test_a_state_dir_that_cannot_be_created_fails_naming_it_before_any_host(fleet, tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory's parent should be\n")
    state_dir = str(blocker / "state")
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    result = fleet.rollout(rollout_state_dir=state_dir)
    assert result.status == "failed"
    assert str(blocker) in result.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
