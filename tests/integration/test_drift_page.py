"""The drift report's HTML page in headless Chromium: the demo fleet's report at 1280 px, checked for layout errors
(no horizontal overflow, no text under 12 px), the heat map and matrix cells it must show, per-host detail without
JavaScript, and the screenshot committed in docs/images/drift-report.png (same size, made from the same page).

The report is the demo fleet's (fleetpatch.demo's layout: regions eu-west and us-east, tenants acme and globex,
segments web and api, here with environments staging and prod, one host per cell) after a staged rollout of myapp 1.0.1
and billing 2.3.1, built from fixed facts and a fixed clock, so the page is the same byte for byte on every run.
Refresh the committed screenshot after changing the page: FLEETPATCH_UPDATE_SCREENSHOT=1 .venv/bin/pytest -m integration
tests/integration/test_drift_page.py (then commit docs/images/drift-report.png).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import typing as t
import zlib
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet import build_layout
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (
    HostMark,
    Reconciler,
    parse_desired_state,
    parse_time,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift_report import output_paths, write_reports

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "drift-report.png"
WIDTH = 1280
NOW = "2026-06-10T09:00:00Z"
# the PNG text chunk that names the sha256 of the page a screenshot was taken of
PAGE_KEY = b"fleetpatch-page-sha256"
SHA = {("myapp", "1.0.0"): "a1" * 32, ("myapp", "1.0.1"): "b2" * 32, ("billing", "2.3.0"): "c3" * 32, ("billing", "2.3.1"): "d4" * 32}
DESIRED = {
    "promotion": ["staging", "prod"],
    "environments": {"staging": {"myapp": "1.0.1", "billing": "2.3.1"}, "prod": {"myapp": "1.0.1", "billing": "2.3.0"}},
    "services": {service: {"builds": {version: {"sha256": sha} for (name, version), sha in SHA.items() if name == service}}
                 for service in ("myapp", "billing")},
    "patches": [
        {"id": "CVE-DEMO-1", "service": "myapp", "fixed_in": ["1.0.1"], "severity": "critical", "released_at": "2026-06-07T00:00:00Z"},
        {"id": "FIX-DEMO-2", "service": "billing", "fixed_in": ["2.3.1"], "severity": "medium", "released_at": "2026-05-20T00:00:00Z"},
    ],
    "slo": {"targets": {"critical": "7d", "medium": "30d"}},
}
# host -> what differs from "every service at its desired version" (version, or a build of another digest)
EXCEPTIONS: dict[str, dict[str, t.Any]] = {
    "us-east-globex-api-staging-01": {"myapp": "1.0.0"},
    "eu-west-globex-web-staging-01": {"billing": "2.3.0"},
    "us-east-acme-web-prod-01": {"myapp": "1.0.0"},
    "us-east-acme-api-prod-01": {"myapp": "1.0.0"},
    "us-east-globex-web-prod-01": {"myapp": "1.0.0"},
    "us-east-globex-api-prod-01": {"myapp": "1.0.0", "billing": "2.3.1"},
    "eu-west-acme-web-prod-01": {"myapp": ("1.0.1", "0f" * 32)},
}
UNREACHABLE = "us-east-globex-web-staging-01"
QUARANTINED = "eu-west-acme-api-prod-01"
UNHEALTHY = "eu-west-globex-api-prod-01"
# region x tenant: (hosts, in sync, drifted, failed, no data)
HEAT = {
    ("eu-west", "acme"): (4, 2, 1, 1, 0),
    ("eu-west", "globex"): (4, 2, 1, 1, 0),
    ("us-east", "acme"): (4, 2, 2, 0, 0),
    ("us-east", "globex"): (4, 0, 3, 0, 1),
}
# environment x service: worst status, in sync / hosts
MATRIX = {
    ("staging", "myapp"): ("missing_patch", 6, 8), ("staging", "billing"): ("missing_patch", 6, 8),
    ("prod", "myapp"): ("unexpected_version", 2, 8), ("prod", "billing"): ("unhealthy", 6, 8),
}


def demo_report():
    """The demo fleet's drift report (Report), from fixed facts: every node of the layout, collected at NOW."""
    layout = build_layout(regions=["eu-west", "us-east"], tenants=["acme", "globex"], segments=["web", "api"],
                          environments=["staging", "prod"], hosts_per_cell=1, cidr="127.77.0.0/16")
    records = []
    for host in layout.hosts:
        if host.role != "node":
            continue
        record: dict[str, t.Any] = {"host": host.name, "environment": host.environment, "region": host.region, "tenant": host.tenant,
                                    "segment": host.segment, "collected_at": NOW, "state": "ok", "reason": None, "services": {}}
        if host.name == UNREACHABLE:
            record.update(state="unreachable", reason="unreachable: Failed to connect to the host via ssh: Connection refused")
        else:
            for service, wanted in DESIRED["environments"][host.environment].items():
                found = EXCEPTIONS.get(host.name, {}).get(service, wanted)
                version, sha = found if isinstance(found, tuple) else (found, SHA[(service, found)])
                installed = "2026-06-09T14:30:00Z" if version != "1.0.0" and version != "2.3.0" else "2026-05-02T08:00:00Z"
                record["services"][service] = {"state": "ok", "reason": None, "version": version, "artifact_sha256": sha,
                                               "installed_at": installed}
        records.append(record)
    reconciler = Reconciler(parse_desired_state(DESIRED, source="demo desired state"), now=t.cast(float, parse_time(NOW)))
    reconciler.add_all(records)
    reconciler.use_registry_marks({
        QUARANTINED: (HostMark("myapp", "quarantined", "quarantined by the rollout of FP-DEMO-myapp-1.0.1 at 2026-06-09T14:41:07Z "
                                                       "(health: HTTP 503 after restart)"),),
        UNHEALTHY: (HostMark("billing", "unhealthy", "rolled_back by the rollout of FP-DEMO-billing-2.3.0 at 2026-06-09T15:02:40Z"),),
    })
    return reconciler.build()


