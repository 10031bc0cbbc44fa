from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import EventLog, file_head
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import MASK, Redactor
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (
    ApprovalError,
    Registry,
    approval_chain,
    export,
    patch_body,
    query_hosts,
    query_patches,
    query_timeline,
    retention,
    verify_all,
    verify_export,
    write_checkpoint,
)

MANIFEST = {
    "patch_id": "FP-1", "service": "myapp", "target_version": "1.0.1", "base_version": "1.0.0", "description": "Fix the refresh race",
    "classification": "security", "severity": "high", "requested_by": "alice", "approvals": [{"by": "bob", "at": "2026-01-02T00:00:00Z", "role": "owner"}],
    "artifact": {"name": "myapp-1.0.1.tar.gz", "sha256": "ab" * 32, "url": "https://deploy:hunter22@artifacts.example/myapp.tar.gz", "size": 10},
}


@pytest.mark.parametrize(
    ("changes", "require", "message"),
    [
        ({"approvals": [{"by": "Alice"}]}, False, "patch FP-1: alice requested this patch and cannot approve it (approval by Alice)"),
        ({"approvals": [], "approved_by": ["carol", "alice"]}, False, "patch FP-1: alice requested this patch and cannot approve it (approval by alice)"),
        ({"requested_by": None}, False, "patch FP-1: approvals need requested_by, so that a self-approval can be ruled out"),
        ({"approvals": []}, True, "patch FP-1: nobody approved this patch (approvals/approved_by) and approval is required"),
        ({"change_type": "emergency"}, False, "patch FP-1: change_type emergency is out of band and needs a justification in 'reason'"),
        ({"approvals": [{"role": "owner"}]}, False, "patch FP-1: approvals[0] needs 'by' (who approved)"),
        ({"requested_by": ["a", "b"]}, False, "patch FP-1: requested_by must name one person"),
    ],
)
def test_approval_chain_refuses(changes: dict[str, t.Any], require: bool, message: str) -> None:
    with pytest.raises(ApprovalError) as caught:
        approval_chain(dict(MANIFEST, **changes), require=require)
    assert str(caught.value) == message


def test_approval_chain_merges_and_dedupes() -> None:
    chain = approval_chain(dict(MANIFEST, approved_by=["bob", "carol"], change_type="emergency", reason="CVE in the wild"), require=True)
    assert chain == {"requested_by": "alice", "approvals": [{"by": "bob", "at": "2026-01-02T00:00:00Z", "role": "owner"}, {"by": "carol"}],
                     "approvers": ["bob", "carol"], "approved": True, "out_of_band": True}
    assert approval_chain({"patch_id": "X"}) == {"requested_by": None, "approvals": [], "approvers": [], "approved": False, "out_of_band": False}


def test_patch_body_strips_url_credentials() -> None:
    body = patch_body(MANIFEST)
    assert body["artifact"]["url"] == "https://********@artifacts.example/myapp.tar.gz"
    assert body["affected_versions"] == ["1.0.0"] and body["purpose"] == "Fix the refresh race"


def populated(tmp_path, *, runs: int = 2) -> tuple[Registry, str]:
    """A registry with one patch, `runs` runs and an event file per run, as the rollout writes them."""
    state_dir = str(tmp_path)
    registry = Registry(os.path.join(state_dir, "registry.sqlite3"))
    registry.append("patch.registered", patch_body(MANIFEST), patch_id="FP-1")
    events = os.path.join(state_dir, "runs", "FP-1", "events.jsonl")
    for attempt in range(1, runs + 1):
        registry.append("run.started", {"attempt": attempt, "events": {"path": "runs/FP-1/events.jsonl"}}, patch_id="FP-1", run_id="FP-1",
                        correlation_id=f"cid-{attempt}")
        log = EventLog(events, fsync=False)
        for index in range(5):
            log.append(json.dumps({"event": "custom.line", "data": {"attempt": attempt, "n": index}}, separators=(",", ":")))
        log.flush()
        log.close()
        status = "halted" if attempt == 1 else "rolled_out"
        registry.append("run.finished", {"status": status, "counts": {"patched": attempt}, "events": {"path": "runs/FP-1/events.jsonl", **file_head(events)},
                                         "hosts": {"h1": {"outcome": "patched", "wave": "canary"}, "h2": {"outcome": "failed" if attempt == 1 else "patched"}},
                                         "timeline": [{"what": "wave canary", "detail": "batch 0: continue"}],
                                         "log": {"complete": True}}, patch_id="FP-1", run_id="FP-1", correlation_id=f"cid-{attempt}")
        write_checkpoint(registry, os.path.join(state_dir, "checkpoints"), run_id="FP-1", now=f"2026-01-0{attempt}T00:00:00.000000Z")
    return registry, state_dir


