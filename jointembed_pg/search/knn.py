"""Nearest-neighbour queries over one collection's items table (L2 distance, pgvector).

The rule that decides how a k-NN query is run lives in SQL, once: the function
``jointembed.knn`` (``sql/functions/15_knn.sql``), which the SQL functions
``jointembed.search`` / ``more_like_this`` / ``search_attached`` call as well. It returns
exactly ``min(k, matching rows)`` rows, nearest first:

* ``exact=True``, or a filter matching at most ``exact_below`` rows: exact scan
  (``ORDER BY l2_distance(embedding, q)``, which the HNSW index cannot serve).
* pgvector >= 0.8: one HNSW scan with ``hnsw.iterative_scan = strict_order``.
* pgvector < 0.8: HNSW scans with ``hnsw.ef_search = max(ef_search, k)``, x4 per step up
  to 1000 while fewer than k rows come back (dead tuples or a filter ate the candidates).
* still short: exact scan.

This module validates arguments, turns a ``where`` filter into the function's filter
text plus a ``jsonb`` of values (values are never pasted into SQL), calls it once per
target modality and merges the results.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..errors import ArgumentError, InputError, ModelMismatchError
from ..migrations import query

MODALITIES = ("image", "text")
#: pgvector's maximum hnsw.ef_search (checked here for a clear Python error).
MAX_EF_SEARCH = 1000
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
    v = np.asarray(vector)
    if v.dtype.kind not in "iuf":  # complex (imaginary part dropped), str ("1" parsed), bool, object
        raise InputError(f"query vector must hold real numbers, got dtype {v.dtype}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
        v = v.astype(np.float32)
    if v.ndim != 1:
        raise InputError(f"query vector must be 1-D (D,), got shape {v.shape}")
    if v.shape[0] != dim:
        raise ModelMismatchError(f"query vector has {v.shape[0]} dimensions, the collection stores {dim}")
    if not np.isfinite(v).all():
        raise InputError("query vector contains NaN or infinite values")
    return v


def check_bundle(bundle: Any, what: str) -> Any:
    """``bundle`` if it is a model bundle (has ``model_id``, ``dim``, ``encode_texts``,
    ``encode_images``).

    Raises:
        ArgumentError: ``None``, a name or path (load it: ``Bundle.load(name)``), anything else.
    """
    if not all(hasattr(bundle, a) for a in ("model_id", "dim", "encode_texts", "encode_images")):
        raise ArgumentError(f"{what} needs a loaded model bundle (Bundle.load(...)), got {type(bundle).__name__}")
    return bundle


def utf8_ok(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates, which the server cannot store)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Largest ``k`` (and ``ef_search``/``exact_below``): the SQL functions take ``int4``.
MAX_K = 2 ** 31 - 1


def check_int(value: Any, name: str, lo: int = 1, hi: int = MAX_K) -> int:
    """``value`` as a Python ``int`` in ``lo..hi`` (numpy integers accepted).

    Raises:
        ArgumentError (a ValueError): a bool, float, str or other non-integer, or out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise ArgumentError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if not lo <= value <= hi:
        raise ArgumentError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def check_target(target: str | None) -> tuple[str, ...]:
    """Modalities to search: ``("image",)``, ``("text",)`` or both for ``None``."""
    if target is None:
        return MODALITIES
    if target not in MODALITIES:
        raise ValueError(f"target must be 'image', 'text' or None, got {target!r}")
    return (target,)


class _CrossModal:
    """Default ``target`` of :meth:`Collection.search`: the other kind than the query's."""

    def __repr__(self) -> str:
        return "<cross-modal>"


#: Default ``target``: a text query searches images, an image query texts, a vector images.
CROSS_MODAL: Any = _CrossModal()
#: The kind of a query -> the kind it searches by default (:data:`CROSS_MODAL`).
_CROSS = {"text": "image", "image": "text", "vector": "image"}


def query_kind(query: Any, *, image: bool | None = None) -> str:
    """What a query given to ``search`` is: ``"vector"``, ``"image"`` or ``"text"``.

    The rule looks at the Python type only, never at the file system, so a caption is
    never read as a file name (``"dog.jpg"`` is a text):

    * ``numpy.ndarray`` (or a pgvector ``Vector``/``HalfVector``) -> ``"vector"``;
    * ``bytes`` / ``bytearray`` / ``memoryview`` (an encoded image) and ``os.PathLike``
      (``pathlib.Path``) -> ``"image"``;
    * ``str`` -> ``"text"``, or ``"image"`` (a path to an image file) with ``image=True``.

    Args:
        image: ``None``: by type as above; ``True``: the query is an image (a ``str`` is
            its path); ``False``: the query must be a text (a ``str``).
    Raises:
        ArgumentError: any other type (a list of floats: pass ``np.asarray(v, np.float32)``),
            or ``image`` contradicting the type.
    """
    if isinstance(query, np.ndarray) or hasattr(query, "to_numpy"):
        kind = "vector"
    elif isinstance(query, (bytes, bytearray, memoryview, os.PathLike)):
        kind = "image"
    elif isinstance(query, str):
        kind = "image" if image else "text"
    else:
        raise ArgumentError(f"a query is a str (text), a pathlib.Path or bytes (image) or a numpy (D,) "
                            f"float32 array (vector), got {type(query).__name__}")
    if image is True and kind != "image" or image is False and kind != "text":
        raise ArgumentError(f"image={image} does not fit a query of type {type(query).__name__} "
                            f"(it is a {kind} query)")
    return kind


