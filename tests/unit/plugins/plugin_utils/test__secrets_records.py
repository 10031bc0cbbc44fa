"""URL/header scrubbing, the recorder refusal, honest registry verify and lock errors."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import PlanError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import LockError, StoreError, failed_hosts, open_store
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import ACTIVE_ENV, REQUIRED_ENV, recorder_problem
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import (
    MASK,
    RedactionError,
    Redactor,
    Scrubber,
    clean_result,
    normalize_redaction,
    scrub_data,
    scrub_url,
    split_redaction,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import Registry, RegistryError, lock_timeout, verify_all


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://deploy:hunter22@origin.example/a.tgz", f"https://{MASK}@origin.example/a.tgz"),
        ("https://tok3n@origin.example/a.tgz?v=1", f"https://{MASK}@origin.example/a.tgz?v=1"),
        ("https://origin.example/a.tgz?token=abc123&v=2", f"https://origin.example/a.tgz?token={MASK}&v=2"),
        ("https://b.s3.example/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff00&x-id=GetObject",
         f"https://b.s3.example/k?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&x-id=GetObject"),
        ("https://origin.example/a.tgz?SIG=zz#frag", f"https://origin.example/a.tgz?SIG={MASK}#frag"),
        ("https://origin.example/a.tgz?design=1", "https://origin.example/a.tgz?design=1"),  # 'sig' only as a whole name
        ("file:///srv/a.tgz", "file:///srv/a.tgz"),
        ("no url here, user@example.com", "no url here, user@example.com"),
    ],
)
def test_scrub_url(url: str, expected: str) -> None:
    assert scrub_url(url) == expected


def test_dumps_scrubs_urls_inside_text_and_keeps_json_valid() -> None:
    text = Redactor().dumps({"msg": "GET https://u:pw1234@h.example/x?access_token=qq failed", "n": 1})
    assert json.loads(text) == {"msg": f"GET https://{MASK}@h.example/x?access_token={MASK} failed", "n": 1}
    assert "pw1234" not in text and "qq" not in text


def test_headers_are_masked_by_key_in_results_and_registry_bodies() -> None:
    redactor = Redactor()
    result = clean_result({"url_headers": {"Authorization": "Bearer s3cret-value", "Accept": "x"}, "msg": "ok"}, redactor=redactor)
    assert result["url_headers"] == {"Authorization": MASK, "Accept": "x"}
    body = redactor.dumps({"headers": {"x-api-key": "k-123456", "cookie": "session=abcdef"}}, structural=True)
    assert json.loads(body) == {"headers": {"x-api-key": MASK, "cookie": MASK}}


def test_policy_names_join_the_defaults() -> None:
    policy = normalize_redaction({"query_params": ["X-Goog-Signature"], "headers": ["X-Vault-Token"]})
    assert "token" in policy["query_params"] and "X-Goog-Signature" in policy["query_params"]
    scrubber = Scrubber.from_policy(policy)
    assert scrubber.scrub_text("https://h/o?X-Goog-Signature=abc") == f"https://h/o?X-Goog-Signature={MASK}"
    assert scrub_data({"X-Vault-Token": "hvs.1234"}, policy=policy) == {"X-Vault-Token": MASK}
    rest, section = split_redaction({"waves": ["100%"], "redaction": {"headers": ["X-A"]}})
    assert rest == {"waves": ["100%"]} and "X-A" in section["headers"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("token", "policy.redaction must be a mapping, got str"),
        ({"params": []}, "policy.redaction: unknown key(s) 'params'; allowed: query_params, headers"),
        ({"headers": "Authorization"}, "policy.redaction.headers must be a list of names, got 'Authorization'"),
        ({"query_params": ["ok", "bad name"]}, "policy.redaction.query_params[1]: 'bad name' is not a parameter or header name"),
    ],
)
def test_bad_redaction_section_is_a_plan_error_naming_the_field(section: object, message: str) -> None:
    with pytest.raises(RedactionError) as caught:
        normalize_redaction(section)
    assert isinstance(caught.value, PlanError)
    assert str(caught.value).startswith(message)


def test_recorder_problem_says_how_to_enable_the_callback() -> None:
    problem = recorder_problem({})
    assert problem is not None
    assert "ANSIBLE_CALLBACKS_ENABLED=fleetpatch.rollout.events" in problem
    assert "callbacks_enabled = fleetpatch.rollout.events" in problem
    assert recorder_problem({ACTIVE_ENV: str(os.getppid())}) is None
    # an explicit opt-out (recorded in the registry as a run without an event log); AWX-style strings
    assert recorder_problem({REQUIRED_ENV: "false"}) is None
    assert recorder_problem({REQUIRED_ENV: "0"}) is None
    assert recorder_problem({REQUIRED_ENV: "yes"}) is not None
    # another process's flag is not this run's callback
    assert recorder_problem({ACTIVE_ENV: "1"}) is not None


def test_locked_registry_names_the_file(tmp_path) -> None:
    path = str(tmp_path / "registry.sqlite3")
    registry = Registry(path, timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RegistryError) as caught:
            registry.append("run.started", {"x": 1}, patch_id="FP-1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(caught.value).startswith(f"patch registry {path} is locked by another process (sqlite: database is locked")
    assert registry.append("run.started", {"x": 1}, patch_id="FP-1")["seq"] == 1


@pytest.mark.parametrize(("value", "expected"), [("", 30.0), ("0.5", 0.5), ("5", 5.0)])
def test_registry_lock_timeout(value: str, expected: float) -> None:
    assert lock_timeout({"FLEETPATCH_REGISTRY_TIMEOUT": value}) == expected


def test_registry_lock_timeout_rejects_garbage() -> None:
    with pytest.raises(RegistryError, match=r"FLEETPATCH_REGISTRY_TIMEOUT must be a number of seconds, got 'soon'"):
        lock_timeout({"FLEETPATCH_REGISTRY_TIMEOUT": "soon"})


def _run_records(registry: Registry, run_id: str, *, callback: bool) -> None:
    events = {"path": f"runs/{run_id}/events.jsonl", "callback": callback}
    registry.append("run.started", {"attempt": 1, "events": events}, patch_id=run_id, run_id=run_id)
    log = {"callback": callback, "complete": callback}
    registry.append("run.finished", {"status": "rolled_out", "events": {"path": events["path"]}, "log": log}, patch_id=run_id, run_id=run_id)


def test_verify_tells_a_log_never_recorded_from_a_deleted_one(tmp_path) -> None:
    state_dir = str(tmp_path)
    registry = Registry(os.path.join(state_dir, "registry.sqlite3"))
    _run_records(registry, "FP-OFF", callback=False)
    report = verify_all(state_dir)
    assert report["ok"], report["findings"]
    (finding,) = [item for item in report["findings"] if item["kind"] == "not_recorded"]
    assert finding["severity"] == "warning"
    assert finding["message"].startswith("no event log was recorded for this run: the fleetpatch.rollout.events callback was not enabled")
    assert "not tampering" in finding["message"]
    # a run whose callback did record: its missing file is deleted, which is tampering
    _run_records(registry, "FP-ON", callback=True)
    report = verify_all(state_dir)
    assert not report["ok"]
    assert [item["where"] for item in report["findings"] if item["kind"] == "deleted"] == [os.path.join(state_dir, "runs/FP-ON/events.jsonl")]


def test_run_lock_errors_name_the_lock(tmp_path) -> None:
    store = open_store(str(tmp_path))
    store.acquire_lock("OTHER", hosts=["a", "b"], owner="ops@ctl", controller="ctl", pid=os.getpid(), ttl_seconds=600)
    with pytest.raises(LockError) as caught:
        store.acquire_lock("MINE", hosts=["b"], owner="me@ctl", controller="ctl", pid=os.getpid() + 1, ttl_seconds=600)
    assert f"(lock of run OTHER in run-state database {tmp_path / 'fleetpatch.db'})" in str(caught.value)


def test_run_state_database_that_cannot_be_created_names_it(tmp_path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    with pytest.raises(StoreError, match=r"cannot create the run-state database .*/state/fleetpatch\.db"):
        open_store(str(blocker)).acquire_lock("R", hosts=["a"], owner="o", controller="c", pid=1, ttl_seconds=60)


def test_failed_hosts_keep_hosts_rolled_back_after_their_failure() -> None:
    state = {"hosts": {
        "a": {"outcome": "rolled_back", "cause": "unhealthy"},   # failed, then rolled back
        "b": {"outcome": "rolled_back", "cause": "patched"},     # healthy, rolled back with its wave
        "c": {"outcome": "rollback_failed", "cause": "patched"},
        "d": {"outcome": "failed"},
        "e": {"outcome": "not_applicable", "version": "0.9.0"},
        "f": {"outcome": "patched"},
    }}
    assert failed_hosts(state) == ["a", "c", "d"]
