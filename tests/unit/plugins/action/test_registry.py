"""fleetpatch.rollout.registry: verify, query, export and prune the patch registry."""

from __future__ import annotations

import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import run_action, run_args


def registry_args(fleet: dict[str, t.Any], command: str, **changes: t.Any) -> dict[str, t.Any]:
    return {"command": command, "state_dir": fleet["state_dir"], **changes}


@pytest.fixture
def recorded(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> dict[str, t.Any]:
    """A registry that holds the plan records of the planned run."""
    result = run_action("registry_record", {"event": "plan", **run_args(planned), "secret_vars": []}, fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    return planned


def test_verify_an_intact_registry(fleet: dict[str, t.Any], recorded: dict[str, t.Any]) -> None:
    result = run_action("registry", registry_args(fleet, "verify"), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    assert result["ok"] is True and result["msg"].startswith("verified 2 registry record(s)")
    # no checkpoint was written yet: that is a warning, not a finding that fails the task
    assert all(line.startswith("warning: ") for line in result["findings"])


def test_verify_finds_a_changed_record(fleet: dict[str, t.Any], recorded: dict[str, t.Any]) -> None:
    import sqlite3  # noqa: PLC0415

    with sqlite3.connect(os.path.join(fleet["state_dir"], "registry.sqlite3")) as db:
        db.execute("UPDATE records SET body = '{\"forged\": true}' WHERE seq = 1")
    result = run_action("registry", registry_args(fleet, "verify"), fleet["task_vars"])
    assert result["failed"] is True and result["ok"] is False
    assert result["msg"].startswith("patch registry verification found ") and result["findings"]


def test_queries(fleet: dict[str, t.Any], recorded: dict[str, t.Any]) -> None:
    patches = run_action("registry", registry_args(fleet, "patches"), fleet["task_vars"])
    assert [row["patch_id"] for row in patches["patches"]] == ["FP-UNIT-1"]
    timeline = run_action("registry", registry_args(fleet, "timeline", patch_id="FP-UNIT-1"), fleet["task_vars"])
    assert timeline["changed"] is False and timeline["timeline"]
    refused = run_action("registry", registry_args(fleet, "hosts"), fleet["task_vars"])
    assert refused == {"failed": True, "msg": "patch registry: command hosts needs patch_id"}


def test_export_writes_one_file(fleet: dict[str, t.Any], recorded: dict[str, t.Any]) -> None:
    result = run_action("registry", registry_args(fleet, "export"), fleet["task_vars"])
    assert result["changed"] is True and os.path.isfile(result["export"]["path"])
    dry = run_action("registry", registry_args(fleet, "export"), fleet["task_vars"], check_mode=True)
    assert dry["changed"] is False


def test_retention_needs_an_age(fleet: dict[str, t.Any], recorded: dict[str, t.Any]) -> None:
    result = run_action("registry", registry_args(fleet, "retention"), fleet["task_vars"])
    assert result == {"failed": True, "msg": "patch registry: retention needs events_max_age_days and/or exports_max_age_days"}


def test_query_of_a_missing_registry_names_it(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("registry", registry_args(fleet, "patches"), fleet["task_vars"])
    assert result["failed"] is True and result["msg"].startswith("patch registry")


def test_unknown_command_is_an_argument_error(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="command"):
        run_action("registry", registry_args(fleet, "drop"), fleet["task_vars"])
