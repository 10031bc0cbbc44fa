from __future__ import annotations

import re
import resource
import time

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file, load_text

BOMB = "".join(
    [f"a: &a [{', '.join(['lol'] * 9)}]\n"] + [f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")]
)


def test_alias_bomb_fails_fast_and_small(tmp_path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(BOMB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(YamlError) as excinfo:
        load_file(str(path), what="patch manifest")
    assert time.monotonic() - started < 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 100 * 1024 * 1024
    assert re.fullmatch(rf"patch manifest {re.escape(str(path))}: 28 YAML nodes stand for 490329064 with aliases expanded \(an alias bomb\?\)"
                        r" near line 7; at most 1000000 or 10 times the document's own are read", str(excinfo.value)), str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\nb: 2\na: 3\n", "f.yml: duplicate key 'a' at line 3 (first at line 1)"),
        ("{a: 1, a: 2}", "f.yml: duplicate key 'a' at line 1 (first at line 1)"),
        ("hosts:\n  h1:\n    fleet_region: x\n    fleet_region: y\n", "f.yml: duplicate key 'fleet_region' at line 4 (first at line 3)"),
        ("a: &a [*a]\n", "f.yml: recursive alias at line 1"),
        ("a: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  00\n", "f.yml: a !vault value at line 1 cannot be decrypted here"),
        ("- [1\n", "f.yml is not valid YAML/JSON: while parsing a flow sequence"),
        ('{"a": 1, "a": 2}', "f.yml: duplicate key 'a' at line 1 (first at line 1)"),
    ],
)
def test_refused_documents(text: str, message: str) -> None:
    with pytest.raises(YamlError) as excinfo:
        load_text(text, source="f.yml")
    assert str(excinfo.value).startswith(message), str(excinfo.value)


def test_the_bound_is_the_larger_of_the_limit_and_ten_times_the_documents_own_nodes() -> None:
    # 8 distinct nodes standing for 20: over max_nodes=15, but a document may stand for 10 times its own (merged defaults)
    merged = "a: &a [1, 2, 3]\nb: [*a, *a, *a]\n"
    assert load_text(merged, source="f.yml", max_nodes=15) == {"a": [1, 2, 3], "b": [[1, 2, 3]] * 3}
    # 14 distinct nodes standing for 214: over both bounds
    bomb = f"a: &a [{', '.join(str(n) for n in range(9))}]\nb: [{', '.join(['*a'] * 20)}]\n"
    with pytest.raises(YamlError, match=r"^f.yml: 14 YAML nodes stand for 214 with aliases expanded"):
        load_text(bomb, source="f.yml", max_nodes=15)
    assert load_text(bomb, source="f.yml", max_nodes=214)["b"][0] == list(range(9))


def test_merge_keys_may_be_overridden_and_unsafe_loads_as_text() -> None:
    text = "base: &b {x: 1, y: 2}\nh:\n  <<: *b\n  x: 3\nt: !unsafe '{{ lookup(\"pipe\", \"id\") }}'\n"
    assert load_text(text, source="f.yml") == {"base": {"x": 1, "y": 2}, "h": {"x": 3, "y": 2}, "t": '{{ lookup("pipe", "id") }}'}


def test_vault_values_decrypt_through_the_callback() -> None:
    assert load_text("a: !vault |\n  CIPHER\n", source="f.yml", vault_decrypt=lambda text: text.strip().lower()) == {"a": "cipher"}


def test_file_limits(tmp_path) -> None:
    path = tmp_path / "big.yml"
    path.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(YamlError) as excinfo:
        load_file(str(path), what="fleet file", max_bytes=100)
    assert str(excinfo.value) == f"fleet file {path} is 204 bytes; at most 100 are read"
    with pytest.raises(YamlError, match="cannot be read"):
        load_file(str(tmp_path / "missing.yml"), what="fleet file")


def test_vault_encrypted_file_loads_through_ansibles_loader(tmp_path) -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import VaultLib, VaultSecret

    secret = VaultSecret(b"pw")
    vault = VaultLib([("default", secret)])
    path = tmp_path / "manifest.yml"
    path.write_bytes(vault.encrypt(b"patch_id: FP-1\nservice: myapp\n"))
    loader = DataLoader()
    loader.set_vault_secrets([("default", secret)])
    assert load_file(str(path), what="patch manifest", loader=loader) == {"patch_id": "FP-1", "service": "myapp"}
