"""search_path hijack (issue 23.1): no role gains rights through a name planted in ``public``.

The attack: a role with CREATE on ``public`` (PostgreSQL < 15 grants it to everyone; many
apps grant it) plants ``public.array_remove(text[], text)`` -- or any other built-in's
name -- and waits for the owner's code (a SECURITY DEFINER trigger after one INSERT, or the
owner's own ``jointembed sync``) to call it by its bare name with ``public`` searched first.
The rule that stops it (docs/DESIGN.md, "search_path rule"): every jointembed function runs
with ``search_path = pg_catalog, jointembed, pg_temp``, and pgvector's objects are written
qualified (``@vector@``).

Two tests, both generated, not hand lists, so new functions and new SQL are covered:

* every jointembed function's ``proconfig``: a search_path with ``pg_catalog`` first,
  ``pg_temp`` last, and no schema that PUBLIC or a role other than the owner may CREATE in;
* the attack itself: every name the project's SQL calls (identifiers before ``(`` and the
  operators, in ``sql/**/*.sql`` and the SQL string constants of ``jointembed_pg``) that is
  a pg_catalog function or operator gets, in ``public``, a shadow with the signature of each
  of its pg_catalog overloads that a plain role can create, planted by an unprivileged
  role. Each shadow records its call in a sequence (non-transactional: a call is seen even
  when the statement then fails) and a log table. Then attach, the user's INSERT / UPDATE
  / DELETE / TRUNCATE, sync, worker, status, reembed and every search run as the owner, the
  worker role and the app role: no shadow may ever run, and no role's attributes change.
"""
from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from jointembed_pg import db, migrations
from jointembed_pg.search.store import Store
from jointembed_pg.sync import catalog as sync, reembed as sync_reembed
from jointembed_pg.sync.drain import sync_table
from jointembed_pg.sync.worker import Worker
from test_reliability_support import scenario
from test_sync_support import Projected, make_photos

pytest_plugins = ["_reliability"]

ROOT = Path(__file__).resolve().parent.parent
RULE = "pg_catalog, jointembed, pg_temp"

# -- what the project's SQL calls --------------------------------------------------------

