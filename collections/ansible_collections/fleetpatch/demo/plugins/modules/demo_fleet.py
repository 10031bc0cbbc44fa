#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: demo_fleet
short_description: Build or tear down the embedded demo fleet on the controller
version_added: 0.1.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Builds, in one execution, a complete fleet to roll patches out to, on the machine the module runs on
    (delegate it to C(localhost)) and without containers or virtual machines.
  - Every host is a directory under C(<path>/hosts/) laid out like a real C(fleetpatch_host_root), with the
    base release of O(service) installed through the same host-side code that M(fleetpatch.rollout.patch_apply)
    uses. Host names are C(<region>-<tenant>-<segment>-<environment>-NN); one edge cache C(edge-<region>) per
    region comes in addition.
  - Release tarballs for O(base_version) and every O(patch_versions) entry are built deterministically (the same
    inputs always give the same sha256) into C(<path>/origin/artifacts/), with one patch manifest per patch
    version in C(<path>/patches/<service>-<version>.yml).
  - The demo signs what it ships. The first run generates an ed25519 signing key without passphrase in
    C(<path>/keys/signing_key) (mode C(0600)) and trusts it for namespace C(fleetpatch) in C(<path>/keys/allowed_signers)
    (principal C(release@fleetpatch-demo)). Every release tarball is signed with C(ssh-keygen -Y sign) (C(<artifact>.sig)
    beside it) and every patch manifest carries that signature in C(artifact.signature), so a rollout of the demo
    (whose environment V(prod) requires signatures by default) verifies it on every host before anything is unpacked.
  - One supervisor process (C(<path>/bin/fleet_service.py)) plays every host's service on the host's own
    loopback address (allocated from O(cidr)) at O(port), and the artifact origin on the first address at
    O(origin_port). Each host answers C(/health), C(/version), C(/metrics) and C(/); edges also serve
    C(/cache/sha256/<digest>) with HTTP range requests. A host reports the version it loaded at its last
    restart, not the one on disk.
  - C(<path>/bin/fleetctl.py restart <host>) restarts one host's service; it is each host's
    C(fleetpatch_restart_command).
  - The generated inventory C(<path>/inventory/demo.fleet.yml) is read by the P(fleetpatch.rollout.fleet#inventory)
    inventory plugin. C(<path>/fleet.json) describes the whole fleet for programs.
  - Faults (O(faults)) are data in C(<path>/faults.json); running the module again with other faults rewrites
    that file and the inventory and makes the supervisor reload them, without rebuilding anything.
  - Running the module again leaves hosts that were patched since as they are.
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: Reports every action it would take and creates nothing.
  diff_mode:
    support: full
    details: The diff summarises the fleet (hosts, versions, faults, supervisor) before and after.
  idempotent:
    support: full
    details: The same options give C(changed=false) while the supervisor runs.
options:
  path:
    description:
      - The fleet directory. It is created with a marker file; the module refuses to build into, or remove, a
        non-empty directory without that marker.
    type: path
    required: true
  state:
    description:
      - V(present) builds the fleet (or brings it in line with the options) and makes sure the supervisor runs.
      - V(absent) stops the supervisor, unmounts any tmpfs it made for O(faults) of kind V(disk_full) and removes
        O(path).
    type: str
    choices: [present, absent]
    default: present
  regions:
    description: Regions; each also gets one edge host C(edge-<region>).
    type: list
    elements: str
    default: [eu-west, us-east]
  tenants:
    description: Tenants in every region.
    type: list
    elements: str
    default: [acme, globex]
  segments:
    description: Segments of every tenant.
    type: list
    elements: str
    default: [web, api]
  environments:
    description: Environments of every segment.
    type: list
    elements: str
    default: [prod]
  hosts_per_cell:
    description: Nodes per region, tenant, segment and environment combination (1 to 99).
    type: int
    default: 2
  cidr:
    description:
      - Network the addresses come from, in order the origin, the edges, then the nodes.
      - Must lie inside C(127.0.0.0/8); anything else is refused, since the demo only binds loopback addresses.
    type: str
    default: 127.77.0.0/16
  port:
    description: Port every host listens on, each on its own address.
    type: int
    default: 18080
  origin_port:
    description: Port of the artifact origin, on the first address of O(cidr).
    type: int
    default: 18000
  service:
    description: Name of the demo service, its release tarballs and its patch manifests.
    type: str
    default: myapp
  base_version:
    description: Version installed on every host when the fleet is built.
    type: str
    default: 1.0.0
  patch_versions:
    description: Versions to build release tarballs and patch manifests for.
    type: list
    elements: str
    default: [1.0.1, 1.1.0]
  companion_services:
    description:
      - Other services every node runs beside O(service), each name mapped to the version installed when the fleet is
        built (release tarball built like O(service)'s, installed the same way, host manifest in C(state/)). They are not
        served nor patched by the demo; the drift report reads them (an environment x service matrix with more than one
        service). A node that lacks one gets it on the next run; removing one from the mapping leaves it installed.
    type: dict
    default: {}
  faults:
    description:
      - Faults to inject. Each fault selects hosts with O(faults[].match); hosts may carry several faults.
      - A fault that selects no host is an error.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description:
          - V(unhealthy_after) makes C(/health) answer 503 once the host runs O(faults[].version) or newer.
          - V(slow) delays every answer of the host by O(faults[].delay_ms); with O(faults[].version), only once the host
            runs that version or newer.
          - V(unreachable) stops the host's service from listening and points the host's inventory entry at a
            closed SSH port, so Ansible reports it UNREACHABLE at once.
          - V(corrupt_edge_artifact) corrupts the cached artifacts of the selected edges, on disk and therefore
            as served (same size, wrong digest). Only edges are selected.
          - V(disk_full) makes the host root a tmpfs sized so that about O(faults[].free_bytes) remain free after
            what is installed. Needs root.
          - V(restart_fails) makes the host's restart command fail (exit 1); the service keeps running the
            version it had loaded.
          - V(cut_transfer) makes the selected edges drop the connection after O(faults[].after_bytes) body bytes of
            their first O(faults[].times) cache transfers (a reset mid-download). Only edges are selected.
          - V(error_rate) makes O(faults[].percent) of the host's C(/api/items) answers (evenly spread) a 500;
            with O(faults[].version), only once the host runs that version or newer.
        type: str
        required: true
        choices: [unhealthy_after, slow, unreachable, corrupt_edge_artifact, disk_full, restart_fails, cut_transfer, error_rate]
      match:
        description:
          - Host attributes to select on, any of C(host), C(role) (V(node) or V(edge)), C(region), C(tenant),
            C(segment), C(environment). All given keys must match.
          - A value is a shell-style pattern (C(eu-west-*)) or a list of them (any of them matches).
          - Edges have no tenant, segment or environment, so keys on those never select an edge.
        type: dict
        required: true
      version:
        description:
          - For V(unhealthy_after), the first unhealthy version.
          - For V(slow) and V(error_rate), the first version the fault applies to (all versions when not given).
        type: str
      delay_ms:
        description: For V(slow), milliseconds added to every answer.
        type: int
      free_bytes:
        description: For V(disk_full), bytes left free on the host root; V(0) when not given.
        type: int
      after_bytes:
        description: For V(cut_transfer), body bytes sent before the connection drops.
        type: int
      times:
        description: For V(cut_transfer), how many transfers are cut (per edge, counted from the last fault reload); V(1) when not given.
        type: int
      percent:
        description: For V(error_rate), the percent (0 to 100) of API answers that are errors.
        type: int
      description:
        description: Free text, kept in C(faults.json).
        type: str
  python:
    description:
      - Python interpreter for the supervisor and the restart commands, and C(ansible_python_interpreter) of the
        generated inventory.
      - Defaults to the interpreter running this module.
    type: path
  service_script:
    description: The supervisor script to install (the role passes its C(files/fleet_service.py)).
    type: path
    required: true
  ctl_script:
    description: The control script to install (the role passes its C(files/fleetctl.py)).
    type: path
    required: true
notes:
  - Linux only; every address of C(127.0.0.0/8) is bindable there without configuration.
  - Fleets of up to 4000 hosts are supported; one asyncio process serves them all.
requirements:
  - netaddr
seealso:
  - plugin: fleetpatch.rollout.fleet
    plugin_type: inventory
  - module: fleetpatch.rollout.patch_apply
"""

EXAMPLES = r"""
- name: Build the default demo fleet (16 nodes, 2 edges)
  fleetpatch.demo.demo_fleet:
    path: /tmp/demo-fleet
    service_script: "{{ role_path }}/files/fleet_service.py"
    ctl_script: "{{ role_path }}/files/fleetctl.py"
  delegate_to: localhost
  run_once: true
  register: demo_fleet

- name: Make every acme web host unhealthy on 1.1.0 and one host slow
  fleetpatch.demo.demo_fleet:
    path: /tmp/demo-fleet
    service_script: "{{ role_path }}/files/fleet_service.py"
    ctl_script: "{{ role_path }}/files/fleetctl.py"
    faults:
      - kind: unhealthy_after
        version: 1.1.0
        match: {tenant: acme, segment: web}
      - kind: slow
        delay_ms: 800
        match: {host: us-east-globex-api-prod-02}
  delegate_to: localhost
  run_once: true

- name: Tear the demo fleet down
  fleetpatch.demo.demo_fleet:
    path: /tmp/demo-fleet
    state: absent
    service_script: "{{ role_path }}/files/fleet_service.py"
    ctl_script: "{{ role_path }}/files/fleetctl.py"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The fleet directory.
  returned: always
  type: str
  sample: /home/user/.local/state/fleetpatch/demo-fleet
hosts:
  description: Number of hosts in the inventory, nodes and edges.
  returned: always
  type: int
  sample: 18
nodes:
  description: Number of nodes, the hosts a rollout patches.
  returned: always
  type: int
  sample: 16
edges:
  description: Names of the edge hosts.
  returned: always
  type: list
  elements: str
  sample: [edge-eu-west, edge-us-east]
inventory:
  description: The generated inventory file for the P(fleetpatch.rollout.fleet#inventory) plugin.
  returned: always
  type: str
  sample: /tmp/demo-fleet/inventory/demo.fleet.yml
manifests:
  description: Patch manifest files, one per patch version, in O(patch_versions) order.
  returned: always
  type: list
  elements: str
  sample: [/tmp/demo-fleet/patches/myapp-1.0.1.yml, /tmp/demo-fleet/patches/myapp-1.1.0.yml]
origin_url:
  description: Base URL of the artifact origin.
  returned: always
  type: str
  sample: http://127.77.0.1:18000
allowed_signers:
  description: The allowed_signers file that trusts the demo's signing key (C(rollout_policy.artifacts.allowed_signers_file)).
  returned: always
  type: str
  sample: /tmp/demo-fleet/keys/allowed_signers
fleet_json:
  description: Machine-readable description of the fleet (hosts, addresses, ports, pid, origin, manifests).
  returned: always
  type: str
  sample: /tmp/demo-fleet/fleet.json
pid:
  description: Process id of the supervisor; V(null) when it is not running (in check mode or after O(state=absent)).
  returned: always
  type: int
  sample: 41235
faulty_hosts:
  description: Hosts with at least one fault, sorted.
  returned: always
  type: list
  elements: str
  sample: [eu-west-acme-web-prod-01]
actions:
  description: What the module did, or would do in check mode, one line per step.
  returned: always
  type: list
  elements: str
  sample: ["build artifact myapp-1.0.0.tar.gz", "install myapp 1.0.0 on 18 hosts", "start supervisor"]
"""

import json
import os
import shutil
import signal
import socket
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet import (
    HAS_NETADDR,
    MARKER,
    SIGNING_PRINCIPAL,
    DemoFleetError,
    FleetLayout,
    affected_by,
    allowed_signers_line,
    artifact_name,
    build_layout,
    build_release_tarball,
    busy_endpoints,
    corrupt_bytes,
    digest_text,
    dump_yaml,
    endpoints_in_use_error,
    fleet_endpoints,
    patch_manifest,
    render_faults_file,
    render_inventory,
    resolve_faults,
    service_config,
    validate_companions,
    validate_faults,
    validate_versions,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import sign_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._tools import find_tool
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import pretty_json, read_json, sha256_file, write_file_atomic
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    HostLayout,
    ReleaseError,
    record_install,
    switch_current,
    unpack_release,
)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
INSTALL_WORKERS = 16
TMPFS_SOURCE = "fleetpatch-demo"
TMPFS_BUILD_SIZE = 256 * 1024 * 1024


Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]


class Supervisor:
    """The running fleet_service.py process of one fleet directory, found by pidfile or by /proc."""

    def __init__(self, path: str, run_command: Runner) -> None:
        self.path = path
        self.run_command = run_command
        self.run_dir = os.path.join(path, "run")
        self.pidfile = os.path.join(self.run_dir, "service.pid")
        self.script = os.path.join(path, "bin", "fleet_service.py")
        self.log = os.path.join(path, "log", "service.log")

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    def owns(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = [part.decode("utf-8", "replace") for part in handle.read().split(b"\0")]
        except OSError:
            return False
        return self.script in argv and "--dir" in argv and argv[argv.index("--dir") + 1 : argv.index("--dir") + 2] == [self.path]

    def pids(self) -> list[int]:
        """Every live supervisor of this fleet: the pidfile's, then any other one found in /proc."""
        found: list[int] = []
        try:
            with open(self.pidfile, encoding="utf-8") as handle:
                pid = int(handle.read().strip())
            if self.alive(pid) and self.owns(pid):
                found.append(pid)
        except (OSError, ValueError):
            pass
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in found and int(entry) != os.getpid():
                pid = int(entry)
                if self.owns(pid) and self.alive(pid):
                    found.append(pid)
        return found

    def request(self, payload: dict[str, t.Any], *, timeout: float = 30.0) -> dict[str, t.Any] | None:
        """One request over the control socket; None when nobody answers."""
        try:
            dir_fd = os.open(self.run_dir, os.O_RDONLY)
        except OSError:
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(f"/proc/self/fd/{dir_fd}/control.sock")
                conn.sendall((json.dumps(payload) + "\n").encode())
                data = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            reply = json.loads(data)
            return reply if isinstance(reply, dict) else None
        except (OSError, ValueError):
            return None
        finally:
            os.close(dir_fd)

    def status(self) -> dict[str, t.Any] | None:
        pids = self.pids()
        if len(pids) != 1:
            return None
        reply = self.request({"cmd": "status", "brief": True}, timeout=10.0)
        if not reply or not reply.get("ok") or reply.get("pid") != pids[0]:
            return None
        return reply

    def stop(self) -> list[int]:
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(self.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if self.alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5.0
        while any(self.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for path in (self.pidfile, os.path.join(self.run_dir, "control.sock")):
            try:
                os.unlink(path)
            except OSError:
                pass
        return pids

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 8192))
                return "\n".join(handle.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, python: str, endpoints: list[tuple[str, int]]) -> int:
        """Start the supervisor as a daemon; it returns once every host listens (or failed to)."""
        os.makedirs(self.run_dir, exist_ok=True)
        rc, out, err = self.run_command(
            [python, self.script, "--dir", self.path, "--daemon", "--log", self.log, "--timeout", str(int(START_TIMEOUT))]
        )
        if rc != 0:
            raise DemoFleetError(f"the demo fleet supervisor did not start (rc={rc}): {err.strip()}\n{self.log_tail()}")
        try:
            pid = int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DemoFleetError(f"the demo fleet supervisor printed no pid: {out!r} {err!r}") from None
        deadline = time.monotonic() + 10.0
        for address, port in endpoints:
            while True:
                try:
                    socket.create_connection((address, port), timeout=1.0).close()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise DemoFleetError(f"{address}:{port} does not answer after the supervisor started: {exc}") from exc
                    time.sleep(0.02)
        return pid


def mounts_under(path: str) -> list[str]:
    """Mount points at or below path, deepest first."""
    found = []
    prefix = path.rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                mount_point = line.split()[4].encode().decode("unicode_escape")
                if mount_point == path or mount_point.startswith(prefix):
                    found.append(mount_point)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def remove_tree(path: str) -> None:
    """rmtree, one worker per host directory: unlinking is slow on some disks (discard), not CPU-bound."""
    hosts_dir = os.path.join(path, "hosts")
    if os.path.isdir(hosts_dir) and not os.path.islink(hosts_dir):
        roots = [os.path.join(hosts_dir, name) for name in os.listdir(hosts_dir)]
        with ThreadPoolExecutor(max_workers=INSTALL_WORKERS) as pool:
            list(pool.map(lambda root: shutil.rmtree(root) if os.path.isdir(root) and not os.path.islink(root) else os.unlink(root), roots))
    shutil.rmtree(path)


def tmpfs_used(path: str) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def page_round(size: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return max(page, (size + page - 1) // page * page)


class DemoFleet:
    def __init__(self, params: dict[str, t.Any], *, check_mode: bool, run_command: Runner) -> None:
        self.params = params
        self.check_mode = check_mode
        self.path = os.path.abspath(params["path"])
        self.python = params["python"] or sys.executable
        self.actions: list[str] = []
        self.run_command = run_command
        self.supervisor = Supervisor(self.path, run_command)
        # companion service -> its release artifact (present: release_artifacts), installed on every node (sync_hosts)
        self.companions: dict[str, dict[str, t.Any]] = {}

    def run(self, argv: list[str]) -> None:
        rc, out, err = self.run_command(argv)
        if rc != 0:
            raise DemoFleetError(f"{' '.join(argv)} failed (rc={rc}): {err.strip() or out.strip()}")

    # ------------------------------------------------------------------ helpers

    def act(self, message: str) -> bool:
        """Record an action; True when it should really be carried out."""
        self.actions.append(message)
        return not self.check_mode

    def p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @staticmethod
    def read_bytes(path: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise DemoFleetError(f"{path} is a directory") from exc

    def ensure_file(self, path: str, content: bytes, *, what: str, mode: int = 0o644) -> bool:
        current = self.read_bytes(path)
        if current == content:
            if os.stat(path).st_mode & 0o777 != mode and self.act(f"set mode {mode:o} on {what}"):
                os.chmod(path, mode)
            return False
        if self.act(f"{'create' if current is None else 'update'} {what}"):
            write_file_atomic(path, content, mode=mode)
        return True

    def check_ownership(self) -> bool:
        """Whether path exists; refuses a non-empty directory that is not a demo fleet."""
        if not os.path.lexists(self.path):
            return False
        if not os.path.isdir(self.path):
            raise DemoFleetError(f"{self.path} exists and is not a directory")
        if not os.path.exists(self.p(MARKER)) and os.listdir(self.path):
            raise DemoFleetError(
                f"refusing to use {self.path}: it is not empty and holds no {MARKER} marker, so it is not a demo fleet directory"
            )
        return True

    def summary(self, fleet: dict[str, t.Any] | None, running: bool) -> dict[str, t.Any]:
        if not fleet:
            return {}
        return {
            "path": fleet.get("path"),
            "service": fleet.get("service"),
            "base_version": fleet.get("base_version"),
            "patch_versions": fleet.get("patch_versions"),
            "cidr": fleet.get("cidr"),
            "port": fleet.get("port"),
            "origin_port": fleet.get("origin_port"),
            "nodes": fleet.get("nodes"),
            "edges": fleet.get("edges"),
            "faults": fleet.get("faults"),
            "supervisor": "running" if running else "stopped",
        }

    # ------------------------------------------------------------------ absent

    def absent(self) -> dict[str, t.Any]:
        exists = self.check_ownership()
        # a supervisor outlives its directory when someone removed that by hand: stop it all the same
        pids = self.supervisor.pids()
        before = self.summary(read_json(self.p("fleet.json")) if exists else None, bool(pids))
        if pids and self.act(f"stop supervisor (pid {', '.join(map(str, pids))})"):
            self.supervisor.stop()
        if exists:
            for mount_point in mounts_under(self.path):
                if self.act(f"unmount {mount_point}"):
                    self.run(["umount", mount_point])
            if self.act(f"remove {self.path}"):
                remove_tree(self.path)
        return {
            "changed": bool(self.actions),
            "actions": self.actions,
            "diff": {"before": before, "after": {}},
            "path": self.path,
            "hosts": 0,
            "nodes": 0,
            "edges": [],
            "inventory": self.p("inventory", "demo.fleet.yml"),
            "manifests": [],
            "allowed_signers": self.p("keys", "allowed_signers"),
            "origin_url": "",
            "fleet_json": self.p("fleet.json"),
            "pid": None,
            "faulty_hosts": [],
        }

    # ------------------------------------------------------------------ present

    def present(self) -> dict[str, t.Any]:
        params = self.params
        service, base = params["service"], params["base_version"]
        patch_versions = list(params["patch_versions"])
        layout, faults, effective, disk_full, scripts = self.checked_inputs(service=service, base=base, patch_versions=patch_versions)
        exists = self.check_ownership()
        previous = read_json(self.p("fleet.json")) if exists else None
        status = self.supervisor.status() if exists else None
        before = self.summary(previous, status is not None)
        if status is None and not (exists and self.supervisor.pids()):
            # another process (often a second demo fleet on the default addresses) would make the supervisor fail
            # after the files are written: say so before anything is
            taken = busy_endpoints(fleet_endpoints(layout, port=params["port"], origin_port=params["origin_port"], effective=effective))
            if taken:
                raise endpoints_in_use_error(taken)

        origin_url = f"http://{layout.origin_address}:{params['origin_port']}"
        artifacts = self.release_artifacts(service=service, versions=[base, *patch_versions], origin_url=origin_url)
        self.companions = {name: {"version": version, **self.release_artifacts(service=name, versions=[version], origin_url=origin_url)[version]}
                           for name, version in validate_companions(params["companion_services"], service=service).items()}
        manifests = {
            version: self.p("patches", f"{service}-{version}.yml") for version in patch_versions
        }
        config = service_config(
            layout, fleet_dir=self.path, port=params["port"], origin_port=params["origin_port"], service=service, artifacts=artifacts
        )
        config_text = pretty_json(config).encode()
        faults_text = render_faults_file(faults, effective).encode()
        inventory_path = self.p("inventory", "demo.fleet.yml")
        signatures, faults_changed = self.write_files(
            layout, exists=exists, scripts=scripts, artifacts=artifacts, manifests=manifests, origin_url=origin_url,
            config_text=config_text, faults_text=faults_text, effective=effective, disk_full=disk_full,
        )
        pid = self.sync_supervisor(
            layout,
            status,
            config_sha256=digest_text(config_text),
            script_sha256=digest_text(scripts["service_script"]),
            faults_sha256=digest_text(faults_text),
            effective=effective,
            faults_changed=faults_changed,
        )

        fleet = self.fleet_record(layout, artifacts=artifacts, signatures=signatures, manifests=manifests, origin_url=origin_url,
                                  faults=faults, effective=effective, pid=pid)
        if self.check_mode:
            # what the real run would write, compared without the pid that only the real run knows
            fleet["supervisor"]["pid"] = (previous or {}).get("supervisor", {}).get("pid")
        self.ensure_file(self.p("fleet.json"), pretty_json(fleet).encode(), what="fleet.json")
        return {
            "changed": bool(self.actions),
            "actions": self.actions,
            "diff": {"before": before, "after": self.summary(fleet, True)},
            "path": self.path,
            "hosts": len(layout.hosts),
            "nodes": len(layout.nodes),
            "edges": [host.name for host in layout.edges],
            "inventory": inventory_path,
            "manifests": list(manifests.values()),
            "allowed_signers": self.p("keys", "allowed_signers"),
            "origin_url": origin_url,
            "fleet_json": self.p("fleet.json"),
            "pid": pid,
            "faulty_hosts": sorted(effective),
        }

    def checked_inputs(self, *, service: str, base: str, patch_versions: list[str]) -> tuple[
        FleetLayout, list[dict[str, t.Any]], dict[str, t.Any], dict[str, int], dict[str, bytes],
    ]:
        """Every input checked before anything is written: (layout, faults, faults by host, disk_full hosts, scripts)."""
        params = self.params
        for name in ("port", "origin_port"):
            if not 1 <= params[name] <= 65535:
                raise DemoFleetError(f"{name} must be from 1 to 65535, got {params[name]}")
        validate_versions(service=service, base_version=base, patch_versions=patch_versions)
        layout = build_layout(
            regions=params["regions"],
            tenants=params["tenants"],
            segments=params["segments"],
            environments=params["environments"],
            hosts_per_cell=params["hosts_per_cell"],
            cidr=params["cidr"],
        )
        faults = validate_faults(params["faults"])
        effective = resolve_faults(faults, layout.hosts)
        disk_full = {name: spec["disk_full"]["free_bytes"] for name, spec in effective.items() if "disk_full" in spec}
        if disk_full and os.geteuid() != 0:
            raise DemoFleetError(
                f"fault disk_full ({', '.join(sorted(disk_full))}) mounts a tmpfs on the host root and needs root; "
                f"the module runs as uid {os.geteuid()}"
            )
        scripts = {}
        for option in ("service_script", "ctl_script"):
            content = self.read_bytes(params[option])
            if content is None:
                raise DemoFleetError(f"{option} {params[option]} does not exist")
            scripts[option] = content
        return layout, faults, effective, disk_full, scripts

    def release_artifacts(self, *, service: str, versions: list[str], origin_url: str) -> dict[str, dict[str, t.Any]]:
        """The release tarball of every version (built in memory, reproducible) and where the origin serves it."""
        artifacts: dict[str, dict[str, t.Any]] = {}
        for version in versions:
            data = build_release_tarball(service, version)
            name = artifact_name(service, version)
            artifacts[version] = {
                "name": name,
                "data": data,
                "sha256": digest_text(data),
                "size": len(data),
                "path": self.p("origin", "artifacts", name),
                "url": f"{origin_url}/artifacts/{name}",
            }
        return artifacts

    def write_files(
        self, layout: FleetLayout, *, exists: bool, scripts: dict[str, bytes], artifacts: dict[str, dict[str, t.Any]],
        manifests: dict[str, str], origin_url: str, config_text: bytes, faults_text: bytes, effective: dict[str, t.Any],
        disk_full: dict[str, int],
    ) -> tuple[dict[str, str | None], bool]:
        """Write what changed: scripts, artifacts, signatures, manifests, host trees, edge caches, service config, faults,
        inventory. Returns (signatures by version, whether the faults changed)."""
        params = self.params
        service, base = params["service"], params["base_version"]
        inventory_path = self.p("inventory", "demo.fleet.yml")
        if not exists and self.act(f"create {self.path}"):
            os.makedirs(self.path, exist_ok=True)
        self.ensure_file(self.p(MARKER), b"fleetpatch.demo.demo_fleet\n", what="marker")
        self.ensure_file(self.p("bin", "fleet_service.py"), scripts["service_script"], what="bin/fleet_service.py", mode=0o755)
        self.ensure_file(self.p("bin", "fleetctl.py"), scripts["ctl_script"], what="bin/fleetctl.py", mode=0o755)
        for version, artifact in artifacts.items():
            path = artifact["path"]
            if not os.path.exists(path) or sha256_file(path) != artifact["sha256"]:
                if self.act(f"build artifact {artifact['name']}"):
                    write_file_atomic(path, artifact["data"])
        for artifact in self.companions.values():
            if (not os.path.exists(artifact["path"]) or sha256_file(artifact["path"]) != artifact["sha256"]) \
                    and self.act(f"build artifact {artifact['name']}"):
                write_file_atomic(artifact["path"], artifact["data"])
        signatures = self.sign_artifacts(artifacts)
        for version, path in manifests.items():
            artifact = artifacts[version]
            manifest = patch_manifest(
                affected_versions=affected_by(version, artifacts),
                signature=signatures[version],
                service=service,
                version=version,
                base_version=base,
                origin_url=origin_url,
                artifact_path=artifact["path"],
                sha256=artifact["sha256"],
                size=artifact["size"],
            )
            self.ensure_file(path, dump_yaml(manifest).encode(), what=f"patch manifest {os.path.basename(path)}")
        self.sync_hosts(layout, artifacts[base], disk_full)
        self.sync_edge_caches(layout, artifacts, effective)
        self.ensure_file(self.p("service.json"), config_text, what="service.json")
        faults_changed = self.ensure_file(self.p("faults.json"), faults_text, what="faults.json")
        inventory_text = render_inventory(
            layout, fleet_dir=self.path, port=params["port"], python=self.python, service=service, effective_faults=effective
        )
        self.ensure_file(inventory_path, inventory_text.encode(), what="inventory/demo.fleet.yml")
        return signatures, faults_changed

    def fleet_record(
        self, layout: FleetLayout, *, artifacts: dict[str, dict[str, t.Any]], signatures: dict[str, str | None], manifests: dict[str, str],
        origin_url: str, faults: list[dict[str, t.Any]], effective: dict[str, t.Any], pid: int | None,
    ) -> dict[str, t.Any]:
        """fleet.json: everything tests and tools need to know about the fleet."""
        params = self.params
        service, base = params["service"], params["base_version"]
        patch_versions = list(params["patch_versions"])
        inventory_path = self.p("inventory", "demo.fleet.yml")
        fleet = {
            "format": 1,
            "path": self.path,
            "service": service,
            "base_version": base,
            "patch_versions": patch_versions,
            "companion_services": {name: {"version": version, "sha256": self.companions[name]["sha256"]}
                                   for name, version in validate_companions(params["companion_services"], service=service).items()},
            "cidr": str(params["cidr"]),
            "port": params["port"],
            "origin_port": params["origin_port"],
            "python": self.python,
            "origin": {"address": layout.origin_address, "port": params["origin_port"], "url": origin_url, "artifacts_dir": self.p("origin", "artifacts")},
            "artifacts": {version: dict({k: v for k, v in artifact.items() if k != "data"}, signature=signatures[version])
                          for version, artifact in artifacts.items()},
            "signing": {"key": self.p("keys", "signing_key"), "allowed_signers": self.p("keys", "allowed_signers"),
                        "principal": SIGNING_PRINCIPAL},
            "manifests": dict(manifests),
            "inventory": inventory_path,
            "faults": faults,
            "faults_by_host": effective,
            "supervisor": {
                "pid": pid,
                "pidfile": self.supervisor.pidfile,
                "log": self.supervisor.log,
                "control_socket": os.path.join(self.supervisor.run_dir, "control.sock"),
                "fleetctl": [self.python, self.p("bin", "fleetctl.py")],
            },
            "nodes": len(layout.nodes),
            "edges": [host.name for host in layout.edges],
            "hosts": {
                host.name: {
                    "role": host.role,
                    "region": host.region,
                    "tenant": host.tenant or None,
                    "segment": host.segment or None,
                    "environment": host.environment or None,
                    "address": host.address,
                    "port": params["port"],
                    "root": self.p("hosts", host.name),
                    "health_url": f"http://{host.address}:{params['port']}/health",
                    "faults": effective.get(host.name, {}),
                }
                for host in layout.hosts
            },
        }
        return fleet

    # ------------------------------------------------------------------ signatures

    def sign_artifacts(self, artifacts: dict[str, dict[str, t.Any]]) -> dict[str, str | None]:
        """Generate the demo's signing key once, trust it in keys/allowed_signers, sign every release artifact.

        ed25519 signatures are deterministic, so signing again on every run rewrites nothing.
        """
        key = self.p("keys", "signing_key")
        unsigned: dict[str, str | None] = {version: None for version in artifacts}
        ssh_keygen = find_tool("ssh-keygen")
        if not ssh_keygen:
            raise DemoFleetError("the demo signs its artifacts with ssh-keygen (OpenSSH client), which is not installed here")
        if not os.path.exists(key):
            if not self.act("generate the demo signing key keys/signing_key (ed25519)"):
                return unsigned
            os.makedirs(self.p("keys"), mode=0o700, exist_ok=True)
            tmp = f"{key}.tmp-{os.getpid()}"
            for leftover in (tmp, f"{tmp}.pub"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            self.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", SIGNING_PRINCIPAL, "-f", tmp])
            os.chmod(tmp, 0o600)
            # the public half first: a key file always has its .pub beside it
            os.replace(f"{tmp}.pub", f"{key}.pub")
            os.replace(tmp, key)
        elif os.stat(key).st_mode & 0o777 != 0o600 and self.act("set mode 600 on keys/signing_key"):
            os.chmod(key, 0o600)
        public = self.read_bytes(f"{key}.pub")
        if public is None:
            raise DemoFleetError(f"{key}.pub is missing; remove {key} to make the demo generate a new signing key")
        self.ensure_file(self.p("keys", "allowed_signers"), allowed_signers_line(public.decode("utf-8")).encode(),
                         what="keys/allowed_signers")
        signatures = dict(unsigned)
        for version, artifact in artifacts.items():
            # in check mode an artifact that is not built yet has nothing to sign
            if os.path.exists(artifact["path"]) and sha256_file(artifact["path"]) == artifact["sha256"]:
                signatures[version] = sign_file(artifact["path"], key=key, ssh_keygen=ssh_keygen)
                self.ensure_file(f"{artifact['path']}.sig", t.cast(str, signatures[version]).encode(),
                                 what=f"signature {artifact['name']}.sig")
        return signatures

    # ------------------------------------------------------------------ hosts

    def install_base(self, root: str, artifact: dict[str, t.Any]) -> None:
        layout = HostLayout(root, self.params["service"])
        version = self.params["base_version"]
        unpack_release(layout, version=version, artifact_path=artifact["path"], sha256=artifact["sha256"])
        switch_current(layout, version)
        record_install(layout, version=version, sha256=artifact["sha256"], patch_id=None, previous=None, action="install")
        # A provisioned host has its whole layout, including the (empty) content-addressed cache.
        os.makedirs(layout.cache_dir, exist_ok=True)

    def sync_companions(self, layout: FleetLayout) -> None:
        """Install every companion service a node lacks (its base release, as install_base installs the main service)."""
        hosts_dir = self.p("hosts")
        lacking = [(os.path.join(hosts_dir, host.name), name) for host in layout.nodes for name in self.companions
                   if not os.path.exists(os.path.join(hosts_dir, host.name, "state", f"{name}.manifest.json"))]
        if not lacking or not self.act(f"install companion service(s) {', '.join(sorted({name for _root, name in lacking}))} "
                                       f"on {len({root for root, _name in lacking})} host(s)"):
            return

        def install(item: tuple[str, str]) -> None:
            root, name = item
            artifact = self.companions[name]
            version = artifact["version"]
            host = HostLayout(root, name)
            unpack_release(host, version=version, artifact_path=artifact["path"], sha256=artifact["sha256"])
            switch_current(host, version)
            record_install(host, version=version, sha256=artifact["sha256"], patch_id=None, previous=None, action="install")

        with ThreadPoolExecutor(max_workers=INSTALL_WORKERS) as pool:
            list(pool.map(install, lacking))

    def installed(self, root: str) -> bool:
        return os.path.exists(os.path.join(root, "state", f"{self.params['service']}.manifest.json"))

    def sync_hosts(self, layout: FleetLayout, base: dict[str, t.Any], disk_full: dict[str, int]) -> None:
        hosts_dir = self.p("hosts")
        wanted = {host.name for host in layout.hosts}
        present = set(os.listdir(hosts_dir)) if os.path.isdir(hosts_dir) else set()
        stale = sorted(name for name in present - wanted if not name.startswith("."))
        if stale and self.act(f"remove {len(stale)} host(s) no longer in the fleet: {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}"):
            roots = [os.path.join(hosts_dir, name) for name in stale]
            for root in roots:
                for mount_point in mounts_under(root):
                    self.run(["umount", mount_point])
            with ThreadPoolExecutor(max_workers=INSTALL_WORKERS) as pool:
                list(pool.map(shutil.rmtree, roots))

        missing = [host.name for host in layout.hosts if not self.installed(os.path.join(hosts_dir, host.name))]
        tmpfs_state = read_json(self.p("run", "tmpfs.json"), {}) or {}
        mounted = {name for name in wanted if os.path.ismount(os.path.join(hosts_dir, name))}
        # hosts that need a tmpfs before anything is installed into them
        for name in sorted(disk_full):
            if name in missing and name not in mounted and self.act(f"mount a tmpfs on hosts/{name} (fault disk_full)"):
                root = os.path.join(hosts_dir, name)
                os.makedirs(root, exist_ok=True)
                self.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BUILD_SIZE},mode=0755", TMPFS_SOURCE, root])
                mounted.add(name)
        if missing and self.act(f"install {self.params['service']} {self.params['base_version']} on {len(missing)} host(s)"):
            os.makedirs(hosts_dir, exist_ok=True)
            roots = [os.path.join(hosts_dir, name) for name in missing]
            with ThreadPoolExecutor(max_workers=INSTALL_WORKERS) as pool:
                list(pool.map(lambda root: self.install_base(root, base), roots))
        self.sync_companions(layout)

        for name in sorted(set(disk_full) | mounted | set(tmpfs_state)):
            root = os.path.join(hosts_dir, name)
            is_mount = name in mounted
            if name in disk_full:
                free = disk_full[name]
                if not is_mount and self.act(f"move hosts/{name} onto a tmpfs (fault disk_full)"):
                    self.move_to_tmpfs(root)
                recorded = tmpfs_state.get(name, {}).get("free_bytes")
                if (recorded != free or not is_mount) and self.act(f"size the tmpfs of hosts/{name} to leave {free} bytes free"):
                    self.run(["mount", "-o", f"remount,size={page_round(tmpfs_used(root) + free)}", root])
                    tmpfs_state[name] = {"free_bytes": free}
            elif is_mount and self.act(f"move hosts/{name} off its tmpfs (fault disk_full removed)"):
                self.move_off_tmpfs(root)
                tmpfs_state.pop(name, None)
            elif not is_mount and name in tmpfs_state and self.act("forget stale tmpfs record"):
                tmpfs_state.pop(name, None)
        if not self.check_mode and (tmpfs_state or os.path.exists(self.p("run", "tmpfs.json"))):
            current = read_json(self.p("run", "tmpfs.json"), {})
            if current != tmpfs_state:
                write_file_atomic(self.p("run", "tmpfs.json"), pretty_json(tmpfs_state))

    def move_to_tmpfs(self, root: str) -> None:
        staging = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.plain")
        os.rename(root, staging)
        os.makedirs(root)
        self.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BUILD_SIZE},mode=0755", TMPFS_SOURCE, root])
        shutil.copytree(staging, root, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(staging)

    def move_off_tmpfs(self, root: str) -> None:
        staging = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.plain")
        shutil.copytree(root, staging, symlinks=True)
        self.run(["umount", root])
        os.rmdir(root)
        os.rename(staging, root)

    def sync_edge_caches(self, layout: FleetLayout, artifacts: dict[str, dict[str, t.Any]], effective: dict[str, t.Any]) -> None:
        for host in layout.edges:
            corrupt = bool(effective.get(host.name, {}).get("corrupt_edge_artifact"))
            cache = self.p("hosts", host.name, "cache", "sha256")
            todo = []
            for artifact in artifacts.values():
                data = corrupt_bytes(artifact["data"]) if corrupt else artifact["data"]
                path = os.path.join(cache, artifact["sha256"])
                if not os.path.exists(path) or sha256_file(path) != digest_text(data):
                    todo.append((path, data))
            if todo and self.act(f"{'corrupt' if corrupt else 'fill'} {len(todo)} cached artifact(s) on {host.name}"):
                for path, data in todo:
                    write_file_atomic(path, data)

    # ------------------------------------------------------------------ supervisor

    def sync_supervisor(
        self,
        layout: FleetLayout,
        status: dict[str, t.Any] | None,
        *,
        config_sha256: str,
        script_sha256: str,
        faults_sha256: str,
        effective: dict[str, t.Any],
        faults_changed: bool,
    ) -> int | None:
        endpoints = fleet_endpoints(layout, port=self.params["port"], origin_port=self.params["origin_port"], effective=effective)
        if status is None:
            stray = self.supervisor.pids() if os.path.isdir(self.path) else []
            if stray and self.act(f"stop unresponsive supervisor (pid {', '.join(map(str, stray))})"):
                self.supervisor.stop()
            if self.act("start supervisor"):
                return self.supervisor.start(self.python, endpoints)
            return None
        if status.get("config_sha256") != config_sha256 or status.get("script_sha256") != script_sha256:
            if self.act(f"restart supervisor (pid {status['pid']}): its configuration changed"):
                self.supervisor.stop()
                return self.supervisor.start(self.python, endpoints)
            return status["pid"]
        if (faults_changed or status.get("faults_sha256") != faults_sha256) and self.act("make the supervisor reload faults.json"):
            reply = self.supervisor.request({"cmd": "reload-faults"})
            if not reply or not reply.get("ok") or reply.get("faults_sha256") != faults_sha256:
                raise DemoFleetError(f"the supervisor did not reload faults.json: {reply}; {self.supervisor.log}:\n{self.supervisor.log_tail()}")
        return status["pid"]


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            regions=dict(type="list", elements="str", default=["eu-west", "us-east"]),
            tenants=dict(type="list", elements="str", default=["acme", "globex"]),
            segments=dict(type="list", elements="str", default=["web", "api"]),
            environments=dict(type="list", elements="str", default=["prod"]),
            hosts_per_cell=dict(type="int", default=2),
            cidr=dict(type="str", default="127.77.0.0/16"),
            port=dict(type="int", default=18080),
            origin_port=dict(type="int", default=18000),
            service=dict(type="str", default="myapp"),
            base_version=dict(type="str", default="1.0.0"),
            patch_versions=dict(type="list", elements="str", default=["1.0.1", "1.1.0"]),
            companion_services=dict(type="dict", default={}),
            faults=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    kind=dict(
                        type="str",
                        required=True,
                        choices=["unhealthy_after", "slow", "unreachable", "corrupt_edge_artifact", "disk_full", "restart_fails",
                                 "cut_transfer", "error_rate"],
                    ),
                    match=dict(type="dict", required=True),
                    version=dict(type="str"),
                    delay_ms=dict(type="int"),
                    free_bytes=dict(type="int"),
                    after_bytes=dict(type="int"),
                    times=dict(type="int"),
                    percent=dict(type="int"),
                    description=dict(type="str"),
                ),
            ),
            python=dict(type="path"),
            service_script=dict(type="path", required=True),
            ctl_script=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    if not HAS_NETADDR:
        module.fail_json(msg=missing_required_lib("netaddr"))
    fleet = DemoFleet(
        module.params, check_mode=module.check_mode, run_command=lambda argv: module.run_command(argv, check_rc=False)
    )
    try:
        result = fleet.absent() if module.params["state"] == "absent" else fleet.present()
    except (DemoFleetError, ReleaseError, OSError) as exc:
        module.fail_json(msg=str(exc), actions=fleet.actions)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
