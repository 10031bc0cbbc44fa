# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the side effects of a host step through an AnsibleModule. Not a public API."""

from __future__ import annotations

import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostOps
from ansible_collections.fleetpatch.rollout.plugins.module_utils._plain_http import Fallback, plain_http
from ansible_collections.fleetpatch.rollout.plugins.module_utils._plain_http import get as plain_get

if t.TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule

__all__ = ["ModuleOps", "plain_http"]


class _NotPlain(FleetpatchError):
    """The answer needs what only ansible's open_url does (a redirect out of plain http, a gzip-encoded body)."""


def _redirects() -> type:
    """urllib's redirect handler (what open_url uses by default), except that a redirect out of plain http stops it."""
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: t.Any, fp: t.Any, code: int, msg: str, headers: t.Any, newurl: str) -> t.Any:
            if not plain_http(newurl):
                fp.close()
                raise _NotPlain(newurl)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return Redirects


def _open_plain(url: str, *, headers: t.Mapping[str, str], timeout: float) -> t.Any:
    """GET a plain_http url as ansible's open_url would (urllib, proxies from the environment, urllib's redirects),
    without importing ansible.module_utils.urls (its TLS and crypto imports) and loading the system CA store."""
    import urllib.request

    response = urllib.request.build_opener(_redirects()).open(urllib.request.Request(url, headers=dict(headers)), timeout=timeout)
    if response.headers.get("content-encoding", "").lower() == "gzip":
        response.close()
        raise _NotPlain(url)
    return response


class ModuleOps(HostOps):
    """Commands through run_command, URLs through open_url (proxies, certificates), warnings to the task."""

    def __init__(self, module: AnsibleModule) -> None:
        super().__init__(check_mode=module.check_mode)
        self._module = module

    def run(self, argv: t.Sequence[str]) -> tuple[int, str, str]:
        try:
            return self._module.run_command(list(argv), handle_exceptions=False, expand_user_and_vars=False)
        except OSError as exc:
            return 127, "", f"cannot run {argv[0]}: {exc}"

    def open_url(self, url: str, *, headers: t.Mapping[str, str], timeout: float) -> t.Any:
        # A health check or download over plain http costs no TLS stack: ansible's open_url would load the system CA
        # store (tens of ms of CPU) and its module imports cryptography, on every execution, for nothing. The common
        # answer does not even import urllib.request (module_utils/_plain_http.py); anything else is asked again, from
        # the start, through urllib, and what only open_url does through open_url.
        if plain_http(url):
            try:
                return plain_get(url, headers=headers, timeout=timeout)
            except Fallback as exc:
                ask_urllib = not exc.open_url
            try:
                if ask_urllib:
                    return _open_plain(url, headers=headers, timeout=timeout)
            except _NotPlain:
                pass  # asked again below, from the start, through ansible's open_url
        # imported here: a host with nothing to download over TLS (a re-run) never loads the HTTP and TLS stack
        from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
        from ansible.module_utils.urls import SSLValidationError, open_url

        try:
            return open_url(url, headers=dict(headers), timeout=timeout)
        except (UrlsConnectionError, SSLValidationError) as exc:
            raise OSError(str(exc)) from exc

    def warn(self, message: str) -> None:
        super().warn(message)
        self._module.warn(message)
