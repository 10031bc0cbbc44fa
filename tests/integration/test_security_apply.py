"""Signatures where software is installed, applicability and direction on the host.

Every scenario runs on a small demo fleet (one region, two nodes, one edge) and asserts the clear error, the version on every
host (current link, releases, host manifest) and that the run's event log and the state directory still verify.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import typing as t

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import HostLayout, record_install, switch_current, unpack_release

from .rollout_harness import DEMO_FLEET_PLAYBOOK, DemoFleet, RunResult, run_playbook, tree_snapshot

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_regions": ["eu-west"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}
# the canary alone first: a refusal there must leave the other host untouched and halt the run
CANARY_FIRST = {"canary": {"size": 1}, "waves": ["100%"], "canary_response": "halt", "error_budget": 0}


class Rogue:
    """A key that is not an allowed signer of the demo."""

    def __init__(self, directory: str) -> None:
        self.key = os.path.join(directory, "rogue")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rogue@attacker", "-f", self.key], check=True)
        self.fingerprint = subprocess.run(["ssh-keygen", "-lf", self.key + ".pub"], check=True, capture_output=True,
                                          text=True).stdout.split()[1]


def sign(path: str, key: str) -> str:
    with open(path, "rb") as handle:
        return subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", key, "-n", "fleetpatch"], stdin=handle, check=True,
                              capture_output=True, text=True).stdout


def write_manifest(fleet: DemoFleet, directory: str, patch_id: str, *, version: str = "1.0.1", artifact: dict[str, t.Any] | None = None,
                   drop: t.Sequence[str] = (), **fields: t.Any) -> str:
    """The demo's manifest for version under another patch id (its own run), with fields and artifact keys changed."""
    with open(fleet.manifest(version), encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    manifest.update(patch_id=patch_id, **fields)
    manifest["artifact"].update(artifact or {})
    for key in drop:
        manifest["artifact"].pop(key, None)
    path = os.path.join(directory, f"{patch_id}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(manifest, handle)
    return path


def canary_of(fleet: DemoFleet, run_id: str) -> str:
    with open(os.path.join(fleet.run_dir(run_id), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    (canary,) = plan["waves"][0]["hosts"]
    return canary


def apply_results(result: RunResult) -> dict[str, dict[str, t.Any]]:
    return result.task_results("patch_apply")


def assert_on(fleet: DemoFleet, hosts: t.Iterable[str], version: str, releases: list[str] | None = None) -> None:
    for host in hosts:
        assert fleet.current_version(host) == version, host
        assert fleet.host_manifest(host)["version"] == version, host
        if releases is not None:
            assert fleet.releases(host) == releases, host


def cached(fleet: DemoFleet, host: str, sha256: str) -> bool:
    return os.path.exists(os.path.join(fleet.host_root(host), "cache", "sha256", sha256))


def install(fleet: DemoFleet, host: str, version: str) -> None:
    """Put version on a host as an earlier rollout would have, and restart its service so that it reports it."""
    info = fleet.fleet()
    artifact = info["artifacts"][version]
    layout = HostLayout(fleet.host_root(host), "myapp")
    current = fleet.host_manifest(host)
    unpack_release(layout, version=version, artifact_path=artifact["path"], sha256=artifact["sha256"])
    switch_current(layout, version)
    record_install(layout, version=version, sha256=artifact["sha256"], patch_id="FP-EARLIER", previous=current, action="install")
    subprocess.run([*info["supervisor"]["fleetctl"], "restart", host], check=True, capture_output=True)


@pytest.fixture(scope="module")
def fleet() -> t.Iterator[DemoFleet]:
    """One small fleet for the refusals: every scenario on it leaves every node on 1.0.0."""
    base = tempfile.mkdtemp(prefix="fleetpatch-sec-apply-")
    demo = DemoFleet(base, **SMALL)
    try:
        demo.create()
        yield demo
    finally:
        demo.teardown()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def rogue() -> t.Iterator[Rogue]:
    directory = tempfile.mkdtemp(prefix="fleetpatch-rogue-")
    yield Rogue(directory)
    shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ refused at plan time


@pytest.mark.parametrize(("case", "policy_artifacts", "drop", "message"), [
    ("unsigned", None, ["signature"],
     "artifact.signature is missing and environment 'prod' requires signed artifacts (hosts eu-west-acme-web-prod-01, "
     "eu-west-acme-web-prod-02); sign the artifact (ssh-keygen -Y sign -n fleetpatch) or set policy.artifacts.require_signature"),
    ("no-signers", {}, [],
     "policy.artifacts has no allowed_signers (or allowed_signers_file) to verify signatures against, and environment 'prod' "
     "requires signed artifacts (hosts eu-west-acme-web-prod-01, eu-west-acme-web-prod-02)"),
    ("bad-require", {"require_signature": "sometimes"}, [],
     "policy.artifacts.require_signature must be true, false or auto, got 'sometimes'"),
    ("missing-file", {"allowed_signers_file": "/nonexistent/allowed_signers"}, [],
     "policy.artifacts.allowed_signers_file '/nonexistent/allowed_signers' does not exist"),
    ("bad-signers", {"allowed_signers": "release@fleetpatch-demo ssh-ed25519"}, [],
     "policy.artifacts.allowed_signers line 1: expected 'principals [options] key-type base64-key'"),
    ("foreign-identity", "identity", [],
     "policy.artifacts.signer_identity 'rogue@attacker' is not a principal of the allowed signers (release@fleetpatch-demo)"),
])
def test_untrusted_input_is_refused_at_plan_before_any_host(
        fleet: DemoFleet, tmp_path, case: str, policy_artifacts: t.Any, drop: list[str], message: str) -> None:
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    manifest = write_manifest(fleet, str(tmp_path), f"FP-SEC-PLAN-{case}", drop=drop)
    policy: dict[str, t.Any] = dict(CANARY_FIRST)
    if policy_artifacts == "identity":
        policy["artifacts"] = {"allowed_signers_file": fleet.allowed_signers, "signer_identity": "rogue@attacker"}
    elif policy_artifacts is not None:
        policy["artifacts"] = policy_artifacts
    result = fleet.rollout(policy=policy, rollout_patch_manifest=manifest)
    assert result.status == "failed"
    assert message in result.stdout
    assert not apply_results(result)
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    assert_on(fleet, fleet.nodes(), "1.0.0", ["1.0.0"])


def test_the_demo_is_signed_and_rebuilding_it_changes_nothing(fleet: DemoFleet) -> None:
    info = fleet.fleet()
    key = info["signing"]["key"]
    assert os.stat(key).st_mode & 0o777 == 0o600
    with open(fleet.manifest(), encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    artifact = info["artifacts"]["1.0.1"]
    assert manifest["artifact"]["signature"] == artifact["signature"] == sign(artifact["path"], key)
    with open(fleet.allowed_signers, encoding="utf-8") as handle:
        assert handle.read().startswith('release@fleetpatch-demo namespaces="fleetpatch" ssh-ed25519 ')
    # a demo rebuilt changes nothing: the same key, the same (deterministic) signatures
    again = run_playbook(DEMO_FLEET_PLAYBOOK, extravars=fleet.params)
    assert again.status == "successful"
    assert not [event for event in again.events if event.get("event") == "runner_on_ok"
                and event["event_data"].get("task_action", "").endswith("demo_fleet") and event["event_data"]["res"].get("changed")]


# ------------------------------------------------------------------------------------------------ refused on the host


@pytest.mark.parametrize("stage", ["copy", "url"])
def test_wrong_key_fails_the_canary_names_the_key_and_halts(fleet: DemoFleet, rogue: Rogue, tmp_path, stage: str) -> None:
    artifact = fleet.fleet()["artifacts"]["1.0.1"]
    run_id = f"FP-SEC-ROGUE-{stage}"
    manifest = write_manifest(fleet, str(tmp_path), run_id, artifact={"signature": sign(artifact["path"], rogue.key)})
    result = fleet.rollout(policy=CANARY_FIRST, rollout_patch_manifest=manifest, rollout_stage=stage)
    assert result.status == "failed"
    canary = canary_of(fleet, run_id)
    others = [host for host in fleet.nodes() if host != canary]
    applied = apply_results(result)
    assert set(applied) == {canary}
    assert applied[canary]["msg"] == (
        f"signature of artifact {artifact['sha256']} was made by ssh-ed25519 key {rogue.fingerprint}, which is not in allowed_signers "
        f"(trusted: release@fleetpatch-demo); refused and removed from {fleet.host_root(canary)}/cache/sha256")
    # refused before the release directory existed, and gone from the cache
    assert_on(fleet, fleet.nodes(), "1.0.0", ["1.0.0"])
    assert not cached(fleet, canary, artifact["sha256"])
    assert all(not cached(fleet, host, artifact["sha256"]) for host in others)
    summary = fleet.summary(run_id)
    assert summary["status"] == "halted"
    assert canary in json.dumps(summary["failures"])
    fleet.assert_records_verify(run_id)


def test_tampered_prestaged_copy_is_refused_and_removed(fleet: DemoFleet, tmp_path) -> None:
    artifact = fleet.fleet()["artifacts"]["1.0.1"]
    run_id = "FP-SEC-TAMPERED"
    manifest = write_manifest(fleet, str(tmp_path), run_id)
    staged = run_playbook("prestage.yml", inventory=fleet.inventory,
                          extravars={"prestage_patch_manifest": manifest, "prestage_state_dir": fleet.state_dir,
                                     "prestage_allowed_signers_file": fleet.allowed_signers})
    assert staged.status == "successful", staged.stdout[-3000:]
    nodes = fleet.nodes()
    assert all(cached(fleet, host, artifact["sha256"]) for host in nodes)
    # the bytes in one node's cache change after staging (bit rot, or someone with write access to the cache)
    victim = nodes[0]
    path = os.path.join(fleet.host_root(victim), "cache", "sha256", artifact["sha256"])
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00tampered\x00")
    result = fleet.rollout(policy=CANARY_FIRST, rollout_patch_manifest=manifest, rollout_stage="prestaged", rollout_unstaged="fail")
    assert result.status == "failed"
    assert canary_of(fleet, run_id) == victim
    applied = apply_results(result)
    assert set(applied) == {victim}
    # the readiness gate saw it (not staged: corrupt); rollout_unstaged=fail lets the apply run, which refuses it and purges it
    assert applied[victim]["_event"] == "runner_on_failed"
    cache_dir = os.path.dirname(path)
    assert applied[victim]["msg"].startswith(f"artifact {path} has sha256 ")
    assert applied[victim]["msg"].endswith(f", expected {artifact['sha256']}; the cached copy is corrupt and no artifact_url was given; "
                                           f"refused and removed from {cache_dir}")
    assert not cached(fleet, victim, artifact["sha256"])
    assert_on(fleet, nodes, "1.0.0", ["1.0.0"])
    assert fleet.summary(run_id)["status"] == "halted"
    fleet.assert_records_verify(run_id)


def test_delta_bundle_with_a_wrong_signature_is_refused(fleet: DemoFleet, rogue: Rogue, tmp_path) -> None:
    info = fleet.fleet()
    built = build_bundle(tmp_path, patch_id="FP-SEC-DELTA", target_version="1.0.1", base_version="1.0.0", service="myapp",
                         source=info["artifacts"]["1.0.1"]["path"], base=info["artifacts"]["1.0.0"]["path"],
                         dest=info["origin"]["artifacts_dir"], url_base=info["origin"]["url"] + "/artifacts/")
    artifact = dict(built["artifact"])
    artifact["signature"] = sign(built["bundle"]["path"], info["signing"]["key"])
    artifact["delta"] = dict(artifact["delta"], signature=sign(built["delta"]["path"], rogue.key))
    run_id = "FP-SEC-DELTA"
    manifest = write_manifest(fleet, str(tmp_path), run_id, artifact=artifact, drop=["path", "name"])
    result = fleet.rollout(policy=CANARY_FIRST, rollout_patch_manifest=manifest)
    assert result.status == "failed"
    canary = canary_of(fleet, run_id)
    applied = apply_results(result)
    assert set(applied) == {canary}
    delta = built["delta"]["sha256"]
    assert applied[canary]["msg"] == (
        f"signature of delta bundle {delta} was made by ssh-ed25519 key {rogue.fingerprint}, which is not in allowed_signers "
        f"(trusted: release@fleetpatch-demo); refused and removed from {fleet.host_root(canary)}/cache/sha256")
    assert not cached(fleet, canary, delta) and not cached(fleet, canary, built["bundle"]["sha256"])
    assert_on(fleet, fleet.nodes(), "1.0.0", ["1.0.0"])
    assert fleet.summary(run_id)["status"] == "halted"
    fleet.assert_records_verify(run_id)


def build_bundle(tmp_path, **args: t.Any) -> dict[str, t.Any]:
    """fleetpatch.rollout.patch_bundle on the controller (unsigned: the test signs), through a playbook; its result."""
    out = tmp_path / "built.json"
    playbook = tmp_path / "build.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Build bundles", "hosts": "localhost", "gather_facts": False,
        "tasks": [
            {"name": "Build", "fleetpatch.rollout.patch_bundle": "{{ bundle_args }}", "register": "built"},
            {"name": "Keep the result", "ansible.builtin.copy": {"content": "{{ built | to_json }}", "dest": str(out), "mode": "0644"}},
        ],
    }]))
    result = run_playbook(str(playbook), extravars={"bundle_args": args})
    assert result.status == "successful", result.stdout[-3000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------------------ applicability, direction


def test_applicability_and_direction_on_the_host(make_fleet, tmp_path) -> None:
    demo = make_fleet(**SMALL)
    first, second = demo.nodes()
    install(demo, second, "1.1.0")
    # 1.0.1 applies to 1.0.0 only: the host on 1.1.0 is not applicable and left exactly as it is, the other one is patched
    before = tree_snapshot(demo.host_root(second))
    manifest = write_manifest(demo, str(tmp_path), "FP-SEC-APPLICABLE", affected_versions=["1.0.0"])
    result = demo.rollout(policy={"waves": ["100%"]}, rollout_patch_manifest=manifest)
    assert result.status == "successful", result.stdout[-3000:]
    applied = apply_results(result)
    assert applied[second]["not_applicable"] is True and applied[second]["changed"] is False
    assert applied[second]["msg"] == ("not applicable: myapp 1.1.0 is installed, and patch FP-SEC-APPLICABLE applies only to 1.0.0; "
                                      "nothing was changed")
    assert tree_snapshot(demo.host_root(second)) == before
    assert demo.current_version(first) == "1.0.1" and demo.current_version(second) == "1.1.0"
    assert demo.summary("FP-SEC-APPLICABLE")["not_applicable"] == {second: "1.1.0"}
    demo.assert_records_verify("FP-SEC-APPLICABLE")

    # a downgrade the manifest does not allow: refused at plan time, before any host
    refused = demo.rollout(policy={"waves": ["100%"]},
                           rollout_patch_manifest=write_manifest(demo, str(tmp_path), "FP-SEC-DOWN", affected_versions=["1.1.0"]))
    assert refused.status == "failed" and "downgrade is refused unless the manifest sets allow_downgrade: true" in refused.stdout
    assert demo.current_version(first) == "1.0.1" and demo.current_version(second) == "1.1.0"
    # and on the host itself, for any caller that does not go through the plan (affected_versions empty = any version)
    direct = tmp_path / "direct.yml"
    artifact = demo.fleet()["artifacts"]["1.0.1"]
    direct.write_text(yaml.safe_dump([{"name": "Direct", "hosts": second, "gather_facts": False, "tasks": [{
        "name": "Apply", "fleetpatch.rollout.patch_apply": {
            "root": "{{ fleetpatch_host_root }}", "service": "myapp", "version": "1.0.1", "sha256": artifact["sha256"],
            "artifact_url": artifact["url"], "signature": artifact["signature"],
            "allowed_signers": "{{ lookup('ansible.builtin.file', signers) }}", "require_signature": True,
            "restart_command": "{{ fleetpatch_restart_command }}"}}]}]))
    on_host = run_playbook(str(direct), inventory=demo.inventory, extravars={"signers": demo.allowed_signers})
    assert on_host.status == "failed"
    assert apply_results(on_host)[second]["msg"] == (
        "downgrade refused: myapp 1.1.0 is installed and the target 1.0.1 is older; a downgrade needs allow_downgrade (with its "
        "justification in the patch manifest)")
    assert demo.current_version(second) == "1.1.0" and not cached(demo, second, artifact["sha256"])

    # allowed, with its justification: the 1.1.0 host goes back to 1.0.1 (the 1.0.1 host is already there)
    allowed = write_manifest(demo, str(tmp_path), "FP-SEC-DOWN-OK", affected_versions=["1.1.0"], allow_downgrade=True,
                             downgrade_justification="1.1.0 corrupts sessions (INC-9), back to 1.0.1")
    done = demo.rollout(policy={"waves": ["100%"]}, rollout_patch_manifest=allowed)
    assert done.status == "successful", done.stdout[-3000:]
    assert "DOWNGRADE 1.1.0 -> 1.0.1 allowed: 1.1.0 corrupts sessions (INC-9), back to 1.0.1" in done.stdout
    assert apply_results(done)[second]["downgrade"] == {"from": "1.1.0", "to": "1.0.1"}
    assert demo.current_version(first) == demo.current_version(second) == "1.0.1"
    assert demo.health(second)["version"] == "1.0.1"
    demo.assert_records_verify("FP-SEC-DOWN-OK")
