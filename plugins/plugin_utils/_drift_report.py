# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: controller side of the drift report. Not a public API.

Reads and writes facts files (JSON Lines, one host per line), reads the patch registry when there is one, and
renders a built report (plugin_utils/_drift.py) as JSON, HTML, Markdown, JUnit XML and Prometheus textfile metrics,
each written atomically.
"""

from __future__ import annotations

import functools
import glob
import html
import json
import operator
import os
import re
import sqlite3
import stat
import tempfile
import typing as t

import jinja2
import jinja2.bccache
import jinja2.ext
import markupsafe

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (
    BATCH,
    DRIFT_STATUSES,
    FACTS_FORMAT,
    FACTS_TYPE,
    STATUS_RANK,
    STATUSES,
    DriftError,
    Reconciler,
    Report,
    Row,
    fingerprint_start,
    page_view,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import fsync_directory, write_file_atomic

__all__ = [
    "AtomicWriter",
    "FORMATS",
    "HTML_TEMPLATE",
    "TEMPLATES",
    "drift_rows",
    "expand_facts_files",
    "human_duration",
    "output_paths",
    "read_facts_file",
    "registry_views",
    "render_html",
    "write_facts_file",
    "write_reports",
]

FORMATS = ("json", "html", "markdown", "junit", "prometheus")
FILE_NAMES = {"json": "drift-report.json", "html": "drift-report.html", "markdown": "drift-report.md",
              "junit": "drift-junit.xml", "prometheus": "fleetpatch_drift.prom"}
STATUS_LABELS = {"in_sync": "in sync", "drifted": "drifted", "missing_patch": "missing patch",
                 "unexpected_version": "unexpected version", "unknown": "unknown", "not_applicable": "not applicable",
                 "quarantined": "quarantined", "unhealthy": "unhealthy"}
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XML_SPECIAL = re.compile("[&<>\"'\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_FIRST = operator.itemgetter(0)
# printable ASCII but "&'<>\\
_PLAIN = bytes(sorted(set(range(0x20, 0x7f)) - set(b"\"&'<>\\")))
# the C scanner behind json.loads, without json.loads' wrapper (a call per line of a large facts file)
_SCAN = json.decoder.JSONDecoder().scan_once


# --------------------------------------------------------------------------------------------- facts files


def write_facts_file(path: str, records: t.Sequence[t.Mapping[str, t.Any]], *, run: t.Mapping[str, t.Any]) -> None:
    """One header line, then one host record per line (JSON Lines), written atomically."""
    header = {"type": FACTS_TYPE, "format": FACTS_FORMAT, "hosts": len(records), **run}
    lines = [json.dumps(header, sort_keys=True, ensure_ascii=False)]
    lines.extend(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for record in records)
    write_file_atomic(os.path.abspath(os.path.expanduser(path)), "\n".join(lines) + "\n", mode=0o640)


def expand_facts_files(patterns: t.Iterable[str]) -> list[str]:
    """Paths of the given files and glob patterns, sorted and without duplicates; a missing plain path is an error."""
    found: list[str] = []
    for pattern in patterns:
        pattern = os.path.abspath(os.path.expanduser(pattern))
        if glob.has_magic(pattern):
            found.extend(sorted(glob.glob(pattern)))
        elif os.path.exists(pattern):
            found.append(pattern)
        else:
            raise DriftError(f"facts file {pattern} does not exist")
    return list(dict.fromkeys(found))


def read_facts_file(path: str, reconciler: Reconciler) -> dict[str, t.Any]:
    """Stream one facts file into the reconciler; returns what was read. A torn or invalid line is skipped and counted."""
    info: dict[str, t.Any] = {"path": path, "records": 0, "rejected": 0, "header": None}

    before = reconciler.records
    scan, loads = _SCAN, json.loads
    # parsed a batch of lines at a time, then merged: parsing and merging each keep their code in the processor's
    # caches
    batch: list[t.Any] = []
    put = batch.append
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            # json.loads without its wrapper: the JSON value at the start of the line, and nothing but its newline
            # after it (anything else, leading blanks included, takes json.loads itself: same result, same errors)
            try:
                record, end = scan(line, 0)
                if end != len(line) and line[end:] != "\n":
                    raise ValueError(line)
            except (StopIteration, ValueError):
                try:
                    record = loads(line)
                except ValueError:
                    if line.strip():
                        reconciler.add_batch(batch)  # the records before it first, as they were read
                        batch.clear()
                        info["rejected"] += 1
                        reconciler.reject(f"{os.path.basename(path)} line {number}: not valid JSON")
                    continue
            if number == 1 and isinstance(record, dict) and record.get("type") == FACTS_TYPE:
                if record.get("format") != FACTS_FORMAT:
                    raise DriftError(f"{path}: facts format {record.get('format')!r} is not supported (expected {FACTS_FORMAT})")
                info["header"] = {key: record.get(key) for key in ("generated_at", "hosts", "run_id", "slice", "awx_job_id")}
                continue
            put(record)
            if len(batch) == BATCH:
                reconciler.add_batch(batch)
                batch.clear()
    reconciler.add_batch(batch)
    info["records"] = reconciler.records - before
    return info


# --------------------------------------------------------------------------------------------- registry


def registry_views(state_dir: str, registry_path: str | None) -> tuple[list[dict[str, t.Any]], dict[str, t.Any]]:
    """The registry's folded patch records, read without writing anything; ([], reason) when there is no registry."""
    try:
        # the registry belongs to fleetpatch.rollout's events and registry feature; older trees do not have it
        from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _registry  # pylint: disable=import-outside-toplevel
    except ImportError:
        return [], {"used": False, "path": None, "reason": "this collection has no patch registry support"}
    try:
        path = _registry.registry_paths(state_dir, registry_path=registry_path or None)["registry"]
    except Exception as exc:  # pylint: disable=broad-except
        return [], {"used": False, "path": None, "reason": f"cannot locate the registry: {exc}"}
    if not os.path.exists(path):
        return [], {"used": False, "path": path, "reason": "no registry file"}
    try:
        columns = ", ".join(_registry.COLUMNS)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = [dict(zip(_registry.COLUMNS, row)) for row in conn.execute(f"SELECT {columns} FROM records ORDER BY seq")]
        finally:
            conn.close()
        for row in rows:
            try:
                row["body"] = json.loads(row["body"])
            except (TypeError, ValueError):
                row["body"] = {}
        views = list(_registry.fold_patches(rows).values())
    except Exception as exc:  # pylint: disable=broad-except
        return [], {"used": False, "path": path, "reason": f"cannot read the registry: {exc}"}
    return views, {"used": True, "path": path, "reason": None, "records": len(rows)}


