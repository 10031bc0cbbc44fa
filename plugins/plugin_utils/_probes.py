# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: controller-side synthetic checks (HTTP, TCP, DNS, Prometheus). Not a public API.

One call samples every check on every host concurrently from the controller (threads, standard library only), so a
wave of a hundred hosts costs one action plugin execution instead of a module process per host per check. Every
HTTP request carries the run's correlation id in ``X-Correlation-ID``. Checks connect directly: proxies from the
environment are not used, so latencies are the hosts' own. Judging is pure (``module_utils/_checks.py`` and
``_analysis.py``); this module only measures.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import math
import os
import socket
import ssl
import threading
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _checks
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _analysis
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import read_json, write_json_atomic
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import host_vars
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import iso, utc_now

if t.TYPE_CHECKING:
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run

__all__ = [
    "DEFAULT_WORKERS",
    "baseline_path",
    "capture_baseline",
    "contexts_for",
    "evaluate",
    "fleet_context",
    "jobs_for",
    "load_baselines",
    "run_jobs",
    "run_names",
    "save_baselines",
    "take_samples",
]

CORRELATION_HEADER = "X-Correlation-ID"
USER_AGENT = "fleetpatch-checks/1"
MAX_BODY = 1024 * 1024
DEFAULT_WORKERS = 64

Samples = t.List[t.Dict[str, t.Any]]


_OPENERS: dict[bool, urllib.request.OpenerDirector] = {}
_OPENERS_LOCK = threading.Lock()


def _opener(validate_certs: bool) -> urllib.request.OpenerDirector:
    """One opener per certificate policy for the whole process: loading the CA store costs tens of milliseconds,
    so the first of many threads builds it and the others wait for it."""
    with _OPENERS_LOCK:
        if validate_certs not in _OPENERS:
            context = ssl.create_default_context()
            if not validate_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _OPENERS[validate_certs] = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        return _OPENERS[validate_certs]


def _request(url: str, *, method: str, headers: t.Mapping[str, str], data: bytes | None, timeout: float, validate_certs: bool) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers))
    opener = _opener(validate_certs)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY)
        except OSError:
            body = b""
        return exc.code, body


def _transport_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


def http_sample(check: t.Mapping[str, t.Any], context: t.Mapping[str, t.Any], *, correlation_id: str) -> dict[str, t.Any]:
    """Run the check's steps once, in order, passing captured values on; the sample's latency is the whole journey."""
    values = dict(context)
    total = 0.0
    for step in check["steps"]:
        try:
            url = _checks.render(step["url"], values)
            headers = {key: _checks.render(value, values) for key, value in step["headers"].items()}
            data = None
            if "body" in step:
                data = _checks.render(step["body"], values).encode("utf-8")
            elif "json" in step:
                data = json.dumps(_checks.render_json(step["json"], values)).encode("utf-8")
                headers.setdefault("Content-Type", "application/json")
        except KeyError as exc:
            return _checks.sample("error", None, f"{step['name']}: template '${{{exc.args[0]}}}' has no value")
        headers.setdefault("User-Agent", USER_AGENT)
        headers[CORRELATION_HEADER] = correlation_id
        _opener(step["validate_certs"])  # built once per process, outside the measured time
        started = time.monotonic()
        try:
            status, body = _request(url, method=step["method"], headers=headers, data=data, timeout=check["timeout"], validate_certs=step["validate_certs"])
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            elapsed = (time.monotonic() - started) * 1000
            return _checks.sample("error", None, f"{step['name']}: {_transport_reason(exc)}", elapsed_ms=round(total + elapsed, 3))
        latency = (time.monotonic() - started) * 1000
        total += latency
        problem, captures = _checks.judge_http(step, status=status, body=body, latency_ms=latency)
        if problem:
            return _checks.sample("error", total, problem)
        values.update(captures)
    return _checks.sample("ok", total)


def tcp_sample(check: t.Mapping[str, t.Any], context: t.Mapping[str, t.Any], *, correlation_id: str) -> dict[str, t.Any]:
    try:
        target = _checks.render_target(check, context)
    except _checks.CheckError as exc:
        return _checks.sample("error", None, str(exc))
    started = time.monotonic()
    try:
        with socket.create_connection((target["address"], target["port"]), timeout=check["timeout"]):
            pass
    except OSError as exc:
        return _checks.sample("error", None, f"connect {target['address']}:{target['port']}: {exc.strerror or exc}")
    return _checks.sample("ok", (time.monotonic() - started) * 1000)


