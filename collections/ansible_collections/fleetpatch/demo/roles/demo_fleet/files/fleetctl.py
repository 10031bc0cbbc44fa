#!/usr/bin/env python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Control the fleetpatch demo fleet supervisor over its unix socket (no network).

  fleetctl.py restart HOST     restart HOST's service: it loads apps/<service>/current/VERSION again
  fleetctl.py status [HOST]    print the supervisor's view (JSON) of every host or of one
  fleetctl.py reload-faults    make the supervisor read faults.json now
  fleetctl.py ping             exit 0 when the supervisor answers

Exit codes: 0 done, 1 restart failed, 2 usage, 3 unknown host, 4 supervisor not running, 5 bad reply.
Messages go to stderr; status prints JSON on stdout. Standard library only.

`restart HOST` is what every patch_apply runs (the inventory's fleetpatch_restart_command, `python -I -S`): a real
fleet's restart is systemctl, so this path imports as little as it can. The socket and json modules cost more CPU to
import than the rest of the script (socket's enums, json's regular expressions), so it speaks through their C halves
(_socket, _json's encoder and scanner) and falls back to json for any reply they do not take (its own errors then).
"""

from __future__ import annotations

import os
import sys

# not `from typing import TYPE_CHECKING`: this script runs once per restart, and importing typing costs more than the
# rest of it (type checkers read any TYPE_CHECKING name as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import types
    import typing as t

EXIT_OK = 0
EXIT_RESTART_FAILED = 1
EXIT_USAGE = 2
EXIT_UNKNOWN_HOST = 3
EXIT_NOT_RUNNING = 4
EXIT_BAD_REPLY = 5
CONTROL_SOCKET = "control.sock"


class ControlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _ScanContext:
    """What json's C scanner reads of a JSONDecoder: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def dumps(payload: dict[str, str]) -> str:
    """json.dumps(payload) of a request (string keys and values), through json's C encoder when it is there."""
    try:
        from _json import encode_basestring_ascii
    except ImportError:
        import json

        return json.dumps(payload)
    return "{" + ", ".join(f"{encode_basestring_ascii(key)}: {encode_basestring_ascii(value)}" for key, value in payload.items()) + "}"


def loads(data: bytes) -> t.Any:
    """json.loads(data), through json's C scanner when it takes the whole reply; json.loads (and its errors) otherwise."""
    try:
        from _json import make_scanner

        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip(" \t\n\r"))
        value, end = make_scanner(_ScanContext)(text, start)
        if not text[end:].strip(" \t\n\r"):
            return value
    except (ImportError, StopIteration, ValueError):
        pass
    import json

    return json.loads(data)


def request(fleet_dir: str, payload: dict[str, t.Any], *, timeout: float = 30.0) -> dict[str, t.Any]:
    """Send one JSON line to the supervisor and return its JSON reply.

    The socket is reached through /proc/self/fd/<dir fd>/control.sock so the path stays under the
    108-byte AF_UNIX limit however deep the fleet directory is.
    """
    import _socket  # the C module: socket.py's enums cost more than this whole request

    run_dir = os.path.join(fleet_dir, "run")
    try:
        dir_fd = os.open(run_dir, os.O_RDONLY)
    except OSError as exc:
        raise ControlError(f"demo fleet supervisor is not running ({run_dir}: {exc.strerror})", EXIT_NOT_RUNNING) from exc
    try:
        path = f"/proc/self/fd/{dir_fd}/{CONTROL_SOCKET}"
        if not os.path.exists(path):
            path = os.path.join(run_dir, CONTROL_SOCKET)
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            conn.settimeout(timeout)
            try:
                conn.connect(path)
            except OSError as exc:
                raise ControlError(
                    f"demo fleet supervisor is not running (cannot connect to {run_dir}/{CONTROL_SOCKET}: {exc.strerror or exc})",
                    EXIT_NOT_RUNNING,
                ) from exc
            conn.sendall((dumps(payload) + "\n").encode())
            chunks = []
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except TimeoutError as exc:
                raise ControlError(f"no reply from the demo fleet supervisor within {timeout:g}s", EXIT_BAD_REPLY) from exc
        finally:
            conn.close()
    finally:
        os.close(dir_fd)
    try:
        reply = loads(b"".join(chunks))
    except ValueError as exc:
        raise ControlError(f"bad reply from the demo fleet supervisor: {exc}", EXIT_BAD_REPLY) from exc
    if not isinstance(reply, dict):
        raise ControlError("bad reply from the demo fleet supervisor: not an object", EXIT_BAD_REPLY)
    return reply


def run(args: argparse.Namespace | types.SimpleNamespace | _Restart) -> int:
    payload: dict[str, t.Any] = {"cmd": args.command}
    if getattr(args, "host", None):
        payload["host"] = args.host
    reply = request(args.dir, payload, timeout=args.timeout)
    if not reply.get("ok"):
        code = {"unknown_host": EXIT_UNKNOWN_HOST, "restart_failed": EXIT_RESTART_FAILED}.get(reply.get("code"), EXIT_BAD_REPLY)
        print(f"fleetctl: {reply.get('error') or 'failed'}", file=sys.stderr)
        return code
    if args.command == "status":
        import json

        print(json.dumps(reply, indent=2, sort_keys=True))
    elif args.command == "restart" and args.verbose:
        print(reply.get("message", ""), file=sys.stderr)
    elif args.command == "reload-faults" and args.verbose:
        import json

        print(json.dumps(reply, sort_keys=True), file=sys.stderr)
    return EXIT_OK


class _Restart:
    """The arguments of `restart HOST` (what argparse would give), without importing argparse or types."""

    command = "restart"
    timeout = 30.0
    verbose = False

    def __init__(self, *, host: str, dir: str) -> None:  # pylint: disable=redefined-builtin  # argparse's name
        self.host, self.dir = host, dir


def main(argv: list[str] | None = None) -> int:
    default_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "restart" and not argv[1].startswith("-"):
        # what every patch_apply runs (the inventory's fleetpatch_restart_command), read without argparse: importing
        # and building the parser cost more CPU than the rest of this script
        args = _Restart(host=argv[1], dir=default_dir)
    else:
        args = _parser(default_dir).parse_args(argv)
    try:
        return run(args)
    except ControlError as exc:
        print(f"fleetctl: {exc}", file=sys.stderr)
        return exc.code


def _parser(default_dir: str) -> argparse.ArgumentParser:
    import argparse  # pylint: disable=redefined-outer-name

    parser = argparse.ArgumentParser(prog="fleetctl.py", description="Control the fleetpatch demo fleet supervisor.")
    parser.add_argument("--dir", default=default_dir, help="demo fleet directory (default: the one holding this script)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the supervisor")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what happened on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("restart", help="restart one host's service").add_argument("host")
    commands.add_parser("status", help="print the state of every host, or of one").add_argument("host", nargs="?")
    commands.add_parser("reload-faults", help="re-read faults.json now")
    commands.add_parser("ping", help="exit 0 when the supervisor answers")
    return parser


if __name__ == "__main__":
    sys.exit(main())
