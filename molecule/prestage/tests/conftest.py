"""Fixtures of the molecule/prestage testinfra verifier.

Molecule hands testinfra an Ansible inventory, and testinfra's Ansible backend does not map the
containers.podman connection to its own podman backend: every command would become a separate
`ansible -m shell` run (about 1.5 s each). Hosts whose connection is podman get testinfra's native
`podman://NAME` backend instead (about 0.16 s per command).
"""

from __future__ import annotations

import os
import typing as t

import pytest
import testinfra
import yaml

PODMAN_CONNECTIONS = frozenset(("podman", "containers.podman.podman"))


@pytest.fixture(scope="module")
def host(_testinfra_host: t.Any) -> t.Any:
    """The parametrized testinfra host, switched to the native podman backend where that applies."""
    backend = _testinfra_host.backend
    if backend.get_connection_type() != "ansible":
        return _testinfra_host
    hostvars = backend.get_variables()
    if hostvars.get("ansible_connection") not in PODMAN_CONNECTIONS:
        return _testinfra_host
    container = hostvars.get("ansible_host") or hostvars["inventory_hostname"]
    return testinfra.get_host(f"podman://{container}")


def _load(path: str) -> t.Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)  # JSON is YAML too


@pytest.fixture(scope="session")
def scenario_dir() -> str:
    """Controller-side files of the scenario (vars/scenario.yml: scenario_dir)."""
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "fleetpatch")


@pytest.fixture(scope="session")
def patch_manifest(scenario_dir: str) -> dict[str, t.Any]:
    """The patch manifest prepare.yml wrote (full bundle and delta)."""
    return _load(os.path.join(scenario_dir, "patch-FP-PRESTAGE-1.yml"))


@pytest.fixture(scope="session")
def prestage_report(scenario_dir: str) -> dict[str, t.Any]:
    """The controller's report of the pre-staging run (converge.yml: prestage_state_dir)."""
    return _load(os.path.join(scenario_dir, "state", "prestage", "FP-PRESTAGE-1.json"))


@pytest.fixture(scope="module")
def hostvars(_testinfra_host: t.Any) -> dict[str, t.Any]:
    """Inventory variables of the host under test (role: edge or node)."""
    return _testinfra_host.backend.get_variables()
