from __future__ import annotations

import copy

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import (
    ManifestError,
    run_id_for,
    validate_patch_manifest,
)

GOOD = {
    "patch_id": "FP-2026-0001",
    "service": "myapp",
    "target_version": "1.0.1",
    "base_version": "1.0.0",
    "artifact": {"url": "http://127.0.0.1:18000/artifacts/myapp-1.0.1.tar.gz", "sha256": "A" * 64, "size": 10},
}


def test_valid_manifest_is_normalised() -> None:
    manifest = validate_patch_manifest(copy.deepcopy(GOOD))
    assert manifest["artifact"]["sha256"] == "a" * 64
    assert manifest["artifact"]["name"] == "myapp-1.0.1.tar.gz"


def _with(path: str, value):
    data = copy.deepcopy(GOOD)
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "patch manifest: must be a mapping, got list"),
        (_with("patch_id", KeyError), "patch manifest: patch_id is required and must be a non-empty string"),
        (_with("service", "My App"), "patch manifest: service 'My App' does not match"),
        (_with("target_version", 101), "patch manifest: target_version is required and must be a non-empty string"),
        (_with("artifact", KeyError), "patch manifest: artifact is required and must be a mapping"),
        (_with("artifact.sha256", "abc"), "patch manifest: artifact.sha256 must be 64 hexadecimal characters"),
        (_with("artifact.url", "ftp://x/y"), "patch manifest: artifact.url must start with one of http://, https://, file://"),
        (_with("artifact.size", -1), "patch manifest: artifact.size must be a positive integer"),
        (_with("artifact.colour", "red"), "patch manifest: artifact has unknown field(s) colour"),
        (_with("colour", "red"), "patch manifest: unknown field(s) colour"),
        (_with("artifact.url", KeyError), "patch manifest: artifact needs a url or a path"),
        (_with("artifact.path", "relative/file"), "patch manifest: artifact.path must be an absolute path"),
    ],
)
def test_bad_manifests_are_refused(data, message: str) -> None:
    with pytest.raises(ManifestError) as excinfo:
        validate_patch_manifest(data)
    assert str(excinfo.value).startswith(message)


@pytest.mark.parametrize(("patch_id", "run_id"), [("FP-1", "FP-1"), ("a/b c", "a_b_c")])
def test_run_id(patch_id: str, run_id: str) -> None:
    assert run_id_for(patch_id) == run_id
