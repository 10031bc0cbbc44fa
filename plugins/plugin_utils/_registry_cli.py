# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the command line of the patch registry (bin/fleetpatch-registry). Not a public API.

    python -m ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry_cli verify
    (with the directory that holds ansible_collections/ on PYTHONPATH; bin/fleetpatch-registry does that)

Exit status: 0 fine, 1 verification found tampering, 2 bad usage or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import verify_event_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (
    STATES,
    RegistryError,
    export,
    query_hosts,
    query_patches,
    query_timeline,
    open_registry,
    registry_paths,
    retention,
    verify_all,
    verify_export,
)

__all__ = ["main"]

DEFAULT_STATE_DIR = "~/.local/state/fleetpatch"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpatch-registry", description="Verify, query, export and prune the fleetpatch patch registry.")
    parser.add_argument("--state-dir", default=os.environ.get("FLEETPATCH_STATE_DIR") or DEFAULT_STATE_DIR,
                        help="controller state directory (default $FLEETPATCH_STATE_DIR or ~/.local/state/fleetpatch)")
    parser.add_argument("--registry", help="registry file (default $FLEETPATCH_REGISTRY or <state dir>/registry.sqlite3)")
    parser.add_argument("--checkpoints", help="checkpoint directory (default $FLEETPATCH_CHECKPOINT_DIR or <state dir>/checkpoints)")
    parser.add_argument("--state-backend", choices=("embedded", "postgresql"), default="embedded",
                        help="where the registry lives: embedded (the SQLite file, default) or postgresql (the run-state database of"
                             " FLEETPATCH_STATE_DSN / PG* in the environment, as fleetpatch_state_backend=postgresql rollouts write it)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check the registry chain, its checkpoints and every event file it knows")
    verify.add_argument("--allowed-signers", help="ssh allowed_signers file: checkpoint signatures must verify against it")
    verify.add_argument("--identity", default="fleetpatch", help="signer identity in allowed_signers (default fleetpatch)")
    verify.add_argument("--export", help="verify this registry export (JSONL) instead")
    verify.add_argument("--events", help="verify this one event file instead")
    patches = commands.add_parser("patches", help="patches, optionally only those in one state")
    patches.add_argument("--state", choices=STATES)
    hosts = commands.add_parser("hosts", help="the latest outcome of every host of a patch")
    hosts.add_argument("patch_id")
    timeline = commands.add_parser("timeline", help="a patch's record and full timeline")
    timeline.add_argument("patch_id")
    exporting = commands.add_parser("export", help="write the registry as JSONL under <state dir>/exports")
    exporting.add_argument("--dir", help="export directory")
    exporting.add_argument("--dry-run", action="store_true")
    pruning = commands.add_parser("retention", help="remove old event files and registry exports (recorded in the registry first)")
    pruning.add_argument("--events-max-age-days", type=float)
    pruning.add_argument("--exports-max-age-days", type=float)
    pruning.add_argument("--keep-exports", type=int, default=1)
    pruning.add_argument("--export-dir")
    pruning.add_argument("--dry-run", action="store_true")
    return parser


def _print_findings(report: dict[str, t.Any], out: t.TextIO) -> None:
    for finding in report["findings"]:
        print(f"{finding['severity']:8} {finding['kind']:16} {finding['where']}: {finding['message']}", file=out)


def _table(rows: list[dict[str, t.Any]], columns: t.Sequence[str], out: t.TextIO) -> None:
    cells = [[("" if row.get(column) is None else str(row.get(column))) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(cell[index]) for cell in cells]) for index, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip(), file=out)
    for cell in cells:
        print("  ".join(value.ljust(width) for value, width in zip(cell, widths)).rstrip(), file=out)


def main(argv: t.Sequence[str] | None = None, out: t.TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    state_dir = os.path.abspath(os.path.expanduser(args.state_dir))
    paths = registry_paths(state_dir, registry_path=args.registry, checkpoint_dir=args.checkpoints)
    try:
        if args.command == "verify":
            if args.events:
                report = verify_event_file(args.events).as_dict()
                report["tampered"] = sum(1 for finding in report["findings"] if finding["severity"] == "tamper")
            elif args.export:
                report = verify_export(args.export)
            else:
                report = verify_all(state_dir, registry_path=paths["registry"], checkpoint_dir=paths["checkpoints"],
                                    allowed_signers=args.allowed_signers, identity=args.identity, backend=args.state_backend)
            if args.json:
                print(json.dumps(report, indent=2, sort_keys=True), file=out)
            else:
                _print_findings(report, out)
                print(("OK" if report["ok"] else f"TAMPERED ({report['tampered']} finding(s))")
                      + f": {json.dumps(report.get('head') or {'lines': report.get('lines')}, sort_keys=True)}", file=out)
            return 0 if report["ok"] else 1
        if args.command == "export":
            result: t.Any = export(open_registry(state_dir, backend=args.state_backend, path=paths["registry"], create=False),
                                   args.dir or paths["exports"], dry_run=args.dry_run)
        elif args.command == "retention":
            if args.events_max_age_days is None and args.exports_max_age_days is None:
                raise RegistryError("retention needs --events-max-age-days and/or --exports-max-age-days")
            result = retention(state_dir, registry_path=paths["registry"], export_dir=args.export_dir, events_max_age_days=args.events_max_age_days,
                               exports_max_age_days=args.exports_max_age_days, keep_exports=args.keep_exports, dry_run=args.dry_run,
                               backend=args.state_backend)
        else:
            registry = open_registry(state_dir, backend=args.state_backend, path=paths["registry"], create=False)
            if args.command == "patches":
                result = query_patches(registry, state=args.state)
                if not args.json:
                    rows = [dict(row, hosts=" ".join(f"{key}={value}" for key, value in row["hosts"].items()),
                                 approvers=",".join(row["approvers"]), last_status=(row.get("last_run") or {}).get("status"))
                            for row in result]
                    columns = ("patch_id", "state", "target_version", "severity", "requested_by", "approvers", "runs", "last_status", "hosts")
                    _table(rows, columns, out)
                    return 0
            elif args.command == "hosts":
                result = query_hosts(registry, args.patch_id)
                if not args.json:
                    _table(result, ("host", "outcome", "wave", "batch", "at", "reason"), out)
                    return 0
            else:
                result = query_timeline(registry, args.patch_id)
                if not args.json:
                    print(f"{result['patch_id']}: {result['state']}, {result.get('service')} {result.get('target_version')}, "
                          f"{result.get('classification')}/{result.get('severity')}: {result.get('purpose')}", file=out)
                    _table(result["timeline"], ("at", "what", "detail"), out)
                    return 0
        print(json.dumps(result, indent=2, sort_keys=True), file=out)
        return 0
    except (RegistryError, OSError) as exc:
        print(f"fleetpatch-registry: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
