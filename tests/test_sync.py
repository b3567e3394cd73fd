"""Attached tables on a real PostgreSQL with real Flickr8K rows and the real bundle:
attach -> backfill -> search, triggers (what enqueues and what does not), failures and
retries, detach leaving the user's objects as they were, hostile names, model checks.
"""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from jointembed_pg import db
from jointembed_pg.sync import catalog as sync
from jointembed_pg.errors import DatabaseError, InputError, ModelMismatchError
from jointembed_pg.sync.drain import SyncConfig, sync_table
from test_sync_support import (Counting, Projected, catalog_snapshot, flickr_rows, make_photos, queue,
                               side_rows, table_digest)

pytestmark = pytest.mark.flickr8k


@pytest.fixture
def conn(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def images(flickr8k_dir):
    return str(flickr8k_dir / "images")


def _attach(conn, bundle, images, table="photos", **kw):
    kw.setdefault("key", "id")
    kw.setdefault("image_column", "image_path")
    kw.setdefault("text_column", "caption")
    return sync.attach(conn, table, bundle, image_root=images, **kw)


def test_attach_backfill_then_search_in_python_and_sql(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 12)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images)
    assert (att.schema_name, att.table_name, att.key_column, att.model_id, att.dim) == \
        ("public", "photos", "id", bundle.model_id, bundle.dim)
    st = sync.status(conn, "photos")[0]
    assert (st["pending"], st["done"], st["failed"]) == (24, 0, 0)

    rep = sync_table(conn, "photos", bundle)
    assert (rep.written, rep.failed) == (24, [])
    st = sync.status(conn, "photos")[0]
    assert (st["pending"], st["done"], st["failed"]) == (0, 24, 0)

    # a caption finds its own row's text first; the image of row 5 finds row 5's image
    q = bundle.encode_texts([rows[4][1]])[0]
    hits = sync.search_attached(conn, "photos", q, k=3, target="text")
    assert hits[0][0] == 5 and isinstance(hits[0][0], int) and hits[0][1] == pytest.approx(0.0, abs=1e-3)
    img = bundle.encode_images([flickr8k_dir / "images" / rows[4][2]])[0]
    assert sync.search_attached(conn, "photos", img, k=1, target="image")[0][0] == 5
    both = sync.search_attached(conn, "photos", q, k=30, target=None)
    assert len(both) == 24 and [d for _, d in both] == sorted(d for _, d in both)
    with pytest.warns(DeprecationWarning, match="target="):  # the old keyword still works
        assert sync.search_attached(conn, "photos", q, k=3, modality="text") == hits

    # the SQL function, and joining back to the user's table as docs/SYNC.md shows
    got = conn.execute("SELECT p.id, p.caption, r.distance "
                       "FROM jointembed.search_attached('photos', %s, 3, 'text') r "
                       "JOIN photos p ON p.id = r.key::integer ORDER BY r.distance", [q]).fetchall()
    assert got[0][:2] == (5, rows[4][1])
    with pytest.raises(psycopg.errors.DataException, match="dimensions"):
        conn.execute("SELECT * FROM jointembed.search_attached('photos', %s, 3)", [q[:5]])
    with pytest.raises(ModelMismatchError, match="dimensions"):
        sync.search_attached(conn, "photos", q[:5])


