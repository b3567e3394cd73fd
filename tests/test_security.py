"""Hostile identifiers and input: names with quotes, semicolons, spaces, upper case and
non-ASCII are identifiers (never SQL), query text is always a bound parameter, and no SQL
in the package is built by string formatting (checked on the AST of every module).
"""
from __future__ import annotations

import ast
import json

import psycopg
from psycopg import sql

from test_reliability_support import REPO, cli, flickr_images, scenario, stored_items
from test_sync_support import make_photos

pytest_plugins = ["_reliability"]

HOSTILE_SCHEMA = 'Sch"ema; DROP SCHEMA public CASCADE; --'
HOSTILE_TABLE = 'My "Photos"); DROP TABLE canary; --'
HOSTILE_COLS = ('Id "Key"', "Cäption ✓ ; --", "Image Path'); DELETE FROM canary; --", "LIKES")
HOSTILE_TEXT = "'); DROP TABLE canary; --"
HOSTILE_COLLECTION = "Robert'); DROP TABLE canary; -- \"Ünïcode\" ✓"


def _canary(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE canary (x int)")
        c.execute("INSERT INTO canary VALUES (1), (2)")


def _canary_alive(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM canary").fetchone()[0] == 2


@scenario("Attach a table whose schema, table and column names contain quotes, semicolons, spaces, "
          "upper case and non-ASCII", "attach / sync / status / search work; nothing else dropped or changed",
          "security")
def test_attach_hostile_identifiers(pg_dsn, bundle, bundle_dir, flickr8k_dir, observe):
    _canary(pg_dsn)
    imgs = flickr_images(flickr8k_dir, 4, start=300)
    rows = [(i + 1, f"{HOSTILE_TEXT} a dog number {i}", str(p)) for i, p in enumerate(imgs)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        make_photos(conn, rows, schema=HOSTILE_SCHEMA, table=HOSTILE_TABLE, cols=HOSTILE_COLS)
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir]
    where = ["--table", HOSTILE_TABLE, "--schema", HOSTILE_SCHEMA]
    p = cli(["attach", *where, "--key", HOSTILE_COLS[0], "--text-column", HOSTILE_COLS[1],
             "--image-column", HOSTILE_COLS[2], *args])
    assert p.returncode == 0, p.stderr
    p = cli(["sync", *where, "--json", "--no-progress", *args])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["written"] == 8
    st = json.loads(cli(["status", *where, "--json", "--dsn", pg_dsn]).stdout)
    assert (st["done"], st["pending"], st["failed"]) == (8, 0, 0)
    from jointembed_pg import db
    from jointembed_pg.sync import catalog as sync

    with db.connect(pg_dsn, autocommit=True) as conn:
        q = bundle.encode_texts([rows[2][1]])[0]
        hits = sync.search_attached(conn, HOSTILE_TABLE, q, k=2, target="text", schema=HOSTILE_SCHEMA)
        assert hits[0][0] == 3
        conn.execute(sql.SQL("UPDATE {} SET {} = %s WHERE {} = 1").format(
            sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE), sql.Identifier(HOSTILE_COLS[1]),
            sql.Identifier(HOSTILE_COLS[0])), ["a cat; DROP TABLE canary"])
        assert sync.status(conn, HOSTILE_TABLE, HOSTILE_SCHEMA)[0]["pending"] == 1   # the trigger works too
    p = cli(["detach", *where, "--dsn", pg_dsn])
    assert p.returncode == 0, p.stderr
    assert _canary_alive(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE))
                         ).fetchone()[0]
        assert n == 4 and conn.execute("SELECT to_regnamespace('public') IS NOT NULL").fetchone()[0]
    observe(f"attach/sync/status/search/trigger/detach on {HOSTILE_SCHEMA!r}.{HOSTILE_TABLE!r}: "
            "8 embeddings, top hit correct, canary table and schema public intact")


@scenario("Hostile collection name and SQL-injection query text",
          f"collection {HOSTILE_COLLECTION!r} indexed and searched; search for {HOSTILE_TEXT!r} "
          "returns hits and drops nothing", "security")