_IDENT_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_$]*)\s*\(")
_OPERATOR = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
#: SQL syntax that the parser turns into operators or functions of pg_catalog.
_IMPLIED = {r"\bLIKE\b": ["~~", "!~~"], r"\bILIKE\b": ["~~*", "!~~*"], r"\bBETWEEN\b": [">=", "<="],
            r"\bIN\b|\bANY\b|\bDISTINCT\b|\bNULLIF\b|\bCASE\b": ["=", "<>"],
            r"\bSIMILAR\b": ["~", "similar_to_escape"], r"\bSUBSTRING\b": ["substring"],
            r"\bPOSITION\b": ["position"], r"\bOVERLAY\b": ["overlay"], r"\bTRIM\b": ["btrim", "ltrim", "rtrim"],
            r"\bEXTRACT\b": ["extract", "date_part"], r"\bAT\s+TIME\s+ZONE\b": ["timezone"]}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return "\n".join(line.split("--", 1)[0] if "--" in line and "'" not in line.split("--", 1)[0]
                     else line for line in text.splitlines())


def sql_sources() -> list[str]:
    """The project's SQL: every ``sql/**/*.sql`` file and every string constant of
    ``jointembed_pg/**/*.py`` that reads as SQL (a statement keyword in it)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "sql").rglob("*.sql"))]
    keyword = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|COPY|WITH|DROP|GRANT|LOCK)\b")
    for path in sorted((ROOT / "jointembed_pg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and keyword.search(node.value):
                texts.append(node.value)
    return [_strip_comments(t) for t in texts]


def used_names() -> tuple[set[str], set[str]]:
    """(function-like names, operator tokens) appearing in the project's SQL."""
    funcs, ops = set(), set()
    for text in sql_sources():
        funcs.update(m.lower() for m in _IDENT_CALL.findall(text))
        for tok in _OPERATOR.findall(text):
            ops.add(tok)
            # '<>' next to a '(' or a sign may be glued to the next token: add its prefixes
            ops.update(tok[:i] for i in range(1, len(tok)))
        for pat, implied in _IMPLIED.items():
            if re.search(pat, text, flags=re.I):
                (ops if not implied[0][0].isalpha() else funcs).update(implied)
    funcs.update({"count", "array_agg", "max", "min", "sum", "now", "set_config", "current_setting"})
    return funcs, ops


# -- the shadows ---------------------------------------------------------------------------

_OVERLOADS_SQL = """
SELECT p.oid, p.proname, p.prokind, p.provolatile, p.provariadic <> 0 AS variadic, p.pronargs,
       pg_catalog.pg_get_function_arguments(p.oid) AS args,
       pg_catalog.pg_get_function_identity_arguments(p.oid) AS ident,
       pg_catalog.pg_get_function_result(p.oid) AS result
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (%s) AND p.prokind IN ('f', 'a')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proargtypes::oid[] || p.prorettype) t(oid)
                  WHERE t.oid IN ('internal'::regtype, 'cstring'::regtype, 'language_handler'::regtype,
                                  'fdw_handler'::regtype, 'index_am_handler'::regtype, 'tsm_handler'::regtype,
                                  'table_am_handler'::regtype, 'trigger'::regtype, 'event_trigger'::regtype,
                                  '"any"'::regtype, 'anyenum'::regtype, 'anyrange'::regtype,
                                  'anymultirange'::regtype, 'anycompatiblerange'::regtype,
                                  'anycompatiblemultirange'::regtype))
ORDER BY p.proname, p.oid
"""
_OPERATORS_SQL = """
SELECT o.oid, o.oprname, (SELECT p.provolatile FROM pg_catalog.pg_proc p WHERE p.oid = o.oprcode),
       pg_catalog.format_type(NULLIF(o.oprleft, 0), NULL),
       pg_catalog.format_type(NULLIF(o.oprright, 0), NULL), pg_catalog.format_type(o.oprresult, NULL)
FROM pg_catalog.pg_operator o
WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY (%s)
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(ARRAY[o.oprleft, o.oprright, o.oprresult]) t(oid)
                  WHERE t.oid IN ('internal'::regtype, 'anyenum'::regtype, 'anyrange'::regtype,
                                  'anymultirange'::regtype, '"any"'::regtype))
ORDER BY o.oprname, o.oid
"""


#: a shadow claims its original's volatility (else an index predicate would refuse it, not run it)
_VOL = {"i": "IMMUTABLE", "s": "STABLE", "v": "VOLATILE"}


def _hit(label: str) -> str:
    return f"SELECT je_audit.hit({_lit(label)});"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def plant_shadows(conn: psycopg.Connection, funcs: set[str], ops: set[str]) -> dict:
    """As the (unprivileged) role of ``conn``, plant in public a shadow of every pg_catalog
    overload of ``funcs`` and ``ops`` it can create. Returns counts."""
    made = {"functions": 0, "aggregates": 0, "operators": 0, "better": 0, "skipped": 0, "names": set()}

    def attempt(stmt: str, kind: str, name: str) -> None:
        try:
            with conn.transaction():
                conn.execute(stmt)
            made[kind] += 1
            made["names"].add(name)
        except psycopg.Error:
            made["skipped"] += 1

    rows = conn.execute(_OVERLOADS_SQL, [sorted(funcs)]).fetchall()
    for oid, name, kind, vol, variadic, nargs, args, ident, result in rows:
        label = f"{name}({ident})"
        if kind == "f":
            call = ", ".join(f"${i}" for i in range(1, nargs + 1))
            if variadic and nargs:
                call = ", ".join([f"${i}" for i in range(1, nargs)] + [f"VARIADIC ${nargs}"])
            body = f"{_hit(label)} SELECT * FROM pg_catalog.{sql.Identifier(name).as_string(conn)}({call})"
            attempt(f"CREATE FUNCTION public.{sql.Identifier(name).as_string(conn)}({args}) RETURNS {result} "
                    f"LANGUAGE sql {_VOL[vol]} AS {_lit(body)}", "functions", name)
        else:   # an aggregate: same input signature, a transition function that records the call
            sf = f"je_sf_{oid}"
            attempt(f"CREATE FUNCTION public.{sf}({', '.join(['integer'] + ([ident] if ident else []))}) "
                    f"RETURNS integer LANGUAGE sql AS {_lit(_hit(label) + ' SELECT 0')}", "skipped", sf)
            made["skipped"] -= 1
            attempt(f"CREATE AGGREGATE public.{sql.Identifier(name).as_string(conn)}({ident or '*'}) "
                    f"(SFUNC = public.{sf}, STYPE = integer, INITCOND = '0')", "aggregates", name)
    for oid, name, vol, left, right, result in conn.execute(_OPERATORS_SQL, [sorted(ops)]).fetchall():
        label = f"OPERATOR({name})({left or 'NONE'}, {right})"
        fn = f"je_op_{oid}"
        if left is None:
            params, call = right, f"OPERATOR(pg_catalog.{name}) $1"
        else:
            params, call = f"{left}, {right}", f"$1 OPERATOR(pg_catalog.{name}) $2"
        attempt(f"CREATE FUNCTION public.{fn}({params}) RETURNS {result} LANGUAGE sql {_VOL[vol]} "
                f"AS {_lit(_hit(label) + ' SELECT ' + call)}", "skipped", fn)
        made["skipped"] -= 1
        sides = f"RIGHTARG = {right}" if left is None else f"LEFTARG = {left}, RIGHTARG = {right}"
        attempt(f"CREATE OPERATOR public.{name} (FUNCTION = public.{fn}, {sides})", "operators", name)
    _plant_better_matches(conn, funcs, ops, attempt)
    return made


#: Concrete types a better-matching shadow takes where pg_catalog's overload is polymorphic
#: (or "any"): with public on a caller's path, public.array_agg(integer) beats
#: pg_catalog.array_agg(anynonarray) although pg_catalog is searched first.
CONCRETE = ["text", "integer", "bigint", "name", "oid", "double precision", "boolean", "jsonb", "regclass",
            "timestamp with time zone", "uuid", "numeric", "bytea", "smallint", "interval"]
_ELEMENT = {"anyelement", "anynonarray", "anycompatible", "anycompatiblenonarray", '"any"'}
_ARRAY = {"anyarray", "anycompatiblearray"}
_POLY_SQL = """
SELECT p.oid, p.proname, p.prokind, p.provolatile, p.proretset, p.provariadic <> 0,
       ARRAY(SELECT pg_catalog.format_type(u.t, NULL) FROM pg_catalog.unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i)
             ORDER BY u.i),
       pg_catalog.format_type(p.prorettype, NULL)
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (%s) AND p.prokind IN ('f', 'a')
  AND p.proallargtypes IS NULL
  AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proargtypes::oid[]) t(oid)
              WHERE t.oid::regtype::text IN ('anyelement', 'anynonarray', 'anycompatible', 'anycompatiblenonarray',
                                             '"any"', 'anyarray', 'anycompatiblearray'))
ORDER BY p.proname, p.oid
"""
_POLY_OPS_SQL = """
SELECT o.oid, o.oprname, (SELECT p.provolatile FROM pg_catalog.pg_proc p WHERE p.oid = o.oprcode),
       pg_catalog.format_type(NULLIF(o.oprleft, 0), NULL), pg_catalog.format_type(o.oprright, NULL),
       pg_catalog.format_type(o.oprresult, NULL)
FROM pg_catalog.pg_operator o
WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = ANY (%s)
  AND (o.oprleft::regtype::text IN ('anyelement', 'anynonarray', 'anycompatible', 'anyarray', 'anycompatiblearray',
                                    'anycompatiblenonarray')
       OR o.oprright::regtype::text IN ('anyelement', 'anynonarray', 'anycompatible', 'anyarray', 'anycompatiblearray',
                                        'anycompatiblenonarray'))
ORDER BY o.oprname, o.oid
"""


def _concrete(typ: str | None, t: str) -> str | None:
    if typ is None:
        return None
    return t if typ in _ELEMENT else f"{t}[]" if typ in _ARRAY else typ


def _plant_better_matches(conn, funcs: set[str], ops: set[str], attempt) -> None:
    """Concrete-typed shadows of pg_catalog's polymorphic / "any" overloads (see CONCRETE)."""
    for oid, name, kind, vol, retset, variadic, args, result in conn.execute(_POLY_SQL, [sorted(funcs)]).fetchall():
        ident = sql.Identifier(name).as_string(conn)
        for t in CONCRETE:
            shapes = [[_concrete(a, t) for a in args]]
            if variadic and args[-1] == '"any"':   # format(text, VARIADIC "any"): 1 and 2 trailing values
                shapes = [[_concrete(a, t) for a in args], [_concrete(a, t) for a in args] + [t]]
            elif variadic:
                continue
            for shape in shapes:
                label = f"{name}({', '.join(shape)}) [better match]"
                if kind == "f":
                    ret = _concrete(result, t) if result != '"any"' else t
                    body = f"{_hit(label)} SELECT NULL::{ret}" + (" WHERE false" if retset else "")
                    attempt(f"CREATE FUNCTION public.{ident}({', '.join(shape)}) RETURNS {'SETOF ' if retset else ''}"
                            f"{ret} LANGUAGE sql {_VOL[vol]} AS {_lit(body)}", "better", name)
                else:
                    sf = f"je_bsf_{oid}_{CONCRETE.index(t)}"
                    attempt(f"CREATE FUNCTION public.{sf}(integer, {', '.join(shape)}) RETURNS integer LANGUAGE sql "
                            f"AS {_lit(_hit(label) + ' SELECT 0')}", "better", name)
                    ff = f"je_bff_{oid}_{CONCRETE.index(t)}"   # the original's result type, so the query plans
                    res = _concrete(result, t)
                    attempt(f"CREATE FUNCTION public.{ff}(integer) RETURNS {res} LANGUAGE sql "
                            f"AS {_lit('SELECT NULL::' + res)}", "better", name)
                    attempt(f"CREATE AGGREGATE public.{ident}({', '.join(shape)}) "
                            f"(SFUNC = public.{sf}, STYPE = integer, INITCOND = '0', FINALFUNC = public.{ff})",
                            "better", name)
    for oid, name, vol, left, right, result in conn.execute(_POLY_OPS_SQL, [sorted(ops)]).fetchall():
        for t in CONCRETE:
            lt, rt, res = _concrete(left, t), _concrete(right, t), _concrete(result, t)
            label = f"OPERATOR({name})({lt or 'NONE'}, {rt}) [better match]"
            fn = f"je_bop_{oid}_{CONCRETE.index(t)}"
            params = rt if lt is None else f"{lt}, {rt}"
            attempt(f"CREATE FUNCTION public.{fn}({params}) RETURNS {res} LANGUAGE sql {_VOL[vol]} "
                    f"AS {_lit(_hit(label) + ' SELECT NULL::' + res)}", "better", fn)
            sides = f"RIGHTARG = {rt}" if lt is None else f"LEFTARG = {lt}, RIGHTARG = {rt}"
            attempt(f"CREATE OPERATOR public.{name} (FUNCTION = public.{fn}, {sides})", "better", name)


# -- fixtures --------------------------------------------------------------------------------

_RIGHTS_SQL = """
SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication, r.rolinherit,
       r.rolcanlogin, (SELECT pg_catalog.array_agg(m.roleid::regrole::text ORDER BY 1) FROM pg_catalog.pg_auth_members m
                       WHERE m.member = r.oid)
FROM pg_catalog.pg_roles r ORDER BY r.rolname
"""


def _role_dsn(dsn: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=role)


@pytest.fixture(scope="module")
def hijack(module_pg_dsn):
    """``(owner_dsn, roles)``: a database with the audit log, the attacker's role and its
    shadows in public, a worker role and an app role (created, not yet granted)."""
    tag = uuid.uuid4().hex[:6]
    roles = {k: f"je_{k}_{tag}" for k in ("atk", "worker", "app")}
    with psycopg.connect(module_pg_dsn, autocommit=True) as c:
        dbname = sql.Identifier(c.info.dbname)
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for r in roles.values():
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(r)))
            c.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(dbname, sql.Identifier(r)))
        # PG 15+ revokes CREATE on public from PUBLIC: give it back to the attacker, as an app would
        c.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(roles["atk"])))
        c.execute("""
            CREATE SCHEMA je_audit;
            CREATE TABLE je_audit.log (who name, what text, at timestamptz DEFAULT clock_timestamp());
            CREATE SEQUENCE je_audit.calls;
            CREATE FUNCTION je_audit.hit(what text) RETURNS void LANGUAGE sql AS $$
                SELECT pg_catalog.nextval('je_audit.calls');
                INSERT INTO je_audit.log (who, what) VALUES (current_user, what);
            $$;
            GRANT USAGE ON SCHEMA je_audit TO PUBLIC;
            GRANT INSERT, SELECT ON je_audit.log TO PUBLIC;
            GRANT USAGE, SELECT, UPDATE ON SEQUENCE je_audit.calls TO PUBLIC;
        """)
    funcs, ops = used_names()
    with psycopg.connect(_role_dsn(module_pg_dsn, roles["atk"]), autocommit=True) as a:
        assert not a.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        made = plant_shadows(a, funcs, ops)
    return module_pg_dsn, roles, made, funcs, ops


