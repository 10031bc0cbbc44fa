"""fleetpatch.rollout.patch_apply's action plugin and the startup hook (plugin_utils/_host_startup.py): the module runs
with the hook's directory first on its PYTHONPATH exactly when the hook was put beside it, and only while it runs.
That a real rollout fills the host cache with ansible-core's code through it: tests/integration/test_bytecode_cache.py."""

from __future__ import annotations

import typing as t

import pytest
from ansible.plugins.loader import shell_loader

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _host_startup

from conftest import make_action

ARGS: dict[str, t.Any] = {"root": "/srv/fleetpatch", "service": "myapp", "version": "1.0.1", "sha256": "a" * 64}


@pytest.mark.parametrize("directory", ["/remote/tmp/ansible-tmp-1", None])
def test_the_module_runs_with_the_hook_on_its_path_only_when_it_was_put(monkeypatch: pytest.MonkeyPatch, directory: str | None) -> None:
    action = make_action("patch_apply", ARGS)
    action._connection._shell = shell_loader.get("sh")
    action._task.environment = [{"LANG": "C"}]
    given: list[t.Mapping[str, t.Any]] = []

    def put(_action: t.Any, environment: t.Mapping[str, t.Any]) -> str | None:
        given.append(dict(environment))
        return directory

    seen: list[str] = []

    def execute_module(**kwargs: t.Any) -> dict[str, t.Any]:
        assert kwargs["module_name"] == "fleetpatch.rollout.patch_apply" and kwargs["module_args"] == ARGS
        seen.append(action._compute_environment_string())
        return {"changed": True}

    monkeypatch.setattr(_host_startup, "put", put)  # the name the base class calls
    monkeypatch.setattr(action, "_execute_module", execute_module)
    assert action.run(task_vars={})["changed"] is True
    assert given == [{"LANG": "C"}]  # the task's environment, templated, decides whether the hook applies
    if directory is None:
        assert seen == ["LANG=C"]
    else:
        assert seen == ["LANG=C PYTHONPATH=/remote/tmp/ansible-tmp-1\"${PYTHONPATH:+:$PYTHONPATH}\""]
    # after the execution the task's environment is the task's again
    assert action._compute_environment_string() == "LANG=C"
