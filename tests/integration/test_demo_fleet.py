"""The embedded demo fleet (collection fleetpatch.demo), built and torn down by its playbooks through ansible-runner.

Every test asserts what the fleet really does: answers on each host's own loopback address, the version a
restart loads, faults, HTTP ranges, idempotence, and that teardown leaves no process or directory behind.
"""

from __future__ import annotations

import hashlib
import http.client
import fcntl
import json
import random
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
import urllib.parse

import ansible_runner
import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import HostLayout, switch_current, unpack_release

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(REPO_ROOT, "collections", "ansible_collections", "fleetpatch", "demo", "playbooks")
ANSIBLE_CFG = os.path.join(REPO_ROOT, "ansible.cfg")
VENV_BIN = os.path.dirname(sys.executable)
MODULE = "fleetpatch.demo.demo_fleet"
# 127.78.<n>.0/24 and ports 18100+n / 18400+n are this file's; other suites use other ranges. A net is
# claimed with an flock so that concurrent pytest runs never build two fleets on the same addresses.
LOCK_DIR = os.path.join(tempfile.gettempdir(), "fleetpatch-demo-fleet-test-nets")

SMALL = {
    "demo_fleet_regions": ["eu-west", "us-east"],
    "demo_fleet_tenants": ["acme"],
    "demo_fleet_segments": ["web", "api"],
    "demo_fleet_hosts_per_cell": 1,
}


# ------------------------------------------------------------------------------------------------ helpers


def ansible_env() -> dict[str, str]:
    return {
        "ANSIBLE_CONFIG": ANSIBLE_CFG,
        "ANSIBLE_NOCOLOR": "1",
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
    }


class Run:
    def __init__(self, runner: t.Any) -> None:
        self.status = runner.status
        self.stdout = runner.stdout.read() if runner.stdout else ""
        self.result: dict[str, t.Any] = {}
        for event in runner.events:
            data = event.get("event_data", {})
            if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task_action") == MODULE:
                self.result = dict(data.get("res", {}))


def run_playbook(playbook: str, extravars: dict[str, t.Any], *, cmdline: str | None = None) -> Run:
    private = tempfile.mkdtemp(prefix="demo-fleet-runner-")
    try:
        kwargs: dict[str, t.Any] = {
            "private_data_dir": private,
            "playbook": os.path.join(PLAYBOOKS, playbook),
            "extravars": extravars,
            "envvars": ansible_env(),
            "quiet": True,
            "settings": {"suppress_env_files": True},
        }
        if cmdline:
            kwargs["cmdline"] = cmdline
        return Run(ansible_runner.run(**kwargs))
    finally:
        shutil.rmtree(private, ignore_errors=True)


