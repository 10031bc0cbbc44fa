# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the slices of an AWX sliced job acting as one rollout (controller only). Not a public API.

AWX job slicing runs N copies of the playbook, each over ``sorted(hosts)[i::N]`` of the inventory, in N containers
that share nothing but the run-state store (PostgreSQL, docs/state.md). A slice names itself with
``fleetpatch_slice_number`` / ``fleetpatch_slice_count`` (AWX hands its slice fields to the inventory script only).
The slices of one launch meet under one key, ``<run_id>@<correlation id>`` (``awx-workflow-<id>``: every slice of one
sliced job shares the workflow job), so a re-launch (resume) meets again and never sees an earlier launch's barriers.

- **One plan.** No slice holds the whole inventory, so each registers its hosts' planning variables
  (``register_slice``) and waits, bounded by ``fleetpatch_slice_wait`` seconds, until all N did; every slice then
  compiles the plan over the union, at one clock (the moment the last slice joined, unless ``rollout_clock`` is
  given), so equal inputs give equal bytes: the first to store it creates it, the others attach by digest
  (``attach_plan``), and a slice with another policy or manifest is refused naming both digests. A slice that never
  joins is named when the wait ends. Each slice runs only its own hosts of each global batch (``own_part``).
- **Barriers per batch.** Before global batch k a slice passes every earlier batch without hosts of its own, then waits
  until every slice finished batch k-1 (``before_batch``); its gate arrives at k when its part is gated
  (``after_batch``). A slice whose lease (``fleetpatch_slice_lease`` seconds, renewed at every batch and while it
  waits) expired is reported dead and not waited for. The canary is batch 0..c: slices without canary hosts wait.
