"""One conformance suite for every run-state backend: embedded (SQLite) and a real private PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import sqlite3
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    BACKENDS,
    LockError,
    StoreError,
    empty_state,
    open_store,
    outcome_entry,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore, redact_dsn
from tests.harness.postgres import postgres_skip_reason

NOW = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)
BACKEND_NAMES = ("embedded", "postgresql")
_DATABASES = itertools.count(1)
# a pid no process has (above the kernel's pid_max of 2**22)
DEAD_PID = 2**22 + 12345


class Spec(t.NamedTuple):
    """What a process needs to open the same store (picklable, for the concurrency tests)."""

    backend: str
    state_dir: str
    dsn: str

    def open(self) -> t.Any:
        if self.backend == "postgresql":
            return PostgresStore(self.state_dir, environ={DSN_VAR: self.dsn})
        return BACKENDS[self.backend](self.state_dir)


@pytest.fixture(params=BACKEND_NAMES)
def spec(request, tmp_path) -> Spec:
    dsn = ""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        dsn = server.create_database(f"conformance_{os.getpid()}_{next(_DATABASES)}")
    return Spec(request.param, str(tmp_path / "state"), dsn)


@pytest.fixture
def store(spec: Spec) -> t.Iterator[t.Any]:
    opened = spec.open()
    yield opened
    if hasattr(opened, "close"):
        opened.close()


def _acquire(store: t.Any, run_id: str, hosts: list[str], *, pid: int, controller: str = "ctl", now: dt.datetime = NOW,
             break_stale: bool = False) -> dict[str, t.Any]:
    return store.acquire_lock(run_id, hosts=hosts, owner="ops@ctl", controller=controller, pid=pid, ttl_seconds=600, break_stale=break_stale,
                              now=now)


# ---------------------------------------------------------------------------------------------------------
# run document and plan


def test_run_document_round_trips_and_save_never_overwrites_outcomes(store) -> None:
    assert store.load_run("FP-1") is None
    state = empty_state("FP-1", "FP-1", "f" * 64)
    state["status"] = "running"
    state["attempts"].append({"correlation_id": "c-1", "started": "t0"})
    store.save_run("FP-1", state)
    loaded = store.load_run("FP-1")
    assert loaded == state
    store.record_outcomes("FP-1", {"a": outcome_entry("patched", at="t1")})
    stale = dict(state, status="held", hosts={"a": outcome_entry("failed", at="t0"), "z": outcome_entry("failed", at="t0")})
    store.save_run("FP-1", stale)
    loaded = store.load_run("FP-1")
    assert loaded["status"] == "held" and loaded["hosts"] == {"a": {"outcome": "patched", "at": "t1"}}
    assert store.load_run("FP-2") is None


def test_first_save_brings_the_hosts_of_the_document(store) -> None:
    state = empty_state("FP-1", "FP-1", "f" * 64)
    state["hosts"] = {"a": outcome_entry("not_applicable", at="t0")}
    store.save_run("FP-1", state)
    assert store.load_run("FP-1")["hosts"] == {"a": {"outcome": "not_applicable", "at": "t0"}}


def test_plan_is_saved_once_and_kept_as_a_file_for_operators(store, spec) -> None:
    assert store.read_plan("FP-1") is None
    content = json.dumps({"patch_id": "FP-1", "waves": [["a"]]}, sort_keys=True) + "\n"
    assert store.save_plan("FP-1", content) is True
    assert store.save_plan("FP-1", content) is False
    assert store.read_plan("FP-1") == content
    with open(os.path.join(spec.state_dir, "runs", "FP-1", "plan.json"), encoding="utf-8") as handle:
        assert handle.read() == content
    changed = content.replace('"a"', '"b"')
    assert store.save_plan("FP-1", changed) is True and store.read_plan("FP-1") == changed


# ---------------------------------------------------------------------------------------------------------
# outcomes and the error budget


def test_outcomes_merge_by_host_latest_wins_and_the_budget_counts_latest(store) -> None:
    store.save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    hosts, spent = store.record_outcomes("FP-1", {"a": outcome_entry("failed", at="t1", reason="boom"), "b": outcome_entry("patched", at="t1"),
                                                  "c": outcome_entry("quarantined", at="t1")})
    assert spent == 2 and hosts["a"] == {"outcome": "failed", "at": "t1", "reason": "boom"}
    hosts, spent = store.record_outcomes("FP-1", {"a": outcome_entry("rolled_back", at="t2", cause="failed")})
    assert spent == 1 and sorted(hosts) == ["a", "b", "c"] and hosts["a"]["cause"] == "failed"
    hosts, spent = store.record_outcomes("FP-1", {"d": outcome_entry("unreachable", at="t3"), "e": outcome_entry("unhealthy", at="t3")})
    assert spent == 3
    assert store.record_outcomes("FP-1", {}) == (hosts, 3)
    # another run's outcomes are its own
    assert store.record_outcomes("FP-2", {"a": outcome_entry("failed", at="t1")})[1] == 1
    assert store.load_run("FP-1")["hosts"] == hosts


def _spend(spec: Spec, run_id: str, worker: int, hosts: int, start: t.Any, results: t.Any) -> None:
    store = spec.open()
    start.wait(timeout=60)
    for index in range(hosts):
        spent = store.record_outcomes(run_id, {f"w{worker}-h{index}": outcome_entry("failed", at=f"t{index}")})[1]
        results.put(spent)


def test_concurrent_record_outcomes_from_several_processes_lose_nothing(store, spec) -> None:
    """4 processes record 6 failures each at once: every transaction sees its own and all earlier ones, so the counts
    returned are exactly 1..24 (a lost update or a stale count would repeat one)."""
    store.save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    context = multiprocessing.get_context("fork")
    workers, hosts = 4, 6
    start = context.Barrier(workers)
    results = context.Queue()
    processes = [context.Process(target=_spend, args=(spec, "FP-1", worker, hosts, start, results)) for worker in range(workers)]
    for process in processes:
        process.start()
    counts = sorted(results.get(timeout=120) for _count in range(workers * hosts))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert counts == list(range(1, workers * hosts + 1))
    assert len(store.load_run("FP-1")["hosts"]) == workers * hosts


# ---------------------------------------------------------------------------------------------------------
# locks


def test_live_lock_over_a_shared_host_refuses_a_second_run_disjoint_hosts_do_not(store) -> None:
    first = _acquire(store, "FP-1", ["a", "b"], pid=os.getpid())
    assert first["lock"]["hosts"] == ["a", "b"] and first["notes"] == [] and first["lock"]["expires"] == "2026-11-27T12:10:00.000000Z"
    with pytest.raises(LockError, match=r"1 host\(s\) \(first: b\) are locked by a running rollout: run FP-1 owned by ops@ctl"):
        _acquire(store, "FP-2", ["b", "c"], pid=os.getpid() + 1)
    assert _acquire(store, "FP-2", ["c"], pid=os.getpid())["lock"]["hosts"] == ["c"]
    # the same run and process takes its lock again (a re-plan of the same attempt), with the new host set
    assert _acquire(store, "FP-1", ["a"], pid=os.getpid())["lock"]["hosts"] == ["a"]
    assert _acquire(store, "FP-3", ["b"], pid=os.getpid())["lock"]["hosts"] == ["b"]


def test_a_live_lock_of_the_same_run_from_another_process_refuses(store) -> None:
    _acquire(store, "FP-1", ["a"], pid=os.getpid(), controller="ctl")
    with pytest.raises(LockError, match=r"are locked by a running rollout: run FP-1"):
        _acquire(store, "FP-1", ["a"], pid=os.getpid(), controller="other-ctl")


def test_expired_lock_is_reported_and_broken_only_deliberately(store) -> None:
    _acquire(store, "FP-1", ["a"], pid=os.getpid(), now=NOW - dt.timedelta(hours=2))
    with pytest.raises(LockError, match=r"stale lock \(expired at 2026-11-27T10:10:00.000000Z\).*rollout_break_lock=true"):
        _acquire(store, "FP-2", ["a"], pid=os.getpid())
    result = _acquire(store, "FP-2", ["a"], pid=os.getpid(), break_stale=True)
    assert result["notes"][0].startswith("broke stale lock (expired at")
    assert store.release_lock("FP-1") is False
    assert store.release_lock("FP-2") is True


def test_dead_owner_of_the_same_run_is_taken_over_another_runs_is_not(store) -> None:
    _acquire(store, "FP-1", ["a"], pid=DEAD_PID)
    with pytest.raises(LockError, match=rf"stale lock \(owner process {DEAD_PID} on ctl is gone\)"):
        _acquire(store, "FP-2", ["a"], pid=os.getpid())
    result = _acquire(store, "FP-1", ["a"], pid=os.getpid())
    assert "took over the stale lock of an earlier attempt of this run" in result["notes"][0]
    assert result["lock"]["pid"] == os.getpid()
    # a dead pid on another controller says nothing: that lock is live until it expires
    _acquire(store, "FP-9", ["z"], pid=DEAD_PID, controller="elsewhere")
    with pytest.raises(LockError, match=r"locked by a running rollout: run FP-9"):
        _acquire(store, "FP-2", ["z"], pid=os.getpid())


def test_refresh_extends_and_release_drops_the_lock(store) -> None:
    assert store.refresh_lock("FP-1", now=NOW) is None
    _acquire(store, "FP-1", ["a"], pid=os.getpid())
    assert store.refresh_lock("FP-1", now=NOW + dt.timedelta(minutes=5))["expires"] == "2026-11-27T12:15:00.000000Z"
    refreshed = store.refresh_lock("FP-1", ttl_seconds=60, now=NOW + dt.timedelta(minutes=5))
    assert refreshed["expires"] == "2026-11-27T12:06:00.000000Z" and refreshed["hosts"] == ["a"]
    # the refreshed expiry is what others see: expired at 12:06 for an acquire at 12:07
    with pytest.raises(LockError, match=r"stale lock \(expired at 2026-11-27T12:06:00.000000Z\)"):
        _acquire(store, "FP-2", ["a"], pid=os.getpid(), now=NOW + dt.timedelta(minutes=7))
    assert store.release_lock("FP-1") is True
    assert store.release_lock("FP-1") is False
    assert _acquire(store, "FP-2", ["a"], pid=os.getpid())["notes"] == []


def _contend(spec: Spec, worker: int, start: t.Any, results: t.Any) -> None:
    store = spec.open()
    start.wait(timeout=60)
    try:
        store.acquire_lock(f"FP-{worker}", hosts=["shared", f"own-{worker}"], owner="ops@ctl", controller="ctl", pid=os.getpid(),
                           ttl_seconds=600)
        results.put((worker, "won"))
    except LockError as exc:
        results.put((worker, f"refused: {exc}"))


def test_concurrent_acquire_from_several_processes_exactly_one_wins(store, spec) -> None:
    context = multiprocessing.get_context("fork")
    workers = 6
    start = context.Barrier(workers)
    results = context.Queue()
    processes = [context.Process(target=_contend, args=(spec, worker, start, results)) for worker in range(workers)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _worker in range(workers))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    winners = [worker for worker, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert all("(first: shared)" in outcome for worker, outcome in outcomes.items() if worker not in winners)


# ---------------------------------------------------------------------------------------------------------
# the Run over every backend, and what is particular to one


def test_run_works_the_same_over_every_backend(spec) -> None:
    store = spec.open()
    run = Run.open(state_dir=spec.state_dir, run_id="FP-1", patch_id="FP-1", fingerprint="f" * 64, store=store)
    assert run.stored is False
    run.start_attempt({"correlation_id": "c-1"}, fingerprint="f" * 64)
    run.save()
    assert run.record("a", "failed", at="t1") == 1
    assert run.record("b", "patched", at="t1") == 1
    loaded = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open())
    assert loaded.status == "running" and loaded.correlation_id == "c-1" and loaded.failures() == ["a"]


def test_a_batch_scoped_read_loads_only_the_hosts_asked_for(store) -> None:
    store.save_run("FP-1", dict(empty_state("FP-1", "FP-1", "f" * 64), status="running"))
    store.record_outcomes("FP-1", {f"h{number:03d}": outcome_entry("failed" if number % 7 == 0 else "patched", at="t1") for number in range(1200)})
    scoped = store.load_run("FP-1", hosts=["h001", "h007", "h999", "nobody"])
    assert scoped["status"] == "running"
    assert scoped["hosts"] == {"h001": {"outcome": "patched", "at": "t1"}, "h007": {"outcome": "failed", "at": "t1"},
                               "h999": {"outcome": "patched", "at": "t1"}}
    assert store.load_run("FP-1", hosts=())["hosts"] == {} and store.load_run("FP-2", hosts=["h001"]) is None
    # more hosts than one statement takes: read in chunks, all of them
    assert len(store.outcomes("FP-1", [f"h{number:03d}" for number in range(1200)])) == 1200
    assert store.outcomes("FP-1", ["h014", "nobody"]) == {"h014": {"outcome": "failed", "at": "t1"}}
    # the recorded hosts come back, the budget counts the whole run
    hosts, spent = store.record_outcomes("FP-1", {"h001": outcome_entry("unhealthy", at="t2", reason="slow")}, all_hosts=False)
    assert hosts == {"h001": {"outcome": "unhealthy", "at": "t2", "reason": "slow"}} and spent == 173
    assert store.load_run("FP-1")["hosts"]["h001"]["outcome"] == "unhealthy" and len(store.load_run("FP-1")["hosts"]) == 1200


def test_a_run_with_outcomes_only_is_found_by_a_scoped_read(store) -> None:
    store.record_outcomes("FP-1", {"a": outcome_entry("patched", at="t1")})
    assert store.load_run("FP-1", hosts=["b"]) == {"hosts": {}} and store.load_run("FP-1", hosts=["a"])["hosts"] == {"a": {"outcome": "patched", "at": "t1"}}


def test_refresh_without_hosts_renews_the_same_lock(store) -> None:
    _acquire(store, "FP-1", ["a", "b"], pid=os.getpid())
    refreshed = store.refresh_lock("FP-1", ttl_seconds=60, now=NOW + dt.timedelta(minutes=5), with_hosts=False)
    assert refreshed["expires"] == "2026-11-27T12:06:00.000000Z" and "hosts" not in refreshed
    assert store.read_lock("FP-1")["expires"] == "2026-11-27T12:06:00.000000Z" and store.read_lock("FP-1")["hosts"] == ["a", "b"]


def test_a_run_loaded_for_a_batch_reads_other_hosts_on_demand_and_decides_the_same(spec) -> None:
    store = spec.open()
    run = Run.open(state_dir=spec.state_dir, run_id="FP-1", patch_id="FP-1", fingerprint="f" * 64, store=store)
    run.start_attempt({"correlation_id": "c-1"}, fingerprint="f" * 64)
    run.save()
    run.record_outcomes({"a": outcome_entry("failed", at="t1"), "b": outcome_entry("patched", at="t1"), "c": outcome_entry("patched", at="t1")})
    batch = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open(), hosts=["b", "d"])
    assert batch.scoped and batch.hosts == {"b": {"outcome": "patched", "at": "t1"}}
    assert batch.record_outcomes({"d": outcome_entry("unreachable", at="t2")}) == 2
    assert batch.hosts == {"b": {"outcome": "patched", "at": "t1"}, "d": {"outcome": "unreachable", "at": "t2"}}
    assert batch.outcomes_of(["a", "c", "e"]) == {"a": {"outcome": "failed", "at": "t1"}, "c": {"outcome": "patched", "at": "t1"}}
    batch.save()
    # the scoped run's save keeps every outcome; a full load sees them all
    full = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open())
    assert not full.scoped and sorted(full.hosts) == ["a", "b", "c", "d"] and full.failures() == ["a", "d"]
    # a dry run (check mode) always loads every host: its budget counts in memory
    assert not Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open(), hosts=["b"], dry_run=True).scoped


def test_open_store_names_every_backend(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(DSN_VAR, "host=/nonexistent dbname=x")
    # embedded is SQLite (one source of truth: there is no JSON-file store); sqlite, 1.0.0's name, is the same file
    assert isinstance(open_store(str(tmp_path)), SqliteStore) and open_store(str(tmp_path)).name == "embedded"
    open_store(str(tmp_path)).save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    assert open_store(str(tmp_path), backend="sqlite").load_run("FP-1")["run_id"] == "FP-1"
    assert isinstance(open_store(str(tmp_path), backend="postgresql"), PostgresStore)
    for name in ("mysql", "files"):
        with pytest.raises(StoreError, match=rf"unknown fleetpatch_state_backend '{name}': choose one of embedded, postgresql, sqlite$"):
            open_store(str(tmp_path), backend=name)


def test_sqlite_database_is_private_and_in_wal_mode(tmp_path) -> None:
    store = SqliteStore(str(tmp_path / "state"))
    store.save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    path = str(tmp_path / "state" / "fleetpatch.db")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT outcome FROM fp_outcomes").fetchall() == []
    store.close()


def test_postgresql_needs_a_dsn_from_the_environment(tmp_path) -> None:
    with pytest.raises(StoreError, match=r"needs FLEETPATCH_STATE_DSN .* never read from playbook variables"):
        PostgresStore(str(tmp_path), environ={})
    assert PostgresStore(str(tmp_path), environ={"PGHOST": "/nonexistent"}).dsn == ""


def test_postgresql_errors_never_show_the_password(tmp_path) -> None:
    if postgres_skip_reason():
        pytest.skip(postgres_skip_reason())
    secret = "s3cr3t-pass"  # nosec - a made-up password that must not appear in the message
    store = PostgresStore(str(tmp_path), environ={DSN_VAR: f"host={tmp_path} port=1 user=u dbname=d password={secret}",
                                                  "FLEETPATCH_STATE_TIMEOUT": "2"})
    with pytest.raises(StoreError, match=r"cannot connect to the postgresql run-state store") as caught:
        store.load_run("FP-1")
    assert secret not in str(caught.value)
    url = PostgresStore(str(tmp_path), environ={DSN_VAR: f"postgresql://u:{secret}@/d?host={tmp_path}&port=1"})
    with pytest.raises(StoreError) as caught:
        url.load_run("FP-1")
    assert secret not in str(caught.value)
    assert redact_dsn(f"password={secret} host=x postgresql://u:{secret}@h/d") == "password=******** host=x postgresql://u:********@h/d"


def test_postgresql_store_is_shared_by_two_controllers(postgres, tmp_path) -> None:
    """Two state dirs (two AWX job containers) on one database see one run, one budget and one set of locks."""
    dsn = postgres.create_database(f"shared_{os.getpid()}")
    first = PostgresStore(str(tmp_path / "one"), environ={DSN_VAR: dsn})
    second = PostgresStore(str(tmp_path / "two"), environ={DSN_VAR: dsn})
    first.save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    first.save_plan("FP-1", '{"patch_id":"FP-1"}\n')
    assert second.load_run("FP-1")["plan_fingerprint"] == "f" * 64 and second.read_plan("FP-1") == '{"patch_id":"FP-1"}\n'
    first.record_outcomes("FP-1", {"a": outcome_entry("failed", at="t1")})
    assert second.record_outcomes("FP-1", {"b": outcome_entry("failed", at="t1")})[1] == 2
    _acquire(first, "FP-1", ["a"], pid=os.getpid(), controller="job-1")
    with pytest.raises(LockError, match=r"run FP-1 owned by ops@ctl \(pid \d+ on job-1\)"):
        _acquire(second, "FP-2", ["a"], pid=os.getpid(), controller="job-2")
    assert "database shared_" in second.describe()
    first.close()
    second.close()


def test_postgresql_store_connects_again_after_losing_its_connection(postgres, tmp_path) -> None:
    dsn = postgres.create_database(f"reconnect_{os.getpid()}")
    store = PostgresStore(str(tmp_path), environ={DSN_VAR: dsn})
    store.save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    import psycopg  # pylint: disable=import-outside-toplevel

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleetpatch'")
    with pytest.raises(StoreError, match=r"postgresql run-state store \(database reconnect_"):
        store.load_run("FP-1")
    assert store.load_run("FP-1")["status"] == "pending"
    store.close()


# ---------------------------------------------------------------------------------------------------------
# the lists that grow per batch (decisions, completed_batches, waits): rows of their own, appended per save


def _stored_document(store: t.Any, run_id: str) -> str:
    with store._transaction(write=False) as tx:  # pylint: disable=protected-access  # the row as stored, not as load_run assembles it
        return str(tx.value("SELECT document FROM fp_runs WHERE run_id = ?", (run_id,)))


def test_a_batch_appends_its_decisions_without_the_earlier_ones_and_a_full_load_reads_them_all(spec) -> None:
    run = Run.open(state_dir=spec.state_dir, run_id="FP-1", patch_id="FP-1", fingerprint="f" * 64, store=spec.open())
    run.start_attempt({"correlation_id": "c-1"}, fingerprint="f" * 64)
    run.save()
    sizes = set()
    for index in range(30):
        batch = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open(), hosts=[f"h{index}"])
        # loaded for one batch: none of the earlier batches' entries come with it
        assert batch.state["decisions"] == [] and batch.state["completed_batches"] == []
        batch.decide({"at": "t1", "batch": index, "action": "continue", "reasons": [f"batch {index}"]})
        batch.state["completed_batches"].append(index)
        batch.save()
        batch.save()  # saved again by the same step: nothing is appended twice
        sizes.add(len(_stored_document(batch.store, "FP-1")))
    # the stored document does not grow with the batches
    assert len(sizes) == 1
    # a batch gated again (a resume) is not completed twice; its decision is recorded again, as it was taken again
    again = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open(), hosts=["h3"])
    again.decide({"at": "t2", "batch": 3, "action": "continue", "reasons": []})
    again.state["completed_batches"].append(3)
    again.save()
    full = spec.open().load_run("FP-1")
    assert full["completed_batches"] == list(range(30)) and full["attempts"] == [{"correlation_id": "c-1"}]
    assert [(decision["batch"], decision["at"]) for decision in full["decisions"]] == [(index, "t1") for index in range(30)] + [(3, "t2")]
    # a full load's save appends what it adds after the entries it read
    loaded = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open())
    loaded.state.setdefault("waits", []).append({"at": "t3", "batch": 30})
    loaded.save()
    assert spec.open().load_run("FP-1")["waits"] == [{"at": "t3", "batch": 30}] and len(spec.open().load_run("FP-1")["decisions"]) == 31


def test_a_whole_list_given_to_save_run_replaces_the_stored_one(store) -> None:
    state = empty_state("FP-1", "FP-1", "f" * 64)
    state["decisions"] = [{"batch": 0}, {"batch": 1}]
    store.save_run("FP-1", state)
    state["decisions"] = [{"batch": 1}]
    store.save_run("FP-1", state)
    assert store.load_run("FP-1")["decisions"] == [{"batch": 1}]
    assert store.load_run("FP-1", hosts=[])["decisions"] == []
    store.forget_run("FP-1")
    assert store.load_run("FP-1") is None


def test_a_run_document_of_schema_version_1_loads_and_moves_its_lists_into_rows_at_the_next_save(spec) -> None:
    store = spec.open()
    legacy = dict(empty_state("FP-1", "FP-1", "f" * 64), status="running", attempts=[{"correlation_id": "c-1"}],
                  decisions=[{"batch": 0, "action": "continue"}, {"batch": 1, "action": "continue"}], completed_batches=[0, 1],
                  waits=[{"batch": 0, "at": "t0"}])
    with store._transaction(serialize="FP-1") as tx:  # pylint: disable=protected-access  # written as fleetpatch 1.0.0 wrote it
        tx.run("INSERT INTO fp_runs (run_id, patch_id, plan_digest, status, document, updated) VALUES (?, ?, ?, ?, ?, ?)",
               ("FP-1", "FP-1", "f" * 64, "running", json.dumps(dict(legacy, hosts={})), "t0"))
    assert spec.open().load_run("FP-1") == legacy
    batch = Run.load(state_dir=spec.state_dir, run_id="FP-1", store=spec.open(), hosts=["a"])
    batch.decide({"batch": 2, "action": "halt"})
    batch.state["completed_batches"].append(2)
    batch.save()
    assert '"batch":0' not in _stored_document(store, "FP-1")
    loaded = spec.open().load_run("FP-1")
    assert loaded["decisions"] == [*legacy["decisions"], {"batch": 2, "action": "halt"}] and loaded["completed_batches"] == [0, 1, 2]
    assert loaded["waits"] == legacy["waits"]


def test_a_sqlite_store_of_schema_version_1_is_upgraded_on_open(tmp_path) -> None:
    SqliteStore(str(tmp_path)).save_run("FP-1", empty_state("FP-1", "FP-1", "f" * 64))
    with sqlite3.connect(str(tmp_path / "fleetpatch.db")) as conn:
        conn.execute("DROP TABLE fp_run_entries")
        conn.execute("UPDATE fp_meta SET value = '1' WHERE key = 'schema_version'")
    upgraded = SqliteStore(str(tmp_path))
    assert upgraded.load_run("FP-1")["status"] == "pending"
    with sqlite3.connect(str(tmp_path / "fleetpatch.db")) as conn:
        assert conn.execute("SELECT value FROM fp_meta WHERE key = 'schema_version'").fetchone() == ("2",)
        conn.execute("UPDATE fp_meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 3"):
        SqliteStore(str(tmp_path)).load_run("FP-1")


def test_slices_appending_decisions_at_once_keep_each_others_and_one_completed_batch(spec) -> None:
    first, second = spec.open(), spec.open()
    first.save_run("FP-1", dict(empty_state("FP-1", "FP-1", "f" * 64), status="running"))
    merged = ("attempts", "decisions", "completed_batches", "waits")
    for number, store in enumerate((first, second), start=1):
        store.save_run("FP-1", {"status": "running", "decisions": [{"batch": 0, "slice": number}, {"batch": 0, "same": True}],
                                "completed_batches": [0]}, merge=merged, appended_from={"decisions": 0, "completed_batches": 0})
    loaded = spec.open().load_run("FP-1")
    assert loaded["decisions"] == [{"batch": 0, "slice": 1}, {"batch": 0, "same": True}, {"batch": 0, "slice": 2}]
    assert loaded["completed_batches"] == [0]
