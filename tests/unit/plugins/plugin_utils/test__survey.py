"""Survey-proof role variables: strict conversion of what AWX surveys send, with errors that name the variable."""

from __future__ import annotations

import os
import re
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.action.role_vars import ROLES, entry_point_options
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._survey import (
    SurveyValueError,
    convert_value,
    normalise_role_vars,
    typed_options,
)

ROLES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles")


@pytest.mark.parametrize(("kind", "value", "expected"), [
    ("bool", "true", True), ("bool", "false", False), ("bool", "yes", True), ("bool", "no", False),
    ("bool", "1", True), ("bool", "0", False), ("bool", "On", True), ("bool", " OFF ", False),
    ("bool", True, True), ("bool", 0, False), ("bool", 1, True),
    ("int", "25", 25), ("int", " -3 ", -3), ("int", 25, 25), ("int", 25.0, 25),
    ("float", "5", 5.0), ("float", "2.5", 2.5), ("float", ".5", 0.5), ("float", 3, 3.0), ("float", "1e3", 1000.0),
    ("percent", "25%", 25.0), ("percent", "25", 25.0), ("percent", 12.5, 12.5), ("percent", " 100 % ", 100.0),
])
def test_survey_answers_convert(kind: str, value: t.Any, expected: t.Any) -> None:
    converted = convert_value("some_var", kind, value)
    assert converted == expected
    assert type(converted) is type(expected)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("bool", "maybe", "some_var: 'maybe' is not a boolean (true, false, yes, no, on, off, 1 or 0)"),
    ("bool", "", "some_var: '' is not a boolean (true, false, yes, no, on, off, 1 or 0)"),
    ("bool", 2, "some_var: 2 is not a boolean (true, false, yes, no, on, off, 1 or 0)"),
    ("bool", "t", "some_var: 't' is not a boolean (true, false, yes, no, on, off, 1 or 0)"),
    ("int", "25x", "some_var: '25x' is not an integer"),
    ("int", "2.5", "some_var: '2.5' is not an integer"),
    ("int", "25%", "some_var: '25%' is not an integer"),
    ("int", True, "some_var: True is not an integer"),
    ("float", "25%", "some_var: '25%' is not a number"),
    ("float", "nan", "some_var: 'nan' is not a number"),
    ("float", "inf", "some_var: 'inf' is not a number"),
    ("percent", "25x", "some_var: '25x' is not a number or a percentage (25 or 25%)"),
    ("percent", "%", "some_var: '%' is not a number or a percentage (25 or 25%)"),
    ("percent", "125%", "some_var: '125%' is not a percentage between 0 and 100"),
    ("percent", "-1", "some_var: '-1' is not a percentage between 0 and 100"),
])
def test_anything_else_is_refused_naming_the_variable(kind: str, value: t.Any, message: str) -> None:
    with pytest.raises(SurveyValueError, match=f"^{re.escape(message)}$"):
        convert_value("some_var", kind, value)


def test_a_long_value_is_shown_truncated() -> None:
    with pytest.raises(SurveyValueError) as info:
        convert_value("some_var", "int", "9" * 500 + "x")
    assert len(str(info.value)) < 90


def test_normalise_converts_given_values_and_defaults_and_reports_every_bad_one() -> None:
    options = {
        "r_preview": {"type": "bool", "default": False},
        "r_ttl": {"type": "int", "default": 1800},
        "r_timeout": {"type": "float", "default": 5.0},
        "r_name": {"type": "str", "default": "x"},
        "r_unset": {"type": "int"},
    }
    assert normalise_role_vars(options, {"r_preview": "false", "r_ttl": "25", "r_name": "yes"}) == {
        "r_preview": False, "r_ttl": 25, "r_timeout": 5.0, "r_unset": None}
    with pytest.raises(SurveyValueError, match=r"^r_preview: 'maybe' is not a boolean .*; r_ttl: '25x' is not an integer$"):
        normalise_role_vars(options, {"r_preview": "maybe", "r_ttl": "25x"})


@pytest.mark.parametrize("role", ROLES)
def test_every_entry_point_of_every_role_converts_its_own_defaults(role: str) -> None:
    import yaml  # noqa: PLC0415 - pyyaml ships with ansible-core

    with open(os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        entry_points = yaml.safe_load(handle)["argument_specs"]
    for entry_point in entry_points:
        options = entry_point_options(role, entry_point)
        kinds = typed_options(options)
        converted = normalise_role_vars(options, {})
        assert set(converted) == set(kinds)
        for name, kind in kinds.items():
            if converted[name] is not None:
                assert isinstance(converted[name], {"bool": bool, "int": int, "float": float, "percent": float}[kind]), name


def test_the_percentages_are_raw_in_the_spec_so_that_role_validation_lets_25_percent_through() -> None:
    options = entry_point_options("prestage", "report")
    assert options["prestage_fail_below"]["type"] == "raw"
    assert typed_options(options)["prestage_fail_below"] == "percent"


def test_an_unknown_entry_point_is_an_error() -> None:
    with pytest.raises(SurveyValueError, match="^role rollout has no entry point nope$"):
        entry_point_options("rollout", "nope")
