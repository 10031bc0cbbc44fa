# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the decision a wave gate takes after a batch. Not a public API.

Pure functions over plain data: the action plugin gathers apply results and health, this module decides.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import RESPONSES, error_budget_spent

__all__ = ["GateDecision", "HostVerdict", "budget_spent", "classify_host", "decide"]

ROLLBACK_RESPONSES = ("rollback_wave", "rollback_all")
# how _analysis words a failed check of a host: "check <name> on <host>: fail: <condition> <measured> > <threshold> (...)"
_CHECK_REASON = re.compile(r"check (?P<check>\S+) on \S+: fail(?:: (?P<condition>[A-Za-z_][\w.]*))?")


@dataclasses.dataclass(frozen=True)
class HostVerdict:
    host: str
    outcome: str  # patched | failed | unreachable | unhealthy | skipped | not_applicable | not_staged
    reason: str = ""
    changed: bool = False
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class GateDecision:
    action: str  # continue | quarantine | hold | halt | rollback_wave | rollback_all
    reasons: tuple[str, ...]
    failed_hosts: tuple[str, ...]
    failures_total: int
    budget_limit: int
    budget_spent: bool
    # what made the gate act, in words: the response policy to named host failures, the error budget, a fleet check,
    # inconclusive checks (empty for continue); never "error budget" when the response policy acted alone
    trigger: str = ""

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data.update(reasons=list(self.reasons), failed_hosts=list(self.failed_hosts))
        return data


def classify_host(
    host: str,
    apply_result: t.Mapping[str, t.Any] | None,
    health: t.Mapping[str, t.Any] | None,
    *,
    target_version: str,
    skipped: bool = False,
    missing_copy_fails: bool = False,
) -> HostVerdict:
    """Turn one host's apply result and controller health probe into a verdict.

    An apply that found no cached copy to install (rollout_stage=prestaged: ``not_cached``, the host was taken as staged
    and its copy is gone) is ``not_staged``: kept out, never a failure, unless missing_copy_fails (rollout_unstaged=fail).
    A copy that is there but corrupt or refused stays a failure (docs/security.md)."""
    if skipped:
        return HostVerdict(host, "skipped", "skipped (quarantined by an earlier attempt)")
    if apply_result is None:
        return HostVerdict(host, "unreachable", "no apply result (host unreachable or removed from the play)")
    if apply_result.get("unreachable"):
        return HostVerdict(host, "unreachable", str(apply_result.get("msg", "unreachable")).strip()[:500])
    if apply_result.get("failed") and apply_result.get("not_cached") and not missing_copy_fails:
        return HostVerdict(host, "not_staged", str(apply_result.get("msg", "no cached copy")).strip()[:500])
    if apply_result.get("failed"):
        return HostVerdict(host, "failed", str(apply_result.get("msg", "apply failed")).strip()[:500], bool(apply_result.get("changed")))
    if apply_result.get("not_applicable"):
        # the patch does not apply to the installed version: a terminal outcome, never a failure, never rolled back
        installed = apply_result.get("installed_version")
        why = str(apply_result.get("msg") or f"installed version {installed} is not in the patch's affected versions").strip()[:500]
        return HostVerdict(host, "not_applicable", why, False, None if installed is None else str(installed))
    changed = bool(apply_result.get("changed"))
    version = apply_result.get("version")
    if health is not None and not health.get("ok", False):
        detail = health.get("reason") or f"status {health.get('status')}"
        return HostVerdict(host, "unhealthy", f"health check failed: {detail}", changed, version)
    if health is not None and health.get("version") not in (None, target_version):
        return HostVerdict(
            host, "unhealthy", f"health reports version {health.get('version')}, expected {target_version}", changed, version
        )
    return HostVerdict(host, "patched", "", changed, version)


def failure_kind(verdict: HostVerdict) -> str:
    """What kind of failure a host had, in words an operator reads first (halt reasons and summaries)."""
    reason = verdict.reason.lower()
    if verdict.outcome == "unreachable":
        return "unreachable"
    if verdict.outcome == "failed":
        if "signature" in reason:
            return "signature failure"
        if reason.startswith("downgrade refused"):
            return "downgrade refused"
        if reason.startswith("health check failed"):
            return "health check failed"  # patch_apply's own health check after the restart
        return "apply failed"
    if verdict.outcome == "unhealthy":
        if reason.startswith(("health check failed", "health reports")):
            return "health check failed"
        # the gate's own check: "check latency on h1: fail: latency_ms.p95 1024.9 > 400" -> "check latency failed (latency_ms.p95)",
        # so a halt names the gate that caught the host, not just "a check"
        match = _CHECK_REASON.match(verdict.reason)
        if match:
            return f"check {match.group('check')} failed ({match.group('condition')})" if match.group("condition") else f"check {match.group('check')} failed"
        return "check failed"
    return verdict.outcome