# --------------------------------------------------------------------------------------------- streaming files


class AtomicWriter:
    """A text file written in pieces to a temporary file beside it, then renamed over it (all or nothing).

    _io.write_file_atomic needs the whole content in memory; the JSON and JUnit reports of a large fleet are streamed.
    """

    def __init__(self, path: str, *, mode: int = 0o644) -> None:
        self.path = path
        self.mode = mode
        directory = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        self.handle = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def __enter__(self) -> t.TextIO:
        return self.handle

    def __exit__(self, exc_type: t.Any, exc: t.Any, traceback: t.Any) -> None:
        try:
            if exc_type is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if exc_type is None:
                os.chmod(self.tmp, self.mode)
                os.replace(self.tmp, self.path)
                fsync_directory(self.directory)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


class _NullSink:
    def write(self, _text: str) -> int:
        return 0


def write_json(report: Report, document: dict[str, t.Any], sink: t.Any, *, chunk: int = 500,
               each: t.Callable[[list[t.Any]], None] | None = None) -> str:
    """Stream the JSON report (the document, then every row, then the fingerprint) into sink; return the fingerprint.

    The document must not hold rows or a fingerprint yet; it gets the fingerprint. The rows come from
    Report.json_rows in pieces of ``chunk`` hosts, because they are most of a large fleet's report (pieces of less than
    a megabyte: the allocator keeps reusing the same memory instead of mapping new pages for every piece); each(hosts)
    is called with the hosts of every piece (while they are at hand: JUnitSuites.add).
    """
    digest = fingerprint_start(document)
    head = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False)
    sink.write(head[: head.rstrip().rfind("}")].rstrip() + ',\n  "rows": [')
    rows = False
    for hosts, text, fingerprint_text in report.json_rows(chunk):
        digest.update(fingerprint_text.encode("utf-8"))
        sink.write(text)
        rows = True
        if each is not None:
            each(hosts)
    value = digest.hexdigest()
    sink.write(("\n  " if rows else "") + f'],\n  "fingerprint": "{value}"\n}}\n')
    document["fingerprint"] = value
    return value


