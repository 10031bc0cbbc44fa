"""Secrets never leave (a canary sweep over every byte a run writes) and honest records
(no event log without saying so, summaries that list every rolled-back host, halt reasons that name the trigger, lock
errors that name their file, not_applicable hosts). Loopback only."""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import typing as t
import urllib.parse

import ansible_runner
import pytest
import yaml

from .rollout_harness import REPO_ROOT, DemoFleet, envvars

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_regions": ["eu-west"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["api"], "demo_fleet_hosts_per_cell": 2}
# signatures have their own scenarios (test_security_apply.py); these runs are about records and secrets
UNSIGNED = {"require_signature": False}
POLICY = {"waves": ["100%"], "artifacts": UNSIGNED}
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
REGISTRY_CLI = os.path.join(REPO_ROOT, "bin", "fleetpatch-registry")


def _manifest(fleet: DemoFleet, patch_id: str, **changes: t.Any) -> str:
    """A copy of the demo manifest under another patch id (its own run), with changes merged into it."""
    with open(fleet.manifest(), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["patch_id"] = patch_id
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = dict(data[key], **value)
        else:
            data[key] = value
    path = os.path.join(fleet.path, "patches", f"{patch_id}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def _playbook(fleet: DemoFleet, manifest: str, *, cwd: str, env: dict[str, str], policy: dict | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook the way an installed collection runs it: another directory, no repository ansible.cfg."""
    extra = {"rollout_patch_manifest": manifest, "rollout_state_dir": fleet.state_dir, "rollout_policy": policy or POLICY}
    base = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "FLEETPATCH_"))}
    base.update(ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, "collections"), ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False")
    base.update(env)
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", fleet.inventory, "fleetpatch.rollout.rollout", "-e", json.dumps(extra)],
                          cwd=cwd, env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=600)


def _registry_cli(fleet: DemoFleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REGISTRY_CLI, "--state-dir", fleet.state_dir, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False, env=dict(os.environ, FLEETPATCH_PYTHON=sys.executable))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> t.Iterator[DemoFleet]:
    """One small fleet (2 nodes) for the scenarios that never change a host."""
    demo = DemoFleet(str(tmp_path_factory.mktemp("secrets-fleet")), **SMALL)
    demo.create()
    yield demo
    demo.teardown()


def _unchanged(fleet: DemoFleet) -> None:
    assert fleet.versions() == {host: "1.0.0" for host in fleet.nodes()}
    for host in fleet.nodes():
        assert fleet.current_version(host) == "1.0.0"


# ---------------------------------------------------------------------------------------------------------
# Honest records


def test_without_the_callback_the_run_refuses_saying_how_to_enable_it_and_opt_out_is_not_tampering(make_fleet) -> None:
    fleet = make_fleet(**SMALL)
    manifest = _manifest(fleet, "FP-NOCB-1")
    refused = _playbook(fleet, manifest, cwd=tempfile.gettempdir(), env={})
    assert refused.returncode != 0, refused.stdout[-3000:]
    out = " ".join(refused.stdout.split())
    assert "the event callback fleetpatch.rollout.events is not enabled" in out, refused.stdout[-3000:]
    assert "refusing to start before any host is touched" in out
    assert "ANSIBLE_CALLBACKS_ENABLED=fleetpatch.rollout.events" in out
    assert "callbacks_enabled = fleetpatch.rollout.events" in out
    _unchanged(fleet)
    assert not os.path.exists(fleet.run_dir("FP-NOCB-1")), "a refused run wrote controller state"

    # the operator said so explicitly: the run goes on, and the registry knows it never had a log
    ran = _playbook(fleet, manifest, cwd=tempfile.gettempdir(), env={"FLEETPATCH_EVENTS_REQUIRED": "false"})
    assert ran.returncode == 0, ran.stdout[-4000:]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    assert not os.path.exists(os.path.join(fleet.run_dir("FP-NOCB-1"), "events.jsonl"))
    verify = _registry_cli(fleet, "verify")
    assert verify.returncode == 0, verify.stdout
    assert "not_recorded" in verify.stdout and "no event log was recorded for this run" in verify.stdout
    assert "deleted" not in verify.stdout and "TAMPERED" not in verify.stdout


