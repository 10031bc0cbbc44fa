# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: helpers shared by the controller-side action plugins. Not a public API."""

from __future__ import annotations

import concurrent.futures
import getpass
import json
import os
import socket
import time
import typing as t
import urllib.error
import urllib.request

from ansible.module_utils import urls as ansible_urls

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._plain_http import plain_http
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import parse_instant
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import utc_now

__all__ = ["CLOCK_ENV", "batch_result", "controller_identity", "decision_clock", "host_var", "host_vars", "probe_many", "resolve_state_dir"]

DEFAULT_STATE_DIR = "~/.local/state/fleetpatch"


CLOCK_ENV = "FLEETPATCH_CLOCK"


def decision_clock(value: str | None) -> tuple[t.Any, str]:
    """(now, where it came from): the one UTC clock of a run's calendar decisions. rollout_clock or FLEETPATCH_CLOCK
    inject it (tests, rehearsals); otherwise it is the controller's."""
    if value:
        return parse_instant(value, "clock (rollout_clock)"), "rollout_clock"
    if os.environ.get(CLOCK_ENV):
        return parse_instant(os.environ[CLOCK_ENV], CLOCK_ENV), CLOCK_ENV
    return utc_now(), "controller"


def resolve_state_dir(value: str | None) -> str:
    chosen = value or os.environ.get("FLEETPATCH_STATE_DIR") or DEFAULT_STATE_DIR
    return os.path.abspath(os.path.expanduser(chosen))


def controller_identity(task_vars: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Who runs this rollout: user, controller host, playbook process id and, under AWX, the job id."""
    try:
        user = getpass.getuser()
    except Exception:  # pylint: disable=broad-except
        user = str(os.getuid())
    job_id = task_vars.get("awx_job_id") or task_vars.get("tower_job_id")
    owner = f"{user}@{socket.gethostname()}"
    if job_id:
        owner += f" (AWX job {job_id})"
    return {
        "owner": owner,
        "controller": socket.gethostname(),
        # Action plugins run in a worker forked from ansible-playbook: the parent is the run's process.
        "pid": os.getppid(),
        "awx_job_id": job_id,
    }


def host_var(task_vars: t.Mapping[str, t.Any], host: str, name: str, default: t.Any = None) -> t.Any:
    hostvars = task_vars.get("hostvars", {})
    try:
        return hostvars[host].get(name, default)
    except KeyError:
        return default


def host_vars(task_vars: t.Mapping[str, t.Any], host: str, names: t.Iterable[str], *, missing: t.Any = None) -> dict[str, t.Any]:
    """Several variables of host (missing when unset): hostvars[host] builds all of the host's variables, so it is asked
    once, and not at all for no names."""
    names = list(names)
    if not names:
        return {}
    try:
        found = task_vars.get("hostvars", {})[host]
    except KeyError:
        return dict.fromkeys(names, missing)
    return {name: found.get(name, missing) for name in names}


def batch_result(task_vars: t.Mapping[str, t.Any], name: str) -> dict[str, t.Any] | None:
    """The result a run_once task registered as name: Ansible sets it on every host of the play, so the first host
    of the play batch that has it answers; else the controller's (a task of a play over localhost: the readiness gate)."""
    for host in task_vars.get("ansible_play_batch") or ():
        found = host_var(task_vars, host, name)
        if isinstance(found, dict):
            return found
    found = host_var(task_vars, "localhost", name)
    return found if isinstance(found, dict) else None


class _NotPlain(FleetpatchError):
    """The answer needs what only ansible's open_url does (a redirect out of plain http, a gzip-encoded body)."""


class _PlainRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (open_url's "safe" ones for a GET), except that a redirect out of plain http stops the probe."""

    def redirect_request(self, req: t.Any, fp: t.Any, code: int, msg: str, headers: t.Any, newurl: str) -> t.Any:
        if not plain_http(newurl):
            fp.close()
            raise _NotPlain(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def plain_opener() -> urllib.request.OpenerDirector:
    """The opener of plain-http probes: urllib's handlers as open_url builds them (proxies from the environment,
    redirects), built once for many probes; no TLS context, so no CA store is loaded."""
    return urllib.request.build_opener(_PlainRedirects())


def _get(url: str, *, timeout: float, opener: urllib.request.OpenerDirector | None) -> t.Any:
    """GET url: a plain_http URL through opener as ansible's open_url would send it (open_url creates a TLS context and
    loads the system CA store on every call, ~25 ms of CPU, even for http); anything else through open_url itself."""
    if opener is not None and plain_http(url):
        try:
            response = opener.open(url, timeout=timeout)
        except _NotPlain:
            pass  # asked again below, from the start, through ansible's open_url
        else:
            if response.headers.get("content-encoding", "").lower() != "gzip":
                return response
            response.close()  # open_url decompresses it
    return ansible_urls.open_url(url, timeout=timeout, validate_certs=True, follow_redirects="safe")


def probe_health(url: str, *, timeout: float, opener: urllib.request.OpenerDirector | None = None) -> dict[str, t.Any]:
    """GET a health URL; healthy means HTTP 200 and a JSON body whose status is 'ok' (when it has one).

    opener (plain_opener()): plain http without ansible's URL and TLS stack; None: always through open_url."""
    started = time.monotonic()
    result: dict[str, t.Any] = {"url": url, "ok": False, "status": None, "version": None}
    try:
        with _get(url, timeout=timeout, opener=opener) as response:
            body = response.read(65536)
            result["status"] = response.status
    except urllib.error.HTTPError as exc:
        result["status"] = exc.code
        body = exc.read(65536) if hasattr(exc, "read") else b""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        result["reason"] = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        result["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result
    result["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    payload: t.Any = None
    try:
        payload = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        payload = None
    if isinstance(payload, dict):
        result["version"] = payload.get("version")
        result["body_status"] = payload.get("status")
    healthy_body = not isinstance(payload, dict) or payload.get("status", "ok") == "ok"
    result["ok"] = result["status"] == 200 and healthy_body
    if not result["ok"]:
        result["reason"] = f"HTTP {result['status']}" + (f", status {payload.get('status')!r}" if isinstance(payload, dict) else "")
    return result


def probe_many(urls: t.Mapping[str, str], *, timeout: float, workers: int = 32) -> dict[str, dict[str, t.Any]]:
    """Probe every host's health URL concurrently; returns host -> probe result."""
    if not urls:
        return {}
    opener = plain_opener()  # one for the batch (its handlers keep no state per request)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(urls))) as pool:
        futures = {host: pool.submit(probe_health, url, timeout=timeout, opener=opener) for host, url in urls.items()}
        return {host: future.result() for host, future in futures.items()}
