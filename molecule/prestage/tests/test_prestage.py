"""What pre-staging FP-PRESTAGE-1 (myapp 1.0.0 -> 1.0.1, full bundle and delta) leaves on the edge and the nodes.

One command per host collects the state (every command through podman exec costs); the tests assert on it.
"""

from __future__ import annotations

import hashlib
import json
import typing as t

import pytest

ROOT = "/opt/fleetpatch"
# Lists the cache (name, size, sha256), its records and the installed release's metadata as one JSON document.
PROBE = r"""
import hashlib, json, os, subprocess
root = "/opt/fleetpatch"
def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError:
        return None
cache = {}
for name in sorted(os.listdir(root + "/cache/sha256")):
    with open(root + "/cache/sha256/" + name, "rb") as handle:
        data = handle.read()
    cache[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
meta_dir = root + "/cache/meta"
meta = {name[:-5]: load(meta_dir + "/" + name) for name in sorted(os.listdir(meta_dir))} if os.path.isdir(meta_dir) else {}
run = subprocess.run([root + "/apps/myapp/current/bin/myapp"], capture_output=True, text=True) if os.path.exists(root + "/apps/myapp/current") else None
print(json.dumps({"cache": cache, "meta": meta, "manifest": load(root + "/state/myapp.manifest.json"),
                  "release": load(root + "/apps/myapp/current/.fleetpatch-release.json"),
                  "runs": run.stdout if run else None}))
"""


@pytest.fixture(scope="module")
def state(host: t.Any) -> dict[str, t.Any]:
    result = host.run("python3 -c {}".format("'" + PROBE.replace("'", "'\\''") + "'"))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_cached_artifacts_verify_and_nothing_partial_remains(state: dict[str, t.Any], hostvars: dict[str, t.Any],
                                                             patch_manifest: dict[str, t.Any]) -> None:
    full, delta = patch_manifest["artifact"], patch_manifest["artifact"]["delta"]
    # edges serve both; nodes hold the full bundle only (this image has no zstd to rebuild from the delta)
    wanted = [full, delta] if hostvars["fleet_role"] == "edge" else [full]
    for artifact in wanted:
        assert state["cache"][artifact["sha256"]] == {"size": artifact["size"], "sha256": artifact["sha256"]}
    if hostvars["fleet_role"] == "node":
        assert delta["sha256"] not in state["cache"]
    assert [name for name in state["cache"] if name.startswith(".")] == []


def test_cache_records_say_where_each_artifact_came_from(
    state: dict[str, t.Any], hostvars: dict[str, t.Any], patch_manifest: dict[str, t.Any]
) -> None:
    record = state["meta"][patch_manifest["artifact"]["sha256"]]
    assert (record["service"], record["version"], record["kind"]) == ("myapp", "1.0.1", "full")
    assert record["source"] == ("origin" if hostvars["fleet_role"] == "edge" else "edge")


def test_retention_removed_the_oldest_and_never_the_current_release(state: dict[str, t.Any], hostvars: dict[str, t.Any]) -> None:
    if hostvars["fleet_role"] != "node":
        pytest.skip("retention is checked on the nodes, where prepare.yml seeded old artifacts")
    oldest, older = (hashlib.sha256(text.encode()).hexdigest() for text in ("old 0.8.0", "old 0.9.0"))
    assert oldest not in state["cache"] and oldest not in state["meta"]
    assert older in state["cache"]  # keep=2: 1.0.1 and 0.9.0
    # the current release's own bundle (cached without a record by prepare.yml) is never touched
    assert state["manifest"]["version"] == "1.0.0"
    assert state["manifest"]["artifact_sha256"] in state["cache"]


def test_base_release_was_installed_from_its_bundle(state: dict[str, t.Any], hostvars: dict[str, t.Any]) -> None:
    if hostvars["fleet_role"] != "node":
        pytest.skip("edges run no release")
    assert state["release"]["bundle"]["kind"] == "full"
    assert state["release"]["artifact_sha256"] == state["manifest"]["artifact_sha256"]
    assert state["runs"] == "myapp 1.0.0\n"


def test_controller_report_counts_every_node(prestage_report: dict[str, t.Any]) -> None:
    assert prestage_report["percent"] == 100.0
    assert prestage_report["regions"]["eu-west"] == {"hosts": 2, "ready": 2, "percent": 100.0, "not_ready": []}
    assert prestage_report["kinds"] == {"full": 2}
    assert prestage_report["edges"]["ready"] == 1
    # the idempotence run rewrote the report: nothing moved
    assert prestage_report["bytes_by_source"] == {}
