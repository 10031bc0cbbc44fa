"""bin/demo from a fresh clone, the way a newcomer runs it: every subcommand, on a fleet of its own, under a terminal.

The clone is of the checkout's HEAD (commit first); it uses this venv (FLEETPATCH_VENV) so nothing is installed.
Faults: each preset `bin/demo run --fault KIND` injects is caught by the gate meant for it, and the halt names it.
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
def test_each_fault_is_caught_by_its_gate_and_the_halt_names_it(demo: Demo, fault: str, gate: str, trigger: str) -> None:
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


def test_report_and_teardown_after_a_run(demo: Demo) -> None:
    code, screen = demo.run("report")
    assert code == 1 and "no demo fleet" in screen  # nothing to report on yet
    code, screen = demo.run("run", fleet=True)
    assert code == 0, screen
    code, screen = demo.run("report")
    assert code == 0, screen
    assert_clean(screen)
    with open(os.path.join(demo.state_dir, "reports", "drift-report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    # every host the demo patched runs what the demo's desired state asks for
    assert report["summary"]["statuses"]["in_sync"] >= 16, report["summary"]
    code, screen = demo.run("teardown", fleet=True)
    assert code == 0, screen
    assert not os.path.exists(demo.fleet_dir) and not os.path.exists(os.path.join(demo.state_dir, "runs", RUN_ID))
    # a run after teardown starts over on a new fleet: every host is patched again
    code, screen = demo.run("run", fleet=True)
    assert code == 0, screen
    assert demo.summary()["counts"]["patched"] == 16