def embed_query(bundle: Any, query: Any, dim: int, *, image: bool | None = None) -> tuple[np.ndarray, str]:
    """``(vector, kind)``: the query as a ``(dim,) float32`` embedding, and its kind.

    ``kind`` follows :func:`query_kind`. Texts are embedded with
    ``bundle.encode_texts(str)``, images with ``bundle.encode_images(path_or_bytes)`` (one
    image, decoded under the per-item limits of :mod:`jointembed_pg.limits`); a vector is
    checked by :func:`check_vector`.

    Raises:
        ArgumentError: see :func:`query_kind`; a text or image query without a bundle.
        InputError: empty or unreadable text (``ItemError`` labelled ``text``), an image
            that cannot be read or decoded (its path named), a vector that is not 1-D or
            not finite.
        ModelMismatchError: a vector of another dimension than ``dim``.
    """
    kind = query_kind(query, image=image)
    if kind == "vector":
        return check_vector(query, dim), kind
    if bundle is None:
        raise ArgumentError(f"a {kind} query needs a model bundle: open the collection (or attachment) "
                            "with bundle=Bundle.load(...), or pass a vector")
    if kind == "text":
        vec = bundle.encode_texts(query)
    else:
        vec = bundle.encode_images(bytes(query) if isinstance(query, (bytearray, memoryview))
                                   else query if isinstance(query, (bytes, str)) else Path(query))
    return check_vector(vec, dim), kind


def resolve_target(target: Any, kind: str) -> str | None:
    """``target`` itself, or for :data:`CROSS_MODAL` the other kind than the query's."""
    if target is CROSS_MODAL:
        return _CROSS[kind]
    check_target(target)
    return target


