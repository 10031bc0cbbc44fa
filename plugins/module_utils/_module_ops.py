# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the side effects of a host step through an AnsibleModule. Not a public API."""

from __future__ import annotations

import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostOps

if t.TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule

__all__ = ["ModuleOps"]


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
        # imported here: a host with nothing to download (a re-run) never loads the HTTP and TLS stack
        from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
        from ansible.module_utils.urls import SSLValidationError, open_url

        try:
            return open_url(url, headers=dict(headers), timeout=timeout)
        except (UrlsConnectionError, SSLValidationError) as exc:
            raise OSError(str(exc)) from exc

    def warn(self, message: str) -> None:
        super().warn(message)
        self._module.warn(message)
