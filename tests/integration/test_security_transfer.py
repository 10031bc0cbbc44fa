"""Issue 15 items 4 and 5 on the demo fleet: bounded transfers on the apply path, caches holding only verified content,
region-level origin fallback. Misbehaving origins are loopback servers this file starts itself."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import typing as t

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file

from .rollout_harness import DemoFleet, run_playbook

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_regions": ["eu-west"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"],
         "demo_fleet_hosts_per_cell": 2}
TWO_REGIONS = {"demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}
NO_EDGES = "no_such_edges"


class BadOrigin:
    """/endless: no size, never ends; /trickle: 1 byte per second; /file/<name>: serves a file of this test."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.files: dict[str, bytes] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                if path.startswith("/file/") and path[6:] in owner.files:
                    data = owner.files[path[6:]]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.end_headers()
                try:
                    while not owner.stop.is_set():
                        self.wfile.write(b"x" * (65536 if path == "/endless" else 1))
                        self.wfile.flush()
                        if path != "/endless":
                            owner.stop.wait(1.0)
                except OSError:
                    return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bad_origin() -> t.Iterator[BadOrigin]:
    server = BadOrigin()
    yield server
    server.close()


def manifest_with(fleet: DemoFleet, path: str, *, patch_id: str, **artifact: t.Any) -> str:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["patch_id"] = patch_id
    for key, value in artifact.items():
        if value is None:
            data["artifact"].pop(key, None)
        else:
            data["artifact"][key] = value
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def cache_names(fleet: DemoFleet, host: str) -> list[str]:
    cache = os.path.join(fleet.host_root(host), "cache", "sha256")
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def prestage(fleet: DemoFleet, manifest: str | None = None, **extra: t.Any) -> t.Any:
    extravars = {"prestage_patch_manifest": manifest or fleet.manifest(), "prestage_state_dir": fleet.state_dir,
                 "prestage_allowed_signers_file": fleet.allowed_signers, "prestage_retries": 0, "prestage_backoff": 0.1}
    extravars.update(extra)
    return run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars)


# ------------------------------------------------------------------------------------- apply path


