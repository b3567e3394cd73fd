"""Collections of embedded items in PostgreSQL: create, add, index, search.

>>> store = Store()            # embedded server; or a DSN / psycopg Connection / ConnectionPool / Engine
>>> coll = store.collection("photos", bundle=Bundle.load())     # model checked once; created if missing
>>> coll.add_images(["/data/a.jpg", "/data/dir/"])              # -> IngestReport (failed: [(key, reason)])
>>> coll.add_texts(["a dog on a beach"])
>>> coll.search("a dog", k=10, target="image")                  # str = text, Path/bytes = image, ndarray = vector

Lower level (vectors you computed yourself):

>>> coll = store.collection("photos", model_id=b.model_id, dim=b.dim, create=True)
>>> coll.upsert([("image", "a.jpg", "/data/a.jpg", None, sha, emb)])   # emb: (D,) float32
>>> coll.ensure_index()
>>> coll.search_vector(q, target="image", k=10)          # -> list[Hit], L2 distance ascending

Each collection has its own items table ``jointembed.items_<id>`` (``embedding vector(D)``,
or ``halfvec(D)`` with ``storage="halfvec"``; unique ``(modality, key)``) with one partial
HNSW index (``vector_l2_ops`` / ``halfvec_l2_ops``) per modality, built without blocking
writers (:mod:`jointembed_pg.search.indexing`). Attached user tables: :meth:`Store.attach`
(:mod:`jointembed_pg.search.attached`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import psycopg
import psycopg_pool
from psycopg import sql

from .. import db
from . import indexing, knn as search
from ..errors import ArgumentError, DatabaseError, InputError, ModelMismatchError
from ..migrations import query, queries
from .knn import Hit, Where  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: HNSW build parameters (pgvector defaults).
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 64
_STAGE_TYPES = ["int4", "text", "text", "text", "text", "text", "vector"]
#: Largest magnitude a float16 (``halfvec``) element holds.
HALFVEC_MAX = 65504.0


@dataclass(frozen=True)
class CollectionInfo:
    """A row of ``jointembed.collections``."""

    id: int
    name: str
    model_id: str
    dim: int
    items_table: str
    created_at: datetime
    storage: str = "vector"   # type of the embedding column: "vector" (float32) or "halfvec" (float16)
    index: str = "float"      # search index: "float" (HNSW, L2), "binary" (Hamming HNSW) or "binary-ivf"
    #                           (Hamming IVFFlat); binary kinds re-rank by L2


class Store:
    """Entry point: a database holding jointembed collections (and attached tables).

    >>> with Store("postgresql://app@db/photos") as store:      # or Store() for the embedded server
    ...     coll = store.collection("photos", bundle=Bundle.load())
    ...     coll.add_images(["a.jpg", "b.jpg"]); coll.add_texts(["a dog on a beach"])
    ...     hits = coll.search("a dog", k=10, target="image")

    Args:
        target: where connections come from:

            * a DSN string or ``None`` (``$DATABASE_URL``, else the embedded server): the
              Store opens its own ``psycopg_pool.ConnectionPool``
              (:func:`jointembed_pg.db.open_pool`: pgvector registered by its
              ``configure``, each connection checked before it is lent, so one lost to a
              server restart is replaced) and closes it in :meth:`close`;
            * a ``psycopg_pool.ConnectionPool``: a connection is borrowed per operation;
            * a ``psycopg.Connection`` or SQLAlchemy ``Connection``: used as is (work joins
              its open transaction, if any; operations are serialised by a lock per
              connection, shared by all Stores given it);
            * a SQLAlchemy ``Engine`` (``postgresql+psycopg``): a pooled connection per
              operation.

            A connection, pool or engine passed in is never closed by the Store.
            Migrations are applied on construction.
        exact_below: filtered searches matching at most this many rows run exactly
            (``None``: ``jointembed.knn``'s default, 2000; 0: never).
        max_size: most connections the Store's own pool opens at once (DSN / ``None`` only).

    Thread-safe: with a pool or an engine, threads use their own connections.
    Usable as a context manager (:meth:`close` on exit).

    Raises:
        DatabaseError: unreachable server (password redacted) or failed migrations.
        TypeError: ``target`` is of another type.
    """

    def __init__(self, target: Any = None, *, exact_below: int | None = None, max_size: int = 4):
        self._closed = False
        self._held = threading.local()   # the connection this thread holds, reused by nested calls
        self._own_pool = target is None or isinstance(target, str)
        self._dsn = target if self._own_pool else None  # as given (None: $DATABASE_URL / embedded)
        self._target: Any = db.open_pool(target, max_size=max_size) if self._own_pool else target
        #: one connection for all threads (psycopg or SQLAlchemy Connection): used under the lock
        self._one_connection = not (self._own_pool or isinstance(target, psycopg_pool.ConnectionPool)
                                    or type(target).__name__ == "Engine")
        # serialises work on one given connection; shared by every Store given that same
        # connection (else two Stores' threads would interleave statements in one transaction)
        self._lock = _connection_lock(target) if self._one_connection else threading.RLock()
        # a Store dropped without close() (or alive at exit) closes its own pool from the
        # dropping thread, not from a pool thread in psycopg_pool's __del__ (which cannot join itself)
        self._finalizer = weakref.finalize(self, _close_pool, self._target) if self._own_pool else None
        self.exact_below = exact_below
        with self.connection() as conn:
            db.prepare(conn)
            self.vector_version = db.vector_version(conn)
            with conn.transaction():
                #: schema of the vector extension: our SQL names its type and operator
                #: class through it, whatever the connection's search_path
                self.vector_schema: str = db.vector_schema(conn)

    # -- connection handling -------------------------------------------------------
    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Yield a prepared connection as is (no transaction opened by the Store).

        A pool's connection (the Store's own or one passed in) is returned to it
        afterwards; a given ``psycopg.Connection`` is held under the Store's lock. Calls
        nested in the same thread get the same connection (so work inside ``with
        store.transaction():`` joins that transaction). For statements that cannot run in
        a transaction block (``CREATE INDEX CONCURRENTLY``).

        Raises:
            DatabaseError: the Store is closed, or no connection could be had.
        """
        if self._closed:
            raise DatabaseError("this Store is closed")
        held = getattr(self._held, "conn", None)
        if held is not None:  # nested in this thread: the same connection (its session, its transaction)
            yield held
            return
        with contextlib.ExitStack() as stack:
            if self._one_connection:
                stack.enter_context(self._lock)
            conn = stack.enter_context(db.borrow(self._target))
            self._held.conn = conn
            try:
                yield conn
            finally:
                self._held.conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """Yield a prepared connection inside a transaction (committed on success).

        psycopg errors raised inside are re-raised as :class:`DatabaseError` (one line,
        chained); library errors pass through unchanged.
        """
        with self.connection() as conn:
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as e:
                raise DatabaseError(f"{type(e).__name__}: {db.one_line(e)}") from e

    @contextlib.contextmanager
    def worker_connection(self) -> Iterator[psycopg.Connection]:
        """A connection in autocommit mode at READ COMMITTED, as queue draining needs
        (:mod:`jointembed_pg.sync.drain`): each step its own transaction; the
        connection's modes are restored afterwards.

        Raises:
            DatabaseError: the Store's connection is inside an open transaction.
        """
        with self.connection() as conn:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise DatabaseError("syncing an attached table needs an idle connection: commit or roll "
                                    "back the transaction of the connection given to Store first")
            saved = conn.autocommit, conn.isolation_level
            conn.autocommit, conn.isolation_level = True, psycopg.IsolationLevel.READ_COMMITTED
            try:
                yield conn
            finally:
                if not conn.broken and not conn.closed \
                        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    conn.autocommit, conn.isolation_level = saved

    def close(self) -> None:
        """Close the pool this Store opened (later operations raise :class:`DatabaseError`).

        A connection, pool or engine the Store was given is left open and usable (a
        no-op then). Idempotent."""
        with self._lock:
            if not self._closed and self._finalizer is not None:
                self._finalizer()
                self._closed = True

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def iterative_scan(self) -> bool:
        """Whether the server's pgvector has ``hnsw.iterative_scan`` (>= 0.8)."""
        return self.vector_version >= (0, 8)

    # -- collections -----------------------------------------------------------------
    def collection(self, name: str, *, bundle: Any = None, model_id: str | None = None,
                   dim: int | None = None, create: bool | None = None,
                   storage: str | None = None, index: str | None = None) -> "Collection":
        """Open (or create) the collection ``name``, checking its model once, here.

        ``model_id`` / ``dim`` / ``storage``, when given, must equal the stored ones;
        ``model_id`` and ``dim`` are required to create. Any name is allowed (stored as data;
        the table name is derived from the id).

        Args:
            bundle: a :class:`~jointembed_pg.model.bundle.Bundle`: its ``model_id`` and ``dim``
                are checked against the collection's (or used to create it), and the
                returned collection keeps it for :meth:`Collection.add_images`,
                :meth:`~Collection.add_texts` and :meth:`~Collection.search`.
            create: create the collection when it does not exist; default (``None``):
                ``True`` when a ``bundle`` is given, else ``False``.
            storage: type of the embedding column of a new collection: ``"vector"``
                (default; float32, HNSW up to 2000 dimensions) or ``"halfvec"`` (float16,
                half the bytes, HNSW up to 4000 dimensions, pgvector >= 0.7).
            index: search index of a new collection: ``"float"`` (default; HNSW on the
                embedding, L2) or ``"binary"`` (HNSW with ``bit_hamming_ops`` on
                ``binary_quantize(embedding)::bit(D)``, ~32x smaller; every search takes a
                Hamming candidate pool from it and re-ranks it by exact L2, ``jointembed.knn``;
                pgvector >= 0.7) or ``"binary-ivf"`` (the same bits in an IVFFlat index of
                ``rows / 1000`` lists fixed at its build: about the size of the codes, no
                graph; pgvector >= 0.7). An existing collection's must match.

        Raises:
            ModelMismatchError: ``model_id``, ``dim``, ``storage`` or ``index`` differs from the
                collection's (checked before anything is written).
            DatabaseError: no such collection and ``create`` is false; ``halfvec`` on
                pgvector < 0.7; ``binary`` / ``binary-ivf`` index on pgvector < 0.7.
            ArgumentError: invalid name or dim, or ``model_id``/``dim`` contradicting
                ``bundle`` (also a ValueError).
            ValueError: invalid name, ``create`` without ``model_id``/``dim``, unknown
                storage, or more dimensions than an HNSW index of that storage takes.
        """
        if bundle is not None:
            search.check_bundle(bundle, "collection")
            if model_id is not None and model_id != bundle.model_id or dim is not None and dim != bundle.dim:
                raise ArgumentError(f"model_id/dim ({model_id!r}, {dim!r}) contradict the bundle's "
                                    f"({bundle.model_id!r}, {bundle.dim}); pass one or the other")
            model_id, dim = bundle.model_id, int(bundle.dim)
        if create is None:
            create = bundle is not None
        if not isinstance(name, str) or not 1 <= len(name) <= 200 or "\x00" in name or not search.utf8_ok(name):
            raise ArgumentError(f"collection name must be 1..200 characters without NUL or lone "
                                f"surrogates, got {name!r}")
        if dim is not None:
            dim = search.check_int(dim, "dim", 1, 16000)   # no bool / float / str
        with self.transaction() as conn:
            row = conn.execute(query("collection_get"), {"name": name}).fetchone()
        if row is None:
            if not create:
                raise DatabaseError(f"no collection named {name!r} (index something into it first: "
                                    "`jointembed index image|text ... --collection NAME`)")
            if model_id is None or dim is None:
                raise ValueError(f"creating collection {name!r} needs model_id and dim")
            indexing.check_storage(storage or "vector", dim, self.vector_version)
            indexing.check_index(index or "float", self.vector_version)
            with self.transaction() as conn:
                row = conn.execute(query("collection_create"), {"name": name, "model_id": model_id,
                                                                "dim": int(dim), "storage": storage or "vector"}
                                   ).fetchone()
                if (index or "float") != row[-1] and row[0] is not None:
                    row = conn.execute(query("collection_set_index"), {"name": name, "index": index}).fetchone()
        info = CollectionInfo(*row)
        _check_model(info, model_id, dim)
        if storage is not None and storage != info.storage:
            indexing.check_storage(storage, info.dim)
            raise ModelMismatchError(f"collection {name!r} stores its embeddings as {info.storage}, not {storage}")
        if index is not None and index != info.index:
            indexing.check_index(index)
            raise ModelMismatchError(f"collection {name!r} has a {info.index} search index, not {index}")
        if bundle is not None:  # the model's SQL text encoder (issue 25), once per model id
            from . import text_sql

            with self.connection() as conn:
                text_sql.load_if_possible(conn, bundle)
        return Collection(self, info, bundle=bundle)

    def collections(self) -> list[CollectionInfo]:
        """All collections, by name."""
        with self.transaction() as conn:
            return [CollectionInfo(*r) for r in conn.execute(query("collection_list")).fetchall()]

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and its items table; ``False`` if it did not exist."""
        with self.transaction() as conn:
            return bool(conn.execute(query("collection_drop"), {"name": name}).fetchone()[0])

    def info(self) -> dict:
        """Server, pgvector and schema versions and the collections (JSON-ready)."""
        with self.transaction() as conn:
            server = conn.info.server_version
            schema = conn.execute("SELECT coalesce(pg_catalog.max(version), 0) FROM jointembed.schema_version").fetchone()[0]
        return {
            "server_version": server,
            "pgvector": ".".join(map(str, self.vector_version)),
            "schema_version": schema,
            "collections": [c.name for c in self.collections()],
        }


    # -- attached tables ---------------------------------------------------------------
    def attach(self, table: Any, *, key: str, text: str | None = None, image: str | None = None,
               bundle: Any, image_source: str = "path", image_root: str | None = None,
               schema: str | None = None) -> Any:
        """Keep the embeddings of your own table in sync: side table, queue and triggers
        (the table is never altered; docs/SYNC.md), every existing row enqueued.

        Args:
            table: ``"schema.table"``, ``"table"`` (found on the ``search_path``) or
                ``(schema, table)``; plain names, never SQL (rule:
                :func:`jointembed_pg.search.attached.split_table`).
            key: the unique key column (primary key or unique index on it alone).
            text / image: the columns to embed (at least one).
            bundle: the model the table is embedded with.
            image_source: how the image column is read: ``"path"``, ``"url"`` or ``"bytea"``.
            image_root: base directory of relative image paths (paths must stay inside it).
        Returns:
            an :class:`jointembed_pg.search.attached.Attached` with ``sync()``, ``status()``,
            ``search()``, ``reembed()``, ``detach()``.
        Raises:
            ArgumentError: a bad table argument or no bundle. InputError: neither column,
            an unknown image source. DatabaseError: no such table or column, key not
            unique, already attached (nothing is created then).
        """
        from .attached import Attached

        return Attached.create(self, table, bundle=bundle, key=key, text=text, image=image,
                               image_source=image_source, image_root=image_root, schema=schema)

    def attachment(self, table: Any, *, bundle: Any = None, schema: str | None = None) -> Any:
        """The existing attachment of ``table`` (same naming rule as :meth:`attach`) as an
        :class:`jointembed_pg.search.attached.Attached`; ``bundle`` (needed for ``sync()`` and text
        or image ``search()``) is checked against the table's model here, once.

        Raises:
            DatabaseError: not attached. ModelMismatchError: ``bundle`` is another model.
        """
        from .attached import Attached

        return Attached.open(self, table, bundle=bundle, schema=schema)


_CONNECTION_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_CONNECTION_LOCKS_GUARD = threading.Lock()


def _connection_lock(conn: Any) -> threading.RLock:
    """The one lock of a given connection, whichever Store uses it: a SQLAlchemy
    ``Connection`` shares the lock of the psycopg connection under it."""
    if type(conn).__module__ + "." + type(conn).__name__ == "sqlalchemy.engine.base.Connection":
        try:
            conn = conn.connection.driver_connection
        except Exception:  # closed or invalidated: borrow() reports it on first use
            pass
    try:
        with _CONNECTION_LOCKS_GUARD:
            return _CONNECTION_LOCKS.setdefault(conn, threading.RLock())
    except TypeError:  # not weak-referenceable (not a connection: borrow() refuses it later)
        return threading.RLock()


def _close_pool(pool: Any) -> None:
    """Close a Store's own pool (its finalizer); never from one of the pool's threads."""
    try:
        pool.close()
    except RuntimeError:  # called on a pool thread after all: the workers still stop
        pass


def _check_model(info: CollectionInfo, model_id: str | None, dim: int | None) -> None:
    if model_id is not None and model_id != info.model_id:
        raise ModelMismatchError(f"collection {info.name!r} holds embeddings of model {info.model_id!r}, "
                                 f"not {model_id!r}; use another collection or re-create it")
    if dim is not None and int(dim) != info.dim:
        raise ModelMismatchError(f"collection {info.name!r} stores {info.dim}-dimensional embeddings, not {dim}")


class Collection:
    """One collection: its items table and the operations on it.

    Attributes:
        store: the owning :class:`Store`. info: its :class:`CollectionInfo`.
        bundle: the model bundle it was opened with (``None``: vectors only).
        table_ident: ``psycopg.sql.Identifier("jointembed", "items_<id>")`` for your own SQL.
    """

    def __init__(self, store: Store, info: CollectionInfo, *, bundle: Any = None):
        self.store, self.info = store, info
        #: the model bundle given to :meth:`Store.collection` (checked there), or None
        self.bundle = bundle
        self.table_ident = sql.Identifier("jointembed", info.items_table)
        self.last_builds: list[indexing.BuildReport] = []   # what the last ensure_index built

    name = property(lambda self: self.info.name)
    model_id = property(lambda self: self.info.model_id)
    dim = property(lambda self: self.info.dim)
    storage = property(lambda self: self.info.storage)

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, model_id={self.model_id!r}, dim={self.dim}, storage={self.storage!r})"

    def _q(self, name: str, **idents: sql.Composable) -> sql.Composed:
        return query(name).format(items=self.table_ident, **idents)

    # -- writing ---------------------------------------------------------------------
    def upsert(self, rows: Iterable[Any]) -> int:
        """Insert or update items by ``(modality, key)`` in one transaction; return the count.

        A row is a tuple ``(modality, key, source, text, content_hash, embedding)`` or an
        object with those attributes; ``embedding`` is ``(D,) float32`` (L2 space).
        Rows are COPYed (binary) into a temporary table and merged with one
        ``INSERT ... ON CONFLICT DO UPDATE``; with duplicate keys in a batch the last wins.

        Raises:
            InputError: a row has a bad modality, empty key, or a wrong-shape / non-finite
                embedding (nothing of the batch is written).
        """
        batch = [self._row(r) for r in rows]
        if not batch:
            return 0
        with self.store.transaction() as conn:
            conn.execute(query("stage_create").format(vector=sql.Identifier(self.store.vector_schema, "vector")))
            conn.execute(queries()["stage_clear"])
            with conn.cursor().copy(queries()["stage_copy"]) as copy:
                copy.set_types(_STAGE_TYPES)
                for n, row in enumerate(batch):
                    copy.write_row((n, *row))
            conn.execute(self._q("stage_merge"), {"model_id": self.model_id})
        return len({(r[0], r[1]) for r in batch})

    def _row(self, row: Any) -> tuple:
        if hasattr(row, "embedding") and hasattr(row, "modality"):
            fields = (row.modality, row.key, row.source, row.text, row.content_hash, row.embedding)
        else:
            fields = tuple(row)
            if len(fields) != 6:
                raise InputError(f"row must be (modality, key, source, text, content_hash, embedding), "
                                 f"got {len(fields)} fields")
        modality, key, source, text, content_hash, emb = fields
        if modality not in search.MODALITIES:
            raise InputError(f"item {key!r}: modality must be 'image' or 'text', got {modality!r}")
        if not isinstance(key, str) or not key:
            raise InputError(f"item key must be a non-empty string, got {key!r}")
        if hasattr(emb, "to_numpy"):  # pgvector.Vector
            emb = emb.to_numpy()
        e = np.asarray(emb)
        if e.dtype.kind not in "iuf":  # complex (imaginary part dropped), str ("1" parsed), bool, object
            raise InputError(f"item {key!r}: embedding must hold real numbers, got dtype {e.dtype}")
        with np.errstate(over="ignore"):  # beyond float32's range -> inf, refused below
            e = e.astype(np.float32)
        if e.shape != (self.dim,):
            raise InputError(f"item {key!r}: embedding shape {e.shape}, collection {self.name!r} needs ({self.dim},)")
        if not np.isfinite(e).all():
            raise InputError(f"item {key!r}: embedding contains NaN or infinite values")
        if self.storage == "halfvec" and np.abs(e).max(initial=0.0) > HALFVEC_MAX:
            raise InputError(f"item {key!r}: embedding value above {HALFVEC_MAX:g} does not fit halfvec storage")
        return modality, key, source, text, content_hash, e

    def delete(self, modality: str, keys: Sequence[str]) -> int:
        """Delete items by key; return how many were deleted."""
        with self.store.transaction() as conn:
            return conn.execute(self._q("delete_keys"), {"modality": modality, "keys": list(keys)}).rowcount

    # -- reading ---------------------------------------------------------------------
    def content_hashes(self, modality: str, keys: Sequence[str]) -> dict[str, str | None]:
        """``{key: content_hash}`` for those of ``keys`` already stored (to skip unchanged items)."""
        search.check_target(modality)
        with self.store.transaction() as conn:
            rows = conn.execute(self._q("content_hashes"), {"modality": modality, "keys": list(keys)}).fetchall()
        return dict(rows)

    def existing_keys(self, modality: str, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` already stored for ``modality``."""
        return set(self.content_hashes(modality, keys))

    def count(self, modality: str | None = None) -> int:
        """Number of items (of one modality, or all)."""
        if modality is not None:
            search.check_target(modality)
        with self.store.transaction() as conn:
            return conn.execute(self._q("count"), {"modality": modality}).fetchone()[0]

    def get(self, item_id: int) -> Hit:
        """The item ``item_id`` as a :class:`Hit` (distance 0, embedding included).

        Raises:
            DatabaseError: no such item.
        """
        with self.store.transaction() as conn:
            row = conn.execute(self._q("get_item"), {"je_id": item_id}).fetchone()
        if row is None:
            raise DatabaseError(f"no item {item_id} in collection {self.name!r}")
        return search._hits([row])[0]

    # -- indexing --------------------------------------------------------------------
    def index_name(self, modality: str) -> str:
        """Name of the search index of one modality: ``items_<id>_<modality>_hnsw``,
        ``items_<id>_<modality>_bit_hnsw`` for a ``binary`` search index, or
        ``items_<id>_<modality>_bit_ivf`` for ``binary-ivf`` (the name jointembed.knn looks up)."""
        suffix = {"binary": "bit_hnsw", "binary-ivf": "bit_ivf"}.get(self.info.index, "hnsw")
        return f"{self.info.items_table}_{modality}_{suffix}"

    def ensure_index(self, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION, *,
                     modalities: Sequence[str] = search.MODALITIES,
                     maintenance_work_mem: int | str | None = None, memory_cap: int | str | None = None,
                     progress: bool = False) -> list[str]:
        """Create the partial HNSW indexes (L2, or Hamming on the sign bits for a ``binary`` collection) that do not exist yet, without blocking writers.

        Built with ``CREATE INDEX CONCURRENTLY`` when the Store's connection is idle (see
        :func:`jointembed_pg.search.indexing.ensure_hnsw`): inserts, updates and deletes go on
        during the build; an INVALID index left by an interrupted build is dropped and
        rebuilt. A valid existing index is left as it is (whatever its ``m`` /
        ``ef_construction``), found by a catalog lookup without locking the table: calling
        this again is a fast no-op. What each build did is in :attr:`last_builds`. An existing
        ``binary-ivf`` index whose lists the collection has outgrown (the rule now gives at
        least 4x its lists: :func:`jointembed_pg.search.indexing.ivf_outgrown`) is left too,
        with a WARNING that says so and how to rebuild it.

        Args:
            maintenance_work_mem: exact value for the builds (``"2GB"`` or bytes); default:
                what the graph needs (:func:`jointembed_pg.search.indexing.hnsw_graph_bytes`),
                at most ``memory_cap``, never below the server's value.
            memory_cap: default ``$JOINTEMBED_INDEX_MEMORY``, else 1 GB.
            progress: tqdm bar on stderr (else progress is logged every 10 s at INFO).
        Returns:
            Names of the indexes created by this call.
        Raises:
            ValueError: ``m`` not in 2..100, ``ef_construction`` not in ``2*m``..1000, or a
                bad memory size.
            DatabaseError: the build failed (the next call repairs what it left).
        """
        if not 2 <= m <= 100 or not 2 * m <= ef_construction <= 1000:
            raise ValueError(f"need 2 <= m <= 100 and 2*m <= ef_construction <= 1000, got m={m}, "
                             f"ef_construction={ef_construction}")
        for modality in modalities:
            search.check_target(modality)
        self.last_builds = []
        with self.store.connection() as conn:
            try:
                op_schema = self.store.vector_schema
                for modality in modalities:
                    spec = indexing.IndexSpec("jointembed", self.info.items_table, self.index_name(modality),
                                              modality, self.storage, self.dim, int(m), int(ef_construction),
                                              op_schema, binary=self.info.index != "float",
                                              method=indexing.METHOD[self.info.index])
                    built = indexing.ensure_hnsw(conn, spec, maintenance_work_mem=maintenance_work_mem,
                                                 cap=memory_cap, progress=progress)
                    if built is not None:
                        self.last_builds.append(built)
                    elif spec.method == "ivfflat" and (why := indexing.ivf_outgrown(conn, spec)):
                        log.warning("collection %r: %s", self.name, why)
            except psycopg.Error as e:
                raise DatabaseError(f"indexing collection {self.name!r}: {type(e).__name__}: {db.one_line(e)}") from e
        return [b.name for b in self.last_builds]

    # -- searching -------------------------------------------------------------------
    def search_vector(self, vector: Any, *, target: str | None = "image", k: int = 10,
                      ef_search: int | None = None, exact: bool = False, where: Where = None,
                      params: Mapping[str, Any] | None = None, with_embedding: bool = False) -> list[Hit]:
        """The ``k`` items nearest to ``vector`` by L2 distance, closest first.

        Args:
            vector: ``(D,) float32`` query embedding (same model as the collection).
            target: ``"image"``, ``"text"`` or ``None`` (both modalities).
            k: number of results (fewer only if fewer items match).
            ef_search: starting HNSW ``hnsw.ef_search`` (1..1000; default the session's,
                40; always at least ``k``, raised further while rows are missing).
            exact: exact scan, no index (reference results, small collections).
            where: filter, see :func:`jointembed_pg.search.knn.compose_where`; the result
                still has exactly ``k`` rows when at least ``k`` items match (the rule
                is SQL's ``jointembed.knn``, see :mod:`jointembed_pg.search.knn`).
            params: values of the filter's ``%(name)s`` placeholders (types: see
                :func:`jointembed_pg.search.knn.filter_for_knn`).
            with_embedding: also return each hit's embedding.

        Raises:
            ModelMismatchError: ``vector`` has the wrong dimension.
            InputError: ``vector`` is not 1-D or not finite. ValueError: bad k/target/ef_search.
        """
        q = search.check_vector(vector, self.dim)
        targets = search.check_target(target)
        with self.store.transaction() as conn:
            return search.run(conn, self.table_ident, q, targets=targets, k=k, ef_search=ef_search,
                              exact=exact, where=where, params=params, with_embedding=with_embedding,
                              exact_below=self.store.exact_below)

    def more_like_this(self, item_id: int, *, target: str | None = None, k: int = 10,
                       **options: Any) -> list[Hit]:
        """The ``k`` items nearest to the stored item ``item_id`` (itself excluded).

        ``target=None`` searches the item's own modality. Other options as :meth:`search_vector`.

        Raises:
            DatabaseError: no such item.
        """
        item = self.get(item_id)
        hits = self.search_vector(item.embedding, target=target or item.modality, k=k + 1, **options)
        return [h for h in hits if h.id != item_id][:k]

    def search_text(self, bundle: Any, text: str, *, target: str | None = "image", k: int = 10,
                    **options: Any) -> list[Hit]:
        """Embed ``text`` with ``bundle`` and search (default: text → image).

        Raises:
            ModelMismatchError: the bundle's model is not the collection's.
            InputError: empty text.
        """
        self._check_bundle(bundle)
        return self.search_vector(bundle.encode_texts([text])[0], target=target, k=k, **options)

    def search_image(self, bundle: Any, source: Any, *, target: str | None = "text", k: int = 10,
                     **options: Any) -> list[Hit]:
        """Embed one image (path, URL or bytes, as the bundle accepts) and search (default: image → text)."""
        self._check_bundle(bundle)
        return self.search_vector(bundle.encode_images([source])[0], target=target, k=k, **options)

    def _check_bundle(self, bundle: Any) -> None:
        _check_model(self.info, bundle.model_id, bundle.dim)

    # -- the high-level API: a collection opened with a bundle --------------------------
    def _need_bundle(self, what: str) -> Any:
        if self.bundle is None:
            raise ArgumentError(f"{what} needs a model bundle: open the collection with "
                                f"store.collection({self.name!r}, bundle=Bundle.load(...))")
        return self.bundle

    def add_images(self, sources: Any, keys: Sequence[str] | None = None, *, batch_size: int | None = None,
                   decode_threads: int = 2, progress: bool = False, limits: Any = None,
                   index: bool = True) -> Any:
        """Embed image files into the collection with its bundle (the ingest pipeline of
        ``jointembed index image``: decoder processes under per-item limits, content hashes
        skip unchanged files, one transaction per batch).

        Args:
            sources: image paths (``str`` / ``pathlib.Path``; one path alone is a list of
                one). Without ``keys`` a directory is scanned recursively for image files,
                as by the CLI, and each item's key is its resolved absolute path.
            keys: one key per source (``str``, at most 2,048 UTF-8 bytes), instead of the
                paths; each source is then one file (a directory fails as an item).
            batch_size: images per encoder batch and write (default 32).
            decode_threads: decoder processes (and threads feeding them).
            limits: per-item limits (default :meth:`jointembed_pg.limits.Limits.from_env`).
            index: build the collection's HNSW indexes after writing, unless they exist
                (:meth:`ensure_index`).
        Returns:
            :class:`jointembed_pg.ingest.pipeline.IngestReport`: ``written``, ``unchanged`` and
            ``failed`` (``[Failure(key, error)]``): a missing, unreadable, non-regular
            (FIFO, device, directory with ``keys``), oversized, corrupt or hanging file, a
            source that is not a path, an unstorable key -- each fails alone, with its
            reason; the rest is stored.
        Raises:
            ArgumentError: no bundle, or ``keys`` of another length than ``sources``.
            DatabaseError: a write failed (batches already committed stay; rerun to resume).
        """
        from ..ingest import pipeline as ingest

        bundle = self._need_bundle("add_images")
        records, ignored = _image_records(sources, keys)
        report = ingest.index_images(self, bundle, records, batch_size=batch_size or ingest.IMAGE_BATCH,
                                     decode_threads=decode_threads, progress=progress, ignored=ignored,
                                     limits=limits)
        if index and report.written:
            self.ensure_index()
        return report

    def add_texts(self, texts: Any, keys: Sequence[str] | None = None, *, batch_size: int | None = None,
                  progress: bool = False, limits: Any = None, index: bool = True) -> Any:
        """Embed captions into the collection with its bundle (the pipeline of
        ``jointembed index text``).

        Args:
            texts: captions (``str``; one ``str`` alone is a list of one).
            keys: one id per text (``str``); default: ``"sha256:<hex>"`` of the text's UTF-8
                bytes, so adding the same text again is the same item (identical texts in
                one call are one item).
            batch_size: captions per encoder batch and write (default 256).
            index: build the HNSW indexes after writing, unless they exist.
        Returns:
            :class:`jointembed_pg.ingest.pipeline.IngestReport`; each text that is not a ``str``,
            blank, holds a NUL, is over the length limit, consists only of word pieces the
            model does not know, or repeats a key, is in ``failed`` with its reason; the
            rest is stored.
        Raises:
            ArgumentError: no bundle, or ``keys`` of another length than ``texts``.
            DatabaseError: a write failed.
        """
        from ..ingest import pipeline as ingest

        bundle = self._need_bundle("add_texts")
        records = _text_records(texts, keys)
        report = ingest.index_texts(self, bundle, records, batch_size=batch_size or ingest.TEXT_BATCH,
                                    progress=progress, limits=limits)
        if index and report.written:
            self.ensure_index()
        return report

    def search(self, query: Any, k: int = 10, target: Any = search.CROSS_MODAL, *, image: bool | None = None,
               text_encoder: str = "onnx", **options: Any) -> list[Hit]:
        """The ``k`` items nearest to a text, an image or a vector (L2 distance, closest first).

        What ``query`` is follows its Python type, never the file system
        (:func:`jointembed_pg.search.knn.query_kind`): a ``str`` is a text (a caption is never
        taken for a file name), unless ``image=True`` makes it the path of an image; a
        ``pathlib.Path`` or ``bytes`` is an image; a ``numpy`` ``(D,) float32`` array is a
        query vector. Texts and images are embedded with the collection's bundle.

        Args:
            k: number of hits (fewer only if fewer items match).
            target: ``"image"``, ``"text"`` or ``None`` (both); default: the other kind
                than the query's (a text searches images, an image texts, a vector images).
            image: ``True``: ``query`` is an image (a ``str`` is its path); ``False``: it
                must be a text.
            text_encoder: ``"onnx"`` (the bundle's text tower) or ``"sql"``: a text query is
                embedded in the database by ``jointembed.embed_text`` (the static text
                encoder, docs/SQL.md; no bundle needed).
            options: as :meth:`search_vector` (``ef_search``, ``exact``, ``where``,
                ``params``, ``with_embedding``).
        Returns:
            ``list[Hit]``, the same as :meth:`search_vector` with the embedded query.
        Raises:
            ArgumentError: a query of another type, or a text/image query without a bundle.
            InputError: empty/unreadable text, an unreadable image (its path named).
            ModelMismatchError: a vector of another dimension.
            ValueError: bad ``k`` / ``target`` / options.
        """
        if text_encoder == "sql" and isinstance(query, str) and not image:
            from . import text_sql

            with self.store.connection() as conn:
                vec, kind = text_sql.embed_checked(conn, self.name, query), "text"
        elif text_encoder not in ("onnx", "sql"):
            raise ArgumentError(f"text_encoder must be 'onnx' or 'sql', got {text_encoder!r}")
        else:
            vec, kind = search.embed_query(self.bundle, query, self.dim, image=image)
        return self.search_vector(vec, target=search.resolve_target(target, kind), k=k, **options)


def _image_records(sources: Any, keys: Sequence[Any] | None) -> tuple[list, list]:
    """``(records, ignored)`` for :meth:`Collection.add_images`: a
    :class:`~jointembed_pg.ingest.readers.PathRecord` per item, with ``error`` set for a source
    that is not a usable path (so it fails alone)."""
    import os

    from ..ingest.readers import PathRecord, printable, scan_images

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
        keys = [keys] if isinstance(keys, str) else keys
    elif isinstance(sources, (bytes, bytearray, memoryview)):
        raise ArgumentError("add_images takes file paths (str or pathlib.Path), not image bytes")
    sources = list(sources)
    if keys is not None:
        keys = list(keys)
        if len(keys) != len(sources):
            raise ArgumentError(f"add_images: {len(keys)} keys for {len(sources)} sources")

    def problem(i: int, src: Any) -> str | None:
        if not isinstance(src, (str, os.PathLike)):
            return f"images[{i}]: expected a file path (str or pathlib.Path), got {type(src).__name__}"
        path = os.fspath(src)
        if not isinstance(path, str):
            return f"images[{i}]: expected a text path, got {type(path).__name__}"
        if not path or "\x00" in path:
            return f"images[{i}]: {printable(path, 200)!r}: an empty path or one with a NUL byte"
        return None

    records, paths = [], []
    for i, src in enumerate(sources):
        err = problem(i, src)
        key = keys[i] if keys is not None else None
        if err is not None:
            records.append(PathRecord(key if isinstance(key, str) and key else f"images[{i}]", Path(), err))
        elif keys is None:
            paths.append(os.fspath(src))
        else:
            records.append(PathRecord(key, Path(os.fspath(src)).expanduser().absolute()))
    if keys is not None:
        return records, []
    scan = scan_images(paths)
    return records + scan.records, scan.ignored


def _text_records(texts: Any, keys: Sequence[Any] | None) -> list:
    """:class:`~jointembed_pg.ingest.readers.TextRecord` per text for :meth:`Collection.add_texts`
    (texts that are no ``str`` keep a positional key, ``texts[i]``, and fail in ingest)."""
    from ..ingest.pipeline import sha256
    from ..ingest.readers import TextRecord

    if isinstance(texts, str):
        texts = [texts]
        keys = [keys] if isinstance(keys, str) else keys
    texts = list(texts)
    if keys is not None:
        keys = list(keys)
        if len(keys) != len(texts):
            raise ArgumentError(f"add_texts: {len(keys)} keys for {len(texts)} texts")
        return [TextRecord(k, t) for k, t in zip(keys, texts)]
    out, seen = [], set()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            out.append(TextRecord(f"texts[{i}]", t))
            continue
        key = "sha256:" + sha256(t.encode("utf-8", "surrogatepass"))
        if key not in seen:  # the same text twice is one item
            seen.add(key)
            out.append(TextRecord(key, t))
    return out
