# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: keeping secrets out of event logs and the registry. Not a public API.

Three rules, applied in this order to everything fleetpatch records:
1. a result marked ``_ansible_no_log`` is replaced by a censored stub (callbacks receive such results raw);
2. values of variables declared secret (by name or by a name pattern such as ``*password*``) are masked wherever
   they appear, in values and in keys, also when JSON-escaped inside another string;
3. oversized values are truncated and carry the sha256 of the full (already masked) value.
"""

from __future__ import annotations

import collections.abc as _c
import fnmatch
import hashlib
import json
import re
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import PlanError

__all__ = [
    "CENSORED",
    "DEFAULT_SECRET_PATTERNS",
    "MASK",
    "RedactionError",
    "Redactor",
    "Scrubber",
    "canonical",
    "clean_result",
    "digest_text",
    "normalize_redaction",
    "redaction_policy",
    "scrub_data",
    "scrub_url",
    "split_redaction",
]

MASK = "********"
CENSORED = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
DEFAULT_SECRET_PATTERNS = ("*password*", "*passwd*", "*passphrase*", "*token*", "*secret*", "*private_key*", "*api_key*", "*credential*")
# Shorter values would blank out unrelated text ("on", "1", "true"); they are reported, not masked.
MIN_SECRET_LENGTH = 4
_MAX_DEPTH = 12
# Keys of a task result that are Ansible's bookkeeping or fleetpatch's channel to the event callback.
DROPPED_RESULT_KEYS = frozenset({"invocation", "fleetpatch_events", "fleetpatch_run", "fleetpatch_registry"})
# Kept from a no_log result, as ansible-core's own censoring does.
_NO_LOG_PRESERVE = ("attempts", "changed", "failed", "skipped", "unreachable", "retries")


# rollout_policy.redaction defaults: query parameters and HTTP headers whose values are credentials
DEFAULT_QUERY_PARAMS = ("token", "access_token", "sig", "signature", "password", "secret", "X-Amz-Signature", "X-Amz-Credential")
DEFAULT_HEADERS = ("Authorization", "X-Api-Key", "Cookie", "Proxy-Authorization")
_REDACTION_KEYS = ("query_params", "headers")
_NAME_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}\Z")
# scheme://userinfo@ : the userinfo never holds '/', '?', '#', '@', whitespace, quotes or a backslash (JSON escapes)
_USERINFO = re.compile(r"(://)[^\s/?#@\"'\\<>]+@")


class RedactionError(PlanError):
    """rollout_policy.redaction is not valid (a plan error: the plan reports it before any host is touched)."""


def normalize_redaction(section: t.Any) -> dict[str, list[str]]:
    """rollout_policy.redaction with defaults: the names listed are added to the defaults, never replace them."""
    if section is None:
        section = {}
    if not isinstance(section, _c.Mapping):
        raise RedactionError(f"policy.redaction must be a mapping, got {type(section).__name__}")
    unknown = sorted(str(key)[:40] for key in section if key not in _REDACTION_KEYS)
    if unknown:
        raise RedactionError(f"policy.redaction: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_REDACTION_KEYS)}")
    out: dict[str, list[str]] = {}
    for key, defaults in (("query_params", DEFAULT_QUERY_PARAMS), ("headers", DEFAULT_HEADERS)):
        given = section.get(key) or []
        if isinstance(given, str) or not isinstance(given, (list, tuple)):
            raise RedactionError(f"policy.redaction.{key} must be a list of names, got {str(given)[:60]!r}")
        names = list(defaults)
        for index, name in enumerate(given):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise RedactionError(f"policy.redaction.{key}[{index}]: {str(name)[:60]!r} is not a parameter or header name"
                                     " (1-128 of A-Z a-z 0-9 . _ ~ -)")
            if name.lower() not in {known.lower() for known in names}:
                names.append(name)
        out[key] = names
    return out


def split_redaction(policy: t.Any) -> tuple[t.Any, dict[str, list[str]]]:
    """(the rollout policy without its redaction section, the validated section). Raises RedactionError, a ValueError
    whose message names the field; the plan reports it before any host is touched."""
    if not isinstance(policy, _c.Mapping) or "redaction" not in policy:
        return policy, normalize_redaction(None)
    rest = {key: value for key, value in policy.items() if key != "redaction"}
    return rest, normalize_redaction(policy["redaction"])


def redaction_policy(run: t.Any) -> dict[str, list[str]]:
    """The redaction section a planned run carries (``__rollout_run.redaction``), else the defaults."""
    section = run.get("redaction") if isinstance(run, _c.Mapping) else None
    try:
        return normalize_redaction(section)
    except RedactionError:
        return normalize_redaction(None)


class Scrubber:
    """Removes credentials that travel inside URLs and headers: URL userinfo, the values of the query parameters and
    of the headers the redaction policy names. Text passes are guarded by substring checks, so text without a URL
    costs one ``in``."""

    def __init__(self, *, query_params: t.Iterable[str] = DEFAULT_QUERY_PARAMS, headers: t.Iterable[str] = DEFAULT_HEADERS) -> None:
        params = sorted({name.lower() for name in query_params}, key=len, reverse=True)
        self.headers = frozenset(name.lower() for name in headers)
        self._query = re.compile(r"([?&;](?:%s)=)[^&#\s\"'\\<>]*" % "|".join(re.escape(name) for name in params), re.IGNORECASE) if params else None
        self._key_cache: dict[str, bool] = {}

    @classmethod
    def from_policy(cls, policy: t.Mapping[str, t.Any] | None) -> "Scrubber":
        policy = normalize_redaction(policy)
        return cls(query_params=policy["query_params"], headers=policy["headers"])

    def scrub_text(self, text: str) -> str:
        if "://" not in text:
            return text
        if "@" in text:
            text = _USERINFO.sub("\\1" + MASK + "@", text)
        if self._query is not None and "=" in text:
            text = self._query.sub("\\1" + MASK, text)
        return text

    def is_header(self, key: t.Any) -> bool:
        if not isinstance(key, str):
            return False
        known = self._key_cache.get(key)
        if known is None:
            known = self._key_cache[key] = key.lower() in self.headers
        return known

    def scrub_data(self, data: t.Any, *, depth: int = 0) -> t.Any:
        """A copy of data with URL credentials scrubbed in every string and header values masked by key."""
        if depth > _MAX_DEPTH:
            return data
        if isinstance(data, str):
            return self.scrub_text(data)
        if isinstance(data, _c.Mapping):
            return {self.scrub_text(str(key)): (MASK if self.is_header(key) and data[key] not in (None, "") else self.scrub_data(data[key], depth=depth + 1))
                    for key in data}
        if isinstance(data, (list, tuple)):
            return [self.scrub_data(value, depth=depth + 1) for value in data]
        return data


DEFAULT_SCRUBBER = Scrubber()


def scrub_url(url: t.Any, *, scrubber: Scrubber | None = None) -> t.Any:
    """A URL with its userinfo and secret query parameters masked (anything else is returned as it is)."""
    return (scrubber or DEFAULT_SCRUBBER).scrub_text(url) if isinstance(url, str) else url


def scrub_data(data: t.Any, *, policy: t.Mapping[str, t.Any] | None = None) -> t.Any:
    """data with URL credentials and secret headers masked, for files written outside the event log (summary, reports)."""
    scrubber = DEFAULT_SCRUBBER if policy is None else Scrubber.from_policy(policy)
    return scrubber.scrub_data(data)


class Redactor:
    """Masks the values of secret variables. Collect values first (collect/add), then mask text or data.

    It also scrubs URL credentials and secret headers (its Scrubber) from everything it dumps."""

    def __init__(self, *, names: t.Iterable[str] = (), patterns: t.Iterable[str] = DEFAULT_SECRET_PATTERNS,
                 min_length: int = MIN_SECRET_LENGTH, scrubber: Scrubber | None = None) -> None:
        self.scrubber = scrubber or DEFAULT_SCRUBBER
        self.names = frozenset(name.lower() for name in names)
        self.patterns = tuple(pattern.lower() for pattern in patterns)
        self.min_length = min_length
        self.too_short: set[str] = set()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._name_cache: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        return bool(self._values)

    def is_secret_name(self, name: t.Any) -> bool:
        if not isinstance(name, str):
            return False
        known = self._name_cache.get(name)
        if known is None:
            lowered = name.lower()
            known = lowered in self.names or any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self.patterns)
            self._name_cache[name] = known
        return known

    def add(self, value: t.Any, *, name: str = "?") -> None:
        """Treat value (a string, number, or every leaf of a list or mapping) as secret."""
        for leaf in _leaves(value):
            if len(leaf) < self.min_length:
                if leaf:
                    self.too_short.add(name)
                continue
            if leaf not in self._values:
                self._values.add(leaf)
                self._pattern = None

    def collect(self, variables: t.Any, *, depth: int = 0) -> None:
        """Add the values of every secret-named key found in variables (nested mappings and lists included)."""
        if depth > _MAX_DEPTH:
            return
        if isinstance(variables, _c.Mapping):
            for key, value in list(variables.items()):
                if self.is_secret_name(key):
                    self.add(value, name=str(key))
                elif isinstance(value, (_c.Mapping, list, tuple)):
                    self.collect(value, depth=depth + 1)
        elif isinstance(variables, (list, tuple)):
            for value in variables:
                self.collect(value, depth=depth + 1)

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._values:
            forms: set[str] = set()
            for value in self._values:
                # raw, JSON-escaped (with and without ASCII escapes), and each of those escaped once more
                once = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
                forms.update(once)
                forms.update(json.dumps(form, ensure_ascii=False)[1:-1] for form in once)
            ordered = sorted((form for form in forms if form), key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(form) for form in ordered))
        return self._pattern

    def mask_text(self, text: str) -> tuple[str, int]:
        """Text with every secret (raw or JSON-escaped) replaced by MASK, and the number of replacements."""
        pattern = self._compiled()
        if pattern is None:
            return text, 0
        return pattern.subn(MASK, text)

    def mask_data(self, data: t.Any, *, depth: int = 0) -> t.Any:
        """A copy of data with secrets masked in every string and key (slower than mask_text; always valid)."""
        if depth == 0:
            data = self.scrubber.scrub_data(data)
        if self._compiled() is None or depth > _MAX_DEPTH:
            return data
        if isinstance(data, str):
            return self.mask_text(data)[0]
        if isinstance(data, _c.Mapping):
            return {self.mask_text(str(key))[0]: self.mask_data(value, depth=depth + 1) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.mask_data(value, depth=depth + 1) for value in data]
        return data

    def dumps(self, data: t.Any, *, structural: bool = False) -> str:
        """Canonical JSON of data with secrets masked. Masks the text in one pass; if a secret happened to span
        JSON syntax (a value like 'true",'), masks the data structurally instead so the result stays valid JSON.
        URL credentials are scrubbed from the text too (only text holding '://' is searched); structural also masks
        the values of secret header names wherever they are keys (the event recorder does that in clean_result)."""
        if structural:
            data = self.scrubber.scrub_data(data)
        text = canonical(data)
        masked, count = self.mask_text(text)
        if "://" in masked:
            scrubbed = self.scrubber.scrub_text(masked)
            if scrubbed != masked:
                masked, count = scrubbed, count + 1
        if count:
            try:
                json.loads(masked)
            except ValueError:
                masked = canonical(self.mask_data(data))
        return masked


def canonical(data: t.Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _leaves(value: t.Any, depth: int = 0) -> t.Iterator[str]:
    if depth > _MAX_DEPTH or value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        yield str(value)
    elif isinstance(value, (int, float)):
        yield str(value)
    elif isinstance(value, _c.Mapping):
        for item in value.values():
            yield from _leaves(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _leaves(item, depth + 1)
    else:
        try:
            yield str(value)
        except Exception:  # pylint: disable=broad-except  # e.g. a vaulted value without its secret
            return


def digest_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def truncated(text: str, *, keep: int) -> dict[str, t.Any]:
    """Stand-in for an oversized string: its head, its size and the sha256 of the full value."""
    return {"truncated": True, "chars": len(text), "sha256": digest_text(text), "head": text[:keep]}


def clean_result(result: t.Any, *, redactor: Redactor, max_chars: int = 4096, depth: int = 0) -> t.Any:
    """A task result fit for a log: no_log censored, bookkeeping keys dropped, long strings masked and truncated.

    Short strings are left for the line-level mask (Redactor.dumps); long ones are masked here so that the digest
    describes the masked value, never the secret.
    """
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(result, _c.Mapping):
        if result.get("_ansible_no_log"):
            kept = {key: result[key] for key in _NO_LOG_PRESERVE if key in result and isinstance(result[key], (bool, int))}
            return dict(kept, censored=CENSORED)
        cleaned = {}
        # one C-level pass over the keys; only a mapping that holds a secret header name (any case) takes the slow path
        headers = redactor.scrubber.headers
        try:
            has_header = not headers.isdisjoint(map(str.lower, result))
        except TypeError:  # a key that is not a string
            has_header = any(redactor.scrubber.is_header(key) for key in result)
        for key, value in result.items():
            key = str(key)
            if key.startswith("_ansible_") or key in DROPPED_RESULT_KEYS:
                continue
            if has_header and key.lower() in headers and value not in (None, ""):
                cleaned[key] = MASK  # an Authorization, Cookie, ... header's value, in any shape
                continue
            cleaned[key] = clean_result(value, redactor=redactor, max_chars=max_chars, depth=depth + 1)
        return cleaned
    if isinstance(result, (list, tuple)):
        return [clean_result(value, redactor=redactor, max_chars=max_chars, depth=depth + 1) for value in result]
    if isinstance(result, str) and len(result) > max_chars:
        return truncated(redactor.scrubber.scrub_text(redactor.mask_text(result)[0]), keep=min(512, max_chars))
    if result is None or isinstance(result, (bool, int, float, str)):
        return result
    return str(result)
