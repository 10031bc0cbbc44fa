"""Pure logic of the demo fleet: names, netaddr allocation, faults, deterministic releases, generated files."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import socket
import subprocess
import sys
import tarfile
import typing as t

import pytest
import yaml

from ansible_collections.fleetpatch.demo.plugins.module_utils import _demo_fleet as demo
from ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet import DemoFleetError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import validate_patch_manifest
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._policy import validate_change
from ansible_collections.fleetpatch.rollout.plugins.module_utils._archive import validate_members
from ansible_collections.fleetpatch.rollout.plugins.module_utils._version import compare_versions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEMO_COLLECTION = os.path.join(REPO_ROOT, "collections", "ansible_collections", "fleetpatch", "demo")
SERVICE_SCRIPT = os.path.join(DEMO_COLLECTION, "roles", "demo_fleet", "files", "fleet_service.py")

LEVELS = "host, role, region, tenant, segment, environment"
DEFAULTS: dict[str, t.Any] = {
    "regions": ["eu-west", "us-east"],
    "tenants": ["acme", "globex"],
    "segments": ["web", "api"],
    "environments": ["prod"],
    "hosts_per_cell": 2,
    "cidr": "127.77.0.0/16",
}


def layout(**overrides: t.Any) -> demo.FleetLayout:
    return demo.build_layout(**dict(DEFAULTS, **overrides))


def load_service_script() -> t.Any:
    spec = importlib.util.spec_from_file_location("fleet_service_under_test", SERVICE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ names, addresses


def test_default_layout_names_and_addresses() -> None:
    fleet = layout()
    assert fleet.origin_address == "127.77.0.1"
    assert [(h.name, h.address) for h in fleet.edges] == [("edge-eu-west", "127.77.0.2"), ("edge-us-east", "127.77.0.3")]
    assert len(fleet.nodes) == 16
    first, last = fleet.nodes[0], fleet.nodes[-1]
    assert (first.name, first.address) == ("eu-west-acme-web-prod-01", "127.77.0.4")
    assert (fleet.nodes[1].name, fleet.nodes[1].address) == ("eu-west-acme-web-prod-02", "127.77.0.5")
    assert (fleet.nodes[2].name, fleet.nodes[2].address) == ("eu-west-acme-api-prod-01", "127.77.0.6")
    assert (last.name, last.address) == ("us-east-globex-api-prod-02", "127.77.0.19")
    assert (first.region, first.tenant, first.segment, first.environment, first.role) == ("eu-west", "acme", "web", "prod", "node")
    assert len({h.address for h in fleet.hosts} | {fleet.origin_address}) == 19


def test_endpoints_are_the_origin_then_every_reachable_host() -> None:
    fleet = layout(regions=["eu-west"], tenants=["acme"], segments=["web"])
    unreachable = {fleet.nodes[0].name: {"unreachable": True}, fleet.nodes[1].name: {"slow": {"delay_ms": 5}}}
    assert demo.fleet_endpoints(fleet, port=18080, origin_port=18000, effective=unreachable) == [
        ("127.77.0.1", 18000), ("127.77.0.2", 18080), ("127.77.0.4", 18080),
    ]


def test_busy_endpoints_names_only_the_address_another_socket_listens_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:  # a port nobody listens on, held unbound
            reserved.bind(("127.0.0.1", 0))
            free_port = reserved.getsockname()[1]
        assert demo.busy_endpoints([("127.0.0.1", free_port), ("127.0.0.1", port)]) == [("127.0.0.1", port)]
    assert demo.busy_endpoints([("127.0.0.1", port)]) == []


def test_endpoints_in_use_error_lists_five_and_counts_the_rest() -> None:
    taken = [(f"127.77.0.{index}", 18080) for index in range(1, 8)]
    message = str(demo.endpoints_in_use_error(taken))
    assert message.startswith("127.77.0.1:18080, 127.77.0.2:18080, 127.77.0.3:18080, 127.77.0.4:18080, 127.77.0.5:18080 and 2 more ")
    assert "127.77.0.6" not in message and "demo_fleet_cidr, demo_fleet_port and demo_fleet_origin_port" in message
    assert str(demo.endpoints_in_use_error(taken[:1])).startswith("127.77.0.1:18080 already in use")


def test_addresses_cross_octet_boundaries_and_skip_network_address() -> None:
    fleet = layout(regions=["r1", "r2", "r3", "r4"], tenants=[f"t{i}" for i in range(5)], segments=[f"s{i}" for i in range(5)])
    assert len(fleet.nodes) == 200
    assert fleet.hosts[-1].address == "127.77.0.205"
    big = layout(tenants=[f"t{i}" for i in range(20)], hosts_per_cell=10)
    assert big.hosts[-1].address == "127.77.3.35"  # 1 origin + 2 edges + 800 nodes = 803rd usable address


@pytest.mark.parametrize(
    ("index", "expected"),
    [(1, "eu-west-acme-web-prod-01"), (9, "eu-west-acme-web-prod-09"), (42, "eu-west-acme-web-prod-42")],
)
def test_node_name(index: int, expected: str) -> None:
    assert demo.node_name(region="eu-west", tenant="acme", segment="web", environment="prod", index=index) == expected


def test_edge_name() -> None:
    assert demo.edge_name("ap-south") == "edge-ap-south"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.0.0/8", "cidr 10.0.0.0/8 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"),
        ("192.168.1.0/24", "cidr 192.168.1.0/24 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"),
        ("126.0.0.0/7", "cidr 126.0.0.0/7 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"),
        ("0.0.0.0/0", "cidr 0.0.0.0/0 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"),
        ("::1/128", "cidr ::1/128 is not inside 127.0.0.0/8: the demo fleet only binds loopback addresses"),
    ],
)
def test_refuses_non_loopback_cidr(cidr: str, message: str) -> None:
    with pytest.raises(DemoFleetError) as exc:
        demo.validate_cidr(cidr)
    assert str(exc.value) == message


def test_refuses_garbage_cidr() -> None:
    with pytest.raises(DemoFleetError, match=r"^cidr 'not-a-net' is not a valid network: "):
        demo.validate_cidr("not-a-net")


@pytest.mark.parametrize(("cidr", "normalised"), [("127.77.0.0/16", "127.77.0.0/16"), ("127.78.5.9/24", "127.78.5.0/24"), ("127.0.0.0/8", "127.0.0.0/8")])
def test_accepts_loopback_cidr(cidr: str, normalised: str) -> None:
    assert str(demo.validate_cidr(cidr)) == normalised


def test_cidr_too_small() -> None:
    with pytest.raises(DemoFleetError) as exc:
        layout(cidr="127.78.0.0/28")
    assert str(exc.value) == "cidr 127.78.0.0/28 has 14 usable addresses, the demo fleet needs 19"


def test_allocate_addresses_in_order() -> None:
    assert demo.allocate_addresses("127.78.1.0/30", 2) == ["127.78.1.1", "127.78.1.2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"regions": []}, "regions must be a non-empty list"),
        ({"tenants": ["Acme"]}, "tenants: 'Acme' must be 1-32 lowercase letters, digits or '-' (not at either end)"),
        ({"segments": ["web-"]}, "segments: 'web-' must be 1-32 lowercase letters, digits or '-' (not at either end)"),
        ({"regions": ["eu", "eu"]}, "regions: 'eu' is listed twice"),
        ({"hosts_per_cell": 0}, "hosts_per_cell must be an integer from 1 to 99, got 0"),
        ({"hosts_per_cell": 100}, "hosts_per_cell must be an integer from 1 to 99, got 100"),
        ({"tenants": [f"t{i}" for i in range(100)], "hosts_per_cell": 20}, "the demo fleet would have 8002 hosts; at most 4000 are supported"),
        # eu + west-acme ... and eu-west + acme ... would give the same names
        (
            {"regions": ["eu", "eu-west"], "tenants": ["west-acme", "acme"]},
            "host name eu-west-acme-web-prod-01 would be generated twice; use distinct region/tenant names",
        ),
    ],
)
def test_layout_errors(overrides: dict[str, t.Any], message: str) -> None:
    with pytest.raises(DemoFleetError) as exc:
        layout(**overrides)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"service": "My App"}, "service 'My App' must match ^[a-z0-9][a-z0-9_-]{0,63}$"),
        ({"base_version": "1.0.0/x"}, "version '1.0.0/x' must match ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"),
        ({"patch_versions": ["1.0.0"]}, "patch_versions must not contain base_version 1.0.0"),
        ({"patch_versions": ["1.0.1", "1.0.1"]}, "patch_versions must not list a version twice"),
    ],
)
def test_version_errors(kwargs: dict[str, t.Any], message: str) -> None:
    args = dict({"service": "myapp", "base_version": "1.0.0", "patch_versions": ["1.0.1"]}, **kwargs)
    with pytest.raises(DemoFleetError) as exc:
        demo.validate_versions(**args)
    assert str(exc.value) == message


# ------------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("slow", "faults must be a list"),
        (["slow"], "faults[0] must be a mapping"),
        (
            [{"kind": "boom", "match": {"host": "x"}}],
            "faults[0]: kind 'boom' is not one of unhealthy_after, slow, unreachable, corrupt_edge_artifact, disk_full, restart_fails, cut_transfer,"
            " error_rate",
        ),
        ([{"kind": "slow", "match": {"host": "x"}}], "faults[0] (slow): delay_ms is required"),
        ([{"kind": "slow", "delay_ms": -1, "match": {"host": "x"}}], "faults[0] (slow): delay_ms must be a non-negative integer"),
        ([{"kind": "slow", "delay_ms": True, "match": {"host": "x"}}], "faults[0] (slow): delay_ms must be a non-negative integer"),
        ([{"kind": "unhealthy_after", "match": {"host": "x"}}], "faults[0] (unhealthy_after): version is required"),
        ([{"kind": "unreachable"}], f"faults[0] (unreachable): match is required and must be a non-empty mapping of {LEVELS}"),
        ([{"kind": "unreachable", "match": {}}], f"faults[0] (unreachable): match is required and must be a non-empty mapping of {LEVELS}"),
        ([{"kind": "unreachable", "match": {"zone": "a"}}], f"faults[0] (unreachable): match has unknown key(s) zone; use {LEVELS}"),
        ([{"kind": "unreachable", "match": {"host": ""}}], "faults[0] (unreachable): match.host must be a non-empty string or a list of them"),
        ([{"kind": "unreachable", "match": {"host": "x"}, "delay_ms": 5}], "faults[0] (unreachable): unknown field(s) delay_ms"),
        ([{"kind": "error_rate", "match": {"host": "x"}}], "faults[0] (error_rate): percent is required"),
        ([{"kind": "error_rate", "percent": 101, "match": {"host": "x"}}], "faults[0] (error_rate): percent must be between 0 and 100"),
    ],
)
def test_fault_validation_errors(faults: t.Any, message: str) -> None:
    with pytest.raises(DemoFleetError) as exc:
        demo.validate_faults(faults)
    assert str(exc.value) == message


def test_fault_validation_normalises_argument_spec_output() -> None:
    # an argument spec with suboptions hands every unset suboption in as None
    given = [
        {"kind": "disk_full", "match": {"host": "a"}, "version": None, "delay_ms": None, "free_bytes": None, "description": None},
        {"kind": "slow", "match": {"region": ["eu-west", "us-*"]}, "delay_ms": "250", "version": None, "free_bytes": None},
    ]
    assert demo.validate_faults(given) == [
        {"kind": "disk_full", "match": {"host": ["a"]}, "free_bytes": 0},
        {"kind": "slow", "match": {"region": ["eu-west", "us-*"]}, "delay_ms": 250},
    ]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"host": "eu-west-acme-web-prod-01"}, ["eu-west-acme-web-prod-01"]),
        ({"tenant": "acme", "segment": "web", "region": "us-east"}, ["us-east-acme-web-prod-01", "us-east-acme-web-prod-02"]),
        ({"host": "*-api-prod-02", "region": "eu-west"}, ["eu-west-acme-api-prod-02", "eu-west-globex-api-prod-02"]),
        ({"host": ["edge-us-east", "us-east-globex-web-prod-01"]}, ["edge-us-east", "us-east-globex-web-prod-01"]),
        ({"region": "eu-west", "role": "edge"}, ["edge-eu-west"]),
        # an edge has no tenant: a pattern on tenant never selects it, not even "*"
        ({"tenant": "*", "region": "us-east", "segment": "api", "environment": "prod"}, [
            "us-east-acme-api-prod-01", "us-east-acme-api-prod-02", "us-east-globex-api-prod-01", "us-east-globex-api-prod-02"]),
    ],
)
def test_fault_matching(match: dict[str, t.Any], expected: list[str]) -> None:
    (fault,) = demo.validate_faults([{"kind": "unreachable", "match": match}])
    assert [host.name for host in layout().hosts if demo.fault_matches(fault, host)] == sorted(expected, key=[h.name for h in layout().hosts].index)


def test_resolve_faults_combines_per_host() -> None:
    faults = demo.validate_faults(
        [
            {"kind": "slow", "delay_ms": 100, "match": {"region": "eu-west", "tenant": "acme", "segment": "web"}},
            {"kind": "slow", "delay_ms": 700, "match": {"host": "eu-west-acme-web-prod-01"}},
            {"kind": "unhealthy_after", "version": "1.1.0", "match": {"host": "eu-west-acme-web-prod-01"}},
            {"kind": "unhealthy_after", "version": "1.0.10", "match": {"host": "eu-west-acme-web-prod-*"}},
            {"kind": "disk_full", "free_bytes": 5000, "match": {"host": "eu-west-acme-web-prod-02"}},
            {"kind": "disk_full", "free_bytes": 100, "match": {"host": "eu-west-acme-web-prod-02"}},
            {"kind": "corrupt_edge_artifact", "match": {"region": "us-east"}},
            {"kind": "restart_fails", "match": {"host": "us-east-globex-api-prod-02"}},
            {"kind": "unreachable", "match": {"host": "us-east-globex-api-prod-02"}},
        ]
    )
    assert demo.resolve_faults(faults, layout().hosts) == {
        "edge-us-east": {"corrupt_edge_artifact": True},
        "eu-west-acme-web-prod-01": {"delay_ms": 700, "unhealthy_after": "1.0.10"},
        "eu-west-acme-web-prod-02": {"delay_ms": 100, "unhealthy_after": "1.0.10", "disk_full": {"free_bytes": 100}},
        "us-east-globex-api-prod-02": {"restart_fails": True, "unreachable": True},
    }


def test_resolve_faults_version_gated_faults_combine_to_the_harshest() -> None:
    host = "eu-west-acme-web-prod-01"
    faults = demo.validate_faults(
        [
            {"kind": "slow", "delay_ms": 100, "version": "1.0.2", "match": {"host": host}},
            {"kind": "slow", "delay_ms": 50, "version": "1.0.1", "match": {"host": host}},
            {"kind": "error_rate", "percent": 20, "version": "1.1.0", "match": {"host": host}},
            {"kind": "error_rate", "percent": 50, "version": "1.0.1", "match": {"host": host}},
            {"kind": "slow", "delay_ms": 10, "match": {"host": "eu-west-acme-web-prod-02"}},
            {"kind": "slow", "delay_ms": 300, "version": "1.0.1", "match": {"host": "eu-west-acme-web-prod-02"}},
            {"kind": "error_rate", "percent": 100, "match": {"host": "eu-west-acme-web-prod-02"}},
        ]
    )
    assert demo.resolve_faults(faults, layout().hosts) == {
        host: {"delay_ms": 100, "slow_after": "1.0.1", "error_rate": {"percent": 50, "version": "1.0.1"}},
        # a fault without a version applies from the start: no version gate is left
        "eu-west-acme-web-prod-02": {"delay_ms": 300, "error_rate": {"percent": 100}},
    }


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "unreachable", "match": {"region": "mars"}}, 'faults[0] (unreachable): match {"region": ["mars"]} matches no host'),
        ({"kind": "corrupt_edge_artifact", "match": {"tenant": "acme"}}, 'faults[0] (corrupt_edge_artifact): match {"tenant": ["acme"]} matches no edge'),
    ],
)
def test_resolve_faults_refuses_a_fault_that_selects_nothing(fault: dict[str, t.Any], message: str) -> None:
    with pytest.raises(DemoFleetError) as exc:
        demo.resolve_faults(demo.validate_faults([fault]), layout().hosts)
    assert str(exc.value) == message


# ---------------------------------------------------------------------------------------------- releases


def test_release_tarball_is_byte_identical_across_builds() -> None:
    first = demo.build_release_tarball("myapp", "1.0.1")
    assert demo.build_release_tarball("myapp", "1.0.1") == first
    # another interpreter with another hash seed builds the same bytes
    code = (
        "import hashlib, sys; sys.path.insert(0, sys.argv[1]);"
        "from ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet import build_release_tarball;"
        "print(hashlib.sha256(build_release_tarball('myapp', '1.0.1')).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.join(REPO_ROOT, "collections")],
        env=dict(os.environ, PYTHONHASHSEED="12345"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == hashlib.sha256(first).hexdigest()


def test_release_tarballs_differ_per_version_and_service() -> None:
    digests = {
        hashlib.sha256(demo.build_release_tarball(service, version)).hexdigest()
        for service in ("myapp", "billing")
        for version in ("1.0.0", "1.0.1", "1.1.0")
    }
    assert len(digests) == 6


def test_release_tarball_members_are_normalised_and_realistic() -> None:
    data = demo.build_release_tarball("myapp", "1.1.0")
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # gzip magic, header mtime 0
    assert gzip.decompress(data)  # a valid stream
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        names = [member.name for member in members]
        assert names == sorted(names)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(demo.RELEASE_MTIME, 0, 0, "", "")}
        files = {m.name: m for m in members if m.isfile()}
        assert {"VERSION", "bin/myapp", "lib/myapp/__init__.py", "share/myapp/data/geo.dat"} <= set(files)
        assert files["bin/myapp"].mode == 0o755
        assert archive.extractfile("VERSION").read() == b"1.1.0\n"
        assert b'__version__ = "1.1.0"' in archive.extractfile("lib/myapp/__init__.py").read()
        total = sum(m.size for m in files.values())
        assert 150_000 < total < 300_000
        # the host-side code accepts every member
        plan = validate_members("myapp-1.1.0.tar.gz", members)
        assert plan.total_size == total


def test_corrupt_bytes_keeps_size_and_breaks_digest() -> None:
    data = demo.build_release_tarball("myapp", "1.0.0")
    bad = demo.corrupt_bytes(data)
    assert len(bad) == len(data) and bad != data
    assert demo.corrupt_bytes(b"") == b""


def test_service_script_copies_agree_with_module_utils() -> None:
    service = load_service_script()
    data = demo.build_release_tarball("myapp", "1.0.0")
    assert service.corrupt_bytes(data) == demo.corrupt_bytes(data)
    versions = ["1.0.0", "1.0.1", "1.0.10", "1.0.9", "1.1.0", "1.1.0-rc1", "2.0", "1.0.0+build7", "10.0.0"]
    for left in versions:
        for right in versions:
            assert service.compare_versions(left, right) == compare_versions(left, right), (left, right)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=100-", 100, "unsatisfiable"),
        ("bytes=-0", 100, "unsatisfiable"),
        ("bytes=5-2", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
    ],
)
def test_service_range_parsing(header: str | None, size: int, expected: t.Any) -> None:
    assert load_service_script().parse_range(header, size) == expected


# -------------------------------------------------------------------------------------- generated files


def test_patch_manifest_passes_the_collection_validator() -> None:
    manifest = demo.patch_manifest(
        service="myapp",
        version="1.0.1",
        base_version="1.0.0",
        origin_url="http://127.77.0.1:18000",
        artifact_path="/fleet/origin/artifacts/myapp-1.0.1.tar.gz",
        sha256="a" * 64,
        size=1234,
    )
    assert manifest == {
        "patch_id": "FP-DEMO-myapp-1.0.1",
        "service": "myapp",
        "target_version": "1.0.1",
        "base_version": "1.0.0",
        "description": "Demo patch: myapp 1.0.0 -> 1.0.1, served by the demo fleet origin",
        "change_type": "scheduled",
        "classification": "functional",
        "justification": "Demo: roll myapp 1.0.1 out across the demo fleet",
        "affected_versions": ["1.0.0"],
        "regression_risk": "low",
        "requested_by": "demo-requester",
        "approvals": [{"by": "demo-approver", "role": "service owner"}],
        "artifact": {
            "name": "myapp-1.0.1.tar.gz",
            "url": "http://127.77.0.1:18000/artifacts/myapp-1.0.1.tar.gz",
            "path": "/fleet/origin/artifacts/myapp-1.0.1.tar.gz",
            "sha256": "a" * 64,
            "size": 1234,
        },
    }
    # the validator adds the direction fields it always returns (allow_downgrade, downgrade)
    assert validate_patch_manifest(yaml.safe_load(demo.dump_yaml(manifest))) == dict(manifest, allow_downgrade=False, downgrade=None)
    # a rollout also needs the change fields (docs/policy.md)
    assert validate_change(manifest)["classification"] == "functional"


def test_inventory_file() -> None:
    fleet = layout()
    effective = {"eu-west-acme-web-prod-02": {"unreachable": True}}
    text = demo.render_inventory(fleet, fleet_dir="/f", port=18080, python="/py", service="myapp", effective_faults=effective)
    data = yaml.safe_load(text)
    assert data["plugin"] == "fleetpatch.rollout.fleet"
    assert data["defaults"] == {"ansible_connection": "local", "ansible_python_interpreter": "/py"}
    assert list(data["hosts"]) == [host.name for host in fleet.hosts]
    assert data["hosts"]["eu-west-acme-web-prod-01"] == {
        "fleet_region": "eu-west",
        "fleet_tenant": "acme",
        "fleet_segment": "web",
        "fleet_environment": "prod",
        "fleet_role": "node",
        "fleetpatch_host_root": "/f/hosts/eu-west-acme-web-prod-01",
        "fleetpatch_service": "myapp",
        "fleetpatch_health_url": "http://127.77.0.4:18080/health",
        "fleetpatch_metrics_url": "http://127.77.0.4:18080/metrics",
        "fleetpatch_restart_command": ["/py", "-I", "-S", "/f/bin/fleetctl.py", "restart", "eu-west-acme-web-prod-01"],
        "fleet_address": "127.77.0.4",
        "fleet_port": 18080,
        "fleet_edge": "edge-eu-west",
    }
    edge = data["hosts"]["edge-us-east"]
    assert edge["fleet_role"] == "edge" and edge["fleet_region"] == "us-east"
    assert "fleet_tenant" not in edge and edge["fleet_edge_cache_url"] == "http://127.77.0.3:18080/cache/sha256/"
    down = data["hosts"]["eu-west-acme-web-prod-02"]
    assert (down["ansible_connection"], down["ansible_host"], down["ansible_port"]) == ("ssh", "127.0.0.1", 1)
    assert "ConnectTimeout=2" in down["ansible_ssh_common_args"]


def test_service_config_and_digest_are_stable() -> None:
    artifacts = {"1.0.0": {"name": "myapp-1.0.0.tar.gz", "sha256": "b" * 64}}
    config = demo.service_config(layout(), fleet_dir="/f", port=18080, origin_port=18000, service="myapp", artifacts=artifacts)
    assert config["origin"] == {"address": "127.77.0.1", "port": 18000, "artifacts_dir": "/f/origin/artifacts", "artifacts": {"b" * 64: "myapp-1.0.0.tar.gz"}}
    assert config["hosts"][0] == {"name": "edge-eu-west", "role": "edge", "address": "127.77.0.2", "port": 18080, "root": "/f/hosts/edge-eu-west"}
    again = demo.service_config(layout(), fleet_dir="/f", port=18080, origin_port=18000, service="myapp", artifacts=artifacts)
    assert demo.config_digest(config) == demo.config_digest(again)
    other = demo.service_config(layout(), fleet_dir="/f", port=18081, origin_port=18000, service="myapp", artifacts=artifacts)
    assert demo.config_digest(config) != demo.config_digest(other)


def test_demo_errors_derive_from_fleetpatch_error() -> None:
    """The demo collection's exceptions share fleetpatch.rollout's base (its module_utils import the rollout's)."""
    import inspect
    import pathlib

    from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

    plugins = pathlib.Path(demo.__file__).resolve().parents[1]
    names = [f"ansible_collections.fleetpatch.demo.plugins.{path.parent.name}.{path.stem}"
             for path in sorted(plugins.glob("*/*.py")) if path.name != "__init__.py"]
    assert "ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet" in names
    classes = [obj for name in names for _attr, obj in inspect.getmembers(importlib.import_module(name), inspect.isclass)
               if obj.__module__ == name and issubclass(obj, BaseException)]
    assert DemoFleetError in classes
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, FleetpatchError)] == []
    with pytest.raises(ValueError):  # the other base stays, so every `except ValueError` still matches
        demo.validate_faults([{"kind": "cut_transfer", "match": {"region": "eu-west"}}])


def test_companion_services_are_checked_and_never_the_main_service() -> None:
    assert demo.validate_companions({"ledger": "0.9.0", "billing": "2.3.0"}, service="myapp") == {"billing": "2.3.0", "ledger": "0.9.0"}
    assert demo.validate_companions({}, service="myapp") == {}
    for companions, message in (({"myapp": "2.0.0"}, "must not name the main service myapp"), (["billing"], "must be a mapping"),
                                ({"billing": "2 3"}, "version '2 3' must match"), ({"Bad Name": "1.0.0"}, "service 'Bad Name' must match")):
        with pytest.raises(DemoFleetError) as raised:
            demo.validate_companions(companions, service="myapp")
        assert message in str(raised.value)
