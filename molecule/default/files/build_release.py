"""Build one release tarball of the molecule scenario's demo service, byte for byte reproducible.

Usage: python3 build_release.py SERVICE VERSION OUTPUT_DIR

Writes OUTPUT_DIR/SERVICE-VERSION.tar (plain tar, members at the archive root: VERSION, bin/SERVICE, ...)
with sorted members, owner 0:0, mtime 0 and fixed modes, so the same version always has the same sha256.
Prints one JSON object: name, path, sha256, size, changed (false when the file already had these bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile


def release_files(service: str, version: str) -> dict[str, tuple[int, bytes]]:
    """Member path -> (mode, content) of one release."""
    return {
        "VERSION": (0o644, f"{version}\n".encode()),
        f"bin/{service}": (0o755, f'#!/bin/sh\necho "{service} {version}"\n'.encode()),
        f"share/{service}/{service}.conf": (0o644, f"# {service} {version}\nlisten = 127.0.0.1:8080\n".encode()),
        "README": (0o644, f"{service} {version}, built by the fleetpatch molecule scenario.\n".encode()),
    }


def _member(name: str, *, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_tar(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A GNU-format tar (no pax timestamps) of the files and their parent directories, in sorted order."""
    directories = sorted({"/".join(parts[:depth]) for parts in (name.split("/") for name in files) for depth in range(1, len(parts))})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in directories:
            tar.addfile(_member(directory, kind=tarfile.DIRTYPE, mode=0o755))
        for name in sorted(files):
            mode, content = files[name]
            tar.addfile(_member(name, kind=tarfile.REGTYPE, mode=mode, size=len(content)), io.BytesIO(content))
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    service, version, output_dir = argv
    data = build_tar(release_files(service, version))
    name = f"{service}-{version}.tar"
    path = os.path.join(os.path.abspath(output_dir), name)
    try:
        with open(path, "rb") as handle:
            changed = handle.read() != data
    except FileNotFoundError:
        changed = True
    if changed:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    result = {"name": name, "path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "changed": changed}
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
