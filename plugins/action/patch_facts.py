# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.patch_facts (the installed state of a host's services, for the drift report): the module's one execution per host, as
ansible-core's normal action runs it, with the host bytecode cache as the interpreter's startup hook
(plugin_utils/_host_startup.py): ansible-core's module_utils load compiled instead of compiled from the zip."""

from __future__ import annotations

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._host_startup import HookedNormalAction


class ActionModule(HookedNormalAction):
    pass
