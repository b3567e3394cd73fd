"""Run every example of docs/SQL.md against a real database.

```sql blocks run in document order on one autocommit connection, emulating psql:
``:'name'`` and ``:name`` become bound parameters, ``:"name"`` an identifier, and a
statement ending in ``\\gset`` stores its one-row result as variables. A block whose
first line says ``-- requires pgvector >= 0.8`` is skipped on older servers. ```python
blocks run with ``qvec`` defined and ``$DATABASE_URL`` pointing at the database; a
``rows`` result they leave must have 10 entries.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from jointembed_pg import db
from jointembed_pg.search.store import Store

DOC = Path(__file__).resolve().parent.parent / "docs" / "SQL.md"
BLOCK_RE = re.compile(r"^```(sql|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
VAR_RE = re.compile(r""":'(\w+)'|:"(\w+)"|(?<![:\w]):(\w+)""")
D = 32


def blocks() -> list[tuple[str, str]]:
    return BLOCK_RE.findall(DOC.read_text(encoding="utf-8"))


def statements(block: str) -> list[tuple[str, bool]]:
    """``(statement, gset)`` pairs: split at a line ending in ``;`` or ``\\gset``."""
    out, cur = [], []
    for line in block.splitlines():
        cur.append(line)
        stripped = line.rstrip()
        if stripped.endswith("\\gset") or stripped.endswith(";"):
            text = "\n".join(cur).rstrip()
            gset = text.endswith("\\gset")
            text = text[: -len("\\gset")] if gset else text.rstrip(";")
            if re.sub(r"--[^\n]*", "", text).strip():
                out.append((text, gset))
            cur = []
    assert not "".join(cur).strip(), f"unterminated statement: {cur}"
    return out


def to_query(text: str, variables: dict) -> tuple[sql.Composed, dict]:
    """psql variables → psycopg: values become %(name)s, identifiers sql.Identifier."""
    parts, params, pos = [], {}, 0
    for m in VAR_RE.finditer(text):
        parts.append(sql.SQL(text[pos:m.start()].replace("%", "%%")))
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in variables, f"psql variable {name!r} used before \\gset"
        if m.group(2):
            parts.append(sql.Identifier(variables[name]))
        else:
            parts.append(sql.Placeholder(name))
            params[name] = variables[name]
        pos = m.end()
    parts.append(sql.SQL(text[pos:].replace("%", "%%")))
    return sql.Composed(parts), params


#: Where the user's photos are: the items' sources are absolute paths below it, as
#: ``jointembed index image ~/photos/`` stores them; products name files relative to it.
IMAGE_ROOT = "/home/me/photos"


@pytest.fixture
def photos_db(pg_dsn, flickr8k_dir):
    """Collection 'photos' (300 images named as the Flickr8K test images under IMAGE_ROOT,
    600 captions keyed as Flickr8K's, D=32 synthetic vectors, indexed) and a products table
    whose ``image_path`` is relative to IMAGE_ROOT (as ``jointembed attach --image-root``)."""
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:300]
    rng = np.random.default_rng(3)
    img = rng.standard_normal((300, D)).astype(np.float32)
    txt = (np.repeat(img, 2, axis=0) + 0.3 * rng.standard_normal((600, D))).astype(np.float32)
    with Store(pg_dsn) as store:
        coll = store.collection("photos", model_id="synthetic", dim=D, create=True)
        paths = [f"{IMAGE_ROOT}/{n}" for n in names]
        coll.upsert([("image", p, p, None, None, e) for p, e in zip(paths, img)])
        coll.upsert([("text", f"{names[i // 2]}#{i % 2}", None, f"caption {i}", None, e) for i, e in enumerate(txt)])
        coll.ensure_index()
        with store.transaction() as conn:
            # a tiny SQL text encoder for model 'synthetic' (the real one: tests/test_sql_text.py)
            vocab = ["[UNK]", "a", "dog", "running", "on", "the", "beach"]
            db.register_vector(conn)
            conn.execute("INSERT INTO jointembed.text_encoders (model_id, dim, vocab_size, bias, unk_id, max_pieces, "
                         "sha256) VALUES ('synthetic', %s, %s, %s, 0, 126, 'test')",
                         [D, len(vocab), np.zeros(D, np.float32)])
            for i, piece in enumerate(vocab):
                conn.execute("INSERT INTO jointembed.text_vocab (model_id, piece, id, vec) VALUES ('synthetic', %s, %s, %s)",
                             [piece, i, txt[i]])
            conn.execute("CREATE TABLE products (id serial PRIMARY KEY, title text, image_path text)")
            for n in names[::3]:
                conn.execute("INSERT INTO products (title, image_path) VALUES (%s, %s)", (f"product {n}", n))
        return pg_dsn, txt[0]


def test_doc_has_every_query_kind():
    text = DOC.read_text(encoding="utf-8")
    for heading in ["text → image", "image → text", "image → image and text → text", "More like this",
                    "Filtered search", "Joining results to your own table", "SQLAlchemy ORM", "hnsw.ef_search"]:
        assert heading in text
    kinds = [k for k, _ in blocks()]
    assert kinds.count("sql") >= 12 and kinds.count("python") >= 2


def test_sql_doc_examples_run(photos_db, monkeypatch):
    dsn, qvec = photos_db
    monkeypatch.setenv("DATABASE_URL", dsn)
    variables: dict = {}
    ran = 0
    with db.connect(dsn, autocommit=True) as conn:
        version = db.vector_version(conn)
        for kind, body in blocks():
            if kind == "python":
                namespace = {"qvec": qvec, "image_root": variables["image_root"]}
                exec(compile(body, f"{DOC.name}:python", "exec"), namespace)  # noqa: S102 - our own docs
                if "rows" in namespace:
                    assert len(namespace["rows"]) == 10
                ran += 1
                continue
            m = re.match(r"\s*-- requires pgvector >= (\d+)\.(\d+)", body)
            if m and version < (int(m.group(1)), int(m.group(2))):
                continue
            for text, gset in statements(body):
                query, params = to_query(text, variables)
                try:
                    cur = conn.execute(query, params)
                except psycopg.Error as e:
                    pytest.fail(f"docs/SQL.md statement failed: {e}\n{text}")
                if gset:
                    row = cur.fetchone()
                    variables.update({c.name: v for c, v in zip(cur.description, row)})
                elif cur.description is not None:
                    rows = cur.fetchall()
                    assert rows, f"no rows from:\n{text}"
                    assert len(rows) <= 10
                    if "LIMIT 10" in text:
                        assert len(rows) == 10, text
                ran += 1
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert ran >= 20


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql client not installed")
def test_sql_doc_examples_run_in_real_psql(photos_db):
    """The same blocks, verbatim, through psql (checks the psql syntax itself)."""
    dsn, _ = photos_db
    with psycopg.connect(dsn) as conn:
        version = db.vector_version(conn)
    script = "\n".join(body for kind, body in blocks() if kind == "sql"
                       and ("requires pgvector >= 0.8" not in body or version >= (0, 8)))
    done = subprocess.run(["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-P", "pager=off"],
                          input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(10 rows)") >= 10
