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


def flickr8k_dir(given: Path | None = None) -> Path:
    """The Flickr8K directory a command reads: ``given`` (``--data-dir``), else
    ``$JOINTEMBED_DATA_DIR``, else ``shared/data/flickr8k`` beside the checkout when present.

    Raises:
        InputError: none of them; the message names the absolute path looked at (the
            default is beside the checkout, not the working directory, and means nothing
            for an installed wheel) and both ways to point at the data.
    """
    from .errors import InputError

    found = given if given is not None else default_data_dir()
    if found is None:
        raise InputError(f"no Flickr8K data found (looked for {settings.DEFAULT_FLICKR8K}, beside the checkout); "
                         "pass --data-dir DIR or set JOINTEMBED_DATA_DIR "
                         "(a directory with images/ and Flickr8k.token.txt)")
    return Path(found)
