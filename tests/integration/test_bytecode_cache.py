"""The host bytecode cache (module_utils/_bytecode.py) in a real rollout: the demo hosts run as the controller's user, so
the cache directory the test points them at (FLEETPATCH_BYTECODE_CACHE_DIR) is theirs; the first executions fill it and
later ones on the same host read it (a file whose read failed or was not trusted would be compiled and replaced)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import ansible.module_utils.basic
import ansible.module_utils.common.parameters
import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bytecode

from .rollout_harness import DemoFleet, envvars

pytestmark = pytest.mark.integration

SMALL = {"demo_fleet_regions": ["eu-west"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"], "demo_fleet_hosts_per_cell": 2}


def snapshot(cache: str) -> dict[str, tuple[int, int]]:
    found = {}
    for name in os.listdir(cache):
        info = os.stat(os.path.join(cache, name))
        assert name.endswith(".bin") and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid(), name
        found[name] = (info.st_ino, info.st_mtime_ns)
    return found


def test_rollout_fills_the_host_cache_and_later_executions_read_it(make_fleet, tmp_path) -> None:
    fleet: DemoFleet = make_fleet(**SMALL)
    cache = str(tmp_path / "bytecode")
    env = {"FLEETPATCH_BYTECODE_CACHE_DIR": cache}
    result = fleet.rollout(policy={"canary": {"size": 1}, "waves": ["100%"]}, env=env)
    assert result.status == "successful", result.stdout[-3000:]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    after_rollout = snapshot(cache)
    # patch_apply's own module_utils (_release, _module_ops, _host, _io, _archive, _fetch, ... and their packages)
    assert len(after_rollout) >= 8, sorted(after_rollout)
    # and, through the startup hook the action plugin put beside the module (local connection: no pipelining),
    # ansible-core's module_utils from the payload, which the AnsiballZ wrapper imports before any collection code
    for core in (ansible.module_utils.basic, ansible.module_utils.common.parameters):
        with open(core.__file__, "rb") as source:
            assert _bytecode.cache_name(source.read()) in after_rollout, core.__name__

    node = fleet.nodes()[0]
    command = [os.path.join(os.path.dirname(sys.executable), "ansible"), node, "-i", fleet.inventory, "-m", "fleetpatch.rollout.patch_facts",
               "-a", json.dumps({"root": fleet.host_root(node), "services": ["myapp"]})]
    outputs = []
    for _attempt in range(2):
        proc = subprocess.run(command, env=dict(os.environ, **envvars(**env)), capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs.append(snapshot(cache))
    # patch_facts added its own files once; nothing the rollout wrote was rewritten, and the second run wrote nothing
    assert {name: outputs[0][name] for name in after_rollout} == after_rollout
    assert outputs[1] == outputs[0] and len(outputs[0]) > len(after_rollout)
