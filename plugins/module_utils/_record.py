# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the base of the host side's small value classes. Not a public API.

What ``dataclasses`` would give them (equality, a repr without secrets, frozen fields), without its cost on a host:
a dataclass is built when its module is executed, by compiling the source of its ``__init__``, ``__repr__``, ``__eq__``
and so on, on every module execution (0.5 to 2 ms of CPU per class, several ms per patch_apply execution). These
methods are written once here; each class declares its fields in ``__slots__`` and its own ``__init__``.
"""

from __future__ import annotations

import typing as t

__all__ = ["Record"]


class Record:
    """Fields in ``__slots__`` (every class of a hierarchy lists its own); equal when of the same class with equal
    fields; repr shows every field but those in ``_hidden`` (secrets); frozen unless ``_frozen`` is false (then set
    fields in ``__init__`` with ``_set``, which works either way)."""

    __slots__: tuple[str, ...] = ()
    _hidden: t.ClassVar[frozenset[str]] = frozenset()
    _frozen: t.ClassVar[bool] = True

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return tuple(name for klass in reversed(cls.__mro__) for name in klass.__dict__.get("__slots__", ()))

    def _set(self, **values: t.Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[t.Any, ...]:
        return tuple(getattr(self, name) for name in self._fields())

    def __setattr__(self, name: str, value: t.Any) -> None:
        if self._frozen:
            raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
        object.__delattr__(self, name)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == t.cast(Record, other)._values()

    def __hash__(self) -> int:
        if not self._frozen:
            raise TypeError(f"unhashable type: {type(self).__name__!r}")
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields() if name not in self._hidden)
        return f"{type(self).__name__}({shown})"

    def as_dict(self) -> dict[str, t.Any]:
        """Every field; lists and dicts copied all the way down (as dataclasses.asdict does)."""
        return {name: _copy(getattr(self, name)) for name in self._fields()}


def _copy(value: t.Any) -> t.Any:
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value
