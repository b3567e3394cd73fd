"""Where jointembed_pg keeps its files: bundles, the embedded Postgres, caches.

All locations derive from one home directory:

* ``$JOINTEMBED_HOME`` if set, else ``$XDG_DATA_HOME/jointembed``, else
  ``~/.local/share/jointembed``.
* ``<home>/bundles/<name>/``: model bundles (``manifest.json``, ``image.onnx``, ...).
* ``<home>/pgdata/``: the embedded PostgreSQL cluster (pgserver).
"""
from __future__ import annotations

import os
from pathlib import Path

#: Name of the bundle the library uses when none is named.
DEFAULT_BUNDLE = "default"

#: Flickr8K location relative to a checkout of this repository (read in place).
_REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLICKR8K = _REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def home() -> Path:
    """Return the jointembed home directory (not created)."""
    env = os.environ.get("JOINTEMBED_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "jointembed"


def bundles_dir() -> Path:
    """Directory holding named model bundles: ``<home>/bundles``."""
    return Path(os.environ.get("JOINTEMBED_BUNDLES", home() / "bundles")).expanduser()


def pgdata_dir() -> Path:
    """Data directory of the embedded PostgreSQL cluster: ``<home>/pgdata``."""
    return Path(os.environ.get("JOINTEMBED_PGDATA", home() / "pgdata")).expanduser()


def default_data_dir() -> Path | None:
    """Flickr8K directory beside the checkout (``../shared/data/flickr8k``), if present."""
    env = os.environ.get("JOINTEMBED_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return DEFAULT_FLICKR8K if DEFAULT_FLICKR8K.is_dir() else None
