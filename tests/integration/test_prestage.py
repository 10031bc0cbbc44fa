"""Pre-staging and verifiable bundles on the embedded demo fleet (playbooks/prestage.yml, patch_bundle, rollout).

Every test asserts files on the demo hosts, module results and the supervisor's own byte counters.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import typing as t
import urllib.request

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import tree_digest
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import canonical_json, sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    HostLayout,
    extract_release,
    read_release_metadata,
    verify_release,
)

from .rollout_harness import DemoFleet, RunResult, run_playbook

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}
NO_EDGES = "no_such_edges"  # a host pattern that matches nothing: stage the nodes only


def prestage(fleet: DemoFleet, manifest: str | None = None, *, cmdline: str | None = None, **extra: t.Any) -> RunResult:
    # the demo's environment is production: prestage_require_signature auto requires the demo's signers
    extravars = {"prestage_patch_manifest": manifest or fleet.manifest(), "prestage_state_dir": fleet.state_dir,
                 "prestage_allowed_signers_file": fleet.allowed_signers}
    extravars.update(extra)
    return run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars, cmdline=cmdline)


_METRICS_READ: dict[str, int] = {}


def metrics(url: str) -> dict[str, t.Any]:
    """/metrics of a demo endpoint, with the bytes of our own earlier /metrics reads taken out of bytes_sent_total."""
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        body = response.read()
    data = json.loads(body)
    data["bytes_sent_total"] -= _METRICS_READ.get(url, 0)
    _METRICS_READ[url] = _METRICS_READ.get(url, 0) + len(body)
    return data


def origin_bytes(fleet: DemoFleet) -> int:
    return metrics(fleet.fleet()["origin"]["url"] + "/metrics")["bytes_sent_total"]


def host_metrics(fleet: DemoFleet, host: str) -> dict[str, t.Any]:
    return metrics(fleet.inventory_hosts()[host]["fleetpatch_metrics_url"])


def edges(fleet: DemoFleet) -> list[str]:
    return sorted(fleet.fleet()["edges"])


def cache_files(fleet: DemoFleet, host: str) -> list[str]:
    return sorted(os.listdir(os.path.join(fleet.host_root(host), "cache", "sha256")))


def patch_artifact(manifest: str) -> dict[str, t.Any]:
    with open(manifest, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["artifact"]


# --------------------------------------------------------------------------------------------------- tests


def test_one_copy_per_region_then_a_second_run_moves_nothing(make_fleet, tmp_path) -> None:
    fleet = make_fleet(**SMALL)
    artifact = patch_artifact(fleet.manifest())
    size, digest = artifact["size"], artifact["sha256"]
    # cold edges: the demo fleet pre-fills them, a real region starts empty
    for edge in edges(fleet):
        for path in glob.glob(os.path.join(fleet.host_root(edge), "cache", "sha256", "*")):
            os.unlink(path)
    before = origin_bytes(fleet)

    first = prestage(fleet)
    assert first.status == "successful", first.stdout[-3000:]
    results = first.task_results("prestage")
    assert origin_bytes(fleet) - before == len(edges(fleet)) * size  # one copy per region
    for edge in edges(fleet):
        assert results[edge]["bytes_by_source"] == {"origin": size}
    for node in fleet.nodes():
        assert results[node]["changed"] and results[node]["ready"]
        assert results[node]["bytes_by_source"] == {"edge": size}, results[node]
        assert cache_files(fleet, node) == [digest]  # no .part file left anywhere
        assert sha256_file(os.path.join(fleet.host_root(node), "cache", "sha256", digest)) == digest
    with open(os.path.join(fleet.state_dir, "prestage", "FP-DEMO-myapp-1.0.1.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["percent"] == 100.0 and {bucket["percent"] for bucket in report["regions"].values()} == {100.0}
    assert report["bytes_by_source"] == {"edge": size * len(fleet.nodes())}

    # retention: --check lists what keep=1 would remove, never the current release's artifact, removes nothing
    node = fleet.nodes()[0]
    root = fleet.host_root(node)
    old = {}
    for version in ("0.9.0", "1.0.0"):
        content = f"old release {version}".encode()
        old[version] = hashlib.sha256(content).hexdigest()
        with open(os.path.join(root, "cache", "sha256", old[version]), "wb") as handle:
            handle.write(content)
        with open(os.path.join(root, "cache", "meta", f"{old[version]}.json"), "w", encoding="utf-8") as handle:
            json.dump({"sha256": old[version], "service": "myapp", "version": version, "kind": "full",
                       "size": len(content), "staged_at": "2026-01-01T00:00:00Z"}, handle)
    preview = prestage(fleet, cmdline="--check", prestage_keep=1, prestage_targets=node, prestage_edges=NO_EDGES)
    assert preview.status == "successful", preview.stdout[-3000:]
    would = preview.task_results("prestage")[node]
    assert [(item["version"], item["sha256"]) for item in would["would_remove"]] == [("0.9.0", old["0.9.0"])]
    assert sorted(cache_files(fleet, node)) == sorted([digest, *old.values()])

    # second run: zero payload bytes anywhere, nothing changed
    edge_bytes = {edge: host_metrics(fleet, edge)["bytes_sent_total"] for edge in edges(fleet)}
    before = origin_bytes(fleet)
    second = prestage(fleet)
    assert second.status == "successful", second.stdout[-3000:]
    for host, result in second.task_results("prestage").items():
        assert result["transferred_bytes"] == 0 and not result["changed"], (host, result)
    assert origin_bytes(fleet) == before
    assert {edge: host_metrics(fleet, edge)["bytes_sent_total"] for edge in edges(fleet)} == edge_bytes

    # the window: the readiness gate finds every host staged, the apply downloads nothing
    rollout = fleet.rollout(rollout_stage="prestaged")
    assert rollout.status == "successful", rollout.stdout[-3000:]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    for result in rollout.task_results("patch_apply").values():
        assert not any("download" in action for action in result["actions"])
    with open(os.path.join(fleet.run_dir("FP-DEMO-myapp-1.0.1"), "readiness.json"), encoding="utf-8") as handle:
        readiness = json.load(handle)
    assert readiness["percent"] == 100.0 and readiness["skip_hosts"] == []
    assert origin_bytes(fleet) == before


def test_corrupt_edge_cut_transfer_and_full_disk(make_fleet) -> None:
    full_host = "us-east-acme-web-prod-02"
    fleet = make_fleet(**SMALL, demo_fleet_faults=[
        {"kind": "corrupt_edge_artifact", "match": {"region": "us-east"}},
        {"kind": "cut_transfer", "after_bytes": 65536, "times": 1, "match": {"region": "eu-west"}},
        {"kind": "disk_full", "free_bytes": 0, "match": {"host": full_host}},
    ])
    artifact = patch_artifact(fleet.manifest())
    size, digest = artifact["size"], artifact["sha256"]
    result = prestage(fleet, prestage_edges=NO_EDGES, prestage_retries=2, prestage_backoff=0.2)
    # the full disk fails its host clearly; everything else is staged
    assert result.status == "failed"
    results = result.task_results("prestage")

    # corrupt edge: its bytes are discarded, the origin delivers, the cached copy verifies
    good = results["us-east-acme-web-prod-01"]
    assert good["ready"] and good["artifacts"][0]["source"] == "origin"
    assert any("(corrupt); the bytes were discarded" in error for error in good["artifacts"][0]["errors"])
    assert sha256_file(os.path.join(fleet.host_root("us-east-acme-web-prod-01"), "cache", "sha256", digest)) == digest

    # cut transfer: exactly one eu-west download was cut and resumed with a Range request, nothing fetched twice
    eu_west = [results[host] for host in fleet.nodes() if host.startswith("eu-west")]
    assert [entry["artifacts"][0]["resumed"] for entry in eu_west].count(True) == 1
    for entry in eu_west:
        assert entry["ready"] and entry["bytes_by_source"] == {"edge": size}
    assert host_metrics(fleet, "edge-eu-west")["by_status"].get("206") == 1

    # full disk: refused before a byte was written, nothing partial left
    failed = results[full_host]
    assert failed["_event"] == "runner_on_failed" and not failed["ready"]
    assert "not enough free space" in failed["msg"]
    assert cache_files(fleet, full_host) == []

    # the window with rollout_unstaged=skip: the full-disk host is kept out, the others are patched
    rollout = fleet.rollout(rollout_stage="prestaged", rollout_unstaged="skip")
    assert rollout.status == "successful", rollout.stdout[-3000:]
    summary = fleet.summary("FP-DEMO-myapp-1.0.1")
    assert summary["hosts"][full_host]["outcome"] == "not_staged"
    assert summary["counts"]["patched"] == len(fleet.nodes()) - 1
    assert fleet.current_version(full_host) == "1.0.0"
    release = os.path.join(fleet.host_root("us-east-acme-web-prod-01"), "apps", "myapp", "releases", "1.0.1")
    assert verify_release(release) == [] and read_release_metadata(release)["artifact_sha256"] == digest


def keypair(tmp_path, name: str) -> tuple[str, str]:
    key = str(tmp_path / name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
    with open(key + ".pub", encoding="utf-8") as handle:
        return key, f"{name}@fleetpatch namespaces=\"fleetpatch\" {handle.read()}"


def build_bundle(fleet: DemoFleet, tmp_path, **args: t.Any) -> dict[str, t.Any]:
    """Run fleetpatch.rollout.patch_bundle on the controller through a playbook; return its result."""
    out = tmp_path / f"built-{args['target_version']}-{os.path.basename(args.get('signing_key', 'x'))}.json"
    playbook = tmp_path / "build.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Build bundles", "hosts": "localhost", "gather_facts": False,
        "tasks": [
            {"name": "Build", "fleetpatch.rollout.patch_bundle": "{{ bundle_args }}", "register": "built"},
            {"name": "Keep the result",
             "ansible.builtin.copy": {"content": "{{ built | to_json }}", "dest": str(out), "mode": "0644"}},
        ],
    }]))
    result = run_playbook(str(playbook), extravars={"bundle_args": args})
    assert result.status == "successful", result.stdout[-3000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def write_manifest(path, patch_id: str, version: str, artifact: dict[str, t.Any]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"patch_id": patch_id, "service": "myapp", "target_version": version, "base_version": "1.0.0",
                        "change_type": "scheduled", "classification": "functional", "justification": "pre-staged bundle test",
                        "affected_versions": ["1.0.0"], "regression_risk": "low", "requested_by": "alice", "approved_by": ["bob"],
                        "artifact": artifact}, handle)
    return str(path)


def test_signed_delta_bundles_and_refused_bundles(make_fleet, tmp_path) -> None:
    fleet = make_fleet(demo_fleet_regions=["eu-west"], **SMALL)
    info = fleet.fleet()
    artifacts_dir = info["origin"]["artifacts_dir"]
    url_base = info["origin"]["url"] + "/artifacts/"
    builder, builder_signers = keypair(tmp_path, "builder")
    rogue, _rogue_signers = keypair(tmp_path, "rogue")
    signers_file = tmp_path / "allowed_signers"
    signers_file.write_text(builder_signers)
    common = {"service": "myapp", "dest": artifacts_dir, "url_base": url_base, "signing_key": builder,
              "allowed_signers": str(signers_file), "source_commit": "3f0c9a1", "approver": "alice@example.com"}

    built = build_bundle(fleet, tmp_path, patch_id="FP-BUNDLE-1", target_version="1.0.1", base_version="1.0.0",
                         source=info["artifacts"]["1.0.1"]["path"], base=info["artifacts"]["1.0.0"]["path"], **common)
    assert built["bundle"]["signer"] == "builder@fleetpatch" and built["delta"]["signer"] == "builder@fleetpatch"
    assert built["metadata"]["approver"] == "alice@example.com" and built["metadata"]["target_tag"] == "release"
    again = build_bundle(fleet, tmp_path, patch_id="FP-BUNDLE-1", target_version="1.0.1", base_version="1.0.0",
                         source=info["artifacts"]["1.0.1"]["path"], base=info["artifacts"]["1.0.0"]["path"], **common)
    assert not again["changed"] and again["bundle"]["sha256"] == built["bundle"]["sha256"]  # reproducible
    manifest = write_manifest(tmp_path / "bundle.yml", "FP-BUNDLE-1", "1.0.1", built["artifact"])

    staged = prestage(fleet, manifest, prestage_allowed_signers_file=str(signers_file), prestage_require_signature=True)
    assert staged.status == "successful", staged.stdout[-3000:]
    results = staged.task_results("prestage")
    assert [entry["kind"] for entry in results["edge-eu-west"]["artifacts"]] == ["full", "delta"]
    for node in fleet.nodes():
        assert results[node]["staged"]["kind"] == "delta"
        assert results[node]["bytes_by_source"] == {"edge": built["delta"]["size"]}
        meta = json.loads(open(os.path.join(fleet.host_root(node), "cache", "meta", f"{built['delta']['sha256']}.json"),
                               encoding="utf-8").read())
        assert meta["signature"]["principal"] == "builder@fleetpatch"

    # the window: every node builds 1.0.1 from the delta; the tree is the full bundle's, to the byte
    # these bundles are signed by the test's builder key, not the demo's: the rollout's policy trusts that key
    rollout = fleet.rollout(rollout_stage="prestaged", rollout_patch_manifest=manifest,
                            policy={"artifacts": {"allowed_signers_file": str(signers_file)}})
    assert rollout.status == "successful", rollout.stdout[-3000:]
    reference = extract_release(HostLayout(str(tmp_path / "reference"), "myapp"), version="1.0.1",
                                artifact_path=built["bundle"]["path"], sha256=built["bundle"]["sha256"])
    want = read_release_metadata(reference)
    for node in fleet.nodes():
        release = os.path.join(fleet.host_root(node), "apps", "myapp", "releases", "1.0.1")
        got = read_release_metadata(release)
        assert got["bundle"]["kind"] == "delta" and got["bundle"]["sha256"] == built["delta"]["sha256"]
        assert got["artifact_sha256"] == built["bundle"]["sha256"]
        assert got["tree_sha256"] == want["tree_sha256"] == built["bundle"]["tree_sha256"]
        assert got["files"] == want["files"] and verify_release(release) == []
        assert fleet.health(node)["version"] == "1.0.1"

    node = fleet.nodes()[0]
    one_node = {"prestage_targets": node, "prestage_edges": NO_EDGES, "prestage_allowed_signers_file": str(signers_file),
                "prestage_retries": 0}

    # a signature by a key that is not an allowed signer: refused on the host, nothing cached
    rogue_args = dict(common)
    rogue_args.update(patch_id="FP-BUNDLE-2", target_version="1.1.0", source=info["artifacts"]["1.1.0"]["path"],
                      signing_key=rogue, allowed_signers=None)
    rogue_built = build_bundle(fleet, tmp_path, **rogue_args)
    refused = prestage(fleet, write_manifest(tmp_path / "rogue.yml", "FP-BUNDLE-2", "1.1.0", rogue_built["artifact"]),
                       **one_node)
    result = refused.task_results("prestage")[node]
    assert refused.status == "failed" and "which is not in allowed_signers" in result["msg"]
    assert rogue_built["bundle"]["sha256"] not in cache_files(fleet, node)
    assert not [name for name in cache_files(fleet, node) if name.endswith(".part")]

    # bundles whose members leave the tree: refused before anything is cached or written
    for label, files, links, members in (
        ("traversal", {"VERSION": b"1.1.0\n"}, {}, [("files/VERSION", b"1.1.0\n"), ("files/../../../../evil", b"x")]),
        ("link", {"VERSION": b"1.1.0\n"}, {"lib": "../../../../../etc"}, [("files/VERSION", b"1.1.0\n")]),
    ):
        path = os.path.join(artifacts_dir, f"evil-{label}.bundle.tar.gz")
        forge_bundle(path, files, links, members)
        evil = {"url": url_base + os.path.basename(path), "sha256": sha256_file(path), "size": os.path.getsize(path)}
        unsigned = dict(one_node)
        unsigned["prestage_allowed_signers_file"] = ""
        unsigned["prestage_require_signature"] = "false"
        run = prestage(fleet, write_manifest(tmp_path / f"{label}.yml", f"FP-EVIL-{label}", "1.1.0", evil), **unsigned)
        result = run.task_results("prestage")[node]
        assert run.status == "failed" and "refusing bundle" in result["msg"], result["msg"]
        assert evil["sha256"] not in cache_files(fleet, node)
        assert not glob.glob(os.path.join(fleet.path, "**", "evil"), recursive=True)


def forge_bundle(path: str, files: dict[str, bytes], links: dict[str, str], members: list[tuple[str, bytes]]) -> None:
    entries = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": "0644", "op": "file"}
               for name, data in files.items()}
    metadata = {"format": "fleetpatch-bundle", "schema": 1, "kind": "full", "patch_id": "FP-EVIL", "service": "myapp",
                "target_version": "1.1.0", "target_tag": "release", "base_version": None, "source_commit": None,
                "toolchain": None, "approver": None, "built_at": "2026-01-01T00:00:00Z", "files": entries,
                "links": links, "dirs": [], "unpacked_size": 6, "tree_sha256": tree_digest(entries, links, [])}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("fleetpatch-bundle.json", canonical_json(metadata).encode()), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as handle:
        handle.write(gzip.compress(raw.getvalue()))
