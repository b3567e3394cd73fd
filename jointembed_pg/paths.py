"""Where jointembed_pg keeps its files: bundles, the embedded Postgres, caches.

A path-only view of :mod:`jointembed_pg.settings` (the one place that reads the
environment). All locations derive from one home directory
(:func:`jointembed_pg.settings.default_home` when ``$JOINTEMBED_HOME`` is unset):

* ``<home>/bundles/<name>/``: model bundles (``manifest.json``, ``image.onnx``, ...).
* ``<home>/pgdata/``: the embedded PostgreSQL cluster.
"""
from __future__ import annotations

from pathlib import Path

from . import settings
from .settings import DEFAULT_BUNDLE, DEFAULT_FLICKR8K  # noqa: F401  (re-exported)


def home() -> Path:
    """Return the jointembed home directory (not created)."""
    return settings.get().home


def bundles_dir() -> Path:
    """Directory holding named model bundles: ``<home>/bundles``."""
    return settings.get().bundles_dir


def pgdata_dir() -> Path:
    """Data directory of the embedded PostgreSQL cluster: ``<home>/pgdata``."""
    return settings.get().pgdata


def default_data_dir() -> Path | None:
    """Flickr8K directory beside the checkout (``../shared/data/flickr8k``), if present."""
    return settings.get().data_dir
