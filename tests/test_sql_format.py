"""Dynamic SQL in sql/ pastes raw text (``%s`` in ``format()``) only where the value is built
from the live catalog through a reg* output function (regclass, regoper, regprocedure), a
type name checked by the regtype input function, an integer/numeric computed in the function,
or a fragment the function itself built with ``%I``/``%L`` — never a value from a table row,
a file or a user. Values go through ``%L``, identifiers through ``%I``.

Every ``%s`` placeholder is listed here with why it is safe, so a new one fails this test
until it is reviewed (or, better, written with ``%I``/``%L``/a reg* cast).
"""
from __future__ import annotations

import re
from pathlib import Path

SQL = Path(__file__).resolve().parent.parent / "sql"
_PLACEHOLDER = re.compile(r"%(\d+\$)?s")

#: (file, text on the line) -> why the pasted value is safe
REVIEWED = {
    ("30_sync_attach.sql", "format('OPERATOR(%s)', o.oid::pg_catalog.regoper)"): "regoper output of a catalog oid",
    ("30_sync_attach.sql", "key          %2$s        NOT NULL,"): "_sync_key_type: format_type, regtype-checked",
    ("30_sync_attach.sql", "key             %2$s,"): "_sync_key_type: format_type, regtype-checked",
    ("30_sync_attach.sql", "FROM %3$s t CROSS JOIN"): "_sync_rel: regclass of the live oid",
    ("30_sync_attach.sql", "WHERE q.key %4$s t.%2$I"): "_sync_key_eq: OPERATOR(regoper)",
    ("30_sync_attach.sql", "%3$s AS t, %4$s AS i FROM old_rows"): "column expressions built with %I here",
    ("30_sync_attach.sql", "%3$s AS t, %4$s AS i FROM new_rows"): "column expressions built with %I here",
    ("30_sync_attach.sql", "LEFT JOIN o ON o.k %5$s n.k"): "_sync_key_eq: OPERATOR(regoper)",
    ("30_sync_attach.sql", "WHERE n.k %5$s o.k"): "_sync_key_eq: OPERATOR(regoper)",
    ("30_sync_attach.sql", "AFTER INSERT ON %s"): "regclass",
    ("30_sync_attach.sql", "AFTER UPDATE ON %s"): "regclass",
    ("30_sync_attach.sql", "AFTER DELETE ON %s"): "regclass",
    ("30_sync_attach.sql", "AFTER TRUNCATE ON %s"): "regclass",
    ("30_sync_attach.sql", "LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel::regclass"): "regclass",
    ("30_sync_attach.sql", "DROP TRIGGER %I ON %s"): "regclass",
    ("40_sync_queue.sql", "FROM %2$s u WHERE u.%3$I %4$s s.key"): "regclass + OPERATOR(regoper)",
    ("40_sync_queue.sql", "ON r.key %2$s g.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "THEN %4$s ELSE %5$s END AS t"): "column expressions built with %I here",
    ("40_sync_queue.sql", "THEN %6$s END AS b"): "column expression built with %I here",
    ("40_sync_queue.sql", "FROM %2$s u WHERE u.%3$I %8$s q.key"): "regclass + OPERATOR(regoper)",
    ("40_sync_queue.sql", "ON s.key %8$s q.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "FROM %3$s u WHERE u.%4$I %5$s q.key"): "regclass + OPERATOR(regoper)",
    ("40_sync_queue.sql", "WHERE o.key %5$s q.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "s.key %5$s m.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "r.key %5$s m.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "r.key %3$s m.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "WHERE s.key %3$s f.key"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "WHERE s.key %5$s u.k"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "WHERE q.key %5$s u.k"): "OPERATOR(regoper)",
    ("40_sync_queue.sql", "FROM %4$s t %6$s"): "regclass + a TABLESAMPLE/LIMIT clause built here from numbers",
    ("40_sync_queue.sql", "TABLESAMPLE SYSTEM (%s)"): "numeric computed here",
    ("40_sync_queue.sql", "format('LIMIT %s', p_exact_rows)"): "integer argument",
    ("50_sync_versions.sql", "WHERE o.key %4$s q.key AND o.modality = q.modality"): "_sync_key_eq: OPERATOR(regoper)",
    ("50_sync_versions.sql", "LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', jointembed._sync_rel(a)"): "regclass",
    ("70_grants.sql", "GRANT EXECUTE ON FUNCTION %s TO %I"): "regprocedure",
    ("70_grants.sql", "GRANT INSERT, UPDATE, DELETE ON %s TO %I"): "regclass",
    ("70_grants.sql", "ON SEQUENCE %s TO %I', s::regclass"): "regclass",
    ("70_grants.sql", "REVOKE ALL ON FUNCTION %s FROM PUBLIC"): "regprocedure",
    ("95_search_path.sql", "ALTER ROUTINE %s SET search_path"): "regprocedure",
    ("95_search_path.sql", "REVOKE CREATE ON SCHEMA jointembed FROM %s"): "regrole output of a catalog oid",
}


def _placeholder_lines():
    for path in sorted(SQL.rglob("*.sql")):
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("--", 1)[0]
            if "LIKE '%sync%'" in code:  # a LIKE pattern, not a format() placeholder
                code = code.replace("'%sync%'", "")
            if _PLACEHOLDER.search(code):
                yield path.name, no, code.strip()


def test_every_raw_placeholder_in_dynamic_sql_is_reviewed():
    unreviewed = [f"{name}:{no}: {code}" for name, no, code in _placeholder_lines()
                  if not any(name == f and snippet in code for f, snippet in REVIEWED)]
    assert not unreviewed, "raw %s in dynamic SQL; use %I/%L/a reg* cast or review it here:\n" + "\n".join(unreviewed)


def test_the_reviewed_list_has_no_stale_entries():
    lines = list(_placeholder_lines())
    stale = [k for k in REVIEWED if not any(name == k[0] and k[1] in code for name, _, code in lines)]
    assert not stale, stale


def test_collection_and_side_table_types_are_identifiers_and_literals():
    """The vector column type is ``%I.%I(%L)`` / ``%I.vector(%L)``, no pasted format_type text."""
    coll = (SQL / "functions" / "10_collections.sql").read_text(encoding="utf-8")
    attach = (SQL / "functions" / "30_sync_attach.sql").read_text(encoding="utf-8")
    assert "embedding    %2$I.%3$I(%4$L) NOT NULL" in coll
    assert "embedding    %5$I.vector(%4$L) NOT NULL" in attach
