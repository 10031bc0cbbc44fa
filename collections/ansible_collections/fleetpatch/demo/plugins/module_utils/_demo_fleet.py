# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.demo: pure logic of the embedded demo fleet. Not a public API.

Everything here is a function of its arguments: the fleet layout (names, addresses), fault validation and
matching, the deterministic release tarballs and the files the generator writes. The module
``fleetpatch.demo.demo_fleet`` owns every side effect.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import io
import itertools
import json
import re
import socket
import tarfile
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import canonical_json, pretty_json
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import compare_versions, version_key

try:
    import netaddr

    HAS_NETADDR = True
except ImportError:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_NETADDR = False

try:
    import yaml

    HAS_YAML = True
except ImportError:  # pragma: no cover - JSON is valid YAML, so the files stay readable
    HAS_YAML = False

# what the demo_fleet module, the harness and the tests take from here
__all__ = [
    "DemoFleetError",
    "FleetLayout",
    "HAS_NETADDR",
    "MARKER",
    "RELEASE_MTIME",
    "SIGNING_PRINCIPAL",
    "affected_by",
    "allocate_addresses",
    "allowed_signers_line",
    "artifact_name",
    "build_layout",
    "build_release_tarball",
    "busy_endpoints",
    "config_digest",
    "corrupt_bytes",
    "digest_text",
    "dump_yaml",
    "edge_name",
    "endpoints_in_use_error",
    "fault_matches",
    "fleet_endpoints",
    "node_name",
    "patch_manifest",
    "render_faults_file",
    "render_inventory",
    "resolve_faults",
    "service_config",
    "validate_cidr",
    "validate_companions",
    "validate_faults",
    "validate_versions",
]

LOOPBACK_CIDR = "127.0.0.0/8"
MAX_HOSTS = 4000
MARKER = ".fleetpatch-demo-fleet"
# the principal of the key that signs the demo's release artifacts (keys/allowed_signers)
SIGNING_PRINCIPAL = "release@fleetpatch-demo"
# Every member of a release tarball carries this mtime (2024-01-01T00:00:00Z) so digests are reproducible.
RELEASE_MTIME = 1704067200

NAME_PART_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")


MATCH_KEYS = ("host", "role", "region", "tenant", "segment", "environment")
FAULT_KINDS = ("unhealthy_after", "slow", "unreachable", "corrupt_edge_artifact", "disk_full", "restart_fails", "cut_transfer",
               "error_rate")
# faults that only make sense on an edge (they act on its cache service)
EDGE_FAULTS = ("corrupt_edge_artifact", "cut_transfer")
# kind -> {parameter: (required, type)}; "description" is allowed on every fault.
FAULT_PARAMS: dict[str, dict[str, tuple[bool, type]]] = {
    "unhealthy_after": {"version": (True, str)},
    "slow": {"delay_ms": (True, int), "version": (False, str)},
    "unreachable": {},
    "corrupt_edge_artifact": {},
    "disk_full": {"free_bytes": (False, int)},
    "restart_fails": {},
    "cut_transfer": {"after_bytes": (True, int), "times": (False, int)},
    "error_rate": {"percent": (True, int), "version": (False, str)},
}
CORRUPT_STRIDE = 4099
CORRUPT_XOR = 0x5A


class DemoFleetError(FleetpatchError, ValueError):
    """Input the demo fleet cannot be built from."""


@dataclasses.dataclass(frozen=True)
class FleetHost:
    """One demo host. An edge serves a whole region, so it has no tenant, segment or environment ("")."""

    name: str
    role: str
    region: str
    tenant: str
    segment: str
    environment: str
    address: str

    def attributes(self) -> dict[str, str]:
        """What a fault's ``match`` compares against."""
        return {
            "host": self.name,
            "role": self.role,
            "region": self.region,
            "tenant": self.tenant,
            "segment": self.segment,
            "environment": self.environment,
        }


