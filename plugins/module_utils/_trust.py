# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: who may sign what is installed, the host's half. Not a public API.

The host (``patch_apply``, ``prestage``) verifies the detached SSH signature of the exact file it is about to unpack
against the trusted keys, with one ``ssh-keygen -Y verify`` call; the key that made the signature is read from the
signature itself, so a refusal names the principal (or the key fingerprint) it saw. The controller's half, which
validates ``rollout_policy.artifacts`` and refuses a plan that would install an unsigned artifact where a signature is
required, is ``plugin_utils/_trust_policy.py``: a host compiles every module_utils file it imports on every execution.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import os
import re
import shutil
import struct
import tempfile
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils import _tools

__all__ = [
    "ALLOWED_SIGNERS_LIMIT",
    "PRINCIPAL_LIMIT",
    "PRINCIPAL_RE",
    "SIGNATURE_BEGIN",
    "SIGNATURE_NAMESPACE",
    "TrustError",
    "check_armored",
    "fingerprint",
    "parse_allowed_signers",
    "principal_matches",
    "shown",
    "signature_key",
    "signers_summary",
    "verify_artifact_signature",
]

SIGNATURE_BEGIN = "-----BEGIN SSH SIGNATURE-----"
SIGNATURE_END = "-----END SSH SIGNATURE-----"
SIGNATURE_NAMESPACE = "fleetpatch"
SIGNATURE_LIMIT = 16 * 1024
ALLOWED_SIGNERS_LIMIT = 256 * 1024
PRINCIPAL_LIMIT = 256
KEY_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
PRINCIPAL_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")


class TrustError(FleetpatchError, ValueError):
    """Trust configuration or a signature that must not be accepted; str() is the message for the operator."""