def test_endless_and_slow_origins_fail_the_canary_with_the_reason(make_fleet, bad_origin: BadOrigin, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    before = fleet.versions()
    policy_artifacts = {"allowed_signers_file": fleet.allowed_signers, "max_artifact_bytes": 1048576, "max_time": 3}

    # an origin that never ends a response (no size declared) is stopped at max_artifact_bytes
    endless = manifest_with(fleet, str(tmp_path / "endless.yml"), patch_id="FP-ENDLESS-1", url=bad_origin.url("/endless"),
                            size=None)
    run = fleet.rollout(policy={"artifacts": policy_artifacts}, rollout_patch_manifest=endless, rollout_stage="url")
    assert run.status == "failed", run.stdout[-3000:]
    failed = [result for result in run.task_results("patch_apply").values()
              if result.get("failed") or result["_event"] == "runner_on_failed"]
    assert len(failed) == 1, run.stdout[-3000:]  # the canary, and no other host started
    # the URL option is no_log: the message shows it masked, never with its credentials
    assert "stopped: more than max_artifact_bytes 1048576 bytes and the origin is still sending" in failed[0]["msg"], failed[0]["msg"]
    assert fleet.versions() == before
    for host in fleet.nodes():
        assert not [name for name in cache_names(fleet, host) if name.endswith(".part")]
    summary = fleet.summary("FP-ENDLESS-1")
    assert summary["counts"].get("failed") == 1
    fleet.assert_records_verify("FP-ENDLESS-1")

    # an origin that sends 1 byte per second: the deadline (max_time) fails the canary within seconds, not forever
    slow = manifest_with(fleet, str(tmp_path / "slow.yml"), patch_id="FP-SLOW-1", url=bad_origin.url("/trickle"), size=None)
    run = fleet.rollout(policy={"artifacts": policy_artifacts}, rollout_patch_manifest=slow, rollout_stage="url")
    assert run.status == "failed", run.stdout[-3000:]
    failed = [result for result in run.task_results("patch_apply").values()
              if result.get("failed") or result["_event"] == "runner_on_failed"]
    assert len(failed) == 1
    assert "stopped: max_time 3 s reached" in failed[0]["msg"], failed[0]["msg"]
    assert fleet.versions() == before
    for host in fleet.nodes():
        assert not [name for name in cache_names(fleet, host) if name.endswith(".part")]
    fleet.assert_records_verify("FP-SLOW-1")

    # the same trickle with a generous deadline: the minimum throughput over its window stops it, not the deadline
    trickle = manifest_with(fleet, str(tmp_path / "trickle.yml"), patch_id="FP-TRICKLE-1", url=bad_origin.url("/trickle"), size=None)
    run = fleet.rollout(policy={"artifacts": dict(policy_artifacts, max_time=600, min_throughput=1024, throughput_window=2)},
                        rollout_patch_manifest=trickle, rollout_stage="url")
    assert run.status == "failed", run.stdout[-3000:]
    failed = [result for result in run.task_results("patch_apply").values()
              if result.get("failed") or result["_event"] == "runner_on_failed"]
    assert len(failed) == 1
    assert "stopped: slower than 1024 B/s" in failed[0]["msg"], failed[0]["msg"]
    assert fleet.versions() == before
    fleet.assert_records_verify("FP-TRICKLE-1")


# ------------------------------------------------------------------------------------- caches


def test_a_refused_bundle_leaves_node_caches_and_is_never_reported_staged(make_fleet, bad_origin: BadOrigin, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    node = fleet.nodes()[0]
    # a tarball whose member leaves the tree, with the digest the manifest declares: planted in the node's cache
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in (("VERSION", b"1.0.1\n"), ("../../../../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    evil = raw.getvalue()
    bad_origin.files["evil.tar.gz"] = evil
    manifest = manifest_with(fleet, str(tmp_path / "evil.yml"), patch_id="FP-EVIL-1", url=bad_origin.url("/file/evil.tar.gz"),
                             size=len(evil), sha256=hashlib.sha256(evil).hexdigest(), signature=None)
    digest = yaml.safe_load(open(manifest, encoding="utf-8"))["artifact"]["sha256"]
    cache = os.path.join(fleet.host_root(node), "cache", "sha256")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, digest), "wb") as handle:
        handle.write(evil)

    first = prestage(fleet, manifest, prestage_targets=node, prestage_edges=NO_EDGES, prestage_require_signature="false")
    result = first.task_results("prestage")[node]
    assert first.status == "failed" and "is refused" in result["msg"] and "escape" in result["msg"], result
    assert [entry["sha256"] for entry in result["purged"]] == [digest]
    assert digest not in cache_names(fleet, node)

    # later: a verify-only pass (the rollout's readiness) and a full prestage never report it staged
    again = prestage(fleet, manifest, prestage_targets=node, prestage_edges=NO_EDGES, prestage_require_signature="false",
                     prestage_state="verified")
    # the verify-only pass does not fail the host, the report fails the run with the region's verdict
    assert again.status == "failed", again.stdout[-3000:]
    assert not again.task_results("prestage")[node]["ready"]
    assert digest not in cache_names(fleet, node)
    with open(os.path.join(fleet.state_dir, "prestage", "FP-EVIL-1.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["percent"] == 0.0 and report["verdicts"]["eu-west"]["verdict"] == "failed"
    assert fleet.current_version(node) == "1.0.0"


def test_a_corrupt_edge_cache_is_purged_and_restaged(make_fleet) -> None:
    fleet = make_fleet(**SMALL, demo_fleet_faults=[{"kind": "corrupt_edge_artifact", "match": {"region": "eu-west"}}])
    digest = yaml.safe_load(open(fleet.manifest(), encoding="utf-8"))["artifact"]["sha256"]
    edge_file = os.path.join(fleet.host_root("edge-eu-west"), "cache", "sha256", digest)
    assert sha256_file(edge_file) != digest  # the fault: bit rot on the edge's disk

    run = prestage(fleet)
    assert run.status == "successful", run.stdout[-3000:]
    results = run.task_results("prestage")
    assert any("remove corrupt cached full" in action for action in results["edge-eu-west"]["actions"])
    assert sha256_file(edge_file) == digest  # re-verified, purged, staged again from the origin
    for node in fleet.nodes():
        assert results[node]["ready"] and results[node]["bytes_by_source"] == {"edge": os.path.getsize(edge_file)}
        assert sha256_file(os.path.join(fleet.host_root(node), "cache", "sha256", digest)) == digest


# ------------------------------------------------------------------------------------- origin fallback


def test_every_edge_of_a_region_down_origin_fallback_or_a_clear_verdict(make_fleet) -> None:
    fleet = make_fleet(**TWO_REGIONS, demo_fleet_faults=[{"kind": "unreachable", "match": {"host": "edge-eu-west"}}])
    eu_nodes = [host for host in fleet.nodes() if host.startswith("eu-west")]

    # fallback off: the region fails with its reason, its nodes stage nothing, the other region is staged
    off = prestage(fleet, prestage_origin_fallback=False)
    assert off.status == "failed", off.stdout[-3000:]
    with open(os.path.join(fleet.state_dir, "prestage", "FP-DEMO-myapp-1.0.1.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    verdict = report["verdicts"]["eu-west"]
    assert verdict["verdict"] == "failed" and verdict["reason"].startswith("every edge failed (edge-eu-west: "), verdict
    assert report["verdicts"]["us-east"]["verdict"] == "staged"
    results = off.task_results("prestage")
    for node in eu_nodes:
        assert "origin_fallback is off" in results[node]["msg"]
        assert not [name for name in cache_names(fleet, node) if name.endswith(".part")]
    assert fleet.versions() == {host: "1.0.0" for host in fleet.nodes()}

    # fallback on (the default): the region's nodes fetch from the origin, with its own line in the report
    on = prestage(fleet)
    assert on.status == "successful", on.stdout[-3000:]
    results = on.task_results("prestage")
    for node in eu_nodes:
        assert results[node]["ready"] and results[node]["bytes_by_source"].get("origin"), results[node]
        assert results[node]["origin_fallback"].startswith("every edge of the region failed (edge-eu-west: ")
    with open(os.path.join(fleet.state_dir, "prestage", "FP-DEMO-myapp-1.0.1.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    verdict = report["verdicts"]["eu-west"]
    assert verdict["verdict"] == "staged_from_origin"
    assert verdict["line"].startswith("region eu-west: every edge failed (edge-eu-west: ")
    assert verdict["line"].endswith(f"{len(eu_nodes)} nodes fell back to the origin")
    assert any(line.strip() == verdict["line"] for line in on.task_results("prestage_report")["localhost"]["lines"])
    assert report["percent"] == 100.0