def test_triggers_enqueue_only_embedded_columns(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 8)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images)
    sync_table(conn, "photos", bundle)
    before = side_rows(conn, att.id)

    conn.execute("UPDATE photos SET likes = likes + 1")            # unrelated column
    conn.execute("UPDATE photos SET caption = caption WHERE id = 2")  # same value
    assert queue(conn, att.id) == []

    conn.execute("UPDATE photos SET caption = 'a dog runs on the beach' WHERE id = 3")
    assert queue(conn, att.id) == [("3", "text", 1)]
    counting = Counting(bundle)
    rep = sync_table(conn, "photos", counting)
    assert (rep.written, counting.images, dict(counting.texts)) == (1, 0, {"a dog runs on the beach": 1})
    after = side_rows(conn, att.id)
    changed = {k for k in before if not np.array_equal(before[k][2], after[k][2])}
    assert changed == {("3", "text")}

    # the triggers only append events (never touch rows a worker writes); the worker
    # removes the embeddings of deleted rows and of a changed key's old value
    conn.execute("DELETE FROM photos WHERE id = 4")
    conn.execute("INSERT INTO photos (id, caption, image_path) VALUES (100, %s, %s)", [rows[0][1], rows[0][2]])
    conn.execute("UPDATE photos SET id = 200 WHERE id = 5")        # key change: old key's rows go
    assert queue(conn, att.id) == [(k, m, 1) for k in ("100", "200", "4", "5") for m in ("image", "text")]
    counting = Counting(bundle)
    rep = sync_table(conn, "photos", counting)
    assert (rep.written, rep.gone, counting.images) == (4, 4, 2)
    keys = {k for k, _ in side_rows(conn, att.id)}
    assert keys == {"1", "2", "3", "6", "7", "8", "100", "200"} and queue(conn, att.id) == []

    conn.execute("TRUNCATE photos")
    assert queue(conn, att.id) == [(None, None, 1)]                # one TRUNCATE event
    conn.execute("INSERT INTO photos (id, caption, image_path) VALUES (7, %s, %s)", [rows[6][1], rows[6][2]])
    rep = sync_table(conn, "photos", bundle)
    assert set(side_rows(conn, att.id)) == {("7", "image"), ("7", "text")} and queue(conn, att.id) == []


def test_unchanged_content_is_not_re_embedded(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 4)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images)
    sync_table(conn, "photos", bundle)
    # A -> B -> A before the next sync: queued, but the content hash matches: dequeued only
    conn.execute("UPDATE photos SET caption = 'x' WHERE id = 1")
    conn.execute("UPDATE photos SET caption = %s WHERE id = 1", [rows[0][1]])
    counting = Counting(bundle)
    rep = sync_table(conn, "photos", counting)
    assert (rep.unchanged, rep.written, sum(counting.texts.values())) == (1, 0, 0)
    assert queue(conn, att.id) == []
    # --rescan enqueues everything; only content that changed is embedded
    rep = sync_table(conn, "photos", counting, rescan=True)
    assert (rep.unchanged, rep.written, counting.images) == (8, 0, 0)


def test_null_and_missing_values_fail_retry_with_backoff_and_never_block(conn, bundle, flickr8k_dir, tmp_path):
    rows = flickr_rows(str(flickr8k_dir), 6)
    for _, _, image in rows:
        shutil.copy(flickr8k_dir / "images" / image, tmp_path / image)
    (tmp_path / rows[1][2]).unlink()                                 # row 2: missing file
    (tmp_path / rows[3][2]).write_bytes(b"not a jpeg")               # row 4: not an image
    make_photos(conn, rows)
    conn.execute("UPDATE photos SET caption = NULL WHERE id = 3")
    conn.execute("UPDATE photos SET image_path = NULL WHERE id = 5")
    conn.execute("UPDATE photos SET image_path = '../outside.jpg' WHERE id = 6")
    att = _attach(conn, bundle, str(tmp_path))
    cfg = SyncConfig(retry_base_s=1.0, max_attempts=3)
    rep = sync_table(conn, "photos", bundle, cfg=cfg)
    errors = {(f["key"], f["modality"]): f["error"] for f in rep.failed}
    assert set(errors) == {("2", "image"), ("3", "text"), ("4", "image"), ("5", "image"), ("6", "image")}
    assert "no such file" in errors[("2", "image")] and "NULL" in errors[("3", "text")]
    assert "not a readable image" in errors[("4", "image")] or "corrupt" in errors[("4", "image")]
    assert "NULL" in errors[("5", "image")] and "leaves the image root" in errors[("6", "image")]
    st = sync.status(conn, "photos", errors=10)[0]
    assert (st["pending"], st["failed"], st["done"]) == (0, 5, 7)
    by_key = {(e["key"], e["modality"]): e for e in st["errors"]}
    assert by_key[("2", "image")]["next_attempt_at"] is not None       # will be retried
    assert by_key[("3", "text")]["next_attempt_at"] is None            # NULL: given up at once
    assert by_key[("2", "image")]["attempts"] == 1

    # not due yet: an immediate sync retries nothing; other rows are not blocked
    conn.execute("INSERT INTO photos (id, caption, image_path) VALUES (7, 'new row', %s)", [rows[0][2]])
    rep = sync_table(conn, "photos", bundle, cfg=cfg)
    assert rep.written == 2 and rep.failed == []
    # the file appears; after the backoff the retry embeds it
    shutil.copy(flickr8k_dir / "images" / rows[1][2], tmp_path / rows[1][2])
    time.sleep(1.1)
    rep = sync_table(conn, "photos", bundle, cfg=cfg)
    assert rep.written == 1 and ("2", "image") in side_rows(conn, att.id)
    # a fixed NULL is re-enqueued by its UPDATE and embedded
    conn.execute("UPDATE photos SET caption = 'a caption at last' WHERE id = 3")
    assert sync_table(conn, "photos", bundle, cfg=cfg).written == 1
    # the broken file was retried with a doubled wait (1 s, then 2 s); its third failure gives up
    e4 = next(e for e in sync.status(conn, "photos", errors=10)[0]["errors"] if e["key"] == "4")
    assert e4["attempts"] == 2 and e4["next_attempt_at"] is not None
    time.sleep(2.1)
    assert sync_table(conn, "photos", bundle, cfg=cfg).failed[0]["key"] == "4"
    st = sync.status(conn, "photos", errors=10)[0]
    e4 = next(e for e in st["errors"] if e["key"] == "4")
    assert e4["attempts"] == 3 and e4["next_attempt_at"] is None


