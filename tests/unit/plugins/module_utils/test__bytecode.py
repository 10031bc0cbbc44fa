"""The host bytecode cache (module_utils/_bytecode.py) with a real zip payload, as an AnsiballZ module runs from.

Every case runs a fresh interpreter (the cache only matters across executions, and a zip's package names must not meet
the collection this test process loaded): the zip holds _bytecode.py at its collection path and a package
``ansible_collections.fleetpatch.zztest`` (a package and a module in it). An audit hook counts what is compiled from
the zip's sources.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bytecode

REPO_ROOT = pathlib.Path(__file__).resolve().parents[4]
BYTECODE_SOURCE = REPO_ROOT / "plugins" / "module_utils" / "_bytecode.py"
STORE_SOURCE = REPO_ROOT / "plugins" / "module_utils" / "_bytecode_store.py"
MODULE = '''\
"""A module of the test payload."""
VALUE = {value!r}


def boom():
    raise RuntimeError("boom")
'''

# run in the child: install the cache, import the payload's package and module, report what happened
CHILD = textwrap.dedent('''\
    import json, sys, traceback
    compiled = []
    sys.addaudithook(lambda event, args: event == "compile" and compiled.append(str(args[1])))
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bytecode
    exec(sys.argv[2])  # the case's tweak (a failure to inject), or nothing
    _bytecode.install()
    import ansible_collections.fleetpatch.zztest.mod as mod
    import ansible_collections.fleetpatch.zztest as pkg
    try:
        mod.boom()
    except RuntimeError:
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
    finder = next((f for f in sys.meta_path if type(f).__name__ == "_Finder"), None)
    print(json.dumps({
        "value": mod.VALUE, "file": mod.__file__, "origin": mod.__spec__.origin, "pkg_path": list(pkg.__path__),
        "source": mod.__loader__.get_source(mod.__name__), "tb_file": frame.filename, "tb_line": frame.line,
        "compiled": [name for name in compiled if "zztest" in name],
        "cache": None if finder is None else {"compiled": finder.cache.compiled, "loaded": finder.cache.loaded},
        "store_loaded": "ansible_collections.fleetpatch.rollout.plugins.module_utils._bytecode_store" in sys.modules,
    }))
''')


def build_payload(path: pathlib.Path, *, value: str = "one") -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as archive:
        for package in ("ansible_collections", "ansible_collections/fleetpatch", "ansible_collections/fleetpatch/rollout",
                        "ansible_collections/fleetpatch/rollout/plugins", "ansible_collections/fleetpatch/rollout/plugins/module_utils",
                        "ansible_collections/fleetpatch/zztest"):
            archive.writestr(f"{package}/__init__.py", "")
        archive.write(BYTECODE_SOURCE, "ansible_collections/fleetpatch/rollout/plugins/module_utils/_bytecode.py")
        archive.write(STORE_SOURCE, "ansible_collections/fleetpatch/rollout/plugins/module_utils/_bytecode_store.py")
        archive.writestr("ansible_collections/fleetpatch/zztest/mod.py", MODULE.format(value=value))
    return path


def run(payload: pathlib.Path, cache: pathlib.Path | None, *, tweak: str = "", **env: str) -> dict:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("FLEETPATCH_BYTECODE")}
    if cache is not None:
        environ[_bytecode.CACHE_DIR_ENV] = str(cache)
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(payload), tweak], env=environ, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def entries(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in cache.iterdir() if path.suffix == ".bin")


def assert_plain_import_semantics(result: dict, payload: pathlib.Path) -> None:
    """What the zip importer gives: file names inside the zip, the package path, the loader's source, tracebacks."""
    expected = os.path.join(str(payload), "ansible_collections", "fleetpatch", "zztest", "mod.py")
    assert result["file"] == result["origin"] == expected
    assert result["pkg_path"] == [os.path.join(str(payload), "ansible_collections", "fleetpatch", "zztest")]
    assert "def boom" in result["source"]
    assert result["tb_file"] == expected and result["tb_line"] == 'raise RuntimeError("boom")'


