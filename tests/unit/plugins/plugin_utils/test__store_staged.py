"""Pre-staging records (fp_staged): save_staged / staged_records on SQLite and on a real private PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore

_DATABASES = itertools.count(1)
FULL = "a" * 64
OTHER = "b" * 64
OLD, NEW = "2026-11-20T12:00:00.000000Z", "2026-11-27T12:00:00.000000Z"


def record(host: str, *, at: str = NEW, sha256: str = FULL, kind: str = "full") -> dict[str, t.Any]:
    return {"artifact_sha256": FULL, "sha256": sha256, "kind": kind, "patch_id": "FP-1", "signature_verified": True, "staged_at": at,
            "job": {"owner": "ops@ctl", "awx_job_id": None}, "host_note": host}


@pytest.fixture(params=("sqlite", "postgresql"))
def opener(request, tmp_path) -> t.Callable[[], t.Any]:
    state_dir = str(tmp_path / "state")
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres").create_database(f"staged_{os.getpid()}_{next(_DATABASES)}")
        return lambda: PostgresStore(state_dir, environ={DSN_VAR: dsn})
    return lambda: SqliteStore(state_dir)


def test_records_round_trip_per_artifact_and_a_second_save_replaces(opener) -> None:
    store = opener()
    assert store.staged_records(FULL) == {}
    assert store.save_staged(FULL, {"n1": record("n1", at=OLD), "n2": record("n2")}) == 2
    assert store.save_staged(OTHER, {"n1": record("n1", sha256=OTHER)}) == 1
    # another controller (a fresh AWX job container) reads what the pre-staging job saved
    again = opener()
    found = again.staged_records(FULL)
    assert sorted(found) == ["n1", "n2"] and found["n2"] == record("n2")
    assert list(again.staged_records(OTHER)) == ["n1"]
    # staged again: the record is replaced, not duplicated
    store.save_staged(FULL, {"n1": record("n1", at=NEW, kind="delta")})
    assert again.staged_records(FULL)["n1"]["kind"] == "delta"
    assert sorted(again.staged_records(FULL)) == ["n1", "n2"]


def test_since_leaves_older_records_out(opener) -> None:
    store = opener()
    store.save_staged(FULL, {"n1": record("n1", at=OLD), "n2": record("n2", at=NEW)})
    assert list(store.staged_records(FULL, since="2026-11-25T00:00:00.000000Z")) == ["n2"]
    assert sorted(store.staged_records(FULL, since=OLD)) == ["n1", "n2"]
    assert store.staged_records(FULL, since="2026-12-01T00:00:00.000000Z") == {}


def test_forget_drops_hosts_found_without_a_copy_in_the_same_save(opener) -> None:
    store = opener()
    store.save_staged(FULL, {"n1": record("n1"), "n2": record("n2"), "n3": record("n3")})
    store.save_staged(OTHER, {"n2": record("n2", sha256=OTHER)})
    # n2 lost its copy of FULL, n4 never had one: only this artifact's record of n2 goes; n1 is saved again
    assert store.save_staged(FULL, {"n1": record("n1")}, forget=["n2", "n4"]) == 1
    assert sorted(store.staged_records(FULL)) == ["n1", "n3"]
    assert list(store.staged_records(OTHER)) == ["n2"]
    # a host both saved and forgotten is saved
    store.save_staged(FULL, {"n2": record("n2")}, forget=["n2"])
    assert sorted(store.staged_records(FULL)) == ["n1", "n2", "n3"]


def test_reading_a_store_never_written_creates_nothing(tmp_path) -> None:
    store = SqliteStore(str(tmp_path / "state"))
    assert store.staged_records(FULL) == {}
    assert not os.path.exists(store.path)
