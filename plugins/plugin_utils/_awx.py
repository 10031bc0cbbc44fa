# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: who launched this run under AWX / Automation Controller (controller only). Not a public API.

AWX hands a job its identity as extra variables, each under the prefixes ``awx_`` and ``tower_``
(``UnifiedJob.awx_meta_vars`` and ``Job.awx_meta_vars`` in awx/main/models/unified_jobs.py and jobs.py):
``*_job_id``, ``*_job_launch_type``, ``*_job_template_id`` / ``_name``, ``*_workflow_job_id`` / ``_name`` /
``_launch_type`` (a job run by a workflow, and every slice of a sliced job, whose slices are the nodes of one workflow
job), ``*_schedule_id`` / ``_name`` (a job a schedule launched), ``*_parent_job_schedule_id`` / ``_name`` (a workflow a
schedule launched), ``*_user_name`` (whoever launched it; absent for a schedule), ``*_inventory_id``,
``*_project_revision``, ``*_execution_node``.

AWX does not pass a slice's number and count as variables: they only shape the slice's inventory
(``build_inventory`` in awx/main/tasks/jobs.py hands them to the inventory script). A workflow that runs explicit
slices, or the slice coordination, names them with ``fleetpatch_slice_number`` and ``fleetpatch_slice_count``.

One correlation id covers every slice of one workflow: ``awx-workflow-<workflow job id>`` when the job runs in a
workflow, else ``awx-job-<job id>``.
"""

from __future__ import annotations

import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = ["AWX_PREFIXES", "AwxIdentity", "AwxIdentityError", "awx_correlation_id", "awx_identity"]

AWX_PREFIXES = ("awx", "tower")
# field -> suffixes of the AWX variable that carries it (first found wins), and whether it is an id (a positive integer)
_FIELDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "job_id": (("job_id",), True),
    "job_launch_type": (("job_launch_type",), False),
    "job_template_id": (("job_template_id",), True),
    "job_template_name": (("job_template_name",), False),
    "workflow_job_id": (("workflow_job_id",), True),
    "workflow_job_name": (("workflow_job_name",), False),
    "workflow_job_launch_type": (("workflow_job_launch_type",), False),
    "schedule_id": (("schedule_id", "parent_job_schedule_id"), True),
    "schedule_name": (("schedule_name", "parent_job_schedule_name"), False),
    "user_name": (("user_name",), False),
    "inventory_id": (("inventory_id",), True),
    "project_revision": (("project_revision",), False),
    "execution_node": (("execution_node",), False),
}
SLICE_VARS = ("fleetpatch_slice_number", "fleetpatch_slice_count")
_MAX_TEXT = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ID = re.compile(r"[0-9]{1,18}")


class AwxIdentityError(FleetpatchError, ValueError):
    """An AWX identity variable that is not what AWX sends (names the variable)."""


class AwxIdentity(t.NamedTuple):
    """The AWX job a run belongs to; every field is None when AWX did not send it."""

    job_id: int | None = None
    job_launch_type: str | None = None
    job_template_id: int | None = None
    job_template_name: str | None = None
    workflow_job_id: int | None = None
    workflow_job_name: str | None = None
    workflow_job_launch_type: str | None = None
    schedule_id: int | None = None
    schedule_name: str | None = None
    user_name: str | None = None
    inventory_id: int | None = None
    project_revision: str | None = None
    execution_node: str | None = None
    slice_number: int | None = None
    slice_count: int | None = None

    @property
    def launched_by(self) -> str | None:
        """A user name, else how the job was launched (``schedule 7``, ``workflow``, ``webhook``)."""
        if self.user_name:
            return self.user_name
        if self.schedule_id is not None:
            return f"schedule {self.schedule_id}"
        return self.job_launch_type

    @property
    def correlation_id(self) -> str | None:
        """One id for every slice and node of one workflow job, else for the job."""
        if self.workflow_job_id is not None:
            return f"awx-workflow-{self.workflow_job_id}"
        if self.job_id is not None:
            return f"awx-job-{self.job_id}"
        return None

    def event_data(self) -> dict[str, t.Any]:
        """The fields AWX sent, plus launched_by: what an event carries under ``awx``."""
        data = {key: value for key, value in self._asdict().items() if value is not None}
        if self.launched_by is not None:
            data["launched_by"] = self.launched_by
        return data


def _value(extra_vars: t.Mapping[str, t.Any], suffixes: tuple[str, ...]) -> tuple[str, t.Any] | None:
    for suffix in suffixes:
        for prefix in AWX_PREFIXES:
            name = f"{prefix}_{suffix}"
            if extra_vars.get(name) not in (None, ""):
                return name, extra_vars[name]
    return None


def _as_id(name: str, value: t.Any) -> int:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not _ID.fullmatch(text) or int(text) < 1:
        raise AwxIdentityError(f"{name}: {str(value)[:40]!r} is not an AWX id (a positive integer)")
    return int(text)


def _as_text(value: t.Any) -> str:
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _slice(extra_vars: t.Mapping[str, t.Any]) -> tuple[int | None, int | None]:
    number, count = (extra_vars.get(name) for name in SLICE_VARS)
    if number in (None, "") and count in (None, ""):
        return None, None
    if number in (None, "") or count in (None, ""):
        raise AwxIdentityError(f"{SLICE_VARS[0]} and {SLICE_VARS[1]} go together")
    number_id, count_id = _as_id(SLICE_VARS[0], number), _as_id(SLICE_VARS[1], count)
    if number_id > count_id:
        raise AwxIdentityError(f"{SLICE_VARS[0]}: {number_id} is more than {SLICE_VARS[1]} {count_id}")
    return number_id, count_id


def awx_identity(extra_vars: t.Mapping[str, t.Any]) -> AwxIdentity | None:
    """The AWX identity in a run's extra variables, or None outside AWX (no job id). AwxIdentityError for a malformed one."""
    found: dict[str, t.Any] = {}
    for field, (suffixes, is_id) in _FIELDS.items():
        hit = _value(extra_vars, suffixes)
        if hit is not None:
            found[field] = _as_id(*hit) if is_id else _as_text(hit[1])
    number, count = _slice(extra_vars)
    if "job_id" not in found:
        return None
    return AwxIdentity(**found, slice_number=number, slice_count=count)


def awx_correlation_id(extra_vars: t.Mapping[str, t.Any]) -> str | None:
    """The run's correlation id under AWX (see AwxIdentity.correlation_id); None outside AWX or when malformed."""
    try:
        identity = awx_identity(extra_vars)
    except AwxIdentityError:
        return None
    return identity.correlation_id if identity else None
