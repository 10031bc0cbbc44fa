# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the one way to find and run an external tool (zstd, ssh-keygen). Not a public API.

Its own module so that bundles (``_bundle``) and signature checks (``_trust``) share one runner without importing
each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import typing as t

__all__ = ["Runner", "find_tool", "run_tool"]

TOOL_TIMEOUT = 3600

Runner = t.Callable[..., t.Tuple[int, str, str]]


def run_tool(argv: t.Sequence[str], *, stdin_path: str | None = None, timeout: float = TOOL_TIMEOUT) -> tuple[int, str, str]:
    """Run a tool (zstd, ssh-keygen) without a shell; stdin from a file when given."""
    try:
        if stdin_path is None:
            proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        else:
            with open(stdin_path, "rb") as stdin:
                proc = subprocess.run(list(argv), capture_output=True, check=False, timeout=timeout, stdin=stdin)
            return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", f"cannot run {argv[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def find_tool(name: str) -> str | None:
    """Absolute path of a tool on PATH (plus the sbin directories a non-login shell may miss), or None."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/local/bin:/usr/bin:/bin"
    return shutil.which(name, path=path)