def _hits(conn) -> list:
    calls = conn.execute("SELECT last_value, is_called FROM je_audit.calls").fetchone()
    log = conn.execute("SELECT who::text, what FROM je_audit.log ORDER BY at").fetchall()
    return [] if not calls[1] and not log else [("calls", calls[0])] + log


def test_shadow_set_is_generated_and_covers_the_attack(hijack):
    _, _, made, funcs, ops = hijack
    # the names of the reproduced attack and of the SQL the functions run are all covered
    for name in ("array_remove", "format", "unnest", "pg_notify", "quote_ident", "set_config", "count", "array_agg",
                 "coalesce", "jsonb_build_object", "left", "octet_length", "now", "pg_backend_pid"):
        assert name in funcs, name
    # ... and the SQL text encoder's (sql/functions/80_text.sql)
    for name in ("regexp_replace", "btrim", "lower", "regexp_split_to_array", "char_length", "substr",
                 "generate_series", "array_positions", "quote_literal", "quote_nullable", "cardinality"):
        assert name in funcs and name in made["names"], name
    for op in ("=", "<>", "<=", "||", "<<", "|"):
        assert op in ops, op
    assert {"array_remove", "unnest", "pg_notify", "quote_ident", "set_config", "left", "octet_length", "now",
            "pg_backend_pid", "format_type", "array_agg", "count", "max"} <= made["names"]
    assert {"=", "<>", "||", "<<", "|"} <= made["names"]
    assert made["functions"] > 50 and made["operators"] > 300 and made["aggregates"] > 20, made
    assert made["better"] > 200, made


