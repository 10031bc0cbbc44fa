"""module_utils/_record.py: the value classes of the host side keep what dataclasses gave them (equality, a repr
without secrets, frozen fields, copies in as_dict) without building methods at import."""

from __future__ import annotations

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._fetch import FetchPolicy, Transfer
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostLayout, ReleaseError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import ApplyResult, build_request

SHA = "a" * 64
SIGNATURE = "-----BEGIN SSH SIGNATURE-----\nU0lHTkFUVVJF\n-----END SSH SIGNATURE-----\n"


def test_frozen_value_classes() -> None:
    layout = HostLayout("/srv/fp/", "web")
    assert layout == HostLayout(root="/srv/fp", service="web") and layout.root == "/srv/fp"
    assert layout != HostLayout("/srv/fp", "db") and hash(layout) == hash(HostLayout("/srv/fp", "web"))
    assert repr(layout) == "HostLayout(root='/srv/fp', service='web')"
    with pytest.raises(AttributeError):
        layout.root = "/elsewhere"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del layout.service
    with pytest.raises(ReleaseError):
        HostLayout("", "web")
    assert FetchPolicy(timeout=30, retries=3, backoff=1.0) == FetchPolicy() and FetchPolicy().headers == {}


def test_secrets_stay_out_of_the_repr() -> None:
    request = build_request({"version": "1.0.1", "sha256": SHA, "artifact_url": "http://origin/a.tar.gz",
                             "url_headers": {"Authorization": "Bearer hunter2"}, "signature": SIGNATURE,
                             "allowed_signers": "release@x namespaces=\"fleetpatch\" ssh-ed25519 KEYTEXT"})
    assert request.url_headers == {"Authorization": "Bearer hunter2"} and request.signature == SIGNATURE
    shown = repr(request)
    assert "version='1.0.1'" in shown and "hunter2" not in shown and "U0lHTkFUVVJF" not in shown and "KEYTEXT" not in shown
    assert "hunter2" not in repr(FetchPolicy(headers={"Authorization": "Bearer hunter2"}))
    with pytest.raises(AttributeError):
        request.version = "2.0.0"  # type: ignore[misc]


def test_mutable_records() -> None:
    transfer = Transfer(sha256=SHA, kind="full")
    transfer.bytes += 10
    transfer.errors.append("one")
    copied = transfer.as_dict()
    assert copied == {"sha256": SHA, "kind": "full", "source": None, "bytes": 10, "bytes_by_source": {}, "resumed": False,
                      "restarts": 0, "attempts": 0, "errors": ["one"], "corrupt": {}}
    copied["errors"].append("two")
    assert transfer.errors == ["one"] and Transfer(SHA, "full").errors is not Transfer(SHA, "full").errors
    with pytest.raises(TypeError):
        hash(transfer)
    result = ApplyResult()
    result.act("switch")
    assert result.changed and result.as_dict()["actions"] == ["switch"] and ApplyResult().actions == []