# --------------------------------------------------------------------------------------------- helpers


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    negative = seconds < 0
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h" if hours else f"{days}d"
    elif hours:
        text = f"{hours}h {minutes}m" if minutes else f"{hours}h"
    elif minutes:
        text = f"{minutes}m"
    else:
        text = f"{secs}s"
    return "-" + text if negative else text


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def drift_rows(report: Report, environments: t.Sequence[str]) -> list[Row]:
    """Rows that are not in sync, worst status first, then environment (promotion order), host, service."""
    rank = {status: index for index, status in enumerate(STATUS_RANK)}
    env_rank = {env: index for index, env in enumerate(environments)}
    # the rows of one status and environment rank, by shape; a host's rows are all of its shape, in service order
    buckets: dict[tuple[int, int], list[Row]] = {}
    for shape in report.shapes:
        attrs = shape.attrs
        for verdict, slot, _own, _given in shape.rows:
            if verdict.status != "in_sync":
                bucket = buckets.setdefault((rank[verdict.status], env_rank.get(verdict.environment, len(env_rank))), [])
                bucket.extend([(entry[0], verdict, entry[slot] or None, entry[1], attrs) for entry in shape.members])
    rows: list[Row] = []
    for key in sorted(buckets):
        bucket = buckets[key]
        bucket.sort(key=_FIRST)  # stable: the rows of a host keep their service order
        rows += bucket
    return rows


# --------------------------------------------------------------------------------------------- HTML

# the page's template and style sheet, shipped with the collection beside this module
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
HTML_TEMPLATE = "drift_report.html.j2"
# a line break and the indentation after it, in a template written one element per line
_LINE_BREAK = re.compile(r"\n[ \t]*")


class _JoinedLines(jinja2.ext.Extension):
    """The HTML template is written one element per line for its readers; the page is written without those line breaks
    and indentation (as one line, like the page before the template), so whitespace on the page is only what the
    template writes on purpose (a space, or {{ nl }})."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return _LINE_BREAK.sub("", source) if name is not None and name.endswith(".html.j2") else source


def _escaped(value: t.Any) -> t.Any:
    """Every value the template writes, as html.escape(str(value), quote=True) would write it (None as nothing).

    Autoescape (markupsafe) escapes & < > as html.escape does, but writes quotes as &#39; and &#34; where html.escape
    writes &#x27; and &quot;: text with a quote is escaped here (autoescape leaves Markup as it is) so that the page stays
    what it was; any other text is left to autoescape, which is quicker (a large report has thousands of values).
    """
    if value.__class__ is not str:
        if value is None:
            return ""
        if hasattr(value, "__html__"):
            return value
        value = str(value)
    if "'" in value or '"' in value:
        return markupsafe.Markup(html.escape(value, quote=True))
    return value


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """A cache that is only ever a help: a template it cannot store (disk full, directory gone) is simply not cached."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Where the page's compiled template is kept between processes (compiling it costs more than rendering a large
    report): $XDG_CACHE_HOME/fleetpatch/jinja2 (default ~/.cache), a directory of this user's only, keyed by the
    template's name and source checksum (jinja2's own check), so an edited template is compiled again. None (compile
    every time) when there is no such private directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "fleetpatch", "jinja2")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return _BytecodeCache(directory)


