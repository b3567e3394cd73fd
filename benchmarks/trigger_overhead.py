"""Cost of jointembed's triggers on the user's own writes (issue 14 item 5).

``python -m benchmarks.trigger_overhead [--dsn DSN] [--rows N] [--out FILE]``

Two identical tables of ``--rows`` rows (``id int PRIMARY KEY, caption text, image_path
text, likes int``): one plain, one attached with an image and a text column (so each
changed row appends two queue events). For each queue backlog (0, 100k and 400k events
already waiting, as when workers are down or behind), the user's statements below run
on both tables, each in a transaction that is rolled back (so every repetition sees
the same data), ``--repeat`` times; the median wall time is reported, and the ratio
attached / plain. No model is loaded (attach only needs a model id and dimension).

Runs in a few minutes on the embedded server (``--rows 100000``). Writes a markdown
report (stdout, and ``--out``, default docs/BENCHMARKS_TRIGGERS.md, which
benchmarks/report.py carries into docs/BENCHMARKS.md as an appendix).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from jointembed_pg.sync import catalog as sync

from .env import Database, publish, report_parser

BACKLOGS = (0, 100_000, 400_000)


@dataclass(frozen=True)
class _Model:
    model_id: str = "bench-trigger-model"
    dim: int = 8


def _ops(n: int) -> list[tuple[str, str]]:
    """(label, statement with {t} for the table) of the user's writes."""
    k = min(10_000, n)
    return [
        (f"INSERT {k:,} rows", f"INSERT INTO {{t}} (id, caption, image_path) "
                               f"SELECT g, 'new ' || g, 'new/' || g || '.jpg' FROM generate_series({n + 1}, {n + k}) g"),
        (f"UPDATE caption of {k:,} rows", f"UPDATE {{t}} SET caption = caption || ' edited' WHERE id <= {k}"),
        (f"UPDATE other column of {k:,} rows", f"UPDATE {{t}} SET likes = likes + 1 WHERE id <= {k}"),
        (f"UPDATE caption of {n:,} rows", "UPDATE {t} SET caption = caption || ' edited'"),
        ("DELETE 1,000 rows", "DELETE FROM {t} WHERE id > 5000 AND id <= 6000"),
        (f"DELETE {k:,} rows", f"DELETE FROM {{t}} WHERE id > {n - k}"),
    ]


def _time(conn, stmt: sql.Composable, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            t0 = time.perf_counter()
            cur.execute(stmt)
            runs.append(time.perf_counter() - t0)
            cur.execute("ROLLBACK")
    return statistics.median(runs)


def run(dsn: str | None, rows: int, repeat: int) -> list[dict]:
    """Returns ``[{backlog, op, plain_s, attached_s, ratio}]``."""
    database = Database.open(dsn)
    try:
        conn = database.conn
        plain, att_name = database.prefix + "plain", database.prefix + "attached"
        for t in (plain, att_name):
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, caption text, image_path text, "
                                 "likes int NOT NULL DEFAULT 0)").format(sql.Identifier(t)))
            conn.execute(sql.SQL("INSERT INTO {} (id, caption, image_path) SELECT g, 'caption ' || g, "
                                 "'img/' || g || '.jpg' FROM generate_series(1, %s) g").format(sql.Identifier(t)),
                         [rows])
        att = sync.attach(conn, att_name, _Model(), key="id", image_column="image_path", text_column="caption")
        queue = sql.Identifier("jointembed", f"a{att.id}_queue")
        out = []
        try:
            for backlog in BACKLOGS:
                conn.execute(sql.SQL("TRUNCATE {}").format(queue))
                if backlog:
                    conn.execute(sql.SQL("INSERT INTO {} (version, key, modality) SELECT 1, 1 + g %% %s, "
                                         "(ARRAY['image', 'text'])[1 + g %% 2] FROM generate_series(1, %s) g"
                                         ).format(queue), [rows, backlog])
                for t in (sql.Identifier(plain), sql.Identifier(att_name), queue):
                    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
                for label, stmt in _ops(rows):
                    p = _time(conn, sql.SQL(stmt).format(t=sql.Identifier(plain)), repeat)
                    a = _time(conn, sql.SQL(stmt).format(t=sql.Identifier(att_name)), repeat)
                    out.append({"backlog": backlog, "op": label, "plain_s": p, "attached_s": a, "ratio": a / p})
                    print(f"backlog {backlog:>7,}  {label:<32} plain {p:8.3f} s  attached {a:8.3f} s  "
                          f"x{a / p:5.2f}", flush=True)
        finally:
            sync.detach(conn, att_name)
            for t in (plain, att_name):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t)))
        return out
    finally:
        database.close()


def markdown(results: list[dict], rows: int, repeat: int) -> str:
    lines = ["# Trigger overhead on the user's writes", "",
             f"Tables of {rows:,} rows; attached one embeds an image and a text column (2 events per "
             f"changed row). Median of {repeat} runs, each rolled back. Backlog: queue events already waiting.",
             "", "| backlog | user statement | unattached (s) | attached (s) | ratio |",
             "|---:|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['backlog']:,} | {r['op']} | {r['plain_s']:.3f} | {r['attached_s']:.3f} | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = report_parser("trigger_overhead", __doc__, Path("docs/BENCHMARKS_TRIGGERS.md"))
    ap.add_argument("--rows", type=int, default=100_000, help="rows per table (default 100,000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per statement (median; default 3)")
    args = ap.parse_args(argv)
    return publish(markdown(run(args.dsn, args.rows, args.repeat), args.rows, args.repeat), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