def test_two_runs_keep_one_verifiable_chain(tmp_path) -> None:
    registry, state_dir = populated(tmp_path)
    report = verify_all(state_dir)
    assert report["ok"] and report["findings"] == [] and report["head"]["records"] == 5 and report["checkpoints"] == 2
    rows = registry.rows()
    assert [row["prev"] for row in rows[1:]] == [row["hash"] for row in rows[:-1]]
    assert report["event_files"] == [{"path": os.path.join(state_dir, "runs", "FP-1", "events.jsonl"), "ok": True, "lines": 10, "last_seq": 10}]


def sql(registry: Registry, statement: str, *params: t.Any) -> None:
    conn = sqlite3.connect(registry.path)
    with conn:
        conn.execute(statement, params)
    conn.close()


def recompute_from(registry: Registry, seq: int) -> None:
    """What a careful forger does: recompute every hash from seq on, so the chain inside the registry holds."""
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import record_hash  # noqa: PLC0415

    rows = registry.rows()
    prev = rows[seq - 2]["hash"] if seq > 1 else "0" * 64
    for row in rows[seq - 1:]:
        digest = record_hash(row["seq"], row["ts"], row["kind"], row["patch_id"], row["run_id"], row["correlation_id"], row["body"], prev)
        sql(registry, "UPDATE records SET prev = ?, hash = ? WHERE seq = ?", prev, digest, row["seq"])
        prev = digest


def swap_rows(registry: Registry, first: int, second: int) -> None:
    sql(registry, "UPDATE records SET seq = -1 WHERE seq = ?", first)
    sql(registry, "UPDATE records SET seq = ? WHERE seq = ?", first, second)
    sql(registry, "UPDATE records SET seq = ? WHERE seq = -1", second)


def duplicate(registry: Registry, seq: int) -> None:
    row = next(row for row in registry.rows() if row["seq"] == seq)
    last = registry.head()["seq"]
    sql(registry, "INSERT INTO records (seq, ts, kind, patch_id, run_id, correlation_id, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        last + 1, *[row[key] for key in ("ts", "kind", "patch_id", "run_id", "correlation_id", "body", "prev", "hash")])


@pytest.mark.parametrize(
    ("tamper", "kind", "where"),
    [
        (lambda r: sql(r, "UPDATE records SET body = replace(body, 'halted', 'rolled_out') WHERE seq = 3"), "edited",
         "registry record #3 (run.finished, patch FP-1)"),
        (lambda r: (sql(r, "UPDATE records SET body = replace(body, 'halted', 'rolled_out') WHERE seq = 3"), recompute_from(r, 3)), "edited",
         "registry at or before record #3"),
        (lambda r: sql(r, "DELETE FROM records WHERE seq = 2"), "deleted", "registry record #3 (run.finished, patch FP-1)"),
        (lambda r: swap_rows(r, 2, 3), "reordered", "registry record #2 (run.finished, patch FP-1)"),
        (lambda r: duplicate(r, 3), "duplicated", "registry record #6 (run.finished, patch FP-1)"),
        (lambda r: sql(r, "DELETE FROM records WHERE seq = 5"), "truncated", "registry after record #4"),
    ],
)
def test_registry_tampering_is_found_and_placed(tmp_path, tamper, kind: str, where: str) -> None:
    registry, state_dir = populated(tmp_path)
    tamper(registry)
    report = verify_all(state_dir)
    assert not report["ok"]
    assert (kind, where) in [(finding["kind"], finding["where"]) for finding in report["findings"]], report["findings"]


def test_event_file_tampering_is_found_through_the_registry(tmp_path) -> None:
    _registry, state_dir = populated(tmp_path)
    path = os.path.join(state_dir, "runs", "FP-1", "events.jsonl")
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")[:-1]
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines[:9]) + b"\n")
    report = verify_all(state_dir)
    assert [(finding["kind"], finding["where"]) for finding in report["findings"]] == [("truncated", "runs/FP-1/events.jsonl: events.jsonl after seq 9")]
    os.unlink(path)
    report = verify_all(state_dir)
    assert [(finding["kind"], finding["where"]) for finding in report["findings"]] == [("deleted", path)]


def test_queries(tmp_path) -> None:
    registry, _state_dir = populated(tmp_path)
    registry.append("patch.registered", patch_body(dict(MANIFEST, patch_id="FP-2", approvals=[])), patch_id="FP-2")
    assert [(row["patch_id"], row["state"]) for row in query_patches(registry)] == [("FP-1", "rolled_out"), ("FP-2", "registered")]
    assert [row["patch_id"] for row in query_patches(registry, state="registered")] == ["FP-2"]
    assert query_hosts(registry, "FP-1") == [{"host": "h1", "outcome": "patched", "wave": "canary"}, {"host": "h2", "outcome": "patched"}]
    timeline = query_timeline(registry, "FP-1")
    expected = ["approved", "registered", "started", "wave canary", "ended halted", "started", "wave canary", "completed"]
    assert [entry["what"] for entry in timeline["timeline"]] == expected
    assert timeline["approval"]["approvers"] == ["bob"] and timeline["artifact"]["sha256"] == "ab" * 32


