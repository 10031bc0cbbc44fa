# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: survey-proof role variables (controller only). Not a public API.

AWX surveys send every answer as a string (``"false"``, ``"25"``), and extra variables beat every other variable
source, so no task can overwrite them with a converted value. Ansible's role argument validation checks such a value
but does not convert it: ``when: rollout_preview`` with ``"false"`` is truthy. So each role entry point converts its
boolean and number variables once, strictly, with this module (through the ``fleetpatch.rollout.role_vars`` action),
and its tasks read the converted values from the registered result instead of the raw variables.
"""

from __future__ import annotations

import math
import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = ["PERCENT_OPTIONS", "SurveyValueError", "convert_value", "normalise_role_vars", "typed_options"]

# Variables whose value is a percentage: "25%" is accepted as well as 25 (and means the same).
PERCENT_OPTIONS = frozenset({"prestage_fail_below"})
# What an AWX survey, a YAML file or a command line (-e x=yes) sends for a boolean: nothing else is taken.
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHOWN = 40


class SurveyValueError(FleetpatchError, ValueError):
    """A role variable whose value is not of its declared type (names the variable and the value)."""


def _shown(value: t.Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}...'"


def _to_bool(name: str, value: t.Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SurveyValueError(f"{name}: {_shown(value)} is not a boolean (true, false, yes, no, on, off, 1 or 0)")


def _to_int(name: str, value: t.Any) -> int:
    if isinstance(value, bool):
        raise SurveyValueError(f"{name}: {_shown(value)} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise SurveyValueError(f"{name}: {_shown(value)} is not an integer")


def _to_float(name: str, value: t.Any, *, percent: bool) -> float:
    what = "a number or a percentage (25 or 25%)" if percent else "a number"
    text = value.strip() if isinstance(value, str) else None
    if text is not None and percent and text.endswith("%"):
        text = text[:-1].strip()
    if isinstance(value, bool):
        raise SurveyValueError(f"{name}: {_shown(value)} is not {what}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif text is not None and _FLOAT.fullmatch(text):
        number = float(text)
    else:
        raise SurveyValueError(f"{name}: {_shown(value)} is not {what}")
    if not math.isfinite(number):
        raise SurveyValueError(f"{name}: {_shown(value)} is not {what}")
    if percent and not 0 <= number <= 100:
        raise SurveyValueError(f"{name}: {_shown(value)} is not a percentage between 0 and 100")
    return number


def convert_value(name: str, kind: str, value: t.Any) -> t.Any:
    """value as the declared kind (bool, int, float, percent), converted strictly; SurveyValueError otherwise."""
    if kind == "bool":
        return _to_bool(name, value)
    if kind == "int":
        return _to_int(name, value)
    if kind in ("float", "percent"):
        return _to_float(name, value, percent=kind == "percent")
    raise SurveyValueError(f"{name}: no conversion to {kind}")


def typed_options(options: t.Mapping[str, t.Mapping[str, t.Any]]) -> dict[str, str]:
    """{variable: kind} for the options of a role entry point that need converting (bool, int, float, percent)."""
    kinds = {}
    for name, spec in options.items():
        kind = "percent" if name in PERCENT_OPTIONS else str(spec.get("type", "str"))
        if kind in ("bool", "int", "float", "percent"):
            kinds[name] = kind
    return kinds


def normalise_role_vars(options: t.Mapping[str, t.Mapping[str, t.Any]], values: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The converted value of every bool/int/float/percent option of an entry point: the caller's value (values), else
    the option's default. Every bad value is reported, each naming its variable, in one SurveyValueError."""
    converted: dict[str, t.Any] = {}
    errors = []
    for name, kind in sorted(typed_options(options).items()):
        value = values[name] if name in values else options[name].get("default")
        if value is None:
            converted[name] = None
            continue
        try:
            converted[name] = convert_value(name, kind, value)
        except SurveyValueError as exc:
            errors.append(str(exc))
    if errors:
        raise SurveyValueError("; ".join(errors))
    return converted