def test_hostile_collection_and_query_text(pg_dsn, bundle_dir, flickr8k_dir, tmp_path, observe):
    _canary(pg_dsn)
    caps = tmp_path / "caps.jsonl"
    caps.write_text("\n".join(json.dumps({"id": f"{HOSTILE_TEXT}{i}", "text": t}) for i, t in
                              enumerate(["a dog runs", HOSTILE_TEXT, "two girls on a bench"])) + "\n")
    args = ["--collection", HOSTILE_COLLECTION, "--dsn", pg_dsn, "--bundle", bundle_dir]
    p = cli(["index", "texts", caps, "--no-progress", *args])
    assert p.returncode == 0, p.stderr
    imgs = flickr_images(flickr8k_dir, 2, start=320)
    p = cli(["index", "images", *imgs, "--no-progress", *args])
    assert p.returncode == 0, p.stderr
    p = cli(["search", "text", HOSTILE_TEXT, "--target", "texts", "-k", "3", "--json", *args])
    assert p.returncode == 0, p.stderr
    hits = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["text"] == HOSTILE_TEXT and hits[0]["distance"] < 1e-3
    assert len(stored_items(pg_dsn, HOSTILE_COLLECTION, "text")) == 3
    assert _canary_alive(pg_dsn)
    observe(f"3 captions + 2 images indexed; top hit for the injection text is itself "
            f"(distance {hits[0]['distance']:.1e}); canary intact")


# -- no SQL built by string formatting -------------------------------------------------

_SQL_CALLS = {"execute", "executemany", "copy", "SQL"}


def _unsafe(node: ast.AST) -> str | None:
    """Why an expression passed as SQL text is built by string formatting, or None."""
    if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
        return "f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return "%-formatting"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return "+ concatenation"
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
            and isinstance(node.func.value, (ast.Constant, ast.JoinedStr))):
        return "str.format"
    return None


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def sql_formatting_violations(source: str, filename: str = "<src>") -> list[str]:
    """Calls of ``.execute/.executemany/.copy/sql.SQL`` whose SQL argument is built by
    f-string, ``%``, ``+`` or ``str.format`` (directly, or through a local variable
    assigned such an expression in the same function)."""
    tree = ast.parse(source, filename)
    out = []
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        assigned: dict[str, list[ast.AST]] = {}
        for n in ast.walk(scope):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        assigned.setdefault(t.id, []).append(n.value)
            elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
                assigned.setdefault(n.target.id, []).append(ast.BinOp(n.target, n.op, n.value))
        for n in ast.walk(scope):
            if not (isinstance(n, ast.Call) and _call_name(n) in _SQL_CALLS and n.args):
                continue
            arg = n.args[0]
            candidates = [arg] + (assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [])
            for c in candidates:
                why = _unsafe(c)
                if why:
                    out.append(f"{filename}:{n.lineno}: {_call_name(n)}() with SQL built by {why}")
    return sorted(set(out))


def test_sql_formatting_checker_catches_each_form():
    bad = '''
def f(conn, t, cur):
    conn.execute(f"SELECT * FROM {t}")
    conn.execute("SELECT * FROM %s" % t)
    cur.executemany("DELETE FROM " + t, [])
    conn.execute("SELECT {}".format(t))
    q = f"DROP TABLE {t}"
    conn.execute(q)
    sql.SQL(f"SELECT {t}")
    cur.copy("COPY " + t + " FROM STDIN")
'''
    good = '''
def g(conn, t):
    conn.execute("SELECT %s", [t])
    conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t)))
    conn.execute(query("x").format(items=sql.Identifier(t)))
'''
    assert len(sql_formatting_violations(bad)) == 7, sql_formatting_violations(bad)
    assert sql_formatting_violations(good) == []


@scenario("SQL built by string formatting anywhere in jointembed_pg/ (AST check of every "
          ".execute/.executemany/.copy/sql.SQL call)", "none: identifiers via psycopg.sql.Identifier, "
          "values bound", "security")
def test_no_sql_built_by_string_formatting(observe):
    files = sorted((REPO / "jointembed_pg").rglob("*.py"))
    found = [v for f in files for v in sql_formatting_violations(f.read_text(encoding="utf-8"),
                                                                 str(f.relative_to(REPO)))]
    assert found == [], "\n".join(found)
    calls = sum(1 for f in files for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
                if isinstance(n, ast.Call) and _call_name(n) in _SQL_CALLS)
    observe(f"{len(files)} modules, {calls} SQL calls checked: 0 violations")
