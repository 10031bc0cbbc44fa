# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the patch registry. Not a public API.

An append-only ledger in one SQLite file (``<state dir>/registry.sqlite3`` by default). Every record is chained
to the one before it:

    hash = sha256(json.dumps([seq, ts, kind, patch_id, run_id, correlation_id, body, prev],
                             separators=(",", ":"), ensure_ascii=False))

where ``body`` is the record's canonical JSON text and ``prev`` the hash of record ``seq - 1`` (64 zeros for the
first). A patch's record (purpose, approvals, timeline, outcome per host, event files) is the fold of its ledger
entries, so nothing is ever updated in place. At the end of each run a checkpoint of the chain head is written to a
separate file (``<state dir>/checkpoints/``), signed with ``ssh-keygen -Y sign`` when a key is configured; the
operator ships those files elsewhere. ``verify`` checks the chain, the checkpoints and every event file the
registry knows, and names the place of each edited, deleted, reordered, duplicated or truncated record or line.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import tempfile
import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file, write_file_atomic
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import Finding, verify_event_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import GENESIS, file_head, utc_ts
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import Redactor, canonical, scrub_url
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import Store, StoreError, open_store

__all__ = [
    "ApprovalError",
    "COLUMNS",
    "Ledger",
    "Registry",
    "RegistryError",
    "STATES",
    "StoreRegistry",
    "approval_chain",
    "export",
    "fold_patches",
    "lock_timeout",
    "open_registry",
    "patch_body",
    "query_hosts",
    "query_patches",
    "query_timeline",
    "record_hash",
    "registry_paths",
    "relative_to",
    "retention",
    "verify_all",
    "verify_export",
    "write_checkpoint",
]

FORMAT = 1
REGISTRY_FILE = "registry.sqlite3"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "exports"
SIGN_NAMESPACE = "fleetpatch-registry"
OUT_OF_BAND = frozenset({"out-of-band", "out_of_band", "oob", "emergency", "hotfix"})
FINAL_STATES = ("rolled_out", "halted", "held", "waiting_window", "rolled_back", "rollback_failed", "interrupted")
STATES = ("registered", "approved", "prestaged", "running") + FINAL_STATES
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    patch_id TEXT,
    run_id TEXT,
    correlation_id TEXT,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_patch ON records (patch_id, seq);