def test_callback_enabled_by_environment_records_from_another_directory(make_fleet) -> None:
    fleet = make_fleet(**SMALL)
    manifest = _manifest(fleet, "FP-ENVCB-1")
    # what the refusal asks for, from another directory without the repository's ansible.cfg: the run is recorded
    ran = _playbook(fleet, manifest, cwd=tempfile.gettempdir(), env={"ANSIBLE_CALLBACKS_ENABLED": "fleetpatch.rollout.events"},
                    policy=POLICY)
    assert ran.returncode == 0, ran.stdout[-4000:]
    assert "not enabled" not in ran.stdout
    events = fleet.events("FP-ENVCB-1")
    assert [event["event"] for event in events if event["event"] in ("run.started", "run.finished")] == ["run.started", "run.finished"]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    verify = _registry_cli(fleet, "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout


def test_locked_registry_error_names_the_file_and_no_host_changes(fleet: DemoFleet) -> None:
    registry = os.path.join(fleet.state_dir, "registry.sqlite3")
    os.makedirs(fleet.state_dir, exist_ok=True)
    sqlite3.connect(registry).close()
    holder = sqlite3.connect(registry, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = fleet.rollout(policy=POLICY, rollout_patch_manifest=_manifest(fleet, "FP-REGLOCK-1"),
                               env={"FLEETPATCH_REGISTRY_TIMEOUT": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.status == "failed"
    assert f"patch registry {registry} is locked by another process" in result.stdout, result.stdout[-3000:]
    assert "patch registry: patch registry" not in result.stdout
    _unchanged(fleet)
    # the plan took the run lock before the registry refused; its owner is gone, so it is stale, and a later run of
    # another patch over these hosts would have to break it: release it as the operator would after reading the error
    assert fleet.store().release_lock("FP-REGLOCK-1") is True


def test_run_lock_error_names_the_lock(fleet: DemoFleet) -> None:
    store = fleet.store()
    store.acquire_lock("OTHER-RUN", hosts=fleet.nodes(), owner="someone@elsewhere", controller=socket.gethostname(), pid=os.getpid(),
                       ttl_seconds=3600)
    try:
        result = fleet.rollout(policy=POLICY, rollout_patch_manifest=_manifest(fleet, "FP-RUNLOCK-1"))
    finally:
        store.release_lock("OTHER-RUN")
    assert result.status == "failed"
    text = " ".join(result.stdout.split())
    assert "are locked by a running rollout: run OTHER-RUN owned by someone@elsewhere" in text
    assert f"(lock of run OTHER-RUN in run-state database {os.path.join(fleet.state_dir, 'fleetpatch.db')})" in text, result.stdout[-3000:]
    _unchanged(fleet)


def test_not_applicable_hosts_are_recorded_not_patched(fleet: DemoFleet) -> None:
    manifest = _manifest(fleet, "FP-NA-1", affected_versions=["0.9.0"])
    result = fleet.rollout(policy=dict(POLICY, error_budget=0, halt_when="reached"), rollout_patch_manifest=manifest)
    assert result.status == "successful", result.stdout[-4000:]
    _unchanged(fleet)
    summary = fleet.summary("FP-NA-1")
    assert summary["not_applicable"] == {host: "1.0.0" for host in fleet.nodes()}
    assert summary["counts"].get("not_applicable") == len(fleet.nodes())
    assert summary["failures"] == [] and summary["rolled_back"] == []
    outcomes = {event["host"]: event["status"] for event in fleet.events("FP-NA-1") if event["event"] == "host.outcome"}
    assert outcomes == {host: "not_applicable" for host in fleet.nodes()}
    hosts = _registry_cli(fleet, "--json", "hosts", "FP-NA-1")
    assert hosts.returncode == 0, hosts.stdout
    rows = {row["host"]: row for row in json.loads(hosts.stdout)}
    assert {host: (row["outcome"], row.get("version")) for host, row in rows.items()} == {host: ("not_applicable", "1.0.0") for host in fleet.nodes()}


def test_rolled_back_wave_is_in_the_summary_and_the_halt_names_the_response(tmp_path) -> None:
    faults = [{"kind": "unhealthy_after", "version": "1.0.1", "match": {"tenant": "globex"}}]
    demo = DemoFleet(str(tmp_path), demo_fleet_regions=["eu-west"], demo_fleet_tenants=["acme", "globex"], demo_fleet_segments=["api"],
                     demo_fleet_hosts_per_cell=1, demo_fleet_faults=faults)
    demo.create()
    try:
        policy = {"canary": {"size": 1, "groups": ["tenant=acme"]}, "waves": ["100%"], "response": "rollback_wave", "error_budget": 5,
                  "artifacts": UNSIGNED}
        result = demo.rollout(policy=policy)
        assert result.status == "failed"
        summary = demo.summary("FP-DEMO-myapp-1.0.1")
        bad = [host for host in demo.nodes() if "globex" in host]
        good = [host for host in demo.nodes() if "acme" in host]
        assert summary["status"] == "rolled_back"
        assert summary["failures"] == bad, summary
        assert summary["rolled_back"] == bad and summary["rollback_failed"] == []
        # patch_apply's own health check failed the host: the rollback replaced that outcome, the cause stays
        assert summary["hosts"][bad[0]]["cause"] == "failed"
        for host in bad:
            assert demo.current_version(host) == "1.0.0"
        for host in good:
            assert demo.current_version(host) == "1.0.1"
        trigger = summary["halted"]["trigger"]
        assert trigger.startswith("response rollback_wave of wave-1 to 1 host(s) with health check failed: " + bad[0]), trigger
        assert "error budget" not in trigger
        assert f"ended rolled_back: {trigger}" in " ".join(result.stdout.split())
        finished = [event for event in demo.events("FP-DEMO-myapp-1.0.1") if event["event"] == "run.finished"][-1]
        assert finished["data"]["rolled_back"] == bad and finished["data"]["trigger"] == trigger
    finally:
        demo.teardown()


# ---------------------------------------------------------------------------------------------------------
# Secrets never leave: one canary per place a secret can enter, every byte written searched


class _Origin(http.server.BaseHTTPRequestHandler):
    """Serves the artifact only with the right Basic credentials and query token (so the secrets are really used)."""

    artifact = b""
    user = password = token = ""
    served: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != expected or query.get("token") != [self.token]:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="artifacts"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.artifact
        start = 0
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0] or 0)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])
        type(self).served.append(self.path)

    def log_message(self, *args: t.Any) -> None:
        return


