"""Hostile caption files through ``jointembed index text`` (real PostgreSQL, real bundle):
a JSON number too long for Python's int conversion, blank ids in every format and in the
API, and CSV rows that break the quoting rules each fail alone; the rest is stored."""
from __future__ import annotations

import json

import psycopg
from psycopg import sql

from jointembed_pg import Store

from test_reliability_support import cli, items_table

HUGE = "9" * 5000  # over sys.get_int_max_str_digits() (4300): json.loads raises ValueError


def _index(path, dsn, bundle_dir, collection):
    p = cli(["index", "text", path, "--json", "--no-progress", "--dsn", dsn, "--bundle", bundle_dir,
             "--collection", collection])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p, json.loads(p.stdout)


def _texts(dsn, collection):
    """``[(key, text)]`` of the collection's stored captions, key order."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT key, text FROM {} WHERE modality = 'text' ORDER BY key").format(
            items_table(conn, collection))).fetchall()


def test_jsonl_huge_numbers_fail_alone(pg_dsn, bundle_dir, tmp_path):
    f = tmp_path / "caps.jsonl"
    f.write_text(
        f'{{"id": {HUGE}, "text": "a dog runs"}}\n'                       # huge id
        f'{{"id": "x", "text": "a cat", "likes": {HUGE}}}\n'              # huge number in another field
        f'{{"id": "y", "text": "{"[" * 10}"}}\n'
        '{"id": "ok", "text": "two girls sit on a bench"}\n'
        f'{{"id": "deep", "text": {"[" * 200000}}}\n', encoding="utf-8")  # nested too deeply
    p, rep = _index(f, pg_dsn, bundle_dir, "j")
    assert p.returncode == 3, p.stderr
    errors = {x["key"]: x["error"] for x in rep["failed"]}
    assert set(errors) == {"caps.jsonl:1", "caps.jsonl:2", "caps.jsonl:5"}, errors
    assert "invalid JSON" in errors["caps.jsonl:1"] and "4300 digits" in errors["caps.jsonl:2"]
    assert "nested too deeply" in errors["caps.jsonl:5"]
    assert [k for k, _ in _texts(pg_dsn, "j")] == ["ok", "y"]


def test_blank_ids_are_refused_in_every_format_and_the_api(pg_dsn, bundle_dir, bundle, tmp_path):
    csv_f = tmp_path / "caps.csv"
    csv_f.write_text('id,text\n"   ",a dog runs\n"\t",a cat sleeps\nok,two girls sit on a bench\n', encoding="utf-8")
    jsonl_f = tmp_path / "caps.jsonl"
    jsonl_f.write_text('{"id": "  ", "text": "a dog"}\n{"id": "ok", "text": "a bird"}\n', encoding="utf-8")
    tok_f = tmp_path / "caps.txt"
    tok_f.write_text("  \ta dog runs\nok#0\ta bird flies\n", encoding="utf-8")
    for f, coll in ((csv_f, "b1"), (jsonl_f, "b2"), (tok_f, "b3")):
        p, rep = _index(f, pg_dsn, bundle_dir, coll)
        assert p.returncode == 3 and rep["written"] == 1, (f.name, rep)
        assert all("empty" in x["error"] for x in rep["failed"]), rep
        assert all(k.strip() for k, _ in _texts(pg_dsn, coll)), _texts(pg_dsn, coll)
    with Store(pg_dsn) as store:
        rep = store.collection("b4", bundle=bundle).add_texts(["a dog", "a cat"], keys=[" \n", "cat"])
        assert rep.written == 1 and len(rep.failed) == 1 and "empty key" in rep.failed[0].error


def test_csv_rows_breaking_the_quoting_rules_fail_alone(pg_dsn, bundle_dir, tmp_path):
    f = tmp_path / "caps.csv"
    f.write_text('id,text\n'
                 'a,a dog runs on the beach\n'
                 '"b,"c" d\n'                               # quote closed mid-field
                 'c,"a caption on two\nlines is fine"\n'
                 'd,two girls sit on a bench\n'
                 'e,"never closed\n'                        # quoted field open at the end of the file
                 'f,a bird flies\n', encoding="utf-8")
    p, rep = _index(f, pg_dsn, bundle_dir, "q")
    assert p.returncode == 3, p.stderr
    errors = {x["key"]: x["error"] for x in rep["failed"]}
    assert set(errors) == {"caps.csv:3", "caps.csv:7-8"}, errors
    assert all("bad CSV row" in e for e in errors.values())
    assert _texts(pg_dsn, "q") == [("a", "a dog runs on the beach"), ("c", "a caption on two\nlines is fine"),
                                   ("d", "two girls sit on a bench")]  # f is not glued into e's caption