"""
COLUMNS = ("seq", "ts", "kind", "patch_id", "run_id", "correlation_id", "body", "prev", "hash")


class RegistryError(FleetpatchError):
    """The registry cannot do what was asked."""


LOCK_TIMEOUT_ENV = "FLEETPATCH_REGISTRY_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 30.0


def lock_timeout(environ: t.Mapping[str, str] | None = None) -> float:
    """Seconds a writer waits for another process's registry transaction (FLEETPATCH_REGISTRY_TIMEOUT, default 30)."""
    value = (os.environ if environ is None else environ).get(LOCK_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise RegistryError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {value[:40]!r}") from None
    if not 0 <= seconds <= 3600:
        raise RegistryError(f"{LOCK_TIMEOUT_ENV} must be between 0 and 3600 seconds, got {value[:40]!r}")
    return seconds


class ApprovalError(RegistryError):
    """The patch's approval chain does not allow a rollout."""


def registry_paths(state_dir: str, *, registry_path: str | None = None, checkpoint_dir: str | None = None,
                   export_dir: str | None = None) -> dict[str, str]:
    """Where the registry, its checkpoints and its exports live (defaults under the controller state dir)."""
    def resolve(value: str | None, default: str) -> str:
        return os.path.abspath(os.path.expanduser(value)) if value else os.path.join(state_dir, default)

    return {"state_dir": state_dir, "registry": resolve(registry_path or os.environ.get("FLEETPATCH_REGISTRY"), REGISTRY_FILE),
            "checkpoints": resolve(checkpoint_dir or os.environ.get("FLEETPATCH_CHECKPOINT_DIR"), CHECKPOINT_DIR),
            "exports": resolve(export_dir, EXPORT_DIR)}


def strip_url_credentials(url: t.Any) -> t.Any:
    return scrub_url(url)


def relative_to(path: str | None, base: str) -> str | None:
    if not path:
        return None
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------------------------------------------
# Approvals


def _people(value: t.Any, field: str, patch_id: str) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    people = []
    for item in values:
        if not isinstance(item, str) or not item.strip():
            raise ApprovalError(f"patch {patch_id}: {field} must be a non-empty string or a list of them")
        people.append(item.strip())
    return people


def approval_chain(manifest: t.Mapping[str, t.Any], *, require: bool = False) -> dict[str, t.Any]:
    """The approval chain of a patch manifest. Raises ApprovalError when the requester approves their own patch,
    when approvals are given without a requester, when an out-of-band change has no justification, or (require)
    when nobody approved."""
    patch_id = str(manifest.get("patch_id", "?"))
    requested = _people(manifest.get("requested_by"), "requested_by", patch_id)
    if len(requested) > 1:
        raise ApprovalError(f"patch {patch_id}: requested_by must name one person")
    requester = requested[0] if requested else None
    approvals: list[dict[str, t.Any]] = []
    raw = manifest.get("approvals") or []
    if not isinstance(raw, list):
        raise ApprovalError(f"patch {patch_id}: approvals must be a list")
    for index, item in enumerate(raw):
        if isinstance(item, str):
            item = {"by": item}
        if not isinstance(item, dict):
            raise ApprovalError(f"patch {patch_id}: approvals[{index}] must be a name or a mapping with 'by'")
        by = item.get("by") or item.get("approver")
        if not isinstance(by, str) or not by.strip():
            raise ApprovalError(f"patch {patch_id}: approvals[{index}] needs 'by' (who approved)")
        entry = {"by": by.strip()}
        for key in ("at", "role", "comment", "ticket"):
            if item.get(key) is not None:
                entry[key] = str(item[key])
        approvals.append(entry)
    for name in _people(manifest.get("approved_by"), "approved_by", patch_id):
        if all(entry["by"] != name for entry in approvals):
            approvals.append({"by": name})
    if approvals and requester is None:
        raise ApprovalError(f"patch {patch_id}: approvals need requested_by, so that a self-approval can be ruled out")
    for entry in approvals:
        if requester is not None and entry["by"].casefold() == requester.casefold():
            raise ApprovalError(f"patch {patch_id}: {requester} requested this patch and cannot approve it (approval by {entry['by']})")
    seen: set[str] = set()
    unique = []
    for entry in approvals:
        key = entry["by"].casefold()
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    change_type = str(manifest.get("change_type") or "").lower()
    justification = manifest.get("reason")
    if change_type in OUT_OF_BAND and not (isinstance(justification, str) and justification.strip()):
        raise ApprovalError(f"patch {patch_id}: change_type {change_type} is out of band and needs a justification in 'reason'")
    if require and not unique:
        raise ApprovalError(f"patch {patch_id}: nobody approved this patch (approvals/approved_by) and approval is required")
    return {"requested_by": requester, "approvals": unique, "approvers": [entry["by"] for entry in unique], "approved": bool(unique),
            "out_of_band": change_type in OUT_OF_BAND}


def patch_body(manifest: t.Mapping[str, t.Any], *, manifest_path: str | None = None, require_approval: bool = False) -> dict[str, t.Any]:
    """What the registry keeps about a patch, from its validated manifest."""
    artifact = dict(manifest.get("artifact") or {})
    affected = manifest.get("affected_versions")
    if affected is None and manifest.get("base_version"):
        affected = [manifest["base_version"]]
    return {
        "service": manifest.get("service"),
        "target_version": manifest.get("target_version"),
        "base_version": manifest.get("base_version"),
        "affected_versions": affected,
        "purpose": manifest.get("description"),
        "justification": manifest.get("justification") or manifest.get("reason"),
        "change_type": manifest.get("change_type"),
        "classification": manifest.get("classification"),
        "severity": manifest.get("severity"),
        "regression_risk": manifest.get("regression_risk"),
        "security": manifest.get("security"),
        "references": manifest.get("references"),
        "build": manifest.get("build"),
        "artifact": {"name": artifact.get("name"), "sha256": artifact.get("sha256"), "size": artifact.get("size"),
                     "url": strip_url_credentials(artifact.get("url")), "signature": artifact.get("signature"),
                     "delta": {key: (artifact.get("delta") or {}).get(key) for key in ("name", "sha256", "size", "base_version")}
                     if artifact.get("delta") else None},
        "approval": approval_chain(manifest, require=require_approval),
        "manifest_sha256": hashlib.sha256(canonical(dict(manifest)).encode("utf-8")).hexdigest(),
        "manifest_path": manifest_path,
    }


# ---------------------------------------------------------------------------------------------------------
# The ledger


def record_hash(seq: int, ts: str, kind: str, patch_id: str | None, run_id: str | None, correlation_id: str | None,
                body: str, prev: str) -> str:
    payload = json.dumps([seq, ts, kind, patch_id, run_id, correlation_id, body, prev], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


class Registry:
    """The SQLite ledger. Each append is one IMMEDIATE transaction, so concurrent writers serialise cleanly."""

    def __init__(self, path: str, *, create: bool = True, timeout: float | None = None) -> None:
        self.path = os.path.abspath(path)
        self.timeout = lock_timeout() if timeout is None else timeout
        if not os.path.exists(self.path):
            if not create:
                raise RegistryError(f"no registry at {self.path}")
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640))
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('registry_id', ?)", (str(uuid.uuid4()),))
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (str(FORMAT),))
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", (utc_ts(),))

    @contextlib.contextmanager
    def _connect(self) -> t.Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise RegistryError(f"patch registry {self.path} cannot be opened: {exc}") from exc
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.OperationalError as exc:
            # sqlite says "database is locked" and nothing else: which file, and what to do, is ours to say
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise RegistryError(f"patch registry {self.path} is locked by another process (sqlite: {text}; waited"
                                    f" {self.timeout:g} s, {LOCK_TIMEOUT_ENV} sets the wait): let that process finish,"
                                    " then run again") from exc
            raise RegistryError(f"patch registry {self.path}: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"patch registry {self.path} is not a readable registry: {exc}") from exc
        finally:
            conn.close()

    @property
    def registry_id(self) -> str:
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'registry_id'").fetchone()
        return row[0] if row else ""

    def append(self, kind: str, body: t.Mapping[str, t.Any], *, patch_id: str | None = None, run_id: str | None = None,
               correlation_id: str | None = None, ts: str | None = None, redactor: Redactor | None = None) -> dict[str, t.Any]:
        # URL credentials and secret headers never reach a row, whoever calls (structural: a registry write is rare)
        text = (redactor or Redactor()).dumps(dict(body), structural=True)
        ts = ts or utc_ts()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
                digest = record_hash(seq, ts, kind, patch_id, run_id, correlation_id, text, prev)
                conn.execute("INSERT INTO records (seq, ts, kind, patch_id, run_id, correlation_id, body, prev, hash)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (seq, ts, kind, patch_id, run_id, correlation_id, text, prev, digest))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {"seq": seq, "ts": ts, "kind": kind, "patch_id": patch_id, "run_id": run_id, "correlation_id": correlation_id,
                "body": json.loads(text), "prev": prev, "hash": digest}

    def rows(self) -> list[dict[str, t.Any]]:
        with self._connect() as conn:
            cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY seq")
            return [dict(zip(COLUMNS, row)) for row in cursor]

    def records(self, *, patch_id: str | None = None) -> list[dict[str, t.Any]]:
        """Records with their body parsed (an unparseable body is kept as text under 'raw')."""
        with self._connect() as conn:
            if patch_id is None:
                cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY seq")
            else:
                cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records WHERE patch_id = ? ORDER BY seq", (patch_id,))
            rows = [dict(zip(COLUMNS, row)) for row in cursor]
        for row in rows:
            try:
                row["body"] = json.loads(row["body"])
            except ValueError:
                row["body"] = {"raw": row["body"]}
        return rows

    def head(self) -> dict[str, t.Any]:
        with self._connect() as conn:
            count = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return {"records": count, "seq": last[0] if last else 0, "head": last[1] if last else GENESIS}

    def latest(self, kind: str, *, patch_id: str) -> dict[str, t.Any] | None:
        with self._connect() as conn:
            row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records WHERE kind = ? AND patch_id = ? ORDER BY seq DESC LIMIT 1",
                               (kind, patch_id)).fetchone()
        if row is None:
            return None
        record = dict(zip(COLUMNS, row))
        record["body"] = json.loads(record["body"])
        return record


