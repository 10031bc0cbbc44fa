"""Benchmark: the run-state store's coordination cost per backend (embedded SQLite, PostgreSQL).

For each backend, with a fresh store:

1. record_outcomes latency: one host's outcome per call (what the gate does per batch host set, at its smallest),
   N calls in one process, median and p95 in milliseconds, and CPU seconds of this process per call;
2. a gate-sized call: outcomes of a 50-host batch in one record_outcomes;
3. concurrent writers: W processes (AWX job slices) each record N outcomes at once on the same run; aggregate calls
   per second, and the final count checked exact;
4. acquire_lock + release_lock over 200 hosts: median milliseconds;
5. patch registry ingest: W processes append N records each at once to one registry (the SQLite ledger for embedded,
   the store's fp_records for postgresql), records per second, the chain checked whole afterwards;
6. registry verify of a large chain (--events records, default 500,000: the whole bench then takes 30-60 s; the issue's
   figure is --events 1000000): the chain is bulk-loaded with correct hashes, then verify_all reads and checks it.

PostgreSQL is a private server from tests/harness/postgres.py (unix socket, fsync off as in the tests: the figures
are the store's statements and round trips, not a disk's flush).

    .venv/bin/python bench/store_bench.py [--calls 300] [--writers 3] [--backends embedded,postgresql] [--events 500000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.harness.postgres import PostgresServer  # noqa: E402

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import GENESIS  # noqa: E402
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import empty_state, outcome_entry  # noqa: E402
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore  # noqa: E402
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (  # noqa: E402
    COLUMNS,
    Registry,
    StoreRegistry,
    record_hash,
    verify_all,
)


def open_store(backend: str, state_dir: str, dsn: str) -> t.Any:
    if backend == "postgresql":
        return PostgresStore(state_dir, environ={DSN_VAR: dsn})
    return SqliteStore(state_dir)  # embedded: the SQLite file <state_dir>/fleetpatch.db


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _writer(backend: str, state_dir: str, dsn: str, worker: int, calls: int, start: t.Any) -> None:
    store = open_store(backend, state_dir, dsn)
    start.wait(timeout=60)
    for index in range(calls):
        store.record_outcomes("FP-BENCH", {f"w{worker}-h{index}": outcome_entry("failed", at="t")})


def measure(backend: str, state_dir: str, dsn: str, *, calls: int, writers: int) -> dict[str, t.Any]:
    store = open_store(backend, state_dir, dsn)
    store.save_run("FP-BENCH", empty_state("FP-BENCH", "FP-BENCH", "f" * 64))
    times = []
    cpu = _cpu()
    for index in range(calls):
        started = time.perf_counter()
        store.record_outcomes("FP-BENCH", {f"h{index}": outcome_entry("patched", at="t")})
        times.append((time.perf_counter() - started) * 1000)
    cpu_per_call = (_cpu() - cpu) / calls
    batch = {f"b{index}": outcome_entry("patched", at="t") for index in range(50)}
    batch_times = []
    for _round in range(20):
        started = time.perf_counter()
        store.record_outcomes("FP-BENCH", batch)
        batch_times.append((time.perf_counter() - started) * 1000)

    context = multiprocessing.get_context("fork")
    start = context.Barrier(writers + 1)
    processes = [context.Process(target=_writer, args=(backend, state_dir, dsn, worker, calls, start)) for worker in range(writers)]
    for process in processes:
        process.start()
    start.wait(timeout=60)
    began = time.perf_counter()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - began
    spent = store.record_outcomes("FP-BENCH", {})[1]
    assert spent == writers * calls, (spent, writers * calls)

    hosts = [f"host-{index:03d}" for index in range(200)]
    lock_times = []
    for _round in range(30):
        started = time.perf_counter()
        store.acquire_lock("FP-BENCH", hosts=hosts, owner="bench", controller="bench", pid=os.getpid(), ttl_seconds=600)
        store.release_lock("FP-BENCH")
        lock_times.append((time.perf_counter() - started) * 1000)
    return {
        "backend": backend,
        "record_1_host_ms_median": round(statistics.median(times), 3),
        "record_1_host_ms_p95": round(sorted(times)[int(len(times) * 0.95) - 1], 3),
        "record_1_host_cpu_ms": round(cpu_per_call * 1000, 3),
        "record_50_hosts_ms_median": round(statistics.median(batch_times), 3),
        "concurrent_writers": writers,
        "concurrent_calls_per_s": round(writers * calls / elapsed, 1),
        "lock_200_hosts_acquire_release_ms_median": round(statistics.median(lock_times), 3),
    }


def _registry(backend: str, state_dir: str, dsn: str) -> t.Any:
    if backend == "postgresql":
        return StoreRegistry(PostgresStore(state_dir, environ={DSN_VAR: dsn}))
    return Registry(os.path.join(state_dir, "registry.sqlite3"))


def _appender(backend: str, state_dir: str, dsn: str, worker: int, records: int, start: t.Any) -> None:
    registry = _registry(backend, state_dir, dsn)
    start.wait(timeout=60)
    for index in range(records):
        registry.append("run.host", {"host": f"w{worker}-h{index}", "outcome": "patched"}, patch_id="FP-BENCH", run_id="FP-BENCH",
                        correlation_id=f"c-{worker}")


def registry_ingest(backend: str, state_dir: str, dsn: str, *, records: int, writers: int) -> dict[str, t.Any]:
    """W processes append at once; the chain must be whole (one seq each, every prev the hash before it)."""
    registry = _registry(backend, state_dir, dsn)
    registry.append("patch.registered", {"service": "bench"}, patch_id="FP-BENCH")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(writers + 1)
    processes = [context.Process(target=_appender, args=(backend, state_dir, dsn, worker, records, start)) for worker in range(writers)]
    for process in processes:
        process.start()
    start.wait(timeout=60)
    began = time.perf_counter()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - began
    rows = registry.rows()
    assert len(rows) == writers * records + 1 and [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert all(row["prev"] == before["hash"] for before, row in zip(rows, rows[1:]))
    return {"registry_writers": writers, "registry_records_per_s": round(writers * records / elapsed, 1)}


def _chain(size: int) -> t.Iterator[tuple[t.Any, ...]]:
    prev = GENESIS
    for seq in range(1, size + 1):
        body = json.dumps({"host": f"h{seq}", "outcome": "patched", "wave": "wave-1"}, sort_keys=True, separators=(",", ":"))
        row = (seq, "2026-12-07T00:00:00.000000Z", "run.host", "FP-BENCH", "FP-BENCH", "c-1", body, prev)
        prev = record_hash(*row)
        yield row + (prev,)


def registry_verify(backend: str, state_dir: str, dsn: str, *, size: int) -> dict[str, t.Any]:
    """Bulk-load a valid chain of size records (the load is not timed), then time verify_all over it."""
    names = ", ".join(COLUMNS)
    if backend == "postgresql":
        import psycopg  # pylint: disable=import-outside-toplevel

        os.environ[DSN_VAR] = dsn  # verify_all opens the store the way a controller does: DSN from the environment
        with psycopg.connect(dsn, autocommit=True) as conn:
            PostgresStore(state_dir, environ={DSN_VAR: dsn}).registry_head()  # the store makes its tables
            conn.execute("DELETE FROM fp_records")
            with conn.cursor().copy(f"COPY fp_records ({names}) FROM STDIN") as copy:
                for row in _chain(size):
                    copy.write_row(row)
    else:
        path = os.path.join(state_dir, "registry.sqlite3")
        Registry(path)
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM records")
            conn.executemany(f"INSERT INTO records ({names}) VALUES ({', '.join('?' * len(COLUMNS))})", _chain(size))
    began = time.perf_counter()
    cpu = _cpu()
    report = verify_all(state_dir, backend=backend, events=False)
    elapsed = time.perf_counter() - began
    assert report["head"]["records"] == size and not report["tampered"], report["findings"][:3]
    return {"verify_records": size, "verify_s": round(elapsed, 2), "verify_cpu_s": round(_cpu() - cpu, 2),
            "verify_records_per_s": round(size / elapsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--backends", default="embedded,postgresql")
    parser.add_argument("--records", type=int, default=300, help="registry records each concurrent writer appends")
    parser.add_argument("--events", type=int, default=500000, help="records in the chain that registry verify checks")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fp-store-bench-")
    server = None
    try:
        for backend in args.backends.split(","):
            dsn = ""
            if backend == "postgresql":
                server = server or PostgresServer().start()
                dsn = server.create_database("bench")
            state_dir = os.path.join(base, backend)
            result = measure(backend, state_dir, dsn, calls=args.calls, writers=args.writers)
            result.update(registry_ingest(backend, state_dir, dsn, records=args.records, writers=args.writers))
            result.update(registry_verify(backend, state_dir, dsn, size=args.events))
            print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