def test_rows_changed_or_deleted_while_being_embedded_end_up_current(conn, pg_dsn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 4)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images, image_column=None)
    other = db.connect(pg_dsn, autocommit=True)

    class Meddling(Counting):
        """Changes row 1 and deletes row 2 while their first batch is being embedded."""

        def encode_texts(self, texts):
            if not self.texts:
                other.execute("UPDATE photos SET caption = 'changed meanwhile' WHERE id = 1")
                other.execute("DELETE FROM photos WHERE id = 2")
            return super().encode_texts(texts)

    enc = Meddling(bundle)
    try:
        rep = sync_table(conn, "photos", enc)
    finally:
        other.close()
    assert queue(conn, att.id) == []
    stored = side_rows(conn, att.id)
    assert set(stored) == {("1", "text"), ("3", "text"), ("4", "text")}     # no orphan for row 2
    assert np.allclose(stored[("1", "text")][2], bundle.encode_texts(["changed meanwhile"])[0], atol=1e-5)
    assert enc.texts["changed meanwhile"] == 1 and rep.written == 3          # stale write skipped, redone


def test_detach_leaves_user_objects_exactly_as_before(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 5)
    name = make_photos(conn, rows)
    make_photos(conn, rows, table="other")
    conn.execute("CREATE FUNCTION public.user_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    conn.execute("CREATE TRIGGER user_trg BEFORE UPDATE ON photos FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()")
    snap, data = catalog_snapshot(conn, "public"), table_digest(conn, name)
    att = _attach(conn, bundle, images)
    other = _attach(conn, bundle, images, table="other")
    sync_table(conn, "photos", bundle)
    assert len(catalog_snapshot(conn, "public")["trigger"]) > len(snap["trigger"])
    assert table_digest(conn, name) == data            # attach/sync never write the user's rows

    sync.detach(conn, "photos")
    assert catalog_snapshot(conn, "public")["trigger"] != snap["trigger"]  # other's triggers remain
    sync.detach(conn, "other")
    assert catalog_snapshot(conn, "public") == snap
    assert table_digest(conn, name) == data
    left = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'jointembed' AND c.relname ~ %s",
                        [f"^a({att.id}|{other.id})_"]).fetchone()[0]
    assert left == 0 and sync.list_attachments(conn) == []
    conn.execute("UPDATE photos SET caption = 'still works' WHERE id = 1")  # no trigger left behind
    with pytest.raises(DatabaseError, match="not attached"):
        sync.detach(conn, "photos")


def test_detaching_one_table_keeps_the_other_in_sync(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 3)
    make_photos(conn, rows)
    make_photos(conn, rows, table="other")
    _attach(conn, bundle, images, text_column=None)
    other = _attach(conn, bundle, images, table="other", image_column=None)
    sync.detach(conn, "photos")
    conn.execute("UPDATE other SET caption = 'changed' WHERE id = 1")
    # row 1's backfill event and its update event: both queued, embedded once
    assert queue(conn, other.id) == [("1", "text", 1), ("1", "text", 1), ("2", "text", 1), ("3", "text", 1)]
    counting = Counting(bundle)
    assert sync_table(conn, "other", counting).written == 3 and sum(counting.texts.values()) == 3


