"""What a collection's search index is, where it may be built and what its build needs.

Pure rules, no connection: the builds themselves (``CREATE INDEX CONCURRENTLY``, repair,
locks, progress) are :mod:`jointembed_pg.search.indexing`, which re-exports every public
name here.

* **Storage types** (:data:`STORAGES`): ``vector`` (float32) or ``halfvec`` (float16) in
  the ``embedding`` column, with their L2 operator classes, dimension limits and oldest
  pgvector (:func:`check_storage`).
* **Index kinds** (:data:`INDEXES`): ``float`` / ``binary`` (HNSW) and ``binary-ivf``
  (IVFFlat, :func:`ivf_lists` lists), checked by :func:`check_index`.
* **Memory**: the ``maintenance_work_mem`` a build needs (:func:`hnsw_graph_bytes`,
  :func:`ivf_build_bytes`) and the one chosen within a cap (:func:`plan_memory`,
  :func:`memory_cap`, :func:`parse_memory`).
* **The statement**: :class:`IndexSpec`, one partial index and its ``CREATE INDEX``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from ..errors import ArgumentError, DatabaseError
from ..settings import INDEX_MEMORY_ENV, get as get_settings

#: Storage types of a collection's ``embedding`` column and their L2 HNSW operator classes.
OPCLASS = {"vector": "vector_l2_ops", "halfvec": "halfvec_l2_ops"}
STORAGES = tuple(OPCLASS)
#: Most dimensions an HNSW index accepts per type (pgvector src/hnsw.h ``HNSW_MAX_DIM`` =
#: 2000 for ``vector``; ``HNSW_MAX_DIM * 2`` for ``halfvec``, src/hnswutils.c type info).
MAX_HNSW_DIM = {"vector": 2000, "halfvec": 4000}
#: Oldest pgvector with each type (``halfvec`` arrived in 0.7.0).
MIN_PGVECTOR = {"vector": (0, 5), "halfvec": (0, 7)}
#: Search indexes of a collection: ``float`` (HNSW, L2 on the embedding), ``binary``
#: (HNSW, ``bit_hamming_ops`` on ``binary_quantize(embedding)::bit(D)``) or ``binary-ivf``
#: (IVFFlat, ``bit_hamming_ops`` on the same bits, :func:`ivf_lists` lists); the binary
#: kinds' Hamming candidates are re-ranked by L2 in ``jointembed.knn``
#: (sql/functions/15_knn.sql, 16_binary_index.sql).
INDEXES = ("float", "binary", "binary-ivf")
#: Oldest pgvector with each index kind (``binary_quantize`` / ``bit_hamming_ops``: 0.7.0).
MIN_PGVECTOR_INDEX = {"float": (0, 5), "binary": (0, 7), "binary-ivf": (0, 7)}
#: Index access method of each kind.
METHOD = {"float": "hnsw", "binary": "hnsw", "binary-ivf": "ivfflat"}
#: Upper bound for the ``maintenance_work_mem`` of a build, unless the caller passes one.
DEFAULT_MEMORY_CAP = "1GB"
#: Environment variable overriding :data:`DEFAULT_MEMORY_CAP` (e.g. ``4GB``, ``512MB``).
MEMORY_CAP_ENV = INDEX_MEMORY_ENV

_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?b)?\s*$", re.IGNORECASE)


# -- storage types and index kinds -----------------------------------------------------
def check_storage(storage: str, dim: int, vector_version: tuple[int, ...] | None = None) -> str:
    """Validate a collection's storage type for an HNSW-indexed column of ``dim`` dimensions.

    Args:
        storage: ``"vector"`` (float32, 4 bytes a dimension) or ``"halfvec"`` (float16, 2).
        dim: embedding dimension.
        vector_version: the server's pgvector version (``db.vector_version``); ``None``
            skips the version check.
    Returns:
        ``storage``.
    Raises:
        ArgumentError: unknown storage, or ``dim`` above what HNSW indexes of that type take
            (:data:`MAX_HNSW_DIM`).
        DatabaseError: the server's pgvector is too old for ``storage`` (halfvec < 0.7).
    """
    if storage not in OPCLASS:
        raise ArgumentError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    limit = MAX_HNSW_DIM[storage]
    if int(dim) > limit:
        hint = " (use storage 'halfvec', up to 4000)" if storage == "vector" and int(dim) <= MAX_HNSW_DIM["halfvec"] else ""
        raise ArgumentError(f"an HNSW index on {storage} takes at most {limit} dimensions, got {dim}{hint}")
    need = MIN_PGVECTOR[storage]
    if vector_version is not None and tuple(vector_version) < need:
        have = ".".join(map(str, vector_version)) or "none"
        raise DatabaseError(f"storage {storage!r} needs pgvector >= {'.'.join(map(str, need))}; "
                            f"this server has pgvector {have} (use storage 'vector' or upgrade the extension)")
    return storage



def check_index(index: str, vector_version: tuple[int, ...] | None = None) -> str:
    """Validate a collection's search index kind (:data:`INDEXES`); returns ``index``.

    Raises:
        ArgumentError: unknown kind.
        DatabaseError: ``binary`` / ``binary-ivf`` on pgvector < 0.7 (no ``binary_quantize`` /
            ``bit_hamming_ops``).
    """
    if index not in INDEXES:
        raise ArgumentError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    need = MIN_PGVECTOR_INDEX[index]
    if vector_version is not None and tuple(vector_version) < need:
        raise DatabaseError(f"index {index} needs pgvector >= {'.'.join(map(str, need))} (binary_quantize and "
                            f"bit_hamming_ops); this server has pgvector {'.'.join(map(str, vector_version))}")
    return index


def ivf_lists(rows: int) -> int:
    """IVFFlat lists for ``rows`` indexed rows: ``rows / 1000`` up to 1M rows, ``sqrt(rows)``
    above, at least 1 (pgvector's README rule for choosing ``lists``).

    The lists are fixed when the index is built: a collection that grows 10x past its build
    searches more rows per list (slower, same recall); rebuild the index
    (``DROP INDEX`` + ``jointembed index``) to re-cluster.
    """
    rows = max(int(rows), 0)
    return max(1, rows // 1000 if rows <= 1_000_000 else int(rows ** 0.5))


# -- memory ----------------------------------------------------------------------------
def parse_memory(value: int | str) -> int:
    """Bytes in ``value``: an int (bytes) or a string like ``"512MB"``, ``"1GB"``, ``"65536kB"``.

    Units are PostgreSQL's (1 kB = 1024 B); a bare number is bytes.

    Raises:
        ArgumentError: not a non-negative size (also a ``ValueError``).
    """
    if isinstance(value, bool):
        raise ArgumentError(f"memory size must be bytes or a string like '1GB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ArgumentError(f"memory size must be >= 0, got {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ArgumentError(f"memory size must look like 512MB or 1GB, got {value!r}")
    return int(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]


def memory_cap(value: int | str | None = None) -> int:
    """The cap in bytes: ``value``, else ``$JOINTEMBED_INDEX_MEMORY``, else 1 GB."""
    if value is None:
        value = get_settings().index_memory or DEFAULT_MEMORY_CAP
    return parse_memory(value)


def ivf_build_bytes(lists: int, dim: int) -> int:
    """``maintenance_work_mem`` an IVFFlat build needs: its k-means sample of ``50 * lists``
    rows (pgvector src/ivfbuild.c ``SampleRows``) held as float vectors of ``dim`` plus the
    centres, x2 for k-means' working copies, plus 16 MiB."""
    return int(2 * (50 * lists + lists) * (8 + 4 * dim)) + 16 * 1024 * 1024


def hnsw_element_bytes(dim: int, m: int, storage: str = "vector") -> float:
    """Expected bytes of one element of pgvector's in-memory HNSW build graph (64-bit).

    Sum of the allocations pgvector 0.6-0.8 makes per inserted tuple during the in-memory
    phase (src/hnswbuild.c ``InsertTuple``, src/hnswutils.c ``HnswInitElement`` /
    ``HnswInitNeighbors``, sizes from src/hnsw.h), each MAXALIGNed plus an 8-byte chunk
    header of the serial build's generation memory context (``HnswMemoryContextAlloc``
    counts ``MemoryContextMemAllocated``; a parallel build's shared allocator has no
    header, so this is an upper bound there):

    * ``HnswElementData``: 128 bytes;
    * the neighbour-list pointer array: ``8 * (L + 1)`` bytes for an element of level ``L``;
    * neighbour arrays ``HNSW_NEIGHBOR_ARRAY_SIZE(lm) = 8 + 16 * lm``, ``lm = 2m`` on layer
      0 and ``m`` above (``HnswGetLayerM``);
    * the value: ``8 + 4 * dim`` bytes (vector), ``8 + 2 * dim`` (halfvec) or
      ``8 + dim / 8`` (``storage="bit"``: the binary index's ``bit(dim)``).

    Levels follow ``floor(-ln(U) * mL)`` with ``mL = 1 / ln(m)`` (``HnswGetMl``), so the
    expected number of upper layers is ``sum_{l>=1} m^-l = 1 / (m - 1)``.
    """
    def chunk(n: float) -> float:
        return 8 * -(-n // 8) + 8

    upper = 1.0 / (m - 1)
    value = 8 + {"vector": 4, "halfvec": 2, "bit": 0.125}[storage] * dim
    return (chunk(128) + chunk(8 * (1 + upper)) + chunk(8 + 16 * 2 * m)
            + upper * chunk(8 + 16 * m) + chunk(value))


def hnsw_graph_bytes(rows: int, dim: int, m: int, storage: str = "vector") -> int:
    """Bytes of ``maintenance_work_mem`` that hold the whole build graph of ``rows`` tuples.

    :func:`hnsw_element_bytes` times ``rows``, plus 5 % for the random levels and rows
    written during a concurrent build, plus 2 MiB: the generation context allocates 1 MiB
    blocks and a parallel build keeps a 1 MiB margin (src/hnswbuild.c ``InsertTuple``).
    """
    return int(rows * hnsw_element_bytes(dim, m, storage) * 1.05) + 2 * 1024 * 1024


@dataclass
class MemoryPlan:
    """``maintenance_work_mem`` chosen for one build (bytes)."""

    needed: int          # hnsw_graph_bytes(...)
    server: int          # the session's value before the build
    cap: int
    chosen: int          # max(server, min(needed, cap))

    @property
    def fits(self) -> bool:
        return self.chosen >= self.needed

    @property
    def setting(self) -> str:
        """``chosen`` as a ``maintenance_work_mem`` value (kB, PostgreSQL's unit)."""
        return f"{max(1024, -(-self.chosen // 1024))}kB"


def plan_memory(rows: int, dim: int, m: int, storage: str, *, server: int, cap: int) -> MemoryPlan:
    """Raise ``maintenance_work_mem`` to what the graph needs, at most ``cap``, never below ``server``."""
    needed = hnsw_graph_bytes(rows, dim, m, storage)
    return MemoryPlan(needed, server, cap, max(server, min(needed, cap)))


# -- the index -------------------------------------------------------------------------
@dataclass
class IndexSpec:
    """One partial index (HNSW, or IVFFlat for ``binary-ivf``) of a collection or side table."""

    schema: str
    table: str
    name: str
    modality: str
    storage: str
    dim: int
    m: int
    ef_construction: int
    opclass_schema: str | None = None   # schema of pgvector's operator classes
    binary: bool = False                # index binary_quantize(embedding)::bit(dim) with bit_hamming_ops
    method: str = "hnsw"                # "hnsw" or "ivfflat" (binary only: the binary-ivf kind)
    lists: int | None = None            # ivfflat: lists; None = ivf_lists(rows at build time)

    @property
    def table_ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def index_ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def create(self, concurrently: bool) -> sql.Composed:
        opclass = "bit_hamming_ops" if self.binary else OPCLASS[self.storage]
        op = sql.Identifier(self.opclass_schema, opclass) if self.opclass_schema else sql.Identifier(opclass)
        column = sql.SQL("embedding")
        if self.binary:   # the expression jointembed.knn orders by (sql/functions/15_knn.sql)
            fn = sql.Identifier(self.opclass_schema, "binary_quantize") if self.opclass_schema \
                else sql.Identifier("binary_quantize")
            column = sql.SQL("(CAST({fn}(embedding) AS pg_catalog.bit({dim})))").format(
                fn=fn, dim=sql.Literal(int(self.dim)))
        if self.method == "ivfflat":
            if not self.binary or self.lists is None:
                raise ArgumentError("an ivfflat index is built on the bits (binary) with a number of lists")
            return sql.SQL("CREATE INDEX {cc} {index} ON {table} USING ivfflat ({column} {op}) "
                           "WITH (lists = {lists}) WHERE modality = {modality}").format(
                cc=sql.SQL("CONCURRENTLY" if concurrently else ""), index=sql.Identifier(self.name), column=column,
                table=self.table_ident, op=op, lists=sql.Literal(int(self.lists)), modality=sql.Literal(self.modality))
        return sql.SQL("CREATE INDEX {cc} {index} ON {table} USING hnsw ({column} {op}) "
                       "WITH (m = {m}, ef_construction = {efc}) WHERE modality = {modality}").format(
            cc=sql.SQL("CONCURRENTLY" if concurrently else ""), index=sql.Identifier(self.name), column=column,
            table=self.table_ident, op=op, m=sql.Literal(int(self.m)),
            efc=sql.Literal(int(self.ef_construction)), modality=sql.Literal(self.modality))
