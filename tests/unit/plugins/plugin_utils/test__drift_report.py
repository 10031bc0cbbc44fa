from __future__ import annotations

import json
import os
import re
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (
    DriftError,
    Reconciler,
    parse_desired_state,
    parse_time,
    registry_marks,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _drift, _drift_report
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift_report import (
    FORMATS,
    AtomicWriter,
    expand_facts_files,
    human_duration,
    output_paths,
    read_facts_file,
    registry_views,
    write_facts_file,
    write_reports,
)

DESIRED = {
    "promotion": ["dev", "prod"],
    "environments": {"dev": {"app": "1.0.1"}, "prod": {"app": "1.0.0"}},
    "patches": [{"id": "CVE-1", "service": "app", "fixed_in": ["1.0.1"], "severity": "critical",
                 "released_at": "2026-03-01T00:00:00Z"}],
}


def record(name: str, env: str, version: str | None, **extra: t.Any) -> dict[str, t.Any]:
    services = {"app": {"state": "ok", "version": version, "installed_at": "2026-03-02T00:00:00Z"}} if version else {}
    data = {"host": name, "environment": env, "region": "eu", "tenant": "acme", "segment": "web",
            "collected_at": "2026-03-09T00:00:00Z", "state": "ok", "reason": None, "services": services}
    data.update(extra)
    return data


RECORDS = [
    record("d1", "dev", "1.0.1"),
    record("d2", "dev", "1.0.0"),
    record("p1", "prod", "1.0.1"),
    record("p2", "prod", "1.0.0"),
    record("p<3>&'", "prod", None, state="unreachable", reason='unreachable: "refused" <ssh>'),
]


def report_of(records: list[dict[str, t.Any]]):
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time("2026-03-05T00:00:00Z")))
    reconciler.add_all(records)
    return reconciler.build()


def write(tmp_path: Path, records: list[dict[str, t.Any]] | None = None, *, write_files: bool = True) -> tuple[dict[str, t.Any], dict[str, str]]:
    paths = output_paths(str(tmp_path / "out"), FORMATS)
    document = write_reports(report_of(RECORDS if records is None else records), paths=paths, generated_at="2026-03-05T00:00:01Z", inputs={"hosts_from_run": 5},
                             title="t", html_max_rows=100, write=write_files)
    return document, paths


def test_json_report_is_the_document_plus_every_row(tmp_path: Path) -> None:
    document, paths = write(tmp_path)
    data = json.loads(Path(paths["json"]).read_text())
    rows = data.pop("rows")
    assert data == json.loads(json.dumps(document))
    expected = [("d1", "in_sync"), ("d2", "missing_patch"), ("p1", "drifted"), ("p2", "in_sync"), ("p<3>&'", "unknown")]
    assert [(r["host"], r["status"]) for r in rows] == expected
    assert rows == list(report_of(RECORDS).row_dicts())
    assert re.fullmatch(r"[0-9a-f]{64}", data["fingerprint"])


def test_check_mode_writes_nothing_and_gives_the_same_fingerprint(tmp_path: Path) -> None:
    written, _paths = write(tmp_path / "a")
    preview, paths = write(tmp_path / "b", write_files=False)
    assert preview["fingerprint"] == written["fingerprint"]
    assert not os.path.exists(os.path.dirname(paths["json"]))


def test_fingerprint_ignores_collection_and_writing_times(tmp_path: Path) -> None:
    later = [dict(r, collected_at="2026-03-09T05:00:00Z") for r in RECORDS]
    assert write(tmp_path / "a")[0]["fingerprint"] == write(tmp_path / "b", later)[0]["fingerprint"]
    changed = [dict(r, services={"app": {"state": "ok", "version": "1.0.1"}}) if r["host"] == "p2" else r for r in RECORDS]
    assert write(tmp_path / "c", changed)[0]["fingerprint"] != write(tmp_path / "a")[0]["fingerprint"]


