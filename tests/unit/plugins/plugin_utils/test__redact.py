from __future__ import annotations

import hashlib
import json

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import (
    CENSORED,
    MASK,
    Redactor,
    clean_result,
)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("db_password", True),
        ("API_TOKEN", True),
        ("vault_secret_id", True),
        ("ssh_private_key", True),
        ("declared_blob", True),
        ("fleet_region", False),
        ("tokenizer", True),  # a pattern match is a match: better one masked value too many
        (42, False),
    ],
)
def test_secret_names(name, secret: bool) -> None:
    assert Redactor(names=["Declared_Blob"]).is_secret_name(name) is secret


def test_collect_finds_nested_secret_names_and_reports_short_values() -> None:
    redactor = Redactor()
    redactor.collect({"db": {"password": "hunter2-long", "user": "app"}, "tokens": ["t0ken-one", "t0ken-two"], "pin_secret": "123",
                      "plain": "visible"})
    masked, count = redactor.mask_text("hunter2-long t0ken-one t0ken-two visible 123")
    assert masked == f"{MASK} {MASK} {MASK} visible 123" and count == 3
    assert redactor.too_short == {"pin_secret"}


def test_masks_json_escaped_forms_inside_serialised_text() -> None:
    redactor = Redactor(names=["blob"])
    redactor.add('pa"ss\\word/é', name="blob")
    inner = json.dumps({"value": 'pa"ss\\word/é'})  # the secret inside a JSON string inside another string
    text = redactor.dumps({"msg": inner, "raw": 'x pa"ss\\word/é y', "pa\"ss\\word/é": 1})
    assert "ss\\\\word" not in text.replace(MASK, "")
    assert "word" not in text
    assert json.loads(text)["raw"] == f"x {MASK} y"


def test_a_secret_spanning_json_syntax_still_gives_valid_json() -> None:
    redactor = Redactor(names=["weird"])
    redactor.add('true,"b"', name="weird")
    text = redactor.dumps({"a": True, "b": 'true,"b"'})
    assert json.loads(text) == {"a": True, "b": MASK}


def test_no_log_results_are_censored_at_every_level() -> None:
    redactor = Redactor()
    result = {"changed": True, "results": [{"_ansible_no_log": True, "stdout": "s3cr3t", "changed": True},
                                           {"stdout": "fine", "_ansible_item_label": "x"}],
              "invocation": {"module_args": {"password": "x"}}, "fleetpatch_events": [1]}
    cleaned = clean_result(result, redactor=redactor)
    assert cleaned == {"changed": True, "results": [{"changed": True, "censored": CENSORED}, {"stdout": "fine"}]}
    assert clean_result({"_ansible_no_log": True, "msg": "s3cr3t", "failed": True}, redactor=redactor) == {"failed": True, "censored": CENSORED}


def test_long_strings_are_truncated_with_the_digest_of_the_masked_value() -> None:
    redactor = Redactor(names=["token"])
    redactor.add("SECRET-TOKEN-VALUE", name="token")
    long_text = "a" * 5000 + "SECRET-TOKEN-VALUE"
    cleaned = clean_result({"stdout": long_text}, redactor=redactor, max_chars=1000)["stdout"]
    masked = "a" * 5000 + MASK
    assert cleaned == {"truncated": True, "chars": len(masked), "sha256": hashlib.sha256(masked.encode()).hexdigest(), "head": "a" * 512}
