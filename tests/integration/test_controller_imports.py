"""The collection's controller code compiles once per playbook run, in ansible-playbook, not again in each worker (issue 19).

ansible's collection loader compiles a plugin and the plugin_utils modules it imports from source (no bytecode cache),
and a forked worker's imports die with it. What keeps that cost per run rather than per host task is that the strategy
loads each task's action plugin (class_only) in the ansible-playbook process before it queues the task's workers, which
fork from it and inherit the loaded modules. An import of controller code inside a function of an action plugin, or a
plugin only a worker loads, would compile again per host and per batch; this test finds that with an audit hook
(``compile`` events) in every process of a real run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import typing as t

import pytest

from .rollout_harness import ANSIBLE_CFG, REPO_ROOT

pytestmark = pytest.mark.integration

HOSTS = ("n1", "n2", "n3", "n4")
SITECUSTOMIZE = """
import os, sys
_log = os.environ.get("FLEETPATCH_TEST_COMPILE_LOG")
if _log:
    def _hook(event, args):
        if event == "compile" and len(args) > 1 and isinstance(args[1], str) and "/fleetpatch/rollout/plugins/" in args[1]:
            with open(_log, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()} {args[1]}\\n")
    sys.addaudithook(_hook)
"""
PLAYBOOK = """
- name: One collection action on every host, each in a worker of its own
  hosts: all
  gather_facts: false
  connection: local
  vars:
    rollout_preview: "false"
  tasks:
    - name: Convert the rollout's variables
      fleetpatch.rollout.role_vars:
        role: rollout
        entry_point: [plan]
      register: converted

    - name: The action ran on the host
      ansible.builtin.assert:
        that: converted.rollout_preview is false
"""


def test_action_plugins_and_plugin_utils_compile_only_in_ansible_playbook(tmp_path: t.Any) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    (tmp_path / "inventory").write_text("\n".join(HOSTS) + "\n", encoding="utf-8")
    (tmp_path / "playbook.yml").write_text(textwrap.dedent(PLAYBOOK), encoding="utf-8")
    log = tmp_path / "compiles.log"
    env = dict(os.environ, PYTHONPATH=str(site), FLEETPATCH_TEST_COMPILE_LOG=str(log), ANSIBLE_CONFIG=ANSIBLE_CFG,
               ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO_ROOT, "collections"), ANSIBLE_STDOUT_CALLBACK="default",
               FLEETPATCH_EVENTS_PATH=str(tmp_path / "events.jsonl"))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(tmp_path / "inventory"),
               str(tmp_path / "playbook.yml")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    for host in HOSTS:  # both tasks ran on every host: the action in a worker of its own
        assert re.search(rf"^{host} +: ok=2 +changed=0 +unreachable=0 +failed=0 ", output, re.MULTILINE), output

    compiles = [line.split(" ", 1) for line in log.read_text(encoding="utf-8").splitlines()]
    controller = [(int(pid), path) for pid, path in compiles if "/plugins/action/" in path or "/plugins/plugin_utils/" in path]
    compiled = sorted(os.path.relpath(path, os.path.join(REPO_ROOT, "collections")) for _pid, path in controller)
    # the hook sees every compile: the action itself and what it imports, in the ansible-playbook process
    assert "ansible_collections/fleetpatch/rollout/plugins/action/role_vars.py" in compiled
    assert "ansible_collections/fleetpatch/rollout/plugins/plugin_utils/_survey.py" in compiled
    assert {pid for pid, _path in controller} == {process.pid}, "compiled in a worker:\n" + "\n".join(
        f"{pid} {path}" for pid, path in controller if pid != process.pid)
    assert len(compiled) == len(set(compiled)), f"compiled more than once: {compiled}"
