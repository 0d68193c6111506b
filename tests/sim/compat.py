"""The names the simulation drives, found where the current layout keeps them."""

from __future__ import annotations

try:
    from actors.options import Options
except ImportError:  # an older layout
    from cluster.options import Options  # type: ignore[no-redef]

try:
    from actors.supervision.supervisor import SupervisorCore
except ImportError:  # an older layout
    from actors.core import SupervisorCore  # type: ignore[no-redef]

try:
    from actors.inprocess import LocalJournal
except ImportError:  # an older layout
    from actors.local import LocalJournal  # type: ignore[no-redef]

__all__ = ["LocalJournal", "Options", "SupervisorCore"]

try:
    from actors.journal import Journal, backends, codec, replica
except ImportError:  # an older layout
    from cluster.journal import Journal, backends, codec, replica  # type: ignore[no-redef]

__all__ += ["Journal", "backends", "codec", "replica"]
