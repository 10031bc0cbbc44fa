"""Offline stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test creates a virtual environment without pip for each sanity test, then runs
``~/.ansible/test/cache/get_pip_<version>.py`` with pip install options. That script comes from a host
this machine cannot reach; tests/harness/bootstrap.sh puts this file there instead. pip comes from the
interpreter's own ensurepip, the requested packages from the indexes in the machine's pip.conf.
"""

from __future__ import annotations

import subprocess
import sys

# Options of the real get-pip.py that `pip install` does not know.
GET_PIP_ONLY_OPTIONS = frozenset(("--no-setuptools", "--no-wheel"))


def main() -> int:
    """Install pip with ensurepip, then the requested packages with that pip."""
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    # A subprocess, not ensurepip in-process: in-process it sets PIP_CONFIG_FILE=/dev/null and the pip
    # run below would lose the machine's pip.conf (ansible-test scrubs the environment, so that is the
    # only place index settings can come from).
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
