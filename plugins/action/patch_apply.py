# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.patch_apply: staging from the controller folded into the one apply execution.

Without ``src`` the module runs as it would without this plugin. With ``src`` (a file on the controller) the artifact
travels over the task's connection (``put_file``: no module, no Python process on the host) into the task's remote
temporary directory, and the module takes it from there as a ``file://`` source, through the same bounded fetch,
digest, size and signature checks as a download, into ``cache/sha256/<digest>``. A host therefore runs one Python
process for staging and applying together, where ``ansible.builtin.copy`` before it ran two (stat, then copy) and the
module a third. A host whose cache already holds a verified copy takes that copy and never reads the transferred one.
"""

from __future__ import annotations

import os
import typing as t
import urllib.parse

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

MODULE = "fleetpatch.rollout.patch_apply"


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is None:
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        source = self._source(src, args)
        if self._task.check_mode:
            # check mode changes nothing on the host, so nothing is transferred: the module says what a run would do
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        try:
            tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()  # pylint: disable=protected-access
            remote = self._connection._shell.join_path(tmpdir, "artifact")  # pylint: disable=protected-access
            self._transfer_file(source, remote)
            self._fixup_perms2((tmpdir, remote))
            args["artifact_url"] = "file://" + urllib.parse.quote(remote)
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)  # pylint: disable=protected-access
        return result

    @staticmethod
    def _source(src: t.Any, args: t.Mapping[str, t.Any]) -> str:
        """The controller file to stage: an absolute path to a regular file, and the only source of the artifact."""
        if not isinstance(src, str) or not src or "\x00" in src:
            raise AnsibleActionFail("src must be the path of the artifact on the controller")
        if args.get("artifact_url"):
            raise AnsibleActionFail("parameters are mutually exclusive: src|artifact_url")
        if args.get("state", "present") != "present":
            raise AnsibleActionFail("src is only used with state=present")
        path = os.path.abspath(os.path.expanduser(src))
        if not os.path.isfile(path):
            raise AnsibleActionFail(f"src {path} is not a file on the controller")
        return path
