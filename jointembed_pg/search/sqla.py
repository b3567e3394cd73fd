"""SQLAlchemy 2 helpers: engines with pgvector, typed ORM classes for items tables.

``pgvector.sqlalchemy.Vector`` maps ``vector(D)`` columns and gives them
``l2_distance`` (``<->``), so nearest-neighbour queries are ordinary ORM queries::

    from sqlalchemy import literal, select
    from sqlalchemy.orm import Session

    engine = create_engine()                      # $DATABASE_URL or the embedded server
    Item = item_model(Store(engine).collection("photos"))
    dist = Item.embedding.l2_distance(qvec)       # qvec: (D,) float32 numpy array
    stmt = (select(Item.key, Item.source, dist.label("distance"))
            .where(Item.modality == literal("image", literal_execute=True))
            .order_by(dist).limit(10))
    with Session(engine) as session:
        rows = session.execute(stmt).all()        # L2 distance ascending

The modality is rendered as a literal so that the planner can match the partial HNSW
index (``WHERE modality = 'image'``) even for prepared statements. Such a hand-written
query is a plain HNSW scan: it can come back short (dead tuples of updated rows, or a
filter, can fill the ``hnsw.ef_search`` candidate list). :func:`nearest` instead ranks
through SQL's ``jointembed.search`` (hence ``jointembed.knn``, the one rule that always
returns k rows) and joins the ORM rows::

    stmt = nearest(Item, qvec, k=10, target="image")     # -> (Item, distance) rows
"""
from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

from urllib.parse import urlencode

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .. import db

_models: dict[tuple[str, int, str], type] = {}
#: Marks an argument that was not given (the deprecated ``modality=`` of :func:`nearest`).
_UNSET: Any = object()


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` (or ``postgres://``) → ``postgresql+psycopg://...``; key=value DSNs are wrapped."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    if "://" in dsn:
        return dsn
    return "postgresql+psycopg:///?" + urlencode(psycopg.conninfo.conninfo_to_dict(dsn))


def create_engine(dsn: str | None = None, *, migrate: bool = True, **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy Engine (psycopg 3 driver) whose connections have pgvector registered.

    Args:
        dsn: as :func:`jointembed_pg.db.connect` (``None`` → ``$DATABASE_URL`` → embedded).
        migrate: apply jointembed migrations once now.
        kwargs: passed to :func:`sqlalchemy.create_engine`.

    Raises:
        DatabaseError: as :func:`jointembed_pg.db.connect` (when ``migrate``).
    """
    target = db.resolve_dsn(dsn)
    if migrate:
        db.connect(target).close()
    engine = sa.create_engine(sqlalchemy_url(target), **kwargs)
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: _register(dbapi_conn))
    return engine


def _register(dbapi_conn: psycopg.Connection) -> None:
    """pgvector types in whatever schema holds them; the lookup's transaction is ended."""
    db.register_vector(dbapi_conn)
    if dbapi_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        dbapi_conn.rollback()


class Base(DeclarativeBase):
    """Declarative base for your own models (e.g. a products table with a ``Vector`` column)."""


def item_model(collection: Any) -> type:
    """A typed ORM class mapped onto a collection's items table (cached per table).

    Args:
        collection: a :class:`jointembed_pg.search.store.Collection` or ``CollectionInfo``.

    Returns:
        A class with ``id, modality, key, source, text, content_hash, model_id,
        embedding (Vector(D), or HALFVEC(D) for halfvec storage), created_at, updated_at`` mapped to
        ``jointembed.items_<id>``.
    """
    info = getattr(collection, "info", collection)
    storage = getattr(info, "storage", "vector")
    cache_key = (info.items_table, info.dim, storage, info.name)  # the name: nearest() ranks by it
    if cache_key in _models:
        return _models[cache_key]

    class _Base(DeclarativeBase):  # own MetaData per items table
        pass

    attrs = {
        "__tablename__": info.items_table,
        "__table_args__": {"schema": "jointembed"},
        "__doc__": f"Items of collection {info.name!r} (embedding {storage}({info.dim}), L2).",
        "jointembed_collection": info.name,
        "__annotations__": {
            "id": Mapped[int], "modality": Mapped[str], "key": Mapped[str],
            "source": Mapped[str | None], "text": Mapped[str | None],
            "content_hash": Mapped[str | None], "model_id": Mapped[str],
            "embedding": Mapped[list[float]], "created_at": Mapped[dt.datetime],
            "updated_at": Mapped[dt.datetime],
        },
        "id": mapped_column(sa.BigInteger, primary_key=True),
        "modality": mapped_column(sa.Text),
        "key": mapped_column(sa.Text),
        "source": mapped_column(sa.Text, nullable=True),
        "text": mapped_column(sa.Text, nullable=True),
        "content_hash": mapped_column(sa.Text, nullable=True),
        "model_id": mapped_column(sa.Text),
        "embedding": mapped_column(HALFVEC(info.dim) if storage == "halfvec" else Vector(info.dim)),
        "created_at": mapped_column(sa.DateTime(timezone=True)),
        "updated_at": mapped_column(sa.DateTime(timezone=True)),
    }
    model = type(f"Items{info.id}", (_Base,), attrs)
    _models[cache_key] = model
    return model


def nearest(model: type, vector: Any, *, k: int = 10, target: str | None = "image",
            modality: Any = _UNSET) -> sa.Select:
    """``(model, distance)`` rows of the ``k`` items nearest to ``vector``, L2 ascending.

    Ranks with ``jointembed.search(collection, vector, k, target)`` (SQL), so the rule
    of ``jointembed.knn`` applies: exactly ``k`` rows whenever the collection holds ``k``
    items of the target kind, even with dead tuples in the index. ``vector``: ``(D,)
    float32``, bound as a ``vector`` parameter (no cast, any search_path).

    Args:
        model: a class from :func:`item_model`.
        target: ``"image"``, ``"text"`` or ``None`` (both).
        modality: deprecated spelling of ``target`` (DeprecationWarning).
    Raises:
        ValueError: ``model`` is not from :func:`item_model`, or ``k < 1``.
    """
    name = getattr(model, "jointembed_collection", None)
    if name is None:
        raise ValueError(f"{model!r} is not an items model from jointembed_pg.search.sqla.item_model")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if modality is not _UNSET:
        warnings.warn("nearest(modality=...) is deprecated: use target=", DeprecationWarning, stacklevel=2)
        target = modality
    q = np.asarray(vector, dtype=np.float32)
    ranked = sa.func.jointembed.search(name, sa.bindparam("je_q", q, type_=Vector(q.shape[0])), k, target
                                       ).table_valued(sa.column("id", sa.BigInteger),
                                                      sa.column("distance", sa.Float)).alias("je_ranked")
    return (sa.select(model, ranked.c.distance.label("distance"))
            .join(ranked, ranked.c.id == model.id)
            .order_by(ranked.c.distance, model.id))
