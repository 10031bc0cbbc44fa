"""rollout_policy.artifacts validation (plugin_utils/_trust_policy.py) and host-side signature verification
(module_utils/_trust.py), with real ssh-keygen keys."""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import (
    TrustError,
    fingerprint,
    parse_allowed_signers,
    signature_key,
    verify_artifact_signature,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._trust_policy import (
    DEFAULTS,
    check_plan_signatures,
    signature_required,
    validate_artifacts_policy,
)


class Key:
    def __init__(self, directory: Path, principal: str) -> None:
        self.path = str(directory / principal.split("@")[0])
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", self.path], check=True)
        self.principal = principal
        self.public = Path(self.path + ".pub").read_text().split()
        self.fingerprint = subprocess.run(["ssh-keygen", "-lf", self.path + ".pub"], check=True, capture_output=True,
                                          text=True).stdout.split()[1]

    def line(self, principal: str | None = None) -> str:
        return f'{principal or self.principal} namespaces="fleetpatch" {self.public[0]} {self.public[1]}\n'

    def sign(self, path: str, namespace: str = "fleetpatch") -> str:
        with open(path, "rb") as handle:
            return subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", self.path, "-n", namespace], stdin=handle,
                                  check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: Key(directory, f"{name}@example.com") for name in ("release", "rogue")}


@pytest.fixture
def artifact(tmp_path: Path) -> str:
    path = tmp_path / "artifact.tar.gz"
    path.write_bytes(b"release bytes\n" * 100)
    return str(path)


def test_defaults() -> None:
    assert validate_artifacts_policy(None) == DEFAULTS
    assert validate_artifacts_policy({})["require_signature"] == "auto"
    assert DEFAULTS["production_environments"] == ["prod", "production"]


def test_signers_text_and_file(keys: dict[str, Key], tmp_path: Path) -> None:
    text = "# trusted\n\n" + keys["release"].line()
    result = validate_artifacts_policy({"allowed_signers": text, "signer_identity": "release@example.com"})
    assert result["allowed_signers"] == keys["release"].line() and result["signer_identity"] == "release@example.com"
    path = tmp_path / "allowed_signers"
    path.write_text(text)
    result = validate_artifacts_policy({"allowed_signers_file": str(path)})
    assert result["allowed_signers"] == keys["release"].line() and result["allowed_signers_file"] == str(path)


@pytest.mark.parametrize(("data", "message"), [
    ([], "policy.artifacts must be a mapping, got list"),
    ({"signers": "x"}, "policy.artifacts: unknown key(s) 'signers'; allowed: allowed_signers, allowed_signers_file, signer_identity, "
                       "require_signature, production_environments, max_artifact_bytes, max_time, min_throughput, throughput_window, "
                       "origin_fallback"),
    ({"allowed_signers": "a b", "allowed_signers_file": "/x"}, "policy.artifacts: give allowed_signers or allowed_signers_file, not both"),
    ({"allowed_signers_file": "/nonexistent/allowed_signers"},
     "policy.artifacts.allowed_signers_file '/nonexistent/allowed_signers' does not exist"),
    ({"allowed_signers": "release@example.com ssh-ed25519"},
     "policy.artifacts.allowed_signers line 1: expected 'principals [options] key-type base64-key', got "
     "'release@example.com ssh-ed25519'"),
    ({"allowed_signers": "release@example.com ssh-ed25519 !!!notbase64"},
     "policy.artifacts.allowed_signers line 1: the ssh-ed25519 key is not valid base64 key data ("),
    ({"allowed_signers": "# only a comment\n"}, "policy.artifacts.allowed_signers holds no key (only blank or comment lines)"),
    ({"require_signature": "maybe"}, "policy.artifacts.require_signature must be true, false or auto, got 'maybe'"),
    ({"signer_identity": "two words"}, "policy.artifacts.signer_identity must be one principal (at most 256 characters, no whitespace),"
                                       " got 'two words'"),
    ({"production_environments": ["prod", "x" * 200]},
     "policy.artifacts.production_environments[1] must be a name of 1 to 128 printable characters, got "
     "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (202 characters)"),
    ({"production_environments": {"prod": 1}}, "policy.artifacts.production_environments must be a list of environment names, got {'prod': 1}"),
    ({"max_artifact_bytes": 0}, "policy.artifacts.max_artifact_bytes must be at least 1, got 0"),
    ({"max_artifact_bytes": "1.5"}, "policy.artifacts.max_artifact_bytes must be a whole number, got '1.5'"),
    ({"max_time": True}, "policy.artifacts.max_time must be a number, got True"),
    ({"min_throughput": "fast"}, "policy.artifacts.min_throughput must be a number, got 'fast'"),
    ({"origin_fallback": "sometimes"}, "policy.artifacts.origin_fallback must be true or false, got 'sometimes'"),
])
def test_bad_policy_is_refused_naming_the_field(data: t.Any, message: str) -> None:
    with pytest.raises(TrustError) as caught:
        validate_artifacts_policy(data)
    # the base64 error's own wording is Python's
    assert str(caught.value) == message or (message.endswith("(") and str(caught.value).startswith(message))


