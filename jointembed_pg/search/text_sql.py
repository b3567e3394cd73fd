"""Text queries embedded by the database (``jointembed.embed_text``, sql/functions/80_text.sql).

Loading a bundle's encoder into the database: :mod:`jointembed_pg.sync.text_encoder`
(re-exported here as :func:`ensure_loaded` / :func:`load_if_possible`).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import psycopg

from .. import db
from ..errors import DatabaseError
from ..sync.text_encoder import ensure_loaded, load_if_possible, loaded_sha  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


def embed(conn: psycopg.Connection, collection: str, text: str) -> np.ndarray:
    """``jointembed.embed_text(collection, text)`` as ``(D,) float32``.

    Raises:
        psycopg.Error: as the SQL function (no encoder loaded, all-unknown/empty text).
    """
    db.register_vector(conn)
    v = conn.execute("SELECT jointembed.embed_text(%s, %s)", [collection, text]).fetchone()[0]
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def embed_checked(conn: psycopg.Connection, collection: str, text: str) -> np.ndarray:
    """:func:`embed` with the database's refusals as the runtime's errors.

    Raises:
        InputError: empty / all-unknown text (the SQL function's message).
        DatabaseError: no such collection, or no SQL text encoder loaded for its model.
    """
    from ..errors import InputError

    try:
        with conn.transaction():
            return embed(conn, collection, text)
    except psycopg.errors.InvalidParameterValue as e:
        raise InputError(db.one_line(e)) from e
    except psycopg.Error as e:
        raise DatabaseError(db.one_line(e)) from e
