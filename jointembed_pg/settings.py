"""One settings object: every environment variable and default path jointembed_pg reads.

Other modules never read ``os.environ`` for jointembed's own settings: they call
:func:`get` (cheap; re-read on every call so that a changed environment, e.g. in tests,
takes effect) and use its fields. :mod:`jointembed_pg.paths` is the path-only view of it.

===========================  =========================================================
variable                     meaning (default)
===========================  =========================================================
``JOINTEMBED_HOME``          home directory; default: see :func:`default_home`
``JOINTEMBED_BUNDLES``       model bundles (``<home>/bundles``)
``JOINTEMBED_PGDATA``        embedded PostgreSQL data directory (``<home>/pgdata``)
``JOINTEMBED_DATA_DIR``      Flickr8K directory (``../shared/data/flickr8k`` beside a checkout)
``JOINTEMBED_PG_MAJOR``      PostgreSQL major of *new* embedded clusters (newest shipped)
``DATABASE_URL``             DSN used when no ``--dsn`` / DSN argument is given
``XDG_RUNTIME_DIR``          base of the embedded server's private socket directory
                             (non-root only; else the system temp dir)
``JOINTEMBED_PROGRESS_INTERVAL``  seconds between progress log lines off a terminal (10)
``JOINTEMBED_INDEX_MEMORY``  most ``maintenance_work_mem`` of an HNSW build (1GB)
``JOINTEMBED_MAX_*`` ...     per-item input limits: the table of :mod:`jointembed_pg.limits`
                             (:data:`LIMIT_ENV`; parsed and checked by ``Limits.from_env``)
``JOINTEMBED_URL_ALLOW_HOSTS``  trusted non-public hosts image URLs may reach (none);
                             also in :data:`LIMIT_ENV` / ``Limits.url_allow_hosts``
===========================  =========================================================

An invalid value is an :class:`~jointembed_pg.errors.ArgumentError` (one line in the CLI),
except ``JOINTEMBED_PROGRESS_INTERVAL``, where it means the default.
"""
from __future__ import annotations

import os
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import ArgumentError

#: Name of the bundle the library uses when none is named.
DEFAULT_BUNDLE = "default"
#: Environment variable naming the database when no DSN is passed.
DSN_ENV = "DATABASE_URL"
#: Application name for platformdirs.
APP = "jointembed"
#: Home of root when no earlier home exists (the OS user that runs the embedded server as
#: root must be able to traverse to its data directory, and root's home is usually 0700).
ROOT_HOME = Path("/var/lib/jointembed")

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Flickr8K location relative to a checkout of this repository (read in place).
DEFAULT_FLICKR8K = _REPO_ROOT.parent / "shared" / "data" / "flickr8k"
#: :class:`jointembed_pg.limits.Limits` field -> the variable that overrides it.
LIMIT_ENV = {
    "max_file_bytes": "JOINTEMBED_MAX_FILE_BYTES",
    "max_pixels": "JOINTEMBED_MAX_PIXELS",
    "timeout_s": "JOINTEMBED_ITEM_TIMEOUT_S",
    "memory_mb": "JOINTEMBED_DECODE_MEMORY_MB",
    "max_text_chars": "JOINTEMBED_MAX_TEXT_CHARS",
    "max_key_bytes": "JOINTEMBED_MAX_KEY_BYTES",
    "max_ref_chars": "JOINTEMBED_MAX_REF_CHARS",
    "url_allow_hosts": "JOINTEMBED_URL_ALLOW_HOSTS",
}
PROGRESS_INTERVAL_ENV = "JOINTEMBED_PROGRESS_INTERVAL"
INDEX_MEMORY_ENV = "JOINTEMBED_INDEX_MEMORY"


