"""fleetpatch.rollout.events: the callback's hooks, driven the way ansible-playbook calls them, and the file they leave."""

from __future__ import annotations

import json
import os
import sqlite3
import types
import typing as t

import pytest
from ansible.plugins.loader import callback_loader

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import read_events

SECRET = "hunter2-db-password"
ENVIRONMENT = ("FLEETPATCH_CORRELATION_ID", "FLEETPATCH_EVENTS_ACTIVE", "FLEETPATCH_EVENTS_PATH", "TRACEPARENT",
               "AWX_ISOLATED_DATA_DIR", "FLEETPATCH_SECRET_VARS")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The callback exports its correlation id and status to the process: restored after every test."""
    for name in ENVIRONMENT:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def callback(**options: t.Any) -> t.Any:
    plugin = callback_loader.get("fleetpatch.rollout.events")
    assert plugin is not None
    plugin.set_options(direct={"flush_seconds": 0.05, **options})
    return plugin


def play(hosts: dict[str, dict[str, t.Any]], *, name: str = "Roll out", serial: t.Any = None) -> t.Any:
    inventory = types.SimpleNamespace(groups={"all": types.SimpleNamespace(vars={})},
                                      hosts={host: types.SimpleNamespace(vars=host_vars) for host, host_vars in hosts.items()})
    manager = types.SimpleNamespace(extra_vars={"fleetpatch_correlation_id": "corr-unit"}, _inventory=inventory)
    return types.SimpleNamespace(get_variable_manager=lambda: manager, vars={}, hosts=list(hosts), serial=serial, get_name=lambda: name)


def task(name: str, action: str = "ansible.builtin.command", *, uuid: str | None = None) -> t.Any:
    return types.SimpleNamespace(_uuid=uuid or name, get_name=lambda: name, action=action, resolved_action=action, ignore_errors=False)


def result(host: str, this_task: t.Any, data: dict[str, t.Any]) -> t.Any:
    return types.SimpleNamespace(result=data, host=types.SimpleNamespace(get_name=lambda: host), task=this_task)


class Stats:
    def __init__(self, summary: dict[str, dict[str, int]]) -> None:
        self.processed = dict.fromkeys(summary, 1)
        self._summary = summary

    def summarize(self, host: str) -> dict[str, int]:
        return self._summary[host]


HOSTS = {"h1": {"fleet_region": "eu", "fleet_tenant": "acme", "fleet_segment": "web", "fleet_environment": "prod", "db_password": SECRET},
         "h2": {"fleet_region": "us", "fleet_tenant": "acme", "fleet_segment": "web", "fleet_environment": "prod"}}


def drive(plugin: t.Any, *, registry: dict[str, t.Any] | None = None) -> None:
    """A playbook of one play: an ok task with a secret in its output, a failed task, a skipped one, an unreachable host."""
    plugin.v2_playbook_on_start(types.SimpleNamespace(_file_name="playbooks/rollout.yml"))
    plugin.v2_playbook_on_play_start(play(HOSTS))
    first = task("Show", uuid="t1")
    plugin.v2_runner_on_start(types.SimpleNamespace(get_name=lambda: "h1"), first)
    extra = {"fleetpatch_registry": registry} if registry else {}
    plugin.v2_runner_on_ok(result("h1", first, {"changed": True, "stdout": f"password is {SECRET}", **extra,
                                                "fleetpatch_events": [{"event": "window.checked", "status": "open", "message": "go"}]}))
    plugin.v2_runner_on_failed(result("h2", first, {"failed": True, "msg": "exit 3"}))
    plugin.v2_runner_on_skipped(result("h1", task("Maybe", uuid="t2"), {"skipped": True, "skip_reason": "Conditional result was False"}))
    plugin.v2_runner_on_unreachable(result("h2", task("Maybe", uuid="t2"), {"unreachable": True, "msg": "ssh: timed out"}))
    plugin.v2_playbook_on_stats(Stats({"h1": {"ok": 1, "changed": 1}, "h2": {"failures": 1, "unreachable": 1}}))


def test_every_hook_becomes_a_chained_line(tmp_path: t.Any) -> None:
    path = str(tmp_path / "events.jsonl")
    plugin = callback(path=path)
    drive(plugin)
    events = read_events(path)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "playbook.started" and kinds[-1] == "playbook.finished"
    assert "window.checked" in kinds
    assert [event["seq"] for event in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
    tasks = [(event["host"], event["status"]) for event in events if event["event"] == "host.task"]
    assert tasks == [("h1", "ok"), ("h2", "failed"), ("h1", "skipped"), ("h2", "unreachable")]
    assert {event["correlation_id"] for event in events} == {"corr-unit"}
    h1 = next(event for event in events if event["event"] == "host.task" and event["host"] == "h1")
    assert (h1["region"], h1["environment"]) == ("eu", "prod")
    assert events[-1]["data"]["hooks"]["v2_runner_on_failed"] == 1
    assert events[-1]["status"] == "failed"


def test_secret_variables_are_masked_in_the_file(tmp_path: t.Any) -> None:
    path = str(tmp_path / "events.jsonl")
    drive(callback(path=path))
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert SECRET not in text and "password is" in text


def test_the_log_is_sealed_in_the_registry(tmp_path: t.Any) -> None:
    path = str(tmp_path / "runs" / "FP-1" / "events.jsonl")
    registry = {"path": str(tmp_path / "registry.sqlite3"), "checkpoint_dir": str(tmp_path / "checkpoints"), "signing_key": None,
                "run_id": "FP-1", "patch_id": "FP-1", "state_dir": str(tmp_path)}
    drive(callback(path=path), registry=registry)
    with sqlite3.connect(registry["path"]) as db:
        kind, body = db.execute("SELECT kind, body FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    body = json.loads(body)
    last = read_events(path)[-1]
    assert kind == "log.sealed" and body["complete"] is True
    assert body["events"]["path"] == os.path.join("runs", "FP-1", "events.jsonl") and body["events"]["seq"] == last["seq"]
    assert os.listdir(registry["checkpoint_dir"])


def test_without_run_or_path_nothing_is_written(tmp_path: t.Any) -> None:
    plugin = callback()
    drive(plugin)
    assert plugin.recorder is not None and plugin.recorder.outcome()["path"] is None
