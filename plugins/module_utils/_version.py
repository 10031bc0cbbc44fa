# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: version ordering. Not a public API."""

from __future__ import annotations

import re
import typing as t

__all__ = ["compare_versions", "version_key"]

_TOKEN = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[t.Any, ...]:
    """Sort key for dotted versions: numeric parts compare as numbers, a pre-release sorts before the release.

    ``1.2.10 > 1.2.9``; ``1.0.0-rc1 < 1.0.0``; a patch tag after ``+`` (build metadata) is ignored.
    """
    core, _sep, _build = version.partition("+")
    main, dash, pre = core.partition("-")
    parts: list[tuple[int, t.Any]] = []
    for token in _TOKEN.findall(main):
        parts.append((1, int(token)) if token.isdigit() else (0, token))
    pre_key: tuple[t.Any, ...] = (1,) if not dash else (0, tuple((1, int(x)) if x.isdigit() else (0, x) for x in _TOKEN.findall(pre)))
    return (tuple(parts), pre_key)


def compare_versions(left: str, right: str) -> int:
    """Return -1, 0 or 1 as left is older than, equal to or newer than right."""
    a, b = version_key(left), version_key(right)
    return (a > b) - (a < b)
