"""Helpers of the attached-table tests (test_sync*.py); holds no tests itself.

* a user-style table ``photos(id int primary key, caption text, image_path text, likes int)``
  filled with real Flickr8K rows (first caption of each image, image path relative to
  the Flickr8K ``images/`` directory);
* :class:`Counting`: wraps a bundle and counts what it encodes (to prove each row is
  embedded once);
* :class:`Projected`: a second "model" of another dimension and model id, made from the
  real bundle by a fixed random projection (so switching models needs no second export);
* :func:`catalog_snapshot`: what attach/detach could have touched in the user's schema;
* :class:`LogLines`: a ``JsonLog`` stream that keeps the worker's log lines.
"""
from __future__ import annotations

import functools
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql


@functools.lru_cache(maxsize=2)
def flickr_rows(data_dir: str, n: int) -> list[tuple[int, str, str]]:
    """``[(id, caption, image file name)]`` for the first ``n`` Flickr8K images on disk.

    Captions get `` #id`` appended so that every one is unique (counting relies on it).
    """
    root = Path(data_dir)
    images = root / "images"
    rows, seen = [], set()
    with open(root / "Flickr8k.token.txt", encoding="utf-8") as f:
        for line in f:
            name, _, caption = line.rstrip("\n").partition("\t")
            image = name.split("#")[0]
            if image in seen or not (images / image).is_file():
                continue
            seen.add(image)
            rows.append((len(rows) + 1, f"{caption.strip()} #{len(rows) + 1}", image))
            if len(rows) == n:
                break
    assert len(rows) == n, f"only {len(rows)} Flickr8K images found in {images}"
    return rows


def make_photos(conn: psycopg.Connection, rows, *, schema: str = "public", table: str = "photos",
                cols=("id", "caption", "image_path", "likes")) -> sql.Composed:
    """Create ``schema.table`` with ``cols`` (int key, text, text, int) and insert ``rows``.

    Returns the table's quoted name for further SQL.
    """
    name = sql.Identifier(schema, table)
    idc, cap, img, likes = (sql.Identifier(c) for c in cols)
    if schema != "public":
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text, {} text, {} int NOT NULL DEFAULT 0)")
                 .format(name, idc, cap, img, likes))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} ({}, {}, {}) VALUES (%s, %s, %s)").format(name, idc, cap, img),
                        list(rows))
    return name


class LogLines:
    """A JsonLog stream collecting the lines (thread-safe through JsonLog's lock)."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, s):
        self.lines.extend(x for x in s.splitlines() if x)

    def flush(self):
        pass


class Counting:
    """A bundle wrapper that counts encoded texts (by text) and images (in total)."""

    def __init__(self, inner):
        self.inner = inner
        self.texts: Counter[str] = Counter()
        self.images = 0
        self._lock = threading.Lock()

    model_id = property(lambda self: self.inner.model_id)
    dim = property(lambda self: self.inner.dim)
    image_spec = property(lambda self: self.inner.image_spec)

    def encode_texts(self, texts):
        with self._lock:
            self.texts.update(texts)
        return self.inner.encode_texts(texts)

    def encode_pixels(self, pixels):
        with self._lock:
            self.images += len(pixels)
        return self.inner.encode_pixels(pixels)


class Projected:
    """Another model: the real embeddings times a fixed random ``(D, dim)`` matrix."""

    def __init__(self, inner, dim: int, model_id: str, seed: int = 7):
        self.inner, self.dim, self.model_id = inner, dim, model_id
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((inner.dim, dim)) / np.sqrt(inner.dim)).astype(np.float32)

    image_spec = property(lambda self: self.inner.image_spec)

    def encode_texts(self, texts):
        return np.asarray(self.inner.encode_texts(texts), np.float32) @ self.w

    def encode_pixels(self, pixels):
        return np.asarray(self.inner.encode_pixels(pixels), np.float32) @ self.w


_SNAPSHOT = {
    # pg_class: everything but statistics (reltuples, relpages, ...) and relhastriggers,
    # a hint PostgreSQL leaves set after DROP TRIGGER until the next VACUUM/ANALYZE.
    "class": """SELECT c.relname, c.relkind, c.relnatts, c.relowner, c.relacl::text, c.reloptions::text,
                       c.relpersistence, c.relhasindex, c.relhasrules, c.relrowsecurity, c.relreplident,
                       c.relfilenode, c.relchecks
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %(s)s ORDER BY c.relname""",
    "trigger": """SELECT c.relname, t.tgname, t.tgtype, t.tgenabled, t.tgfoid::regproc::text
                  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "proc": """SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc)
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "attribute": """SELECT c.relname, a.attname, a.atttypid, a.attnum, a.attnotnull
                    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %(s)s AND a.attnum > 0 ORDER BY 1, 4""",
    "constraint": """SELECT conname, contype, pg_get_constraintdef(o.oid)
                     FROM pg_constraint o JOIN pg_namespace n ON n.oid = o.connamespace
                     WHERE n.nspname = %(s)s ORDER BY 1""",
}


def catalog_snapshot(conn: psycopg.Connection, schema: str) -> dict:
    """pg_class / pg_trigger / pg_proc / pg_attribute / pg_constraint rows of ``schema``."""
    return {k: conn.execute(q, {"s": schema}).fetchall() for k, q in _SNAPSHOT.items()}


def table_digest(conn: psycopg.Connection, name: sql.Composed) -> tuple:
    """(row count, md5 of every row in key order, xmin list): the data and whether rows were rewritten."""
    return conn.execute(sql.SQL("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)), "
                                "string_agg(t.xmin::text, ',' ORDER BY t::text) FROM {} t").format(name)).fetchone()


def queue(conn: psycopg.Connection, attachment_id: int) -> list[tuple]:
    """``[(key text, modality, version)]`` of an attachment's queue, sorted."""
    return conn.execute(sql.SQL("SELECT key::text, modality, version FROM {} ORDER BY 1, 2, 3").format(
        sql.Identifier("jointembed", f"a{attachment_id}_queue"))).fetchall()


def side_rows(conn: psycopg.Connection, attachment_id: int, version: int = 1) -> dict:
    """``{(key text, modality): (content_hash, model_id, embedding)}`` of one side table."""
    rows = conn.execute(sql.SQL("SELECT key::text, modality, content_hash, model_id, embedding FROM {}").format(
        sql.Identifier("jointembed", f"a{attachment_id}_v{version}"))).fetchall()
    return {(k, m): (h, mid, np.asarray(e.to_numpy() if hasattr(e, "to_numpy") else e, np.float32))
            for k, m, h, mid, e in rows}
