"""Journal storage: the record codec, segment backends, and group commit."""

from cluster.journal.backends import Backend, FileBackend, MemoryBackend, open_backend
from cluster.journal.journal import Journal

__all__ = ["Backend", "FileBackend", "Journal", "MemoryBackend", "open_backend"]
