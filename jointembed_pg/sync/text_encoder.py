"""A bundle's static text encoder in the database (issue 25): ``text_static.npy`` ->
``jointembed.text_encoders`` / ``jointembed.text_vocab`` (migrations/006), the tables
``jointembed.embed_text`` reads (sql/functions/80_text.sql; querying: jointembed_pg.search.text_sql).

Loaded once per ``model_id`` (kept when the stored sha256 equals the bundle's artefact),
replaced when it differs, and deleted by the database itself (triggers of 80_text.sql)
when no collection and no live attachment version uses the model any more. Called when a
collection or attachment is created or opened with a bundle and when ``reembed`` starts.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .. import db
from ..errors import BundleError, DatabaseError
from ..model import static_text

log = logging.getLogger(__name__)

_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('jointembed.text_encoders:' || %s, 0))"


def loaded_sha(conn: psycopg.Connection, model_id: str) -> str | None:
    """sha256 of the artefact loaded for ``model_id``, or ``None``."""
    row = conn.execute("SELECT sha256 FROM jointembed.text_encoders WHERE model_id = %s", [model_id]).fetchone()
    return None if row is None else row[0]


def ensure_loaded(conn: psycopg.Connection, bundle: Any, *, required: bool = False) -> bool:
    """Load the bundle's static text encoder into the database unless it is there already.

    Runs in its own transaction on ``conn`` (an advisory lock per model id serialises
    concurrent loaders). COPY BINARY of ``V`` rows of ``vector(D)`` (pgvector-python).

    Args:
        required: raise when the bundle has no artefact (else return False).

    Returns:
        True when the encoder is (now) loaded, False when the bundle has none.

    Raises:
        BundleError: the artefact is missing (with ``required``) or invalid.
        DatabaseError: the role may not write the tables (run it as the schema owner).
    """
    if not static_text.has_static_text(bundle):
        if required:
            static_text.load(bundle)  # raises the explanatory BundleError
        return False
    sha = bundle.manifest["files"][static_text.STATIC_FILE].get("sha256")
    try:
        with conn.transaction():
            if loaded_sha(conn, bundle.model_id) == sha:
                return True
            st = static_text.load(bundle)
            conn.execute(_LOCK_SQL, [bundle.model_id])
            if loaded_sha(conn, bundle.model_id) == st.sha256:
                return True
            _write(conn, bundle.model_id, st)
    except psycopg.errors.InsufficientPrivilege as e:
        raise DatabaseError(f"loading the SQL text encoder of {bundle.model_id}: {db.one_line(e)} "
                            "(the schema owner loads it: open the collection once as the owner)") from e
    log.info("loaded the SQL text encoder of %s (%d pieces)", bundle.model_id, len(st.pieces))
    return True


def _write(conn: psycopg.Connection, model_id: str, st: static_text.StaticText) -> None:
    db.register_vector(conn)
    conn.execute("DELETE FROM jointembed.text_encoders WHERE model_id = %s", [model_id])
    conn.execute(
        "INSERT INTO jointembed.text_encoders (model_id, dim, vocab_size, bias, unk_id, max_pieces, "
        "max_word_chars, sha256) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [model_id, st.dim, len(st.pieces), np.ascontiguousarray(st.bias, np.float32), st.unk_id,
         st.max_pieces, st.max_word_chars, st.sha256])
    with conn.cursor().copy(sql.SQL("COPY jointembed.text_vocab (model_id, piece, id, vec) FROM STDIN "
                                    "(FORMAT BINARY)")) as copy:
        copy.set_types(["text", "text", "int4", "vector"])
        for i, piece in enumerate(st.pieces):
            copy.write_row((model_id, piece, i, st.vectors[i]))
    conn.execute("ANALYZE jointembed.text_vocab")



def load_if_possible(conn: psycopg.Connection, bundle: Any) -> bool:
    """:func:`ensure_loaded` for the implicit loads (a collection or attachment opened with
    a bundle): a bundle without the artefact, an invalid artefact or a role that may not
    write the tables is logged, never raised (the ONNX path keeps working).

    Returns:
        True when the model's SQL text encoder is loaded.
    """
    if bundle is None or not static_text.has_static_text(bundle):
        return False
    try:
        return ensure_loaded(conn, bundle)
    except BundleError as e:
        log.warning("SQL text encoder not loaded: %s", e)
    except (DatabaseError, psycopg.Error) as e:
        log.info("SQL text encoder of %s not loaded: %s", bundle.model_id, db.one_line(e) if isinstance(
            e, psycopg.Error) else e)
    return False
