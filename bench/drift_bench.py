"""Benchmark: the drift report for a large fleet against a bare JSON parse of the same facts files.

Generates facts files (JSON Lines, the format ``fleetpatch.rollout.drift_report`` saves and merges) for
``--hosts`` hosts spread over 5 environments, each host running ``--services`` services, split into ``--files``
files as the slices of a sliced job would write them. Then, each in a fresh child process:

* baseline: ``json.loads`` of every line of every file, nothing else;
* report: read the same files into the reconciler (merge by host), classify, aggregate, and write every format
  (JSON with every row, HTML, Markdown, JUnit with one test case per host and service, Prometheus) to disk. The HTML
  page's own share of it (template, heat map, matrix, drift list) is measured apart: its budget is HTML_BUDGET.

CPU time is the child's own user+system time around the measured phase (interpreter start-up and imports excluded,
equally for both); peak memory is the child's maximum resident set size (ru_maxrss), start-up included. Each round
runs a baseline right before and right after the report; the ratio is the median over rounds of the report's CPU
time over the mean of its two baselines, so that load from other processes on a shared machine hits both sides.

    .venv/bin/python bench/drift_bench.py [--hosts 100000] [--services 2] [--files 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ENVIRONMENTS = ["dev", "qa", "staging", "canary", "prod"]
REGIONS = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"]
TENANTS = ["acme", "globex", "initech", "umbrella"]
SEGMENTS = ["web", "api", "worker"]
SERVICES = {
    "myapp": ["1.3.9", "1.4.0", "1.4.1", "1.4.2", "1.4.3", "1.5.0", "1.5.1", "1.4.2-hotfix1"],
    "gateway": ["2.7.3", "2.8.0", "2.8.1", "3.0.0"],
    "worker": ["0.9.8", "0.9.9", "1.0.0"],
}
# environment -> service -> desired version
DESIRED = {
    "dev": {"myapp": "1.5.1", "gateway": "3.0.0", "worker": "1.0.0"},
    "qa": {"myapp": "1.5.1", "gateway": "3.0.0", "worker": "1.0.0"},
    "staging": {"myapp": "1.5.1", "gateway": "2.8.1", "worker": "1.0.0"},
    "canary": {"myapp": "1.4.2", "gateway": "2.8.1", "worker": "0.9.9"},
    "prod": {"myapp": "1.4.2", "gateway": "2.8.1", "worker": "0.9.9"},
}
# the HTML page (its template and the data it shows) may cost at most this share of the report's cpu
HTML_BUDGET = 0.02
NOW = 1_780_000_000  # fixed, so every run evaluates the same report
DESIRED_STATE = {
    "promotion": ENVIRONMENTS,
    "environments": DESIRED,
    "services": {name: {"builds": {v: None for v in versions if "hotfix" not in v}} for name, versions in SERVICES.items()},
    "patches": [
        {"id": "CVE-2026-1001", "service": "myapp", "fixed_in": ["1.4.2", "1.5.1"], "severity": "critical",
         "released_at": "2026-05-20T00:00:00Z"},
        {"id": "CVE-2026-0907", "service": "myapp", "fixed_in": ["1.4.1", "1.5.0"], "severity": "high",
         "released_at": "2026-03-01T00:00:00Z"},
        {"id": "CVE-2026-0950", "service": "gateway", "fixed_in": ["2.8.1", "3.0.0"], "severity": "critical",
         "released_at": "2026-05-01T00:00:00Z"},
        {"id": "FIX-worker-17", "service": "worker", "fixed_in": ["0.9.9"], "severity": "medium",
         "released_at": "2026-01-10T00:00:00Z"},
    ],
    "compatibility": [
        {"service": "gateway", "versions": ">=3.0", "requires": {"service": "myapp", "versions": ">=1.5"}},
        {"service": "worker", "versions": ">=1.0", "requires": {"service": "myapp", "versions": ">=1.4.1"}, "scope": "host"},
    ],
    "slo": {"targets": {"critical": "7d", "high": "30d", "medium": "90d", "low": "180d"}},
}


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def generate(directory: str, *, hosts: int, services: int, files: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    names = list(SERVICES)[:services]
    sha = {(svc, v): hashlib.sha256(f"{svc}-{v}-{seed}".encode()).hexdigest() for svc in names for v in SERVICES[svc]}
    paths = [os.path.join(directory, f"facts-slice-{index:02d}.jsonl") for index in range(files)]
    handles = [open(path, "w", encoding="utf-8") for path in paths]  # noqa: SIM115 - closed below
    try:
        for handle in handles:
            handle.write(json.dumps({"type": "fleetpatch.patch_facts", "format": 1, "generated_at": iso(NOW), "hosts": hosts // files})
                         + "\n")
        for index in range(hosts):
            env = ENVIRONMENTS[index % len(ENVIRONMENTS)]
            region, tenant, segment = REGIONS[index % 5], TENANTS[(index // 5) % 4], SEGMENTS[(index // 20) % 3]
            host = f"{region}-{tenant}-{segment}-{env}-{index:06d}"
            record = {"host": host, "environment": env, "region": region, "tenant": tenant, "segment": segment,
                      "collected_at": iso(NOW - rng.randint(0, 3600)), "state": "ok", "reason": None, "services": {},
                      "packages": {}}
            roll = rng.random()
            if roll < 0.01:
                record.update(state="unreachable", reason="unreachable: ssh: connect to host: Connection timed out")
            else:
                for svc in names:
                    wanted = DESIRED[env][svc]
                    versions = SERVICES[svc]
                    pick = rng.random()
                    version = wanted if pick < 0.85 else versions[rng.randrange(len(versions))]
                    root = "/srv/fleetpatch"
                    fact = {"state": "ok", "reason": None, "manifest": f"{root}/state/{svc}.manifest.json", "version": version,
                            "artifact_sha256": sha[(svc, version)], "release": f"{root}/apps/{svc}/releases/{version}",
                            "patch_id": f"FP-{svc}-{version}", "installed_at": iso(NOW - rng.randint(3600, 90 * 86400)),
                            "previous_version": versions[max(0, versions.index(version) - 1)], "current": version}
                    if roll > 0.998:
                        fact = {"state": "corrupt", "reason": f"{root}/state/{svc}.manifest.json is not valid JSON: Expecting value",
                                "manifest": f"{root}/state/{svc}.manifest.json"}
                    record["services"][svc] = fact
            handles[index % files].write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
    finally:
        for handle in handles:
            handle.close()
    return paths


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_baseline(paths: list[str]) -> dict:
    started = cpu()
    wall = time.monotonic()
    loads = json.loads
    records = 0
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                loads(line)
                records += 1
    return {"cpu": cpu() - started, "wall": time.monotonic() - wall, "records": records}


def desired_state(services: int) -> dict:
    """The desired state of the first ``services`` services (hosts run exactly those)."""
    names = list(SERVICES)[:services]
    state = dict(DESIRED_STATE)
    state["environments"] = {env: {svc: v for svc, v in wanted.items() if svc in names} for env, wanted in DESIRED.items()}
    state["patches"] = [p for p in DESIRED_STATE["patches"] if p["service"] in names]
    state["compatibility"] = [r for r in DESIRED_STATE["compatibility"] if r["service"] in names and r["requires"]["service"] in names]
    return state


def child_report(paths: list[str], out_dir: str, services: int) -> dict:
    sys.path.insert(0, os.path.join(REPO, "collections"))
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (  # noqa: PLC0415
        Reconciler,
        gc_paused,
        parse_desired_state,
    )
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _drift_report  # noqa: PLC0415
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift_report import (  # noqa: PLC0415
        FORMATS,
        output_paths,
        read_facts_file,
        write_reports,
    )

    # the HTML page's own cost (template loaded or compiled, its data made, rendered), inside the report's
    html_cpu = []
    render_html = _drift_report.render_html

    def timed_render_html(*args, **kwargs):
        begun = cpu()
        try:
            return render_html(*args, **kwargs)
        finally:
            html_cpu.append(cpu() - begun)

    _drift_report.render_html = timed_render_html
    started = cpu()
    wall = time.monotonic()
    with gc_paused():  # as the action plugin does
        desired = parse_desired_state(desired_state(services), source="bench")
        reconciler = Reconciler(desired, now=NOW)
        infos = [read_facts_file(path, reconciler) for path in paths]
        read_cpu = cpu() - started
        report = reconciler.build()
        build_cpu = cpu() - started - read_cpu
        document = write_reports(report, paths=output_paths(out_dir, FORMATS), generated_at=iso(NOW),
                                 inputs={"facts_files": infos}, title="bench", html_max_rows=2000)
        total = cpu() - started
    sizes = {name: os.path.getsize(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))}
    return {"cpu": total, "wall": time.monotonic() - wall, "read_cpu": read_cpu, "build_cpu": build_cpu,
            "write_cpu": total - read_cpu - build_cpu, "html_cpu": sum(html_cpu), "records": sum(info["records"] for info in infos),
            "hosts": document["summary"]["hosts"], "rows": document["summary"]["rows"],
            "statuses": document["summary"]["statuses"], "fingerprint": document["fingerprint"], "output_bytes": sizes}


def run_child(kind: str, paths: list[str], out_dir: str, services: int) -> dict:
    code = (f"import json, resource, sys; sys.path.insert(0, {HERE!r}); import drift_bench as b; "
            f"r = b.child_{kind}({paths!r}{', ' + repr(out_dir) + ', ' + str(services) if kind == 'report' else ''}); "
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "drift_bench.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetpatch-drift-bench-") as tmp:
        started = time.monotonic()
        paths = generate(tmp, hosts=args.hosts, services=args.services, files=args.files)
        facts_bytes = sum(os.path.getsize(path) for path in paths)
        print(f"generated {args.hosts} hosts x {args.services} services over {len(ENVIRONMENTS)} environments in {len(paths)} files, "
              f"{facts_bytes / 1e6:.1f} MB, in {time.monotonic() - started:.1f}s", flush=True)
        baselines, reports, ratios = [], [], []
        for round_ in range(args.rounds):
            out_dir = os.path.join(tmp, f"out-{round_}")
            os.makedirs(out_dir)
            # the baseline runs right before and after each report: the round's ratio uses their mean, so that load on
            # a shared machine affects both sides alike
            before = run_child("baseline", paths, out_dir, args.services)
            reports.append(run_child("report", paths, out_dir, args.services))
            after = run_child("baseline", paths, out_dir, args.services)
            baselines += [before, after]
            ratios.append(reports[-1]["cpu"] / ((before["cpu"] + after["cpu"]) / 2))
            print(f"  round {round_ + 1}: baseline cpu {before['cpu']:.2f}s/{after['cpu']:.2f}s rss {after['peak_rss_mb']:.0f} MB | "
                  f"report cpu {reports[-1]['cpu']:.2f}s (read {reports[-1]['read_cpu']:.2f}, build {reports[-1]['build_cpu']:.2f}, "
                  f"write {reports[-1]['write_cpu']:.2f}, of it html {reports[-1]['html_cpu'] * 1000:.0f} ms) "
                  f"rss {reports[-1]['peak_rss_mb']:.0f} MB | ratio {ratios[-1]:.2f}", flush=True)
    base_cpu = min(b["cpu"] for b in baselines)
    report_cpu = min(r["cpu"] for r in reports)
    result = {
        "hosts": args.hosts, "services_per_host": args.services, "environments": len(ENVIRONMENTS), "files": args.files,
        "facts_bytes": facts_bytes, "rounds": args.rounds, "load_average_after": os.getloadavg()[0],
        "baseline_cpu_seconds": [round(b["cpu"], 3) for b in baselines], "report_cpu_seconds": [round(r["cpu"], 3) for r in reports],
        "cpu_ratio_per_round": [round(r, 2) for r in ratios], "cpu_ratio": round(statistics.median(ratios), 2),
        "cpu_ratio_of_minimums": round(report_cpu / base_cpu, 2), "cpu_ratio_goal": 2.0,
        "baseline_peak_rss_mb": round(max(b["peak_rss_mb"] for b in baselines), 1),
        "report_peak_rss_mb": round(max(r["peak_rss_mb"] for r in reports), 1), "peak_rss_goal_mb": 256,
        "report_phases_cpu_seconds": {key: round(min(r[key] for r in reports), 3) for key in ("read_cpu", "build_cpu", "write_cpu", "html_cpu")},
        "html_share": round(statistics.median(r["html_cpu"] / r["cpu"] for r in reports), 4), "html_share_budget": HTML_BUDGET,
        "rows": reports[-1]["rows"], "statuses": reports[-1]["statuses"], "output_bytes": reports[-1]["output_bytes"],
        "fingerprints_equal": len({r["fingerprint"] for r in reports}) == 1,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
        handle.write("\n")
    ok = result["cpu_ratio"] <= 2.0 and result["report_peak_rss_mb"] <= 256 and result["html_share"] <= HTML_BUDGET
    print(f"cpu ratio {result['cpu_ratio']}x (median of rounds; goal <= 2x), peak {result['report_peak_rss_mb']} MB (goal <= 256 MB), "
          f"HTML page {result['html_share'] * 100:.1f}% of the report's cpu (budget {HTML_BUDGET * 100:.0f}%): "
          f"{'goals met' if ok else 'GOAL MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
