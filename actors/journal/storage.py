"""`open_backend`: the storage URL chooses the journal's backend."""

from __future__ import annotations

from urllib.parse import urlparse

from actors.journal.backends import Backend, MemoryBackend
from actors.journal.files import FileBackend


def open_backend(uri: str) -> Backend:
    """``file:///path``, ``mem://name`` or ``s3://bucket/prefix`` (`ValueError` for others)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FileBackend(parsed.path)
    if parsed.scheme == "mem":
        return MemoryBackend(parsed.netloc + parsed.path)
    if parsed.scheme == "s3":
        from actors.journal.s3 import S3Backend  # boto3 loads only for an s3:// journal

        return S3Backend(uri)
    raise ValueError(f"unknown storage scheme in {uri!r}: use file://, s3:// or mem://")