def test_fingerprint_ignores_how_the_connection_worded_an_unreachable_host(tmp_path: Path) -> None:
    """ansible-core words one refused ssh connection two ways (with ssh's message or without, as the race between its
    write and ssh's exit goes): the rows keep the words, the fingerprint counts the host unreachable either way."""
    def worded(reason: str) -> list[dict[str, t.Any]]:
        return [dict(r, reason=reason) if r["state"] == "unreachable" else r for r in RECORDS]
    refused = 'unreachable: Task failed: Data could not be sent to remote host "10.0.0.9". Make sure this host can be ' \
              "reached over ssh: ssh: connect to host 10.0.0.9 port 22: Connection refused"
    raced = "unreachable: Task failed: Data could not be sent to remote host '10.0.0.9'. Make sure this host can be reached over SSH."
    (one, one_paths), (two, two_paths) = write(tmp_path / "a", worded(refused)), write(tmp_path / "b", worded(raced))
    assert one["fingerprint"] == two["fingerprint"]
    for paths, reason in ((one_paths, refused), (two_paths, raced)):
        rows = json.loads(Path(paths["json"]).read_text())["rows"]
        assert [row["reason"] for row in rows if row["status"] == "unknown"] == [reason]
    # anything else about the host still counts: another environment is another report
    moved = [dict(r, environment="dev") if r["state"] == "unreachable" else r for r in worded(raced)]
    assert write(tmp_path / "c", moved)[0]["fingerprint"] != one["fingerprint"]


def test_junit_has_one_testcase_per_host_and_service(tmp_path: Path) -> None:
    _document, paths = write(tmp_path)
    root = ET.parse(paths["junit"]).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "1")
    cases = {(case.get("classname"), case.get("name")): case for case in root.iter("testcase")}
    assert len(cases) == 5
    assert cases[("drift.dev.app", "d2")].find("failure").get("type") == "missing_patch"
    error = cases[("drift.prod.app", "p<3>&'")].find("error")
    assert error.get("message") == 'unknown: unreachable: "refused" <ssh>'
    assert list(cases[("drift.dev.app", "d1")]) == []
    assert [suite.get("name") for suite in root] == ["drift.dev", "drift.prod"]


def test_prometheus_textfile(tmp_path: Path) -> None:
    _document, paths = write(tmp_path)
    text = Path(paths["prometheus"]).read_text()
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? (-?[0-9.e+]+|NaN)$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'fleetpatch_drift_pairs{environment="prod",service="app",status="drifted"} 1' in text
    assert "fleetpatch_drift_found 1" in text
    assert 'fleetpatch_drift_lag_patches{from="dev",to="prod"} 1' in text