_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def dns_sample(check: t.Mapping[str, t.Any], context: t.Mapping[str, t.Any], *, correlation_id: str) -> dict[str, t.Any]:
    try:
        target = _checks.render_target(check, context)
    except _checks.CheckError as exc:
        return _checks.sample("error", None, str(exc))
    started = time.monotonic()
    try:
        answers = socket.getaddrinfo(target["hostname"], None, _FAMILIES[check["family"]], socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return _checks.sample("error", None, f"resolve {target['hostname']}: {getattr(exc, 'strerror', None) or exc}")
    latency = (time.monotonic() - started) * 1000
    addresses = sorted({str(answer[4][0]) for answer in answers})
    if latency > check["timeout"] * 1000:
        return _checks.sample("error", latency, f"resolve {target['hostname']}: took {latency:.0f} ms, timeout {check['timeout']:g} s")
    missing = [address for address in target["expect_addresses"] if address not in addresses]
    if missing:
        return _checks.sample("error", latency, f"resolve {target['hostname']}: {', '.join(missing)} not in answer {', '.join(addresses) or 'none'}")
    return _checks.sample("ok", latency, addresses=addresses)


def _series_name(metric: t.Mapping[str, t.Any]) -> str:
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(metric.items()) if key != "__name__")
    return f"{metric.get('__name__', '')}{{{labels}}}"


def prometheus_sample(check: t.Mapping[str, t.Any], context: t.Mapping[str, t.Any], *, correlation_id: str) -> dict[str, t.Any]:
    """One instant query; every series must meet the condition. Empty (or NaN only) is no data."""
    try:
        base = _checks.render(check["url"], context).rstrip("/")
        query = _checks.render(check["query"], context)
    except KeyError as exc:
        return _checks.sample("unavailable", None, f"template '${{{exc.args[0]}}}' has no value")
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    _opener(True)
    started = time.monotonic()
    try:
        status, body = _request(url, method="GET", headers={CORRELATION_HEADER: correlation_id, "User-Agent": USER_AGENT, "Accept": "application/json"},
                                data=None, timeout=check["timeout"], validate_certs=True)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        return _checks.sample("unavailable", None, f"query {base}: {_transport_reason(exc)}")
    latency = (time.monotonic() - started) * 1000
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        payload = None
    if status != 200 or not isinstance(payload, dict) or payload.get("status") != "success":
        detail = payload.get("error") if isinstance(payload, dict) else body[:200].decode("utf-8", "replace")
        return _checks.sample("unavailable", None, f"query {base}: HTTP {status}: {detail}")
    data = payload.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        series = [("scalar", result[1])]
    elif kind == "vector":
        series = [(_series_name(item.get("metric", {})), item.get("value", [None, None])[1]) for item in result or []]
    else:
        return _checks.sample("unavailable", None, f"query {base}: result type {kind!r}; use an instant vector or scalar")
    values = []
    for name, raw in series:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if not math.isnan(value):
            values.append((name, value))
    if not values:
        return _checks.sample("nodata", latency, f"query returned no data: {query}", series=0)
    condition = check["condition"]
    worst = max(values, key=lambda item: item[1]) if "max" in condition else min(values, key=lambda item: item[1])
    for name, value in values:
        problem = _checks.judge_value(condition, value)
        if problem:
            return _checks.sample("error", latency, f"{name}: {problem}", value=value, series=len(values))
    return _checks.sample("ok", latency, value=worst[1], series=len(values))


SAMPLERS: dict[str, t.Callable[..., dict[str, t.Any]]] = {
    "http": http_sample,
    "tcp": tcp_sample,
    "dns": dns_sample,
    "prometheus": prometheus_sample,
}


def take_samples(check: t.Mapping[str, t.Any], context: t.Mapping[str, t.Any], *, correlation_id: str) -> Samples:
    sampler = SAMPLERS[check["kind"]]
    samples = []
    for number in range(check["samples"]):
        pause = _checks.pause_before(check, number)
        if pause:
            time.sleep(pause)
        samples.append(sampler(check, context, correlation_id=correlation_id))
    return samples


Job = t.Tuple[t.Mapping[str, t.Any], str, t.Mapping[str, t.Any]]  # (check, host or "*", template context)


