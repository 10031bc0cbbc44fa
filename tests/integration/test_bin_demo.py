"""bin/demo from a fresh clone, the way a newcomer runs it: every subcommand, on a fleet of its own, under a terminal.

The clone is of the checkout's HEAD (commit first); it uses this venv (FLEETPATCH_VENV) so nothing is installed.
Faults: each preset `bin/demo run --fault KIND` injects is caught by the gate meant for it, and the halt names it.
The demo's fleet has environments staging and prod and billing beside myapp: its drift report's environment x service
matrix and region x tenant heat map are 2 x 2, with the statuses the hosts and the registry give before and after a run.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import typing as t

import pytest

from tests.integration.rollout_harness import REPO_ROOT, _free_subnet_index

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
# the fleet bin/demo builds (the demo collection's playbooks/vars/fleet.yml): 2 environments x 2 services, 2 regions x 2 tenants
ENVIRONMENTS = ["staging", "prod"]
SERVICES = ["billing", "myapp"]
REGIONS = ["eu-west", "us-east"]
TENANTS = ["acme", "globex"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PRESETS = ("corrupt_edge_artifact", "cut_transfer", "disk_full", "error_rate", "restart_fails", "slow", "unhealthy_after", "unreachable")


class Demo:
    """A fresh clone of the checkout with its own fleet directory, controller state and loopback subnet."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.repo = os.path.join(base, "repo")
        subprocess.run(["git", "clone", "-q", REPO_ROOT, self.repo], check=True, timeout=120)
        self.fleet_dir = os.path.join(base, "fleet")
        self.state_dir = os.path.join(base, "state")
        index = _free_subnet_index()
        self.fleet_args = ["-e", f"demo_fleet_cidr=127.{90 + index // 250}.{index % 250}.0/24", "-e", f"demo_fleet_port={20000 + index}",
                           "-e", f"demo_fleet_origin_port={30000 + index}"]

    def env(self) -> dict[str, str]:
        # what a newcomer's shell has: no Ansible or fleetpatch settings of the test run leak in
        env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "FLEETPATCH_"))}
        env.update(FLEETPATCH_VENV=os.path.dirname(os.path.dirname(sys.executable)), FLEETPATCH_DEMO_DIR=self.fleet_dir,
                   FLEETPATCH_STATE_DIR=self.state_dir, TERM="xterm", COLUMNS="200", LINES="50")
        return env

    def run(self, *args: str, fleet: bool = False, timeout: float = 600) -> tuple[int, str]:
        """bin/demo ARGS under a pseudo-terminal (what a person sees): (exit code, screen without colour codes)."""
        argv = [os.path.join(self.repo, "bin", "demo"), *args, *(self.fleet_args if fleet else [])]
        return run_in_pty(argv, env=self.env(), cwd=self.base, timeout=timeout)

    def summary(self) -> dict[str, t.Any]:
        with open(os.path.join(self.state_dir, "runs", RUN_ID, "summary.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def teardown(self) -> None:
        if os.path.isdir(self.fleet_dir):
            self.run("teardown", fleet=True, timeout=120)


def run_in_pty(argv: list[str], *, env: dict[str, str], cwd: str, timeout: float) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_since = None
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGTERM)
                raise AssertionError(f"{argv} did not finish in {timeout} s; screen so far:\n" + b"".join(chunks).decode(errors="replace")[-4000:])
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                chunks.append(data)
                quiet_since = None
            elif process.poll() is not None:
                # a process the demo left running (the fleet supervisor) may hold the terminal: stop once it is quiet
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2:
                    break
    finally:
        os.close(master)
    code = process.wait(timeout=60)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace")).replace("\r\n", "\n").replace("\r", "\n")
    return code, text


def drift_report(state_dir: str) -> tuple[dict[str, t.Any], str]:
    """The report bin/demo report wrote: (drift-report.json, the HTML page)."""
    with open(os.path.join(state_dir, "reports", "drift-report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    with open(os.path.join(state_dir, "reports", "drift-report.html"), encoding="utf-8") as handle:
        return report, handle.read()


def matrix_cells(report: t.Mapping[str, t.Any]) -> dict[tuple[str, str], tuple[str, int, int, str]]:
    """(environment, service) -> (worst status, pairs in sync, hosts, desired version) of the report's matrix."""
    return {(cell["environment"], cell["service"]): (cell["status"], cell["statuses"]["in_sync"], cell["hosts"], cell["desired"])
            for cell in report["matrix"]}


def heat_map(page: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(region, tenant) -> (hosts, hosts in sync) of the HTML page's region x tenant table, read as a person reads it."""
    section = page[page.index('<section id="heatmap">'):page.index('<section id="matrix">')]
    tenants = re.findall(r"<th>([^<]+)</th>", section[section.index("<thead>"):section.index("</thead>")])[1:]
    cells: dict[tuple[str, str], tuple[int, int]] = {}
    for region, row in re.findall(r"<tr>\s*<th>([^<]+)</th>(.*?)</tr>", section[section.index("<tbody>"):], re.S):
        found = re.findall(r'<td class="hcell h\d" data-hosts="(\d+)" data-in-sync="(\d+)">\s*<strong>(\d+)/(\d+) in sync</strong>', row)
        assert len(found) == len(tenants), row
        for tenant, (hosts, in_sync, shown_in_sync, shown_hosts) in zip(tenants, found):
            assert (shown_in_sync, shown_hosts) == (in_sync, hosts)  # the text says what the data says
            cells[(region, tenant)] = (int(hosts), int(in_sync))
    return cells


def assert_clean(screen: str) -> None:
    """No noise and no trouble on a person's screen."""
    for noise in ("skipping", "[WARNING]", "Traceback", "[ERROR]", "DeprecationWarning", "TASK [", "PLAY ["):
        assert noise not in screen, f"{noise!r} on the screen:\n{screen}"


@pytest.fixture
def demo(tmp_path) -> t.Iterator[Demo]:
    made = Demo(str(tmp_path))
    try:
        yield made
    finally:
        made.teardown()
        shutil.rmtree(made.repo, ignore_errors=True)


def test_help_usage_and_the_fault_list(demo: Demo) -> None:
    code, screen = demo.run("--help")
    assert code == 0
    for command in ("run", "preview", "faults", "report", "teardown", "help", "--fault KIND"):
        assert f"  {command}" in screen, screen
    assert demo.run("help")[0] == 0 and demo.run("-h")[0] == 0
    code, screen = demo.run("nonsense")
    assert code == 2 and screen.startswith("usage: bin/demo"), screen
    code, screen = demo.run("faults")
    assert code == 0
    listed = {line.split()[0]: line.split(None, 1)[1] for line in screen.splitlines()[1:] if line and not line.startswith("inject")}
    assert sorted(listed) == list(PRESETS)
    assert listed["slow"].startswith("latency") and listed["error_rate"].startswith("error rate") and listed["unhealthy_after"].startswith("health")
    code, screen = demo.run("run", "--fault", "no-such-fault")
    assert code == 2 and "unknown fault 'no-such-fault'" in screen
    assert not os.path.exists(demo.fleet_dir)  # refused before anything was built


def test_preview_on_a_fresh_state_dir_prints_the_plan_and_writes_nothing(demo: Demo) -> None:
    code, screen = demo.run("preview", fleet=True)
    assert code == 0, screen
    assert_clean(screen)
    assert f"plan {RUN_ID}: 16 hosts, 4 waves, 9 batches" in screen
    assert re.search(r"^wave-3\s.*region=us-east", screen, re.M), screen  # the plan table, whole
    assert "preview: nothing was touched, nothing was written" in screen
    assert not os.path.exists(os.path.join(demo.state_dir, "runs"))
    code, screen = demo.run("teardown", fleet=True)
    assert code == 0 and not os.path.exists(demo.fleet_dir), screen


@pytest.mark.parametrize(("fault", "gate", "trigger"), [
    ("slow", "latency p95", "check latency failed (latency_ms.p95)"),
    ("error_rate", "journey error_rate", "check journey failed (error_rate)"),
    # patch_apply's own health check after the restart fails the host: the apply step reports it, the gate names it
    ("unhealthy_after", "", "health check failed"),
])
def test_each_fault_is_caught_by_its_gate_the_halt_names_it_and_the_report_shows_where(demo: Demo, fault: str, gate: str, trigger: str) -> None:
    code, screen = demo.run("run", "--fault", fault, fleet=True)
    assert code == 2, screen  # the rollout did not complete
    for noise in ("skipping", "[WARNING]", "Traceback", "[ERROR]", "TASK ["):
        assert noise not in screen, screen
    lines = screen.splitlines()
    # the faulty hosts (us-east/globex) are the third batch of wave-3; every batch before it passed its gates
    passed = [line for line in lines if re.match(r"^(canary|wave-\d)\s+batch [0-6]/8 ", line)]
    assert len(passed) == 7 and all(line.endswith(("continue", "continue, baked 1 s")) for line in passed), screen
    stopped = next(line for line in lines if line.startswith("wave-3  batch 7/8 "))
    assert stopped.endswith("| rollback_wave"), stopped
    assert "failed 2" in stopped and "budget left 0/1" in stopped
    if gate:
        assert re.search(re.escape(gate) + r" [0-9.]+( ms)? <= [0-9.]+( ms)? FAIL \(2 host\(s\)\)", stopped), stopped
    why = lines[lines.index(stopped) + 1]
    assert why.startswith(f"  why: response rollback_wave of wave-3 to 2 host(s) with {trigger}: us-east-globex-"), why
    halted = demo.summary()["halted"]
    assert halted["action"] == "rollback_wave" and halted["trigger"].startswith("response rollback_wave of wave-3"), halted
    assert "rolled_back" == demo.summary()["status"]
    table = lines[lines.index(next(line for line in lines if line.startswith("wave    hosts"))):]
    # the 2 failed hosts were rolled back with the 4 patched before them: failed 2, rolled back 6
    assert table[4].split() == ["wave-3", "8", "0", "2", "0", "6", "2", "rollback_wave", "resume"], screen
    assert "  resume:   bin/demo run   (the same command: the run continues where it stopped)" in lines
    # the drift report says where, from the hosts and the registry: eu-west runs 1.0.1; in us-east every node failed, was
    # rolled back (unhealthy: its latest rollout outcome) or was never reached (it lacks the patch), in both environments
    code, screen = demo.run("report")
    assert code == 0, screen
    report, page = drift_report(demo.state_dir)
    assert heat_map(page) == {(region, tenant): (4, 4 if region == "eu-west" else 0) for region in REGIONS for tenant in TENANTS}
    cells = matrix_cells(report)
    assert {key: cell for key, cell in cells.items() if key[1] == "billing"} == {(env, "billing"): ("in_sync", 8, 8, "2.3.0") for env in ENVIRONMENTS}
    assert {key: cell[:3] for key, cell in cells.items() if key[1] == "myapp"} == {(env, "myapp"): ("unhealthy", 4, 8) for env in ENVIRONMENTS}
    summary = demo.summary()
    expected = {host: "unhealthy" for host in summary["failures"] + summary["rolled_back"]} | {host: "missing_patch" for host in summary["untouched"]}
    assert {row["host"]: row["status"] for row in report["rows"] if row["status"] != "in_sync"} == expected, report["rows"]


def test_report_and_teardown_after_a_run(demo: Demo) -> None:
    """The drift report of the demo's fleet (staging and prod, billing beside myapp on every node) before and after the
    rollout: a 2 x 2 environment x service matrix and a 2 x 2 region x tenant heat map whose statuses come from the hosts."""
    code, screen = demo.run("report")
    assert code == 1 and "no demo fleet" in screen  # nothing to report on yet
    # before the rollout: the fleet as built (preview touches no host), every node at myapp 1.0.0 and billing 2.3.0
    code, screen = demo.run("preview", fleet=True)
    assert code == 0, screen
    code, screen = demo.run("report")
    assert code == 0, screen
    assert_clean(screen)
    report, page = drift_report(demo.state_dir)
    assert report["summary"]["environments"] == ENVIRONMENTS and report["summary"]["services"] == SERVICES, report["summary"]
    assert report["summary"]["hosts_per_environment"] == {"staging": 8, "prod": 8}
    assert matrix_cells(report) == {(env, "myapp"): ("drifted", 0, 8, "1.0.1") for env in ENVIRONMENTS} | {
        (env, "billing"): ("in_sync", 8, 8, "2.3.0") for env in ENVIRONMENTS}
    assert {row["version"] for row in report["rows"] if row["service"] == "myapp"} == {"1.0.0"}
    # a host counts in the worst class of its services: each region x tenant holds 4 nodes, none in sync yet
    assert heat_map(page) == {(region, tenant): (4, 0) for region in REGIONS for tenant in TENANTS}
    assert re.findall(r'<td class="cell s-(\w+)" data-status="\1">', page) == ["in_sync", "drifted"] * 2  # billing, myapp per row
    # the rollout patches myapp on every node of both environments: every cell in sync
    code, screen = demo.run("run", fleet=True)
    assert code == 0, screen
    code, screen = demo.run("report")
    assert code == 0, screen
    assert_clean(screen)
    report, page = drift_report(demo.state_dir)
    assert matrix_cells(report) == {(env, service): ("in_sync", 8, 8, "1.0.1" if service == "myapp" else "2.3.0")
                                    for env in ENVIRONMENTS for service in SERVICES}
    assert report["summary"]["statuses"]["in_sync"] == 32 and report["summary"]["drift"] == 0, report["summary"]
    assert {row["version"] for row in report["rows"] if row["service"] == "myapp"} == {"1.0.1"}
    assert heat_map(page) == {(region, tenant): (4, 4) for region in REGIONS for tenant in TENANTS}
    assert "<th>environment</th><th>billing</th><th>myapp</th>" in page
    code, screen = demo.run("teardown", fleet=True)
    assert code == 0, screen
    assert not os.path.exists(demo.fleet_dir) and not os.path.exists(os.path.join(demo.state_dir, "runs", RUN_ID))
    # a run after teardown starts over on a new fleet: every host is patched again
    code, screen = demo.run("run", fleet=True)
    assert code == 0, screen
    assert demo.summary()["counts"]["patched"] == 16
