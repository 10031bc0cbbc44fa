"""playbooks/rollout.yml: the readiness plays have no hosts at all unless rollout_stage=prestaged (issue 19), so the url
and copy stages pay no skipped task per host, and the per-host check play covers only the hosts queued for it."""

from __future__ import annotations

import os
import typing as t

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

PLAYBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "..", "playbooks", "rollout.yml")


def readiness_plays() -> list[dict[str, t.Any]]:
    with open(PLAYBOOK, encoding="utf-8") as handle:
        plays = yaml.safe_load(handle)
    return [play for play in plays if play["name"].startswith("Readiness gate")]


def hosts_of(play: dict[str, t.Any], *, groups: dict[str, list[str]], localhost: dict[str, t.Any]) -> t.Any:
    variables = {"groups": groups, "hostvars": {"localhost": localhost}}
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(play["hosts"]))


PLANNED = {"all": ["n1", "n2"]}
# the plan play's fact: the batch play's hosts in plan order (empty in a preview)
QUEUED = {"__rollout_plan_hosts": ["n1", "n2"]}


def test_three_readiness_plays_controller_hosts_controller() -> None:
    plays = readiness_plays()
    assert [play["tasks"][0]["ansible.builtin.import_role"]["tasks_from"] for play in plays] == ["ready", "ready_hosts", "ready_report"]


@pytest.mark.parametrize("localhost", [{"rollout_stage": "url"}, {"rollout_stage": "copy"}, {}], ids=["url", "copy", "default"])
def test_no_hosts_unless_prestaged(localhost: dict[str, t.Any]) -> None:
    for play in readiness_plays():
        assert not hosts_of(play, groups=PLANNED, localhost=dict(QUEUED, **localhost)), play["name"]


def test_prestaged_runs_on_the_controller_and_the_queued_hosts_only() -> None:
    first, check, verdict = readiness_plays()
    prestaged = {"rollout_stage": "prestaged", **QUEUED}
    assert hosts_of(first, groups=PLANNED, localhost=prestaged) == "localhost"
    assert hosts_of(verdict, groups=PLANNED, localhost=prestaged) == "localhost"
    # every host had a record: no group, no hosts
    assert not hosts_of(check, groups=PLANNED, localhost=prestaged)
    assert hosts_of(check, groups=dict(PLANNED, fleetpatch_ready_hosts=["n2"]), localhost=prestaged) == "fleetpatch_ready_hosts"
    # a preview queues no planned host: nothing runs
    assert not hosts_of(first, groups={"all": ["n1"]}, localhost=dict(prestaged, **{"__rollout_plan_hosts": []}))
    assert not hosts_of(first, groups={"all": ["n1"]}, localhost={"rollout_stage": "prestaged"})