def run_jobs(jobs: t.Sequence[Job], *, correlation_id: str, workers: int = DEFAULT_WORKERS) -> dict[str, dict[str, Samples]]:
    """check name -> host -> samples. Every (check, host) job samples in its own thread."""
    found: dict[str, dict[str, Samples]] = {}
    if not jobs:
        return found
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        futures = {pool.submit(take_samples, check, context, correlation_id=correlation_id): (check["name"], host) for check, host, context in jobs}
        for future, (name, host) in futures.items():
            found.setdefault(name, {})[host] = future.result()
    return found


def jobs_for(
    checks: t.Sequence[t.Mapping[str, t.Any]], contexts: t.Mapping[str, t.Mapping[str, t.Any]], fleet_context: t.Mapping[str, t.Any] | None
) -> list[Job]:
    """Controller-side checks on every host of contexts, fleet-wide checks once (when fleet_context is given)."""
    jobs: list[Job] = []
    for check in checks:
        if check["kind"] in _checks.CONTROLLER_KINDS:
            jobs += [(check, host, context) for host, context in contexts.items()]
        elif check["kind"] in _checks.FLEET_KINDS and fleet_context is not None:
            jobs.append((check, _analysis.FLEET, fleet_context))
    return jobs


# ---------------------------------------------------------------------------------------------------------
# contexts from inventory


def contexts_for(
    hosts: t.Iterable[str], checks: t.Sequence[t.Mapping[str, t.Any]], task_vars: t.Mapping[str, t.Any], run: t.Mapping[str, t.Any]
) -> dict[str, dict[str, t.Any]]:
    """Template names per host: the host variables the checks read (missing ones stay missing) and the run's names."""
    names = _checks.referenced_vars(checks)
    contexts = {}
    for host in hosts:
        found = host_vars(task_vars, host, names, missing=_checks.MISSING)  # one hostvars lookup per host
        contexts[host] = _checks.host_context(host, found, run)
    return contexts