def _legacy_home(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / APP


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """Home directory when ``$JOINTEMBED_HOME`` is not set.

    1. ``$XDG_DATA_HOME/jointembed`` or ``~/.local/share/jointembed`` if it already exists
       (homes made by earlier versions keep working, on every OS);
    2. as root on Linux/macOS: ``/var/lib/jointembed`` (the embedded server then runs as
       a dedicated OS user, which cannot enter root's 0700 home; jointembed never loosens
       the mode of a directory it did not create);
    3. else ``platformdirs.user_data_path("jointembed")`` (``~/.local/share/jointembed`` on
       Linux, ``~/Library/Application Support/jointembed`` on macOS).
    """
    env = os.environ if env is None else env
    legacy = _legacy_home(env)
    if legacy.is_dir():
        return legacy
    if sys.platform != "win32" and os.geteuid() == 0:
        return ROOT_HOME
    try:
        import platformdirs
    except ImportError:  # platformdirs is a dependency; a bare install still works
        return legacy
    return Path(platformdirs.user_data_path(APP, appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Resolved settings (paths are not created here).

    Attributes:
        home: jointembed home directory.
        bundles_dir: directory of named model bundles.
        pgdata: data directory of the embedded PostgreSQL cluster.
        data_dir: Flickr8K directory, or ``None`` when unknown.
        database_url: DSN from ``$DATABASE_URL`` or ``None``.
        pg_major: PostgreSQL major version for new embedded clusters, ``None`` = newest shipped.
        runtime_base: directory under which the server's private socket dir is made.
        progress_interval_s: seconds between progress log lines, ``None`` = unset or not
            a number (the default applies).
        index_memory: HNSW build memory cap as written (``"2GB"``), ``None`` = unset.
        limits: the per-item limit variables that are set, ``{Limits field: raw text}``
            (:data:`LIMIT_ENV`).
    """

    home: Path
    bundles_dir: Path
    pgdata: Path
    data_dir: Path | None
    database_url: str | None
    pg_major: int | None
    runtime_base: Path | None
    progress_interval_s: float | None = None
    index_memory: str | None = None
    limits: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build the settings from ``env`` (default ``os.environ``).

        Raises:
            ArgumentError: ``JOINTEMBED_PG_MAJOR`` is not an integer (also a ``ValueError``).
        """
        env = os.environ if env is None else env
        home = Path(env["JOINTEMBED_HOME"]).expanduser() if env.get("JOINTEMBED_HOME") else default_home(env)
        bundles = Path(env.get("JOINTEMBED_BUNDLES") or home / "bundles").expanduser()
        pgdata = Path(env.get("JOINTEMBED_PGDATA") or home / "pgdata").expanduser()
        if env.get("JOINTEMBED_DATA_DIR"):
            data_dir: Path | None = Path(env["JOINTEMBED_DATA_DIR"]).expanduser()
        else:
            data_dir = DEFAULT_FLICKR8K if DEFAULT_FLICKR8K.is_dir() else None
        major = env.get("JOINTEMBED_PG_MAJOR")
        try:
            pg_major = int(major) if major else None
        except ValueError:
            raise ArgumentError(f"JOINTEMBED_PG_MAJOR must be a PostgreSQL major version such as 18, "
                             f"got {major!r}") from None
        runtime = env.get("XDG_RUNTIME_DIR")
        try:
            interval: float | None = float(env[PROGRESS_INTERVAL_ENV])
        except (KeyError, ValueError):
            interval = None
        limits = {f: env[v] for f, v in LIMIT_ENV.items() if (env.get(v) or "").strip()}
        return cls(home=home, bundles_dir=bundles, pgdata=pgdata, data_dir=data_dir,
                   database_url=env.get(DSN_ENV) or None, pg_major=pg_major,
                   runtime_base=Path(runtime) if runtime else None, progress_interval_s=interval,
                   index_memory=env.get(INDEX_MEMORY_ENV) or None, limits=limits)


def get() -> Settings:
    """The current settings, read from the environment now."""
    return Settings.from_env()
