"""fleetpatch.rollout.patch_apply's action plugin: what it refuses before anything reaches a host (the transfer and the
module execution themselves are exercised on the demo fleet by the copy-stage rollouts of tests/integration)."""

from __future__ import annotations

import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import make_action

ARGS: dict[str, t.Any] = {"root": "/srv/fleetpatch", "service": "myapp", "version": "1.0.1", "sha256": "a" * 64}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"src": ""}, "src must be the path of the artifact on the controller"),
        ({"src": 42}, "src must be the path of the artifact on the controller"),
        ({"src": "{artifact}", "artifact_url": "https://artifacts.invalid/a.tar.gz"}, "parameters are mutually exclusive: src|artifact_url"),
        ({"src": "{artifact}", "state": "rollback"}, "src is only used with state=present"),
        ({"src": "{missing}"}, "src {missing} is not a file on the controller"),
        ({"src": "{directory}"}, "src {directory} is not a file on the controller"),
    ],
)
def test_refused_before_the_host_is_touched(tmp_path: t.Any, changes: dict[str, t.Any], message: str) -> None:
    artifact = tmp_path / "myapp-1.0.1.tar.gz"
    artifact.write_bytes(b"artifact")
    names = {"artifact": str(artifact), "missing": str(tmp_path / "missing.tar.gz"), "directory": str(tmp_path)}
    args = dict(ARGS, **{key: value.format(**names) if isinstance(value, str) else value for key, value in changes.items()})
    action = make_action("patch_apply", args)
    # nothing may reach the connection: the fake one has no put_file and no exec_command, so any use would raise otherwise
    with pytest.raises(AnsibleActionFail) as raised:
        action.run(task_vars={})
    assert str(raised.value.message) == message.format(**names)
