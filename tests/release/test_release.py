"""Release checks: what Galaxy and Automation Hub run on upload, the docs linters and the docsite, the changelog.

Run by `bin/test release` (not by the unit or integration stages: pytest.ini's testpaths leave tests/release out).
Every tool comes from the venv (requirements-dev.txt) and works offline: the tarball is built from this checkout,
installed into a temporary collections directory and checked there, as Galaxy would see it.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from ansible.release import __version__ as ANSIBLE_CORE_VERSION
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .role_docs import REPO_ROOT, render_table, roles, table_in_readme

BIN = os.path.dirname(sys.executable)
COLLECTION = "fleetpatch.rollout"
IMPORTER_CONFIG = os.path.join(REPO_ROOT, "tests", "release", "galaxy-importer.cfg")
# Labels of the Ansible docs (docs.ansible.com) that generated pages link to. Offline, the docsite build has no
# intersphinx inventory to resolve them; any other warning (a broken reference of our own, bad markup) fails.
EXTERNAL_LABELS = {
    "action_plugins",
    "ansible_configuration_settings",
    "callback_plugins",
    "common_return_values",
    "ansible_collections.ansible.builtin.constructed_inventory",
    "ansible_collections.ansible.builtin.yaml_inventory",
    "ansible_collections.ansible.builtin.default_callback",
}
# ansible-core's own environment variables (ANSIBLE_*), which options that come from ansible.builtin's doc fragments
# (the rollout_screen callback's, from the default callback) point to; also in the Ansible docs only.
EXTERNAL_ENVVAR = re.compile(r"'envvar' reference target not found: ANSIBLE_[A-Z0-9_]+ \[ref\.envvar\]$")
# What antsibull-docs writes into a page whose documentation it could not use.
ERROR_PAGE_MARKERS = ("was malformed", "There were some errors parsing the documentation", "The errors were:")


def _run(args: list[str], *, cwd: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _galaxy() -> dict:
    with open(os.path.join(REPO_ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> dict[str, str]:
    """A scratch directory outside the checkout (whose ansible.cfg would otherwise apply) and the tools' environment."""
    base = tmp_path_factory.mktemp("release")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "GALAXY_IMPORTER_"))}
    env.update({
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_COLLECTIONS_PATH": str(base / "collections"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    })
    return {"dir": str(base), "env": env}


@pytest.fixture(scope="session")
def tarball(work) -> str:
    dist = os.path.join(work["dir"], "dist")
    build = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", dist, REPO_ROOT], cwd=work["dir"], env=work["env"])
    assert build.returncode == 0, build.stdout + build.stderr
    path = os.path.join(dist, f"fleetpatch-rollout-{_galaxy()['version']}.tar.gz")
    assert os.path.isfile(path), os.listdir(dist)
    return path


@pytest.fixture(scope="session")
def installed(work, tarball) -> str:
    """The collection as a user gets it: installed from the tarball."""
    install = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", work["env"]["ANSIBLE_COLLECTIONS_PATH"], tarball],
                   cwd=work["dir"], env=work["env"])
    assert install.returncode == 0, install.stdout + install.stderr
    return os.path.join(work["env"]["ANSIBLE_COLLECTIONS_PATH"], "ansible_collections", "fleetpatch", "rollout")


@pytest.fixture(scope="session")
def plugin_docs(work, installed) -> dict:
    """ansible-doc's metadata dump of the installed collection: every plugin's and role's documentation."""
    dump = _run([os.path.join(BIN, "ansible-doc"), "--metadata-dump", "--no-fail-on-errors", COLLECTION], cwd=work["dir"], env=work["env"])
    assert dump.returncode == 0, dump.stderr
    return json.loads(dump.stdout)["all"]


def test_galaxy_importer_accepts_the_tarball_without_warnings(work, tarball) -> None:
    out = os.path.join(work["dir"], "importer")
    os.makedirs(out, exist_ok=True)
    env = dict(work["env"], GALAXY_IMPORTER_CONFIG=IMPORTER_CONFIG)
    result = _run([sys.executable, "-m", "galaxy_importer.main", tarball], cwd=out, env=env, timeout=1200)
    print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "Importer processing completed successfully" in lines
    assert [line for line in lines if line.startswith(("WARNING", "ERROR", "CRITICAL"))] == []
    with open(os.path.join(out, "importer_result.json"), encoding="utf-8") as handle:
        imported = json.load(handle)
    assert imported["metadata"]["version"] == _galaxy()["version"]
    assert imported["requires_ansible"]
    blob = imported["docs_blob"]["contents"]
    documented = {(item["content_type"], item["content_name"]) for item in blob if item.get("doc_strings")}
    plugins = {(item["content_type"], item["content_name"]) for item in blob if item["content_type"] in {"module", "filter", "lookup", "inventory", "callback"}}
    assert plugins and plugins == documented, f"no doc strings for {sorted(plugins - documented)}"
    readmes = {item["content_name"]: item.get("readme_html") for item in blob if item["content_type"] == "role"}
    assert set(readmes) == set(roles()) and all(readmes.values()), readmes.keys()


def test_collection_docs_lint_is_clean(work) -> None:
    path = os.path.join(REPO_ROOT, "collections", "ansible_collections", "fleetpatch", "rollout")
    lint = _run([os.path.join(BIN, "antsibull-docs"), "lint-collection-docs", "--plugin-docs", path], cwd=work["dir"], env=work["env"])
    findings = re.findall(r"^\S+:\d+:\d+: .*$", lint.stdout + lint.stderr, re.M)
    assert (lint.returncode, findings) == (0, []), lint.stdout + lint.stderr


def test_changelog_fragments_lint_and_the_release_is_recorded() -> None:
    lint = _run([os.path.join(BIN, "antsibull-changelog"), "lint"], cwd=REPO_ROOT, env=dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"]))
    assert (lint.returncode, lint.stdout) == (0, "")
    with open(os.path.join(REPO_ROOT, "changelogs", "changelog.yaml"), encoding="utf-8") as handle:
        changes = yaml.safe_load(handle)
    version = _galaxy()["version"]
    assert version in changes["releases"], f"changelogs/changelog.yaml has no {version} release: run antsibull-changelog release"
    assert max(changes["releases"], key=Version) == version
    assert changes["releases"][version]["changes"].get("release_summary")


def _version_added(node, where: str = ""):
    """Every (place, version_added) in a documentation tree that dates this collection (options a doc fragment of
    another collection brings, such as ansible.builtin's callback options, carry that collection's versions)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "version_added" and isinstance(value, str):
                if node.get("version_added_collection", COLLECTION) == COLLECTION:
                    yield where, value
            else:
                yield from _version_added(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _version_added(value, f"{where}[{index}]")


def test_version_added_is_a_released_version_not_after_galaxy_version(plugin_docs) -> None:
    """Nothing claims a release before 1.0.0 (the first one) or after the version being built."""
    version = Version(_galaxy()["version"])
    with open(os.path.join(REPO_ROOT, "changelogs", "changelog.yaml"), encoding="utf-8") as handle:
        released = [Version(name) for name in (yaml.safe_load(handle)["releases"] or {})]
    first = min([*released, version])
    found = {}
    for kind, plugins in plugin_docs.items():
        for name, doc in plugins.items():
            if name.startswith(f"{COLLECTION}."):
                for where, added in _version_added(doc):
                    found[f"{kind} {name} {where}"] = added
    assert any(kind.startswith("module ") for kind in found)
    wrong = {place: added for place, added in found.items() if not first <= Version(added) <= version}
    assert wrong == {}, f"version_added outside {first}..{version}"


@pytest.mark.parametrize("role", roles())
def test_role_readme_lists_every_variable_of_its_argument_specs(role: str) -> None:
    with open(os.path.join(REPO_ROOT, "roles", role, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert readme.startswith(f"# fleetpatch.rollout.{role}\n")
    for section in ("## Requirements", "## Variables", "## Example playbook", "## What it records"):
        assert section in readme
    assert f"name: fleetpatch.rollout.{role}" in readme, "the example playbook uses the role's FQCN"
    assert table_in_readme(readme) == render_table(role), f"run: python tests/release/role_docs.py --write {role}"


def test_runtime_metadata_requires_this_ansible_and_groups_share_their_option(plugin_docs) -> None:
    with open(os.path.join(REPO_ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        runtime = yaml.safe_load(handle)
    assert Version(ANSIBLE_CORE_VERSION) in SpecifierSet(runtime["requires_ansible"])
    modules = plugin_docs["module"]
    shared = {"controller": "state_dir", "host": "root"}
    assert set(runtime["action_groups"]) == set(shared)
    for group, option in shared.items():
        for member in runtime["action_groups"][group]:
            doc = modules[f"{COLLECTION}.{member}"].get("doc")
            assert doc, f"{member}: ansible-doc could not read its documentation"
            assert option in doc["options"], f"{member} in group {group} lacks {option}"


def test_module_defaults_reach_a_module_through_its_action_group(work, installed, tmp_path) -> None:
    root = tmp_path / "host"
    root.mkdir()
    playbook = tmp_path / "group.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "module_defaults by action group",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "module_defaults": {f"group/{COLLECTION}.host": {"root": str(root)}},
        "tasks": [{"name": "Read host manifests", "fleetpatch.rollout.patch_facts": {}, "register": "facts"},
                  {"name": "Show the root", "ansible.builtin.debug": {"msg": "ROOT={{ facts.patch_facts.root }}"}}],
    }]))
    env = dict(work["env"], ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    played = _run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", str(playbook)], cwd=str(tmp_path), env=env)
    assert played.returncode == 0, played.stdout + played.stderr
    assert f"ROOT={root}" in played.stdout


@pytest.fixture(scope="session")
def docsite(work, installed) -> str:
    """The antsibull-docs docsite of the installed collection, built offline; returns the HTML directory."""
    site = os.path.join(work["dir"], "docsite")
    os.makedirs(site, mode=0o700)
    init = _run([os.path.join(BIN, "antsibull-docs"), "sphinx-init", "--use-current", "--squash-hierarchy", "--fail-on-error", "--dest-dir", site, COLLECTION],
                cwd=work["dir"], env=work["env"])
    assert init.returncode == 0, init.stdout + init.stderr
    conf = os.path.join(site, "conf.py")
    with open(conf, encoding="utf-8") as handle:
        text = handle.read()
    # offline: no intersphinx inventories to download (their labels are EXTERNAL_LABELS)
    text, count = re.subn(r"^intersphinx_mapping = \{.*?^\}\n", "intersphinx_mapping = {}\n", text, flags=re.S | re.M)
    assert count == 1, "conf.py layout changed: intersphinx_mapping not found"
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(text)
    script = os.path.join(site, "build.sh")
    with open(script, encoding="utf-8") as handle:
        text = handle.read()
    # warnings into a file the test reads, instead of -W (which would turn the external labels into errors)
    assert " -W --keep-going" in text, "build.sh layout changed"
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(text.replace(" -W --keep-going", " --keep-going -w warnings.txt"))
    build = _run(["bash", script], cwd=site, env=work["env"], timeout=1500)
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    with open(os.path.join(site, "warnings.txt"), encoding="utf-8") as handle:
        warnings = handle.read().splitlines()
    unexpected = [line for line in warnings if not _external_reference(line)]
    assert unexpected == [], "docsite warnings"
    return os.path.join(site, "build", "html")


def _external_reference(warning: str) -> bool:
    label = re.search(r"undefined label: '([^']+)'", warning)
    return bool(label and label.group(1) in EXTERNAL_LABELS or EXTERNAL_ENVVAR.search(warning))


def _page(path: str) -> tuple[str, str]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    title = html.unescape(re.search(r"<title>(.*?)</title>", text, re.S).group(1))
    return title, text


def test_docsite_has_a_page_with_every_option_of_every_plugin_and_role(docsite, plugin_docs) -> None:
    pages = 0
    for kind, plugins in plugin_docs.items():
        for name, doc in plugins.items():
            if not name.startswith(f"{COLLECTION}.") or kind == "keyword":
                continue
            short = name.removeprefix(f"{COLLECTION}.")
            title, text = _page(os.path.join(docsite, f"{short}_{kind}.html"))
            assert title.startswith(f"{name} {kind}"), title
            assert not re.search(r"\b(Error|Cannot|missing)\b", title), title
            assert not [marker for marker in ERROR_PAGE_MARKERS if marker in text], f"{name}: error page"
            if kind == "role":
                anchors = {f"parameter-{entry}--{option}" for entry, spec in doc["entry_points"].items() for option in (spec.get("options") or {})}
            else:
                anchors = {f"parameter-{option}" for option in (doc["doc"].get("options") or {})}
            missing = sorted(anchor for anchor in anchors if f'id="{anchor}"' not in text)
            assert missing == [], f"{name}: options without an entry on its page"
            if kind != "role":
                assert 'id="examples"' in text or not doc.get("examples"), f"{name}: examples not rendered"
            pages += 1
    assert pages >= 25
    guide_title = _page(os.path.join(docsite, "docsite", "guide_rollout.html"))[0]
    assert guide_title.startswith("Rolling out a patch across a fleet")
    index = _page(os.path.join(docsite, "index.html"))[1]
    for role in roles():
        assert f"{role}_role.html" in index