@scenario("search_path hijack: an unprivileged role with CREATE on public plants a shadow of every pg_catalog "
          "function, aggregate and operator the project's SQL uses (each overload's signature, plus better-matching "
          "concrete overloads of polymorphic ones), then attach, INSERT/UPDATE/DELETE/TRUNCATE, sync, worker, status, "
          "reembed and every search run as owner (superuser), worker and app role",
          "no shadow ever runs (call counter 0, log empty); no role's attributes or memberships change", "security")
def test_no_shadow_runs_and_no_role_gains_rights(hijack, bundle, tmp_path, observe, pgvector_version):
    dsn, roles, made, _, _ = hijack
    from _pg import version_tuple
    binary_kinds = ("binary", "binary-ivf") if version_tuple(pgvector_version) >= (0, 7) else ()
    binary_tables: dict[str, str] = {}
    atk, worker, app = roles["atk"], roles["worker"], roles["app"]
    with psycopg.connect(dsn, autocommit=True) as admin:
        rights_before = admin.execute(_RIGHTS_SQL).fetchall()
        assert _hits(admin) == []
    def everything():
        rows = [(i, f"caption number {i}", f"img{i}.jpg") for i in range(1, 9)]
        q = np.asarray(bundle.encode_texts(["caption number 3"])[0], np.float32)
        # -- the owner (a superuser here, as on the embedded server): migrations, attach, sync ...
        with db.connect(dsn, autocommit=True) as own:
            migrations.apply(own)
            make_photos(own, rows)
            sync.attach(own, "photos", bundle, key="id", text_column="caption")
            for role in (worker, app):
                own.execute("SELECT jointembed.grant_usage(%s)", [role])
            own.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.photos TO {}")
                        .format(sql.Identifier(app)))
            assert sync_table(own, "photos", bundle).written == 8
            store = Store(own)
            col = store.collection("shadowed", bundle=bundle)
            col.add_texts([r[1] for r in rows], keys=[str(r[0]) for r in rows])
            col.ensure_index()
            assert len(col.search_vector(q, target="text", k=3)) == 3
            assert len(col.search_vector(q, target="text", k=3, where="i.key <> %(k)s", params={"k": "1"})) == 3
            hit = col.search_vector(q, target="text", k=1)[0]
            assert len(col.more_like_this(hit.id, k=2)) == 2
            # the binary search paths of jointembed.knn (bit HNSW; IVFFlat with ivfflat.probes from
            # the catalog, sql/functions/16_binary_index.sql), with a filter run under the caller's path
            for kind in binary_kinds:
                bc = store.collection(f"shadowed-{kind}", bundle=bundle, create=True, index=kind)
                bc.add_texts([r[1] for r in rows], keys=[str(r[0]) for r in rows])
                bc.ensure_index()
                assert len(bc.search_vector(q, target="text", k=3)) == 3
                assert len(bc.search_vector(q, target="text", k=3, where="i.key <> %(k)s", params={"k": "1"})) == 3
                binary_tables[kind] = bc.info.items_table
            own.execute("GRANT SELECT ON ALL TABLES IN SCHEMA jointembed TO " + sql.Identifier(app).as_string(own))
            own.execute("SELECT jointembed.grant_usage(%s)", [app])
        # -- the app role: the user's writes fire the SECURITY DEFINER trigger; SQL searches
        with db.connect(_role_dsn(dsn, app), autocommit=True) as a:
            a.execute("INSERT INTO photos (id, caption, image_path) VALUES (100, 'a new caption', 'x.jpg'), "
                      "(101, 'another', 'y.jpg')")
            a.execute("UPDATE photos SET caption = caption || ' (edited)' WHERE id IN (1, 2, 100)")
            a.execute("UPDATE photos SET id = 102 WHERE id = 101")
            a.execute("DELETE FROM photos WHERE id = 3")
            vec = q
            for stmt in ["SELECT * FROM jointembed.search('shadowed', %s, 3)",
                         "SELECT * FROM jointembed.search_attached('photos'::regclass, %s, 3)"]:
                assert len(a.execute(stmt, [vec]).fetchall()) == 3
            assert len(a.execute("SELECT * FROM jointembed.more_like_this('shadowed', %s, 2)", [hit.id]).fetchall()) == 2
            for kind in binary_kinds:
                assert len(a.execute("SELECT * FROM jointembed.search(%s, %s, 3, 'text')",
                                     [f"shadowed-{kind}", vec]).fetchall()) == 3
                # the index path with a filter under the app's path (never the exact scan)
                assert len(a.execute(sql.SQL(
                    "SELECT * FROM jointembed.knn(NULL::{}, %s, 3, 'text', p_filter => %s, p_args => %s, "
                    "p_exact_below => 0)").format(sql.Identifier("jointembed", binary_tables[kind])),
                    [vec, "i.key <> $3->>'k'", Jsonb({"k": "1"})]).fetchall()) == 3
            assert len(sync.search_attached(a, "photos", q, k=3, target="text")) == 3
            # the SQL text encoder (issue 25): fast path, WordPiece slow path, [UNK], CJK, punctuation,
            # accents, the mostly-[UNK] WARNING and a refusal
            mid = a.execute("SELECT model_id FROM jointembed.collections WHERE name = 'shadowed'").fetchone()[0]
            assert a.execute("SELECT jointembed.text_pieces(%s, %s)",
                             [mid, "Ünïcödé caption, e.g. supercalifragilistic 東京 " + "x" * 120]).fetchone()[0]
            assert a.execute("SELECT jointembed.embed_text('shadowed', 'caption number 3')").fetchone()[0] is not None
            a.execute("SELECT jointembed.embed_text('shadowed', %s)", ["\U0001f436 \U0001f680 dog"])
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                a.execute("SELECT jointembed.embed_text('shadowed', %s)", ["\U0001f436\u200b"])
            assert len(a.execute("SELECT * FROM jointembed.search_text('shadowed', 'caption number 3', 3, 'text')")
                       .fetchall()) == 3
            assert len(a.execute("SELECT * FROM jointembed.search_attached_text('photos'::regclass, "
                                 "'caption number 3', 3, 'text')").fetchall()) == 3
        # -- the worker role: drain, status, search
        with db.connect(_role_dsn(dsn, worker), autocommit=True) as w:
            assert sync_table(w, "photos", bundle).written >= 3
            assert sync.status(w, "photos")[0]["done"] >= 8
            assert len(sync.search_attached(w, "photos", q, k=3, target="text")) == 3
            w.execute("SELECT jointembed.sync_status(a.id) FROM jointembed.attachments a")
        # -- the owner again: more writes, the worker, status, reembed, TRUNCATE, detach
        with db.connect(dsn, autocommit=True) as own:
            own.execute("INSERT INTO photos (id, caption, image_path) VALUES (200, 'owner row', 'z.jpg')")
            Worker(dsn, bundle, tables=[("photos", None)]).run(until_idle=True, handle_signals=False)
            st = sync.status(own, "photos")[0]
            assert st["pending"] == 0 and st["failed"] == 0, st
            rep = sync_reembed.reembed(own, "photos", Projected(bundle, 16, "shadow-16"))
            assert rep.switched
            assert len(sync.search_attached(own, "photos", Projected(bundle, 16, "shadow-16").encode_texts(["x"])[0],
                                            k=2, target="text")) == 2
            own.execute("SELECT jointembed.sync_rescan(a.id), jointembed.sync_retry_failed(a.id, a.active_version) "
                        "FROM jointembed.attachments a")
            own.execute("TRUNCATE photos")
            sync_table(own, "photos", Projected(bundle, 16, "shadow-16"))
            assert sync.status(own, "photos")[0]["done"] == 0
            own.execute("UPDATE jointembed.definitions SET sha256 = 'outdated'")   # re-apply every definition
            migrations.apply(own)
            sync.detach(own, "photos")
            Store(own).drop_collection("shadowed")
            for kind in binary_kinds:
                Store(own).drop_collection(f"shadowed-{kind}")
    failure = None
    try:
        everything()
    except Exception as e:  # noqa: BLE001 - a captured call often breaks the statement: report the hits first
        failure = e
    with psycopg.connect(dsn, autocommit=True) as admin:
        hits = _hits(admin)
        assert hits == [], f"shadows planted in public ran: {hits[:12]} (then: {failure!r:.300})"
        assert admin.execute(_RIGHTS_SQL).fetchall() == rights_before
        assert not admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [atk]).fetchone()[0]
    if failure is not None:
        raise failure
    observe(f"{made['functions']} function, {made['aggregates']} aggregate and {made['operators']} operator shadows "
            f"with pg_catalog's signatures and {made['better']} better-matching ones planted; every step ran as "
            "owner, worker and app role: 0 shadow calls, role attributes unchanged")


