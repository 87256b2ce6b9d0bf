"""Where the backend factory (``BACKEND_MODULES``) finds the legacy BlueZero backend.

The implementation is the ``bluezero`` package next to this module. Importing this
module checks the ``bluezero`` extra every time, even when that package is already
imported: a failed import here is how select_backend() learns to fall back.
"""

from __future__ import annotations

from .bluezero import INSTALL_HINT, BluezeroBackend, require_extra

require_extra()

__all__ = ["INSTALL_HINT", "BluezeroBackend"]
