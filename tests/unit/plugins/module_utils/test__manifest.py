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
        (_with("target_version", 101), "patch manifest: target_version must be a string, got 101"),
        (_with("artifact", KeyError), "patch manifest: artifact is required and must be a mapping"),
        (_with("artifact.sha256", "abc"), "patch manifest: artifact.sha256 must be 64 hexadecimal characters"),
        (_with("artifact.url", "ftp://x/y"), "patch manifest: artifact.url 'ftp://x/y' has scheme ftp://; allowed: http://, https://, file://"),
        (_with("artifact.size", -1), "patch manifest: artifact.size must be a positive integer"),
        (_with("artifact.colour", "red"), "patch manifest: artifact has unknown field(s) colour"),
        (_with("colour", "red"), "patch manifest: unknown field(s) colour"),
        (_with("artifact.url", KeyError), "patch manifest: artifact needs a url or a path"),
        (_with("artifact.path", "relative/file"), "patch manifest: artifact.path 'relative/file' must be an absolute path"),
    ],
)
def test_bad_manifests_are_refused(data, message: str) -> None:
    with pytest.raises(ManifestError) as excinfo:
        validate_patch_manifest(data)
    assert str(excinfo.value).startswith(message)


@pytest.mark.parametrize(("patch_id", "run_id"), [("FP-1", "FP-1"), ("a/b c", "a_b_c")])
def test_run_id(patch_id: str, run_id: str) -> None:
    assert run_id_for(patch_id) == run_id


LONG = "x" * 200
V = r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,127}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # matched whole: a trailing newline is not part of a name (re.match with $ let these through)
        (_with("target_version", "1.0.1\n"), "patch manifest: target_version '1.0.1\\n' contains the control character '\\n' at position 5"),
        (_with("service", "myapp\n"), "patch manifest: service 'myapp\\n' contains the control character '\\n' at position 5"),
        (_with("patch_id", "FP-1\n"), "patch manifest: patch_id 'FP-1\\n' contains the control character '\\n' at position 4"),
        (_with("artifact.sha256", "a" * 64 + "\n"), "patch manifest: artifact.sha256 must be 64 hexadecimal characters, got 'aaaaaaaa"),
        (_with("base_version", "1.0.0 "), f"patch manifest: base_version '1.0.0 ' does not match {V}"),
        (_with("target_version", "v" * 129), "patch manifest: target_version 'vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv'... (129 characters) is longer than 128"
                                             " characters"),
        (_with("service", ["myapp"]), "patch manifest: service must be a string, got a list"),
        (_with("patch_id", {"a": 1}), "patch manifest: patch_id must be a string, got a dict"),
        (_with("description", "x" * 70000),
         "patch manifest: description 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (70000 characters) is longer than 65536"),
        (_with("description", "bell\x07"), "patch manifest: description 'bell\\x07' contains the control character '\\x07' at position 4"),
        (_with("artifact.url", "http://host/a b"), "patch manifest: artifact.url 'http://host/a b' contains whitespace at position 13; percent-encode it"),
        (_with("artifact.url", "http://host/a\x01b"),
         "patch manifest: artifact.url 'http://host/a\\x01b' contains the control character '\\x01' at position 13"),
        (_with("artifact.url", "https:///no-host"), "patch manifest: artifact.url 'https:///no-host' has no host"),
        (_with("artifact.url", "http://host:99999/x"), "patch manifest: artifact.url 'http://host:99999/x' is not a valid URL: Port out of range"),
        (_with("artifact.url", "file://remote/x"), "patch manifest: artifact.url 'file://remote/x' must be file:///absolute/path"),
        (_with("artifact.url", "//host/x"), "patch manifest: artifact.url '//host/x' has scheme (none); allowed: http://, https://, file://"),
        (_with("artifact.url", ["http://h/x"]), "patch manifest: artifact.url must be a string, got a list"),
        (_with("artifact.size", "10"), "patch manifest: artifact.size must be a positive integer, got '10'"),
        (_with("artifact.size", True), "patch manifest: artifact.size must be a positive integer, got True"),
        (_with("artifact.name", "../x"), "patch manifest: artifact.name '../x' does not match"),
        (_with("artifact.signature", "not armored"), "patch manifest: artifact.signature must be an armored SSH signature"),
        (_with("artifact.delta", {"sha256": "b" * 64, "url": "http://x/d"}), "patch manifest: artifact.delta.base_version is required"),
        (_with("artifact.delta", {"sha256": "b" * 64, "base_version": "1.0.0", "url": "ftp://x/d"}),
         "patch manifest: artifact.delta.url 'ftp://x/d' has scheme ftp://"),
        (_with("artifact.delta", {"sha256": "b" * 64, "base_version": "1.0.0\n", "url": "http://x/d"}),
         "patch manifest: artifact.delta.base_version '1.0.0\\n' contains the control character"),
        (_with("affected_versions", "1.0.0"), "patch manifest: affected_versions must be a list of versions, got '1.0.0'"),
        (_with("affected_versions", ["1.0.0", "1.0\n"]), "patch manifest: affected_versions[1] '1.0\\n' contains the control character"),
        (_with("allow_downgrade", "maybe"), "patch manifest: allow_downgrade must be a boolean (true/false), got 'maybe'"),
        # direction
        (_with("base_version", "1.2.0"), "patch manifest: target_version 1.0.1 is older than base_version 1.2.0: a downgrade is refused unless"
                                         " the manifest sets allow_downgrade: true with a downgrade_justification"),
        (_with("affected_versions", ["1.0.0", "1.1.0"]), "patch manifest: target_version 1.0.1 is older than affected_versions 1.1.0: a"
                                                         " downgrade is refused"),
        ({**_with("base_version", "1.2.0"), "allow_downgrade": True},
         "patch manifest: target_version 1.0.1 is older than base_version 1.2.0: allow_downgrade needs a non-empty downgrade_justification"),
        ({**_with("base_version", "1.2.0"), "allow_downgrade": "true", "downgrade_justification": "   "},
         "patch manifest: target_version 1.0.1 is older than base_version 1.2.0: allow_downgrade needs a non-empty downgrade_justification"),
        (_with("colour\n", "red"), "patch manifest: unknown field(s) 'colour\\n'"),
        ({**GOOD, "x" * 200: 1}, "patch manifest: unknown field(s) 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (200 characters)"),
    ],
)
def test_hostile_manifests_are_refused_with_exact_messages(data, message: str) -> None:
    with pytest.raises(ManifestError) as excinfo:
        validate_patch_manifest(data)
    assert str(excinfo.value).startswith(message), str(excinfo.value)