class StoreRegistry:
    """The patch registry in the run-state store (fleetpatch_state_backend postgresql: shared by every controller and AWX
    job): the same records and hash chain as the SQLite ledger, in the store's fp_records table, so verify, queries,
    export and checkpoints work on either. Appends are one transaction each, writers serialized by the store."""

    def __init__(self, store: t.Any) -> None:
        self.store = store
        self.path = store.describe()

    def _call(self, operation: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return getattr(self.store, operation)(*args, **kwargs)
        except StoreError as exc:
            raise RegistryError(f"patch registry in the {exc}") from None

    @property
    def registry_id(self) -> str:
        return t.cast(str, self._call("registry_id"))

    def append(self, kind: str, body: t.Mapping[str, t.Any], *, patch_id: str | None = None, run_id: str | None = None,
               correlation_id: str | None = None, ts: str | None = None, redactor: Redactor | None = None) -> dict[str, t.Any]:
        text = (redactor or Redactor()).dumps(dict(body), structural=True)
        record = self._call("registry_append", kind, text, patch_id=patch_id, run_id=run_id, correlation_id=correlation_id,
                            ts=ts or utc_ts(), digest=record_hash)
        return dict(record, body=json.loads(text))

    def rows(self) -> list[dict[str, t.Any]]:
        return t.cast(list, self._call("registry_rows"))

    def records(self, *, patch_id: str | None = None) -> list[dict[str, t.Any]]:
        return [_parsed(row) for row in self._call("registry_rows", patch_id=patch_id)]

    def head(self) -> dict[str, t.Any]:
        return t.cast(dict, self._call("registry_head"))

    def latest(self, kind: str, *, patch_id: str) -> dict[str, t.Any] | None:
        found = self._call("registry_rows", patch_id=patch_id, kind=kind, last=True)
        return _parsed(found[0]) if found else None


# either ledger: the SQLite file or the PostgreSQL store's records
Ledger = t.Union[Registry, StoreRegistry]


def _parsed(row: dict[str, t.Any]) -> dict[str, t.Any]:
    try:
        return dict(row, body=json.loads(row["body"]))
    except ValueError:
        return dict(row, body={"raw": row["body"]})


def open_registry(state_dir: str, *, backend: str | None = None, path: str | None = None, create: bool = True) -> Ledger:
    """The patch registry of a rollout: in the PostgreSQL run-state store when fleetpatch_state_backend is postgresql,
    else the SQLite ledger (path, default <state_dir>/registry.sqlite3)."""
    if backend == "postgresql":
        try:
            return StoreRegistry(open_store(state_dir, backend=backend))
        except StoreError as exc:
            raise RegistryError(f"patch registry: {exc}") from None
    return Registry(path or registry_paths(state_dir)["registry"], create=create)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def write_checkpoint(registry: Ledger, directory: str, *, run_id: str | None = None, signing_key: str | None = None,
                     now: str | None = None) -> dict[str, t.Any]:
    """Write the chain head to its own file (and a .sig next to it when a key is given). Returns what was written."""
    head = registry.head()
    now = now or utc_ts()
    document = {"type": "fleetpatch.registry.checkpoint", "format": FORMAT, "registry_id": registry.registry_id,
                "registry": registry.path, "records": head["records"], "seq": head["seq"], "head": head["head"], "at": now,
                "controller": socket.gethostname(), "run_id": run_id}
    stamp = re.sub(r"[^0-9T]", "", now)[:21]
    path = os.path.join(directory, f"checkpoint-{head['seq']:09d}-{stamp}.json")
    os.makedirs(directory, mode=0o750, exist_ok=True)
    write_file_atomic(path, json.dumps(document, sort_keys=True, indent=2) + "\n", mode=0o644)
    result: dict[str, t.Any] = {"path": path, "seq": head["seq"], "head": head["head"], "signed": False, "signature": None}
    if signing_key:
        result.update(sign_file(path, signing_key))
    return result


def sign_file(path: str, key: str) -> dict[str, t.Any]:
    key = os.path.expanduser(key)
    try:
        done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", key, "-n", SIGN_NAMESPACE, path],
                              capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"signed": False, "signature": None, "sign_error": f"ssh-keygen -Y sign failed: {exc}"}
    if done.returncode != 0 or not os.path.exists(path + ".sig"):
        return {"signed": False, "signature": None, "sign_error": f"ssh-keygen -Y sign failed: {(done.stderr or done.stdout).strip()}"}
    return {"signed": True, "signature": path + ".sig"}


