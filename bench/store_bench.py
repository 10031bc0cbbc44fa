"""Benchmark: the run-state store's coordination cost per backend (embedded files, SQLite, PostgreSQL).

For each backend, with a fresh store:

1. record_outcomes latency: one host's outcome per call (what the gate does per batch host set, at its smallest),
   N calls in one process, median and p95 in milliseconds, and CPU seconds of this process per call;
2. a gate-sized call: outcomes of a 50-host batch in one record_outcomes;
3. concurrent writers: W processes (AWX job slices) each record N outcomes at once on the same run; aggregate calls
   per second, and the final count checked exact;
4. acquire_lock + release_lock over 200 hosts: median milliseconds.

PostgreSQL is a private server from tests/harness/postgres.py (unix socket, fsync off as in the tests: the figures
are the store's statements and round trips, not a disk's flush).

    .venv/bin/python bench/store_bench.py [--calls 300] [--writers 3] [--backends embedded,sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
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

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import FileStore, empty_state, outcome_entry  # noqa: E402
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore, SqliteStore  # noqa: E402


def open_store(backend: str, state_dir: str, dsn: str) -> t.Any:
    if backend == "postgresql":
        return PostgresStore(state_dir, environ={DSN_VAR: dsn})
    return SqliteStore(state_dir) if backend == "sqlite" else FileStore(state_dir)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--backends", default="embedded,sqlite,postgresql")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fp-store-bench-")
    server = None
    try:
        for backend in args.backends.split(","):
            dsn = ""
            if backend == "postgresql":
                server = server or PostgresServer().start()
                dsn = server.create_database("bench")
            result = measure(backend, os.path.join(base, backend), dsn, calls=args.calls, writers=args.writers)
            print(" ".join(f"{key}={value}" for key, value in result.items()), flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