# -- every function's own search_path --------------------------------------------------------

_CONFIG_SQL = """
SELECT p.oid::regprocedure::text, p.proowner,
       (SELECT s FROM pg_catalog.unnest(p.proconfig) s WHERE s LIKE 'search\\_path=%%')
FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'jointembed'::regnamespace ORDER BY 1
"""
#: roles (or PUBLIC) other than the function's owner (and its members), the schema's owner
#: and superusers that may CREATE in schema %(nsp)s
_WRITERS_SQL = """
SELECT 'PUBLIC' FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
WHERE n.nspname = %(nsp)s AND a.grantee = 0 AND a.privilege_type = 'CREATE'
UNION ALL
SELECT r.rolname FROM pg_catalog.pg_roles r
WHERE NOT r.rolsuper AND r.oid <> %(owner)s AND NOT pg_catalog.pg_has_role(r.oid, %(owner)s, 'USAGE')
  AND r.oid <> (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = %(nsp)s)
  AND pg_catalog.has_schema_privilege(r.oid, %(nsp)s, 'CREATE')
"""


def path_violations(conn) -> list[str]:
    """Every jointembed function whose search_path breaks the rule, with why."""
    bad = []
    for fn, owner, setting in conn.execute(_CONFIG_SQL).fetchall():
        if setting is None:
            bad.append(f"{fn}: no search_path")
            continue
        path = [s.strip().strip('"') for s in setting.split("=", 1)[1].split(",")]
        if path[0] != "pg_catalog":
            bad.append(f"{fn}: {setting}: pg_catalog is not first")
        if path[-1] != "pg_temp":
            bad.append(f"{fn}: {setting}: pg_temp is not last")
        for nsp in path:
            if nsp in ("pg_temp", "$user") or conn.execute("SELECT pg_catalog.to_regnamespace(%s)", [nsp]).fetchone()[0] is None:
                if nsp == "$user":
                    bad.append(f"{fn}: {setting}: $user")
                continue
            writers = [r for (r,) in conn.execute(_WRITERS_SQL, {"nsp": nsp, "owner": owner}).fetchall()]
            if writers:
                bad.append(f"{fn}: {setting}: {nsp} is writable by {', '.join(sorted(writers))}")
    return bad


