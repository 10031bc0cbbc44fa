"""Make `ansible_collections.fleetpatch.rollout` importable from a plain checkout, the way Ansible itself loads it."""

from __future__ import annotations

import os

from ansible.plugins.loader import init_plugin_loader

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_PATH = os.path.join(REPO_ROOT, "collections")

# Installs ansible-core's collection finder, so that both plain imports and the plugin loader resolve
# fleetpatch.rollout through collections/ansible_collections/fleetpatch/rollout (a link to the repo root).
init_plugin_loader([COLLECTIONS_PATH])
