from __future__ import annotations

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import RunPaths, append_event, queued_events


def test_append_event_queues_and_writes_nothing(tmp_path) -> None:
    paths = RunPaths(str(tmp_path), "FP-1")
    append_event(paths, {"ts": "t0", "event": "gate.decision", "run_id": "FP-1", "correlation_id": "c", "batch": 2, "wave": "w",
                         "action": "halt", "reasons": ["r"], "failed_hosts": ["h"]})
    append_event(paths, {"ts": "t1", "event": "host.outcome", "host": "h", "outcome": "failed", "reason": "HTTP 503"})
    append_event(paths, {"ts": "t2", "event": "run.finished", "status": "halted", "message": "done", "counts": {}})
    assert not list(tmp_path.iterdir())
    assert queued_events(paths) == [
        {"event": "gate.decision", "ts": "t0", "wave": "w", "batch": 2, "status": "halt",
         "data": {"action": "halt", "reasons": ["r"], "failed_hosts": ["h"]}},
        {"event": "host.outcome", "ts": "t1", "host": "h", "status": "failed", "data": {"outcome": "failed", "reason": "HTTP 503"}},
        {"event": "run.finished", "ts": "t2", "message": "done", "status": "halted", "data": {"counts": {}}},
    ]