def compose_where(where: Where, params: Mapping[str, Any] | None) -> tuple[sql.Composable, dict, bool]:
    """``(condition, params, filtered)`` for a filter, in psycopg form (``%(name)s`` placeholders).

    ``where`` is ``None``; a mapping ``{column: value}`` (equality; a list/tuple/set value
    means ``= ANY``) over :data:`FILTER_COLUMNS`; or a SQL condition (``psycopg.sql``
    object, or a trusted ``str``) on the items table aliased ``i`` — it may use
    ``EXISTS (SELECT 1 FROM my_table p WHERE p.col = i.source AND ...)`` to filter by a
    user table — whose values come from ``params`` as named ``%(name)s`` placeholders.
    Names starting with ``je_`` are reserved. See :func:`filter_for_knn` for the value
    types a filter may use.
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
            out[name] = _Array(value, "int8" if col == "id" else "text")
            parts.append(sql.SQL("{} = ANY({})").format(sql.Identifier("i", col), sql.Placeholder(name)))
        else:
            out[name] = value
            parts.append(sql.SQL("{} = {}").format(sql.Identifier("i", col), sql.Placeholder(name)))
    if not parts:
        return sql.SQL("TRUE"), out, False
    return sql.SQL(" AND ").join(parts), out, True


class _Array(list):
    """A list filter value with the SQL element type its array must have (``text``/``int8``)."""

    def __init__(self, values: Any, elem: str):
        super().__init__(values)
        self.elem = elem


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%|%s|%b|%t")
#: Scalar types a filter value may have -> SQL that reads it from the jsonb ``$3``.
_SCALAR_SQL = {bool: "(($3 -> {key})::boolean)", int: "(($3 -> {key})::int8)",
               float: "(($3 -> {key})::float8)", str: "($3 ->> {key})"}
_ARRAY_SQL = {"text": "(ARRAY(SELECT jsonb_array_elements_text($3 -> {key})))",
              "int8": "(ARRAY(SELECT jsonb_array_elements_text($3 -> {key})::int8))",
              "float8": "(ARRAY(SELECT jsonb_array_elements_text($3 -> {key})::float8))",
              "boolean": "(ARRAY(SELECT jsonb_array_elements_text($3 -> {key})::boolean))"}


def filter_for_knn(conn: psycopg.Connection, where: Where,
                   params: Mapping[str, Any] | None) -> tuple[str | None, dict]:
    """``(filter SQL, args)`` for ``jointembed.knn``: values travel in the jsonb ``args``.

    Each ``%(name)s`` placeholder of the condition becomes an expression reading
    ``params[name]`` from the function's ``$3`` (``jsonb``): ``str`` -> ``text``, ``int``
    -> ``int8``, ``float`` -> ``float8``, ``bool`` -> ``boolean``, ``None`` -> ``NULL``, a
    list/tuple/set of one of those -> an array of it (``text[]`` when empty); numpy scalars
    count as their Python type. ``%%`` is a literal ``%``, as with psycopg.

    Raises:
        ValueError: a placeholder without a value, a positional ``%s``, a value of
            another type (cast in the condition instead: ``%(day)s::date`` with a ``str``),
            or a reserved ``je_`` name.
    """
    cond, values, filtered = compose_where(where, params)
    if not filtered:
        return None, {}
    text = cond.as_string(conn)
    args: dict = {}

    def expr(m: re.Match) -> str:
        if m.group(0) == "%%":
            return "%"
        name = m.group(1)
        if name is None:
            raise ValueError("filters take named placeholders %(name)s, not positional ones")
        if name not in values:
            raise ValueError(f"filter placeholder %({name})s has no value in params")
        sql_expr, args[name] = _json_value(name, values[name])
        return sql_expr.format(key=sql.Literal(name).as_string(conn))

    return _PLACEHOLDER.sub(expr, text), args


def _json_value(name: str, value: Any) -> tuple[str, Any]:
    """(SQL reading ``$3 -> name`` as its type, the JSON-ready value)."""
    if value is None:
        return "NULL", None
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_scalar(name, v) for v in value]
        kinds = {type(v) for v in items}
        if len(kinds) > 1 or None in items:
            raise ValueError(f"filter value {name!r}: a list needs items of one type and no None")
        elem = getattr(value, "elem", None) or {bool: "boolean", int: "int8", float: "float8"}.get(
            next(iter(kinds), str), "text")
        return _ARRAY_SQL[elem], items
    v = _scalar(name, value)
    return _SCALAR_SQL[type(v)], v


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"filter value {name!r} is not finite")
    if type(value) not in _SCALAR_SQL:
        raise ValueError(f"filter value {name!r} has type {type(value).__name__}; use str, int, float, bool, "
                         "None or a list of them (cast in the condition, e.g. %(day)s::date)")
    return value


def run(conn: psycopg.Connection, items: sql.Composable, q: np.ndarray, *, targets: Sequence[str],
        k: int, ef_search: int | None = None, exact: bool = False, where: Where = None,
        params: Mapping[str, Any] | None = None, with_embedding: bool = False,
        exact_below: int | None = None) -> list[Hit]:
    """k nearest items of each target modality, merged by distance (see module doc).

    One ``jointembed.knn`` call per target modality.

    Args:
        conn: prepared connection (pgvector registered), inside a transaction.
        items: the items table (``psycopg.sql.Identifier``).
        q: ``(D,) float32`` query.
        ef_search: starting ``hnsw.ef_search`` (1..1000; default: the session's, 40).
        exact_below: filtered queries matching at most this many rows run exactly
            (``None``: the SQL function's default, 2000; 0: never).

    Returns:
        At most ``k`` :class:`Hit`, by ``(distance, id)``; exactly ``k`` when at least
        ``k`` items of the targets match.
    Raises:
        ValueError: ``k < 1``, ``ef_search`` outside 1..1000, or a bad filter.
    """
    k = check_int(k, "k")
    if ef_search is not None:
        ef_search = check_int(ef_search, "ef_search", 1, MAX_EF_SEARCH)
    if exact_below is not None:
        exact_below = check_int(exact_below, "exact_below", 0)
    filter_sql, args = filter_for_knn(conn, where, params)
    stmt = query("knn").format(items=items, extra=sql.SQL(", (r.item).embedding") if with_embedding else sql.SQL(""))
    hits: list[Hit] = []
    for target in targets:
        values = dict(je_q=q, je_k=k, je_target=target, je_filter=filter_sql, je_args=Jsonb(args),
                      je_ef=ef_search, je_exact=exact, je_below=exact_below)
        # prepare=False: always plan with the actual values (no generic plan for LIMIT/filters)
        hits += _hits(conn.execute(stmt, values, prepare=False).fetchall())
    hits.sort(key=lambda h: (h.distance, h.id))
    return hits[:k]


def _hits(rows) -> list[Hit]:
    return [Hit(r[0], r[1], r[2], float(r[3]), r[4], r[5], _array(r[6]) if len(r) > 6 else None)
            for r in rows]


def _array(value: Any) -> np.ndarray:
    """A loaded ``vector`` value as ``(D,) float32``."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def set_local(conn: psycopg.Connection, name: str, value: str) -> None:
    """``SET LOCAL name = value`` as a bound ``set_config`` call (transaction-scoped)."""
    conn.execute(query("set_local"), {"name": name, "value": value})
