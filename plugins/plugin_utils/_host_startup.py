# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the host bytecode cache as the interpreter's startup hook of a module execution. Not a public API.

About half the CPU of any module execution on a host is Python compiling ansible-core's module_utils from the AnsiballZ
zip, before the module's own code runs (docs/architecture.md, "Cost per host"). The collection's module code cannot
reach that: the wrapper imports them first. The interpreter can: an action plugin that runs a fleetpatch module puts
the host bytecode cache (module_utils/_bytecode.py, the same file the payload carries) into the task's remote tmp dir
as ``sitecustomize.py`` and that directory first on the module's ``PYTHONPATH``. Python runs it when it starts; its
finder then loads ansible-core's and the collection's code compiled once per host, user and source text.

Only where it costs no extra remote command: the file is written with ``put_file`` into the tmp dir the execution
has anyway (a connection that does not pipeline, or the copy stage's transfer); a pipelined execution keeps its
one remote command and the collection's own cache. Not for async tasks (async_wrapper runs the module later, in its
own environment), shells other than POSIX sh, or a task whose environment sets FLEETPATCH_BYTECODE_CACHE=off.

``HookedModuleAction`` is the base of the action plugins that run a collection module on the host: ``_run_module``
is ``_execute_module`` with the hook. ``HookedNormalAction`` adds the ``run`` of ansible-core's ``normal`` action (the
thin action plugins of patch_facts and prestage are that class).
"""

from __future__ import annotations

import functools
import importlib.util
import typing as t

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

__all__ = ["FILE_NAME", "HookedModuleAction", "HookedNormalAction", "environment_string", "hook_source_path", "put"]

FILE_NAME = "sitecustomize.py"
HOOK_MODULE = "ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode"
CACHE_ENV = "FLEETPATCH_BYTECODE_CACHE"  # module_utils/_bytecode.py's switch, read here from the task's environment


@functools.lru_cache(maxsize=None)
def hook_source_path() -> str:
    """The controller file of the hook: the collection's own _bytecode.py (what the payload carries)."""
    spec = importlib.util.find_spec(HOOK_MODULE)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise FileNotFoundError(f"{HOOK_MODULE} has no source file on the controller")
    return spec.origin


def put(action: t.Any, environment: t.Mapping[str, t.Any]) -> str | None:
    """Put the hook into the task's remote tmp dir and return that directory, or None where the hook does not apply.

    environment: the task's environment as it will be sent (templated). The tmp dir is made here when the execution
    will make one anyway (the connection does not pipeline), as ``_execute_module`` would make it, and removed with the
    task's as always.
    """
    shell = action._connection._shell  # pylint: disable=protected-access
    if action._task.async_val or getattr(shell, "SHELL_FAMILY", None) != "sh":  # pylint: disable=protected-access
        return None
    if str(environment.get(CACHE_ENV, "")).lower() == "off":
        return None
    tmpdir = shell.tmpdir
    if tmpdir is None:
        if action._is_pipelining_enabled("new"):  # pylint: disable=protected-access
            return None
        tmpdir = action._make_tmp_path()  # pylint: disable=protected-access
    remote = shell.join_path(tmpdir, FILE_NAME)
    action._transfer_file(hook_source_path(), remote)  # pylint: disable=protected-access
    # read, never run: without become no remote command; with an unprivileged become the become user may read it
    action._fixup_perms2((remote,), execute=False)  # pylint: disable=protected-access
    return tmpdir


def environment_string(shell: t.Any, environment: t.Mapping[str, t.Any], directory: str) -> str:
    """The task's environment for the shell with directory first on PYTHONPATH: before the task's PYTHONPATH when it
    sets one, else before whatever the remote shell has (expanded there), which the hook gives back to the module."""
    environment = dict(environment)
    given = environment.pop("PYTHONPATH", None)
    prefix = shell.env_prefix(**environment)
    if given is None:
        value = shell.quote(directory) + '"${PYTHONPATH:+:$PYTHONPATH}"'
    else:
        value = shell.quote(f"{directory}:{given}" if str(given) else directory)
    return f"{prefix} PYTHONPATH={value}".lstrip()


class HookedModuleAction(ActionBase):
    """Runs the task's module (one of the collection's) on the host, with the startup hook where it applies."""

    # while the module runs with the hook: its remote directory and the task's environment, templated once
    _startup: tuple[str, dict[str, t.Any]] | None = None

    def _run_module(self, module_name: str | None = None, module_args: dict[str, t.Any] | None = None,
                    task_vars: dict[str, t.Any] | None = None, wrap_async: bool = False) -> dict[str, t.Any]:
        """One module execution (``_execute_module``), with the startup hook where it applies."""
        environment: dict[str, t.Any] = {}
        super()._compute_environment_string(environment)
        directory = None if wrap_async else put(self, environment)
        self._startup = None if directory is None else (directory, environment)
        try:
            return self._execute_module(module_name=module_name, module_args=module_args, task_vars=task_vars,
                                        **({"wrap_async": True} if wrap_async else {}))
        finally:
            self._startup = None

    def _compute_environment_string(self, raw_environment_out: dict[str, t.Any] | None = None) -> str:
        """The task's environment, with the startup hook's directory first on PYTHONPATH while the module runs."""
        if self._startup is None:
            return super()._compute_environment_string(raw_environment_out)
        directory, environment = self._startup
        if isinstance(raw_environment_out, dict):
            raw_environment_out.clear()
            raw_environment_out.update(environment)
        return environment_string(self._connection._shell, environment, directory)  # pylint: disable=protected-access


class HookedNormalAction(HookedModuleAction):
    """ansible-core's normal action (the task's module with the task's arguments), with the startup hook."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result = merge_hash(result, self._run_module(task_vars=task_vars, wrap_async=wrap_async))
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)  # pylint: disable=protected-access
        return result
