"""The patch registry on the PostgreSQL run-state store (fleetpatch_state_backend postgresql), on a real private server:
the same records and chain as the SQLite ledger, verified from any controller, tampering named."""

from __future__ import annotations

import io
import itertools
import os
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import RecorderOptions, RunRecorder, read_events
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (
    StoreRegistry,
    open_registry,
    query_hosts,
    query_patches,
    verify_all,
    write_checkpoint,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry_cli import main
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR
from tests.harness.postgres import PostgresServer

_DATABASES = itertools.count(1)


@pytest.fixture
def dsn(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database, named to the controller the way AWX's credential does: FLEETPATCH_STATE_DSN in the environment."""
    value = postgres.create_database(f"registry_{os.getpid()}_{next(_DATABASES)}")
    monkeypatch.setenv(DSN_VAR, value)
    return value


def _record_a_run(state_dir: str) -> StoreRegistry:
    registry = open_registry(state_dir, backend="postgresql")
    assert isinstance(registry, StoreRegistry)
    registry.append("patch.registered", {"service": "myapp", "target_version": "1.0.1"}, patch_id="FP-1")
    registry.append("run.started", {"status": "running"}, patch_id="FP-1", run_id="FP-1", correlation_id="c-1")
    registry.append("run.finished", {"status": "rolled_out", "hosts": {"a": {"outcome": "patched"}}}, patch_id="FP-1", run_id="FP-1",
                    correlation_id="c-1")
    return registry


def test_registry_rows_live_in_postgresql_and_a_fresh_controller_verifies_them(dsn: str, tmp_path) -> None:
    registry = _record_a_run(str(tmp_path / "controller-1"))
    assert [row["seq"] for row in registry.rows()] == [1, 2, 3]
    assert [row["prev"] for row in registry.rows()[1:]] == [row["hash"] for row in registry.rows()[:-1]]
    assert registry.head()["records"] == 3 and registry.latest("run.finished", patch_id="FP-1")["body"]["status"] == "rolled_out"
    assert query_patches(registry)[0]["state"] == "rolled_out" and query_hosts(registry, "FP-1")[0]["host"] == "a"
    checkpoint = write_checkpoint(registry, str(tmp_path / "controller-1" / "checkpoints"), run_id="FP-1")
    assert checkpoint["seq"] == 3
    # nothing of the registry is a file on the controller
    assert not os.path.exists(tmp_path / "controller-1" / "registry.sqlite3")
    # another controller (an AWX job's fresh container, empty state dir) appends to the same chain and verifies it
    other = open_registry(str(tmp_path / "controller-2"), backend="postgresql")
    assert other.append("log.sealed", {"complete": True}, patch_id="FP-1", run_id="FP-1")["seq"] == 4
    assert other.registry_id == registry.registry_id != ""
    report = verify_all(str(tmp_path / "controller-2"), backend="postgresql")
    assert report["ok"] and report["head"]["records"] == 4 and report["registry"].startswith("postgresql run-state store")


def test_a_tampered_row_fails_verify_naming_it(dsn: str, tmp_path) -> None:
    state_dir = str(tmp_path / "controller")
    registry = _record_a_run(state_dir)
    assert verify_all(state_dir, backend="postgresql")["ok"]
    # someone with database access rewrites the outcome of the run
    import psycopg  # pylint: disable=import-outside-toplevel

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE fp_records SET body = replace(body, 'rolled_out', 'rolled_back') WHERE seq = 3")
    assert registry.latest("run.finished", patch_id="FP-1")["body"]["status"] == "rolled_back"
    report = verify_all(state_dir, backend="postgresql")
    assert not report["ok"] and report["tampered"] >= 1
    assert [finding["where"] for finding in report["findings"] if finding["severity"] == "tamper"][0] == \
        "registry record #3 (run.finished, patch FP-1)"
    # the command line says the same, with exit status 1
    out = io.StringIO()
    assert main(["--state-dir", state_dir, "--state-backend", "postgresql", "verify"], out=out) == 1
    assert "registry record #3 (run.finished, patch FP-1)" in out.getvalue() and "TAMPERED" in out.getvalue()


def test_the_command_line_reads_the_postgresql_registry(dsn: str, tmp_path) -> None:
    state_dir = str(tmp_path / "controller")
    _record_a_run(state_dir)
    out = io.StringIO()
    assert main(["--state-dir", state_dir, "--state-backend", "postgresql", "verify"], out=out) == 0
    assert out.getvalue().startswith("warning") or "OK" in out.getvalue()
    out = io.StringIO()
    assert main(["--state-dir", state_dir, "--state-backend", "postgresql", "--json", "patches"], out=out) == 0
    assert '"state": "rolled_out"' in out.getvalue()


def _announced(state_dir: str, run_id: str = "FP-1") -> dict[str, t.Any]:
    return {"run_id": run_id, "patch_id": run_id, "state_dir": state_dir, "state_backend": "postgresql",
            "events_path": os.path.join(state_dir, "runs", run_id, "events.jsonl"), "plan_group": "fleetpatch_plan_hosts",
            "waves": {"canary": {"index": 0, "hosts": 1, "batches": [0]}}, "hosts": {"h1": {"wave": "canary", "batch": 0}}}


def _record_a_playbook_run(state_dir: str, *, hosts: int) -> dict[str, t.Any]:
    """One playbook run of the events callback on plain data: the plan announces the run, hosts report, the log ends."""
    warnings: list[str] = []
    recorder = RunRecorder(RecorderOptions(), warn=warnings.append, say=lambda text: None, environ={}, timer=False)
    recorder.playbook_start(playbook="playbooks/rollout.yml", check_mode=False, ansible_version="2.19.0")
    recorder.play_start(name="Plan", hosts=["localhost"], extra_vars={}, variables=[], host_attributes={})
    recorder.host_task_start(host="localhost", task_uuid="plan")
    recorder.host_task_result(host="localhost", task_uuid="plan", task="Plan", action="fleetpatch.rollout.rollout_plan", status="ok",
                              result={"changed": False, "fleetpatch_run": _announced(state_dir)}, hook="v2_runner_on_ok")
    for index in range(hosts):
        recorder.host_task_start(host="h1", task_uuid=f"apply{index}")
        recorder.host_task_result(host="h1", task_uuid=f"apply{index}", task="Apply", action="fleetpatch.rollout.patch_apply", status="ok",
                                  result={"changed": True}, hook="v2_runner_on_ok")
    outcome = recorder.playbook_end(stats={"h1": {"ok": hosts}})
    assert not warnings, warnings
    return outcome


def test_event_log_lines_are_kept_in_postgresql_and_a_fresh_controller_continues_the_chain(dsn: str, tmp_path) -> None:
    first, fresh = str(tmp_path / "controller-1"), str(tmp_path / "controller-2")
    ended = _record_a_playbook_run(first, hosts=2)
    store = open_store(first, backend="postgresql")
    with open(ended["path"], encoding="utf-8") as handle:
        assert store.event_lines("FP-1") == handle.read().splitlines()
    registry = open_registry(first, backend="postgresql")
    registry.append("log.sealed", {"events": {"path": "runs/FP-1/events.jsonl", "seq": ended["last_seq"], "head": ended["head"]}},
                    patch_id="FP-1", run_id="FP-1")
    # an AWX job's fresh container (empty state dir) resumes: its log starts from the store's lines, the chain goes on
    again = _record_a_playbook_run(fresh, hosts=1)
    lines = read_events(again["path"])
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1)) and again["first_seq"] == ended["last_seq"] + 1
    assert len(store.event_lines("FP-1")) == again["last_seq"]
    registry.append("log.sealed", {"events": {"path": "runs/FP-1/events.jsonl", "seq": again["last_seq"], "head": again["head"]}},
                    patch_id="FP-1", run_id="FP-1")
    # an auditor with neither file verifies the log from the store against both seals
    report = verify_all(str(tmp_path / "auditor"), backend="postgresql")
    assert report["ok"], report["findings"]
    assert [(item["store"], item["lines"]) for item in report["event_files"]] == [(True, again["last_seq"])]
    # a line edited in the database is named
    import psycopg  # pylint: disable=import-outside-toplevel

    with psycopg.connect(dsn, autocommit=True) as conn:
        edited = conn.execute("UPDATE fp_events SET line = replace(line, '\"changed\":true', '\"changed\":false') WHERE run_id = 'FP-1'"
                              " AND seq = (SELECT min(seq) FROM fp_events WHERE run_id = 'FP-1' AND line LIKE '%\"changed\":true%')"
                              " RETURNING seq").fetchone()[0]
    report = verify_all(str(tmp_path / "auditor"), backend="postgresql")
    tampered = [finding for finding in report["findings"] if finding["severity"] == "tamper"]
    assert not report["ok"] and tampered[0]["where"] == f"runs/FP-1/events.jsonl (postgresql store): events.jsonl line {edited} (seq {edited})", tampered
