"""The embedded PostgreSQL (pgserver: PostgreSQL 16 + pgvector) used when no DSN is given.

The cluster lives in :func:`jointembed_pg.paths.pgdata_dir` and is started on first use.
pgserver shares one running server between processes that use the same data directory
and, with ``cleanup_mode="stop"``, stops it when the last of them exits.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

from . import paths
from .errors import DatabaseError

_lock = threading.Lock()
_servers: dict[Path, object] = {}


def get_uri(pgdata: str | Path | None = None, *, cleanup_mode: str | None = "stop") -> str:
    """Start (or reuse) the embedded server and return its ``postgresql://`` URI.

    Args:
        pgdata: cluster directory; default :func:`jointembed_pg.paths.pgdata_dir`.
        cleanup_mode: pgserver's ``cleanup_mode`` (``"stop"``: stop the server when the
            last process using it exits; ``None``: leave it running).

    Raises:
        DatabaseError: pgserver is not installed or the server cannot start.
    """
    path = Path(pgdata if pgdata is not None else paths.pgdata_dir()).expanduser().resolve()
    with _lock:
        srv = _servers.get(path)
        if srv is None:
            try:
                with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                    warnings.simplefilter("ignore")
                    import pgserver
            except ImportError as e:
                raise DatabaseError(
                    "no DSN given and the embedded server needs the 'pgserver' package "
                    "(pip install pgserver), or set DATABASE_URL") from e
            try:
                path.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    srv = pgserver.get_server(path, cleanup_mode=cleanup_mode)
            except Exception as e:  # pgserver raises plain exceptions of several kinds
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DatabaseError(f"cannot start the embedded PostgreSQL in {path}: {first}") from e
            _servers[path] = srv
        return srv.get_uri()


def stop(pgdata: str | Path | None = None) -> None:
    """Release this process's handle on the embedded server (it stops if no one else uses it)."""
    path = Path(pgdata if pgdata is not None else paths.pgdata_dir()).expanduser().resolve()
    with _lock:
        srv = _servers.pop(path, None)
    if srv is not None:
        srv.cleanup()