def check_signature(path: str, *, allowed_signers: str | None = None, identity: str | None = None) -> tuple[bool, str]:
    """(valid, detail) of path.sig: against allowed_signers (and identity) when given, else only that it is intact."""
    signature = path + ".sig"
    if allowed_signers:
        command = ["ssh-keygen", "-Y", "verify", "-f", os.path.expanduser(allowed_signers), "-I", identity or "fleetpatch",
                   "-n", SIGN_NAMESPACE, "-s", signature]
    else:
        command = ["ssh-keygen", "-Y", "check-novalidate", "-n", SIGN_NAMESPACE, "-s", signature]
    try:
        with open(path, "rb") as handle:
            done = subprocess.run(command, stdin=handle, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run ssh-keygen: {exc}"
    detail = (done.stdout or done.stderr).strip()
    return done.returncode == 0, detail


def read_checkpoints(directory: str) -> list[tuple[str, dict[str, t.Any] | None]]:
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "checkpoint-*.json"))):
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            document = None
        found.append((path, document if isinstance(document, dict) else None))
    return found


# ---------------------------------------------------------------------------------------------------------
# Verification


def verify_chain(rows: t.Iterable[t.Mapping[str, t.Any]], *, source: str = "registry") -> tuple[list[Finding], dict[int, str], dict[str, t.Any]]:
    """Check a ledger (registry rows or an export, in stored order). Returns findings, seq -> stored hash of every
    record, and the head ({records, seq, head})."""
    findings: list[Finding] = []
    hashes: dict[int, str] = {}
    by_hash: dict[str, int] = {}
    by_content: dict[tuple[t.Any, ...], int] = {}
    prev_hash, expected, count, last_seq = GENESIS, 1, 0, 0
    rows = list(rows)
    known_hashes = {row.get("hash"): row.get("seq") for row in rows}
    for row in rows:
        count += 1
        seq = row.get("seq")
        if not isinstance(seq, int):
            findings.append(Finding("corrupt", f"{source} row {count}", f"row {count} has no valid seq"))
            continue
        where = f"{source} record #{seq} ({row.get('kind')}, patch {row.get('patch_id')})"
        values = [row.get(column) for column in COLUMNS[:-2]]
        try:
            recomputed = record_hash(*values, row.get("prev") or "")  # type: ignore[arg-type]
        except TypeError:
            recomputed = ""
        stored = row.get("hash")
        content = (row.get("ts"), row.get("kind"), row.get("patch_id"), row.get("run_id"), row.get("body"))
        if stored in by_hash or content in by_content:
            original = by_hash.get(stored) or by_content.get(content)  # type: ignore[arg-type]
            findings.append(Finding("duplicated", where, f"record #{seq} duplicates record #{original}"))
            continue
        by_hash[str(stored)] = seq
        by_content[content] = seq
        if seq > expected:
            findings.append(Finding("deleted", where, f"record(s) #{expected}{'' if seq - 1 == expected else f'-#{seq - 1}'}"
                                    f" are missing before record #{seq}: deleted"))
        elif seq < expected:
            findings.append(Finding("reordered", where, f"record #{seq} comes after record #{expected - 1}: reordered"))
        if recomputed != stored:
            moved = next((other for other in range(max(1, seq - 64), seq + 65)
                          if other != seq and record_hash(other, *values[1:], row.get("prev") or "") == stored), None)
            if moved is not None:
                findings.append(Finding("reordered", where, f"position #{seq} holds record #{moved}: records were reordered"))
            else:
                findings.append(Finding("edited", where, f"record #{seq} does not match its own hash: it was edited"))
        elif row.get("prev") != prev_hash and seq == expected:
            if row.get("prev") in known_hashes and known_hashes[row.get("prev")] != seq - 1:
                findings.append(Finding("reordered", where, f"record #{seq} was chained after record #{known_hashes[row.get('prev')]},"
                                        f" not after #{seq - 1}: records were reordered"))
            else:
                findings.append(Finding("edited", f"{source} record #{seq - 1}", f"record #{seq - 1} is not the record #{seq} was"
                                        " chained to: it was edited and its hash recomputed, or replaced"))
        hashes[seq] = str(stored)
        prev_hash, expected, last_seq = str(stored), seq + 1, seq
    return findings, hashes, {"records": count, "seq": last_seq, "head": prev_hash}


