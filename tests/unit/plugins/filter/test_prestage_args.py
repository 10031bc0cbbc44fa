from __future__ import annotations

import typing as t

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.filter.prestage_args import prestage_args

SHA = "ab" * 32


def manifest(**artifact: t.Any) -> dict[str, t.Any]:
    return {"patch_id": "FP-1", "service": "myapp", "target_version": "1.0.1",
            "artifact": dict({"url": "https://o/myapp-1.0.1.bundle.tar.gz", "sha256": SHA.upper(), "size": 10}, **artifact)}


def test_shared_arguments_come_from_the_manifest_and_the_options() -> None:
    args = prestage_args(manifest(), {"retries": 5, "state": "verified", "require_signature": False})
    assert args == {"service": "myapp", "version": "1.0.1", "sha256": SHA, "size": 10,
                    "name": "myapp-1.0.1.bundle.tar.gz", "url": "https://o/myapp-1.0.1.bundle.tar.gz",
                    "retries": 5, "state": "verified", "require_signature": False}


def test_unset_options_are_left_to_the_module_defaults_and_the_delta_loses_its_controller_path() -> None:
    delta = {"url": "https://o/d.tar.gz", "path": "/srv/build/d.tar.gz", "sha256": SHA, "size": 3, "base_version": "1.0.0"}
    args = prestage_args(manifest(delta=delta), {"allowed_signers": "", "signer_identity": None, "keep": 0, "timeout": 30})
    assert "allowed_signers" not in args and "signer_identity" not in args and "signature" not in args
    assert args["keep"] == 0 and args["timeout"] == 30  # falsy but set: passed on
    assert args["delta"] == {"url": "https://o/d.tar.gz", "sha256": SHA, "size": 3, "base_version": "1.0.0", "name": "d.tar.gz"}


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        (manifest(size=None), {}, "patch FP-1: pre-staging needs artifact.size (and artifact.delta.size) in the patch manifest"),
        (manifest(), {"retry": 5}, "unknown prestage option(s) retry"),
        (manifest(), [1], "options must be a mapping"),
        ({"patch_id": "FP-1"}, {}, "patch manifest: service is required"),
    ],
)
def test_bad_manifest_or_options_are_refused_naming_the_filter(data: t.Any, options: t.Any, message: str) -> None:
    if data.get("artifact", {}).get("size", 0) is None:
        del data["artifact"]["size"]
    with pytest.raises(AnsibleFilterError) as exc:
        prestage_args(data, options)
    assert str(exc.value).startswith("fleetpatch.rollout.prestage_args: ")
    assert message in str(exc.value)
