"""Merge methods kept outside this package: each entry point of the group ``mergeflow.methods`` names a
module whose import registers one or more methods (:func:`mergeflow.merge.registry.register`)."""

from __future__ import annotations

from importlib.metadata import entry_points

from mergeflow.errors import MergeflowError

GROUP = "mergeflow.methods"


def load_plugins() -> list[str]:
    """Import every plugin module; the names of the entry points loaded."""
    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin is named, not a traceback deep in the registry
            raise MergeflowError(f"merge-method plugin {ep.name!r} ({ep.value}, entry point group {GROUP}) "
                                 f"failed to load: {type(exc).__name__}: {exc}") from exc
        loaded.append(ep.name)
    return loaded