HOSTILE_SCHEMA = 'Wé ird; "s"'
HOSTILE_TABLE = 'My "Photos"; drop table x'


def test_hostile_names_attach_sync_search_detach(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 4)
    conn.execute("CREATE TABLE x (id int)")
    cols = ('"Key"; --', "Cap tion", "Ïmg 'path'", "likes")
    name = make_photos(conn, rows, schema=HOSTILE_SCHEMA, table=HOSTILE_TABLE, cols=cols)
    snap = catalog_snapshot(conn, HOSTILE_SCHEMA)
    att = sync.attach(conn, HOSTILE_TABLE, bundle, key=cols[0], image_column=cols[2], text_column=cols[1],
                      image_root=images, schema=HOSTILE_SCHEMA)
    assert sync.find(conn, HOSTILE_TABLE).id == att.id
    rep = sync_table(conn, HOSTILE_TABLE, bundle)
    assert (rep.written, rep.failed) == (8, [])
    q = bundle.encode_texts([rows[2][1]])[0]
    assert sync.search_attached(conn, HOSTILE_TABLE, q, k=1, target="text")[0][0] == 3
    reg = conn.execute("SELECT %s::regclass", [f"{sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE).as_string(conn)}"]).fetchone()[0]
    assert conn.execute("SELECT key FROM jointembed.search_attached(%s::regclass, %s, 1, 'text')",
                        [str(reg), q]).fetchone()[0] == "3"
    conn.execute(sql.SQL("UPDATE {} SET {} = 'changed' WHERE {} = 1").format(
        name, sql.Identifier(cols[1]), sql.Identifier(cols[0])))
    assert queue(conn, att.id) == [("1", "text", 1)]
    assert sync_table(conn, HOSTILE_TABLE, bundle).written == 1
    sync.detach(conn, HOSTILE_TABLE, HOSTILE_SCHEMA)
    assert catalog_snapshot(conn, HOSTILE_SCHEMA) == snap
    assert conn.execute("SELECT to_regclass('public.x')").fetchone()[0] is not None


def test_attach_validates_before_creating_anything(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 2)
    make_photos(conn, rows)
    conn.execute("CREATE TABLE nokey (id int, caption text)")
    snap = catalog_snapshot(conn, "public")
    cases = [
        (dict(table="nope"), "no table"),
        (dict(key="nope"), "no column"),
        (dict(text_column="likes"), "has type integer"),
        (dict(image_column="image_path", image_source="bytea"), "has type text"),
        (dict(table="nokey", image_column=None), "not unique"),
    ]
    for kw, msg in cases:
        table = kw.pop("table", "photos")
        with pytest.raises(DatabaseError, match=msg):
            _attach(conn, bundle, images, table=table, **kw)
    with pytest.raises(InputError, match="needs"):
        _attach(conn, bundle, images, image_column=None, text_column=None)
    _attach(conn, bundle, images)
    with pytest.raises(DatabaseError, match="already attached"):
        _attach(conn, bundle, images)
    sync.detach(conn, "photos")
    assert catalog_snapshot(conn, "public") == snap


def test_a_bundle_of_another_model_is_refused_before_any_write(conn, bundle, flickr8k_dir, images):
    rows = flickr_rows(str(flickr8k_dir), 3)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images)
    other = Counting(Projected(bundle, 32, "other-model-32"))
    same_dim = Counting(Projected(bundle, bundle.dim, "other-model-same-dim"))
    for b in (other, same_dim):
        with pytest.raises(ModelMismatchError, match=bundle.model_id):
            sync_table(conn, "photos", b)
        assert (b.images, sum(b.texts.values())) == (0, 0)
    assert len(queue(conn, att.id)) == 6 and side_rows(conn, att.id) == {}
    with pytest.raises(ModelMismatchError):
        sync.search_attached(conn, "photos", np.zeros(bundle.dim, np.float32), model_id="other-model-32")


def test_crashed_workers_claims_return_after_the_lease(conn, bundle, flickr8k_dir, images):
    import uuid

    rows = flickr_rows(str(flickr8k_dir), 4)
    make_photos(conn, rows)
    att = _attach(conn, bundle, images, image_column=None)
    # a worker claims everything and dies without a word
    assert conn.execute("SELECT jointembed._sync_claim(%s, 1, %s, 100, '1 second')",
                        [att.id, uuid.uuid4()]).fetchone()[0] == 4
    assert sync_table(conn, "photos", bundle).batches == 0       # leased: nothing to take
    time.sleep(1.1)
    assert sync_table(conn, "photos", bundle).written == 4


