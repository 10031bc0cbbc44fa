"""patch_apply's command_checks option: the policy's command checks taken in the same execution as the apply."""

from __future__ import annotations

import os
import shutil
import sys
import typing as t
from pathlib import Path

import pytest

from test_patch_apply import TRUE, Fleet, run_module

FALSE = ["false"]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = Fleet(tmp_path)
    fleet.install("1.0.0")
    return fleet


def marking(path: Path, **extra: t.Any) -> dict[str, t.Any]:
    """A check that leaves a trace of every sample it took (one line each) and passes."""
    code = f"open({str(path)!r}, 'a').write('x\\n')"
    return {"name": "marks", "kind": "command", "command": [sys.executable, "-c", code], "samples": 2, **extra}


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_samples_come_back_with_the_apply_result(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    checks = [
        marking(marker),
        {"name": "says-hello", "kind": "command", "command": "sh -c 'echo hello; echo oops >&2; exit 3'", "expect_rc": 3,
         "stdout_regex": "^bye", "samples": 1},
        {"name": "expects-0", "kind": "command", "command": FALSE, "samples": 1},
        {"name": "web", "kind": "http", "url": "http://${host}/"},  # not the host's: left to the controller
    ]
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE, command_checks=checks))
    assert not result.get("failed"), result
    assert fleet.current() == "1.0.1" and result["changed"] is True
    samples = result["command_checks"]["samples"]
    assert list(result["command_checks"]) == ["samples"]
    assert sorted(samples) == ["expects-0", "marks", "says-hello"]
    assert [(item["outcome"], item["reason"]) for item in samples["marks"]] == [("ok", ""), ("ok", "")]
    assert [(item["outcome"], item["reason"]) for item in samples["says-hello"]] == [("error", "output does not match '^bye': oops")]
    assert [(item["outcome"], item["reason"]) for item in samples["expects-0"]] == [("error", "exit code 1, expected 0")]
    assert all(isinstance(item["latency_ms"], float) and item["latency_ms"] > 0 for items in samples.values() for item in items)
    assert lines(marker) == 2


def test_a_command_that_cannot_run_is_unavailable_not_a_failure(fleet: Fleet) -> None:
    checks = [{"name": "missing", "kind": "command", "command": ["/nonexistent/fleetpatch-check", "--now"], "samples": 2}]
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE, command_checks=checks))
    assert not result.get("failed"), result
    assert fleet.current() == "1.0.1"
    reason = "cannot run /nonexistent/fleetpatch-check: not found or not executable"
    assert result["command_checks"]["samples"] == {"missing": [{"outcome": "unavailable", "latency_ms": None, "reason": reason}] * 2}


@pytest.mark.skipif(shutil.which("timeout") is None, reason="timeout(1) (coreutils) is not installed")
def test_a_command_past_its_timeout_is_stopped_and_an_error(fleet: Fleet) -> None:
    checks = [{"name": "slow", "kind": "command", "command": ["sleep", "30"], "samples": 1, "timeout": 0.2}]
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE, command_checks=checks))
    (only,) = result["command_checks"]["samples"]["slow"]
    assert (only["outcome"], only["reason"]) == ("error", "timed out after 0.2 s")
    assert only["latency_ms"] < 5000


def test_no_checks_no_key(fleet: Fleet) -> None:
    for args in (fleet.args("1.0.1", restart_command=TRUE), fleet.args("1.0.1", restart_command=TRUE, command_checks=[])):
        result = fleet.run(args)
        assert not result.get("failed"), result
        assert "command_checks" not in result


@pytest.mark.parametrize("restart", [FALSE, ["/nonexistent/restart"]])
def test_a_failed_apply_runs_no_check(fleet: Fleet, tmp_path: Path, restart: list[str]) -> None:
    marker = tmp_path / "marker"
    result = fleet.run(fleet.args("1.0.1", restart_command=restart, command_checks=[marking(marker)]))
    assert result["failed"] is True and result["reverted"] is True, result
    assert "command_checks" not in result
    assert lines(marker) == 0
    assert fleet.current() == "1.0.0"


def test_checks_also_run_when_nothing_changes(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    fleet.install("1.0.1")
    again = fleet.run(fleet.args("1.0.1", restart_command=TRUE, command_checks=[marking(marker)]))
    assert again["changed"] is False and [item["outcome"] for item in again["command_checks"]["samples"]["marks"]] == ["ok", "ok"]
    other = fleet.run(fleet.args("1.0.2", restart_command=TRUE, affected_versions=["1.0.0"], command_checks=[marking(marker)]))
    assert other["not_applicable"] is True and other["changed"] is False
    assert [item["outcome"] for item in other["command_checks"]["samples"]["marks"]] == ["ok", "ok"]
    assert lines(marker) == 4
    assert fleet.current() == "1.0.1"


def test_check_mode_runs_no_command(fleet: Fleet, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    before = fleet.snapshot()
    result = fleet.run(fleet.args("1.0.1", restart_command=TRUE, command_checks=[marking(marker)]), check=True)
    assert not result.get("failed") and result["changed"] is True, result
    assert result["command_checks"] == {"samples": {}}
    assert lines(marker) == 0 and fleet.snapshot() == before


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ([{"name": "c", "kind": "command"}], "command_checks[0] (c): 'command' (an argv list or a string) is required"),
        ([{"name": "c", "kind": "command", "command": "echo 'open"}],
         "command_checks[0] (c).command \"echo 'open\" cannot be split into arguments: No closing quotation"),
        ([{"name": "c", "kind": "command", "command": TRUE, "stdout_regex": "("}],
         "command_checks[0] (c).stdout_regex: invalid regular expression '(': missing ), unterminated subpattern at position 0"),
        ([{"name": "c", "kind": "command", "command": TRUE}, {"name": "c", "kind": "command", "command": TRUE}],
         "command_checks: check name(s) c used twice"),
    ],
)
def test_an_invalid_check_fails_before_the_host_is_touched(fleet: Fleet, checks: list[dict[str, t.Any]], message: str) -> None:
    before = fleet.snapshot()
    result = run_module({**fleet.args("1.0.1", restart_command=TRUE, command_checks=checks), "_ansible_check_mode": False})
    assert result["failed"] is True and result["msg"] == message
    assert fleet.snapshot() == before and fleet.current() == "1.0.0"
    assert not os.path.exists(os.path.join(fleet.root, "apps", "web", "releases", "1.0.1"))