def verify_all(state_dir: str, *, registry_path: str | None = None, checkpoint_dir: str | None = None,
               allowed_signers: str | None = None, identity: str | None = None, events: bool = True,
               backend: str | None = None) -> dict[str, t.Any]:
    """Verify the registry (the SQLite ledger, or the PostgreSQL store's records with backend postgresql), its
    checkpoints and every event file it knows or finds under runs/."""
    paths = registry_paths(state_dir, registry_path=registry_path, checkpoint_dir=checkpoint_dir)
    findings: list[Finding] = []
    if backend != "postgresql" and not os.path.exists(paths["registry"]):
        findings.append(Finding("missing_file", paths["registry"], "there is no registry file"))
        return _report(paths, findings, {}, [], 0)
    registry = open_registry(state_dir, backend=backend, path=paths["registry"], create=False)
    paths["registry"] = registry.path
    rows = registry.rows()
    chain_findings, hashes, head = verify_chain(rows)
    findings.extend(chain_findings)
    registry_id = registry.registry_id
    checkpoints = read_checkpoints(paths["checkpoints"])
    if not checkpoints:
        findings.append(Finding("no_checkpoint", paths["checkpoints"], "no checkpoint: records cut off the end of the registry"
                                " cannot be detected", "warning"))
    for path, document in checkpoints:
        name = os.path.basename(path)
        if document is None or document.get("type") != "fleetpatch.registry.checkpoint":
            findings.append(Finding("corrupt", name, f"checkpoint {name} is not a readable checkpoint"))
            continue
        if document.get("registry_id") != registry_id:
            findings.append(Finding("foreign_checkpoint", name, f"checkpoint {name} belongs to another registry"
                                    f" ({document.get('registry_id')}), or the registry was replaced", "warning"))
            continue
        if os.path.exists(path + ".sig") or allowed_signers:
            valid, detail = check_signature(path, allowed_signers=allowed_signers, identity=identity) if os.path.exists(path + ".sig") \
                else (False, "no signature file")
            if not valid:
                findings.append(Finding("bad_signature", name, f"checkpoint {name}: signature does not verify ({detail})"))
                continue
        seq, recorded = document.get("seq"), document.get("head")
        if not isinstance(seq, int) or seq == 0:
            continue
        if seq > head["seq"]:
            findings.append(Finding("truncated", f"registry after record #{head['seq']}",
                                    f"checkpoint {name} ({document.get('at')}) recorded {seq} records with head"
                                    f" {str(recorded)[:12]}..., the registry ends at #{head['seq']}: records were cut off the end"))
        elif hashes.get(seq) is None:
            findings.append(Finding("deleted", f"registry record #{seq}", f"checkpoint {name} anchors record #{seq}, which is missing"))
        elif hashes[seq] != recorded:
            findings.append(Finding("edited", f"registry at or before record #{seq}",
                                    f"record #{seq} has hash {hashes[seq][:12]}..., checkpoint {name} recorded {str(recorded)[:12]}...:"
                                    " the chain was rewritten at or before that record"))
    files: list[dict[str, t.Any]] = []
    if events:
        files = _verify_event_files(state_dir, registry.records(), findings,
                                    store=registry.store if isinstance(registry, StoreRegistry) else None)
    return _report(paths, findings, head, files, len(checkpoints))


def _report(paths: dict[str, str], findings: list[Finding], head: dict[str, t.Any], files: list[dict[str, t.Any]],
            checkpoints: int) -> dict[str, t.Any]:
    tampered = [finding for finding in findings if finding.severity == "tamper"]
    return {"ok": not tampered, "registry": paths["registry"], "checkpoint_dir": paths["checkpoints"], "head": head,
            "checkpoints": checkpoints, "event_files": files, "findings": [finding.as_dict() for finding in findings],
            "tampered": len(tampered)}


