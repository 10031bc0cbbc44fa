# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the base of the controller-only action plugins. Not a public API."""

from __future__ import annotations

import abc
import typing as t

from ansible.plugins.action import ActionBase

__all__ = ["ControllerAction"]


class ControllerAction(ActionBase):
    """An action that runs on the controller only: validated arguments in, one error boundary around `_act`.

    A subclass sets `argument_spec` (and, when its options depend on each other, `argument_constraints`: the
    mutually_exclusive / required_one_of / required_together / required_if / required_by lists a module's
    AnsibleModule takes), the exceptions that mean "this task failed" in `errors` (and, if its
    messages carry one, `error_prefix`), and implements `_act`. Any other exception propagates to Ansible.
    """

    TRANSFERS_FILES = False
    _requires_connection = False

    argument_spec: t.ClassVar[dict[str, t.Any]] = {}
    argument_constraints: t.ClassVar[dict[str, list[t.Any]]] = {}
    errors: t.ClassVar[tuple[type[Exception], ...]] = ()
    error_prefix: t.ClassVar[str] = ""

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        # Outside the boundary on purpose: bad arguments raise AnsibleActionFail, which Ansible reports itself.
        _validation, args = self.validate_argument_spec(argument_spec=self.argument_spec, **self.argument_constraints)
        try:
            result.update(self._act(args, task_vars))
        except self.errors as exc:
            result.update(self._failure(exc))
        return result

    @abc.abstractmethod
    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        """The plugin's own work: the keys it returns are merged into the task result."""

    def _failure(self, exc: Exception) -> dict[str, t.Any]:
        """The task result keys for one of the declared `errors`."""
        return {"failed": True, "msg": f"{self.error_prefix}{exc}"}