def shown(value: t.Any, limit: int = 60) -> str:
    """repr of a value, truncated: an error names what it refused without copying a megabyte into the log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ------------------------------------------------------------------------------------ allowed signers


def _read_string(data: bytes, offset: int, what: str) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise TrustError(f"{what} is truncated")
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise TrustError(f"{what} is truncated")
    return data[offset + 4:end], end


def _key_type(blob: bytes, what: str) -> str:
    name, _end = _read_string(blob, 0, what)
    return name.decode("ascii", "replace")


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (what ssh-keygen -l prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def parse_allowed_signers(text: t.Any, *, source: str = "allowed_signers") -> list[dict[str, t.Any]]:
    """Entries of an ssh allowed_signers text: [{principals, options, keytype, blob, line}]; raise naming the line."""
    if not isinstance(text, str):
        raise TrustError(f"{source} must be the text of an ssh allowed_signers file, got {type(text).__name__}")
    if len(text) > ALLOWED_SIGNERS_LIMIT:
        raise TrustError(f"{source} is {len(text)} characters, more than the limit of {ALLOWED_SIGNERS_LIMIT}")
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise TrustError(f"{source} line {number}: contains a NUL character")
        tokens = line.split()
        index = next((i for i, token in enumerate(tokens) if i >= 1 and (token in KEY_TYPES or token.endswith("-cert-v01@openssh.com"))),
                     None)
        if index is None or index + 1 >= len(tokens):
            raise TrustError(f"{source} line {number}: expected 'principals [options] key-type base64-key', got {shown(line)}")
        keytype = tokens[index]
        try:
            blob = base64.b64decode(tokens[index + 1], validate=True)
            inner = _key_type(blob, "key")
        except (binascii.Error, ValueError) as exc:
            raise TrustError(f"{source} line {number}: the {keytype} key is not valid base64 key data ({exc})") from None
        if inner != keytype:
            raise TrustError(f"{source} line {number}: the key data is a {inner} key, the line says {keytype}")
        principals = [item for item in tokens[0].split(",") if item]
        if not principals or not all(PRINCIPAL_RE.fullmatch(item) for item in principals):
            raise TrustError(f"{source} line {number}: principals {shown(tokens[0])} are not valid")
        options = ",".join(tokens[1:index]).lower()
        entries.append({"principals": principals, "options": options, "keytype": keytype, "blob": blob, "line": number})
    return entries


def signers_summary(entries: t.Sequence[t.Mapping[str, t.Any]], limit: int = 5) -> str:
    names = [principal for entry in entries for principal in entry["principals"]]
    text = ", ".join(names[:limit])
    return text if len(names) <= limit else f"{text} and {len(names) - limit} more"


# ------------------------------------------------------------------------------------ signatures


def check_armored(signature: t.Any, *, what: str = "signature") -> str:
    """The armored text of a detached ssh-keygen -Y sign signature, normalised; raise when it is not one."""
    if not isinstance(signature, str) or SIGNATURE_BEGIN not in signature or SIGNATURE_END not in signature:
        raise TrustError(f"{what} is not an armored SSH signature (it must contain {SIGNATURE_BEGIN} ... {SIGNATURE_END}), "
                         f"got {shown(signature, 40)}")
    if len(signature) > SIGNATURE_LIMIT:
        raise TrustError(f"{what} is {len(signature)} characters, more than the limit of {SIGNATURE_LIMIT}")
    start = signature.index(SIGNATURE_BEGIN)
    end = signature.index(SIGNATURE_END, start) + len(SIGNATURE_END)
    return signature[start:end] + "\n"


def signature_key(signature: str, *, what: str = "signature") -> tuple[str, bytes]:
    """(key type, public key blob) of the key that made an SSHSIG signature, read from the signature itself."""
    text = check_armored(signature, what=what)
    body = "".join(text.strip().splitlines()[1:-1])
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TrustError(f"{what} is not valid base64 ({exc})") from None
    if not data.startswith(b"SSHSIG"):
        raise TrustError(f"{what} is not an SSHSIG signature (wrong magic)")
    blob, _end = _read_string(data, 10, what)
    return _key_type(blob, what), blob


def principal_matches(pattern: str, identity: str) -> bool:
    # allowed_signers principals are OpenSSH patterns (* and ?), matched case-sensitively
    return fnmatch.fnmatchcase(identity, pattern)


def verify_artifact_signature(
    path: str, *, signature: str, allowed_signers: str, identity: str | None = None, what: str = "artifact",
    namespace: str = SIGNATURE_NAMESPACE, runner: t.Callable[..., tuple[int, str, str]] | None = None,
    scratch_dir: str | None = None,
) -> dict[str, str]:
    """Verify the detached signature of path against allowed_signers: {principal, key}, or raise TrustError.

    The signing key is read from the signature, matched against the allowed signers here, and one ssh-keygen -Y verify
    proves the signature over the file's bytes. A certificate signature (cert-authority lines) is left to ssh-keygen's
    find-principals.
    """
    runner = runner or _tools.run_tool
    keytype, blob = signature_key(signature, what=f"signature of {what}")
    key = f"{keytype} key {fingerprint(blob)}"
    entries = parse_allowed_signers(allowed_signers)
    if not entries:
        raise TrustError(f"allowed_signers holds no key: the signature of {what} cannot be verified")
    principals = [principal for entry in entries if entry["blob"] == blob and "cert-authority" not in entry["options"]
                  for principal in entry["principals"]]
    certificates = keytype.endswith("-cert-v01@openssh.com") and any("cert-authority" in entry["options"] for entry in entries)
    if not principals and not certificates:
        raise TrustError(f"signature of {what} was made by {key}, which is not in allowed_signers "
                         f"(trusted: {signers_summary(entries)})")
    if identity:
        if principals and not any(principal_matches(pattern, identity) for pattern in principals):
            raise TrustError(f"signature of {what} is by {', '.join(principals)} ({key}), not by the required "
                             f"signer_identity {identity!r}")
        principal = identity
    else:
        principal = principals[0] if principals else ""
    ssh_keygen = _tools.find_tool("ssh-keygen")
    if not ssh_keygen:
        raise TrustError(f"verifying the signature of {what} needs ssh-keygen (OpenSSH client), which is not installed "
                         "on this host")
    scratch = tempfile.mkdtemp(prefix=".fleetpatch-sig.tmp-", dir=scratch_dir)
    try:
        sig_path = os.path.join(scratch, "artifact.sig")
        signers_path = os.path.join(scratch, "allowed_signers")
        for file_path, content in ((sig_path, check_armored(signature)), (signers_path, allowed_signers.strip() + "\n")):
            with open(file_path, "w", encoding="utf-8") as handle:
                handle.write(content)
        if not principal:
            rc, out, err = runner([ssh_keygen, "-Y", "find-principals", "-s", sig_path, "-f", signers_path])
            found = [line.strip() for line in out.splitlines() if line.strip()]
            if rc != 0 or not found:
                raise TrustError(f"signature of {what} was made by {key}, which no certificate authority in allowed_signers "
                                 f"vouches for ({(err or out).strip()[-300:] or 'no principal matches'})")
            principal = found[0]
        rc, out, err = runner([ssh_keygen, "-Y", "verify", "-f", signers_path, "-I", principal, "-n", namespace,
                               "-s", sig_path], stdin_path=path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if rc != 0:
        raise TrustError(f"signature of {what} by {principal} ({key}) does not verify: "
                         f"{(err or out).strip()[-300:] or f'ssh-keygen exited {rc}'}")
    return {"principal": principal, "key": key}