def test_second_execution_uses_the_cache(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache" / "bytecode"
    first = run(payload, cache)
    assert first["value"] == "one"
    assert len(first["compiled"]) == 2 and first["cache"] == {"compiled": 2, "loaded": 0}  # zztest/__init__.py, zztest/mod.py
    assert first["store_loaded"]  # the miss path (compile, store, create the directory) is a module of its own
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = entries(cache)
    assert len(files) == 2 and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    assert not [path for path in cache.iterdir() if path.suffix == ".tmp"]

    second = run(payload, cache)
    assert second["compiled"] == [] and second["cache"] == {"compiled": 0, "loaded": 2}
    assert not second["store_loaded"]  # a warm cache never loads (so never compiles) the miss path
    assert second["value"] == "one"
    assert_plain_import_semantics(second, payload)


def test_same_code_from_another_payload_path_gets_that_path(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    run(build_payload(tmp_path / "first.zip"), cache)
    other = build_payload(tmp_path / "other.zip")
    result = run(other, cache)
    assert result["cache"]["loaded"] == 2
    assert_plain_import_semantics(result, other)


def test_changed_source_gets_a_new_key(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    run(build_payload(tmp_path / "payload.zip"), cache)
    before = entries(cache)
    result = run(build_payload(tmp_path / "payload.zip", value="two"), cache)
    assert result["value"] == "two"
    assert result["cache"] == {"compiled": 1, "loaded": 1}  # the package's __init__ is the same source
    assert len(entries(cache)) == 3 and set(before) < set(entries(cache))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "valid_header_bad_marshal", "empty"])
def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path: pathlib.Path, damage: str) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    for path in entries(cache):
        data = path.read_bytes()
        header = len(_bytecode.HEADER) + _bytecode.DIGEST_SIZE
        damaged = {"truncate": data[:len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"",
                   # a header whose digest matches data that is not marshalled code
                   "valid_header_bad_marshal": data[:len(_bytecode.HEADER)] + __import__("hashlib").sha256(b"\xff").digest() + b"\xff"}
        path.write_bytes(damaged[damage])
        assert len(data) > header
    result = run(payload, cache)
    assert result["value"] == "one" and result["cache"] == {"compiled": 2, "loaded": 0}
    assert_plain_import_semantics(result, payload)
    again = run(payload, cache)
    assert again["cache"] == {"compiled": 0, "loaded": 2}


def test_tampered_code_with_its_digest_fixed_is_still_code_of_the_owner(tmp_path: pathlib.Path) -> None:
    """The trust model is ownership, as __pycache__'s: a file that passes the checks is used (so the checks matter)."""
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    forged = compile(MODULE.format(value="forged"), "x", "exec")
    data = __import__("marshal").dumps(forged)
    path = max(entries(cache), key=lambda entry: entry.stat().st_size)  # the module, not the empty package
    path.write_bytes(_bytecode.HEADER + __import__("hashlib").sha256(data).digest() + data)
    path.chmod(0o644)  # readable by others: not trusted
    result = run(payload, cache)
    assert result["value"] == "one" and result["cache"] == {"compiled": 1, "loaded": 1}
    path.chmod(0o600)
    path.write_bytes(_bytecode.HEADER + __import__("hashlib").sha256(data).digest() + data)
    assert run(payload, cache)["value"] == "forged"


def test_group_writable_directory_is_not_used(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    cache.chmod(0o770)
    result = run(payload, cache)
    assert result["value"] == "one" and result["cache"] == {"compiled": 0, "loaded": 0}
    assert len(result["compiled"]) == 2  # the plain zip import
    assert_plain_import_semantics(result, payload)


def test_symlinked_directory_is_not_used(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    real = tmp_path / "real"
    run(payload, real)
    link = tmp_path / "link"
    link.symlink_to(real)
    result = run(payload, link)
    assert result["value"] == "one" and result["cache"] == {"compiled": 0, "loaded": 0}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_foreign_owned_directory_and_file_are_not_used(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    for path in entries(cache):
        os.chown(path, 65534, -1)
    result = run(payload, cache)
    assert result["cache"] == {"compiled": 2, "loaded": 0}  # files of another owner ignored (and replaced: the dir is ours)
    assert run(payload, cache)["cache"] == {"compiled": 0, "loaded": 2}
    os.chown(cache, 65534, -1)
    result = run(payload, cache)
    assert result["value"] == "one" and result["cache"] == {"compiled": 0, "loaded": 0}


def test_disabled_by_env(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    result = run(payload, cache, FLEETPATCH_BYTECODE_CACHE="off")
    # zipimport's own import compiles each file twice (its find_spec asks get_filename, which compiles)
    assert result["cache"] is None and len(result["compiled"]) == 4 and not cache.exists()
    assert_plain_import_semantics(result, payload)


def test_default_directory_is_the_effective_users_home(tmp_path: pathlib.Path) -> None:
    import pwd

    assert _bytecode.cache_dir() == os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache", "fleetpatch", "bytecode") \
        or os.environ.get(_bytecode.CACHE_DIR_ENV)


@pytest.mark.parametrize("tweak", [
    # the cache directory cannot be made
    "import os; os.environ['FLEETPATCH_BYTECODE_CACHE_DIR'] = '/proc/no/such/dir'",
    # reading a cache file fails
    "_bytecode._Cache._read = lambda *a: 1 / 0",
    # the file name of cached code cannot be fixed
    "_bytecode._fix_filename = lambda *a: 1 / 0",
    # writing fails after the compile
    "import marshal; marshal.dumps = lambda *a: 1 / 0",
])
def test_errors_fall_back_to_the_plain_import(tmp_path: pathlib.Path, tweak: str) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)  # a warm cache, so that the load path runs too
    result = run(payload, cache, tweak=tweak)
    assert result["value"] == "one"
    assert_plain_import_semantics(result, payload)


def test_module_errors_are_not_swallowed(tmp_path: pathlib.Path) -> None:
    """An import error of the module itself stays that (no second execution through the plain import)."""
    payload = tmp_path / "payload.zip"
    build_payload(payload)
    with zipfile.ZipFile(payload, "a") as archive:
        archive.writestr("ansible_collections/fleetpatch/zztest/bad.py", "import sys\nsys.stdout.write('ran ')\nraise ValueError('bad module')\n")
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bytecode\n_bytecode.install()\n"
              "import ansible_collections.fleetpatch.zztest.bad\n")
    environ = dict(os.environ, FLEETPATCH_BYTECODE_CACHE_DIR=str(tmp_path / "cache"))
    for _attempt in range(2):  # cold, then warm
        proc = subprocess.run([sys.executable, "-c", script, str(payload)], env=environ, capture_output=True, text=True, check=False)
        assert proc.returncode == 1 and "ValueError: bad module" in proc.stderr and proc.stdout == "ran "


def test_a_second_copy_of_the_module_adds_no_second_finder(tmp_path: pathlib.Path) -> None:
    """ansible-test's import test loads modules again after clearing sys.modules: one finder, no finder asking another."""
    payload = build_payload(tmp_path / "payload.zip")
    tweak = ("_bytecode.install(); import importlib; del sys.modules[_bytecode.__name__]; "
             "importlib.import_module(_bytecode.__name__).install(); "
             "assert sum(bool(getattr(f, 'fleetpatch_bytecode_cache', False)) for f in sys.meta_path) == 1")
    result = run(payload, tmp_path / "cache", tweak=tweak)
    # the second _bytecode came through the first finder (so its code is cached too), then the package and the module
    assert result["value"] == "one" and result["cache"] == {"compiled": 3, "loaded": 0}


# --- the same file as the interpreter's startup hook (sitecustomize.py in the task's remote tmp dir) ---

CORE_MODULE = '''\
"""Stands for ansible-core's module_utils in the payload."""
CORE = "core"
'''
# run in the child as the AnsiballZ wrapper runs: the zip first on the path, then ansible-core's code from it, then the
# collection's module calling install() (which must find the hook's finder and add none)
STARTUP_CHILD = textwrap.dedent('''\
    import json, os, sys
    compiled = []
    sys.addaudithook(lambda event, args: event == "compile" and compiled.append(str(args[1])))
    sys.path.insert(0, sys.argv[1])
    import ansible.module_utils.zzcore as core
    import ansible_collections.fleetpatch.zztest.mod as mod
    from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bytecode
    _bytecode.install()
    finders = [f for f in sys.meta_path if getattr(f, "fleetpatch_bytecode_cache", False)]
    site = sys.modules.get("sitecustomize")
    print(json.dumps({
        "core": core.CORE, "core_file": core.__file__, "value": mod.VALUE,
        "compiled": sorted(os.path.relpath(name, sys.argv[1]) for name in compiled if name.startswith(sys.argv[1])),
        "finders": [{"compiled": f.cache.compiled, "loaded": f.cache.loaded} for f in finders],
        "path": sys.path, "pythonpath": os.environ.get("PYTHONPATH"),
        "site_file": getattr(site, "__file__", None), "shadowed_ran": getattr(site, "SHADOWED", None),
    }))
''')


def build_core_payload(path: pathlib.Path) -> pathlib.Path:
    build_payload(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("ansible/__init__.py", "")
        archive.writestr("ansible/module_utils/__init__.py", "")
        archive.writestr("ansible/module_utils/zzcore.py", CORE_MODULE)
    return path


def hook_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """The task's remote tmp dir as the action plugin leaves it: the hook as sitecustomize.py."""
    directory = tmp_path / "ansible-tmp-1"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_bytes(BYTECODE_SOURCE.read_bytes())
    return directory


def run_started(payload: pathlib.Path, cache: pathlib.Path, pythonpath: str, **env: str) -> dict:
    # as on a host: Python writes bytecode (the test run may have told its own processes not to)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("FLEETPATCH_BYTECODE") and key != "PYTHONDONTWRITEBYTECODE"}
    environ.update({_bytecode.CACHE_DIR_ENV: str(cache), "PYTHONPATH": pythonpath}, **env)
    proc = subprocess.run([sys.executable, "-c", STARTUP_CHILD, str(payload)], env=environ, capture_output=True, text=True, check=False,
                          cwd=str(payload.parent))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


def test_startup_hook_caches_the_payloads_ansible_core_code_too(tmp_path: pathlib.Path) -> None:
    payload = build_core_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    first = run_started(payload, cache, str(hook_dir(tmp_path)))
    assert first["core"] == "core" and first["value"] == "one"
    assert first["core_file"] == os.path.join(str(payload), "ansible", "module_utils", "zzcore.py")
    # one finder, the hook's: install() added none. It compiled ansible's files and the collection's once (the empty
    # __init__.py files share one entry: a source text is compiled once, whatever its file)
    assert len(first["finders"]) == 1 and first["finders"][0]["compiled"] >= 3
    assert "ansible/module_utils/zzcore.py" in first["compiled"]

    second = run_started(payload, cache, str(hook_dir(tmp_path)))
    assert second["compiled"] == [], second["compiled"]  # nothing of the payload compiled: ansible's code neither
    # everything from the cache (more than the first execution stored: there, the miss path's own imports were plain)
    assert len(second["finders"]) == 1 and second["finders"][0]["compiled"] == 0 and second["finders"][0]["loaded"] >= first["finders"][0]["compiled"]
    assert second["core"] == "core" and second["core_file"] == first["core_file"]


def test_without_the_hook_ansible_core_code_is_compiled_every_time(tmp_path: pathlib.Path) -> None:
    payload = build_core_payload(tmp_path / "payload.zip")
    for _execution in range(2):
        result = run_started(payload, tmp_path / "cache", "")
        assert "ansible/module_utils/zzcore.py" in result["compiled"]
        assert result["finders"][0]["loaded"] <= 3  # install()'s finder: the collection's code only


def test_startup_hook_leaves_its_directory_off_the_path_and_the_environment(tmp_path: pathlib.Path) -> None:
    payload = build_core_payload(tmp_path / "payload.zip")
    hook = str(hook_dir(tmp_path))
    kept = tmp_path / "site-lib"
    kept.mkdir()
    result = run_started(payload, tmp_path / "cache", os.pathsep.join([hook, str(kept)]))
    assert hook not in result["path"] and str(kept) in result["path"]
    assert result["pythonpath"] == str(kept)  # what the module's own processes inherit: the rest, as it was
    # nothing written into the task's tmp dir: under become (root) the connection user's cleanup could not remove it
    assert sorted(os.listdir(hook)) == ["sitecustomize.py"]
    alone = run_started(payload, tmp_path / "cache", hook)
    assert alone["pythonpath"] is None and hook not in alone["path"]


def test_startup_hook_runs_the_sitecustomize_it_shadows(tmp_path: pathlib.Path) -> None:
    payload = build_core_payload(tmp_path / "payload.zip")
    distribution = tmp_path / "dist-site"
    distribution.mkdir()
    (distribution / "sitecustomize.py").write_text("SHADOWED = 'ran'\n")
    result = run_started(payload, tmp_path / "cache", os.pathsep.join([str(hook_dir(tmp_path)), str(distribution)]))
    assert result["shadowed_ran"] == "ran" and result["site_file"] == str(distribution / "sitecustomize.py")
    assert result["core"] == "core" and len(result["finders"]) == 1


def test_startup_hook_disabled_by_env_still_leaves_no_trace(tmp_path: pathlib.Path) -> None:
    payload = build_core_payload(tmp_path / "payload.zip")
    hook = str(hook_dir(tmp_path))
    result = run_started(payload, tmp_path / "cache", hook, FLEETPATCH_BYTECODE_CACHE="off")
    assert result["finders"] == [] and "ansible/module_utils/zzcore.py" in result["compiled"]
    assert hook not in result["path"] and result["pythonpath"] is None
    assert not (tmp_path / "cache").exists()


# --- bounded by use: reads refresh an entry's age once a day, a miss prunes what nobody read for a month ---

DAY = 24 * 3600


def age(path: pathlib.Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_reading_an_entry_refreshes_its_age_at_most_once_a_day(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    for path in entries(cache):
        age(path, 2 * DAY)
    assert run(payload, cache)["cache"]["loaded"] == 2
    assert all(time.time() - path.stat().st_mtime < 600 for path in entries(cache))  # in use: young again
    for path in entries(cache):
        age(path, 3600)
    before = {path: path.stat().st_mtime for path in entries(cache)}
    run(payload, cache)
    assert {path: path.stat().st_mtime for path in entries(cache)} == before  # read within the day: no write


def test_a_miss_prunes_entries_unread_for_a_month_and_stale_temp_files(tmp_path: pathlib.Path) -> None:
    payload = build_payload(tmp_path / "payload.zip")
    cache = tmp_path / "cache"
    run(payload, cache)
    planted = {"old.bin": 31 * DAY, "recent.bin": 29 * DAY, ".old.bin.1.ab.tmp": 2 * 3600, ".new.bin.2.cd.tmp": 600, "notes.txt": 90 * DAY}
    for name, seconds in planted.items():
        (cache / name).write_bytes(b"x")
        (cache / name).chmod(0o600)
        age(cache / name, seconds)
    # a warm execution stores nothing and prunes nothing
    run(payload, cache)
    assert all((cache / name).exists() for name in planted)
    # a changed module is a miss: its store prunes the month-old entry and the hour-old temp file, nothing else
    result = run(build_payload(tmp_path / "payload.zip", value="two"), cache)
    assert result["value"] == "two" and result["cache"]["compiled"] == 1
    assert sorted(name for name in planted if (cache / name).exists()) == [".new.bin.2.cd.tmp", "notes.txt", "recent.bin"]
    assert len(entries(cache)) == 4  # the two of the first payload, the new one and recent.bin