def test_bytea_images_and_status_json_via_cli(conn, pg_dsn, bundle, bundle_dir, flickr8k_dir):
    from click.testing import CliRunner

    from jointembed_pg.cli import cli

    rows = flickr_rows(str(flickr8k_dir), 3)
    conn.execute("CREATE TABLE blobs (id text PRIMARY KEY, img bytea)")
    for i, (_, _, image) in enumerate(rows):
        conn.execute("INSERT INTO blobs VALUES (%s, %s)", [f"b{i}", (flickr8k_dir / "images" / image).read_bytes()])
    conn.execute("INSERT INTO blobs VALUES ('bad', 'garbage'::bytea), ('null', NULL)")
    secret = "s3cr3t-pw"
    dsn = pg_dsn.replace("postgres:@", f"postgres:{secret}@")  # trust auth ignores it
    runner = CliRunner()
    base = ["--dsn", dsn]
    r = runner.invoke(cli, ["attach", "--table", "blobs", "--key", "id", "--image-column", "img",
                            "--image-source", "bytea", "--bundle", str(bundle_dir), *base])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["sync", "--table", "blobs", "--bundle", str(bundle_dir), "--json", *base])
    assert r.exit_code == 3, r.output                        # some rows failed
    r = runner.invoke(cli, ["status", "--table", "blobs", "--json", *base])
    st = json.loads(r.output)
    assert (st["pending"], st["done"], st["failed"], st["gave_up"]) == (0, 3, 2, 2)
    r2 = runner.invoke(cli, ["status", *base])
    assert "blobs" in r2.output and "NULL" in r2.output
    img = bundle.encode_images([flickr8k_dir / "images" / rows[1][2]])[0]
    assert sync.search_attached(conn, "blobs", img, k=1)[0][0] == "b1"
    r3 = runner.invoke(cli, ["detach", "--table", "blobs", *base])
    assert r3.exit_code == 0
    r4 = runner.invoke(cli, ["status", "--table", "blobs", *base])
    assert r4.exit_code == 1 and "not attached" in r4.output
    for out in (r.output, r2.output, r3.output, r4.output):
        assert secret not in out


def test_image_sources_url_path_and_limits(tmp_path, flickr8k_dir):
    import http.server
    import threading
    from functools import partial

    from jointembed_pg.ingest.sources import ImageSource, is_retryable

    image = next(iter(sorted((flickr8k_dir / "images").glob("*.jpg"))))
    (tmp_path / "a.jpg").write_bytes(image.read_bytes())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/to-file":
                self.send_response(302)
                self.send_header("Location", f"file://{tmp_path}/a.jpg")
                self.end_headers()
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif self.path == "/boom":
                self.send_error(503)
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:  # a local test server is not public: allowed explicitly (tests/test_sync_security.py: SSRF)
        url = ImageSource("url", timeout_s=5, allow_hosts=(f"127.0.0.1:{srv.server_address[1]}", "127.0.0.1:9"))
        assert url.read(f"{base}/a.jpg") == image.read_bytes()
        cases = [(f"{base}/nope.jpg", "HTTP 404", False), (f"{base}/boom", "HTTP 503", True),
                 (f"{base}/to-file", "not allowed|refused", False), (f"{base}/loop", "HTTP 302", False),
                 (f"file://{tmp_path}/a.jpg", "only http/https", False),
                 ("http://127.0.0.1:9/x.jpg", "x.jpg", True)]
        for value, msg, retry in cases:
            with pytest.raises(InputError, match=msg) as ei:
                url.read(value, "t[1].url")
            assert is_retryable(ei.value) is retry and "t[1].url" in str(ei.value)
        with pytest.raises(InputError, match="limit"):
            ImageSource("url", max_bytes=100).read(f"{base}/a.jpg", allow_hosts=url.allow_hosts)
    finally:
        srv.shutdown()
    path = ImageSource("path", str(tmp_path))
    assert path.read("a.jpg") == image.read_bytes()
    for value, msg in [("../a.jpg", "leaves the image root"), (str(tmp_path / "a.jpg"), "absolute path"),
                       (None, "NULL"), ("  ", "empty")]:
        with pytest.raises(InputError, match=msg):
            path.read(value)
    with pytest.raises(InputError, match="image source"):
        ImageSource("ftp")