def test_html_and_markdown(tmp_path: Path) -> None:
    _document, paths = write(tmp_path)
    page = Path(paths["html"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("</style>")[0]
    assert 'data-status="missing_patch"' in page and 'data-status="drifted"' in page
    assert "p&lt;3&gt;&amp;&#x27;" in page
    for section in ("matrix", "drift", "lag", "slo", "alignment"):
        assert f'<section id="{section}">' in page
    markdown = Path(paths["markdown"]).read_text()
    assert "| missing patch | dev | d2 | app | 1.0.0 | 1.0.1 |" in markdown


def test_facts_file_round_trip_merges_by_host(tmp_path: Path) -> None:
    first, second = str(tmp_path / "s1.jsonl"), str(tmp_path / "s2.jsonl")
    write_facts_file(first, RECORDS[:3], run={"generated_at": "x"})
    write_facts_file(second, RECORDS[2:], run={"generated_at": "y"})
    with open(second, "a", encoding="utf-8") as handle:
        handle.write('{"host": "torn\n')
    reconciler = Reconciler(parse_desired_state(DESIRED), now=0)
    infos = [read_facts_file(path, reconciler) for path in expand_facts_files([str(tmp_path / "s*.jsonl")])]
    assert [(info["records"], info["rejected"]) for info in infos] == [(3, 0), (3, 1)]
    assert infos[0]["header"]["generated_at"] == "x"
    assert reconciler.host_count == 5 and reconciler.rejected_count == 1


def test_facts_files_errors(tmp_path: Path) -> None:
    assert expand_facts_files([str(tmp_path / "none-*.jsonl")]) == []
    with pytest.raises(DriftError, match="does not exist"):
        expand_facts_files([str(tmp_path / "missing.jsonl")])
    path = tmp_path / "future.jsonl"
    path.write_text('{"type": "fleetpatch.patch_facts", "format": 99}\n')
    with pytest.raises(DriftError, match="facts format 99 is not supported"):
        read_facts_file(str(path), Reconciler(parse_desired_state({}), now=0))


def test_atomic_writer_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicWriter(str(target)) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_registry_absent(tmp_path: Path) -> None:
    views, info = registry_views(str(tmp_path), None)
    assert views == [] and info["used"] is False and info["reason"] in ("no registry file", "this collection has no patch registry support")


def test_registry_read_only(tmp_path: Path) -> None:
    registry = pytest.importorskip("ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry")
    path = tmp_path / "registry.sqlite3"
    reg = registry.Registry(str(path))
    reg.append("patch.registered", {"service": "app", "target_version": "1.0.1", "severity": "critical"}, patch_id="FP-1")
    before = path.stat().st_mtime_ns
    views, info = registry_views(str(tmp_path), None)
    assert info["used"] is True and info["records"] == 1
    assert [(v["patch_id"], v["service"], v["target_version"], v["severity"]) for v in views] == [("FP-1", "app", "1.0.1", "critical")]
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (42, "42s"), (600, "10m"), (3700, "1h 1m"), (7200, "2h"),
                                               (90000, "1d 1h"), (-86400, "-1d")])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_json_report_matches_its_documented_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = Path(__file__).resolve().parents[4] / "docs" / "drift-report.schema.json"
    schema = json.loads(schema_path.read_text())
    desired = dict(DESIRED, compatibility=[{"service": "app", "requires": {"service": "db", "versions": ">=2"}}])
    reconciler = Reconciler(parse_desired_state(desired), now=t.cast(float, parse_time("2026-03-05T00:00:00Z")))
    reconciler.add_all(RECORDS)
    paths = output_paths(str(tmp_path), ["json"])
    write_reports(reconciler.build(), paths=paths, generated_at="2026-03-05T00:00:01Z",
                  inputs={"hosts_from_run": 5, "facts_files": [], "records_rejected": 0,
                          "registry": {"used": False, "path": None, "reason": "no registry file"}, "desired_state": "d",
                          "facts_file_written": None}, title="t", html_max_rows=10)
    jsonschema.validate(json.loads(Path(paths["json"]).read_text()), schema)


