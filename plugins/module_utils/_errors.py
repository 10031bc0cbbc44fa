# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the one base of every fleetpatch exception. Not a public API.

Host-side (module_utils) so that the modules shipped to hosts and the controller code share it. Each exception class
keeps its other bases (ValueError, ...), so every ``except`` that caught it before still does; ``except FleetpatchError``
catches any error the collection raises on purpose.
"""

from __future__ import annotations

__all__ = ["FleetpatchError"]


class FleetpatchError(Exception):
    """Base of every exception class of fleetpatch.rollout; str() is the message for the operator."""