def _verify_event_files(state_dir: str, records: list[dict[str, t.Any]], findings: list[Finding], *, store: t.Any = None) -> list[dict[str, t.Any]]:
    anchors: dict[str, list[dict[str, t.Any]]] = collections.defaultdict(list)
    pruned: dict[str, dict[str, t.Any]] = {}
    # event files of runs whose records say the callback did not run: no log was ever written (not deleted)
    unrecorded: dict[str, int] = {}
    for record in records:
        body = record["body"]
        events = body.get("events") if isinstance(body, dict) else None
        if isinstance(events, dict) and events.get("path"):
            path = _absolute(events["path"], state_dir)
            anchors.setdefault(path, [])
            if isinstance(events.get("seq"), int) and events.get("head"):
                anchors[path].append({"seq": events["seq"], "head": events["head"], "where": f"registry record #{record['seq']}"})
            log = body.get("log") if isinstance(body.get("log"), dict) else {}
            if events.get("callback") is False or log.get("callback") is False:
                unrecorded.setdefault(path, record["seq"])
        if record["kind"] == "retention.pruned" and isinstance(body, dict):
            for item in body.get("files", []):
                pruned[_absolute(item["path"], state_dir)] = {"seq": record["seq"], **item}
    for path in glob.glob(os.path.join(state_dir, "runs", "*", "events.jsonl")):
        anchors.setdefault(os.path.abspath(path), [])
    reports = []
    for path in sorted(anchors):
        kept = _kept_lines(store, path) if store is not None and not os.path.exists(path) else None
        if kept is not None:
            # no file here (another controller wrote it): the postgresql store's copy of its lines is what is verified
            reports.append(_verify_kept(kept, path, anchors[path], state_dir, findings))
            continue
        if not os.path.exists(path):
            if path in pruned:
                findings.append(Finding("pruned", path, f"removed by retention (registry record #{pruned[path]['seq']})", "info"))
            elif path in unrecorded and not anchors[path]:
                # nothing ever sealed this file, and the run's own records say no callback wrote it
                findings.append(Finding("not_recorded", path, "no event log was recorded for this run: the fleetpatch.rollout.events"
                                        f" callback was not enabled (registry record #{unrecorded[path]}); not tampering", "warning"))
            else:
                findings.append(Finding("deleted", path, "the registry links this event file, but it is gone"))
            continue
        report = verify_event_file(path, anchors=anchors[path])
        for finding in report.findings:
            findings.append(Finding(finding.kind, f"{relative_to(path, state_dir)}: {finding.where}", finding.message, finding.severity))
        if not anchors[path] and report.lines:
            findings.append(Finding("unsealed", relative_to(path, state_dir) or path, "no registry record anchors this file:"
                                    " lines cut off its end cannot be detected", "warning"))
        reports.append({"path": path, "ok": report.ok, "lines": report.lines, "last_seq": report.last_seq})
    return reports


def _kept_lines(store: t.Any, path: str) -> list[str] | None:
    """The lines the postgresql store keeps of the run whose log is path (runs/<run_id>/events.jsonl), or None."""
    try:
        lines = store.event_lines(os.path.basename(os.path.dirname(path)))
    except StoreError as exc:
        raise RegistryError(f"event log lines in the {exc}") from None
    return lines or None


def _verify_kept(lines: list[str], path: str, anchors: list[dict[str, t.Any]], state_dir: str, findings: list[Finding]) -> dict[str, t.Any]:
    with tempfile.TemporaryDirectory(prefix="fleetpatch-verify-") as scratch:
        copy = os.path.join(scratch, "events.jsonl")
        with open(copy, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write("\n".join(lines) + "\n")
        report = verify_event_file(copy, anchors=anchors)
    where = f"{relative_to(path, state_dir)} (postgresql store)"
    for finding in report.findings:
        findings.append(Finding(finding.kind, f"{where}: {finding.where}", finding.message, finding.severity))
    if not anchors and report.lines:
        findings.append(Finding("unsealed", where, "no registry record anchors this log: lines cut off its end cannot be detected", "warning"))
    return {"path": path, "store": True, "ok": report.ok, "lines": report.lines, "last_seq": report.last_seq}


def _absolute(path: str, state_dir: str) -> str:
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(state_dir, path))


def verify_export(path: str) -> dict[str, t.Any]:
    rows = []
    findings: list[Finding] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                findings.append(Finding("corrupt", f"{os.path.basename(path)} line {number}", f"line {number} is not valid JSON"))
    chain_findings, _hashes, head = verify_chain(rows, source=os.path.basename(path))
    findings.extend(chain_findings)
    tampered = [finding for finding in findings if finding.severity == "tamper"]
    return {"ok": not tampered, "export": path, "head": head, "findings": [finding.as_dict() for finding in findings], "tampered": len(tampered)}


# ---------------------------------------------------------------------------------------------------------
# Queries: a patch's record is the fold of its ledger entries.