@scenario("search_path of every function in schema jointembed (pgvector in public, and in a schema "
          "`extensions` another role may CREATE in; schema jointembed made by an admin with CREATE for PUBLIC)",
          "each is exactly pg_catalog, jointembed, pg_temp; no schema on it writable by PUBLIC or a non-owner role; "
          "a later function with its own bad path is brought under the rule by the next apply", "security")
@pytest.mark.parametrize("managed", [False, True], ids=["public", "extensions"])
def test_every_function_pins_pg_catalog_first_and_no_writable_schema(pg_dsn, managed, observe):
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        role = "je_other_" + uuid.uuid4().hex[:6]
        c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        if managed:
            c.execute("CREATE SCHEMA extensions")
            c.execute("CREATE EXTENSION vector SCHEMA extensions")
            c.execute(sql.SQL("GRANT CREATE ON SCHEMA extensions TO {}").format(sql.Identifier(role)))
        # an admin made schema jointembed and let PUBLIC create in it: the apply takes that back
        c.execute("CREATE SCHEMA jointembed")
        c.execute("GRANT CREATE ON SCHEMA jointembed TO PUBLIC")
        with db.connect(pg_dsn, autocommit=True) as own:
            migrations.apply(own)
        n = c.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'jointembed'::regnamespace").fetchone()[0]
        assert n > 30
        assert path_violations(c) == []
        configs = {s for _, _, s in c.execute(_CONFIG_SQL).fetchall()}
        assert configs == {f"search_path={RULE}"}
        assert not c.execute("SELECT has_schema_privilege(%s, 'jointembed', 'CREATE')", [role]).fetchone()[0]
        # a function created later with a bad path of its own is brought under the rule too
        c.execute("CREATE FUNCTION jointembed.late() RETURNS int LANGUAGE sql "
                  "SET search_path = public, pg_catalog AS 'SELECT 1'")
        assert any(v.startswith("jointembed.late()") for v in path_violations(c))
        c.execute("UPDATE jointembed.definitions SET sha256 = 'outdated'")
        with db.connect(pg_dsn, autocommit=True) as own:
            migrations.apply(own)
        assert path_violations(c) == []
        observe(f"{n} functions, all search_path={RULE}; CREATE on jointembed revoked from PUBLIC; "
                "jointembed.late() (public, pg_catalog) fixed by the next apply")


def test_schema_made_by_an_admin_for_the_app_role(pg_dsn):
    """An admin made schema jointembed and granted CREATE to the app role (which owns the
    functions) and to PUBLIC: the app role cannot revoke PUBLIC's right, so the apply
    refuses, naming it; once the admin revokes it, the apply works and the rule holds."""
    role = "je_app_" + uuid.uuid4().hex[:6]
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        r = sql.Identifier(role)
        c.execute("CREATE EXTENSION vector")
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(r))
        c.execute("CREATE SCHEMA jointembed")
        c.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA jointembed TO {}").format(r))
        c.execute("GRANT CREATE ON SCHEMA jointembed TO PUBLIC")
        app = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
        with psycopg.connect(app, autocommit=True) as own:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="PUBLIC may CREATE in schema jointembed"):
                migrations.apply(own)
        c.execute("REVOKE CREATE ON SCHEMA jointembed FROM PUBLIC")
        with db.connect(app, autocommit=True) as own:
            migrations.apply(own)
        assert path_violations(c) == []
        assert c.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'jointembed'::regnamespace "
                         "AND proowner = %s::regrole", [role]).fetchone()[0] > 30
