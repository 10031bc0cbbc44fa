"""plugin_utils/_host_startup.py: when an action puts the startup hook beside the module, and the environment string that
puts its directory first on the module's PYTHONPATH (run through a real /bin/sh with ansible-core's sh shell plugin)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import typing as t

import pytest
from ansible.plugins.loader import shell_loader

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _host_startup

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


@dataclasses.dataclass
class Shell:
    tmpdir: str | None = None
    SHELL_FAMILY: str = "sh"

    @staticmethod
    def join_path(*parts: str) -> str:
        return os.path.join(*parts)


@dataclasses.dataclass
class Connection:
    _shell: Shell


@dataclasses.dataclass
class Task:
    async_val: int = 0


class Action:
    """What put() uses of an ActionBase, recording the remote calls it makes."""

    def __init__(self, *, tmpdir: str | None = None, pipelining: bool = False, family: str = "sh", async_val: int = 0) -> None:
        self._connection = Connection(Shell(tmpdir=tmpdir, SHELL_FAMILY=family))
        self._task = Task(async_val=async_val)
        self.pipelining = pipelining
        self.calls: list[tuple[t.Any, ...]] = []

    def _is_pipelining_enabled(self, module_style: str) -> bool:
        return module_style == "new" and self.pipelining

    def _make_tmp_path(self) -> str:
        self.calls.append(("make_tmp_path",))
        self._connection._shell.tmpdir = "/remote/tmp/ansible-tmp-1"
        return self._connection._shell.tmpdir

    def _transfer_file(self, local: str, remote: str) -> str:
        self.calls.append(("transfer_file", local, remote))
        return remote

    def _fixup_perms2(self, paths: t.Sequence[str], execute: bool = True) -> None:
        self.calls.append(("fixup_perms2", tuple(paths), execute))


def test_the_hook_is_the_collections_own_bytecode_cache_file() -> None:
    assert os.path.realpath(_host_startup.hook_source_path()) == os.path.join(REPO_ROOT, "plugins", "module_utils", "_bytecode.py")


def test_put_into_the_tmp_dir_the_copy_stage_made_already() -> None:
    action = Action(tmpdir="/remote/tmp/ansible-tmp-7", pipelining=True)
    assert _host_startup.put(action, {}) == "/remote/tmp/ansible-tmp-7"
    remote = "/remote/tmp/ansible-tmp-7/sitecustomize.py"
    assert action.calls == [("transfer_file", _host_startup.hook_source_path(), remote), ("fixup_perms2", (remote,), False)]


def test_put_makes_the_tmp_dir_the_execution_would_make_without_pipelining() -> None:
    action = Action()
    assert _host_startup.put(action, {"LANG": "C"}) == "/remote/tmp/ansible-tmp-1"
    assert [call[0] for call in action.calls] == ["make_tmp_path", "transfer_file", "fixup_perms2"]


@pytest.mark.parametrize(
    ("action", "environment"),
    [
        pytest.param(Action(pipelining=True), {}, id="pipelined: no tmp dir to make"),
        pytest.param(Action(tmpdir="/remote/tmp/x", async_val=60), {}, id="async"),
        pytest.param(Action(tmpdir="/remote/tmp/x", family="powershell"), {}, id="not a POSIX shell"),
        pytest.param(Action(tmpdir="/remote/tmp/x"), {"FLEETPATCH_BYTECODE_CACHE": "OFF"}, id="cache off in the task's environment"),
    ],
)
def test_no_hook_and_no_remote_call(action: Action, environment: dict[str, t.Any]) -> None:
    assert _host_startup.put(action, environment) is None
    assert not action.calls


def run_through_sh(command_env: str, inherited: str | None) -> dict[str, str]:
    """The environment a command gets from `<environment string> env` run by /bin/sh with PYTHONPATH inherited or not."""
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if inherited is not None:
        environ["PYTHONPATH"] = inherited
    output = subprocess.run(["/bin/sh", "-c", f"{command_env} env -0"], env=environ, capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in output.decode().split("\0") if item)


@pytest.mark.parametrize(
    ("task_environment", "inherited", "expected"),
    [
        pytest.param({}, None, "/tmp/a b'c", id="nothing inherited"),
        pytest.param({}, "/opt/site:/opt/more", "/tmp/a b'c:/opt/site:/opt/more", id="the remote shell's PYTHONPATH kept after it"),
        pytest.param({"PYTHONPATH": "/task/lib"}, "/opt/site", "/tmp/a b'c:/task/lib", id="the task's PYTHONPATH kept after it"),
        pytest.param({"PYTHONPATH": ""}, "/opt/site", "/tmp/a b'c", id="the task's empty PYTHONPATH"),
    ],
)
def test_directory_first_on_the_modules_pythonpath(task_environment: dict[str, str], inherited: str | None, expected: str) -> None:
    shell = shell_loader.get("sh")
    environment = dict(task_environment, LANG="C", GREETING="it's $HOME")
    string = _host_startup.environment_string(shell, environment, "/tmp/a b'c")
    got = run_through_sh(string, inherited)
    assert got["PYTHONPATH"] == expected
    # the task's other variables exactly as given (quoted, never expanded)
    assert got["LANG"] == "C" and got["GREETING"] == "it's $HOME"
