from __future__ import annotations

import types
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction


class DeclaredError(Exception):
    pass


class Echo(ControllerAction):
    """Returns its arguments, or raises the exception its `raise_` argument names."""

    argument_spec = {"value": {"type": "str", "required": True}, "raise_": {"type": "str"}}
    errors = (DeclaredError,)
    error_prefix = "echo: "

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        if args["raise_"] == "declared":
            raise DeclaredError(args["value"])
        if args["raise_"] == "other":
            raise KeyError(args["value"])
        return {"changed": False, "value": args["value"], "task_vars": task_vars}


def make(action: type[ControllerAction], args: dict[str, t.Any]) -> ControllerAction:
    task = types.SimpleNamespace(args=args, async_val=0, check_mode=False, action="fleetpatch.rollout.echo")
    # a tmpdir already set: the base never asks the (absent) connection for one
    connection = types.SimpleNamespace(_shell=types.SimpleNamespace(tmpdir="/nonexistent"))
    return action(task, connection, None, None, None)


def test_returns_the_plugin_result_with_validated_arguments() -> None:
    assert make(Echo, {"value": "a"}).run(task_vars=None) == {"changed": False, "value": "a", "task_vars": {}}


def test_a_declared_error_becomes_failed_and_msg() -> None:
    assert make(Echo, {"value": "no window", "raise_": "declared"}).run(task_vars={}) == {"failed": True, "msg": "echo: no window"}


def test_an_undeclared_exception_propagates() -> None:
    with pytest.raises(KeyError):
        make(Echo, {"value": "bug", "raise_": "other"}).run(task_vars={})


def test_bad_arguments_raise_before_the_plugin_runs() -> None:
    with pytest.raises(AnsibleActionFail, match="value"):
        make(Echo, {"raise_": "declared"}).run(task_vars={})


def test_a_subclass_may_add_keys_to_the_failure() -> None:
    class Detailed(Echo):
        def _failure(self, exc: Exception) -> dict[str, t.Any]:
            return {**super()._failure(exc), "detail": str(exc)}

    assert make(Detailed, {"value": "x", "raise_": "declared"}).run(task_vars={}) == {"failed": True, "msg": "echo: x", "detail": "x"}


def test_no_declared_errors_lets_every_exception_through() -> None:
    class Strict(Echo):
        errors = ()

    with pytest.raises(DeclaredError):
        make(Strict, {"value": "x", "raise_": "declared"}).run(task_vars={})


class OneSource(Echo):
    """Takes its value from exactly one of two options, declared like a module's constraints."""

    argument_spec = {"value": {"type": "str"}, "value_file": {"type": "str"}, "raise_": {"type": "str"}}
    argument_constraints = {"mutually_exclusive": [["value", "value_file"]], "required_one_of": [["value", "value_file"]]}


@pytest.mark.parametrize(("args", "message"), [
    ({"value": "a", "value_file": "f"}, "parameters are mutually exclusive: value|value_file"),
    ({}, "one of the following is required: value, value_file"),
])
def test_declared_constraints_are_checked_with_the_arguments(args: dict[str, t.Any], message: str) -> None:
    with pytest.raises(AnsibleActionFail, match=message.replace("|", r"\|")):
        make(OneSource, args).run(task_vars={})


def test_arguments_meeting_the_constraints_reach_the_plugin() -> None:
    assert make(OneSource, {"value_file": "f"}).run(task_vars={})["value"] is None