def test_names_up_to_128_characters_are_accepted() -> None:
    manifest = validate_patch_manifest({**GOOD, "patch_id": "P" * 128, "service": "s" * 128, "target_version": "9" * 128})
    assert len(manifest["target_version"]) == 128


def test_direction_fields_are_always_present() -> None:
    manifest = validate_patch_manifest(copy.deepcopy(GOOD))
    assert manifest["affected_versions"] == []
    assert manifest["allow_downgrade"] is False
    assert manifest["downgrade"] is None
    manifest = validate_patch_manifest({**GOOD, "affected_versions": ["1.0.0", "0.9.9", "1.0.0"], "allow_downgrade": "no"})
    assert manifest["affected_versions"] == ["1.0.0", "0.9.9"]
    assert manifest["allow_downgrade"] is False


def test_allowed_downgrade_is_described() -> None:
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import downgrade_text

    data = {**GOOD, "target_version": "1.1.0", "base_version": "1.2.0", "affected_versions": ["1.2.0", "1.1.5"],
            "allow_downgrade": "yes", "downgrade_justification": " 1.2.0 corrupts sessions \n"}
    manifest = validate_patch_manifest(data)
    assert manifest["downgrade"] == {"from": "1.2.0", "to": "1.1.0", "justification": "1.2.0 corrupts sessions"}
    assert downgrade_text(manifest["downgrade"]) == "DOWNGRADE 1.2.0 -> 1.1.0 allowed: 1.2.0 corrupts sessions\n"
    # validating the normalised manifest again gives the same result
    assert validate_patch_manifest(manifest) == manifest


def test_url_credentials_are_redacted_and_kept_apart() -> None:
    from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import artifact_urls, redacted

    data = _with("artifact.url", "https://user:s3cret@artifacts.example/myapp-1.0.1.tar.gz?token=abc")
    data["artifact"]["delta"] = {"sha256": "b" * 64, "base_version": "1.0.0", "url": "https://u:p@h/d.bundle"}
    manifest = validate_patch_manifest(data)
    assert manifest["artifact"]["name"] == "myapp-1.0.1.tar.gz"
    shown_manifest = redacted(manifest)
    assert shown_manifest["artifact"]["url"] == "https://***@artifacts.example/myapp-1.0.1.tar.gz?token=abc"
    assert shown_manifest["artifact"]["url_redacted"] is True
    assert shown_manifest["artifact"]["delta"]["url"] == "https://***@h/d.bundle"
    assert "s3cret" not in repr(shown_manifest) and "u:p" not in repr(shown_manifest)
    assert manifest["artifact"]["url"].startswith("https://user:s3cret@")  # the input is not changed
    assert artifact_urls(manifest) == {"url": "https://user:s3cret@artifacts.example/myapp-1.0.1.tar.gz?token=abc",
                                       "delta_url": "https://u:p@h/d.bundle"}
    assert redacted(validate_patch_manifest(copy.deepcopy(GOOD)))["artifact"]["url_redacted"] is False