def _host_trigger(verdicts: t.Sequence[HostVerdict], failed: t.Sequence[str]) -> str:
    shown = [verdict for verdict in verdicts if verdict.host in failed]
    kinds = sorted({failure_kind(verdict) for verdict in shown})
    hosts = ", ".join(verdict.host for verdict in shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
    return f"{len(shown)} host(s) with {' / '.join(kinds)}: {hosts}"


def budget_spent(failures: int, limit: int, halt_when: str) -> bool:
    """ONE error budget for the whole run: 'exceeded' halts when failures > limit, 'reached' when failures >= limit.

    Zero failures never spend a budget, so a limit of 0 in 'reached' mode halts on the first failure.
    """
    return error_budget_spent(failures, limit, halt_when)


def decide(
    *,
    verdicts: t.Sequence[HostVerdict],
    failures_total: int,
    budget_limit: int,
    halt_when: str,
    response: str,
    wave_name: str,
    fleet_failures: t.Sequence[str] = (),
    inconclusive: t.Sequence[str] = (),
    inconclusive_response: str = "hold",
) -> GateDecision:
    """Decide what happens after a batch.

    failures_total is the number of hosts of the whole run (merged by host, this batch included) whose latest
    outcome is a failure. The configured response applies to failures in this batch; a spent budget
    overrides a softer response with halt (or keeps a rollback response).

    fleet_failures are failed fleet-wide checks (metric queries): they apply the response too, but have no host to
    quarantine, so quarantine becomes halt. inconclusive checks (no data) never continue: without failures they
    apply inconclusive_response (hold by default).
    """
    if response not in RESPONSES:
        raise ValueError(f"unknown response {response!r}; expected one of {', '.join(RESPONSES)}")
    failed = tuple(sorted(v.host for v in verdicts if v.outcome in ("failed", "unreachable", "unhealthy")))
    spent = budget_spent(failures_total, budget_limit, halt_when)
    comparison = ">" if halt_when == "exceeded" else ">="
    budget_text = (
        f"error budget: {failures_total} failed host(s) across the run, limit {budget_limit}"
        f" (halts when failures {comparison} {budget_limit})"
    )
    reasons: list[str] = []
    for verdict in verdicts:
        if verdict.host in failed:
            reasons.append(f"{verdict.host}: {verdict.outcome}: {verdict.reason}")
    reasons += [f"{wave_name}: {reason}" for reason in fleet_failures]
    if not failed and not spent and not fleet_failures:
        if inconclusive:
            if inconclusive_response not in RESPONSES or inconclusive_response == "quarantine":
                raise ValueError(f"unknown inconclusive response {inconclusive_response!r}; expected hold, halt, rollback_wave or rollback_all")
            held = tuple(f"{wave_name}: inconclusive, no pass without data: {reason}" for reason in inconclusive)
            trigger = f"inconclusive checks in {wave_name} ({len(inconclusive)}): inconclusive_response {inconclusive_response}"
            return GateDecision(inconclusive_response, held + (budget_text,), (), failures_total, budget_limit, False, trigger)
        return GateDecision("continue", (f"{wave_name}: all hosts in batch healthy", budget_text), (), failures_total, budget_limit, False)
    causes = []
    if failed:
        causes.append(_host_trigger(verdicts, failed))
    if fleet_failures:
        causes.append(f"{len(fleet_failures)} failed fleet check(s): {fleet_failures[0]}")
    cause = "; ".join(causes)
    if spent:
        action = response if response in ROLLBACK_RESPONSES else "halt"
        reasons.append(f"{budget_text}: spent")
        if action == response and cause:
            # the response policy acted on this batch's failures; the budget being spent too is said second
            trigger = f"response {response} of {wave_name} to {cause}; error budget spent too ({failures_total} of limit {budget_limit})"
        else:
            trigger = f"error budget spent: {failures_total} failed host(s) across the run, limit {budget_limit} ({halt_when})" + (
                f"; in {wave_name}: {cause}" if cause else "")
        return GateDecision(action, tuple(reasons), failed, failures_total, budget_limit, True, trigger)
    reasons.append(budget_text)
    if not failed and response == "quarantine":
        # a fleet-wide check failed: there is no host to quarantine
        trigger = f"{cause} in {wave_name}: halt (a fleet check has no host to quarantine)"
        return GateDecision("halt", tuple(reasons), failed, failures_total, budget_limit, False, trigger)
    return GateDecision(response, tuple(reasons), failed, failures_total, budget_limit, False, f"response {response} of {wave_name} to {cause}")
