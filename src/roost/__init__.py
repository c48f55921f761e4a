"""roost: deploy a build to many servers over BitTorrent.

The public API is re-exported here; everything else lives in private-ish
modules named for what they hold (see docs/ARCHITECTURE.md).
"""

from roost.errors import RoostError

__version__ = "0.1.0"

__all__ = ["RoostError", "__version__"]
