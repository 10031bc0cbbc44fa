from __future__ import annotations

import typing as t

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.filter.patch_manifest import patch_manifest

SHA = "ab" * 32
SIGNATURE = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"


def manifest(**artifact: t.Any) -> dict[str, t.Any]:
    return {"patch_id": "FP-1", "service": "myapp", "target_version": "1.0.1", "base_version": "1.0.0",
            "artifact": dict({"url": "https://o/myapp-1.0.1.bundle.tar.gz", "sha256": SHA.upper(), "size": 10}, **artifact)}


def test_signature_and_delta_are_normalised() -> None:
    result = patch_manifest(manifest(signature=SIGNATURE, delta={
        "url": "https://o/myapp-1.0.0-to-1.0.1.delta.tar.gz", "sha256": SHA.upper(), "size": 3, "base_version": "1.0.0",
        "signature": SIGNATURE}))
    assert result["artifact"]["sha256"] == SHA
    assert result["artifact"]["signature"] == SIGNATURE
    assert result["artifact"]["delta"] == {
        "url": "https://o/myapp-1.0.0-to-1.0.1.delta.tar.gz", "sha256": SHA, "size": 3, "base_version": "1.0.0",
        "signature": SIGNATURE, "name": "myapp-1.0.0-to-1.0.1.delta.tar.gz"}


@pytest.mark.parametrize(
    ("artifact", "message"),
    [
        ({"signature": "BEGIN"}, "artifact.signature must be an armored SSH signature"),
        ({"delta": "x"}, "artifact.delta must be a mapping"),
        ({"delta": {"sha256": SHA, "base_version": "1.0.0"}}, "artifact.delta needs a url or a path"),
        ({"delta": {"sha256": SHA, "url": "https://o/d"}}, "artifact.delta.base_version is required"),
        ({"delta": {"sha256": "xyz", "url": "https://o/d", "base_version": "1"}}, "artifact.delta.sha256 must be 64 hexadecimal characters"),
        ({"delta": {"sha256": SHA, "url": "https://o/d", "base_version": "1", "size": 0}}, "artifact.delta.size must be a positive integer"),
        ({"delta": {"sha256": SHA, "url": "https://o/d", "base_version": "1", "extra": 1}}, "artifact.delta has unknown field(s) extra"),
        ({"delta": {"sha256": SHA, "url": "https://o/d", "base_version": "1", "signature": "x"}},
         "artifact.delta.signature must be an armored SSH signature"),
    ],
)
def test_bad_signature_or_delta_is_refused_naming_the_filter(artifact: dict[str, t.Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError) as exc:
        patch_manifest(manifest(**artifact))
    assert str(exc.value).startswith(f"fleetpatch.rollout.patch_manifest: patch manifest: {message}")


DELTA = {"url": "https://o/d", "sha256": SHA, "base_version": "1.0.0"}


@pytest.mark.parametrize(
    ("artifact", "refused"),
    [
        ({}, False),
        ({"size": None}, True),
        ({"delta": dict(DELTA, size=3)}, False),
        ({"delta": DELTA}, True),
    ],
)
def test_require_sizes_refuses_a_manifest_without_declared_sizes(artifact: dict[str, t.Any], refused: bool) -> None:
    data = manifest(**artifact)
    data["artifact"] = {key: value for key, value in data["artifact"].items() if value is not None}
    assert patch_manifest(data)["patch_id"] == "FP-1"  # sizes are optional unless asked for
    if not refused:
        assert patch_manifest(data, require_sizes=True)["artifact"]["size"] == 10
        return
    with pytest.raises(AnsibleFilterError) as exc:
        patch_manifest(data, require_sizes=True)
    assert str(exc.value) == ("fleetpatch.rollout.patch_manifest: patch FP-1: pre-staging needs artifact.size "
                              "(and artifact.delta.size) in the patch manifest")


def test_edge_cache_urls_by_host_and_region() -> None:
    from ansible_collections.fleetpatch.rollout.plugins.filter.edge_cache_urls import edge_cache_urls

    hostvars = {
        "edge-a": {"fleet_region": "eu", "fleet_edge_cache_url": "http://127.0.0.9:80/cache/sha256/"},
        "edge-b": {"fleet_region": "us", "ansible_host": "10.0.0.2"},
        "edge-c": {"fleet_region": "us"},
    }
    assert edge_cache_urls(hostvars, ["edge-a", "edge-b", "edge-c"], port=8081) == {
        "by_host": {"edge-a": "http://127.0.0.9:80/cache/sha256/", "edge-b": "http://10.0.0.2:8081/cache/sha256/",
                    "edge-c": "http://edge-c:8081/cache/sha256/"},
        "by_region": {"eu": "http://127.0.0.9:80/cache/sha256/", "us": "http://10.0.0.2:8081/cache/sha256/"},
    }
    with pytest.raises(AnsibleFilterError, match="edge 'edge-x' is not in the inventory"):
        edge_cache_urls(hostvars, ["edge-x"])
