"""Same report before and after a change: the drift report of drift_bench's facts files, by two versions of the code.

Builds the facts files as bench/drift_bench.py does, then, each in a fresh child process, runs drift_bench's report
path (read every facts file, build, write every format) with the plugins of a git revision (``--ref``, default HEAD)
and with the working tree, and compares every output file byte for byte (sha256). Exits 1 when any differs.

    .venv/bin/python bench/drift_compare.py [--ref HEAD] [--hosts 100000] [--services 2] [--files 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import drift_bench  # noqa: E402  pylint: disable=wrong-import-position


def run_report(repo: str, paths: list[str], out_dir: str, services: int) -> dict[str, str]:
    """drift_bench.child_report with the collection of ``repo`` (a directory holding plugins/); sha256 of every output."""
    code = (f"import json, sys; sys.path.insert(0, {HERE!r}); import drift_bench as b; b.REPO = {repo!r}; "
            f"r = b.child_report({paths!r}, {out_dir!r}, {services}); "
            "from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _drift; print(_drift.__file__)")
    used = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    if not used.startswith(os.path.join(repo, "collections")):
        raise SystemExit(f"the report ran {used}, not the code of {repo}")
    digests = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name), "rb") as handle:
            digests[name] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="git revision to compare the working tree with")
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--files", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetpatch-drift-compare-") as tmp:
        paths = drift_bench.generate(tmp, hosts=args.hosts, services=args.services, files=args.files)
        # the revision's plugins, laid out as the repository's collections/ symlink lays out the working tree
        before = os.path.join(tmp, "before")
        collection = os.path.join(before, "collections", "ansible_collections", "fleetpatch", "rollout")
        os.makedirs(collection)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.ref, "plugins"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", collection], input=archive, check=True)
        results = {}
        for label, repo in (("before", before), ("after", REPO)):
            out_dir = os.path.join(tmp, f"out-{label}")
            os.makedirs(out_dir)
            results[label] = run_report(repo, paths, out_dir, args.services)
    same = results["before"] == results["after"]
    print(json.dumps({"ref": args.ref, "hosts": args.hosts, "services": args.services, "files": args.files,
                      "outputs": {name: {"before": results["before"].get(name), "after": digest}
                                  for name, digest in results["after"].items()},
                      "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