@dataclasses.dataclass(frozen=True)
class FleetLayout:
    origin_address: str
    hosts: tuple[FleetHost, ...]

    @property
    def edges(self) -> tuple[FleetHost, ...]:
        return tuple(host for host in self.hosts if host.role == "edge")

    @property
    def nodes(self) -> tuple[FleetHost, ...]:
        return tuple(host for host in self.hosts if host.role == "node")


# --------------------------------------------------------------------------- names and addresses


def node_name(*, region: str, tenant: str, segment: str, environment: str, index: int) -> str:
    """``<region>-<tenant>-<segment>-<environment>-NN`` with NN counting from 01."""
    return f"{region}-{tenant}-{segment}-{environment}-{index:02d}"


def edge_name(region: str) -> str:
    return f"edge-{region}"


def validate_name_list(name: str, values: t.Any) -> list[str]:
    """A non-empty list of unique host-name-safe words."""
    if not isinstance(values, (list, tuple)) or not values:
        raise DemoFleetError(f"{name} must be a non-empty list")
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not NAME_PART_RE.match(value):
            raise DemoFleetError(
                f"{name}: {value!r} must be 1-32 lowercase letters, digits or '-' (not at either end)"
            )
        if value in result:
            raise DemoFleetError(f"{name}: {value!r} is listed twice")
        result.append(value)
    return result


def validate_cidr(cidr: str) -> t.Any:
    """Parse cidr with netaddr and refuse anything that is not inside 127.0.0.0/8."""
    try:
        network = netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise DemoFleetError(f"cidr {cidr!r} is not a valid network: {exc}") from exc
    loopback = netaddr.IPNetwork(LOOPBACK_CIDR)
    if network.version != 4 or network.first < loopback.first or network.last > loopback.last:
        raise DemoFleetError(
            f"cidr {cidr} is not inside {LOOPBACK_CIDR}: the demo fleet only binds loopback addresses"
        )
    return network.cidr


def fleet_endpoints(layout: FleetLayout, *, port: int, origin_port: int, effective: t.Mapping[str, t.Any]) -> list[tuple[str, int]]:
    """Every address:port the fleet's supervisor listens on: the origin, then each host not faulted unreachable."""
    return [(layout.origin_address, origin_port)] + [
        (host.address, port) for host in layout.hosts if not effective.get(host.name, {}).get("unreachable")
    ]