def test_canary_secrets_appear_nowhere_a_full_run_writes(tmp_path) -> None:
    canaries = {name: f"CANARY{name.upper()}{secrets.token_hex(8)}" for name in ("userinfo", "query", "extravar", "secretvar", "env")}
    demo = DemoFleet(str(tmp_path / "demo"), **SMALL)
    demo.create()
    server = None
    try:
        with open(demo.manifest(), encoding="utf-8") as handle:
            artifact = yaml.safe_load(handle)["artifact"]
        origin = os.path.join(demo.path, "origin", "artifacts", os.path.basename(urllib.parse.urlsplit(artifact["url"]).path))
        with open(origin, "rb") as handle:
            handler = type("Origin", (_Origin,), {"artifact": handle.read(), "user": "deploy", "password": canaries["userinfo"],
                                                  "token": canaries["query"], "served": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = (f"http://deploy:{canaries['userinfo']}@127.0.0.1:{server.server_address[1]}/a/{os.path.basename(origin)}"
               f"?token={canaries['query']}&v=1")
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        manifest = _manifest(demo, "FP-CANARY-1", artifact={"url": url})
        shutil.move(manifest, inputs / "FP-CANARY-1.yml")
        private = tmp_path / "runner"
        private.mkdir()
        runner = ansible_runner.run(
            private_data_dir=str(private), playbook=os.path.join(REPO_ROOT, "playbooks", "rollout.yml"), inventory=demo.inventory,
            extravars={"rollout_patch_manifest": str(inputs / "FP-CANARY-1.yml"), "rollout_state_dir": demo.state_dir,
                       "rollout_policy": POLICY, "fleet_db_password": canaries["extravar"],
                       "deploy_hook_material": canaries["secretvar"], "rollout_secret_vars": ["deploy_hook_material"]},
            envvars=envvars(FLEETPATCH_SECRET_VARS="deploy_hook_material", DATABASE_URL=f"postgresql://fleet:{canaries['env']}@127.0.0.1/reg"),
            verbosity=3, quiet=True, settings={"suppress_env_files": True})
        stdout = runner.stdout.read()
        assert runner.status == "successful", stdout[-5000:]
        assert handler.served, "the artifact was never fetched with the credentials"
        assert demo.versions() == {host: "1.0.1" for host in demo.nodes()}
        # every byte written: controller state (plan, state, events, summary, registry, checkpoints, locks), the hosts'
        # trees (manifests, audit, cache records), the runner's artifacts (job_events, stdout) and the -vvv stdout itself
        found: dict[str, list[str]] = {}
        roots = [demo.state_dir, os.path.join(demo.path, "hosts"), str(private / "artifacts")]
        searched = 0
        for root in roots:
            for directory, _dirs, files in os.walk(root):
                for name in files:
                    path = os.path.join(directory, name)
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    if name == "command" and os.path.dirname(directory) == str(private / "artifacts"):
                        # ansible-runner's record of the command line and environment it was GIVEN (like env/envvars):
                        # the caller's input, written before fleetpatch runs; it is searched for every other canary
                        data_env_free = True
                    else:
                        data_env_free = False
                    with open(path, "rb") as handle:
                        data = handle.read()
                    searched += 1
                    for key, canary in canaries.items():
                        if key == "env" and data_env_free:
                            continue
                        if canary.encode() in data:
                            found.setdefault(key, []).append(path)
        for key, canary in canaries.items():
            if canary in stdout:
                found.setdefault(key, []).append("<runner stdout, verbosity 3>")
        assert searched > 20
        assert os.path.exists(os.path.join(demo.run_dir("FP-CANARY-1"), "events.jsonl"))
        assert found == {}, found
    finally:
        if server is not None:
            server.shutdown()
        demo.teardown()