class Reply(t.NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    seconds: float


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Reply:
    """GET without any proxy."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body, time.monotonic() - started)
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def refuses(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def claim_net(candidates: t.Sequence[int]) -> tuple[int, int]:
    """(net, lock fd) of the first free candidate, in random order; the lock holds until the fd closes."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    for net in random.sample(list(candidates), len(candidates)):
        fd = os.open(os.path.join(LOCK_DIR, f"{net}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return net, fd
    raise RuntimeError("no free 127.78.x.0/24 test network")


class Fleet:
    def __init__(self, base: str, *, nets: t.Sequence[int] = range(250), **params: t.Any) -> None:
        net, self.lock_fd = claim_net(nets)
        self.path = os.path.join(base, "fleet")
        self.port = 18100 + net
        self.params: dict[str, t.Any] = {
            "demo_fleet_dir": self.path,
            "demo_fleet_cidr": f"127.78.{net}.0/24",
            "demo_fleet_port": self.port,
            "demo_fleet_origin_port": 18400 + net,
            **SMALL,
        }
        self.params.update(params)

    def build(self, *, cmdline: str | None = None, expect: str = "successful", **overrides: t.Any) -> Run:
        self.params.update(overrides)
        run = run_playbook("fleet.yml", self.params, cmdline=cmdline)
        assert run.status == expect, run.stdout[-4000:]
        return run

    def teardown(self, *, cmdline: str | None = None) -> Run:
        return run_playbook("teardown.yml", {"demo_fleet_dir": self.path}, cmdline=cmdline)

    def force_cleanup(self) -> None:
        """Last resort when the teardown playbook failed: kill, unmount, remove."""
        try:
            with open(os.path.join(self.path, "run", "service.pid"), encoding="utf-8") as handle:
                os.kill(int(handle.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            mounts = [line.split()[4] for line in handle if line.split()[4].startswith(self.path + "/")]
        for mount_point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", mount_point], check=False)
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        if os.path.lexists(self.path):
            run = self.teardown()
            if run.status != "successful" or os.path.exists(self.path):
                self.force_cleanup()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    @property
    def data(self) -> dict[str, t.Any]:
        with open(os.path.join(self.path, "fleet.json"), encoding="utf-8") as handle:
            return json.load(handle)

    @property
    def inventory(self) -> str:
        return os.path.join(self.path, "inventory", "demo.fleet.yml")

    def hostvars(self) -> dict[str, dict[str, t.Any]]:
        with open(self.inventory, encoding="utf-8") as handle:
            return yaml.safe_load(handle)["hosts"]

    def url(self, host: str, path: str) -> str:
        return f"http://{self.data['hosts'][host]['address']}:{self.port}{path}"

    def health(self, host: str) -> tuple[int, dict[str, t.Any], float]:
        reply = http_get(self.url(host, "/health"))
        return reply.status, json.loads(reply.body), reply.seconds

    def switch(self, host: str, version: str) -> None:
        """What patch_apply does on disk: unpack the release and switch current (no restart)."""
        artifact = self.data["artifacts"][version]
        layout = HostLayout(self.data["hosts"][host]["root"], "myapp")
        unpack_release(layout, version=version, artifact_path=artifact["path"], sha256=artifact["sha256"])
        switch_current(layout, version)

    def restart(self, host: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.hostvars()[host]["fleetpatch_restart_command"], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Fleet]:
    shared = Fleet(str(tmp_path_factory.mktemp("shared")))
    try:
        shared.build()
        yield shared
    finally:
        shared.close()


@pytest.fixture
def make_fleet(tmp_path: t.Any) -> t.Iterator[t.Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def factory(**params: t.Any) -> Fleet:
        made = Fleet(str(tmp_path / f"f{len(fleets)}"), **params)
        fleets.append(made)
        return made

    yield factory
    for made in fleets:
        made.close()


# ------------------------------------------------------------------------------------------ shared fleet


def test_every_host_answers_with_the_base_version_on_its_own_address(fleet: Fleet) -> None:
    data = fleet.data
    assert sorted(data["hosts"]) == [
        "edge-eu-west",
        "edge-us-east",
        "eu-west-acme-api-prod-01",
        "eu-west-acme-web-prod-01",
        "us-east-acme-api-prod-01",
        "us-east-acme-web-prod-01",
    ]
    addresses = [entry["address"] for entry in data["hosts"].values()]
    assert len(set(addresses)) == len(addresses) and data["origin"]["address"] not in addresses
    for host, entry in data["hosts"].items():
        status, body = fleet.health(host)[:2]
        assert status == 200, body
        assert (body["status"], body["host"], body["version"]) == ("ok", host, "1.0.0")
        with open(os.path.join(entry["root"], "state", "myapp.manifest.json"), encoding="utf-8") as handle:
            assert json.load(handle)["version"] == "1.0.0"
        assert os.readlink(os.path.join(entry["root"], "apps", "myapp", "current")) == "releases/1.0.0"
    # each host listens on its own address only: an unallocated address of the range refuses
    prefix = fleet.params["demo_fleet_cidr"].rsplit(".", 1)[0]
    assert refuses(f"{prefix}.250", fleet.port)
    assert alive(data["supervisor"]["pid"])


def test_origin_serves_what_the_manifests_promise(fleet: Fleet) -> None:
    data = fleet.data
    assert sorted(data["manifests"]) == ["1.0.1", "1.1.0"]
    for version, path in data["manifests"].items():
        with open(path, encoding="utf-8") as handle:
            manifest = yaml.safe_load(handle)
        assert manifest["patch_id"] == f"FP-DEMO-myapp-{version}"
        assert (manifest["target_version"], manifest["base_version"]) == (version, "1.0.0")
        artifact = manifest["artifact"]
        status, headers, body = http_get(artifact["url"])[:3]
        assert status == 200 and int(headers["content-length"]) == artifact["size"] == len(body)
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        with open(artifact["path"], "rb") as handle:
            assert handle.read() == body
        reply = http_get(f"{data['origin']['url']}/sha256/{artifact['sha256']}")
        status, by_digest = reply.status, reply.body
        assert status == 200 and by_digest == body


def test_inventory_groups_and_ansible_reaches_the_hosts(fleet: Fleet) -> None:
    listed = subprocess.run(
        [os.path.join(VENV_BIN, "ansible-inventory"), "-i", fleet.inventory, "--list"],
        capture_output=True, text=True, check=True, env=dict(os.environ, **ansible_env()), cwd=REPO_ROOT,
    )
    inventory = json.loads(listed.stdout)
    assert sorted(inventory["region_eu_west"]["hosts"]) == ["edge-eu-west", "eu-west-acme-api-prod-01", "eu-west-acme-web-prod-01"]
    assert sorted(inventory["tenant_acme"]["hosts"]) == [
        "eu-west-acme-api-prod-01", "eu-west-acme-web-prod-01", "us-east-acme-api-prod-01", "us-east-acme-web-prod-01"]
    assert sorted(inventory["fleet_edges"]["hosts"]) == ["edge-eu-west", "edge-us-east"]
    # values from the file are data: ansible-inventory marks them unsafe
    hostvars = {key: value.get("__ansible_unsafe", value) if isinstance(value, dict) else value
                for key, value in inventory["_meta"]["hostvars"]["us-east-acme-web-prod-01"].items()}
    assert hostvars["fleetpatch_health_url"] == fleet.url("us-east-acme-web-prod-01", "/health")
    assert hostvars["fleetpatch_host_root"] == os.path.join(fleet.path, "hosts", "us-east-acme-web-prod-01")
    ping = subprocess.run(
        [os.path.join(VENV_BIN, "ansible"), "-i", fleet.inventory, "fleet_nodes", "-m", "ansible.builtin.ping", "-o"],
        capture_output=True, text=True, check=False, env=dict(os.environ, **ansible_env()), cwd=REPO_ROOT,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("SUCCESS") == 4


def test_running_again_changes_nothing_and_check_mode_agrees(fleet: Fleet) -> None:
    pid = fleet.data["supervisor"]["pid"]
    checked = fleet.build(cmdline="--check --diff")
    assert checked.result["changed"] is False, checked.result["actions"]
    real = fleet.build()
    assert real.result["changed"] is False, real.result["actions"]
    assert real.result["actions"] == checked.result["actions"] == []
    assert real.result["pid"] == checked.result["pid"] == pid
    assert real.result["hosts"] == 6 and real.result["nodes"] == 4
    assert real.result["edges"] == ["edge-eu-west", "edge-us-east"]
    assert real.result["inventory"] == fleet.inventory
    assert real.result["origin_url"] == fleet.data["origin"]["url"]


def test_restart_loads_the_switched_version(fleet: Fleet) -> None:
    host = "eu-west-acme-web-prod-01"
    fleet.switch(host, "1.0.1")
    try:
        # a running service keeps the code it loaded until it restarts
        assert fleet.health(host)[1]["version"] == "1.0.0"
        started = time.monotonic()
        done = fleet.restart(host)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started >= 0.05
        status, body = fleet.health(host)[:2]
        assert (status, body["version"]) == (200, "1.0.1")
        assert fleet.health("eu-west-acme-api-prod-01")[1]["version"] == "1.0.0"
    finally:
        fleet.switch(host, "1.0.0")
        assert fleet.restart(host).returncode == 0
    assert fleet.health(host)[1]["version"] == "1.0.0"


def test_fleetctl_exit_codes(fleet: Fleet) -> None:
    ctl = [sys.executable, os.path.join(fleet.path, "bin", "fleetctl.py")]
    unknown = subprocess.run(ctl + ["restart", "no-such-host"], capture_output=True, text=True, check=False)
    assert unknown.returncode == 3 and "no host no-such-host" in unknown.stderr
    usage = subprocess.run(ctl + ["restart"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    status = subprocess.run(ctl + ["status", "edge-us-east"], capture_output=True, text=True, check=True)
    summary = json.loads(status.stdout)
    assert summary["pid"] == fleet.data["supervisor"]["pid"]
    assert summary["hosts"]["edge-us-east"]["version"] == "1.0.0"
    elsewhere = subprocess.run(ctl + ["--dir", os.path.join(fleet.path, "missing"), "ping"], capture_output=True, text=True, check=False)
    assert elsewhere.returncode == 4 and "not running" in elsewhere.stderr


def test_edge_and_origin_serve_byte_ranges(fleet: Fleet) -> None:
    artifact = fleet.data["artifacts"]["1.1.0"]
    with open(artifact["path"], "rb") as handle:
        blob = handle.read()
    size = len(blob)
    for url in (fleet.url("edge-eu-west", f"/cache/sha256/{artifact['sha256']}"), f"{fleet.data['origin']['url']}/sha256/{artifact['sha256']}"):
        status, headers, body = http_get(url)[:3]
        assert (status, body, headers["accept-ranges"]) == (200, blob, "bytes")
        status, headers, body = http_get(url, {"Range": "bytes=100-1123"})[:3]
        assert (status, body, headers["content-range"], headers["content-length"]) == (206, blob[100:1124], f"bytes 100-1123/{size}", "1024")
        status, headers, body = http_get(url, {"Range": f"bytes={size - 10}-"})[:3]
        assert (status, body) == (206, blob[-10:])
        status, headers, body = http_get(url, {"Range": "bytes=-7"})[:3]
        assert (status, body, headers["content-range"]) == (206, blob[-7:], f"bytes {size - 7}-{size - 1}/{size}")
        status, headers, body = http_get(url, {"Range": f"bytes={size}-"})[:3]
        assert (status, body, headers["content-range"]) == (416, b"", f"bytes */{size}")
    # a cache miss is filled from the origin, like a pull-through cache
    cached = os.path.join(fleet.data["hosts"]["edge-us-east"]["root"], "cache", "sha256", artifact["sha256"])
    os.unlink(cached)
    reply = http_get(fleet.url("edge-us-east", f"/cache/sha256/{artifact['sha256']}"))
    status, body = reply.status, reply.body
    assert (status, body) == (200, blob)
    with open(cached, "rb") as handle:
        assert handle.read() == blob
    assert http_get(fleet.url("edge-us-east", "/cache/sha256/" + "0" * 64))[0] == 404
    assert http_get(fleet.url("eu-west-acme-web-prod-01", f"/cache/sha256/{artifact['sha256']}"))[0] == 404


def test_metrics_count_requests(fleet: Fleet) -> None:
    host = "us-east-acme-api-prod-01"
    before = json.loads(http_get(fleet.url(host, "/metrics"))[2])
    for _attempt in range(5):
        fleet.health(host)
    http_get(fleet.url(host, "/nope"))
    after = json.loads(http_get(fleet.url(host, "/metrics"))[2])
    assert after["requests_total"] == before["requests_total"] + 7  # 5 health, 1 not found, the first /metrics
    assert after["by_status"]["404"] == before["by_status"].get("404", 0) + 1
    assert set(after["latency_ms"]) == {"p50", "p95", "p99", "max"}
    text = http_get(fleet.url(host, "/metrics?format=prometheus"))[2].decode()
    assert f'fleet_service_info{{host="{host}",service="myapp",version="1.0.0"}} 1' in text
    assert f'fleet_service_up{{host="{host}"}} 1' in text


# ------------------------------------------------------------------------------------------- own fleets


def test_faults_act_and_change_without_restarting_the_supervisor(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    sick, slow, stuck, down = "eu-west-acme-web-prod-01", "eu-west-acme-api-prod-01", "us-east-acme-web-prod-01", "us-east-acme-api-prod-01"
    faults = [
        {"kind": "unhealthy_after", "version": "1.0.1", "match": {"host": sick}},
        {"kind": "slow", "delay_ms": 400, "match": {"host": slow}},
        {"kind": "restart_fails", "match": {"host": stuck}},
        {"kind": "unreachable", "match": {"host": down}},
        {"kind": "corrupt_edge_artifact", "match": {"region": "us-east"}},
    ]
    built = fleet.build(demo_fleet_faults=faults)
    assert built.result["faulty_hosts"] == sorted(["edge-us-east", sick, slow, stuck, down])
    pid = built.result["pid"]

    # unhealthy_after: healthy on 1.0.0, 503 once the service runs 1.0.1
    assert fleet.health(sick)[0] == 200
    fleet.switch(sick, "1.0.1")
    assert fleet.restart(sick).returncode == 0
    status, body = fleet.health(sick)[:2]
    assert (status, body["status"], body["version"]) == (503, "unhealthy", "1.0.1")

    # slow
    assert fleet.health(slow)[2] >= 0.4
    assert fleet.health("eu-west-acme-web-prod-01")[2] < 0.3

    # restart_fails: exit 1, message on stderr, old version still served
    fleet.switch(stuck, "1.0.1")
    failed = fleet.restart(stuck)
    assert failed.returncode == 1 and "restart_fails" in failed.stderr
    assert fleet.health(stuck)[1]["version"] == "1.0.0"

    # unreachable: nothing listens, and Ansible reports UNREACHABLE quickly
    assert refuses(fleet.data["hosts"][down]["address"], fleet.port)
    started = time.monotonic()
    ping = subprocess.run(
        [os.path.join(VENV_BIN, "ansible"), "-i", fleet.inventory, down, "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, check=False, env=dict(os.environ, **ansible_env()), cwd=REPO_ROOT,
    )
    assert ping.returncode == 4 and "UNREACHABLE" in ping.stdout, ping.stdout + ping.stderr
    assert time.monotonic() - started < 30

    # corrupt_edge_artifact: right size, wrong digest, on disk and on the wire; the other edge is fine
    artifact = fleet.data["artifacts"]["1.0.1"]
    status, headers, body = http_get(fleet.url("edge-us-east", f"/cache/sha256/{artifact['sha256']}"))[:3]
    assert status == 200 and len(body) == artifact["size"] and hashlib.sha256(body).hexdigest() != artifact["sha256"]
    assert hashlib.sha256(http_get(fleet.url("edge-eu-west", f"/cache/sha256/{artifact['sha256']}"))[2]).hexdigest() == artifact["sha256"]

    # clearing the faults rewrites data and reloads; the supervisor keeps running and hosts keep their versions
    cleared = fleet.build(demo_fleet_faults=[])
    assert cleared.result["changed"] is True
    assert cleared.result["pid"] == pid
    assert "make the supervisor reload faults.json" in cleared.result["actions"]
    assert not any("install" in action or "supervisor (pid" in action for action in cleared.result["actions"])
    status, body = fleet.health(sick)[:2]
    assert (status, body["version"]) == (200, "1.0.1")
    assert fleet.health(slow)[2] < 0.3
    assert fleet.health(down)[0] == 200
    assert "ansible_port" not in fleet.hostvars()[down]
    assert fleet.restart(stuck).returncode == 0 and fleet.health(stuck)[1]["version"] == "1.0.1"
    body = http_get(fleet.url("edge-us-east", f"/cache/sha256/{artifact['sha256']}"))[2]
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    assert fleet.build().result["changed"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="disk_full mounts a tmpfs and needs root")
def test_disk_full_leaves_only_free_bytes(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet(demo_fleet_regions=["eu-west"], demo_fleet_segments=["web"])
    host = "eu-west-acme-web-prod-01"
    fleet.build(demo_fleet_faults=[{"kind": "disk_full", "free_bytes": 512 * 1024, "match": {"host": host}}])
    root = fleet.data["hosts"][host]["root"]
    assert os.path.ismount(root)
    info = os.statvfs(root)
    assert abs(info.f_bavail * info.f_frsize - 512 * 1024) <= 8192
    assert fleet.health(host)[1]["version"] == "1.0.0"
    # removing the fault moves the host back onto the ordinary disk with its contents
    fleet.build(demo_fleet_faults=[])
    assert not os.path.ismount(root)
    assert os.readlink(os.path.join(root, "apps", "myapp", "current")) == "releases/1.0.0"
    fleet.build(demo_fleet_faults=[{"kind": "disk_full", "match": {"host": host}}])
    assert os.path.ismount(root)
    # teardown (by the fixture) must unmount it; checked here explicitly
    fleet.close()
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        assert root not in handle.read()
    assert not os.path.exists(fleet.path)


def test_teardown_stops_the_supervisor_and_removes_the_directory(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet(demo_fleet_regions=["eu-west"], demo_fleet_segments=["web"])
    pid = fleet.build().result["pid"]
    address = fleet.data["hosts"]["edge-eu-west"]["address"]
    checked = fleet.teardown(cmdline="--check")
    assert checked.status == "successful" and checked.result["changed"] is True
    assert os.path.isdir(fleet.path) and alive(pid)
    removed = fleet.teardown()
    assert removed.status == "successful" and removed.result["changed"] is True
    assert removed.result["actions"] == checked.result["actions"]
    assert not os.path.exists(fleet.path)
    assert not alive(pid)
    assert refuses(address, fleet.port)
    again = fleet.teardown()
    assert again.status == "successful" and again.result["changed"] is False


def test_refuses_a_non_loopback_cidr(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet(demo_fleet_cidr="10.20.0.0/16")
    run = fleet.build(expect="failed")
    assert run.result["msg"] == "cidr 10.20.0.0/16 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"
    assert not os.path.exists(fleet.path)


def test_refuses_addresses_another_fleet_listens_on_before_writing_anything(fleet: Fleet, make_fleet: t.Callable[..., Fleet]) -> None:
    second = make_fleet()
    taken = {key: fleet.params[key] for key in ("demo_fleet_cidr", "demo_fleet_port", "demo_fleet_origin_port")}
    run = second.build(expect="failed", **taken)
    origin = f"{fleet.data['origin']['address']}:{fleet.params['demo_fleet_origin_port']}"
    assert run.result["msg"].startswith(f"{origin}, "), run.result["msg"]
    assert "already in use by another process (another demo fleet?)" in run.result["msg"]
    assert not os.path.exists(second.path)
    status, body, _seconds = fleet.health(next(iter(fleet.data["hosts"])))
    assert status == 200 and body["status"] == "ok"


def test_refuses_a_directory_that_is_not_a_fleet(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    os.makedirs(fleet.path)
    with open(os.path.join(fleet.path, "precious.txt"), "w", encoding="utf-8") as handle:
        handle.write("keep me\n")
    run = fleet.teardown()
    assert run.status == "failed" and "refusing to use" in run.result["msg"]
    assert os.path.exists(os.path.join(fleet.path, "precious.txt"))
    os.unlink(os.path.join(fleet.path, "precious.txt"))


@pytest.mark.slow
def test_a_200_node_fleet(make_fleet: t.Callable[..., Fleet]) -> None:
    fleet = make_fleet(
        demo_fleet_regions=["r1", "r2", "r3", "r4"],
        demo_fleet_tenants=["t1", "t2", "t3", "t4", "t5"],
        demo_fleet_segments=["s1", "s2", "s3", "s4", "s5"],
        demo_fleet_hosts_per_cell=2,
        nets=range(250, 255),
    )
    result = fleet.build().result
    assert (result["nodes"], result["hosts"]) == (200, 204)
    for host in fleet.data["hosts"]:
        status, body = fleet.health(host)[:2]
        assert (status, body["host"], body["version"]) == (200, host, "1.0.0")
    assert fleet.build().result["changed"] is False
