"""Make `ansible_collections.fleetpatch.rollout` importable from a plain checkout, the way Ansible itself loads it."""

from __future__ import annotations

import os
import typing as t

import pytest
from ansible.plugins.loader import init_plugin_loader

from tests.harness.postgres import PostgresServer, postgres_skip_reason

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_PATH = os.path.join(REPO_ROOT, "collections")

# Installs ansible-core's collection finder, so that both plain imports and the plugin loader resolve
# fleetpatch.rollout through collections/ansible_collections/fleetpatch/rollout (a link to the repo root).
init_plugin_loader([COLLECTIONS_PATH])


@pytest.fixture(scope="module")
def postgres() -> t.Iterator[PostgresServer]:
    """A private PostgreSQL server (Debian's initdb/pg_ctl on a unix socket) for one test module; the module is skipped
    where the machine has none."""
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server
