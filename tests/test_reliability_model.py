"""Model / dimension safety: a bundle whose model id or dimension differs from the stored
embeddings is refused before any write (collections, attached tables, search, worker).

The second bundles are the real one's files (linked) with an edited manifest: another
``model_id``, or another ``dim`` (its checksums still hold: only the manifest changed).
"""
from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from test_reliability_support import (cli, edited_bundle, flickr_images, items_table, one_line_error, scenario,
                                      table_digest)

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k


@pytest.fixture(scope="module")
def other_bundles(tmp_path_factory, bundle_dir):
    root = tmp_path_factory.mktemp("bundles")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return {
        "model": edited_bundle(bundle_dir, root / "other-model", model_id=manifest["model_id"] + "-other"),
        "dim": edited_bundle(bundle_dir, root / "other-dim", dim=manifest["dim"] // 2),
    }


@scenario("Index into a collection with a bundle of another model id / another dimension",
          "exit 1 with one line naming both models (or dimensions); the collection's rows untouched; "
          "search with it refused too", "model safety")
def test_collection_refuses_other_model(pg_dsn, bundle, bundle_dir, other_bundles, flickr8k_dir, observe):
    imgs = flickr_images(flickr8k_dir, 4, start=400)
    args = ["--dsn", pg_dsn, "--no-progress"]
    p = cli(["index", "images", *imgs[:2], "--bundle", bundle_dir, *args])
    assert p.returncode == 0, p.stderr
    with psycopg.connect(pg_dsn) as conn:
        ident = items_table(conn, "default")
    before = table_digest(pg_dsn, ident)
    lines = []
    for kind, other in other_bundles.items():
        line = one_line_error(cli(["index", "images", *imgs, "--bundle", other, *args]))
        want = (bundle.model_id, "-other") if kind == "model" else (f"{bundle.dim}-dimensional", f"not {bundle.dim // 2}")
        assert all(w in line for w in want), line
        lines.append(line)
        line = one_line_error(cli(["search", "text", "a dog", "--bundle", other, "--dsn", pg_dsn]))
        assert ("-other" in line) if kind == "model" else ("dim is" in line or "dimensional" in line), line
        lines.append(f"search: {line}")
    assert table_digest(pg_dsn, ident) == before
    observe("exit 1 each: " + " | ".join(lines) + " | rows unchanged")


@scenario("Sync / worker of an attached table with a bundle of another model id / dimension",
          "refused with ModelMismatchError before any write (side table and queue unchanged)", "model safety")
def test_attached_table_refuses_other_model(pg_dsn, bundle, bundle_dir, other_bundles, flickr8k_dir, observe):
    imgs = flickr_images(flickr8k_dir, 4, start=420)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, image_path text)")
        conn.cursor().executemany("INSERT INTO photos VALUES (%s, %s, %s)",
                                  [(i, f"photo {i}", str(p)) for i, p in enumerate(imgs)])
    args = ["--table", "photos", "--dsn", pg_dsn]
    p = cli(["attach", *args, "--key", "id", "--text-column", "caption", "--image-column", "image_path",
             "--bundle", bundle_dir])
    assert p.returncode == 0, p.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM photos WHERE id = 3")    # so the queue and side table are both non-trivial
    p = cli(["sync", *args, "--bundle", bundle_dir, "--no-progress"])
    assert p.returncode == 0, p.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO photos VALUES (10, 'a new row', %s)", [str(imgs[3])])
        aid = conn.execute("SELECT id FROM jointembed.attachments").fetchone()[0]
    side, queue = (sql.Identifier("jointembed", f"a{aid}_v1"), sql.Identifier("jointembed", f"a{aid}_queue"))
    before = table_digest(pg_dsn, side), table_digest(pg_dsn, queue)
    assert before[0][0] == 6 and before[1][0] == 2
    lines = []
    for other in other_bundles.values():
        line = one_line_error(cli(["sync", *args, "--no-progress", "--bundle", other]))
        assert bundle.model_id in line and "reembed" in line, line
        lines.append(line)
        p = cli(["worker", *args, "--until-idle", "--bundle", other])     # JSON log lines, then the error
        events = [json.loads(x) for x in p.stderr.splitlines() if x.startswith("{")]
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert [e["event"] for e in events] == ["model_mismatch"], events
        assert p.stderr.splitlines()[-1].startswith("Error: none of the tables photos can be served")
    assert (table_digest(pg_dsn, side), table_digest(pg_dsn, queue)) == before
    observe(f"sync: exit 1, {lines[0]!r}; worker: exit 1, JSON event model_mismatch then one error line; "
            "side table and queue unchanged")
