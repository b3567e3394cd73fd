"""Bulk loads: the opt-in int8 encoder and building the HNSW index after the load.

**int8** (``jointembed index image|text --int8``): embed with the int8 variant of the
bundle (``<bundle dir>-int8``, written by ``jointembed model build --int8``), about 2x the
fp32 image encoder's rate for -2.1 test rsum (docs/RESULTS.md). An int8 bundle has its own
``model_id``, and a collection stores the ``model_id`` of its vectors, so int8 and fp32
vectors are never mixed: an int8 load into a collection made with the fp32 bundle is
refused (:class:`~jointembed_pg.errors.ModelMismatchError`), and so is a search of an int8
collection with fp32 query vectors (queries must use ``--bundle <name>-int8``).

**Deferred index** (``--defer-index``): drop the collection's HNSW indexes before a bulk
load and build them once after it (one bulk build instead of one graph insertion per row).
"""
from __future__ import annotations

from pathlib import Path

from psycopg import sql

from ..errors import BundleError, ModelMismatchError
from ..model.bundle import Bundle, resolve
from ..model.threads import ThreadBudget

#: Directory suffix of a bundle's int8 variant (the exporter's ``INT8_SUFFIX``).
INT8_SUFFIX = "-int8"


def int8_dir(bundle_dir: Path) -> Path:
    """``<dir>-int8`` beside a bundle directory (where ``model build --int8`` writes it)."""
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + INT8_SUFFIX)


def load_bundle(name_or_path: str | Path | None = None, *, int8: bool = False,
                threads: ThreadBudget | None = None) -> Bundle:
    """Load a bundle for a batch job with a thread budget, or its int8 variant.

    Args:
        name_or_path: as :meth:`Bundle.load`.
        int8: load ``<dir>-int8`` instead (a bundle already int8 is taken as it is).
        threads: the sessions' intra-op threads and config (default: onnxruntime's own).

    Raises:
        BundleError: no such bundle; with ``int8``, no int8 variant beside it (the message
            says how to build one) or a variant whose manifest is not ``int8``.
    """
    kw = {} if threads is None else {"intra_op_threads": threads.intra_op, "session_config": threads.session_config()}
    if not int8:
        return Bundle.load(name_or_path, **kw)
    base = resolve(name_or_path)
    first = Bundle.load(base, verify=False)
    if first.meta.precision == "int8":
        return Bundle.load(base, **kw)
    path = int8_dir(base)
    if not path.is_dir():
        raise BundleError(f"--int8: no int8 variant of {base} at {path} "
                          "(build it with `jointembed model build --int8`)")
    b = Bundle.load(path, **kw)
    if b.meta.precision != "int8":
        raise BundleError(f"--int8: {path} is a {b.meta.precision} bundle, not int8")
    return b


def check_same_model(collection, bundle: Bundle) -> None:
    """Refuse to mix precisions: ``collection``'s vectors must come from ``bundle``'s model.

    Raises:
        ModelMismatchError: the collection's ``model_id`` is another model's (e.g. fp32
            vectors and an int8 bundle), naming both.
    """
    if collection.model_id != bundle.model_id:
        raise ModelMismatchError(
            f"collection {collection.name!r} holds vectors of model {collection.model_id!r}, the bundle is "
            f"{bundle.model_id!r} ({bundle.meta.precision}): int8 and fp32 vectors are never mixed in one "
            "collection; use another collection, or the bundle its vectors were made with")


def drop_indexes(collection, modalities: tuple[str, ...] = ("image", "text")) -> list[str]:
    """Drop the collection's HNSW indexes (before a bulk load; rebuild with ``ensure_index``).

    Returns:
        names of the indexes that existed and were dropped.
    Raises:
        DatabaseError: the database refused (e.g. no privilege on the table).
    """
    dropped = []
    with collection.store.transaction() as conn:
        for modality in modalities:
            name = collection.index_name(modality)
            if conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL",
                            [sql.Identifier("jointembed", name).as_string(conn)]).fetchone()[0]:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("jointembed", name)))
                dropped.append(name)
    return dropped
