"""The demo's screen, read under a pseudo-terminal: what a newcomer sees from `bin/demo` on a fresh clone.

One line per batch with wave and batch numbers, counts, every gate's measured value next to its condition and the budget
left; a table per wave with the next command; under 60 lines, no skipping noise, no warning, no traceback. `-v` gives
Ansible's full task output back.
"""

from __future__ import annotations

import re
import shutil
import typing as t

import pytest

from tests.integration.test_bin_demo import ENVIRONMENTS, RUN_ID, Demo, assert_clean

pytestmark = pytest.mark.integration

WAVES = ["canary", "wave-1", "wave-1", "wave-2", "wave-2", "wave-3", "wave-3", "wave-3", "wave-3"]
BATCH = re.compile(r"^(?P<wave>canary|wave-\d)\s+batch (?P<batch>\d)/8  patched (?P<patched>\d)/(?P<hosts>\d) failed 0 quarantined 0"
                   r" \| health (?P<healthy>\d+)/(?P=healthy) \| journey error_rate 0 <= 0\.1 \| latency p95 [0-9.]+ ms <= 500 ms"
                   r" \| budget left 1/1 \| continue(, baked 1 s)?$")


@pytest.fixture
def demo(tmp_path) -> t.Iterator[Demo]:
    made = Demo(str(tmp_path))
    try:
        yield made
    finally:
        made.teardown()
        shutil.rmtree(made.repo, ignore_errors=True)


def test_the_default_demo_fits_a_screen_and_says_what_happened(demo: Demo) -> None:
    code, screen = demo.run("run", fleet=True)
    assert code == 0, screen
    assert_clean(screen)
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) < 60, screen
    batches = [match for match in map(BATCH.match, lines) if match]
    assert [match["wave"] for match in batches] == WAVES, screen
    assert [int(match["batch"]) for match in batches] == list(range(9))
    assert sum(int(match["patched"]) for match in batches) == 16
    assert f"plan {RUN_ID}: 16 hosts, 4 waves, 9 batches" in screen
    # the demo's fleet has two environments (one node of each per region, tenant and segment): the run patched both
    hosts = demo.summary()["hosts"]
    assert sorted({host.rsplit("-", 2)[1] for host in hosts}) == sorted(ENVIRONMENTS) and len(hosts) == 16, hosts
    assert {entry["outcome"] for entry in hosts.values()} == {"patched"}
    assert "gates: health, journey (error_rate <= 0.1), latency (p95 <= 500 ms)" in lines
    assert "status: rolled_out: 16 of 16 host(s) patched, 0 failed, 0 rolled back, 0 untouched; error budget 1 left" in lines
    header = lines.index(next(line for line in lines if line.startswith("wave    hosts")))
    assert lines[header].split() == ["wave", "hosts", "patched", "failed", "quarant.", "rolled", "back", "untouched", "gate", "next"]
    rows = [line.split() for line in lines[header + 1:header + 5]]
    assert rows == [[wave, hosts, hosts, "0", "0", "0", "0", "continue", "report"]
                    for wave, hosts in (("canary", "1"), ("wave-1", "4"), ("wave-2", "3"), ("wave-3", "8"))], screen
    assert lines[header + 5:header + 7] == ["next:", "  report:   bin/demo report"]


def test_verbose_gives_the_full_task_output_back(demo: Demo) -> None:
    code, screen = demo.run("preview", "-v", fleet=True)
    assert code == 0, screen
    assert "TASK [fleetpatch.rollout.rollout : Classify the change" in screen
    assert "PLAY RECAP" in screen and "skipping" in screen  # the default callback's output, as it prints it