- **One error budget.** Outcomes of every slice go to one run in the store; before each batch a slice counts the
  budget across all of them, so with budget B, B failures continue and B+1 stop every slice before its next batch
  (all of batch k's outcomes are recorded before any slice starts k+1). A gate that stops records the halt
  (``halt_slices``): every other slice stops before its next batch.
- **One end.** At the finish every slice passes the rest of the batches and waits for the others (``at_finish``); all
  of them report the same run status.

Every call reports the CPU time this process spent in coordination (``cpu_seconds``), measured around the store
calls (bench/slice_bench.py sums it).
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import error_budget_spent

__all__ = [
    "SLICE_VARS",
    "SliceContext",
    "SliceError",
    "after_batch",
    "at_finish",
    "before_batch",
    "join_slices",
    "own_part",
    "slice_context",
    "slice_from_plan",
]

SLICE_VARS = ("fleetpatch_slice_number", "fleetpatch_slice_count")
LEASE_VAR = "fleetpatch_slice_lease"
WAIT_VAR = "fleetpatch_slice_wait"
_DEFAULT_LEASE = 600
_DEFAULT_WAIT = 900.0
_POLL = 0.25
_DIGITS = re.compile(r"[0-9]{1,6}")


class SliceError(FleetpatchError):
    """The slices of a sliced job cannot act as one rollout (bad slice variables, a slice that never joined, ...)."""


@dataclasses.dataclass(frozen=True)
class SliceContext:
    """One slice of a sliced run: its number of count, the key the slices of one launch meet under, lease and wait."""

    number: int
    count: int
    key: str
    lease: int
    wait: float
    lock_id: str

    def as_result(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


def _whole(name: str, value: t.Any, *, low: int, high: int) -> int:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise SliceError(f"{name}: {str(value)[:40]!r} is not a whole number from {low} to {high}")
    return int(text)


def slice_context(task_vars: t.Mapping[str, t.Any], *, run_id: str, generation: str) -> SliceContext | None:
    """The slice this play is (None when the run is not sliced: no slice variables, or a count of 1)."""
    number, count = (task_vars.get(name) for name in SLICE_VARS)
    if number in (None, "") and count in (None, ""):
        return None
    if number in (None, "") or count in (None, ""):
        raise SliceError(f"{SLICE_VARS[0]} and {SLICE_VARS[1]} go together")
    slices = _whole(SLICE_VARS[1], count, low=1, high=1000)
    slice_no = _whole(SLICE_VARS[0], number, low=1, high=slices)
    if slices == 1:
        return None
    if not generation:
        raise SliceError("the slices of one launch meet under their shared correlation id (awx_workflow_job_id, or"
                         " FLEETPATCH_CORRELATION_ID outside AWX): this slice has none")
    lease = _whole(LEASE_VAR, task_vars.get(LEASE_VAR, _DEFAULT_LEASE), low=5, high=86400)
    wait = float(_whole(WAIT_VAR, task_vars.get(WAIT_VAR, int(_DEFAULT_WAIT)), low=1, high=86400))
    return SliceContext(number=slice_no, count=slices, key=f"{run_id}@{generation}", lease=lease, wait=wait,
                        lock_id=f"{run_id}#slice-{slice_no}-of-{slices}")


def slice_from_plan(planned: t.Mapping[str, t.Any]) -> SliceContext | None:
    """The slice a plan result was compiled for (rollout_plan returns it under slice), or None."""
    found = planned.get("slice")
    if not isinstance(found, dict):
        return None
    return SliceContext(**{field.name: found[field.name] for field in dataclasses.fields(SliceContext)})


def _heartbeat(store: t.Any, ctx: SliceContext, identity: t.Mapping[str, t.Any]) -> None:
    store.join_slice(ctx.key, slice_no=ctx.number, slices=ctx.count, owner=str(identity.get("owner", "?")),
                     controller=str(identity.get("controller", "?")), pid=int(identity.get("pid", 0)), ttl_seconds=ctx.lease)


def join_slices(store: t.Any, ctx: SliceContext, *, hosts: t.Mapping[str, t.Mapping[str, t.Any]],
                identity: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Register this slice's hosts and wait until every slice did: {"hosts": the union, "last_joined", "cpu_seconds"}.
    SliceError names the slices that did not join within ctx.wait seconds, or a host two slices both hold."""
    cpu = time.process_time()
    _heartbeat(store, ctx, identity)
    store.register_slice(ctx.key, slice_no=ctx.number, slices=ctx.count, hosts=hosts)
    deadline = time.monotonic() + ctx.wait
    beat = time.monotonic()
    while True:
        roster = store.slice_roster(ctx.key)
        other = {number: count for number, count in roster["slices"].items() if count != ctx.count}
        if other:
            raise SliceError(f"slice {min(other)} of this launch was started as one of {other[min(other)]} slices, this one as one of"
                             f" {ctx.count}: every slice must have the same fleetpatch_slice_count")
        missing = [number for number in range(1, ctx.count + 1) if number not in roster["hosts"]]
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise SliceError(f"slice(s) {', '.join(map(str, missing))} of {ctx.count} did not join {ctx.key} within {ctx.wait:g} s"
                             f" ({WAIT_VAR}); no host was touched")
        if time.monotonic() - beat > ctx.lease / 3:
            _heartbeat(store, ctx, identity)
            beat = time.monotonic()
        time.sleep(_POLL)
    union: dict[str, dict[str, t.Any]] = {}
    owner: dict[str, int] = {}
    for number in sorted(roster["hosts"]):
        for host, variables in roster["hosts"][number].items():
            if host in owner:
                raise SliceError(f"host {host!r} is in slice {owner[host]} and in slice {number}: the slices' inventories overlap")
            owner[host] = number
            union[host] = dict(variables)
    return {"hosts": union, "last_joined": roster["last_joined"], "cpu_seconds": time.process_time() - cpu}


def own_part(plan: t.Mapping[str, t.Any], own: t.Iterable[str]) -> tuple[list[int], list[str]]:
    """(serial, host order) of this slice: its hosts of each global batch, in plan order; batches without them left out."""
    mine = set(own)
    parts = [[host for host in batch["hosts"] if host in mine] for batch in plan["batches"]]
    return [len(part) for part in parts if part], [host for part in parts for host in part]


def _spent(store: t.Any, run_id: str, plan: t.Mapping[str, t.Any]) -> tuple[int, bool]:
    # an empty record_outcomes is the store's atomic count of the hosts spending the budget, across every slice
    _hosts, spent = store.record_outcomes(run_id, {}, all_hosts=False)
    budget = plan["error_budget"]
    return spent, error_budget_spent(spent, budget["limit"], budget["halt_when"])


def before_batch(store: t.Any, ctx: SliceContext, *, run_id: str, plan: t.Mapping[str, t.Any], index: int,
                 identity: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Wait until every slice finished batch index-1 (dead slices not waited for), then tell whether batch index may
    start: {"stop", "reason", "halt", "dead", "waiting", "spent", "waited_seconds", "cpu_seconds"}."""
    cpu, started = time.process_time(), time.monotonic()
    _heartbeat(store, ctx, identity)
    if index:
        store.pass_barriers(ctx.key, waves=list(range(index)), slice_no=ctx.number, slices=ctx.count)
    deadline, beat = started + ctx.wait, started
    status: dict[str, t.Any] = {"open": True, "dead": [], "waiting": []}
    while True:
        halt = store.slice_halt(ctx.key)
        spent, exhausted = _spent(store, run_id, plan)
        if halt is None and exhausted:
            budget = plan["error_budget"]
            halt = store.halt_slices(ctx.key, slice_no=ctx.number, reason={
                "trigger": f"error budget spent across the slices: {spent} failed host(s), limit {budget['limit']} ({budget['halt_when']})",
                "batch": index})
        if halt is not None or not index:
            break
        status = store.barrier(ctx.key, wave=index - 1, slices=ctx.count)
        if status["open"] or time.monotonic() >= deadline:
            break
        if time.monotonic() - beat > ctx.lease / 3:
            _heartbeat(store, ctx, identity)
            beat = time.monotonic()
        time.sleep(_POLL)
    reason = None
    if halt is not None:
        reason = f"slice {halt['slice']} stopped the run: {halt['reason'].get('trigger') or halt['reason']}"
    elif not status["open"]:
        reason = (f"slice(s) {', '.join(map(str, status['waiting']))} did not finish batch {index - 1} within {ctx.wait:g} s ({WAIT_VAR})")
    return {"stop": reason is not None, "reason": reason, "halt": halt, "dead": status["dead"], "waiting": status["waiting"], "spent": spent,
            "waited_seconds": round(time.monotonic() - started, 3), "cpu_seconds": time.process_time() - cpu}


def after_batch(store: t.Any, ctx: SliceContext, *, index: int, stop: t.Mapping[str, t.Any] | None,
                identity: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """This slice gated its part of batch index (and stopped the run when stop names why): the barrier as it stands."""
    cpu = time.process_time()
    _heartbeat(store, ctx, identity)
    halt = store.halt_slices(ctx.key, slice_no=ctx.number, reason=dict(stop, batch=index)) if stop else store.slice_halt(ctx.key)
    status = store.arrive(ctx.key, wave=index, slice_no=ctx.number, slices=ctx.count)
    return {"halt": halt, "dead": status["dead"], "cpu_seconds": time.process_time() - cpu}


def at_finish(store: t.Any, ctx: SliceContext, *, plan: t.Mapping[str, t.Any], identity: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """This slice is done: pass every batch, wait (bounded) until every slice is: {"halt", "dead", "waiting", "cpu_seconds"}.
    The end is the barrier one past the last batch."""
    cpu, started = time.process_time(), time.monotonic()
    end = len(plan["batches"])
    _heartbeat(store, ctx, identity)
    store.pass_barriers(ctx.key, waves=list(range(end + 1)), slice_no=ctx.number, slices=ctx.count)
    beat = started
    while True:
        status = store.barrier(ctx.key, wave=end, slices=ctx.count)
        if status["open"] or time.monotonic() >= started + ctx.wait:
            break
        if time.monotonic() - beat > ctx.lease / 3:
            _heartbeat(store, ctx, identity)
            beat = time.monotonic()
        time.sleep(_POLL)
    return {"halt": store.slice_halt(ctx.key), "dead": status["dead"], "waiting": status["waiting"],
            "waited_seconds": round(time.monotonic() - started, 3), "cpu_seconds": time.process_time() - cpu}
