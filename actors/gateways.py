"""The service gateway of a CommandActor (or an in-process coordinator), built from ``Options.gateway``."""

from __future__ import annotations

import importlib
from typing import Any

from actors.options import Options


def build_gateway(options: Options) -> Any:
    """Build the service gateway from ``options.gateway`` (``module:factory``), or None.

    Raises `ValueError` naming the option when the module does not import, has no
    such factory, or the factory raises.
    """
    if not options.gateway:
        return None
    module_name, _, name = options.gateway.partition(":")
    where = f"Options.gateway={options.gateway!r}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: module {module_name!r} cannot be imported ({exc})") from exc
    factory: Any = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"{where}: {module_name!r} has no {name!r}")
    if not callable(factory):
        raise ValueError(f"{where}: {name!r} is not callable")
    try:
        return factory(options)
    except Exception as exc:  # the factory is user code: whatever it raises is a bad option
        raise ValueError(f"{where}: the factory raised {exc!r}") from exc
