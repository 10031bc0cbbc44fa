# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: run state in SQL, SQLite on one controller and PostgreSQL shared by several. Not a public API.

Both classes implement ``_store.Store`` with the same tables (``SCHEMA``, documented in docs/state.md) and the same
statements; only the connection, the placeholder and the way a transaction is serialized differ:

- SQLite (``SqliteStore``, ``<state_dir>/fleetpatch.db``, mode 0600, WAL, busy timeout): every writing transaction is
  ``BEGIN IMMEDIATE``, so writers queue on the database's one write lock;
- PostgreSQL (``PostgresStore``, psycopg 3, DSN from ``FLEETPATCH_STATE_DSN`` or libpq's ``PG*`` variables, never from
  extra vars): a writing transaction takes ``pg_advisory_xact_lock`` on a key of what it changes (the run for
  outcomes, one key for every lock), so two controllers spending one run's budget are serialized and the
  ``count(*)`` each sees includes the other's outcome.

``record_outcomes`` is one transaction: upserts keyed by (run_id, host) and a ``count(*)`` of the outcomes that spend
the error budget. ``acquire_lock`` is one transaction over host-level rows (``fp_lock_hosts``, primary key host), so
two runs can never hold one host even if a check were skipped: the insert itself would fail. The stale-lock rules are
``_store_base.lock_conflict``, the same as the file backend's. The plan is kept in the store and also written as
``runs/<run_id>/plan.json`` for operators (events.jsonl and summary.json stay files too).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sqlite3
import time
import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import write_file_atomic
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_base import (
    FAILED_OUTCOMES,
    ROW_LISTS,
    LockError,
    StoreError,
    iso,
    lock_conflict,
    utc_now,
)

__all__ = [
    "DB_FILE",
    "PlanConflict",
    "DSN_VAR",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TIMEOUT_VAR",
    "PostgresStore",
    "REGISTRY_COLUMNS",
    "SqliteStore",
    "merge_lists",
    "redact_dsn",
]

DB_FILE = "fleetpatch.db"
DSN_VAR = "FLEETPATCH_STATE_DSN"
TIMEOUT_VAR = "FLEETPATCH_STATE_TIMEOUT"
# 2: the run document's per-batch lists (ROW_LISTS) are rows of fp_run_entries; a version 1 store (their entries inline
# in the document) is upgraded on open, and each run's inline entries move into rows at its next save (read both ways)
SCHEMA_VERSION = 2
_UPGRADABLE = ("1",)
# libpq's variables that point a client at a server (any one of them set is a deliberate choice of server)
_PG_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

# One schema for both dialects (TEXT, INTEGER, BIGINT and ON CONFLICT mean the same in SQLite and PostgreSQL).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fp_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # the run document without its hosts (those are fp_outcomes), with the columns a query needs
    "CREATE TABLE IF NOT EXISTS fp_runs (run_id TEXT PRIMARY KEY, patch_id TEXT, plan_digest TEXT, status TEXT NOT NULL,"
    " document TEXT NOT NULL, updated TEXT NOT NULL)",
    # the entries of the document's lists that grow per batch (ROW_LISTS: decisions, completed_batches, waits), one row
    # each in list order (seq), appended in the save's transaction; ident (sha256 of the entry's identity) finds a
    # duplicate without reading the list (a sliced job's merge, completed batches)
    "CREATE TABLE IF NOT EXISTS fp_run_entries (run_id TEXT NOT NULL, list_name TEXT NOT NULL, seq BIGINT NOT NULL, ident TEXT NOT NULL,"
    " entry TEXT NOT NULL, PRIMARY KEY (run_id, list_name, seq))",
    "CREATE INDEX IF NOT EXISTS fp_run_entries_ident ON fp_run_entries (run_id, list_name, ident)",
    "CREATE TABLE IF NOT EXISTS fp_plans (run_id TEXT PRIMARY KEY, patch_id TEXT, plan_digest TEXT NOT NULL, content TEXT NOT NULL,"
    " saved TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fp_plans_patch ON fp_plans (patch_id, plan_digest)",
    "CREATE TABLE IF NOT EXISTS fp_outcomes (run_id TEXT NOT NULL, host TEXT NOT NULL, outcome TEXT NOT NULL, at TEXT,"
    " entry TEXT NOT NULL, PRIMARY KEY (run_id, host))",
    # the error budget's count per batch reads the failed outcomes only, not a row per host of the run
    "CREATE INDEX IF NOT EXISTS fp_outcomes_outcome ON fp_outcomes (run_id, outcome)",
    "CREATE TABLE IF NOT EXISTS fp_locks (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, controller TEXT NOT NULL, pid INTEGER NOT NULL,"
    " acquired TEXT NOT NULL, expires TEXT NOT NULL, ttl_seconds INTEGER NOT NULL)",
    # one row per locked host: the primary key is what makes two runs over one host conflict in SQL
    "CREATE TABLE IF NOT EXISTS fp_lock_hosts (host TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES fp_locks (run_id))",
    "CREATE INDEX IF NOT EXISTS fp_lock_hosts_run ON fp_lock_hosts (run_id)",
    # sliced jobs (issue 17): one lease per slice of a run (its heartbeat), and the waves each slice finished
    "CREATE TABLE IF NOT EXISTS fp_slices (run_id TEXT NOT NULL, slice INTEGER NOT NULL, slices INTEGER NOT NULL, owner TEXT NOT NULL,"
    " controller TEXT NOT NULL, pid INTEGER NOT NULL, expires TEXT NOT NULL, PRIMARY KEY (run_id, slice))",
    "CREATE TABLE IF NOT EXISTS fp_barriers (run_id TEXT NOT NULL, wave INTEGER NOT NULL, slice INTEGER NOT NULL, done TEXT NOT NULL,"
    " PRIMARY KEY (run_id, wave, slice))",
    # the planning variables of each slice's hosts (the plan is compiled over their union), and the first halt of a sliced run
    "CREATE TABLE IF NOT EXISTS fp_slice_hosts (run_id TEXT NOT NULL, slice INTEGER NOT NULL, slices INTEGER NOT NULL, hosts TEXT NOT NULL,"
    " joined TEXT NOT NULL, PRIMARY KEY (run_id, slice))",
    "CREATE TABLE IF NOT EXISTS fp_slice_halts (run_id TEXT PRIMARY KEY, slice INTEGER NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL)",
    # the event recorder's view of a run's log (complete, or why not) for the attempt with correlation_id: written by the
    # events callback when a write fails, read by registry_record's finish record (no environment channel between them)
    "CREATE TABLE IF NOT EXISTS fp_log_status (run_id TEXT PRIMARY KEY, correlation_id TEXT, complete INTEGER NOT NULL, reason TEXT,"
    " updated TEXT NOT NULL)",
    # the event log's lines on the shared store (postgresql): written by the events callback beside events.jsonl, so a
    # fresh controller continues the chain and anyone verifies it without the file
    "CREATE TABLE IF NOT EXISTS fp_events (run_id TEXT NOT NULL, seq BIGINT NOT NULL, ts TEXT NOT NULL, event TEXT NOT NULL,"
    " line TEXT NOT NULL, hash TEXT NOT NULL, prev TEXT NOT NULL, PRIMARY KEY (run_id, seq))",
    # the patch registry on the shared store (fleetpatch_state_backend postgresql): the SQLite ledger's records, same
    # columns, same hash chain (_registry.record_hash), so one verify reads either
    "CREATE TABLE IF NOT EXISTS fp_records (seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, patch_id TEXT, run_id TEXT,"
    " correlation_id TEXT, body TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fp_records_patch ON fp_records (patch_id, seq)",
    # drift facts saved by the slices of a sliced reconcile job under a set name (one record per host, the record a
    # facts file line holds), read back by a report run that shares no disk with them
    "CREATE TABLE IF NOT EXISTS fp_facts (set_name TEXT NOT NULL, host TEXT NOT NULL, record TEXT NOT NULL, saved TEXT NOT NULL,"
    " PRIMARY KEY (set_name, host))",
    # pre-staged copies: what the pre-staging job found verified in each host's cache for a patch artifact (one row per
    # (artifact digest, host)), so that a rollout's readiness gate takes those hosts as staged without running anything on them
    "CREATE TABLE IF NOT EXISTS fp_staged (artifact_sha256 TEXT NOT NULL, host TEXT NOT NULL, record TEXT NOT NULL, staged_at TEXT NOT NULL,"
    " PRIMARY KEY (artifact_sha256, host))",
)
_LOCK_KEY = "locks"
_REGISTRY_KEY = "registry"
# the first record's prev (the event log's and the SQLite registry's genesis too)
_GENESIS = "0" * 64
REGISTRY_COLUMNS = ("seq", "ts", "kind", "patch_id", "run_id", "correlation_id", "body", "prev", "hash")
_SCHEMA_KEY = "schema"
_LOCK_COLUMNS = ("run_id", "owner", "controller", "pid", "acquired", "expires", "ttl_seconds")


