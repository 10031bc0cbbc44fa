# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the one YAML/JSON loader for the files the controller reads (fleet file, patch manifest,
change policy, override, drift inputs). Controller only. Not a public API.

Ansible's loader warns about a duplicate key and keeps the last value, and expands aliases without bound: a
"billion laughs" manifest of a few hundred bytes stands for 10**9 nodes and grows the controller to gigabytes
wherever the data is copied or serialised. This loader:

* refuses a duplicate key in any mapping, naming the file, the key and both lines (keys merged in with ``<<`` may
  be overridden: that is what a merge is for);
* counts the nodes the document stands for with every alias expanded (memoised per node, so counting costs the
  size of the file, not of the expansion) and refuses more than ``max_nodes``, and refuses a recursive alias;
* refuses a file larger than ``max_bytes`` before parsing it;
* decrypts a vault-encrypted file (through Ansible's DataLoader, as ``load_from_file`` did) and inline ``!vault``
  values; ``!unsafe`` values load as plain strings (this loader never marks anything as a template).
"""

from __future__ import annotations

import os
import typing as t

import yaml

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = ["YamlError", "load_file", "load_text"]

try:
    _Base: t.Any = yaml.CSafeLoader  # libyaml parser: fleet files of thousands of hosts load in milliseconds
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Base = yaml.SafeLoader

MAX_NODES = 1_000_000  # expanded nodes any document may stand for, however small it is
ALIAS_FACTOR = 10  # a larger document may stand for up to this many times its own nodes (merged defaults per host)
MAX_BYTES = 256 * 1024 * 1024  # a 100,000-host fleet file is about 30 MB


class YamlError(FleetpatchError, ValueError):
    """A YAML/JSON file that must not be used; the message names the file."""


def _line(node: t.Any) -> int:
    return int(node.start_mark.line) + 1


def expanded_size(root: t.Any, *, limit: int, source: str) -> int:
    """Nodes in the document with every alias expanded; raises YamlError on a recursive alias, or when they exceed both
    ``limit`` and ALIAS_FACTOR times the document's own (distinct) nodes.

    The bound grows with the document because a fleet file that merges defaults into every host legitimately stands for
    a few times its own nodes; an alias bomb stands for millions of times its own. Sizes are memoised per node, so the
    count costs the size of the file, never of the expansion.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    first_over: t.Any = None
    # iterative post-order walk: a deep document must not hit Python's recursion limit either
    stack: list[tuple[t.Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [item for pair in node.value for item in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > limit and first_over is None:
                first_over = node
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlError(f"{source}: recursive alias at line {_line(node)}")
        active.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend((item, False) for pair in node.value for item in pair if id(item) not in sizes)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, False) for item in node.value if id(item) not in sizes)
    total = sizes.get(id(root), 0)
    if total > max(limit, ALIAS_FACTOR * len(sizes)):
        raise YamlError(f"{source}: {len(sizes)} YAML nodes stand for {total} with aliases expanded (an alias bomb?) near line"
                        f" {_line(first_over)}; at most {limit} or {ALIAS_FACTOR} times the document's own are read")
    return total


class StrictLoader(_Base):  # type: ignore[misc,valid-type]
    """SafeLoader that refuses duplicate keys and documents whose expansion exceeds max_nodes."""

    source = "<string>"
    max_nodes = MAX_NODES
    vault_decrypt: t.Callable[[str], str] | None = None

    def get_single_data(self) -> t.Any:
        node = self.get_single_node()
        if node is None:
            return None
        expanded_size(node, limit=self.max_nodes, source=self.source)
        return self.construct_document(node)

    def construct_mapping(self, node: t.Any, deep: bool = False) -> t.Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[t.Any, int] = {}
            for key_node, _value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor refuses it below
                if first is not None:
                    raise YamlError(f"{self.source}: duplicate key {_key_text(key)} at line {_line(key_node)} (first at line {first})")
                seen[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)


def _key_text(key: t.Any) -> str:
    text = repr(key)
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"


def _construct_vault(loader: StrictLoader, node: t.Any) -> str:
    ciphertext = loader.construct_scalar(node)
    if loader.vault_decrypt is None:
        raise YamlError(f"{loader.source}: a !vault value at line {_line(node)} cannot be decrypted here")
    return loader.vault_decrypt(str(ciphertext))


def _construct_unsafe(loader: StrictLoader, node: t.Any) -> t.Any:
    if isinstance(node, yaml.ScalarNode):
        return str(loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor("!vault", _construct_vault)
StrictLoader.add_constructor("!unsafe", _construct_unsafe)


def load_text(text: str | bytes, *, source: str, max_nodes: int = MAX_NODES, vault_decrypt: t.Callable[[str], str] | None = None) -> t.Any:
    """Parse one YAML/JSON document; every failure is a YamlError whose message starts with source."""
    # libyaml wants an exact str or bytes, not Ansible's tagged subclass
    data: str | bytes = bytes(text) if isinstance(text, bytes) else "".join([str.__str__(text)])
    loader = StrictLoader(data)
    loader.source = source
    loader.max_nodes = max_nodes
    loader.vault_decrypt = vault_decrypt
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        raise YamlError(f"{source} is not valid YAML/JSON: {str(exc)[:500]}") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def load_file(path: str, *, what: str, loader: t.Any = None, max_nodes: int = MAX_NODES, max_bytes: int = MAX_BYTES) -> t.Any:
    """Load the YAML/JSON file at path. ``loader`` is Ansible's DataLoader when there is one: a vault-encrypted file is
    then decrypted with the play's vault secrets (as ``load_from_file`` did). ``what`` names the file in errors
    ("patch manifest"); messages read "<what> <path>: ..."."""
    source = f"{what} {path}"
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise YamlError(f"{source} cannot be read: {exc.strerror}") from None
    if size > max_bytes:
        raise YamlError(f"{source} is {size} bytes; at most {max_bytes} are read")
    vault_decrypt = None
    if loader is not None:
        try:
            text: str | bytes = loader.get_text_file_contents(path)
        except Exception as exc:  # noqa: BLE001 - a vault or read error of Ansible's loader, reported with the file
            raise YamlError(f"{source} cannot be read: {exc}") from None
        vault = getattr(loader, "_vault", None)
        if vault is not None:
            def vault_decrypt(ciphertext: str) -> str:
                try:
                    return vault.decrypt(ciphertext).decode("utf-8")
                except Exception as exc:  # noqa: BLE001 - reported with the file
                    raise YamlError(f"{source}: a !vault value cannot be decrypted: {exc}") from None
    else:
        try:
            with open(path, "rb") as handle:
                text = handle.read(max_bytes + 1)
        except OSError as exc:
            raise YamlError(f"{source} cannot be read: {exc.strerror}") from None
    return load_text(text, source=source, max_nodes=max_nodes, vault_decrypt=vault_decrypt)