def test_identity_must_be_an_allowed_signer(keys: dict[str, Key]) -> None:
    with pytest.raises(TrustError) as caught:
        validate_artifacts_policy({"allowed_signers": keys["release"].line(), "signer_identity": "rogue@example.com"})
    assert str(caught.value) == ("policy.artifacts.signer_identity 'rogue@example.com' is not a principal of the allowed signers "
                                 "(release@example.com)")


def test_survey_strings_are_accepted() -> None:
    # AWX survey answers are strings
    result = validate_artifacts_policy({"require_signature": "yes", "max_artifact_bytes": "25", "max_time": "2.5",
                                        "min_throughput": "0", "origin_fallback": "false", "production_environments": "prod, live"})
    assert (result["require_signature"], result["max_artifact_bytes"], result["max_time"], result["min_throughput"]) == (True, 25, 2.5, 0)
    assert result["origin_fallback"] is False and result["production_environments"] == ["prod", "live"]
    assert validate_artifacts_policy({"require_signature": "AUTO"})["require_signature"] == "auto"
    assert validate_artifacts_policy({"require_signature": "0"})["require_signature"] is False


def test_signature_required_by_environment() -> None:
    auto = validate_artifacts_policy({})
    assert signature_required(auto, "prod") and signature_required(auto, "production")
    assert not signature_required(auto, "staging") and not signature_required(auto, None)
    assert signature_required(validate_artifacts_policy({"require_signature": True}), "dev")
    assert not signature_required(validate_artifacts_policy({"require_signature": False}), "prod")


def test_plan_refuses_unsigned_artifacts_for_production_hosts(keys: dict[str, Key]) -> None:
    hosts = {f"h{i}": {"fleet_environment": env} for i, env in enumerate(["prod"] * 7 + ["dev"])}
    manifest = {"artifact": {"sha256": "a" * 64}}
    with pytest.raises(TrustError) as caught:
        check_plan_signatures(validate_artifacts_policy({}), manifest, hosts, source="patch manifest /p.yml")
    assert str(caught.value) == ("patch manifest /p.yml: artifact.signature is missing and environment 'prod' requires signed artifacts "
                                 "(hosts h0, h1, h2, h3, h4 and 2 more); sign the artifact (ssh-keygen -Y sign -n fleetpatch) or set "
                                 "policy.artifacts.require_signature")
    signed = {"artifact": {"sha256": "a" * 64, "signature": "x"}}
    with pytest.raises(TrustError) as caught:
        check_plan_signatures(validate_artifacts_policy({}), signed, {"h7": {"fleet_environment": "prod"}})
    assert str(caught.value) == ("policy.artifacts has no allowed_signers (or allowed_signers_file) to verify signatures against, and "
                                 "environment 'prod' requires signed artifacts (hosts h7)")
    delta = {"artifact": {"sha256": "a" * 64, "signature": "x", "delta": {"sha256": "b" * 64}}}
    with pytest.raises(TrustError) as caught:
        check_plan_signatures(validate_artifacts_policy({"allowed_signers": keys["release"].line()}), delta, {"h7": {"fleet_environment": "prod"}})
    assert str(caught.value) == "patch manifest: artifact.delta.signature is missing and environment 'prod' requires signed artifacts (hosts h7)"
    # nothing required: an unsigned artifact for dev hosts only is fine
    assert check_plan_signatures(validate_artifacts_policy({}), manifest, {"h7": {"fleet_environment": "dev"}}) == []