@functools.lru_cache(maxsize=1)
def _html_template() -> jinja2.Template:
    """The page's template, loaded and compiled once per process. No template ever comes from report data: only the
    collection's own files are loaded, and every value is escaped."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, finalize=_escaped, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, extensions=[_JoinedLines], auto_reload=False, bytecode_cache=_bytecode_cache())
    environment.filters.update(duration=human_duration, percent=percent)
    return environment.get_template(HTML_TEMPLATE)


def render_html(document: t.Mapping[str, t.Any], drift: t.Sequence[Row], *, report: Report, title: str, max_rows: int) -> str:
    """The HTML report (templates/drift_report.html.j2): summary, region x tenant heat map, environment x service
    matrix, the first max_rows drift rows with each host's detail, lag, time to patch, alignment and compatibility; the
    JSON report holds every row. What the page loops over comes from _drift.page_view."""
    summary = document["summary"]
    return _html_template().render(
        document=document, summary=summary, title=title, services=list(summary["services"]), statuses=STATUSES, labels=STATUS_LABELS,
        nl="\n", **page_view(document, report, drift, max_rows=max_rows, labels=STATUS_LABELS))


# --------------------------------------------------------------------------------------------- Markdown


def _md(value: t.Any) -> str:
    return ("-" if value is None or value == "" else str(value)).replace("|", "\\|").replace("\n", " ")


def render_markdown(document: t.Mapping[str, t.Any], drift: t.Sequence[Row], *, title: str, max_rows: int = 50) -> str:
    summary = document["summary"]
    environments = summary["environments"]
    lines = [f"# {title}", "",
             f"**{'Drift found' if summary['drift_found'] else 'No drift'}** as of {document['now']}: {summary['hosts']} hosts, "
             f"{summary['rows']} host/service pairs.", "",
             "| status | pairs |", "| --- | ---: |"]
    lines.extend(f"| {STATUS_LABELS[status]} | {summary['statuses'][status]} |" for status in STATUSES)
    lines += ["", f"Mixed-version cells: {summary['mixed_versions']}; compatibility violations: {summary['compatibility_violations']}; "
              f"lagging patches: {summary['lagging_patches']}; hosts past time-to-patch: {summary['slo_overdue']}.", "",
              "## Environment × service", "", "| environment | " + " | ".join(_md(s) for s in summary["services"]) + " |",
              "| --- |" + " --- |" * len(summary["services"])]
    cells = {(cell["environment"], cell["service"]): cell for cell in document["matrix"]}
    for env in environments:
        parts = []
        for service in summary["services"]:
            cell = cells.get((env, service))
            if cell is None:
                parts.append("-")
                continue
            parts.append(f"{STATUS_LABELS[cell['status']]}: {cell['statuses']['in_sync']}/{cell['hosts']} in sync "
                         f"(desired {_md(cell['desired'])})")
        lines.append(f"| {_md(env)} | " + " | ".join(parts) + " |")
    lines += ["", "## Lag between environments", ""]
    if document["lag"]:
        lines += ["| from → to | service | patch | severity | upstream patched | downstream lacking | since | lag | promoted |",
                  "| --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
        for entry in document["lag"]:
            lines.append(f"| {_md(entry['from'])} → {_md(entry['to'])} | {_md(entry['service'])} | {_md(entry['patch'])} | "
                         f"{_md(entry['severity'])} | {entry['from_patched']}/{entry['from_hosts']} | {entry['to_lacking']}/{entry['to_hosts']} | "
                         f"{_md(entry['since'])} | {human_duration(entry['lag_seconds'])} | {'yes' if entry['promoted'] else 'no'} |")
    else:
        lines.append("No environment lacks a patch its upstream environment has.")
    lines += ["", "## Time to patch", "", f"Targets from {_md(document['slo']['target_source'])}.", "",
              "| severity | target | within | late | open | overdue | unknown | share within target | target used | oldest overdue |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for entry in document["slo"]["severities"]:
        oldest = entry["oldest_overdue"]
        lines.append(f"| {_md(entry['severity'])} | {human_duration(entry['target_seconds'])} | {entry['within']} | {entry['late']} | "
                     f"{entry['open']} | {entry['overdue']} | {entry['unknown']} | {percent(entry['share_within_target'])} | "
                     f"{percent(entry['target_used'])} | "
                     + (f"{_md(oldest['patch'])}, overdue {human_duration(oldest['overdue_seconds'])} ({oldest['hosts']} hosts)" if oldest else "-")
                     + " |")
    if document["compatibility"]:
        lines += ["", "## Compatibility violations", "", "| rule | environment | versions | found | hosts |", "| --- | --- | --- | --- | ---: |"]
        lines.extend(f"| {_md(entry['rule'])} | {_md(entry['environment'])} | {_md(', '.join(entry['versions']))} | "
                     f"{_md(', '.join(entry['found']) or 'none')} | {entry['hosts']} |" for entry in document["compatibility"])
    lines += ["", f"## Drift list ({len(drift)})", ""]
    if drift:
        lines += ["| status | environment | host | service | version | desired | reason |", "| --- | --- | --- | --- | --- | --- | --- |"]
        lines.extend(f"| {STATUS_LABELS[v.status]} | {_md(v.environment)} | {_md(host)} | {_md(v.service)} | {_md(v.version)} | "
                     f"{_md(v.desired)} | {_md(v.reason)} |" for host, v, *_rest in drift[:max_rows])
        if len(drift) > max_rows:
            lines.append(f"\n{len(drift) - max_rows} more in the JSON report.")
    else:
        lines.append("Every host and service with data is in sync.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- JUnit


def _x(value: t.Any) -> str:
    text = "" if value is None else str(value)
    if _XML_BAD.search(text):
        text = _XML_BAD.sub("?", text)
    return html.escape(text, quote=True)


def _plain(text: str) -> bool:
    """text holds no character that JSON or XML escapes (nor any other but printable ASCII)."""
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN)


def _junit_spec(env: str, rows: t.Sequence[t.Any], cases: dict[t.Any, tuple[str, str]]) -> tuple[t.Any, ...]:
    """The fixed text around the host name of the test cases of every host of a shape: (size, j0, ..., jsize).

    cases: the text before and after the host name per verdict, kept for the next shape.
    """
    fixed = [""]
    for verdict, *_rest in rows:
        case = cases.get(verdict)
        if case is None:
            head = f'    <testcase classname="drift.{_x(env)}.{_x(verdict.service)}" name="'
            if verdict.status == "in_sync":
                tail = '" time="0"/>'
            elif verdict.status == "not_applicable":
                # the patch does not apply to this host: neither a pass nor a failure
                tail = f'" time="0"><skipped message="{_x(STATUS_LABELS[verdict.status] + ": " + (verdict.reason or ""))}"/></testcase>'
            else:
                tag = "error" if verdict.status == "unknown" else "failure"
                message = _x(STATUS_LABELS[verdict.status] + ": " + (verdict.reason or ""))
                tail = f'" time="0"><{tag} type="{verdict.status}" message="{message}"/></testcase>'
            case = cases[verdict] = (head, tail + "\n")
        fixed[-1] += case[0]
        fixed.append(case[1])
    return (len(rows), *fixed)


class JUnitSuites:
    """The JUnit report's test suites (one per environment, one test case per host and service), made a piece of hosts
    at a time: add() them all, in host order, then write()."""

    def __init__(self, document: t.Mapping[str, t.Any], report: Report) -> None:
        self.document = document
        self.report = report
        # per environment, the pieces of its test cases' text (the host names among them are the hosts' own strings)
        self.pieces: dict[str, list[str]] = {env: [] for env in document["summary"]["environments"]}
        # the text around the host name of a shape's test cases, with where it goes (every row of a host is in the
        # host's environment)
        cases: dict[t.Any, tuple[str, str]] = {}
        self.specs = {shape: (self.pieces[shape.attrs[0]].extend, *_junit_spec(shape.attrs[0], shape.rows, cases))
                      for shape in report.shapes if shape.rows}

    def add(self, entries: t.Sequence[t.Any]) -> None:
        specs = self.specs
        special = _XML_SPECIAL.search
        plain = _plain("".join(map(_FIRST, entries)))
        for entry in entries:
            spec = specs.get(entry[2])
            if spec is None:  # a host without rows
                continue
            host = entry[0]
            if not plain and special(host):
                host = _x(host)
            size = spec[1]
            if size == 2:
                put, _size, j0, j1, j2 = spec
                put((j0, host, j1, host, j2))
            elif size == 1:
                put, _size, j0, j1 = spec
                put((j0, host, j1))
            else:
                spec[0]((spec[2], *[part for fixed in spec[3:] for part in (host, fixed)]))

    def write(self, sink: t.Any) -> None:
        document, report = self.document, self.report
        totals = document["summary"]["statuses"]
        failures = sum(totals[status] for status in DRIFT_STATUSES)
        sink.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                   f'<testsuites name="fleetpatch drift" tests="{document["summary"]["rows"]}" failures="{failures}" '
                   f'errors="{totals["unknown"]}" skipped="{totals["not_applicable"]}" timestamp="{_x(document["now"])}">\n')
        per_env: dict[str, list[int]] = {}
        for (env, _service), count in report.counts.items():
            entry = per_env.setdefault(env, [0, 0, 0, 0])
            entry[0] += sum(count[STATUSES.index(status)] for status in DRIFT_STATUSES)
            entry[1] += count[STATUSES.index("unknown")]
            entry[2] += sum(count)
            entry[3] += count[STATUSES.index("not_applicable")]
        for env, pieces in self.pieces.items():
            fails, errors, tests, skipped = per_env.get(env, [0, 0, 0, 0])
            sink.write(f'  <testsuite name="drift.{_x(env)}" tests="{tests}" failures="{fails}" errors="{errors}" skipped="{skipped}">\n')
            for start in range(0, len(pieces), 10000):
                sink.write("".join(pieces[start:start + 10000]))
            sink.write("  </testsuite>\n")
        sink.write("</testsuites>\n")


def write_junit(document: t.Mapping[str, t.Any], report: Report, sink: t.Any, *, chunk: int = 500) -> None:
    """One test suite per environment, one test case per host and service: drift (quarantined and unhealthy too) is a
    failure, unknown an error, not_applicable skipped."""
    suites = JUnitSuites(document, report)
    entries = report.entries
    for start in range(0, len(entries), chunk):
        suites.add(entries[start:start + chunk])
    suites.write(sink)


# --------------------------------------------------------------------------------------------- Prometheus


def _label(value: t.Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_prometheus(document: t.Mapping[str, t.Any], *, now: float) -> str:
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: t.Iterable[tuple[t.Mapping[str, t.Any], float | int | None]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            text = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
            lines.append(f"{name}{{{text}}} {_num(value)}" if text else f"{name} {_num(value)}")

    metric("fleetpatch_drift_report_timestamp_seconds", "When the drift report was evaluated (its 'now').", [({}, now)])
    metric("fleetpatch_drift_hosts", "Hosts in the report.", [({}, document["summary"]["hosts"])])
    metric("fleetpatch_drift_pairs", "Host and service pairs per environment, service and status.",
           [({"environment": c["environment"], "service": c["service"], "status": status}, c["statuses"][status])
            for c in document["matrix"] for status in STATUSES])
    metric("fleetpatch_drift_found", "1 when any host and service is drifted, missing a patch, runs an unexpected version, is quarantined or unhealthy.",
           [({}, document["summary"]["drift_found"])])
    metric("fleetpatch_drift_versions", "Distinct versions of a service running in an environment.",
           [({"environment": a["environment"], "service": a["service"]}, len(a["versions"])) for a in document["alignment"]])
    metric("fleetpatch_drift_compatibility_violations", "Broken compatibility rules per environment.",
           [({"environment": env}, sum(1 for v in document["compatibility"] if v["environment"] == env))
            for env in document["summary"]["environments"]])
    metric("fleetpatch_drift_lag_patches", "Patches the downstream environment lacks that its upstream environment has.",
           [({"from": e["from"], "to": e["to"]}, e["patches"]) for e in document["lag_summary"]])
    metric("fleetpatch_drift_lag_seconds", "Longest time a patch has been in the upstream environment but not everywhere downstream.",
           [({"from": e["from"], "to": e["to"]}, e["max_lag_seconds"] or 0) for e in document["lag_summary"]])
    severities = document["slo"]["severities"]
    metric("fleetpatch_drift_slo_target_seconds", "Time-to-patch target per severity.",
           [({"severity": s["severity"]}, s["target_seconds"]) for s in severities])
    metric("fleetpatch_drift_slo_within_target_ratio", "Share of host and patch pairs within the time-to-patch target.",
           [({"severity": s["severity"]}, s["share_within_target"]) for s in severities])
    metric("fleetpatch_drift_slo_overdue_hosts", "Host and patch pairs not patched and past the target.",
           [({"severity": s["severity"]}, s["overdue"]) for s in severities])
    metric("fleetpatch_drift_slo_target_used_ratio", "Largest share of the target used up by a patch not yet everywhere (1 = due).",
           [({"severity": s["severity"]}, s["target_used"] or 0) for s in severities])
    metric("fleetpatch_drift_slo_oldest_overdue_seconds", "How long the oldest overdue patch is past its target (0 when none).",
           [({"severity": s["severity"]}, (s["oldest_overdue"] or {}).get("overdue_seconds", 0)) for s in severities])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- writing


def output_paths(output_dir: str, formats: t.Iterable[str], *, prometheus_path: str | None = None) -> dict[str, str]:
    paths = {fmt: os.path.join(output_dir, FILE_NAMES[fmt]) for fmt in formats}
    if prometheus_path and "prometheus" in paths:
        paths["prometheus"] = os.path.abspath(os.path.expanduser(prometheus_path))
    return paths


def write_reports(report: Report, *, paths: t.Mapping[str, str], generated_at: str, inputs: t.Mapping[str, t.Any], title: str,
                  html_max_rows: int, write: bool = True) -> dict[str, t.Any]:
    """Write every format in paths (each atomically; nothing when not write) and return the document with fingerprint.

    JSON is the source: the other formats are rendered from the same document and rows.
    """
    unknown = sorted(set(paths) - set(FORMATS))
    if unknown:
        raise DriftError(f"unknown report format(s) {', '.join(unknown)} (expected {', '.join(FORMATS)})")
    document = report.document()
    document["generated_at"] = generated_at
    document["inputs"] = dict(inputs)
    # the JUnit test cases are made in the JSON report's pass over the hosts
    suites = JUnitSuites(document, report) if write and "junit" in paths else None
    each = suites.add if suites is not None else None
    if write and "json" in paths:
        with AtomicWriter(paths["json"]) as handle:
            write_json(report, document, handle, each=each)
    else:
        write_json(report, document, _NullSink(), each=each)
    if not write:
        return document
    drift = drift_rows(report, document["summary"]["environments"]) if {"html", "markdown"} & set(paths) else []
    if "html" in paths:
        write_file_atomic(paths["html"], render_html(document, drift, report=report, title=title, max_rows=html_max_rows), mode=0o644)
    if "markdown" in paths:
        write_file_atomic(paths["markdown"], render_markdown(document, drift, title=title), mode=0o644)
    if suites is not None:
        with AtomicWriter(paths["junit"]) as handle:
            suites.write(handle)
    if "prometheus" in paths:
        write_file_atomic(paths["prometheus"], render_prometheus(document, now=report.now), mode=0o644)
    return document
