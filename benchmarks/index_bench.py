"""HNSW builds (time, size) and on-disk sizes of a collection's items table."""
from __future__ import annotations

import time

from psycopg import sql

from . import query_bench
from .config import IndexSetting
from .timing import percentiles_ms

#: ``ef_search`` at which the index-settings table compares recall and latency.
COMPARE_EF = 40

_TABLE_SIZES = """
SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
       pg_indexes_size(c.oid), pg_total_relation_size(c.oid), c.reltuples::bigint
FROM pg_class c WHERE c.oid = %s::regclass
"""


def _qualified(name: str) -> str:
    return sql.Identifier("jointembed", name).as_string(None)


def index_bytes(conn, coll, modality: str) -> int:
    """On-disk bytes of the collection's HNSW index of ``modality`` (0 if none)."""
    row = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (_qualified(coll.index_name(modality)),)).fetchone()
    return int(row[0] or 0)


def table_sizes(conn, coll) -> dict:
    """Bytes of heap, TOAST, all indexes and the total, and the row count, of the items table."""
    conn.execute(sql.SQL("ANALYZE {}").format(coll.table_ident))
    heap, toast, indexes, total, rows = conn.execute(_TABLE_SIZES, (_qualified(coll.info.items_table),)).fetchone()
    hnsw = {m: index_bytes(conn, coll, m) for m in ("image", "text")}
    return {"heap": heap, "toast": toast, "indexes": indexes, "hnsw": hnsw,
            "btree": indexes - sum(hnsw.values()), "total": total, "rows": rows}


def drop_index(conn, coll, modality: str) -> None:
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier("jointembed", coll.index_name(modality))))


def build(conn, coll, modality: str, setting: IndexSetting, maintenance_work_mem: str) -> float:
    """Build the partial HNSW index of ``modality`` with ``setting``; returns seconds.

    ``max_parallel_maintenance_workers`` is set on the session (the Store shares ``conn``);
    ``maintenance_work_mem`` is passed to ``Collection.ensure_index``.
    """
    conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(setting.workers),))
    t = time.perf_counter()
    created = coll.ensure_index(setting.m, setting.ef_construction, modalities=[modality],
                                maintenance_work_mem=maintenance_work_mem)
    seconds = time.perf_counter() - t
    if created != [coll.index_name(modality)]:
        raise RuntimeError(f"expected to build {coll.index_name(modality)}, ensure_index built {created}")
    return seconds


def compare(conn, coll, setting: IndexSetting, build_s: float, queries: dict, truth, k: int) -> dict:
    """One row of the settings table: build time, size, recall@k and SQL latency at :data:`COMPARE_EF`."""
    qvecs = queries["vectors"]
    query_bench.run_queries(coll, "image", qvecs[:query_bench.WARMUP_QUERIES], truth, k, ef_search=COMPARE_EF)
    sql_s, rec = query_bench.run_queries(coll, "image", qvecs, truth, k, ef_search=COMPARE_EF)
    return {"m": setting.m, "ef_construction": setting.ef_construction, "workers": setting.workers,
            "build_s": build_s, "index_bytes": index_bytes(conn, coll, "image"),
            "recall": rec, "sql": percentiles_ms(sql_s), "ef_search": COMPARE_EF}


def estimate_build_s(setting: IndexSetting, ref: IndexSetting, ref_s: float) -> float:
    """Rough build time of ``setting`` from a measured ``ref`` build on the same vectors.

    Build work grows about linearly with ``m * ef_construction``; without parallel workers
    the leader works alone (counted as twice the time, an upper bound on 2 cores).
    """
    work = (setting.m * setting.ef_construction) / (ref.m * ref.ef_construction)
    alone = 2.0 if setting.workers == 0 and ref.workers > 0 else 1.0
    return ref_s * work * alone


def sweep(conn, coll, settings, maintenance_work_mem: str, queries: dict, truth, k: int, *,
          ref: IndexSetting, ref_s: float, deadline: float = float("inf")) -> tuple[list[dict], list[str]]:
    """Rebuild the image index with each setting and compare (text -> image queries).

    A setting whose estimated build would end after ``deadline`` (``time.perf_counter``
    seconds) is skipped. Returns ``(rows, labels of skipped settings)``.
    """
    rows, skipped = [], []
    for s in settings:
        if time.perf_counter() + estimate_build_s(s, ref, ref_s) > deadline:
            skipped.append(s.label)
            continue
        drop_index(conn, coll, "image")
        seconds = build(conn, coll, "image", s, maintenance_work_mem)
        rows.append(compare(conn, coll, s, seconds, queries, truth, k))
    return rows, skipped