def run_names(run: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The run's template names from a registered rollout_plan result."""
    patch = run.get("patch") or {}
    return {"run_id": run.get("run_id", ""), "patch_id": patch.get("patch_id", ""), "target_version": patch.get("target_version", "")}


def fleet_context(run_context: t.Mapping[str, t.Any], hosts: t.Sequence[str], wave: str) -> dict[str, t.Any]:
    return dict(run_context, hosts_regex=_checks.promql_regex(hosts), wave=wave)


# ---------------------------------------------------------------------------------------------------------
# baselines (runs/<run_id>/baseline.json: host -> check -> {captured_at, samples})


def baseline_path(run_dir: str) -> str:
    return os.path.join(run_dir, "baseline.json")


def load_baselines(run_dir: str) -> dict[str, dict[str, t.Any]]:
    data = read_json(baseline_path(run_dir), default=None)
    return dict(data.get("hosts", {})) if isinstance(data, dict) else {}


def save_baselines(run_dir: str, hosts: t.Mapping[str, t.Mapping[str, t.Any]]) -> None:
    write_json_atomic(baseline_path(run_dir), {"schema": 1, "hosts": {host: hosts[host] for host in sorted(hosts)}})


# a host at the target (or set aside) already: its first pre-patch baseline stays
KEEP_BASELINE = ("patched", "quarantined", "unhealthy")


def capture_baseline(checks: t.Sequence[t.Mapping[str, t.Any]], hosts: t.Sequence[str], *, run_state: Run, task_vars: t.Mapping[str, t.Any],
                     run_context: t.Mapping[str, t.Any], correlation_id: str, workers: int = DEFAULT_WORKERS) -> dict[str, t.Any]:
    """Sample the checks that compare against a baseline on the hosts not patched yet and keep the samples with the run
    (baseline.json, event checks.baseline); a host patched by an earlier attempt keeps its first baseline. The result of
    a capture: status, baseline (summary by host and check), kept, path, msg."""
    paths = run_state.paths
    known = run_state.hosts
    skip = set(run_state.skip_hosts)
    fresh = [host for host in hosts if host not in skip and known.get(host, {}).get("outcome") not in KEEP_BASELINE]
    wanted = [check for check in checks if check["kind"] in _checks.CONTROLLER_KINDS and check.get("baseline")]
    contexts = contexts_for(fresh, wanted, task_vars, run_context)
    _checks.validate_targets(wanted, contexts, "checks")  # a check that cannot be rendered for a host: CheckError, nothing sampled
    sampled = run_jobs(jobs_for(wanted, contexts, None), correlation_id=correlation_id, workers=workers)
    now = iso(utc_now())
    baselines = load_baselines(paths.run_dir)
    captured: dict[str, dict[str, t.Any]] = {}
    for host in fresh:
        entry = baselines.setdefault(host, {})
        for check in wanted:
            samples = sampled[check["name"]][host]
            entry[check["name"]] = {"captured_at": now, "samples": samples}
            summary = _analysis.summarize(samples)
            captured.setdefault(host, {})[check["name"]] = {key: summary[key] for key in ("samples", "measured", "error_rate", "latency_ms")}
    if fresh and wanted:
        save_baselines(paths.run_dir, baselines)
        run_state.event("checks.baseline", ts=now, status="captured", message=f"pre-patch baseline of {len(wanted)} check(s) on {len(fresh)} host(s)",
                        hosts=fresh, checks=[check["name"] for check in wanted], baseline=captured)
    kept = [host for host in hosts if host not in fresh]
    message = f"baseline of {len(wanted)} check(s) captured on {len(fresh)} host(s)"
    return {"status": "captured", "baseline": captured, "kept": kept, "path": baseline_path(paths.run_dir),
            "msg": message + (f"; kept the earlier baseline of {len(kept)} host(s)" if kept else "")}


def baseline_samples(baselines: t.Mapping[str, t.Mapping[str, t.Any]], host: str, check: str) -> Samples | None:
    entry = baselines.get(host, {}).get(check)
    return list(entry["samples"]) if isinstance(entry, dict) and "samples" in entry else None


# ---------------------------------------------------------------------------------------------------------
# one evaluation: sample, then judge


def evaluate(
    checks: t.Sequence[t.Mapping[str, t.Any]],
    hosts: t.Sequence[str],
    *,
    task_vars: t.Mapping[str, t.Any],
    run_context: t.Mapping[str, t.Any],
    correlation_id: str,
    wave: str,
    baselines: t.Mapping[str, t.Mapping[str, t.Any]] | None = None,
    control_hosts: t.Sequence[str] = (),
    host_samples: t.Mapping[str, t.Mapping[str, Samples]] | None = None,
    include_fleet: bool = True,
    workers: int = DEFAULT_WORKERS,
) -> tuple[list[dict[str, t.Any]], _analysis.CheckOutcome]:
    """Sample every check on hosts (and control hosts) at once, then judge each (check, host).

    host_samples: samples of host-side (command) checks gathered by a module, host -> check -> samples; a host
    without them is inconclusive for that check.
    """
    controller_checks = [check for check in checks if check["kind"] in _checks.CONTROLLER_KINDS]
    fleet_checks = [check for check in checks if check["kind"] in _checks.FLEET_KINDS] if include_fleet and hosts else []
    control_checks = [check for check in controller_checks if (check.get("baseline") or {}).get("control_hosts")]
    wanted = max([check["baseline"]["control_hosts"] for check in control_checks] or [0])
    controls = [host for host in control_hosts if host not in hosts][:wanted]
    jobs = jobs_for(controller_checks + fleet_checks, contexts_for(hosts, controller_checks, task_vars, run_context),
                    fleet_context(run_context, list(hosts), wave) if fleet_checks else None)
    jobs += jobs_for(control_checks, contexts_for(controls, control_checks, task_vars, run_context), None)
    sampled = run_jobs(jobs, correlation_id=correlation_id, workers=workers)
    baselines = baselines or {}
    results = []
    for check in checks:
        name = check["name"]
        if check["kind"] in _checks.FLEET_KINDS:
            if check in fleet_checks:
                results.append(_analysis.evaluate(check, _analysis.FLEET, sampled[name][_analysis.FLEET]))
            continue
        if check["kind"] in _checks.HOST_KINDS:
            for host in hosts:
                samples = list((host_samples or {}).get(host, {}).get(name) or [])
                results.append(_analysis.evaluate(check, host, samples))
            continue
        spec = check.get("baseline") or {}
        chosen = controls[: spec.get("control_hosts", 0)]
        control = [item for host in chosen for item in sampled.get(name, {}).get(host, [])]
        for host in hosts:
            results.append(
                _analysis.evaluate(
                    check, host, sampled[name][host], baseline=baseline_samples(baselines, host, name), control=control, control_hosts=chosen
                )
            )
    return results, _analysis.combine(results)