def test_signature_key_and_fingerprint(keys: dict[str, Key], artifact: str) -> None:
    keytype, blob = signature_key(keys["release"].sign(artifact))
    assert keytype == "ssh-ed25519" and fingerprint(blob) == keys["release"].fingerprint
    assert parse_allowed_signers(keys["release"].line())[0]["blob"] == blob


def test_verify_good_signature(keys: dict[str, Key], artifact: str) -> None:
    signers = keys["release"].line()
    seen = verify_artifact_signature(artifact, signature=keys["release"].sign(artifact), allowed_signers=signers, what="artifact X")
    assert seen == {"principal": "release@example.com", "key": f"ssh-ed25519 key {keys['release'].fingerprint}"}
    seen = verify_artifact_signature(artifact, signature=keys["release"].sign(artifact), allowed_signers=signers,
                                     identity="release@example.com")
    assert seen["principal"] == "release@example.com"


def test_wrong_key_names_the_key_seen(keys: dict[str, Key], artifact: str) -> None:
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(artifact, signature=keys["rogue"].sign(artifact), allowed_signers=keys["release"].line(),
                                  what="artifact X")
    assert str(caught.value) == (f"signature of artifact X was made by ssh-ed25519 key {keys['rogue'].fingerprint}, which is not in "
                                 "allowed_signers (trusted: release@example.com)")


def test_other_principal_than_required(keys: dict[str, Key], artifact: str) -> None:
    signers = keys["release"].line() + keys["rogue"].line()
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(artifact, signature=keys["rogue"].sign(artifact), allowed_signers=signers,
                                  identity="release@example.com", what="artifact X")
    assert str(caught.value) == (f"signature of artifact X is by rogue@example.com (ssh-ed25519 key {keys['rogue'].fingerprint}), "
                                 "not by the required signer_identity 'release@example.com'")


def test_tampered_content_and_wrong_namespace(keys: dict[str, Key], artifact: str, tmp_path: Path) -> None:
    signature = keys["release"].sign(artifact)
    with open(artifact, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(artifact, signature=signature, allowed_signers=keys["release"].line(), what="artifact X")
    assert str(caught.value).startswith(f"signature of artifact X by release@example.com (ssh-ed25519 key {keys['release'].fingerprint}) "
                                        "does not verify: ")
    other = tmp_path / "other"
    other.write_bytes(b"x")
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(str(other), signature=keys["release"].sign(str(other), namespace="git"),
                                  allowed_signers=keys["release"].line(), what="artifact Y")
    assert "does not verify" in str(caught.value)


def test_malformed_signature_text(keys: dict[str, Key], artifact: str) -> None:
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(artifact, signature="not a signature", allowed_signers=keys["release"].line(), what="artifact X")
    assert str(caught.value) == ("signature of artifact X is not an armored SSH signature (it must contain -----BEGIN SSH SIGNATURE----- "
                                 "... -----END SSH SIGNATURE-----), got 'not a signature'")
    with pytest.raises(TrustError) as caught:
        verify_artifact_signature(artifact, signature="-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
                                  allowed_signers=keys["release"].line(), what="artifact X")
    assert str(caught.value) == "signature of artifact X is not an SSHSIG signature (wrong magic)"