def test_secrets_are_masked_before_they_reach_the_registry(tmp_path) -> None:
    registry = Registry(str(tmp_path / "r.sqlite3"))
    redactor = Redactor(names=["canary"])
    redactor.add("CANARY-in-the-justification", name="canary")
    registry.append("patch.registered", patch_body(dict(MANIFEST, reason="because CANARY-in-the-justification")), patch_id="FP-1", redactor=redactor)
    assert registry.records()[0]["body"]["justification"] == f"because {MASK}"
    with open(registry.path, "rb") as handle:
        assert b"CANARY-in-the-justification" not in handle.read()


def test_export_verifies_alone_and_shows_tampering(tmp_path) -> None:
    registry, state_dir = populated(tmp_path)
    assert export(registry, os.path.join(state_dir, "exports"), dry_run=True)["written"] is False
    written = export(registry, os.path.join(state_dir, "exports"), now="2026-02-01T00:00:00.000000Z")
    assert verify_export(written["path"])["ok"]
    with open(written["path"], encoding="utf-8") as handle:
        lines = handle.readlines()
    with open(written["path"], "w", encoding="utf-8") as handle:
        handle.writelines(lines[:1] + lines[2:])
    report = verify_export(written["path"])
    assert [(finding["kind"], finding["where"]) for finding in report["findings"]] == [("deleted", f"{os.path.basename(written['path'])} record #3"
                                                                                        " (run.finished, patch FP-1)")]
    assert registry.records()[-1]["kind"] == "export.written"


def test_retention_dry_run_then_prune_keeps_the_registry_verifiable(tmp_path) -> None:
    registry, state_dir = populated(tmp_path)
    path = os.path.join(state_dir, "runs", "FP-1", "events.jsonl")
    old = os.path.getmtime(path) - 40 * 86400
    os.utime(path, (old, old))
    planned = retention(state_dir, events_max_age_days=30, dry_run=True)
    assert [item["path"] for item in planned["remove"]] == [path] and planned["removed"] == [] and os.path.exists(path)
    records = registry.head()["records"]
    assert registry.head()["records"] == records
    # a run that holds a lock in the run-state store keeps its log
    store = open_store(state_dir)
    store.acquire_lock("FP-1", hosts=["a"], owner="ops@ctl", controller="ctl", pid=os.getpid(), ttl_seconds=600)
    assert retention(state_dir, events_max_age_days=30, dry_run=False)["keep"][0]["reason"] == "run FP-1 holds a lock (running?)"
    assert os.path.exists(path)
    store.release_lock("FP-1")
    done = retention(state_dir, events_max_age_days=30, dry_run=False)
    assert done["removed"] == [path] and not os.path.exists(path)
    pruned = registry.records()[-1]
    assert pruned["kind"] == "retention.pruned" and pruned["body"]["files"][0]["path"] == "runs/FP-1/events.jsonl"
    report = verify_all(state_dir)
    assert report["ok"] and [(finding["kind"], finding["severity"]) for finding in report["findings"]] == [("pruned", "info")]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH ssh-keygen")
def test_signed_checkpoints_verify_and_a_forged_one_does_not(tmp_path) -> None:
    key = str(tmp_path / "key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetpatch", "-f", key], check=True)
    with open(key + ".pub", encoding="utf-8") as handle:
        public = handle.read().split()
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'fleetpatch namespaces="fleetpatch-registry" {public[0]} {public[1]}\n')
    registry = Registry(str(tmp_path / "registry.sqlite3"))
    registry.append("patch.registered", {"purpose": "x"}, patch_id="FP-1")
    checkpoint = write_checkpoint(registry, str(tmp_path / "checkpoints"), signing_key=key)
    assert checkpoint["signed"] and os.path.exists(checkpoint["path"] + ".sig")
    assert verify_all(str(tmp_path), allowed_signers=str(signers))["findings"] == []
    with open(checkpoint["path"], encoding="utf-8") as handle:
        document = json.load(handle)
    with open(checkpoint["path"], "w", encoding="utf-8") as handle:
        json.dump(dict(document, seq=0), handle)
    report = verify_all(str(tmp_path), allowed_signers=str(signers))
    assert [(finding["kind"], finding["where"]) for finding in report["findings"]] == [("bad_signature", os.path.basename(checkpoint["path"]))]