def _fetch_claimed(conn, att, caps):
    """Claim every ready row of ``att`` (version 1) and return ``_sync_fetch``'s rows under ``caps``,
    then release the claim: what a worker would receive over the wire."""
    import uuid

    from jointembed_pg.sync.caps import Fetched

    token = uuid.uuid4()
    conn.execute("SELECT jointembed._sync_claim(%s, 1, %s, 1000, '60 seconds')", [att.id, token])
    rows = conn.execute("SELECT * FROM jointembed._sync_fetch(%s, 1, %s, %s::integer, %s::integer, %s::integer, "
                        "%s::bigint)", [att.id, token, *caps.sql_args()]).fetchall()
    conn.execute("SELECT jointembed._sync_release(%s, %s)", [att.id, token])
    return {(r[1], r[2]): Fetched(*r) for r in rows}


def test_oversized_values_never_leave_the_server_and_fail_only_their_row(conn, bundle, flickr8k_dir,
                                                                         tmp_path, monkeypatch):
    from jointembed_pg.limits import Limits
    from jointembed_pg.sync.caps import FetchCaps

    # modest caps through the ordinary settings (environment variables)
    monkeypatch.setenv("JOINTEMBED_MAX_FILE_BYTES", str(1 << 20))     # 1 MiB
    monkeypatch.setenv("JOINTEMBED_MAX_TEXT_CHARS", "1000")
    limits = Limits.from_env()
    rows = flickr_rows(str(flickr8k_dir), 4)
    jpeg = [(flickr8k_dir / "images" / image).read_bytes() for _, _, image in rows]
    big_image = jpeg[0] + b"\0" * (3 * (1 << 20))                      # a valid JPEG, padded past 1 MiB
    long_key = "k" * 10_000                                            # over the 2048-byte key cap
    conn.execute("CREATE TABLE blobs (id text PRIMARY KEY, img bytea, caption text)")
    good = [(f"b{i}", jpeg[i], rows[i][1]) for i in range(3)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO blobs VALUES (%s, %s, %s)",
                        [good[0], ("big", big_image, rows[3][1]), good[1], ("long", jpeg[3], "é" * 5000),
                         (long_key, jpeg[3], "a key too long"), good[2]])
    att = sync.attach(conn, "blobs", bundle, key="id", image_column="img", text_column="caption",
                      image_source="bytea")
    caps = FetchCaps.of(att, limits)
    assert (caps.image_bytes, caps.text_chars, caps.key_bytes) == (1 << 20, 1000, 2048)

    # what _sync_fetch sends: oversized values are NULL with their size; the rest whole
    got = _fetch_claimed(conn, att, caps)
    assert len(got) == 12
    big = got[("big", "image")]
    assert big.present and big.image_data is None and big.value_size == len(big_image)
    assert got[("big", "text")].text_value == rows[3][1]               # its caption is fine
    text = got[("long", "text")]
    assert text.text_value is None and text.value_size == 5000         # characters, not bytes
    assert bytes(got[("long", "image")].image_data) == jpeg[3]
    short = got[("k" * 64, "image")]                                   # the key's first 64 characters only
    assert (short.key_bytes, short.image_data, short.text_value) == (10_000, None, None)
    assert got[("k" * 64, "text")].text_value is None
    for key, image, caption in good:                                   # good rows round-trip exactly
        assert bytes(got[(key, "image")].image_data) == image and got[(key, "image")].value_size == len(image)
        assert got[(key, "text")].text_value == caption and got[(key, "text")].key_bytes == len(key)
        assert got[(key, "image")].text_value is None                  # only the row's own modality

    # the worker: the good rows are embedded in the same batch, the bad ones failed with their size
    rep = sync_table(conn, "blobs", bundle)
    assert rep.batches == 1 and rep.written == 8
    errors = {(f["key"], f["modality"]): f["error"] for f in rep.failed}
    assert set(errors) == {("big", "image"), ("long", "text"), ("k" * 64, "image"), ("k" * 64, "text")}
    assert "image bytea is 3,1" in errors[("big", "image")] and "over the 1,048,576-byte limit" in \
        errors[("big", "image")]
    assert f"{len(big_image):,} bytes" in errors[("big", "image")]
    assert "text is 5,000 characters, over the 1,000-character limit (JOINTEMBED_MAX_TEXT_CHARS)" in \
        errors[("long", "text")]
    assert "key is 10,000 bytes as text, over the 2,048-byte limit (JOINTEMBED_MAX_KEY_BYTES)" in \
        errors[("k" * 64, "image")]
    assert set(side_rows(conn, att.id)) == {(k, m) for k in ("b0", "b1", "b2", "big", "long")
                                            for m in ("image", "text")} - {("big", "image"), ("long", "text")}
    st = sync.status(conn, "blobs", errors=10)[0]
    assert (st["done"], st["failed"], st["gave_up"], st["pending"]) == (8, 4, 4, 0)
    for e in st["errors"]:                                             # one attempt each, not retried
        assert (e["attempts"], e["next_attempt_at"]) == (1, None)
    assert {e["key"] for e in st["errors"]} == {"big", "long", "k" * 64 + "..."}  # status never ships the key whole
    # fixing the value re-enqueues the row, which is then embedded
    conn.execute("UPDATE blobs SET img = %s WHERE id = 'big'", [jpeg[0]])
    assert sync_table(conn, "blobs", bundle).written == 1


