# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the lines the rollout_screen callback prints. Not a public API.

Pure functions over the results the rollout's action plugins return (rollout_plan, wave_gate, rollout_finish):
one line per batch with its wave, counts, every gate's measured value next to its condition and the error budget
left; at the end a table per wave and the commands to run next. No I/O, so every line is unit tested.
"""

from __future__ import annotations

import collections
import shlex
import typing as t

__all__ = [
    "FAILED_OUTCOMES",
    "batch_line",
    "budget_left",
    "check_summaries",
    "finish_lines",
    "next_commands",
    "plan_lines",
    "rollback_command",
    "wave_rows",
    "wave_table",
]

FAILED_OUTCOMES = ("failed", "unreachable", "unhealthy")
ROLLED_BACK = ("rolled_back", "rollback_failed")
STOPPING = ("hold", "halt", "rollback_wave", "rollback_all")
_MAX_HOSTS_SHOWN = 3


def _number(value: t.Any) -> str:
    """A measured value or threshold as a person reads it: 0.1, 12, 3.4 (never 3.4000000001 or 1e-05)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, (int, float)):
        if float(value).is_integer() or abs(value) >= 10:
            return str(round(value))
        return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}".rstrip("0").rstrip(".")
    return str(value)


def budget_left(*, failures: int, limit: int, halt_when: str) -> int:
    """How many more failed hosts the run takes before its error budget is spent ('exceeded': failures > limit)."""
    allowed = limit if halt_when == "exceeded" else limit - 1
    return max(allowed - failures, 0)


def _primary(spec: t.Mapping[str, t.Any] | None, name: str) -> bool:
    """The conditions a check is there for: its latency percentiles, its error rate when it allows errors or measures no
    latency, a metric condition. The others (an error rate of 0 on a latency check) show only when they fail."""
    if spec is None or not name:
        return True
    if name.startswith("latency_ms."):
        return True
    if name == "error_rate":
        return bool(spec.get("max_error_rate")) or not spec.get("latency_ms")
    return name != "measured_samples"


def check_summaries(checks: t.Mapping[str, t.Any] | None, *, specs: t.Sequence[t.Mapping[str, t.Any]] = ()) -> list[str]:
    """One item per (check, condition): the worst measured value over the checked hosts next to the condition.

    "journey error_rate 0 <= 0.1", "latency p95 12 ms <= 400 ms"; a condition that failed on some host ends with
    "FAIL (n host(s))", an inconclusive one with "no data". specs (the plan's checks) choose the conditions shown.
    """
    if not checks:
        return []
    by_name = {str(spec.get("name")): spec for spec in specs}
    worst: dict[tuple[str, str], dict[str, t.Any]] = {}
    for result in checks.get("results") or []:
        for condition in result.get("conditions") or []:
            key = (str(result.get("check", "")), str(condition.get("name", "")))
            entry = worst.setdefault(key, {"op": condition.get("op"), "threshold": condition.get("threshold"), "measured": None,
                                           "failed": 0, "inconclusive": 0})
            measured = condition.get("measured")
            if isinstance(measured, (int, float)) and not isinstance(measured, bool):
                bigger_is_worse = condition.get("op") in ("<=", "<")
                current = entry["measured"]
                if current is None or (measured > current if bigger_is_worse else measured < current):
                    entry["measured"] = measured
            status = condition.get("status")
            if status == "fail":
                entry["failed"] += 1
            elif status != "pass":
                entry["inconclusive"] += 1
    items = []
    for (check, name), entry in worst.items():
        if not (entry["failed"] or entry["inconclusive"] or _primary(by_name.get(check) if by_name else None, name)):
            continue
        unit = " ms" if name.startswith("latency_ms.") else ""
        label = name[len("latency_ms."):] if unit else name
        text = f"{check} {label} {_number(entry['measured'])}{unit} {entry['op']} {_number(entry['threshold'])}{unit}"
        if entry["failed"]:
            text += f" FAIL ({entry['failed']} host(s))"
        elif entry["inconclusive"]:
            text += " no data"
        items.append(text)
    return items


def _health(result: t.Mapping[str, t.Any]) -> str:
    health = result.get("health") or {}
    if not health:
        return ""
    good = sum(1 for entry in health.values() if isinstance(entry, dict) and entry.get("ok"))
    return f"health {good}/{len(health)}"