def render_page(directory: Path) -> Path:
    paths = output_paths(str(directory), ["html"])
    write_reports(demo_report(), paths=paths, generated_at=NOW, title="fleetpatch demo drift report", html_max_rows=2000,
                  inputs={"hosts_from_run": 16, "facts_files": [],
                          "registry": {"used": True, "path": "~/.local/state/fleetpatch/controller/registry.sqlite3", "reason": None}})
    return Path(paths["html"])


# what the browser measures on the page (run on a copy of it: the page itself carries no script)
CHECK = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement, small = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (own && el.getClientRects().length && size < 12) small.push(el.tagName + " " + size + "px " + el.textContent.trim().slice(0, 30));
  }
  const wide = [...document.querySelectorAll("body *")].filter((el) => el.getBoundingClientRect().right > root.clientWidth + 0.5
                                                                 && !el.closest(".wide")).map((el) => el.tagName + "." + el.className);
  const out = document.createElement("pre");
  out.id = "verdict";
  out.textContent = JSON.stringify({client: root.clientWidth, scroll: root.scrollWidth, height: root.scrollHeight, small: small,
                                    wide: wide.slice(0, 10), details: document.querySelectorAll("details").length,
                                    closed: [...document.querySelectorAll("details")].filter((d) => !d.open).length});
  document.body.appendChild(out);
});
</script>"""


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=120, check=True)


def png_info(data: bytes) -> tuple[int, int, dict[bytes, bytes]]:
    """Width, height and text chunks of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    texts, pos = {}, 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"tEXt":
            key, _sep, value = data[pos + 8:pos + 8 + length].partition(b"\0")
            texts[key] = value
        pos += 12 + length
    return width, height, texts