def test_registry_statuses_in_every_format(tmp_path: Path) -> None:
    """not_applicable, quarantined and unhealthy rows in JSON (schema), HTML, Markdown, JUnit and Prometheus."""
    records = [record("d1", "dev", "1.0.1"), record("d2", "dev", "0.9.0"), record("d3", "dev", "1.0.1"), record("d4", "dev", "1.0.1")]
    views = [{"patch_id": "FP-1", "service": "app", "target_version": "1.0.1", "affected_versions": ["1.0.0"], "hosts": {
        "d2": {"outcome": "not_applicable", "at": "2026-03-02T00:00:00.000000Z", "version": "0.9.0"},
        "d3": {"outcome": "quarantined", "at": "2026-03-02T00:00:00.000000Z", "reason": "health <check> failed"},
        "d4": {"outcome": "failed", "at": "2026-03-02T00:00:00.000000Z", "reason": "apply failed"}}}]
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time("2026-03-05T00:00:00Z")))
    reconciler.add_all(records)
    marks, counts = registry_marks(views)
    reconciler.use_registry_marks(marks)
    paths = output_paths(str(tmp_path), FORMATS)
    inputs = {"hosts_from_run": 4, "facts_files": [], "records_rejected": 0, "desired_state": "d", "facts_file_written": None,
              "registry": {"used": True, "path": "r", "reason": None, "marks": counts}}
    document = write_reports(reconciler.build(), paths=paths, generated_at="2026-03-05T00:00:01Z", inputs=inputs, title="t", html_max_rows=10)
    data = json.loads(Path(paths["json"]).read_text())
    expected = [("d1", "in_sync"), ("d2", "not_applicable"), ("d3", "quarantined"), ("d4", "unhealthy")]
    assert [(row["host"], row["status"]) for row in data["rows"]] == expected
    assert document["summary"]["statuses"] == {"in_sync": 1, "drifted": 0, "missing_patch": 0, "unexpected_version": 0, "unknown": 0,
                                               "not_applicable": 1, "quarantined": 1, "unhealthy": 1}
    assert document["summary"]["drift"] == 2 and document["summary"]["drift_found"] is True
    assert document["matrix"][0]["status"] == "unhealthy"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads((Path(__file__).resolve().parents[4] / "docs" / "drift-report.schema.json").read_text()))
    junit = ET.parse(paths["junit"]).getroot()
    suite = junit.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "2", "0", "1")
    cases = {case.get("name"): case for case in junit.iter("testcase")}
    assert cases["d2"].find("skipped").get("message").startswith("not applicable: runs 0.9.0, and FP-1, which installs desired 1.0.1")
    assert cases["d3"].find("failure").get("type") == "quarantined"
    assert "health <check> failed" in cases["d3"].find("failure").get("message")
    assert cases["d4"].find("failure").get("type") == "unhealthy" and len(list(cases["d1"])) == 0
    prom = Path(paths["prometheus"]).read_text()
    for status, value in (("not_applicable", 1), ("quarantined", 1), ("unhealthy", 1), ("in_sync", 1)):
        assert f'fleetpatch_drift_pairs{{environment="dev",service="app",status="{status}"}} {value}' in prom
    page = Path(paths["html"]).read_text()
    assert '<span class="badge s-quarantined">quarantined</span>' in page and "health &lt;check&gt; failed" in page
    assert '<td class="cell s-unhealthy" data-status="unhealthy">' in page and ".s-not_applicable{" in page
    markdown = Path(paths["markdown"]).read_text()
    assert "| not applicable | 1 |" in markdown and "| quarantined | dev | d3 | app |" in markdown


def test_html_template_escapes_host_names_and_reasons(tmp_path: Path) -> None:
    """The page comes from the collection's template; whatever the facts say is escaped, quotes included."""
    host = '<script>alert("x")</script>\'h'
    reason = 'unreachable: "<script>document.cookie</script>" & \'more\''
    records = [record("d1", "dev", "1.0.1"), record(host, "dev", None, state="unreachable", reason=reason)]
    paths = output_paths(str(tmp_path), ["html"])
    write_reports(report_of(records), paths=paths, generated_at="2026-03-05T00:00:01Z", inputs={"hosts_from_run": 2},
                  title='<script>"t"</script>', html_max_rows=10)
    page = Path(paths["html"]).read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;h" in page
    assert "unreachable: &quot;&lt;script&gt;document.cookie&lt;/script&gt;&quot; &amp; &#x27;more&#x27;" in page
    assert "<title>&lt;script&gt;&quot;t&quot;&lt;/script&gt;</title>" in page
    assert os.path.isfile(Path(_drift_report.TEMPLATES) / _drift_report.HTML_TEMPLATE)


def test_html_lists_at_most_max_rows(tmp_path: Path) -> None:
    for max_rows, listed in ((0, 0), (2, 2), (100, 3)):
        paths = output_paths(str(tmp_path / str(max_rows)), ["html"])
        write_reports(report_of(RECORDS), paths=paths, generated_at="2026-03-05T00:00:01Z", inputs={}, title="t", html_max_rows=max_rows)
        drift = Path(paths["html"]).read_text().split('<section id="drift">')[1].split("</section>")[0]
        assert "<h2>Drift list (3)</h2>" in drift and drift.count("<tr><td>") == listed == drift.count("<details>")
        assert (f"{3 - listed} more rows in the JSON report." in drift) == (listed < 3)