def batch_line(result: t.Mapping[str, t.Any], *, plan: t.Mapping[str, t.Any] | None) -> list[str]:
    """The line of one wave_gate result, and under it the trigger and the failed hosts when the gate stopped the run.

    "wave-1  batch 2/8  2 host(s): 2 patched 0 failed 0 quarantined | health 4/4 | journey error_rate 0 <= 0.1 | ...
    | budget 1/1 left | continue (baked 1 s)"
    """
    plan = plan or {}
    decision = result.get("decision") or {}
    index = int(result.get("batch") or 0)
    batches = plan.get("batches") or []
    hosts = list(batches[index].get("hosts") or []) if index < len(batches) else []
    failed = list(decision.get("failed_hosts") or [])
    action = str(result.get("action", decision.get("action", "?")))
    quarantined = len(failed) if action == "quarantine" else 0
    head = f"{str(result.get('wave', '?')):<7} batch {index}" + (f"/{len(batches) - 1}" if batches else "")
    patched = f"{max(len(hosts) - len(failed), 0)}/{len(hosts)}" if hosts else "?"
    parts = [f"{head}  patched {patched} failed {len(failed) - quarantined} quarantined {quarantined}"]
    if _health(result):
        parts.append(_health(result))
    parts += check_summaries(result.get("checks"), specs=(plan.get("policy") or {}).get("checks") or ())
    budget = plan.get("error_budget") or {}
    if budget:
        limit, halt_when = int(budget.get("limit", 0)), str(budget.get("halt_when", "exceeded"))
        left = budget_left(failures=int(decision.get("failures_total", 0)), limit=limit, halt_when=halt_when)
        parts.append(f"budget left {left}/{budget_left(failures=0, limit=limit, halt_when=halt_when)}")
    tail = action + (f", baked {_number(result['baked_seconds'])} s" if result.get("baked_seconds") else "")
    lines = [" | ".join(parts + [tail])]
    if result.get("stabilization"):
        details = result["stabilization"]
        lines.append(f"  stabilization: {details.get('rounds')} round(s) over {_number(details.get('elapsed'))} s on "
                     f"{details.get('checked_hosts')} host(s) -> {action}")
    if action in STOPPING or action == "quarantine":
        lines += _stop_lines(result, decision=decision, failed=failed)
    return lines


def _stop_lines(result: t.Mapping[str, t.Any], *, decision: t.Mapping[str, t.Any], failed: t.Sequence[str]) -> list[str]:
    """Why the gate stopped (its trigger), the first failed hosts with their reasons, what it rolls back."""
    lines = [f"  why: {decision['trigger']}"] if decision.get("trigger") else []
    shown = [reason for reason in decision.get("reasons") or [] if reason.split(":", 1)[0] in failed][:_MAX_HOSTS_SHOWN]
    lines += [f"  {reason}" for reason in shown]
    if len(failed) > len(shown):
        lines.append(f"  ... and {len(failed) - len(shown)} more failed host(s) (events.jsonl has every reason)")
    if result.get("rollback_hosts"):
        lines.append(f"  rolling back {len(result['rollback_hosts'])} host(s): {_hosts(result['rollback_hosts'])}")
    return lines


def _hosts(hosts: t.Sequence[str]) -> str:
    shown = ", ".join(hosts[:_MAX_HOSTS_SHOWN])
    return shown + (f" and {len(hosts) - _MAX_HOSTS_SHOWN} more" if len(hosts) > _MAX_HOSTS_SHOWN else "")


def plan_lines(result: t.Mapping[str, t.Any], *, preview: bool) -> list[str]:
    """What the rollout_plan result says: the plan's headline, the waves, the gates (the whole plan table in preview)."""
    text = str(result.get("plan_text") or "").splitlines()
    plan = result.get("plan") or {}
    if preview:
        return [line for line in text if line.strip()] + ["preview: nothing was touched, nothing was written"]
    lines = text[:1]
    waves = plan.get("waves") or []
    if waves:
        lines.append("waves: " + ", ".join(f"{wave.get('name')} {len(wave.get('hosts') or [])} host(s)" for wave in waves))
    gates = ["health"] + [_gate_text(check) for check in (plan.get("policy") or {}).get("checks") or []]
    lines.append("gates: " + ", ".join(gates))
    return lines


def _gate_text(check: t.Mapping[str, t.Any]) -> str:
    conditions = []
    if check.get("kind") != "prometheus" and _primary(check, "error_rate"):
        conditions.append(f"error_rate <= {_number(check.get('max_error_rate', 0))}")
    for key, value in (check.get("latency_ms") or {}).items():
        conditions.append(f"{key} <= {_number(value)} ms")
    for op, value in (check.get("condition") or {}).items():
        conditions.append(f"{op} {_number(value)}")
    return f"{check.get('name')} ({', '.join(conditions)})" if conditions else str(check.get("name"))