def test_oversized_image_paths_are_not_fetched(conn, bundle, flickr8k_dir, images):
    from jointembed_pg.limits import Limits
    from jointembed_pg.sync.caps import FetchCaps

    rows = flickr_rows(str(flickr8k_dir), 3)
    make_photos(conn, rows)
    conn.execute("UPDATE photos SET image_path = repeat('a/', 5000) WHERE id = 2")  # 10,000 characters
    att = _attach(conn, bundle, images)
    got = _fetch_claimed(conn, att, FetchCaps.of(att, Limits()))
    assert (got[("2", "image")].image_ref, got[("2", "image")].value_size) == (None, 10_000)
    assert got[("1", "image")].image_ref == rows[0][2] and got[("1", "image")].value_size == len(rows[0][2])
    rep = sync_table(conn, "photos", bundle)
    assert rep.written == 5 and [(f["key"], f["modality"]) for f in rep.failed] == [("2", "image")]
    assert "image path is 10,000 characters, over the 8,192-character limit (JOINTEMBED_MAX_REF_CHARS)" in \
        rep.failed[0]["error"]


def test_claims_shrink_so_a_batch_of_values_at_their_caps_fits_batch_bytes(conn, bundle, flickr8k_dir):
    from jointembed_pg.limits import Limits
    from jointembed_pg.sync.caps import ROW_OVERHEAD, FetchCaps
    from jointembed_pg.sync.drain import Target, process_batch

    rows = flickr_rows(str(flickr8k_dir), 5)
    conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, img bytea)")
    for i, (_, _, image) in enumerate(rows):
        conn.execute("INSERT INTO blobs VALUES (%s, %s)", [i, (flickr8k_dir / "images" / image).read_bytes()])
    att = sync.attach(conn, "blobs", bundle, key="id", image_column="img", image_source="bytea")
    limits = Limits(max_file_bytes=1 << 20)
    caps = FetchCaps.of(att, limits)
    row = caps.row_bytes(att)
    assert row == (1 << 20) + 2048 + ROW_OVERHEAD                        # bytea cap + key cap + overhead
    # 32 rows of up to 1 MiB would be 32 MiB: a 2.5 MiB budget claims 2 rows per batch
    cfg = SyncConfig(batch_size=32, batch_bytes=int(2.5 * (1 << 20)), limits=limits)
    assert caps.claim_limit(att, cfg.batch_size, cfg.batch_bytes) == 2
    target = Target.resolve(conn, "blobs", bundle)
    res = process_batch(conn, target, bundle, cfg)
    assert (res.claimed, res.written) == (2, 2)
    # a budget below one row still makes progress, one row at a time
    assert caps.claim_limit(att, 32, 10) == 1
    assert process_batch(conn, target, bundle, SyncConfig(batch_bytes=10, limits=limits)).claimed == 1
    # the defaults: a bytea table (20 MiB cap) claims 12 rows per batch
    assert FetchCaps.of(att, Limits()).claim_limit(att, 32, SyncConfig().batch_bytes) == 12