def _approval_events(record: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    approval = record["body"].get("approval") or {}
    return [{"at": entry.get("at") or record["ts"], "what": "approved", "detail": f"approved by {entry['by']}"
             + (f" ({entry['role']})" if entry.get("role") else ""), "seq": record["seq"]} for entry in approval.get("approvals", [])]


def fold_patches(records: t.Iterable[dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    patches: dict[str, dict[str, t.Any]] = {}
    for record in records:
        patch_id = record.get("patch_id")
        if not patch_id:
            continue
        body = record["body"] if isinstance(record["body"], dict) else {}
        view = patches.setdefault(patch_id, {"patch_id": patch_id, "state": "registered", "runs": 0, "hosts": {}, "timeline": [],
                                             "log_incomplete": False, "events": [], "overrides": []})
        kind, at = record["kind"], record["ts"]
        timeline = view["timeline"]
        if kind == "patch.registered":
            fields = ("service", "target_version", "base_version", "classification", "severity", "purpose", "justification",
                      "change_type", "affected_versions", "regression_risk")
            view.update({key: body.get(key) for key in fields})
            view["artifact"] = body.get("artifact")
            view["approval"] = body.get("approval")
            view.setdefault("registered_at", at)
            if view["state"] in ("registered", "approved"):
                view["state"] = "approved" if (body.get("approval") or {}).get("approved") else "registered"
            requester = (body.get("approval") or {}).get("requested_by")
            timeline.append({"at": at, "what": "registered", "detail": f"requested by {requester or 'unknown'}: {body.get('purpose') or ''}".strip(),
                             "seq": record["seq"]})
            timeline.extend(_approval_events(record))
        elif kind == "patch.override":
            override = body.get("override") if isinstance(body.get("override"), dict) else {}
            view["overrides"].append({"seq": record["seq"], "at": at, "status": body.get("status"), "reason": body.get("reason"),
                                      **{key: override.get(key) for key in ("ticket", "requested_by", "approvers", "expires", "hosts", "breaks",
                                                                            "justification")}})
            detail = (f"{body.get('status')}: {override.get('ticket') or '-'} by {override.get('requested_by') or '-'}"
                      + (f", approved by {', '.join(override['approvers'])}" if isinstance(override.get("approvers"), list)
                         and all(isinstance(name, str) for name in override["approvers"]) else "")
                      + (f", until {override['expires']}" if override.get("expires") else "")
                      + (f" ({body['reason']})" if body.get("reason") else ""))
            timeline.append({"at": at, "what": "override", "detail": detail, "seq": record["seq"]})
        elif kind == "patch.prestaged":
            if view["state"] in ("registered", "approved"):
                view["state"] = "prestaged"
            timeline.append({"at": at, "what": "prestaged", "detail": body.get("summary") or f"{len(body.get('hosts') or [])} host(s)",
                             "seq": record["seq"]})
        elif kind == "run.started":
            view["runs"] += 1
            view["state"] = "running"
            view["last_run"] = {"run_id": record.get("run_id"), "correlation_id": record.get("correlation_id"), "started": at,
                                "attempt": body.get("attempt")}
            timeline.append({"at": at, "what": "started", "detail": f"run {record.get('run_id')} attempt {body.get('attempt')}"
                             f" (correlation id {record.get('correlation_id')}){' resumed' if body.get('resumed') else ''}", "seq": record["seq"]})
            if (body.get("events") or {}).get("path"):
                view["events"].append(body["events"]["path"])
        elif kind == "run.finished":
            status = body.get("status") or "interrupted"
            view["state"] = status
            view.setdefault("last_run", {}).update(status=status, finished=at)
            for host, outcome in (body.get("hosts") or {}).items():
                view["hosts"][host] = outcome
            for entry in body.get("timeline") or []:
                timeline.append({"at": entry.get("at") or at, "what": entry.get("what", "wave"), "detail": entry.get("detail", ""),
                                 "seq": record["seq"]})
            if body.get("rolled_back"):
                timeline.append({"at": at, "what": "rolled back", "detail": f"{len(body['rolled_back'])} host(s): "
                                 + ", ".join(body["rolled_back"][:20]), "seq": record["seq"]})
            log = body.get("log") or {}
            if log.get("complete") is False:
                view["log_incomplete"] = True
            counts = body.get("counts") or {}
            timeline.append({"at": at, "what": "completed" if status == "rolled_out" else f"ended {status}",
                             "detail": ", ".join(f"{key} {value}" for key, value in sorted(counts.items())), "seq": record["seq"]})
        elif kind == "log.sealed":
            if body.get("complete") is False:
                view["log_incomplete"] = True
                timeline.append({"at": at, "what": "log incomplete", "detail": str(body.get("reason")), "seq": record["seq"]})
        elif kind == "log.incomplete":
            view["log_incomplete"] = True
            timeline.append({"at": at, "what": "log incomplete", "detail": str(body.get("reason")), "seq": record["seq"]})
    for view in patches.values():
        view["timeline"].sort(key=lambda entry: (entry["at"], entry["seq"]))
    return patches


def query_patches(registry: Ledger, *, state: str | None = None) -> list[dict[str, t.Any]]:
    views = fold_patches(registry.records())
    rows = []
    for view in views.values():
        if state and view["state"] != state:
            continue
        counts = collections.Counter(entry.get("outcome") for entry in view["hosts"].values())
        rows.append({"patch_id": view["patch_id"], "state": view["state"], "service": view.get("service"),
                     "target_version": view.get("target_version"), "classification": view.get("classification"),
                     "severity": view.get("severity"), "requested_by": (view.get("approval") or {}).get("requested_by"),
                     "approvers": (view.get("approval") or {}).get("approvers", []), "runs": view["runs"],
                     "registered_at": view.get("registered_at"), "last_run": view.get("last_run"), "hosts": dict(sorted(counts.items())),
                     "log_incomplete": view["log_incomplete"]})
    return sorted(rows, key=lambda row: (row.get("registered_at") or "", row["patch_id"]))


def query_hosts(registry: Ledger, patch_id: str) -> list[dict[str, t.Any]]:
    view = fold_patches(registry.records(patch_id=patch_id)).get(patch_id)
    if view is None:
        raise RegistryError(f"the registry has no patch {patch_id}")
    return [dict(host=host, **outcome) for host, outcome in sorted(view["hosts"].items())]


def query_timeline(registry: Ledger, patch_id: str) -> dict[str, t.Any]:
    view = fold_patches(registry.records(patch_id=patch_id)).get(patch_id)
    if view is None:
        raise RegistryError(f"the registry has no patch {patch_id}")
    return {key: view.get(key) for key in ("patch_id", "state", "service", "target_version", "purpose", "justification",
                                           "classification", "severity", "change_type", "affected_versions", "regression_risk",
                                           "artifact", "approval", "overrides", "events", "log_incomplete", "timeline")}


# ---------------------------------------------------------------------------------------------------------
# Exports and retention


def export(registry: Ledger, directory: str, *, dry_run: bool = False, now: str | None = None) -> dict[str, t.Any]:
    """Write every record as one JSON line (verifiable alone with verify_export) and record the export."""
    rows = registry.rows()
    head = registry.head()
    now = now or utc_ts()
    path = os.path.join(directory, f"registry-{head['seq']:09d}-{re.sub(r'[^0-9T]', '', now)[:15]}.jsonl")
    if dry_run:
        return {"path": path, "records": len(rows), "head": head["head"], "written": False}
    content = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    os.makedirs(directory, mode=0o750, exist_ok=True)
    write_file_atomic(path, content, mode=0o640)
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    registry.append("export.written", {"path": path, "records": len(rows), "head": head["head"], "sha256": digest})
    return {"path": path, "records": len(rows), "head": head["head"], "sha256": digest, "written": True}


def _age_days(path: str, now: float) -> float:
    return (now - os.stat(path).st_mtime) / 86400.0


def retention(state_dir: str, *, registry_path: str | None = None, export_dir: str | None = None, events_max_age_days: float | None = None,
              exports_max_age_days: float | None = None, keep_exports: int = 1, dry_run: bool = True,
              now: float | None = None, backend: str | None = None) -> dict[str, t.Any]:
    """Remove event files and registry exports older than the given ages. Event files of a run that holds a lock in the
    run-state store (backend: fleetpatch_state_backend, default embedded) are kept. Before anything is removed, the
    registry records what goes (path, size, sha256, last seq and hash), so verify reports those files as pruned, not
    deleted. dry_run only lists."""
    now = _dt.datetime.now(_dt.timezone.utc).timestamp() if now is None else now
    paths = registry_paths(state_dir, registry_path=registry_path, export_dir=export_dir)
    chosen: list[dict[str, t.Any]] = []
    kept: list[dict[str, t.Any]] = []
    store: Store | None = None
    if events_max_age_days is not None:
        for path in sorted(glob.glob(os.path.join(state_dir, "runs", "*", "events.jsonl"))):
            run_id = os.path.basename(os.path.dirname(path))
            age = _age_days(path, now)
            if age < events_max_age_days:
                continue
            # the run-state store says which runs are live (opened on first need: only old event files ask)
            store = store or open_store(state_dir, backend=backend)
            if store.read_lock(run_id) is not None:
                kept.append({"path": path, "kind": "events", "reason": f"run {run_id} holds a lock (running?)"})
                continue
            chosen.append({"path": path, "kind": "events", "run_id": run_id, "age_days": round(age, 2)})
    if exports_max_age_days is not None:
        exports = sorted(glob.glob(os.path.join(paths["exports"], "registry-*.jsonl")), key=os.path.getmtime, reverse=True)
        for index, path in enumerate(exports):
            age = _age_days(path, now)
            if index < keep_exports:
                if age >= exports_max_age_days:
                    kept.append({"path": path, "kind": "export", "reason": f"one of the {keep_exports} newest exports"})
                continue
            if age >= exports_max_age_days:
                chosen.append({"path": path, "kind": "export", "age_days": round(age, 2)})
    for item in chosen:
        item["bytes"] = os.path.getsize(item["path"])
        item["sha256"] = sha256_file(item["path"])
        if item["kind"] == "events":
            item.update(file_head(item["path"]) or {"seq": 0, "head": GENESIS})
    result = {"dry_run": dry_run, "remove": chosen, "keep": kept, "removed": []}
    if dry_run or not chosen:
        return result
    registry = open_registry(state_dir, backend=backend, path=paths["registry"])
    files = [dict(item, path=relative_to(item["path"], state_dir)) for item in chosen]
    record = registry.append("retention.pruned", {"files": files, "events_max_age_days": events_max_age_days,
                                                  "exports_max_age_days": exports_max_age_days})
    for item in chosen:
        try:
            os.unlink(item["path"])
            result["removed"].append(item["path"])
        except FileNotFoundError:
            continue
    result["record"] = record["seq"]
    return result