def busy_endpoints(endpoints: t.Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The endpoints another socket listens on (SO_REUSEADDR, like the supervisor: TIME_WAIT leftovers do not count)."""
    taken = []
    for address, port in endpoints:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                taken.append((address, port))
    return taken


def endpoints_in_use_error(taken: t.Sequence[tuple[str, int]], *, shown: int = 5) -> DemoFleetError:
    """The refusal for a fleet whose addresses another process holds, naming the first few and the variables to change."""
    listed = ", ".join(f"{address}:{port}" for address, port in taken[:shown])
    more = f" and {len(taken) - shown} more" if len(taken) > shown else ""
    return DemoFleetError(
        f"{listed}{more} already in use by another process (another demo fleet?): tear that one down or give this fleet "
        "its own demo_fleet_cidr, demo_fleet_port and demo_fleet_origin_port"
    )


def allocate_addresses(cidr: str, count: int) -> list[str]:
    """The first ``count`` usable addresses of cidr, in order."""
    network = validate_cidr(cidr)
    addresses = [str(address) for address in itertools.islice(network.iter_hosts(), count)]
    if len(addresses) < count:
        raise DemoFleetError(f"cidr {network} has {len(addresses)} usable addresses, the demo fleet needs {count}")
    return addresses


def build_layout(
    *,
    regions: t.Sequence[str],
    tenants: t.Sequence[str],
    segments: t.Sequence[str],
    environments: t.Sequence[str],
    hosts_per_cell: int,
    cidr: str,
) -> FleetLayout:
    """Names and addresses of every host: origin first, then one edge per region, then the nodes."""
    regions = validate_name_list("regions", regions)
    tenants = validate_name_list("tenants", tenants)
    segments = validate_name_list("segments", segments)
    environments = validate_name_list("environments", environments)
    if isinstance(hosts_per_cell, bool) or not isinstance(hosts_per_cell, int) or not 1 <= hosts_per_cell <= 99:
        raise DemoFleetError(f"hosts_per_cell must be an integer from 1 to 99, got {hosts_per_cell!r}")
    cells = list(itertools.product(regions, tenants, segments, environments))
    total = len(regions) + len(cells) * hosts_per_cell
    if total > MAX_HOSTS:
        raise DemoFleetError(f"the demo fleet would have {total} hosts; at most {MAX_HOSTS} are supported")
    addresses = iter(allocate_addresses(cidr, 1 + total))
    origin = next(addresses)
    hosts: list[FleetHost] = [
        FleetHost(
            name=edge_name(region),
            role="edge",
            region=region,
            tenant="",
            segment="",
            environment="",
            address=next(addresses),
        )
        for region in regions
    ]
    for region, tenant, segment, environment in cells:
        for index in range(1, hosts_per_cell + 1):
            hosts.append(
                FleetHost(
                    name=node_name(region=region, tenant=tenant, segment=segment, environment=environment, index=index),
                    role="node",
                    region=region,
                    tenant=tenant,
                    segment=segment,
                    environment=environment,
                    address=next(addresses),
                )
            )
    names = [host.name for host in hosts]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DemoFleetError(f"host name {duplicate} would be generated twice; use distinct region/tenant names")
    return FleetLayout(origin_address=origin, hosts=tuple(hosts))


def validate_versions(*, service: str, base_version: str, patch_versions: t.Sequence[str]) -> None:
    if not isinstance(service, str) or not SERVICE_RE.match(service):
        raise DemoFleetError(f"service {service!r} must match {SERVICE_RE.pattern}")
    for version in [base_version, *patch_versions]:
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise DemoFleetError(f"version {version!r} must match {VERSION_RE.pattern}")
    if base_version in patch_versions:
        raise DemoFleetError(f"patch_versions must not contain base_version {base_version}")
    if len(set(patch_versions)) != len(patch_versions):
        raise DemoFleetError("patch_versions must not list a version twice")


def validate_companions(companions: t.Any, *, service: str) -> dict[str, str]:
    """The companion services (name -> version installed beside the main service on every node), checked: names like a
    service's and not the main service, versions like a release's."""
    if not isinstance(companions, dict):
        raise DemoFleetError(f"companion_services must be a mapping of service name to version, got {companions!r}")
    checked: dict[str, str] = {}
    for name, version in companions.items():
        if name == service:
            raise DemoFleetError(f"companion_services must not name the main service {service}")
        validate_versions(service=name, base_version=version, patch_versions=[])
        checked[name] = version
    return dict(sorted(checked.items()))


# --------------------------------------------------------------------------- faults


def _match_values(where: str, key: str, value: t.Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(item, str) and item for item in values):
        raise DemoFleetError(f"{where}: match.{key} must be a non-empty string or a list of them")
    return values


def validate_faults(faults: t.Any) -> list[dict[str, t.Any]]:
    """Normalise the fault list, raising DemoFleetError with the index and field of the first bad entry."""
    if faults is None:
        return []
    if not isinstance(faults, list):
        raise DemoFleetError("faults must be a list")
    normalised: list[dict[str, t.Any]] = []
    for index, fault in enumerate(faults):
        where = f"faults[{index}]"
        if not isinstance(fault, dict):
            raise DemoFleetError(f"{where} must be a mapping")
        kind = fault.get("kind")
        if kind not in FAULT_KINDS:
            raise DemoFleetError(f"{where}: kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        where = f"{where} ({kind})"
        params = FAULT_PARAMS[kind]
        # None is how an argument spec reports an option that was not given
        fault = {key: value for key, value in fault.items() if value is not None}
        unknown = sorted(set(fault) - {"kind", "match", "description"} - set(params))
        if unknown:
            raise DemoFleetError(f"{where}: unknown field(s) {', '.join(unknown)}")
        match = fault.get("match")
        if not isinstance(match, dict) or not match:
            raise DemoFleetError(f"{where}: match is required and must be a non-empty mapping of {', '.join(MATCH_KEYS)}")
        unknown = sorted(set(match) - set(MATCH_KEYS))
        if unknown:
            raise DemoFleetError(f"{where}: match has unknown key(s) {', '.join(unknown)}; use {', '.join(MATCH_KEYS)}")
        entry: dict[str, t.Any] = {
            "kind": kind,
            "match": {key: _match_values(where, key, match[key]) for key in MATCH_KEYS if key in match},
        }
        if fault.get("description") is not None:
            entry["description"] = str(fault["description"])
        for param, (required, expected) in params.items():
            value = fault.get(param)
            if value is None:
                if required:
                    raise DemoFleetError(f"{where}: {param} is required")
                continue
            if expected is int:
                if isinstance(value, bool):
                    raise DemoFleetError(f"{where}: {param} must be a non-negative integer")
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise DemoFleetError(f"{where}: {param} must be a non-negative integer") from None
                if value < 0:
                    raise DemoFleetError(f"{where}: {param} must be a non-negative integer")
            elif not isinstance(value, str) or not value:
                raise DemoFleetError(f"{where}: {param} must be a non-empty string")
            entry[param] = value
        if kind == "disk_full":
            entry.setdefault("free_bytes", 0)
        if kind == "error_rate" and entry["percent"] > 100:
            raise DemoFleetError(f"{where}: percent must be between 0 and 100")
        normalised.append(entry)
    return normalised


def fault_matches(fault: t.Mapping[str, t.Any], host: FleetHost) -> bool:
    """Every key of match must match (AND); a list is any-of; values are shell-style patterns.

    A host without the attribute (an edge has no tenant) never matches a pattern on it.
    """
    attributes = host.attributes()
    for key, patterns in fault["match"].items():
        if not attributes[key] or not any(fnmatch.fnmatchcase(attributes[key], pattern) for pattern in patterns):
            return False
    return True


def resolve_faults(faults: t.Sequence[t.Mapping[str, t.Any]], hosts: t.Sequence[FleetHost]) -> dict[str, dict[str, t.Any]]:
    """Per-host effective faults. Several faults of one kind combine to the harshest one.

    A fault that matches no host is an error: it is almost always a typo.
    """
    effective: dict[str, dict[str, t.Any]] = {}
    for index, fault in enumerate(faults):
        kind = fault["kind"]
        matched = [host for host in hosts if fault_matches(fault, host)]
        if kind in EDGE_FAULTS:
            matched = [host for host in matched if host.role == "edge"]
        if not matched:
            what = "edge" if kind in EDGE_FAULTS else "host"
            raise DemoFleetError(f"faults[{index}] ({kind}): match {json.dumps(fault['match'], sort_keys=True)} matches no {what}")
        for host in matched:
            current = effective.setdefault(host.name, {})
            if kind == "unhealthy_after":
                previous = current.get(kind)
                if previous is None or compare_versions(fault["version"], previous) < 0:
                    current[kind] = fault["version"]
            elif kind == "slow":
                unconditional = ("delay_ms" in current and "slow_after" not in current) or "version" not in fault
                current["delay_ms"] = max(current.get("delay_ms", 0), fault["delay_ms"])
                _combine_after(current, "slow_after", None if unconditional else fault["version"])
            elif kind == "error_rate":
                # the harshest: the highest percent, from the earliest version (no version: from the start)
                previous = current.get(kind)
                unconditional = (previous is not None and "version" not in previous) or "version" not in fault
                merged = {"percent": max(fault["percent"], (previous or {}).get("percent", 0))}
                _combine_after(merged, "version", None if unconditional else fault["version"], previous=(previous or {}).get("version"))
                current[kind] = merged
            elif kind == "disk_full":
                previous = current.get(kind, {}).get("free_bytes", fault["free_bytes"])
                current[kind] = {"free_bytes": min(previous, fault["free_bytes"])}
            elif kind == "cut_transfer":
                # cut the first `times` file transfers of the edge after `after_bytes` body bytes each
                current[kind] = {"after_bytes": fault["after_bytes"], "times": fault.get("times", 1)}
            else:
                current[kind] = True
    return {name: effective[name] for name in sorted(effective)}


def _combine_after(target: dict[str, t.Any], key: str, version: str | None, *, previous: str | None = None) -> None:
    """Keep the earliest version in target[key]; None (an unconditional fault) removes it."""
    previous = target.get(key, previous)
    if version is None:
        target.pop(key, None)
    elif previous is None or compare_versions(version, previous) < 0:
        target[key] = version
    else:
        target[key] = previous


def render_faults_file(faults: t.Sequence[t.Mapping[str, t.Any]], effective: t.Mapping[str, t.Any]) -> str:
    """faults.json: what was asked for and what every host gets. The supervisor reads ``hosts``."""
    return pretty_json({"format": 1, "faults": list(faults), "hosts": dict(effective)})


# --------------------------------------------------------------------------- release tarballs


def _pseudo_random(seed: str, size: int) -> bytes:
    """Deterministic incompressible bytes (sha256 in counter mode), standing in for a binary data file."""
    out = bytearray()
    counter = 0
    seed_bytes = seed.encode("utf-8")
    while len(out) < size:
        out += hashlib.sha256(seed_bytes + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def _changelog(service: str, version: str) -> str:
    return (
        f"# {service} changelog\n\n## {version}\n\n"
        f"- Release {version} of {service}, built by the fleetpatch demo fleet.\n"
        "- Connection pool honours the configured timeout.\n"
        "- Static assets are served with strong ETags.\n"
    )


def release_members(service: str, version: str) -> list[tuple[str, bytes, int]]:
    """(path, content, mode) of every file of one release, about 200 KB like a small real service."""
    module_name = service.replace("-", "_")
    launcher = (
        "#!/usr/bin/env python3\n"
        f'"""{service} launcher (fleetpatch demo release {version})."""\n'
        "import os\nimport sys\n\n"
        "HERE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))\n"
        "sys.path.insert(0, os.path.join(HERE, 'lib'))\n\n"
        f"from {module_name} import main  # noqa: E402\n\n"
        "if __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n"
    )
    package_init = (
        f'"""{service} {version}."""\n\n__version__ = "{version}"\n\n\n'
        "def main(argv):\n"
        "    if argv[:1] == ['--version']:\n"
        f"        print('{service} ' + __version__)\n"
        "        return 0\n"
        "    from .server import serve\n\n"
        "    return serve(argv)\n"
    )
    server = (
        f'"""HTTP front end of {service} {version}."""\n\n'
        "import json\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\n"
        "from . import __version__\n\n\n"
        "class Handler(BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = json.dumps({'status': 'ok', 'version': __version__}).encode()\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Type', 'application/json')\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n\n\n"
        "def serve(argv):\n"
        "    port = int(argv[0]) if argv else 8080\n"
        "    HTTPServer(('127.0.0.1', port), Handler).serve_forever()\n"
        "    return 0\n"
    )
    handlers = "".join(
        f"def handle_{index:03d}(request):\n    \"\"\"Route {index} of {service} {version}.\"\"\"\n"
        f"    return {{'route': {index}, 'version': '{version}', 'ok': True}}\n\n\n"
        for index in range(120)
    )
    config = (
        f"# {service} {version} default configuration\n"
        "[server]\nlisten = \"127.0.0.1:8080\"\nworkers = 4\ntimeout_s = 30\n\n"
        "[cache]\nsize_mb = 64\nttl_s = 300\n\n"
        "[log]\nlevel = \"info\"\nformat = \"json\"\n"
    )
    app_js = "".join(
        f"export function widget{index:04d}(el) {{ el.dataset.version = '{version}'; return el.children.length + {index}; }}\n"
        for index in range(500)
    )
    return sorted(
        [
            ("VERSION", f"{version}\n".encode(), 0o644),
            (f"bin/{service}", launcher.encode(), 0o755),
            (f"lib/{module_name}/__init__.py", package_init.encode(), 0o644),
            (f"lib/{module_name}/server.py", server.encode(), 0o644),
            (f"lib/{module_name}/handlers.py", handlers.encode(), 0o644),
            (f"share/{service}/config/default.toml", config.encode(), 0o644),
            (f"share/{service}/static/app.js", app_js.encode(), 0o644),
            (f"share/{service}/data/geo.dat", _pseudo_random(f"{service}/{version}/geo", 128 * 1024), 0o644),
            (f"share/doc/{service}/CHANGELOG.md", _changelog(service, version).encode(), 0o644),
        ]
    )


def build_release_tarball(service: str, version: str) -> bytes:
    """A gzip'd tar whose bytes depend only on the arguments: sorted members, fixed mtimes, uid/gid 0,
    no user names, gzip header mtime 0 and no file name."""
    members = release_members(service, version)
    directories = sorted({"/".join(path.split("/")[:depth]) for path, _content, _mode in members for depth in range(1, path.count("/") + 1)})
    entries: list[tuple[str, bytes | None, int]] = [(directory, None, 0o755) for directory in directories]
    entries += members
    entries.sort(key=lambda entry: entry[0])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, content, mode in entries:
            info = tarfile.TarInfo(path)
            info.mtime = RELEASE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as stream:
        stream.write(raw.getvalue())
    return compressed.getvalue()


def artifact_name(service: str, version: str) -> str:
    return f"{service}-{version}.tar.gz"


def corrupt_bytes(data: bytes) -> bytes:
    """Bit rot for the corrupt_edge_artifact fault: same size, every CORRUPT_STRIDE-th byte flipped.

    fleet_service.py carries a copy of this function; a unit test keeps the two equal.
    """
    out = bytearray(data)
    for offset in range(0, len(out), CORRUPT_STRIDE):
        out[offset] ^= CORRUPT_XOR
    return bytes(out)


# --------------------------------------------------------------------------- generated files


def dump_yaml(data: t.Any) -> str:
    if HAS_YAML:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False, width=1000)
    return pretty_json(data)  # pragma: no cover


def patch_manifest(
    *, service: str, version: str, base_version: str, origin_url: str, artifact_path: str, sha256: str, size: int,
    affected_versions: t.Sequence[str] | None = None, signature: str | None = None,
) -> dict[str, t.Any]:
    """A demo patch manifest; affected_versions defaults to [base_version], signature (armored text) is added when given."""
    name = artifact_name(service, version)
    manifest = {
        "patch_id": f"FP-DEMO-{service}-{version}",
        "service": service,
        "target_version": version,
        "base_version": base_version,
        "description": f"Demo patch: {service} {base_version} -> {version}, served by the demo fleet origin",
        # change policy fields (docs/policy.md): a routine functional fix, requested and approved by different people
        "change_type": "scheduled",
        "classification": "functional",
        "justification": f"Demo: roll {service} {version} out across the demo fleet",
        "affected_versions": list(affected_versions or [base_version]),
        "regression_risk": "low",
        "requested_by": "demo-requester",
        "approvals": [{"by": "demo-approver", "role": "service owner"}],
        "artifact": {
            "name": name,
            "url": f"{origin_url}/artifacts/{name}",
            "path": artifact_path,
            "sha256": sha256,
            "size": size,
        },
    }
    if signature:
        manifest["artifact"]["signature"] = signature
    return manifest


def affected_by(version: str, versions: t.Iterable[str]) -> list[str]:
    """The demo's versions a patch to version applies to: every older one (a host on 1.0.1 takes 1.1.0 too)."""
    return sorted((other for other in set(versions) if version_key(other) < version_key(version)), key=version_key)


def allowed_signers_line(public_key: str, *, principal: str = SIGNING_PRINCIPAL) -> str:
    """The allowed_signers line that trusts the demo's signing key for fleetpatch signatures only."""
    fields = public_key.split()
    if len(fields) < 2:
        raise DemoFleetError(f"the demo's public signing key is not an OpenSSH public key: {public_key[:80]!r}")
    return f'{principal} namespaces="fleetpatch" {fields[0]} {fields[1]}\n'


def host_vars(
    host: FleetHost,
    *,
    fleet_dir: str,
    port: int,
    python: str,
    service: str,
    faults: t.Mapping[str, t.Any],
) -> dict[str, t.Any]:
    base = f"http://{host.address}:{port}"
    host_vars_: dict[str, t.Any] = {
        f"fleet_{level}": getattr(host, level) for level in ("region", "tenant", "segment", "environment") if getattr(host, level)
    }
    host_vars_.update({
        "fleet_role": host.role,
        "fleetpatch_host_root": f"{fleet_dir}/hosts/{host.name}",
        "fleetpatch_service": service,
        "fleetpatch_health_url": f"{base}/health",
        "fleetpatch_metrics_url": f"{base}/metrics",
        # -I -S: fleetctl needs the standard library only; no site import (site-packages, .pth files) nor PYTHON*
        # variables, so the restart every patch_apply runs costs the interpreter's start and little else
        "fleetpatch_restart_command": [python, "-I", "-S", f"{fleet_dir}/bin/fleetctl.py", "restart", host.name],
        "fleet_address": host.address,
        "fleet_port": port,
    })
    if host.role == "node":
        host_vars_["fleet_edge"] = edge_name(host.region)
    else:
        host_vars_["fleet_edge_cache_url"] = f"{base}/cache/sha256/"
    if faults.get("unreachable"):
        host_vars_.update(
            {
                "ansible_connection": "ssh",
                "ansible_host": "127.0.0.1",
                "ansible_port": 1,
                "ansible_user": "fleetpatch-unreachable",
                "ansible_ssh_common_args": "-o ConnectTimeout=2 -o ConnectionAttempts=1 -o BatchMode=yes "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_ssh_retries": 0,
            }
        )
    return host_vars_


def render_inventory(
    layout: FleetLayout,
    *,
    fleet_dir: str,
    port: int,
    python: str,
    service: str,
    effective_faults: t.Mapping[str, t.Mapping[str, t.Any]],
) -> str:
    data = {
        "plugin": "fleetpatch.rollout.fleet",
        "defaults": {"ansible_connection": "local", "ansible_python_interpreter": python},
        "hosts": {
            host.name: host_vars(
                host, fleet_dir=fleet_dir, port=port, python=python, service=service, faults=effective_faults.get(host.name, {})
            )
            for host in layout.hosts
        },
    }
    header = (
        "# Generated by fleetpatch.demo.demo_fleet; rewritten on every run that changes the fleet.\n"
        "# Use with: ansible-inventory -i <this file> --graph\n"
    )
    return header + dump_yaml(data)


def service_config(
    layout: FleetLayout,
    *,
    fleet_dir: str,
    port: int,
    origin_port: int,
    service: str,
    artifacts: t.Mapping[str, t.Mapping[str, t.Any]],
) -> dict[str, t.Any]:
    """What the supervisor needs to know; its canonical digest decides whether the supervisor restarts."""
    return {
        "format": 1,
        "fleet_dir": fleet_dir,
        "service": service,
        "origin": {
            "address": layout.origin_address,
            "port": origin_port,
            "artifacts_dir": f"{fleet_dir}/origin/artifacts",
            "artifacts": {entry["sha256"]: entry["name"] for entry in artifacts.values()},
        },
        "faults_file": f"{fleet_dir}/faults.json",
        "hosts": [
            {
                "name": host.name,
                "role": host.role,
                "address": host.address,
                "port": port,
                "root": f"{fleet_dir}/hosts/{host.name}",
            }
            for host in layout.hosts
        ],
    }


def digest_text(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def config_digest(config: t.Mapping[str, t.Any]) -> str:
    return digest_text(canonical_json(config))
