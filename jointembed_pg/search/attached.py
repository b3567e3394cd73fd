"""An attached table as one object: ``store.attach("shop.products", ...)`` -> :class:`Attached`.

>>> products = store.attach("shop.products", key="id", text="title", image="image_path",
...                         image_root="/srv/photos", bundle=Bundle.load())
>>> products.sync()                       # drain the queue once (jointembed sync)
>>> products.status()["done"]
>>> products.search("a red bicycle", k=5)  # [(key, distance), ...], key with its own type
>>> products.reembed(Bundle.load("default-int8"))
>>> products.detach()

A thin layer: every method calls the one implementation of its step --
:mod:`jointembed_pg.sync` (attach, status, search, detach),
:func:`jointembed_pg.sync.drain.sync_table` (sync) and
:func:`jointembed_pg.sync.reembed.reembed` -- on a connection of the Store.

**Table names** are plain names, as stored in the catalog (never parsed as SQL, no
quoting): ``("shop", "products")`` names schema and table exactly, whatever characters
they hold; a string ``"shop.products"`` is split at its one dot; ``"products"`` (no dot)
is looked up on the ``search_path``; with ``schema=`` given, the string is the table name
as is (dots included). A string with several dots and no ``schema=`` is refused.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import psycopg

from .. import db
from . import knn as search
from . import text_sql
from ..sync import catalog as sync, drain as sync_worker, reembed as sync_reembed
from ..errors import ArgumentError, DatabaseError


def split_table(table: Any, schema: str | None = None) -> tuple[str | None, str]:
    """``(schema or None, table)`` from a table argument (rule: module docstring).

    Raises:
        ArgumentError: not a str or a 2-tuple of str, empty names, several dots in a
            string without ``schema=``, or a tuple together with ``schema=``.
    """
    for part in (table if isinstance(table, tuple) else (table,)) + (schema,):
        if isinstance(part, str) and ("\x00" in part or not search.utf8_ok(part)):
            raise ArgumentError(f"table and schema names hold no NUL or lone surrogates, got {part!r}")
    if isinstance(table, tuple):
        if schema is not None or len(table) != 2 or not all(isinstance(p, str) and p for p in table):
            raise ArgumentError(f"a table tuple is (schema, table) of two non-empty str, without schema=; "
                                f"got {table!r}")
        return table[0], table[1]
    if not isinstance(table, str) or not table:
        raise ArgumentError(f"table must be a non-empty str or a (schema, table) tuple, got {table!r}")
    if schema is not None:
        if not isinstance(schema, str) or not schema:
            raise ArgumentError(f"schema must be a non-empty str, got {schema!r}")
        return schema, table
    parts = table.split(".")
    if len(parts) == 1:
        return None, table
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ArgumentError(f"table {table!r}: write 'schema.table' with one dot, or pass (schema, table) or "
                        "schema=... for names that contain dots")


@contextlib.contextmanager
def _db_errors() -> Iterator[None]:
    """psycopg errors the sync functions let through -> one-line :class:`DatabaseError`."""
    try:
        yield
    except psycopg.Error as e:
        raise DatabaseError(f"{type(e).__name__}: {db.one_line(e)}") from e


class Attached:
    """A user table whose embeddings jointembed keeps in sync (see docs/SYNC.md).

    Made by :meth:`jointembed_pg.search.store.Store.attach` (new) or
    :meth:`~jointembed_pg.search.store.Store.attachment` (existing); the model is checked once,
    there. Each method runs on a connection of the Store (its pool, engine or connection).

    Attributes:
        store: the :class:`~jointembed_pg.search.store.Store`.
        schema / table: the table's schema and name (plain names).
        bundle: the model bundle used by :meth:`sync` and text/image :meth:`search`
            (``None``: opened without one; vector search, status and detach still work).
    """

    def __init__(self, store: Any, attachment: sync.Attachment, bundle: Any = None):
        self.store = store
        self.schema, self.table = attachment.schema_name, attachment.table_name
        self.bundle = bundle
        self._qualified = attachment.qualified

    def __repr__(self) -> str:
        model = f", model_id={self.bundle.model_id!r}" if self.bundle is not None else ""
        return f"Attached({self._qualified!r}{model})"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        with _db_errors(), self.store.connection() as conn:
            yield conn

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, store: Any, table: Any, *, bundle: Any, key: str, text: str | None = None,
               image: str | None = None, image_source: str = "path", image_root: str | None = None,
               schema: str | None = None) -> "Attached":
        """:func:`jointembed_pg.sync.catalog.attach` (side table, queue, triggers; every row enqueued).

        Raises:
            ArgumentError: a bad table argument. InputError: neither ``text`` nor
            ``image``, an unknown image source. DatabaseError: no such table/column, key
            not unique, already attached (nothing is created then).
        """
        schema, name = split_table(table, schema)
        search.check_bundle(bundle, "attach (the model the table is embedded with)")
        with _db_errors(), store.connection() as conn:
            att = sync.attach(conn, name, bundle, key=key, image_column=image, text_column=text,
                              image_source=image_source, image_root=image_root, schema=schema)
            text_sql.load_if_possible(conn, bundle)   # jointembed.search_attached_text
        return cls(store, att, bundle)

    @classmethod
    def open(cls, store: Any, table: Any, *, bundle: Any = None, schema: str | None = None) -> "Attached":
        """The existing attachment of ``table``; with ``bundle``, checks that it is the
        table's model (or the one a reembed is building).

        Raises:
            DatabaseError: not attached (or attached in several schemas: name the schema).
            ModelMismatchError: ``bundle`` is not a model of the table.
        """
        schema, name = split_table(table, schema)
        if bundle is not None:
            search.check_bundle(bundle, "attachment")
        with _db_errors(), store.connection() as conn:
            att = sync.find(conn, name, schema)
            if bundle is not None:
                sync.version_for(conn, att, bundle)
                text_sql.load_if_possible(conn, bundle)
        return cls(store, att, bundle)

    # -- operations --------------------------------------------------------------------
    @property
    def attachment(self) -> sync.Attachment:
        """The catalog row, read now. Raises DatabaseError once detached."""
        with self._conn() as conn:
            return sync.find(conn, self.table, self.schema)

    def _need_bundle(self, what: str) -> Any:
        if self.bundle is None:
            raise ArgumentError(f"{what} needs a model bundle: store.attachment({self._qualified!r}, "
                                "bundle=Bundle.load(...))")
        return self.bundle

    def sync(self, *, batch_size: int = 32, retry_failed: bool = False, rescan: bool = False,
             progress: bool = False, cfg: sync_worker.SyncConfig | None = None) -> sync_worker.SyncReport:
        """Drain the table's queue once with the bundle (``jointembed sync``):
        :func:`jointembed_pg.sync.drain.sync_table` on an autocommit READ COMMITTED
        connection of the Store.

        A row that fails (NULL, missing or hostile file, bad image, unreadable text) is
        recorded with its reason and retried later with backoff; the rest is written.

        Args:
            cfg: all knobs (:class:`~jointembed_pg.sync.drain.SyncConfig`); otherwise
                ``batch_size`` with the defaults.
            retry_failed: first make given-up rows ready again. rescan: first enqueue every row.
        Returns:
            :class:`~jointembed_pg.sync.drain.SyncReport` (``written``, ``unchanged``,
            ``gone``, ``failed`` as ``[{key, modality, error}]``).
        Raises:
            ArgumentError: no bundle. ModelMismatchError: the bundle is not the table's
            model. DatabaseError: not attached, or the Store's connection is in a transaction.
        """
        bundle = self._need_bundle("sync")
        cfg = cfg or sync_worker.SyncConfig(batch_size=batch_size)
        with _db_errors(), self.store.worker_connection() as conn:
            return sync_worker.sync_table(conn, self.table, bundle, schema=self.schema, cfg=cfg,
                                          progress=progress, retry_failed=retry_failed, rescan=rescan)

    def status(self) -> dict:
        """Queue and embedding counts and the latest errors (:func:`jointembed_pg.sync.catalog.status`):
        ``pending``, ``done``, ``failed``, ``gave_up``, ``missing``, ``errors``, ``building``, ..."""
        with self._conn() as conn:
            return sync.status(conn, self.table, self.schema)[0]

    def search(self, query: Any, k: int = 10, target: Any = search.CROSS_MODAL, *,
               image: bool | None = None) -> list[tuple[Any, float]]:
        """The ``k`` rows nearest to a text, an image or a vector, from the active model's
        embeddings (:func:`jointembed_pg.sync.catalog.search_attached`).

        ``query`` follows the rule of :meth:`jointembed_pg.search.store.Collection.search` (a
        ``str`` is a text unless ``image=True``; ``Path`` / ``bytes`` an image; a numpy
        ``(D,) float32`` array a vector); ``target``: ``"image"``, ``"text"``, ``None``
        (both: a row may come twice), default the other kind than the query's.

        Returns:
            ``[(key, distance), ...]`` nearest first; ``key`` has the key column's own
            type (e.g. ``int``), ``distance`` is L2 (float).
        Raises:
            ArgumentError / InputError: as ``Collection.search``. ModelMismatchError: the
            bundle is not the active model (during a reembed, until the switch), or a
            vector of another dimension. DatabaseError: not attached.
        """
        k = search.check_int(k, "k")
        with self._conn() as conn:
            dim = self.bundle.dim if self.bundle is not None else \
                sync.active_version(conn, sync.find(conn, self.table, self.schema)).dim
        vec, kind = search.embed_query(self.bundle, query, int(dim), image=image)
        with self._conn() as conn:
            return sync.search_attached(conn, self.table, vec, k, search.resolve_target(target, kind),
                                        schema=self.schema,
                                        model_id=self.bundle.model_id if self.bundle is not None else None)

    def reembed(self, bundle: Any, *, batch_size: int = 32, progress: bool = False,
                cfg: sync_worker.SyncConfig | None = None, max_failed: int | str = 0) -> sync_reembed.ReembedReport:
        """Embed the table with ``bundle`` beside the current model, then switch searches
        to it atomically (:func:`jointembed_pg.sync.reembed.reembed`); this object then
        uses ``bundle``. A new model that failed is not switched to: ``max_failed`` rows
        (a count, or ``"5%"`` of the rows the old model has embedded) may fail, default 0.

        Returns:
            :class:`~jointembed_pg.sync.reembed.ReembedReport` (``switched`` False when the
            table already used this model).
        Raises:
            ReembedRefused: the new model failed beyond ``max_failed`` (a DatabaseError):
            searches and this object keep the old model; rerun to retry the failed rows.
            ArgumentError: a bad ``max_failed``.
            DatabaseError: not attached, another model's build in progress, or the new
            embeddings still incomplete after the wait (rerun to resume).
        """
        search.check_bundle(bundle, "reembed")
        cfg = cfg or sync_worker.SyncConfig(batch_size=batch_size)
        with _db_errors(), self.store.worker_connection() as conn:
            report = sync_reembed.reembed(conn, self.table, bundle, schema=self.schema, cfg=cfg,
                                          progress=progress, max_failed=max_failed)
        self.bundle = bundle
        return report

    def detach(self) -> sync.Attachment:
        """Remove triggers, queue, side tables and catalog rows (:func:`jointembed_pg.sync.catalog.detach`);
        the user's table is left as it was. Returns the removed catalog row.

        Raises:
            DatabaseError: not attached (any more).
        """
        with self._conn() as conn:
            return sync.detach(conn, self.table, self.schema)
