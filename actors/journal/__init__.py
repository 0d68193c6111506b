"""Journal storage: the record codec, segment backends, and group commit."""

from actors.journal.backends import Backend, MemoryBackend
from actors.journal.files import FileBackend
from actors.journal.journal import Journal
from actors.journal.storage import open_backend

__all__ = ["Backend", "FileBackend", "Journal", "MemoryBackend", "open_backend"]