def wave_rows(*, plan: t.Mapping[str, t.Any], summary: t.Mapping[str, t.Any]) -> list[dict[str, t.Any]]:
    """Per wave: hosts, patched, failed, quarantined, rolled back, untouched, the last gate action and what to do next."""
    hosts = summary.get("hosts") or {}
    halted = summary.get("halted") or {}
    status = str(summary.get("status", ""))
    rows = []
    for wave in plan.get("waves") or []:
        entries = [hosts.get(host) or {} for host in wave.get("hosts") or []]
        outcomes = collections.Counter(entry.get("outcome", "untouched") for entry in entries)
        row = {
            "wave": wave.get("name"),
            "hosts": len(entries),
            "patched": outcomes["patched"] + outcomes["not_applicable"],
            # failed in this run: also a host rolled back since (its cause), as the status line counts them
            "failed": sum(1 for entry in entries if entry.get("outcome") in FAILED_OUTCOMES or entry.get("cause") in FAILED_OUTCOMES),
            "quarantined": outcomes["quarantined"] + outcomes["skipped"],
            "rolled_back": outcomes["rolled_back"],
            "rollback_failed": outcomes["rollback_failed"],
            "untouched": outcomes["untouched"],
        }
        if halted.get("wave") == wave.get("name"):
            row["gate"] = str(halted.get("action"))
        elif row["untouched"] == row["hosts"]:
            row["gate"] = "-"
        else:
            row["gate"] = "continue" if not row["untouched"] else status
        steps = []
        if row["rollback_failed"] or (sum(outcomes[name] for name in FAILED_OUTCOMES) and status != "rolled_out"):
            steps.append("rollback")
        if row["untouched"] or row["rolled_back"]:
            steps.append("resume")
        row["next"] = " or ".join(steps) or "report"
        rows.append(row)
    return rows


def wave_table(rows: t.Sequence[t.Mapping[str, t.Any]]) -> list[str]:
    columns = (("wave", "wave"), ("hosts", "hosts"), ("patched", "patched"), ("failed", "failed"), ("quarantined", "quarant."),
               ("rolled_back", "rolled back"), ("untouched", "untouched"), ("gate", "gate"), ("next", "next"))
    table = [[title for _key, title in columns]] + [[str(row.get(key, "")) for key, _title in columns] for row in rows]
    widths = [max(len(line[number]) for line in table) for number in range(len(columns))]
    return ["  ".join(cell.ljust(width) if number in (0, 7, 8) else cell.rjust(width) for number, (cell, width) in enumerate(zip(line, widths))).rstrip()
            for line in table]


def rollback_command(*, inventory: str, hosts: t.Sequence[str], patch: t.Mapping[str, t.Any]) -> str:
    """An ad-hoc patch_apply state=rollback over hosts: the verified previous release, restarted and health-checked."""
    args = ('{"root": "{{ fleetpatch_host_root }}", "service": "%s", "version": "%s", "sha256": "%s", "state": "rollback", '
            '"restart_command": "{{ fleetpatch_restart_command | default(omit) }}", "health_url": "{{ fleetpatch_health_url | default(omit) }}"}'
            % (patch.get("service"), patch.get("target_version"), (patch.get("artifact") or {}).get("sha256")))
    return shlex.join(["ansible", "-i", inventory, ":".join(hosts), "-m", "fleetpatch.rollout.patch_apply", "-a", args])


def next_commands(*, rows: t.Sequence[t.Mapping[str, t.Any]], summary: t.Mapping[str, t.Any], patch: t.Mapping[str, t.Any],
                  resume: str, report: str, inventory: str) -> list[str]:
    """The commands the table's "next" column names, each once."""
    wanted = {step for row in rows for step in str(row["next"]).split(" or ")}
    lines = []
    if "resume" in wanted:
        lines.append(f"  resume:   {resume}   (the same command: the run continues where it stopped)")
    if "rollback" in wanted:
        hosts = summary.get("hosts") or {}
        targets = sorted(host for host, entry in hosts.items() if entry.get("outcome") in FAILED_OUTCOMES + ("patched", "rollback_failed"))
        if targets:
            lines.append(f"  rollback: {rollback_command(inventory=inventory, hosts=targets, patch=patch)}")
    lines.append(f"  report:   {report}")
    return lines


def finish_lines(*, plan: t.Mapping[str, t.Any], finish: t.Mapping[str, t.Any], patch: t.Mapping[str, t.Any], resume: str,
                 report: str, inventory: str) -> list[str]:
    """The end of the screen: status, the table per wave, the next commands and where the files are."""
    summary = finish.get("summary") or {}
    status = str(finish.get("status", "?"))
    if not summary:
        return [f"status: {status}"]
    counts = summary.get("counts") or {}
    budget = summary.get("error_budget") or plan.get("error_budget") or {}
    failures = len(summary.get("failures") or [])
    left = budget_left(failures=failures, limit=int(budget.get("limit", 0)), halt_when=str(budget.get("halt_when", "exceeded")))
    head = (f"status: {status}: {counts.get('patched', 0)} of {summary.get('fleet_size', '?')} host(s) patched, {failures} failed, "
            f"{counts.get('rolled_back', 0)} rolled back, {counts.get('untouched', 0)} untouched; error budget {left} left")
    lines = ["", head]
    halted = summary.get("halted") or {}
    if halted.get("trigger"):
        lines.append(f"stopped at {halted.get('wave')} batch {halted.get('batch')}: {halted['trigger']}")
    rows = wave_rows(plan=plan, summary=summary)
    lines += wave_table(rows)
    lines.append("next:")
    lines += next_commands(rows=rows, summary=summary, patch=patch, resume=resume, report=report, inventory=inventory)
    paths = finish.get("paths") or {}
    if paths.get("run_dir"):
        lines.append(f"files: {paths['run_dir']}/ (plan.json, events.jsonl, summary.json)")
    return lines
