"""A deployment's code, kept with the journal so the deployment outlives its Ray cluster.

A job's ``working_dir`` and ``py_modules`` reach a deployment as ``gcs://`` packages
(``gcs://_ray_pkg_<content hash>.zip``) stored in the cluster's GCS, which is lost
with the cluster. `Packages.keep` copies each into the journal's storage, as the blob
named by the package (its content hash: stored once, however many deployments use
it), before the deployment is journaled; `Packages.restore` uploads it again to a
cluster whose GCS lacks it, before the deployment's CommandActors are created. A
package over `MAX_PACKAGE_BYTES` is not kept (logged): its deployment cannot be
rebuilt after a whole-cluster restart. Blocking (GCS and storage calls): callers on
an event loop run these in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from actors.journal.backends import BLOB_NAME, Backend

log = structlog.get_logger("supervisor")

GCS = "gcs://"
MAX_PACKAGE_BYTES = 256 << 20
"""The largest package kept in the journal's storage (Ray's GCS takes up to 512 MiB)."""


def package_uris(env: Mapping[str, Any] | None) -> list[str]:
    """The ``gcs://`` packages a runtime_env names, in its working_dir and py_modules."""
    env = env or {}
    found = [env.get("working_dir"), *(env.get("py_modules") or [])]
    return sorted({u for u in found if isinstance(u, str) and u.startswith(GCS)})


def blob_name(uri: str) -> str | None:
    """The blob a package is kept as (its name, which holds its content hash), or None
    for a name that is no plain file name."""
    name = uri[len(GCS):]
    return name if BLOB_NAME.fullmatch(name) else None


class Packages:
    """Keeps and restores ``gcs://`` packages through ``storage`` (the journal's backend,
    opened on first use) and ``gcs`` (Ray's package store in the current cluster)."""

    def __init__(self, storage: Callable[[], Backend], gcs: GcsPackages | None = None) -> None:
        self._open = storage
        self._backend: Backend | None = None
        self.gcs = gcs or GcsPackages()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._open()
        return self._backend

    def keep(self, env: Mapping[str, Any] | None) -> dict[str, str]:
        """Store the runtime_env's packages: ``gcs://`` URI -> blob name, for those kept."""
        kept: dict[str, str] = {}
        for uri in package_uris(env):
            name = blob_name(uri)
            data = self.gcs.get(uri) if name else None
            if name is None or data is None or len(data) > MAX_PACKAGE_BYTES:
                log.warning("package_not_kept", uri=uri, bytes=None if data is None else len(data))
                continue
            self.backend.put_blob(name, data)
            kept[uri] = name
        return kept

    def restore(self, env: Mapping[str, Any] | None) -> list[str]:
        """Upload again the runtime_env's packages this cluster lacks, from the journal's
        storage; the URIs uploaded. One never kept stays missing (Ray reports it when
        it creates the deployment's actors)."""
        uploaded = []
        for uri in package_uris(env):
            name = blob_name(uri)
            if name is None or self.gcs.exists(uri):
                continue
            try:
                data = self.backend.get_blob(name)
            except FileNotFoundError:
                log.warning("package_missing", uri=uri)
                continue
            self.gcs.put(uri, data)
            uploaded.append(uri)
            log.info("package_restored", uri=uri, bytes=len(data))
        return uploaded

    def forget(self, blobs: list[str]) -> None:
        for name in blobs:
            self.backend.delete_blob(name)


class GcsPackages:
    """Ray's ``gcs://`` package store of the connected cluster."""

    def get(self, uri: str) -> bytes | None:
        from ray.experimental.internal_kv import _internal_kv_get

        data = _internal_kv_get(uri)
        return bytes(data) if data is not None else None

    def exists(self, uri: str) -> bool:
        from ray._private.runtime_env.packaging import package_exists

        return bool(package_exists(uri))

    def put(self, uri: str, data: bytes) -> None:
        from ray._private.runtime_env.packaging import pin_runtime_env_uri, upload_package_to_gcs

        upload_package_to_gcs(uri, data)
        pin_runtime_env_uri(uri)  # kept until the actors that use it hold their own reference
