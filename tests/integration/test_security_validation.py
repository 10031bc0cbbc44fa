"""Issue 15, validation: every bad input is refused by the plan before any host is touched.

One small demo fleet serves every case. Each case runs playbooks/rollout.yml with one bad input (manifest, fleet
file, host variable, policy) and asserts (a) the exact error, naming field, value and file or host, (b) that no host
changed (versions and every file under the hosts' directories), (c) that the run left nothing behind (no run
directory: the plan refused it before it wrote or locked anything).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import typing as t

import pytest
import yaml

from .rollout_harness import DemoFleet, run_playbook, tree_snapshot

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
FLEET = {"demo_fleet_regions": ["eu-west"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}
MEGABYTE = "r" * (1024 * 1024)
BOMB = "".join(
    [f"service: myapp\npatch_id: FP-BOMB\na: &a [{', '.join(['lol'] * 9)}]\n"]
    + [f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")]
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> t.Iterator[DemoFleet]:
    demo = DemoFleet(str(tmp_path_factory.mktemp("validation")), **FLEET)
    demo.create()
    yield demo
    demo.teardown()


@pytest.fixture(scope="module")
def untouched(fleet: DemoFleet) -> dict[str, t.Any]:
    return {"versions": fleet.versions(), "tree": tree_snapshot(os.path.join(fleet.path, "hosts"))}


def _manifest(fleet: DemoFleet, **changes: t.Any) -> dict[str, t.Any]:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    for key, value in changes.items():
        target = data
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return data


def _write(tmp_path, name: str, content: t.Any) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _refused(fleet: DemoFleet, untouched: dict[str, t.Any], result: t.Any, message: str) -> None:
    assert result.status == "failed", result.stdout[-3000:]
    assert message in result.stdout, result.stdout[-3000:]
    assert fleet.versions() == untouched["versions"] == {host: "1.0.0" for host in fleet.nodes()}
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == untouched["tree"]
    # refused before the plan wrote or locked anything: no run directory, no event log
    assert not os.path.exists(fleet.run_dir(RUN_ID))
    assert fleet.run_lock(RUN_ID) is None


MANIFEST_CASES = {
    "newline-in-target-version": ({"target_version": "1.0.1\n"},
                                  "target_version '1.0.1\\n' contains the control character '\\n' at position 5"),
    "newline-in-sha256": ({"artifact.sha256": "a" * 64 + "\n"}, "artifact.sha256 must be 64 hexadecimal characters, got 'aaaaaaaaaaaaaaa"),
    "newline-in-service": ({"service": "myapp\n"}, "service 'myapp\\n' contains the control character '\\n' at position 5"),
    "newline-in-patch-id": ({"patch_id": "FP-DEMO-myapp-1.0.1\n"},
                            "patch_id 'FP-DEMO-myapp-1.0.1\\n' contains the control character '\\n' at position 19"),
    "ftp-artifact-url": ({"artifact.url": "ftp://127.0.0.1/myapp-1.0.1.tar.gz"},
                         "artifact.url 'ftp://127.0.0.1/myapp-1.0.1.tar.gz' has scheme ftp://; allowed: http://, https://, file://"),
    "control-char-in-url": ({"artifact.url": "http://127.0.0.1/my\x1bapp.tar.gz"},
                            "artifact.url 'http://127.0.0.1/my\\x1bapp.tar.gz' contains the control character '\\x1b' at position 19"),
    "list-for-a-string": ({"service": ["myapp"]}, "service must be a string, got a list"),
    "list-for-requested-by": ({"requested_by": ["alice"]}, "requested_by must be a string, got a list"),
    "downgrade-not-allowed": ({"target_version": "0.9.0"},
                              "target_version 0.9.0 is older than base_version 1.0.0: a downgrade is refused unless the manifest sets"
                              " allow_downgrade: true with a downgrade_justification"),
    "downgrade-without-justification": ({"target_version": "0.9.0", "allow_downgrade": True},
                                        "target_version 0.9.0 is older than base_version 1.0.0: allow_downgrade needs a non-empty"
                                        " downgrade_justification"),
    "huge-description": ({"description": "d" * 70000},
                         "description 'dddddddddddddddddddddddddddddddddddddddd'... (70000 characters) is longer than 65536 characters"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifest_is_refused_before_any_host(fleet, untouched, tmp_path, case: str) -> None:
    changes, message = MANIFEST_CASES[case]
    path = _write(tmp_path, "patch.yml", _manifest(fleet, **changes))
    result = fleet.rollout(rollout_patch_manifest=path)
    _refused(fleet, untouched, result, f"patch manifest {path}: {message}")


def test_duplicate_key_in_manifest_is_an_error_naming_file_and_key(fleet, untouched, tmp_path) -> None:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        text = handle.read()
    path = _write(tmp_path, "patch.yml", text + "target_version: 1.0.2\n")
    result = fleet.rollout(rollout_patch_manifest=path)
    _refused(fleet, untouched, result, f"patch manifest {path}: duplicate key 'target_version' at line")


def test_alias_bomb_manifest_fails_fast_naming_the_file(fleet, untouched, tmp_path) -> None:
    path = _write(tmp_path, "bomb.yml", BOMB)
    started = time.monotonic()
    result = fleet.rollout(rollout_patch_manifest=path)
    # the bomb sits under a few manifest lines: 32 nodes of the file stand for 490,329,068
    _refused(fleet, untouched, result, f"patch manifest {path}: 32 YAML nodes stand for 490329068 with aliases expanded (an alias bomb?)")
    assert time.monotonic() - started < 60  # a whole playbook run; the load itself is timed in tests/unit (< 2 s)


def test_duplicate_key_in_change_policy_is_an_error(fleet, untouched, tmp_path) -> None:
    path = _write(tmp_path, "change-policy.yml", "override: {min_approvers: 1}\noverride: {min_approvers: 2}\n")
    result = fleet.rollout(rollout_change_policy=path)
    _refused(fleet, untouched, result, f"change policy {path}: duplicate key 'override' at line 2 (first at line 1)")


HOST_CASES = {
    "megabyte-region": ({"fleet_region": MEGABYTE},
                        "variable 'fleet_region' 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... (1048576 characters) is longer than 128 characters"),
    "129-char-tenant": ({"fleet_tenant": "t" * 129},
                        "variable 'fleet_tenant' 'tttttttttttttttttttttttttttttttttttttttt'... (129 characters) is longer than 128 characters"),
    "newline-in-segment": ({"fleet_segment": "web\n"}, "variable 'fleet_segment' 'web\\n' contains the control character '\\n' at position 3"),
    "health-url-with-space": ({"fleetpatch_health_url": "http://127.0.0.1:8080/health check"},
                              "variable 'fleetpatch_health_url' 'http://127.0.0.1:8080/health check' contains whitespace at position 28;"
                              " percent-encode it (%20)"),
    "health-url-without-host": ({"fleetpatch_health_url": "http:///health"}, "variable 'fleetpatch_health_url' 'http:///health' has no host"),
    "relative-host-root": ({"fleetpatch_host_root": "srv/fleetpatch"},
                           "variable 'fleetpatch_host_root' 'srv/fleetpatch' must be an absolute path"),
    "list-restart-command-with-newline": ({"fleetpatch_restart_command": ["/bin/true", "x\ny"]},
                                          "variable 'fleetpatch_restart_command'[1] 'x\\ny' contains the control character '\\n'"),
}


@pytest.mark.parametrize("case", sorted(HOST_CASES))
def test_bad_host_variable_is_refused_naming_the_host(fleet, untouched, case: str) -> None:
    variables, message = HOST_CASES[case]
    # extra vars win over every host's own: the plan names the first host in plan order
    result = fleet.rollout(**variables)
    _refused(fleet, untouched, result, f"host '{fleet.nodes()[0]}': {message}")


def test_control_character_in_policy_is_refused(fleet, untouched) -> None:
    result = fleet.rollout(policy={"canary": {"size": 1, "groups": ["region=eu-west\x07"]}})
    _refused(fleet, untouched, result, "rollout policy: policy.canary.groups[0] 'region=eu-west\\x07' contains the control character")


def test_duplicate_key_in_fleet_file_is_an_error_naming_file_and_key(fleet, untouched, tmp_path) -> None:
    inventory = os.path.join(str(tmp_path), "dup.fleet.yml")
    shutil.copy(fleet.inventory, inventory)
    with open(inventory, encoding="utf-8") as handle:
        text = handle.read()
    # the first host's block gets a second fleet_region line
    first = fleet.nodes()[0]
    marker = f"  {first}:\n"
    assert marker in text
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write(text.replace(marker, f"{marker}    fleet_region: eu-west\n    fleet_region: us-east\n", 1))
    result = run_playbook("rollout.yml", inventory=inventory, extravars={
        "rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": fleet.state_dir, "rollout_policy": fleet.trusting({})})
    _refused(fleet, untouched, result, f"fleet file {inventory}: duplicate key 'fleet_region' at line")
    # ansible.cfg makes a source that does not parse fatal: the run stops at the inventory, before any play
    assert "Completely failed to parse inventory source" in result.stdout or "failed to parse" in result.stdout.lower()
    assert not result.task_results("rollout_plan")


def test_allowed_downgrade_is_shown_in_the_preview_which_lists_no_unwritten_paths(fleet, untouched, tmp_path) -> None:
    path = _write(tmp_path, "downgrade.yml", _manifest(fleet, target_version="0.9.0", allow_downgrade="yes",
                                                       downgrade_justification="1.0.0 corrupts sessions; back to 0.9.0"))
    result = fleet.rollout(rollout_patch_manifest=path, rollout_preview=True)
    assert result.status == "successful", result.stdout[-3000:]
    assert "DOWNGRADE 1.0.0 -> 0.9.0 allowed: 1.0.0 corrupts sessions; back to 0.9.0" in result.stdout
    plan = result.task_results("rollout_plan")["localhost"]
    assert plan["downgrade"] == {"from": "1.0.0", "to": "0.9.0", "justification": "1.0.0 corrupts sessions; back to 0.9.0"}
    assert plan["plan"]["downgrade"] == plan["downgrade"]
    assert plan["patch"]["affected_versions"] == ["1.0.0"] and plan["patch"]["allow_downgrade"] is True
    # the preview wrote nothing and names no file
    assert plan["written"] == [] and plan["plan_path"] is None and plan["events_path"] is None
    assert fleet.run_dir(RUN_ID) not in result.stdout
    assert "plan.json" not in result.stdout and "events.jsonl" not in result.stdout and "summary.json" not in result.stdout
    assert fleet.versions() == untouched["versions"]
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == untouched["tree"]
    assert not os.path.exists(fleet.run_dir(RUN_ID))


def test_url_credentials_are_masked_in_the_plan_result_even_at_vvv(fleet, untouched, tmp_path) -> None:
    secret = "Zq7-canary-pass-91x"
    data = _manifest(fleet)
    data["artifact"]["url"] = data["artifact"]["url"].replace("http://", f"http://deploy:{secret}@")
    path = _write(tmp_path, "creds.yml", data)
    result = fleet.rollout(rollout_patch_manifest=path, rollout_preview=True, cmdline="-vvv")
    assert result.status == "successful", result.stdout[-3000:]
    assert secret not in result.stdout
    plan = result.task_results("rollout_plan")["localhost"]
    # masked by the plan (***), possibly masked again by the events/runner redaction
    assert re.fullmatch(r"http://\*+@127\.[0-9.]+:[0-9]+/artifacts/myapp-1\.0\.1\.tar\.gz", plan["patch"]["artifact"]["url"])
    assert plan["patch"]["artifact"]["url_redacted"] is True
    assert secret not in repr(result.events)
    assert not os.path.exists(fleet.run_dir(RUN_ID))
