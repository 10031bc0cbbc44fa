"""The fleetpatch execution environment: meta/execution-environment.yml lists what the collection imports and runs
(nothing more), `ansible-builder create` makes the build context, the image builds with podman from a base built
locally (debootstrap, no registry; pip fed wheels downloaded on the host) and the demo rollout runs INSIDE it the way
AWX runs a job: ansible-runner with podman process isolation, the project in the private data dir, extra variables
as a file."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import typing as t

import ansible_runner
import pytest
import yaml

from .rollout_harness import REPO_ROOT, DemoFleet

pytestmark = pytest.mark.integration

BUILDER = os.path.join(os.path.dirname(sys.executable), "ansible-builder")
EE_BASE = "localhost/fleetpatch-ee-base:bookworm"
EE_IMAGE = "localhost/fleetpatch-ee"
# python3-pip: Debian's python3 has no ensurepip (ansible-builder's way to get pip); python3-venv: ansible-builder's
# assemble step makes a venv; openssh-client and zstd: bindep.txt (installed here because the build has no network)
BASE_PACKAGES = "python3,python3-pip,python3-venv,openssh-client,zstd,ca-certificates"
DEBIAN_MIRROR = os.environ.get("FLEETPATCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# the packages ansible-builder itself installs into the image besides requirements.txt
BUILDER_PACKAGES = ["bindep", "pyyaml", "packaging", "dumb-init==1.2.5", "setuptools", "wheel"]
THIRD_PARTY_OK = {"ansible", "ansible_collections", "yaml", "jinja2", "markupsafe"}  # ansible-core and what it requires


def _read(path: str) -> str:
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        return handle.read()


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower())
    return names


def _imported_top_levels(root: str) -> set[str]:
    found = set()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        found |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        found.add(node.module.split(".")[0])
    return found


def test_requirements_are_what_the_collection_imports_and_runs() -> None:
    meta = yaml.safe_load(_read("meta/execution-environment.yml"))
    assert meta == {"version": 1, "dependencies": {"python": "requirements.txt", "system": "bindep.txt"}}
    third_party = _imported_top_levels(os.path.join(REPO_ROOT, "plugins")) - set(sys.stdlib_module_names) - {"__future__"}
    required = _requirement_names(_read("requirements.txt"))
    # everything the shipped plugins import beyond ansible-core, and nothing else
    assert required == third_party - THIRD_PARTY_OK
    # the tools the collection runs (module_utils/_tools.py's find_tool) are the system packages
    tools = set()
    for directory, _dirs, files in os.walk(os.path.join(REPO_ROOT, "plugins")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    text = handle.read()
                tools |= {tool for tool in ("ssh-keygen", "zstd") if f'"{tool}"' in text}
    assert tools == {"ssh-keygen", "zstd"}
    bindep = _read("bindep.txt")
    assert "openssh-client [platform:dpkg]" in bindep and "openssh-clients [platform:rpm]" in bindep
    assert "zstd [platform:dpkg platform:rpm]" in bindep


def test_ansible_builder_create_makes_the_build_context(tmp_path) -> None:
    context = tmp_path / "context"
    result = subprocess.run([BUILDER, "create", "-f", "execution-environment.yml", "-c", str(context)], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==2.19.14 ansible-runner==2.4.3"' in containerfile
    assert 'ARG EE_BASE_IMAGE="localhost/fleetpatch-ee-base:bookworm"' in containerfile
    assert "introspect --user-pip=requirements.txt --user-bindep=bindep.txt" in containerfile
    assert (context / "_build" / "requirements.txt").read_text(encoding="utf-8") == _read("requirements.txt")
    assert (context / "_build" / "bindep.txt").read_text(encoding="utf-8") == _read("bindep.txt")


# ------------------------------------------------------------------------------------------- the image itself


def _podman(*args: str, timeout: int = 1800, **kwargs: t.Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False, timeout=timeout, **kwargs)


def _label(image: str, name: str) -> str | None:
    if _podman("image", "exists", image).returncode != 0:
        return None
    return _podman("image", "inspect", "--format", f'{{{{ index .Labels "{name}" }}}}', image).stdout.strip()


def _base_image(work: str) -> str:
    """Debian bookworm minbase with python3 (+ ensurepip) and bindep.txt's packages, built once (label = package list)."""
    if _label(EE_BASE, "fleetpatch.packages") == BASE_PACKAGES:
        return EE_BASE
    rootfs = os.path.join(work, "rootfs")
    done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", rootfs, DEBIAN_MIRROR],
                          capture_output=True, text=True, check=False, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tar = subprocess.Popen(["tar", "-C", rootfs, "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    imported = _podman("import", "--change", "CMD [\"bash\"]", "--change", f"LABEL fleetpatch.packages={BASE_PACKAGES}", "-", EE_BASE,
                       stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    assert imported.returncode == 0, imported.stderr
    return EE_BASE


def _content_label() -> str:
    digest = hashlib.sha256()
    for path in ("execution-environment.yml", "requirements.txt", "bindep.txt"):
        digest.update(_read(path).encode())
    digest.update(BASE_PACKAGES.encode())
    return digest.hexdigest()[:16]


def _ee_image(work: str) -> str:
    """The EE built from execution-environment.yml, offline: the base above, wheels downloaded on the host. Cached by a
    label over its inputs, like tests/harness/image.sh caches the test-node image."""
    label = _content_label()
    image = f"{EE_IMAGE}:{label}"
    if _label(image, "fleetpatch.ee") == label:
        return image
    base = _base_image(work)
    context = os.path.join(work, "context")
    definition = yaml.safe_load(_read("execution-environment.yml"))
    # the build has no network: pip takes only the wheels downloaded here (the machine's index), nothing else
    wheels = os.path.join(work, "wheels")
    refs = definition["dependencies"]["ansible_core"]["package_pip"], definition["dependencies"]["ansible_runner"]["package_pip"]
    download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", wheels, *refs, *BUILDER_PACKAGES,
                               "-r", os.path.join(REPO_ROOT, "requirements.txt")], capture_output=True, text=True, check=False, timeout=900)
    assert download.returncode == 0, download.stderr[-3000:]
    definition["images"]["base_image"]["name"] = base
    definition["dependencies"]["python"] = os.path.join(REPO_ROOT, "requirements.txt")
    definition["dependencies"]["system"] = os.path.join(REPO_ROOT, "bindep.txt")
    definition["additional_build_files"] = [{"src": wheels, "dest": "wheels"}]
    # Debian disables ensurepip for the system python, which ansible-builder's pip_install runs: the base has pip already
    pip_check = "RUN printf '#!/bin/sh\\nexec \"$1\" -m pip --version\\n' > /output/scripts/pip_install"
    definition["additional_build_steps"] = {"prepend_base": ["COPY _build/wheels/ /wheels/", "ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels", pip_check],
                                            "append_final": [f"LABEL fleetpatch.ee={label}"]}
    definition["options"]["tags"] = [image]
    offline = os.path.join(work, "execution-environment.yml")
    with open(offline, "w", encoding="utf-8") as handle:
        yaml.safe_dump(definition, handle)
    created = subprocess.run([BUILDER, "create", "-f", offline, "-c", context], capture_output=True, text=True, check=False, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    built = _podman("build", "--network", "none", "--build-arg", "PKGMGR_PRESERVE_CACHE=always", "-f", os.path.join(context, "Containerfile"),
                    "-t", image, context, timeout=3600)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    return image


@pytest.fixture(scope="module")
def ee_image(tmp_path_factory) -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (bin/test installs it when run as root)")
    return _ee_image(str(tmp_path_factory.mktemp("ee")))


def _project_copy(destination: str) -> None:
    """The project as AWX puts it in the job's private data dir: the repository's files (no .git, venv, test output)."""
    shutil.copytree(REPO_ROOT, destination, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "output", "__pycache__", ".pytest_cache", "bench", "molecule"))


@pytest.mark.slow  # the first run builds the images (minutes); later runs reuse them by their content label
def test_demo_rollout_runs_inside_the_execution_environment_like_awx(ee_image, make_fleet, tmp_path) -> None:
    fleet: DemoFleet = make_fleet(demo_fleet_tenants=["acme"], demo_fleet_segments=["web"], demo_fleet_hosts_per_cell=1)
    os.makedirs(fleet.state_dir, exist_ok=True)
    private = tmp_path / "job"
    _project_copy(str(private / "project"))
    # the inventory where AWX writes it, in the private data dir (the fleet inventory plugin reads *.fleet.yml)
    os.makedirs(private / "inventory")
    shutil.copy(fleet.inventory, private / "inventory" / "demo.fleet.yml")
    # The demo's inventory names the interpreter that created it (this venv's python); inside the EE that path is the
    # image's python3, as it would be on a host with its own interpreter.
    shim = tmp_path / "python-shim"
    shim.write_text("#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n", encoding="utf-8")
    shim.chmod(0o755)
    extravars = {"rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": fleet.state_dir,
                 "rollout_policy": fleet.trusting({"canary": {"size": 1}, "waves": ["100%"]}),
                 # as AWX sends a survey's answers, and its identity
                 "rollout_preview": "false", "rollout_lock_ttl": "1800", "awx_job_id": 4711, "awx_user_name": "alice"}
    runner = ansible_runner.run(
        private_data_dir=str(private), playbook="playbooks/rollout.yml", extravars=extravars,
        process_isolation=True, process_isolation_executable="podman", container_image=ee_image,
        container_volume_mounts=[f"{fleet.path}:{fleet.path}", f"{fleet.state_dir}:{fleet.state_dir}", f"{shim}:{sys.executable}:ro"],
        # the demo hosts answer on the host's loopback addresses; the job's files belong to whoever runs it (AWX runs
        # podman as its own user with --userns=keep-id: the same user inside), here root
        container_options=["--network=host", "--user=0"],
        envvars={"ANSIBLE_CONFIG": "/runner/project/ansible.cfg"}, quiet=True, settings={"suppress_env_files": True})
    stdout = runner.stdout.read() if runner.stdout else ""
    assert runner.status == "successful", stdout[-4000:]
    assert os.path.exists(private / "env" / "extravars")  # extra variables handed over as a file, as AWX does
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    # the controller ran in the image: its ansible-core and python are the EE's
    versions = _podman("run", "--rm", ee_image, "ansible", "--version").stdout
    assert "core 2.19.14" in versions and "/usr/bin/python3" in versions, versions
