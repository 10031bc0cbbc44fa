"""The run document's pure functions (the backends' own behaviour is test__store_conformance.py's)."""

from __future__ import annotations

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    empty_state,
    failures,
    record_outcome,
)


def test_outcomes_merge_by_host_latest_wins() -> None:
    state = empty_state("FP-1", "FP-1", "f" * 64)
    record_outcome(state, "a", "failed", at="t1", reason="boom")
    record_outcome(state, "b", "patched", at="t1")
    record_outcome(state, "c", "quarantined", at="t1")
    assert failures(state) == ["a", "c"]
    record_outcome(state, "a", "patched", at="t2")
    assert failures(state) == ["c"]
