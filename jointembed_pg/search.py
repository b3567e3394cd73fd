"""Nearest-neighbour queries over one collection's items table (L2 distance, pgvector).

Strategy for one target modality (``image`` or ``text``), all in the caller's transaction:

* ``exact=True``: ``ORDER BY l2_distance(embedding, q)``. A function call, unlike the
  ``<->`` operator, cannot be served by the HNSW index, so this is a true exact scan.
* Filtered (``where`` given): first a probe reads at most ``exact_below + 1`` matching
  rows; if that is all of them, their exact top k is the answer (cheap and exact).
  Otherwise the HNSW index is scanned with ``hnsw.ef_search`` raised step by step up
  to 1000 (pgvector >= 0.8 instead sets ``hnsw.iterative_scan = strict_order``), and if
  it still returns fewer than k rows the query is run exactly. So a filtered query
  returns exactly k rows whenever at least k rows match.
* Unfiltered: one HNSW scan with ``hnsw.ef_search = max(ef_search, k)``; an exact scan
  if it returns fewer than k rows (tiny collections, k > 1000).

Settings are applied with ``set_config(..., is_local => true)`` and restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import psycopg
from psycopg import sql

from .errors import InputError, ModelMismatchError
from .migrations import query

MODALITIES = ("image", "text")
#: pgvector's default and maximum hnsw.ef_search.
DEFAULT_EF_SEARCH = 40
MAX_EF_SEARCH = 1000
#: Filtered queries matching at most this many rows are answered by an exact scan.
DEFAULT_EXACT_BELOW = 2000
#: Columns a mapping filter (``where={"source": ...}``) may name.
FILTER_COLUMNS = frozenset({"id", "key", "source", "text", "content_hash", "model_id"})

Where = Mapping[str, Any] | sql.Composable | str | None


@dataclass(frozen=True)
class Hit:
    """One search result. ``distance``: L2 between query and item embeddings (float)."""

    id: int
    key: str
    modality: str
    distance: float
    source: str | None
    text: str | None
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)  # (D,) float32, when asked


def check_vector(vector: Any, dim: int) -> np.ndarray:
    """Return ``vector`` as a ``(dim,) float32`` array.

    Raises:
        ModelMismatchError: its length is not ``dim``.
        InputError: it is not 1-D or holds NaN/inf.
    """
    if hasattr(vector, "to_numpy"):  # pgvector.Vector
        vector = vector.to_numpy()
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1:
        raise InputError(f"query vector must be 1-D (D,), got shape {v.shape}")
    if v.shape[0] != dim:
        raise ModelMismatchError(f"query vector has {v.shape[0]} dimensions, the collection stores {dim}")
    if not np.isfinite(v).all():
        raise InputError("query vector contains NaN or infinite values")
    return v


def check_target(target: str | None) -> tuple[str, ...]:
    """Modalities to search: ``("image",)``, ``("text",)`` or both for ``None``."""
    if target is None:
        return MODALITIES
    if target not in MODALITIES:
        raise ValueError(f"target must be 'image', 'text' or None, got {target!r}")
    return (target,)


def compose_where(where: Where, params: Mapping[str, Any] | None) -> tuple[sql.Composable, dict, bool]:
    """``(condition, params, filtered)`` for a filter.

    ``where`` is ``None``; a mapping ``{column: value}`` (equality; a list/tuple/set value
    means ``= ANY``) over :data:`FILTER_COLUMNS`; or a SQL condition (``psycopg.sql``
    object, or a trusted ``str``) on the items table aliased ``i`` — it may use
    ``EXISTS (SELECT 1 FROM my_table p WHERE p.col = i.source AND ...)`` to filter by a
    user table — whose values come from ``params`` as named ``%(name)s`` placeholders.
    Names starting with ``je_`` are reserved.
    """
    out = dict(params or {})
    if any(k.startswith("je_") for k in out):
        raise ValueError("filter parameter names starting with 'je_' are reserved")
    if where is None:
        return sql.SQL("TRUE"), out, False
    if isinstance(where, str):
        return sql.SQL(where), out, True  # trusted SQL text from the caller, values bound
    if isinstance(where, sql.Composable):
        return where, out, True
    parts = []
    for n, (col, value) in enumerate(where.items()):
        if col not in FILTER_COLUMNS:
            raise ValueError(f"cannot filter on {col!r}; allowed: {sorted(FILTER_COLUMNS)}")
        name = f"je_w{n}"
        if isinstance(value, (list, tuple, set, frozenset)):
            out[name] = list(value)
            parts.append(sql.SQL("{} = ANY({})").format(sql.Identifier("i", col), sql.Placeholder(name)))
        else:
            out[name] = value
            parts.append(sql.SQL("{} = {}").format(sql.Identifier("i", col), sql.Placeholder(name)))
    if not parts:
        return sql.SQL("TRUE"), out, False
    return sql.SQL(" AND ").join(parts), out, True


def run(conn: psycopg.Connection, items: sql.Composable, q: np.ndarray, *, targets: Sequence[str],
        k: int, ef_search: int | None = None, exact: bool = False, where: Where = None,
        params: Mapping[str, Any] | None = None, with_embedding: bool = False,
        iterative_scan: bool = False, exact_below: int = DEFAULT_EXACT_BELOW) -> list[Hit]:
    """k nearest items of each target modality, merged by distance (see module doc).

    Args:
        conn: prepared connection, inside a transaction.
        items: the items table (``psycopg.sql.Identifier``).
        q: ``(D,) float32`` query.
        iterative_scan: the server has pgvector >= 0.8 (``hnsw.iterative_scan``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
        raise ValueError(f"ef_search must be in 1..{MAX_EF_SEARCH}, got {ef_search}")
    cond, values, filtered = compose_where(where, params)
    values.update(je_q=q, je_k=k, je_cap=exact_below)
    extra = sql.SQL(", i.embedding") if with_embedding else sql.SQL("")
    hits: list[Hit] = []
    for target in targets:
        fmt = dict(items=items, target=sql.Literal(target), where=cond, extra=extra)
        hits += _one_target(conn, fmt, values, k=k, ef_search=ef_search, exact=exact,
                            filtered=filtered, iterative_scan=iterative_scan, exact_below=exact_below)
    hits.sort(key=lambda h: (h.distance, h.id))
    return hits[:k]


def _one_target(conn, fmt, values, *, k, ef_search, exact, filtered, iterative_scan, exact_below):
    def fetch(name: str) -> list[tuple]:
        # prepare=False: always plan with the actual values (no generic plan for LIMIT/filters)
        return conn.execute(query(name).format(**fmt), values, prepare=False).fetchall()

    if exact:
        return _hits(fetch("search_exact"))
    if filtered and exact_below > 0:
        rows = fetch("search_probe")
        if not rows or rows[0][-1] <= exact_below:
            return _hits(r[:-1] for r in rows)
    ef0 = min(max(ef_search or DEFAULT_EF_SEARCH, k), MAX_EF_SEARCH)
    steps = [ef0]
    if filtered and not iterative_scan:
        steps += [ef for ef in (4 * ef0, MAX_EF_SEARCH) if ef0 < ef <= MAX_EF_SEARCH]
    settings = {"hnsw.iterative_scan": "strict_order"} if filtered and iterative_scan else {}
    with local_settings(conn, {"hnsw.ef_search": str(ef0), **settings}):
        for ef in steps:
            set_local(conn, "hnsw.ef_search", str(ef))
            rows = fetch("search_index")
            if len(rows) >= k:
                return _hits(rows)
    return _hits(fetch("search_exact"))


def _hits(rows) -> list[Hit]:
    return [Hit(r[0], r[1], r[2], float(r[3]), r[4], r[5], _array(r[6]) if len(r) > 6 else None)
            for r in rows]


def _array(value: Any) -> np.ndarray:
    """A loaded ``vector`` value as ``(D,) float32``."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def set_local(conn: psycopg.Connection, name: str, value: str) -> None:
    """``SET LOCAL name = value`` as a bound ``set_config`` call (transaction-scoped)."""
    conn.execute(query("set_local"), {"name": name, "value": value})


class local_settings:
    """Context manager: set GUCs for the current transaction, restore the old values on exit.

    Restoring matters when the caller's transaction outlives the query (a savepoint
    inside an open transaction keeps ``SET LOCAL`` values until the outer commit).
    """

    def __init__(self, conn: psycopg.Connection, settings: Mapping[str, str]):
        self.conn, self.settings, self.old = conn, dict(settings), {}

    def __enter__(self):
        for name, value in self.settings.items():
            self.old[name] = self.conn.execute(query("get_setting"), {"name": name}).fetchone()[0]
            set_local(self.conn, name, value)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for name, value in self.old.items():
                if value is not None:
                    set_local(self.conn, name, value)
        return False
