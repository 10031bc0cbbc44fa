# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the input checks every string from a manifest, policy, inventory or extra var passes
before any host is touched. Not a public API.

Pure functions, no Ansible imports: shared by the controller (rollout_plan, the filters) and host-side code.

Rules (docs/security.md): a value is matched WHOLE (``re.fullmatch``; ``$`` would accept a trailing newline), its
length is bounded, its type is checked (Ansible's tagged ``str`` subclasses count as ``str``, a list never does), and
an error names the field, the value (truncated: a 1 MB value is never copied into a message) and the host or file.
"""

from __future__ import annotations

import re
import typing as t
from urllib.parse import urlsplit, urlunsplit

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = [
    "InputError",
    "NAME_MAX",
    "NAME_RE",
    "TEXT_MAX",
    "check_bool",
    "check_command",
    "check_name",
    "check_path",
    "check_strings",
    "check_text",
    "check_url",
    "label",
    "redact_url",
    "shown",
]

# documented limits (docs/security.md, "The input rules")
NAME_MAX = 128  # region / tenant / segment / environment / service / version / patch id
PATH_MAX = 4096  # fleetpatch_host_root, artifact.path
URL_MAX = 4096
TEXT_MAX = 65536  # free text: description, justification, an armored signature
COMMAND_MAX = 4096  # one restart command argument
SHOWN = 40  # characters of a bad value shown in an error

# a group name of the plan: no separator the plan uses in selectors and group paths (",", "=", "/"), no whitespace
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")
# C0 and C1 control characters and DEL; whitespace inside a single-line value is checked apart
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_NEWLINE_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE_RE = re.compile(r"\s")
TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y", "t"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "n", "f", ""})


class InputError(FleetpatchError, ValueError):
    """A value that must not be used; the message names field, value and source."""


E = t.TypeVar("E", bound=Exception)


def type_name(value: t.Any) -> str:
    """Name of the builtin type behind value, so Ansible's tagged subclasses read as ``str``, ``list``..."""
    if value is None:
        return "None"
    return next((cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "builtins"), type(value).__name__)


def shown(value: t.Any, limit: int = SHOWN) -> str:
    """A value for an error message: repr of a short string, the first ``limit`` characters of a long one."""
    if isinstance(value, str):
        if len(value) > limit:
            return f"{str(value[:limit])!r}... ({len(value)} characters)"
        return repr(str(value))
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    return f"a {type_name(value)}"


def label(value: t.Any, limit: int = 64) -> str:
    """A key or name for a message: as is when short and printable, else like shown()."""
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return str(value)
    return shown(value, limit)


def _prefix(where: str) -> str:
    return f"{where}: " if where and not where.endswith(": ") else where


def check_text(value: t.Any, *, field: str, where: str = "", max_len: int = NAME_MAX, pattern: re.Pattern[str] | None = None,
               multiline: bool = False, allow_empty: bool = False, error: type[Exception] = InputError) -> str:
    """A string of at most ``max_len`` characters, without control characters (newlines only when ``multiline``), matched
    whole by ``pattern`` when given. Returns it as a plain ``str``."""
    prefix = _prefix(where)
    if not isinstance(value, str):
        raise error(f"{prefix}{field} must be a string, got {shown(value)}")
    if not value and not allow_empty:
        raise error(f"{prefix}{field} must be a non-empty string")
    if len(value) > max_len:
        raise error(f"{prefix}{field} {shown(value)} is longer than {max_len} characters")
    control = (_CONTROL_EXCEPT_NEWLINE_RE if multiline else _CONTROL_RE).search(value)
    if control:
        raise error(f"{prefix}{field} {shown(value)} contains the control character {control.group()!r} at position {control.start()}")
    if pattern is not None and not pattern.fullmatch(value):
        raise error(f"{prefix}{field} {shown(value)} does not match {pattern.pattern}")
    return str(value)


def check_name(value: t.Any, *, field: str, where: str = "", error: type[Exception] = InputError) -> str:
    """A group name (region, tenant, segment, environment): NAME_RE, at most NAME_MAX characters."""
    return check_text(value, field=field, where=where, max_len=NAME_MAX, pattern=NAME_RE, error=error)


def check_url(value: t.Any, *, field: str, where: str = "", schemes: t.Sequence[str] = ("http", "https", "file"),
              error: type[Exception] = InputError) -> str:
    """A URL that parses: one of ``schemes``, a host for http(s), an absolute path for file, a valid port, no whitespace or
    control characters anywhere (a space is never part of a URL a client sends; percent-encode it)."""
    prefix = _prefix(where)
    text = check_text(value, field=field, where=where, max_len=URL_MAX, error=error)
    space = _SPACE_RE.search(text)
    if space:
        raise error(f"{prefix}{field} {shown(text)} contains whitespace at position {space.start()}; percent-encode it (%20)")
    if "\\" in text:
        raise error(f"{prefix}{field} {shown(text)} contains a backslash, which clients read differently")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise error(f"{prefix}{field} {shown(text)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        allowed = ", ".join(f"{name}://" for name in schemes)
        raise error(f"{prefix}{field} {shown(text)} has scheme {scheme + '://' if scheme else '(none)'}; allowed: {allowed}")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise error(f"{prefix}{field} {shown(text)} has no host")
        if port == 0:
            raise error(f"{prefix}{field} {shown(text)} has port 0")
    elif scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise error(f"{prefix}{field} {shown(text)} must be file:///absolute/path")
    return text


def redact_url(url: str) -> str:
    """The URL with its userinfo (user and password) replaced by ``***``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def check_path(value: t.Any, *, field: str, where: str = "", error: type[Exception] = InputError) -> str:
    """An absolute path without control characters, at most PATH_MAX characters."""
    text = check_text(value, field=field, where=where, max_len=PATH_MAX, error=error)
    if not text.startswith("/"):
        raise error(f"{_prefix(where)}{field} {shown(text)} must be an absolute path")
    return text


def check_command(value: t.Any, *, field: str, where: str = "", error: type[Exception] = InputError) -> list[str] | str:
    """A restart command: a non-empty argv list of strings, or one string (split with shlex on the host)."""
    prefix = _prefix(where)
    if isinstance(value, str):
        return check_text(value, field=field, where=where, max_len=COMMAND_MAX, error=error)
    if not isinstance(value, (list, tuple)) or not value:
        raise error(f"{prefix}{field} must be an argv list of strings or a string, got {shown(value)}")
    if len(value) > 256:
        raise error(f"{prefix}{field} has {len(value)} arguments; at most 256")
    return [check_text(item, field=f"{field}[{index}]", where=where, max_len=COMMAND_MAX, error=error) for index, item in enumerate(value)]


def check_bool(value: t.Any, *, field: str, where: str = "", error: type[Exception] = InputError) -> bool:
    """A boolean, or a survey/extra-var string such as "true", "no", "1" (AWX sends every value as a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise error(f"{_prefix(where)}{field} must be a boolean (true/false), got {shown(value)}")


def check_strings(data: t.Any, *, where: str, path: str = "", max_len: int = TEXT_MAX, max_items: int = 100000,
                  error: type[Exception] = InputError) -> None:
    """Walk nested data (a policy, an override) and refuse keys that are not strings of at most NAME_MAX characters and
    string values with control characters (newline and tab allowed: free text, scripts) or over ``max_len`` characters.

    The specific validators check meanings; this pass makes sure no value anywhere is a 1 MB string or carries a NUL
    or an escape sequence into a log line. ``max_items`` bounds the walk itself.
    """
    stack: list[tuple[str, t.Any]] = [(path, data)]
    seen = 0
    while stack:
        here, value = stack.pop()
        seen += 1
        if seen > max_items:
            raise error(f"{_prefix(where)}more than {max_items} values; refusing to read further")
        if isinstance(value, str):
            if len(value) > max_len:
                raise error(f"{_prefix(where)}{here or 'value'} {shown(value)} is longer than {max_len} characters")
            control = re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value)
            if control:
                raise error(f"{_prefix(where)}{here or 'value'} {shown(value)} contains the control character {control.group()!r}"
                            f" at position {control.start()}")
        elif isinstance(value, t.Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise error(f"{_prefix(where)}{here or 'mapping'} has a key that is not a string: {shown(key)}")
                check_text(key, field=f"key in {here}" if here else "key", where=where, max_len=NAME_MAX, error=error)
                stack.append((f"{here}.{key}" if here else key, item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{here}[{index}]", item) for index, item in enumerate(value))
