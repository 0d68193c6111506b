"""The names the simulation drives, where the layout keeps them."""

from __future__ import annotations

from actors.inprocess import LocalJournal
from actors.journal import Journal, backends, codec, replica
from actors.options import Options
from actors.supervision.supervisor import SupervisorCore

__all__ = ["Journal", "LocalJournal", "Options", "SupervisorCore", "backends", "codec", "replica"]
