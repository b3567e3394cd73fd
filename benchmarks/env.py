"""What a run needs: the model bundle, Flickr8K, and a PostgreSQL (embedded by default)."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from jointembed_pg import db, paths
from jointembed_pg.ingest import flickr8k
from jointembed_pg.model.bundle import Bundle
from jointembed_pg.search.store import Store

from .config import TEST_BUNDLE


def report_parser(module: str, doc: str, out: Path) -> argparse.ArgumentParser:
    """The command line of a benchmark that writes one markdown report: ``python -m
    benchmarks.<module>`` (description: the first line of ``doc``) with ``--dsn`` and
    ``--out`` (default ``out``); the caller adds its own options."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n")[0])
    ap.add_argument("--dsn", default=None, help="PostgreSQL to use (default: a throw-away embedded server)")
    ap.add_argument("--out", type=Path, default=out, help=f"also write the markdown report here (default {out})")
    return ap


def publish(md: str, out: Path | None) -> int:
    """Print the markdown report ``md`` and write it to ``out`` when set; the exit status (0)."""
    print(md)
    if out:
        out.write_text(md)
    return 0


class Unavailable(RuntimeError):
    """A prerequisite (bundle, data, server) is missing; the message says which and why."""


def resolve_bundle(path: Path | None) -> Path:
    """``path`` if given; else the tests' bundle, built with the exporter when not current.

    Raises:
        Unavailable: the exporter or the committed weights are missing.
    """
    if path is not None:
        return Path(path)
    try:
        from jointembed_export.build import build_default_bundle, bundle_is_current
    except ImportError as e:
        if (TEST_BUNDLE / "manifest.json").is_file():
            return TEST_BUNDLE
        raise Unavailable(f"no bundle at {TEST_BUNDLE} and the exporter cannot be imported ({e})") from e
    if not bundle_is_current(TEST_BUNDLE):
        if TEST_BUNDLE.exists():
            shutil.rmtree(TEST_BUNDLE)
        try:
            build_default_bundle(TEST_BUNDLE)
        except Exception as e:  # noqa: BLE001 - exporter failures become a skip reason
            raise Unavailable(f"cannot build the benchmark bundle at {TEST_BUNDLE}: {e}") from e
    return TEST_BUNDLE


def flickr8k_dir(path: Path | None) -> Path:
    """The Flickr8K directory (read in place). Raises Unavailable when absent."""
    d = Path(path) if path is not None else paths.default_data_dir()
    if d is None or not (Path(d) / flickr8k.TOKEN_FILE).is_file():
        raise Unavailable(f"Flickr8K not found at {d} (pass --data-dir or set JOINTEMBED_DATA_DIR)")
    return Path(d)


@dataclass
class Database:
    """A PostgreSQL for the run: ``dsn`` given, or a throw-away embedded cluster.

    Collections made through :meth:`collection` get a per-run prefix and are dropped by
    :meth:`close`, so ``--dsn`` runs leave nothing behind.
    """

    dsn: str
    _server: object | None = None
    _tmp: Path | None = None
    prefix: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}_")
    _store: Store | None = None
    _conn: psycopg.Connection | None = None
    _made: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, dsn: str | None) -> "Database":
        if dsn:
            return cls(dsn)
        from jointembed_pg.server.embedded import EmbeddedServer

        tmp = Path(tempfile.mkdtemp(prefix="jointembed-bench-pg-"))
        if os.geteuid() == 0:
            os.chmod(tmp, 0o711)  # our own temp dir: the server's OS user must traverse it
        srv = EmbeddedServer(tmp / "pgdata")
        return cls(srv.start(hold=True), srv, tmp)

    @property
    def conn(self) -> psycopg.Connection:
        """The run's autocommit connection (pgvector registered, schema migrated)."""
        if self._conn is None:
            self._conn = db.connect(self.dsn, autocommit=True)
        return self._conn

    @property
    def store(self) -> Store:
        """A :class:`Store` over :attr:`conn` (session settings made there apply to it)."""
        if self._store is None:
            self._store = Store(self.conn)
        return self._store

    def collection(self, name: str, bundle: Bundle):
        """A fresh collection ``<prefix><name>`` for ``bundle``'s model."""
        full = self.prefix + name
        self.store.drop_collection(full)
        self._made.append(full)
        return self.store.collection(full, model_id=bundle.model_id, dim=bundle.dim, create=True)

    def drop(self, coll) -> None:
        """Drop a collection made by :meth:`collection` (frees disk between sections)."""
        self.store.drop_collection(coll.name)
        if coll.name in self._made:
            self._made.remove(coll.name)

    def close(self) -> None:
        """Drop this run's collections; stop and delete a throw-away cluster."""
        try:
            if self._conn is not None and not self._conn.closed:
                for name in self._made:
                    self.store.drop_collection(name)
                self._conn.close()
        finally:
            if self._server is not None:
                self._server.stop()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