def test_html_heat_map_matrix_and_host_detail(tmp_path: Path) -> None:
    """Region x tenant cells count hosts by class in text (a quarantined or unhealthy host is failed, never in sync), the
    matrix cell names the statuses it holds, and every listed host opens onto its detail, escaped."""
    records = [record("d1", "dev", "1.0.1"), record("d2", "dev", "1.0.0", region="us", tenant="<x>"),
               record("d3", "dev", "1.0.1"), record("d4", "dev", "1.0.1", tenant=None),
               record("p1", "prod", None, state="unreachable", reason="unreachable", region="us", tenant="<x>")]
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time("2026-03-05T00:00:00Z")))
    reconciler.add_all(records)
    reconciler.use_registry_marks({"d3": (_drift.HostMark("app", "quarantined", "quarantined by FP-1"),)})
    report = reconciler.build()
    heat = report.heatmap()
    assert heat.regions == ["eu", "us"] and heat.tenants == ["(none)", "<x>", "acme"]
    assert {key: (cell.counts, cell.examples) for key, cell in heat.cells.items()} == {
        ("eu", "acme"): ({"failed": 1, "drifted": 0, "unknown": 0, "in_sync": 1}, [("d3", "quarantined")]),
        ("eu", "(none)"): ({"failed": 0, "drifted": 0, "unknown": 0, "in_sync": 1}, []),
        ("us", "<x>"): ({"failed": 0, "drifted": 1, "unknown": 1, "in_sync": 0}, [("d2", "missing_patch"), ("p1", "unknown")]),
    }
    paths = output_paths(str(tmp_path), ["html"])
    write_reports(report, paths=paths, generated_at="2026-03-05T00:00:01Z", inputs={}, title="t", html_max_rows=10)
    page = Path(paths["html"]).read_text()
    assert "<th>region</th><th>(none)</th><th>&lt;x&gt;</th><th>acme</th>" in page and "<x>" not in page
    assert ('<td class="hcell h1" data-hosts="2" data-in-sync="1"><strong>1/2 in sync</strong><div class="counts">'
            '<span class="k-failed">1 failed</span><span class="k-drifted">0 drifted</span><span class="k-unknown">0 no data</span>') in page
    assert '<details><summary>1 not in sync</summary><ul class="hosts"><li><span class="mono">d3</span>' in page
    assert ('<td class="cell s-quarantined" data-status="quarantined"><strong>quarantined</strong> &middot; 2/4 in sync'
            '<div class="counts"><span>1 missing patch</span><span>1 quarantined</span></div>') in page
    assert ('<td class="mono host"><details><summary>d3</summary><dl class="host"><dt>region</dt><dd>eu</dd><dt>tenant</dt><dd>acme</dd>'
            '<dt>segment</dt><dd>web</dd><dt>collected</dt><dd>2026-03-09T00:00:00Z</dd><dt>installed</dt><dd>2026-03-02T00:00:00Z</dd>'
            '<dt>facts alone</dt><dd>in sync</dd></dl></details></td><td>app</td>') in page
    assert "<dt>tenant</dt><dd>&lt;x&gt;</dd>" in page and "<dt>missing</dt><dd>CVE-1</dd>" in page


def test_compiled_page_template_is_kept_in_a_private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled template is kept between processes in the user's own cache directory, never in a shared one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = _drift_report._bytecode_cache()
    directory = tmp_path / "cache" / "fleetpatch" / "jinja2"
    assert cache is not None and directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_drift_report.TEMPLATES), bytecode_cache=cache)
    environment.get_template("drift_report.css")
    assert len(list(directory.iterdir())) == 1
    directory.chmod(0o777)  # another user could plant code there: not used
    assert _drift_report._bytecode_cache() is None
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # cannot be made: compiled every time
    assert _drift_report._bytecode_cache() is None