class PlanConflict(StoreError):
    """A slice or a re-run brings a plan that differs from the one the run already has."""


def _dumps(data: t.Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _timeout(environ: t.Mapping[str, str]) -> float:
    """Seconds a transaction waits for another writer (FLEETPATCH_STATE_TIMEOUT, default 60)."""
    raw = environ.get(TIMEOUT_VAR, "")
    try:
        value = float(raw) if raw else 60.0
    except ValueError:
        raise StoreError(f"{TIMEOUT_VAR} must be a number of seconds, not {raw[:40]!r}") from None
    if not 0 < value <= 3600:
        raise StoreError(f"{TIMEOUT_VAR} must be between 0 and 3600 seconds, not {value:g}")
    return value


_PASSWORD_FIELD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(://[^\s/?#@:]*):[^\s/?#@]*@")


def redact_dsn(text: str, *, secrets: t.Iterable[str] = ()) -> str:
    """text with every password it may carry masked: password=... fields, URL userinfo passwords, and the given secrets."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    text = _PASSWORD_FIELD.sub(r"\1********", text)
    return _URL_USERINFO.sub(r"\1:********@", text)


class _SqlStore:
    """The statements both dialects share; subclasses connect, open transactions and serialize writers."""

    name = "sql"
    placeholder = "?"

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._conn: t.Any = None
        self._pid = 0

    # -- dialect hooks -------------------------------------------------------------------------------------

    def describe(self) -> str:
        raise NotImplementedError

    def _connect(self) -> t.Any:
        raise NotImplementedError

    def _begin(self, conn: t.Any, *, write: bool) -> t.ContextManager[None]:
        raise NotImplementedError

    def _serialize(self, conn: t.Any, key: str) -> None:
        """Make writers of key wait for each other until this transaction ends."""

    def _errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _integrity_error(self) -> type[BaseException]:
        raise NotImplementedError

    def _message(self, exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    # -- plumbing ------------------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _connection(self) -> t.Any:
        # a forked worker never reuses its parent's connection
        if self._conn is None or self._pid != os.getpid():
            self._conn = None
            conn = self._connect()
            self._pid = os.getpid()
            self._conn = conn
            with self._transaction(serialize=_SCHEMA_KEY) as tx:
                self._ensure_schema(tx)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _exists(self) -> bool:
        """Whether the store was ever written (a server database always counts as existing)."""
        return True

    @contextlib.contextmanager
    def _transaction(self, *, serialize: str | None = None, write: bool = True) -> t.Iterator[_Tx]:
        if not write and self._conn is None and not self._exists():
            # reading a store that was never written (a preview, check mode, a fresh state dir) finds nothing and creates
            # nothing: the read runs against an empty in-memory database with the schema
            with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as empty:
                tx = _Tx(empty, lambda statement: statement)
                for statement in SCHEMA:
                    tx.run(statement)
                yield tx
            return
        conn = self._conn if self._conn is not None and self._pid == os.getpid() else self._connection()
        try:
            with self._begin(conn, write=write):
                if serialize is not None:
                    self._serialize(conn, serialize)
                yield _Tx(conn, self._sql)
        except self._errors() as exc:
            if getattr(conn, "closed", False):
                # a lost server connection: the next operation connects again instead of failing forever
                self._conn = None
            raise StoreError(f"{self.describe()}: {self._message(exc)}") from None

    def _ensure_schema(self, tx: _Tx) -> None:
        for statement in SCHEMA:
            tx.run(statement)
        tx.run("INSERT INTO fp_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", ("schema_version", str(SCHEMA_VERSION)))
        found = tx.value("SELECT value FROM fp_meta WHERE key = ?", ("schema_version",))
        if str(found) in _UPGRADABLE:
            # the tables above are all the upgrade needs: run documents of version 1 are read as they are
            tx.run("UPDATE fp_meta SET value = ? WHERE key = ?", (str(SCHEMA_VERSION), "schema_version"))
            found = SCHEMA_VERSION
        if str(found) != str(SCHEMA_VERSION):
            raise StoreError(f"{self.describe()} has schema version {found}; this fleetpatch reads version {SCHEMA_VERSION}")

    # -- the run document ----------------------------------------------------------------------------------

    def load_run(self, run_id: str, *, hosts: t.Iterable[str] | None = None) -> dict[str, t.Any] | None:
        """hosts: load only these hosts' outcomes (a batch's; None: every host's). A run with a document, or with outcomes
        of any host, is found either way."""
        with self._transaction(write=False) as tx:
            document = tx.value("SELECT document FROM fp_runs WHERE run_id = ?", (run_id,))
            entries: dict[str, list[t.Any]] = {}
            if hosts is None:
                outcomes = _hosts(tx, run_id)
                entries = _entries(tx, run_id)
            else:
                outcomes = _some_hosts(tx, run_id, hosts)
                if document is None and not outcomes and not tx.value("SELECT count(*) FROM fp_outcomes WHERE run_id = ?", (run_id,)):
                    return None
        if document is None and hosts is None and not outcomes:
            return None
        state = json.loads(document) if document is not None else {}
        for key in ROW_LISTS:
            # the document holds [] where the list stands (or, saved by schema version 1, its entries); the rows follow
            if key in state or entries.get(key):
                state[key] = list(state.get(key) or []) + entries.get(key, [])
        state["hosts"] = outcomes
        return state

    def save_run(self, run_id: str, state: t.Mapping[str, t.Any], *, merge: t.Sequence[str] = (),
                 appended_from: t.Mapping[str, int] | None = None) -> None:
        """merge: lists of the document that several controllers append to at once (the slices of a sliced job: attempts,
        decisions): the stored entries are kept and this writer's added, in the same transaction (``merge_lists``).

        The lists in ROW_LISTS are rows (fp_run_entries): appended_from {list: n} says the state's entries from n on are
        new (the run was loaded with n of them; a run loaded for one batch holds none), and only those are written, so a
        batch's save costs O(its entries). Without it a list in state is the whole list and replaces the stored one.
        New entries of a merged list, and of completed_batches, are added only when no equal entry is stored."""
        # "hosts" and the ROW_LISTS keep their place in the document (empty placeholders); their content is rows
        document = {key: ({} if key == "hosts" else [] if key in ROW_LISTS else value) for key, value in state.items()}
        with self._transaction(serialize=run_id) as tx:
            stored_text = tx.value("SELECT document FROM fp_runs WHERE run_id = ?", (run_id,))
            stored = json.loads(stored_text) if stored_text else {}
            inline = [key for key in merge if key not in ROW_LISTS]
            if inline:
                document.update(merge_lists(stored, document, keys=inline))
            for key in ROW_LISTS:
                _save_entries(tx, run_id, key, state, legacy=stored.get(key) or [], merged=key in merge,
                              since=None if appended_from is None else appended_from.get(key, 0))
            known = tx.value("SELECT count(*) FROM fp_runs WHERE run_id = ?", (run_id,))
            if not known and not tx.value("SELECT count(*) FROM fp_outcomes WHERE run_id = ?", (run_id,)):
                # the first save of a run brings its hosts; later saves never overwrite outcomes (record_outcomes does)
                _upsert_outcomes(tx, run_id, state.get("hosts") or {})
            tx.run(
                "INSERT INTO fp_runs (run_id, patch_id, plan_digest, status, document, updated) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id) DO UPDATE SET patch_id = excluded.patch_id, plan_digest = excluded.plan_digest,"
                " status = excluded.status, document = excluded.document, updated = excluded.updated",
                (run_id, state.get("patch_id"), state.get("plan_fingerprint"), str(state.get("status", "pending")), _dumps(document),
                 iso(utc_now())),
            )

    # -- the plan ------------------------------------------------------------------------------------------

    def plan_file(self, run_id: str) -> str:
        return os.path.join(self.state_dir, "runs", run_id, "plan.json")

    def read_plan(self, run_id: str) -> str | None:
        with self._transaction(write=False) as tx:
            return tx.value("SELECT content FROM fp_plans WHERE run_id = ?", (run_id,))

    def save_plan(self, run_id: str, content: str) -> bool:
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        patch_id = _plan_patch_id(content)
        with self._transaction(serialize=run_id) as tx:
            stored = tx.value("SELECT content FROM fp_plans WHERE run_id = ?", (run_id,))
            if stored != content:
                tx.run(
                    "INSERT INTO fp_plans (run_id, patch_id, plan_digest, content, saved) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id) DO UPDATE SET patch_id = excluded.patch_id, plan_digest = excluded.plan_digest,"
                    " content = excluded.content, saved = excluded.saved",
                    (run_id, patch_id, digest, content, iso(utc_now())),
                )
        self._write_plan_file(run_id, content)
        return stored != content

    def _write_plan_file(self, run_id: str, content: str) -> None:
        """plan.json for operators (a fresh controller of a shared store gets it too); untouched when identical."""
        path = self.plan_file(run_id)
        try:
            with open(path, "r", encoding="utf-8") as handle:
                if handle.read() == content:
                    return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
        write_file_atomic(path, content)

    def attach_plan(self, run_id: str, content: str) -> dict[str, t.Any]:
        """The first slice of a sliced job creates the run's plan, every other slice attaches to it: one transaction.
        Returns {"created": bool, "digest"}; PlanConflict when the run already has a different plan (the same patch id
        compiled from another inventory, policy or manifest), naming both digests."""
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        with self._transaction(serialize=run_id) as tx:
            stored = tx.value("SELECT plan_digest FROM fp_plans WHERE run_id = ?", (run_id,))
            if stored is None:
                tx.run("INSERT INTO fp_plans (run_id, patch_id, plan_digest, content, saved) VALUES (?, ?, ?, ?, ?)",
                       (run_id, _plan_patch_id(content), digest, content, iso(utc_now())))
            elif stored != digest:
                raise PlanConflict(f"run {run_id} already has plan sha256:{stored[:16]} in {self.describe()}; this plan is"
                                   f" sha256:{digest[:16]}: every slice must compile the same plan (same inventory, policy and manifest)")
        self._write_plan_file(run_id, content)
        return {"created": stored is None, "digest": digest}

    # -- sliced jobs: slice leases and wave barriers -------------------------------------------------------

    def join_slice(self, run_id: str, *, slice_no: int, slices: int, owner: str, controller: str, pid: int, ttl_seconds: int,
                   now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Take or extend slice_no's lease (a heartbeat: call it after every batch); the barrier reports a slice whose
        lease expired instead of waiting for it."""
        _check_slice(slice_no, slices)
        now = now or utc_now()
        lease = {"run_id": run_id, "slice": slice_no, "slices": slices, "owner": owner, "controller": controller, "pid": pid,
                 "expires": iso(now + _dt.timedelta(seconds=ttl_seconds))}
        with self._transaction(serialize=run_id) as tx:
            known = tx.value("SELECT DISTINCT slices FROM fp_slices WHERE run_id = ? AND slices <> ?", (run_id, slices))
            if known is not None:
                raise StoreError(f"run {run_id} is sliced {known} ways in {self.describe()}, not {slices}")
            tx.run("INSERT INTO fp_slices (run_id, slice, slices, owner, controller, pid, expires) VALUES (?, ?, ?, ?, ?, ?, ?)"
                   " ON CONFLICT (run_id, slice) DO UPDATE SET owner = excluded.owner, controller = excluded.controller, pid = excluded.pid,"
                   " expires = excluded.expires",
                   tuple(lease[key] for key in ("run_id", "slice", "slices", "owner", "controller", "pid", "expires")))
        return lease

    def arrive(self, run_id: str, *, wave: int, slice_no: int, slices: int, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Slice slice_no finished wave (kept: arriving again changes nothing); returns the barrier as barrier() does."""
        _check_slice(slice_no, slices)
        now = now or utc_now()
        with self._transaction(serialize=run_id) as tx:
            tx.run("INSERT INTO fp_barriers (run_id, wave, slice, done) VALUES (?, ?, ?, ?) ON CONFLICT (run_id, wave, slice) DO NOTHING",
                   (run_id, wave, slice_no, iso(now)))
            return _barrier(tx, run_id, wave=wave, slices=slices, now=now)

    def barrier(self, run_id: str, *, wave: int, slices: int, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Where wave stands: done (slices that finished it), dead (leases expired before they did: reported, not waited
        for), waiting (the rest), open (True once nothing is waiting: the next wave may start)."""
        with self._transaction(write=False) as tx:
            return _barrier(tx, run_id, wave=wave, slices=slices, now=now or utc_now())

    def wait_barrier(self, run_id: str, *, wave: int, slices: int, timeout: float, poll: float = 1.0) -> dict[str, t.Any]:
        """barrier() until it opens or timeout seconds passed (then timed_out is True and waiting names the slices that
        neither finished nor lost their lease: a slice that never joined is waited for only this long)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.barrier(run_id, wave=wave, slices=slices)
            left = deadline - time.monotonic()
            if status["open"] or left <= 0:
                return dict(status, timed_out=not status["open"])
            time.sleep(min(poll, left))

    def register_slice(self, run_id: str, *, slice_no: int, slices: int, hosts: t.Mapping[str, t.Mapping[str, t.Any]],
                       now: _dt.datetime | None = None) -> None:
        """Keep slice_no's hosts and their planning variables (kept from the first registration: a slice re-run with the
        same key brings the same inventory)."""
        _check_slice(slice_no, slices)
        with self._transaction(serialize=run_id) as tx:
            tx.run("INSERT INTO fp_slice_hosts (run_id, slice, slices, hosts, joined) VALUES (?, ?, ?, ?, ?)"
                   " ON CONFLICT (run_id, slice) DO UPDATE SET hosts = excluded.hosts",
                   (run_id, slice_no, slices, _dumps(dict(hosts)), iso(now or utc_now())))

    def slice_roster(self, run_id: str) -> dict[str, t.Any]:
        """The slices registered under run_id: {"hosts": {slice: {host: variables}}, "slices": {slice: count}, "last_joined"}."""
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT slice, slices, hosts, joined FROM fp_slice_hosts WHERE run_id = ? ORDER BY slice", (run_id,))
        return {"hosts": {int(row[0]): json.loads(row[2]) for row in rows}, "slices": {int(row[0]): int(row[1]) for row in rows},
                "last_joined": max((row[3] for row in rows), default=None)}

    def pass_barriers(self, run_id: str, *, waves: t.Sequence[int], slice_no: int, slices: int, now: _dt.datetime | None = None) -> None:
        """Slice slice_no finished every wave in waves (arrive() for several at once: the ones without its hosts)."""
        _check_slice(slice_no, slices)
        moment = iso(now or utc_now())
        with self._transaction(serialize=run_id) as tx:
            tx.many("INSERT INTO fp_barriers (run_id, wave, slice, done) VALUES (?, ?, ?, ?) ON CONFLICT (run_id, wave, slice) DO NOTHING",
                    [(run_id, wave, slice_no, moment) for wave in waves])

    def halt_slices(self, run_id: str, *, slice_no: int, reason: t.Mapping[str, t.Any], now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """Record that slice_no stopped the sliced run (the first halt is kept); returns the halt every slice sees."""
        with self._transaction(serialize=run_id) as tx:
            tx.run("INSERT INTO fp_slice_halts (run_id, slice, reason, at) VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                   (run_id, slice_no, _dumps(dict(reason)), iso(now or utc_now())))
            return _halt(tx, run_id) or {}

    def slice_halt(self, run_id: str) -> dict[str, t.Any] | None:
        """The halt a slice of run_id recorded, or None."""
        with self._transaction(write=False) as tx:
            return _halt(tx, run_id)

    # -- outcomes and the error budget ---------------------------------------------------------------------

    def record_outcomes(self, run_id: str, outcomes: t.Mapping[str, t.Mapping[str, t.Any]], *,
                        all_hosts: bool = True) -> tuple[dict[str, t.Any], int]:
        """all_hosts=False: return the recorded hosts' outcomes only (a batch's), not every host's (the budget's count is
        the whole run's either way)."""
        spending = sorted(FAILED_OUTCOMES)
        marks = ", ".join("?" * len(spending))
        with self._transaction(serialize=run_id) as tx:
            _upsert_outcomes(tx, run_id, outcomes)
            hosts = _hosts(tx, run_id) if all_hosts else {host: json.loads(_dumps(dict(entry))) for host, entry in sorted(outcomes.items())}
            spent = tx.value(f"SELECT count(*) FROM fp_outcomes WHERE run_id = ? AND outcome IN ({marks})", (run_id, *spending))
        return hosts, int(spent or 0)

    def outcomes(self, run_id: str, hosts: t.Iterable[str]) -> dict[str, t.Any]:
        """{host: outcome entry} of the given hosts that have one (a batch, a wave, candidates for control hosts)."""
        with self._transaction(write=False) as tx:
            return _some_hosts(tx, run_id, hosts)

    # -- locks ---------------------------------------------------------------------------------------------

    def acquire_lock(self, run_id: str, *, hosts: t.Sequence[str], owner: str, controller: str, pid: int, ttl_seconds: int,
                     break_stale: bool = False, now: _dt.datetime | None = None) -> dict[str, t.Any]:
        """One transaction: every other lock over these hosts is checked (``lock_conflict``), the stale ones that may be
        taken over are dropped, and this run's lock replaces its previous one."""
        now = now or utc_now()
        wanted = set(hosts)
        notes: list[str] = []
        lock = {"schema": 1, "run_id": run_id, "owner": owner, "controller": controller, "pid": pid, "hosts": sorted(wanted),
                "acquired": iso(now), "expires": iso(now + _dt.timedelta(seconds=ttl_seconds)), "ttl_seconds": ttl_seconds}
        with self._transaction(serialize=_LOCK_KEY) as tx:
            for existing in _locks(tx):
                note = lock_conflict(existing, wanted=wanted, run_id=run_id, controller=controller, pid=pid, now=now,
                                     break_stale=break_stale, where=f"lock of run {existing['run_id']} in {self.describe()}")
                if note:
                    notes.append(note)
                    _drop_lock(tx, existing["run_id"])
            _drop_lock(tx, run_id)
            tx.run(f"INSERT INTO fp_locks ({', '.join(_LOCK_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   tuple(lock[column] for column in _LOCK_COLUMNS))
            try:
                tx.many("INSERT INTO fp_lock_hosts (host, run_id) VALUES (?, ?)", [(host, run_id) for host in lock["hosts"]])
            except self._integrity_error() as exc:
                # the host rows' primary key: another run holds one of these hosts (never reached unless the check above missed it)
                raise LockError(f"a host of run {run_id} is locked by another rollout in {self.describe()}: {self._message(exc)}") from None
        return {"lock": lock, "notes": notes}

    def read_lock(self, run_id: str) -> dict[str, t.Any] | None:
        """This run's lock as acquire_lock returned it, or None."""
        with self._transaction(write=False) as tx:
            return next((lock for lock in _locks(tx, run_id=run_id)), None)

    def refresh_lock(self, run_id: str, *, ttl_seconds: int | None = None, now: _dt.datetime | None = None,
                     with_hosts: bool = True) -> dict[str, t.Any] | None:
        """with_hosts=False: the lock without its hosts (a gate renews it per batch without reading a row per locked host)."""
        now = now or utc_now()
        with self._transaction(serialize=_LOCK_KEY) as tx:
            lock = next((found for found in _locks(tx, run_id=run_id, with_hosts=with_hosts)), None)
            if lock is None:
                return None
            ttl = ttl_seconds or int(lock.get("ttl_seconds") or 900)
            lock["expires"] = iso(now + _dt.timedelta(seconds=ttl))
            tx.run("UPDATE fp_locks SET expires = ? WHERE run_id = ?", (lock["expires"], run_id))
            return lock

    def release_lock(self, run_id: str) -> bool:
        with self._transaction(serialize=_LOCK_KEY) as tx:
            return _drop_lock(tx, run_id)

    # -- the patch registry's records (the ledger of _registry.StoreRegistry) --------------------------------

    def registry_append(self, kind: str, body: str, *, patch_id: str | None, run_id: str | None, correlation_id: str | None, ts: str,
                        digest: t.Callable[..., str]) -> dict[str, t.Any]:
        """Append one record to the chain in one transaction (writers serialized): seq and prev follow the last record,
        hash is digest(seq, ts, kind, patch_id, run_id, correlation_id, body, prev)."""
        with self._transaction(serialize=_REGISTRY_KEY) as tx:
            _registry_meta(tx)
            last = tx.rows("SELECT seq, hash FROM fp_records ORDER BY seq DESC LIMIT 1")
            seq, prev = (int(last[0][0]) + 1, last[0][1]) if last else (1, _GENESIS)
            record = {"seq": seq, "ts": ts, "kind": kind, "patch_id": patch_id, "run_id": run_id, "correlation_id": correlation_id,
                      "body": body, "prev": prev}
            record["hash"] = digest(seq, ts, kind, patch_id, run_id, correlation_id, body, prev)
            tx.run(f"INSERT INTO fp_records ({', '.join(REGISTRY_COLUMNS)}) VALUES ({', '.join('?' * len(REGISTRY_COLUMNS))})",
                   tuple(record[column] for column in REGISTRY_COLUMNS))
        return record

    def registry_rows(self, *, patch_id: str | None = None, kind: str | None = None, last: bool = False) -> list[dict[str, t.Any]]:
        """The registry's records in seq order (bodies as stored text), optionally of one patch and kind; last: the newest only."""
        where = [(column, value) for column, value in (("patch_id", patch_id), ("kind", kind)) if value is not None]
        clause = (" WHERE " + " AND ".join(f"{column} = ?" for column, _value in where)) if where else ""
        order = " ORDER BY seq DESC LIMIT 1" if last else " ORDER BY seq"
        with self._transaction(write=False) as tx:
            rows = tx.rows(f"SELECT {', '.join(REGISTRY_COLUMNS)} FROM fp_records{clause}{order}", tuple(value for _column, value in where))
        return [dict(zip(REGISTRY_COLUMNS, row), seq=int(row[0])) for row in rows]

    def registry_head(self) -> dict[str, t.Any]:
        """records (how many), seq and head (hash) of the registry's last record."""
        with self._transaction(write=False) as tx:
            count = tx.value("SELECT count(*) FROM fp_records")
            last = tx.rows("SELECT seq, hash FROM fp_records ORDER BY seq DESC LIMIT 1")
        return {"records": int(count or 0), "seq": int(last[0][0]) if last else 0, "head": last[0][1] if last else _GENESIS}

    def registry_id(self) -> str:
        """The registry's identity (made with its first record; checkpoints name it)."""
        with self._transaction(write=False) as tx:
            return str(tx.value("SELECT value FROM fp_meta WHERE key = ?", ("registry_id",)) or "")

    # -- the event log's lines (postgresql: the callback mirrors events.jsonl here) -------------------------

    def append_event_lines(self, run_id: str, lines: t.Sequence[tuple[int, str, str]]) -> None:
        """Keep written lines of the run's log: (seq, line, hash) each, one transaction; a seq already kept stays."""
        rows = []
        for seq, line, digest in lines:
            try:
                body = json.loads(line)
            except ValueError:
                body = {}
            rows.append((run_id, seq, str(body.get("ts") or ""), str(body.get("event") or ""), line, digest, str(body.get("prev") or "")))
        with self._transaction(serialize=f"events:{run_id}") as tx:
            tx.many("INSERT INTO fp_events (run_id, seq, ts, event, line, hash, prev) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (run_id, seq) DO NOTHING", rows)

    def event_lines(self, run_id: str) -> list[str]:
        """The run's kept log lines in seq order (what events.jsonl holds, without newlines)."""
        with self._transaction(write=False) as tx:
            return [row[0] for row in tx.rows("SELECT line FROM fp_events WHERE run_id = ? ORDER BY seq", (run_id,))]

    # -- the event log's state -----------------------------------------------------------------------------

    def record_log_status(self, run_id: str, *, correlation_id: str | None, complete: bool, reason: str | None) -> None:
        """The events callback's view of the run's log for one attempt (correlation_id): complete, or why not."""
        with self._transaction(serialize=run_id) as tx:
            tx.run("INSERT INTO fp_log_status (run_id, correlation_id, complete, reason, updated) VALUES (?, ?, ?, ?, ?)"
                   " ON CONFLICT (run_id) DO UPDATE SET correlation_id = excluded.correlation_id, complete = excluded.complete,"
                   " reason = excluded.reason, updated = excluded.updated",
                   (run_id, correlation_id, 1 if complete else 0, reason, iso(utc_now())))

    def log_status(self, run_id: str) -> dict[str, t.Any] | None:
        """What record_log_status last said of the run's log ({correlation_id, complete, reason, updated}), or None."""
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT correlation_id, complete, reason, updated FROM fp_log_status WHERE run_id = ?", (run_id,))
        if not rows:
            return None
        correlation_id, complete, reason, updated = rows[0]
        return {"correlation_id": correlation_id, "complete": bool(complete), "reason": reason, "updated": updated}

    # -- drift facts sets (a sliced reconcile job's slices save, one report run reads) ------------------------

    def save_facts_set(self, set_name: str, records: t.Sequence[t.Mapping[str, t.Any]]) -> int:
        """Keep one facts record per host under set_name, one transaction; a host saved again is replaced. The count kept."""
        saved = iso(utc_now())
        rows = [(set_name, str(record["host"]), _dumps(record), saved) for record in records]
        with self._transaction(serialize=f"facts:{set_name}") as tx:
            tx.many("INSERT INTO fp_facts (set_name, host, record, saved) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (set_name, host) DO UPDATE SET record = excluded.record, saved = excluded.saved", rows)
        return len(rows)

    def facts_set(self, set_name: str) -> list[t.Any]:
        """Every record of set_name, by host name (empty when nothing was saved under it)."""
        with self._transaction(write=False) as tx:
            return [json.loads(row[0]) for row in tx.rows("SELECT record FROM fp_facts WHERE set_name = ? ORDER BY host", (set_name,))]

    # -- pre-staged copies (the pre-staging job saves, a rollout's readiness gate reads) -------------------------

    def save_staged(self, artifact_sha256: str, records: t.Mapping[str, t.Mapping[str, t.Any]], *, forget: t.Iterable[str] = ()) -> int:
        """Keep, for the patch artifact artifact_sha256, one record per host of the verified copy it holds ({host: record},
        record["staged_at"] an iso() time), and drop the records of the hosts in forget (found without one), in one
        transaction; a host saved again is replaced. The number of records kept."""
        rows = [(artifact_sha256, str(host), _dumps(dict(record)), str(record["staged_at"])) for host, record in sorted(records.items())]
        dropped = [(artifact_sha256, str(host)) for host in sorted(set(forget) - set(records))]
        with self._transaction(serialize=f"staged:{artifact_sha256}") as tx:
            tx.many("INSERT INTO fp_staged (artifact_sha256, host, record, staged_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (artifact_sha256, host) DO UPDATE SET record = excluded.record, staged_at = excluded.staged_at", rows)
            tx.many("DELETE FROM fp_staged WHERE artifact_sha256 = ? AND host = ?", dropped)
        return len(rows)

    def staged_records(self, artifact_sha256: str, *, since: str | None = None) -> dict[str, dict[str, t.Any]]:
        """{host: record} of every host recorded with a verified copy of artifact_sha256, only those staged at or after
        since (an iso() time) when given; empty when none was recorded."""
        where, params = ("", (artifact_sha256,)) if since is None else (" AND staged_at >= ?", (artifact_sha256, since))
        with self._transaction(write=False) as tx:
            rows = tx.rows(f"SELECT host, record FROM fp_staged WHERE artifact_sha256 = ?{where} ORDER BY host", params)
        return {host: json.loads(record) for host, record in rows}

    def forget_run(self, run_id: str) -> bool:
        """Delete everything the store holds of a run (document, plan, outcomes, lock, slices, barriers), one transaction:
        the demo's teardown, so that a run after it starts over. False when the store held nothing of it."""
        with self._transaction(serialize=_LOCK_KEY) as tx:
            dropped = _drop_lock(tx, run_id)
            for table in ("fp_runs", "fp_run_entries", "fp_plans", "fp_outcomes", "fp_slices", "fp_barriers", "fp_log_status", "fp_events"):
                dropped = tx.run(f"DELETE FROM {table} WHERE run_id = ?", (run_id,)) > 0 or dropped
            return dropped


class _Tx:
    """The statements of one transaction: run, many, value (first column of the first row), rows."""

    def __init__(self, conn: t.Any, sql: t.Callable[[str], str]) -> None:
        self.conn = conn
        self.sql = sql

    def run(self, statement: str, params: t.Sequence[t.Any] = ()) -> int:
        cursor = self.conn.cursor()
        try:
            cursor.execute(self.sql(statement), tuple(params))
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def many(self, statement: str, rows: t.Sequence[t.Sequence[t.Any]]) -> None:
        if rows:
            cursor = self.conn.cursor()
            try:
                cursor.executemany(self.sql(statement), [tuple(row) for row in rows])
            finally:
                cursor.close()

    def rows(self, statement: str, params: t.Sequence[t.Any] = ()) -> list[tuple[t.Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(self.sql(statement), tuple(params))
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def value(self, statement: str, params: t.Sequence[t.Any] = ()) -> t.Any:
        found = self.rows(statement, params)
        return found[0][0] if found else None


def _registry_meta(tx: _Tx) -> None:
    """The registry's identity and creation time, set once (by its first append)."""
    for key, value in (("registry_id", str(uuid.uuid4())), ("registry_created", iso(utc_now()))):
        tx.run("INSERT INTO fp_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))


def _check_slice(slice_no: int, slices: int) -> None:
    if not (isinstance(slices, int) and isinstance(slice_no, int) and 1 <= slice_no <= slices <= 1000):
        raise StoreError(f"slice {slice_no!r} of {slices!r}: slices are numbered 1..N with 1 <= N <= 1000")


def _barrier(tx: _Tx, run_id: str, *, wave: int, slices: int, now: _dt.datetime) -> dict[str, t.Any]:
    done = sorted(int(row[0]) for row in tx.rows("SELECT slice FROM fp_barriers WHERE run_id = ? AND wave = ?", (run_id, wave)))
    leases = {int(row[0]): row[1] for row in tx.rows("SELECT slice, expires FROM fp_slices WHERE run_id = ?", (run_id,))}
    moment = iso(now)
    dead = [{"slice": number, "expired": leases[number]} for number in range(1, slices + 1)
            if number not in done and number in leases and leases[number] <= moment]
    waiting = [number for number in range(1, slices + 1) if number not in done and number not in {item["slice"] for item in dead}]
    return {"run_id": run_id, "wave": wave, "slices": slices, "done": done, "dead": dead, "waiting": waiting, "open": not waiting}


def merge_lists(stored: t.Mapping[str, t.Any], mine: t.Mapping[str, t.Any], *, keys: t.Sequence[str]) -> dict[str, list[t.Any]]:
    """For each key: the stored list, each entry replaced by this writer's entry of the same identity, then this writer's
    new entries. An entry's identity is its (started, owner, pid) when it has started (an attempt, changed later by its
    own slice: its skip list), else its whole content."""

    merged: dict[str, list[t.Any]] = {}
    for key in keys:
        own = {_identity(entry): entry for entry in mine.get(key) or []}
        old = [own.pop(_identity(entry), entry) for entry in stored.get(key) or []]
        merged[key] = old + list(own.values())
    return merged


def _identity(entry: t.Any) -> str:
    """An entry of a merged list: its (started, owner, pid) when it has started (an attempt, changed later by its own
    slice), else its whole content."""
    if isinstance(entry, dict) and "started" in entry:
        return _dumps([entry.get("started"), entry.get("owner"), entry.get("pid")])
    return _dumps(entry)


# lists whose entries are a set: an entry equal to a stored one is not added again (a batch completes once)
_SET_LISTS = frozenset({"completed_batches"})


def _save_entries(tx: _Tx, run_id: str, key: str, state: t.Mapping[str, t.Any], *, legacy: t.Sequence[t.Any], merged: bool,
                  since: int | None) -> None:
    """Write the entries of one of the document's ROW_LISTS (see save_run): a document of schema version 1 kept them
    inline (legacy), which become its first rows; then the state's new entries (from since on) are appended, or, with
    since None, its whole list replaces the stored one (merged: added where no equal entry is stored)."""
    if legacy:
        _append_entries(tx, run_id, key, legacy, unique=False)
    if key not in state:
        return
    entries = list(state.get(key) or [])
    if since is None or since > len(entries):
        if not merged:
            tx.run("DELETE FROM fp_run_entries WHERE run_id = ? AND list_name = ?", (run_id, key))
        _append_entries(tx, run_id, key, entries, unique=merged)
    else:
        _append_entries(tx, run_id, key, entries[since:], unique=merged or key in _SET_LISTS)


def _append_entries(tx: _Tx, run_id: str, key: str, entries: t.Sequence[t.Any], *, unique: bool) -> None:
    """Append entries to a run's list key; unique: skip an entry whose identity is stored already (or came earlier)."""
    if not entries:
        return
    last = tx.value("SELECT max(seq) FROM fp_run_entries WHERE run_id = ? AND list_name = ?", (run_id, key))
    seq = -1 if last is None else int(last)
    rows, seen = [], set()
    for entry in entries:
        ident = hashlib.sha256(_identity(entry).encode("utf-8")).hexdigest()
        if unique:
            if ident in seen or tx.value("SELECT 1 FROM fp_run_entries WHERE run_id = ? AND list_name = ? AND ident = ?", (run_id, key, ident)):
                continue
            seen.add(ident)
        seq += 1
        rows.append((run_id, key, seq, ident, _dumps(entry)))
    tx.many("INSERT INTO fp_run_entries (run_id, list_name, seq, ident, entry) VALUES (?, ?, ?, ?, ?)", rows)


def _entries(tx: _Tx, run_id: str) -> dict[str, list[t.Any]]:
    """Every entry of the run's ROW_LISTS kept as rows, {list: entries in order}."""
    found: dict[str, list[t.Any]] = {}
    for key, entry in tx.rows("SELECT list_name, entry FROM fp_run_entries WHERE run_id = ? ORDER BY list_name, seq", (run_id,)):
        found.setdefault(key, []).append(json.loads(entry))
    return found


def _halt(tx: _Tx, run_id: str) -> dict[str, t.Any] | None:
    found = tx.rows("SELECT slice, reason, at FROM fp_slice_halts WHERE run_id = ?", (run_id,))
    return {"slice": int(found[0][0]), "reason": json.loads(found[0][1]), "at": found[0][2]} if found else None


def _plan_patch_id(content: str) -> str | None:
    try:
        plan = json.loads(content)
    except ValueError:
        return None
    return plan.get("patch_id") if isinstance(plan, dict) and isinstance(plan.get("patch_id"), str) else None


def _upsert_outcomes(tx: _Tx, run_id: str, outcomes: t.Mapping[str, t.Mapping[str, t.Any]]) -> None:
    tx.many(
        "INSERT INTO fp_outcomes (run_id, host, outcome, at, entry) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id, host) DO UPDATE SET outcome = excluded.outcome, at = excluded.at, entry = excluded.entry",
        [(run_id, host, str(entry.get("outcome", "")), entry.get("at"), _dumps(dict(entry))) for host, entry in sorted(outcomes.items())],
    )


def _hosts(tx: _Tx, run_id: str) -> dict[str, t.Any]:
    return {host: json.loads(entry) for host, entry in tx.rows("SELECT host, entry FROM fp_outcomes WHERE run_id = ? ORDER BY host", (run_id,))}


# hosts per statement of a host-scoped read (SQLite allows 32766 parameters, PostgreSQL 65535)
_HOST_CHUNK = 500


def _some_hosts(tx: _Tx, run_id: str, hosts: t.Iterable[str]) -> dict[str, t.Any]:
    wanted = sorted(set(hosts))
    found: dict[str, t.Any] = {}
    for start in range(0, len(wanted), _HOST_CHUNK):
        chunk = wanted[start:start + _HOST_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = tx.rows(f"SELECT host, entry FROM fp_outcomes WHERE run_id = ? AND host IN ({marks})", (run_id, *chunk))
        found.update((host, json.loads(entry)) for host, entry in rows)
    return dict(sorted(found.items()))


def _locks(tx: _Tx, *, run_id: str | None = None, with_hosts: bool = True) -> list[dict[str, t.Any]]:
    where, params = (" WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
    locks = [dict(zip(_LOCK_COLUMNS, row)) for row in tx.rows(f"SELECT {', '.join(_LOCK_COLUMNS)} FROM fp_locks{where} ORDER BY run_id", params)]
    hosts: dict[str, list[str]] = {}
    for host, owner in tx.rows(f"SELECT host, run_id FROM fp_lock_hosts{where} ORDER BY host", params) if with_hosts else ():
        hosts.setdefault(owner, []).append(host)
    return [{"schema": 1, **lock, "pid": int(lock["pid"]), "ttl_seconds": int(lock["ttl_seconds"]),
             **({"hosts": hosts.get(lock["run_id"], [])} if with_hosts else {})}
            for lock in locks]


def _drop_lock(tx: _Tx, run_id: str) -> bool:
    tx.run("DELETE FROM fp_lock_hosts WHERE run_id = ?", (run_id,))
    return tx.run("DELETE FROM fp_locks WHERE run_id = ?", (run_id,)) > 0


# ---------------------------------------------------------------------------------------------------------
# SQLite: one database file under the state dir


class SqliteStore(_SqlStore):
    """Run state in ``<state_dir>/fleetpatch.db`` (stdlib sqlite3, WAL, ``BEGIN IMMEDIATE`` for every write)."""

    name = "embedded"

    def __init__(self, state_dir: str, *, environ: t.Mapping[str, str] | None = None) -> None:
        super().__init__(state_dir)
        self.path = os.path.join(state_dir, DB_FILE)
        self.timeout = _timeout(os.environ if environ is None else environ)

    def describe(self) -> str:
        return f"run-state database {self.path}"

    def _exists(self) -> bool:
        return os.path.exists(self.path)

    def _connect(self) -> t.Any:
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            # created 0600 before sqlite opens it (its -wal and -shm files take the same mode)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            if os.stat(self.path).st_mode & 0o077:
                os.chmod(self.path, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the {self.describe()}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            conn = None
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA foreign_keys = ON")
                return conn
            except sqlite3.OperationalError as exc:
                # several processes opening a new database at once: switching it to WAL needs a moment alone, and
                # sqlite answers "locked" at once instead of waiting for the busy timeout
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open the {self.describe()}: {exc}") from None
                if conn is not None:
                    conn.close()
                time.sleep(0.05)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the {self.describe()}: {exc}") from None

    @contextlib.contextmanager
    def _begin(self, conn: t.Any, *, write: bool) -> t.Iterator[None]:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _integrity_error(self) -> type[BaseException]:
        return sqlite3.IntegrityError


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL: shared by every controller (AWX job slices) that points at the same database


class PostgresStore(_SqlStore):
    """Run state in PostgreSQL (psycopg 3). The DSN comes from the controller's environment only."""

    name = "postgresql"
    placeholder = "%s"

    def __init__(self, state_dir: str, *, environ: t.Mapping[str, str] | None = None) -> None:
        super().__init__(state_dir)
        environ = os.environ if environ is None else environ
        self.dsn = environ.get(DSN_VAR, "")
        if not self.dsn and not any(environ.get(name) for name in _PG_VARS):
            raise StoreError(f"fleetpatch_state_backend postgresql needs {DSN_VAR} (or libpq's PGHOST, PGDATABASE, ... variables) in the"
                             " controller's environment; it is never read from playbook variables")
        self.timeout = _timeout(environ)
        self._secrets = tuple(secret for secret in (environ.get("PGPASSWORD", ""), _dsn_password(self.dsn)) if secret)
        self._where = "postgresql run-state store"

    def describe(self) -> str:
        return self._where

    def _message(self, exc: BaseException) -> str:
        return redact_dsn(super()._message(exc), secrets=self._secrets)

    def _connect(self) -> t.Any:
        try:
            import psycopg  # pylint: disable=import-outside-toplevel  # only controllers that choose postgresql need it
        except ImportError:
            raise StoreError("fleetpatch_state_backend postgresql needs the Python package psycopg (psycopg[binary]) on the"
                             " controller") from None
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.timeout)), application_name="fleetpatch")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the {self.describe()}: {self._message(exc)}") from None
        self._where = f"postgresql run-state store (database {conn.info.dbname} on {conn.info.host or 'localhost'})"
        conn.execute(f"SET lock_timeout = '{int(self.timeout * 1000)}ms'")
        return conn

    @contextlib.contextmanager
    def _begin(self, conn: t.Any, *, write: bool) -> t.Iterator[None]:
        with conn.transaction():
            yield

    def _serialize(self, conn: t.Any, key: str) -> None:
        digest = hashlib.sha256(f"fleetpatch:{key}".encode("utf-8")).digest()
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest[:8], "big", signed=True),))

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg  # pylint: disable=import-outside-toplevel
        return (psycopg.Error,)

    def _integrity_error(self) -> type[BaseException]:
        import psycopg  # pylint: disable=import-outside-toplevel
        return psycopg.errors.IntegrityError


def _dsn_password(dsn: str) -> str:
    """The password a DSN carries (key=value or URL form), so that no message repeats it."""
    found = _PASSWORD_FIELD.search(dsn)
    if found:
        return found.group(2).strip("'")
    url = re.search(r"://[^\s/?#@:]*:([^\s/?#@]*)@", dsn)
    return url.group(1) if url else ""