def with_text(data: bytes, key: bytes, value: bytes) -> bytes:
    """The PNG with a tEXt chunk (key, value) right after its header."""
    body = b"tEXt" + key + b"\0" + value
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:33] + chunk + data[33:]


def test_demo_report_page_renders_without_layout_errors_and_matches_the_docs_screenshot(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (bin/test installs it as root): the page was not rendered in a browser")
    page = render_page(tmp_path / "report")
    source = page.read_bytes()
    assert source == render_page(tmp_path / "again").read_bytes()  # the same page every time
    checked = tmp_path / "checked.html"
    checked.write_bytes(source.replace(b"</body>", CHECK.encode() + b"</body>"))
    dom = chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},900", "--dump-dom", checked.as_uri()).stdout
    verdict = json.loads(re.search(r'<pre id="verdict">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    # no layout error at 1280 px: nothing wider than the window (tables that may grow scroll inside .wide), no text under 12 px
    assert verdict["client"] == WIDTH and verdict["scroll"] <= WIDTH, verdict
    assert verdict["wide"] == [] and verdict["small"] == [], verdict
    # per-host detail on demand, closed until opened (no JavaScript needed: <details>)
    assert verdict["details"] == verdict["closed"] > 0

    # heat map: every region x tenant cell with its counts in text, coloured by its share in sync
    cells = re.findall(r'<td class="hcell h(\d)" data-hosts="(\d+)" data-in-sync="(\d+)"><strong>\d+/\d+ in sync</strong>'
                       r'<div class="counts"><span class="k-failed">(\d+) failed</span><span class="k-drifted">(\d+) drifted</span>'
                       r'<span class="k-unknown">(\d+) no data</span>', dom)
    assert [(int(h), int(s), int(d), int(f), int(u)) for _band, h, s, f, d, u in cells] == list(HEAT.values())
    assert [int(band) for band, *_rest in cells] == [1, 1, 1, 0]
    assert '<th>region</th><th>acme</th><th>globex</th>' in dom and "<th>eu-west</th>" in dom and "<th>us-east</th>" in dom
    assert f'<li><span class="mono">{QUARANTINED}</span> <span class="badge s-quarantined">quarantined</span></li>' in dom
    # environment x service: two environments, two services, each cell's worst status and share in sync
    matrix = re.findall(r'<td class="cell s-(\w+)" data-status="\w+"><strong>[^<]+</strong> · (\d+)/(\d+) in sync', dom)
    order = [("staging", "billing"), ("staging", "myapp"), ("prod", "billing"), ("prod", "myapp")]
    assert [(status, int(ok), int(hosts)) for status, ok, hosts in matrix] == [MATRIX[key] for key in order]
    # quarantined and unhealthy hosts are neither in sync nor plain drift, in the drift list too
    assert re.search(rf'<span class="badge s-quarantined">quarantined</span></td><td>prod</td><td class="mono host"><details>'
                     rf'<summary>{QUARANTINED}</summary>', dom)
    assert "<dt>facts alone</dt><dd>in sync</dd>" in dom and "<dt>region</dt><dd>eu-west</dd>" in dom

    # the screenshot of the whole page at 1280 px; the committed one was taken of this very page
    height = verdict["height"]
    shot = tmp_path / "report.png"
    chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.as_uri())
    digest = hashlib.sha256(source).hexdigest().encode()
    produced = with_text(shot.read_bytes(), PAGE_KEY, digest)
    assert png_info(produced)[:2] == (WIDTH, height) and png_info(produced)[2][PAGE_KEY] == digest
    if os.environ.get("FLEETPATCH_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(produced)
    width, committed_height, texts = png_info(SCREENSHOT.read_bytes())
    assert (width, committed_height) == (WIDTH, height), "docs/images/drift-report.png is out of date (FLEETPATCH_UPDATE_SCREENSHOT=1)"
    assert texts.get(PAGE_KEY) == digest, "docs/images/drift-report.png was taken of another page (FLEETPATCH_UPDATE_SCREENSHOT=1)"
