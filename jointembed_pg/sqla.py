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
index (``WHERE modality = 'image'``) even for prepared statements. Raise
``hnsw.ef_search`` for one transaction with
``session.execute(text("SELECT set_config('hnsw.ef_search', :v, true)"), {"v": "100"})``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from urllib.parse import urlencode

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from . import db

_models: dict[tuple[str, int], type] = {}


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
    sa.event.listen(engine, "connect", lambda dbapi_conn, _record: register_vector(dbapi_conn))
    return engine


class Base(DeclarativeBase):
    """Declarative base for your own models (e.g. a products table with a ``Vector`` column)."""


def item_model(collection: Any) -> type:
    """A typed ORM class mapped onto a collection's items table (cached per table).

    Args:
        collection: a :class:`jointembed_pg.store.Collection` or ``CollectionInfo``.

    Returns:
        A class with ``id, modality, key, source, text, content_hash, model_id,
        embedding (Vector(D), or HALFVEC(D) for halfvec storage), created_at, updated_at`` mapped to
        ``jointembed.items_<id>``.
    """
    info = getattr(collection, "info", collection)
    storage = getattr(info, "storage", "vector")
    cache_key = (info.items_table, info.dim, storage)
    if cache_key in _models:
        return _models[cache_key]

    class _Base(DeclarativeBase):  # own MetaData per items table
        pass

    attrs = {
        "__tablename__": info.items_table,
        "__table_args__": {"schema": "jointembed"},
        "__doc__": f"Items of collection {info.name!r} (embedding {storage}({info.dim}), L2).",
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


def nearest(model: type, vector: Any, *, k: int = 10, modality: str | None = "image") -> sa.Select:
    """``SELECT model, distance ... ORDER BY embedding <-> vector LIMIT k`` (L2 ascending).

    ``vector``: ``(D,) float32``. The modality is a literal so the partial HNSW index applies.
    """
    dist = model.embedding.l2_distance(np.asarray(vector, dtype=np.float32)).label("distance")
    stmt = sa.select(model, dist)
    if modality is not None:
        stmt = stmt.where(model.modality == sa.literal(modality, literal_execute=True))
    return stmt.order_by(dist).limit(k)
