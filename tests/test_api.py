"""The one Python API shape (issue 15, item 4), on a real PostgreSQL, the real bundle and
real Flickr8K images:

* ``Store(dsn | psycopg.Connection | psycopg_pool.ConnectionPool | SQLAlchemy Engine)``;
  what is passed in is used and never closed;
* ``store.collection(name, bundle=...)`` checks the model once; ``add_images`` /
  ``add_texts`` record bad items with their reason and store the rest;
  ``search(query, k, target)`` for a text, an image path/bytes or a vector, equal to the
  lower-level calls (``search_text``, ``search_image``, ``search_vector``, SQL);
* ``store.attach("schema.table", ...)`` -> ``sync()``, ``status()``, ``search()``,
  ``reembed()``, ``detach()`` on a real user table;
* ``bundle.encode_texts("one string")`` -> ``(D,)``.

Imports come from the top-level package only (the modules are being moved into
subpackages).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from jointembed_pg import (ArgumentError, Bundle, DatabaseError, InputError, ModelMismatchError, Store)

D = 8


def _flickr(flickr8k_dir: Path, n: int) -> tuple[list[Path], list[str]]:
    """``n`` test-split images and the first caption of each."""
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:n]
    first = {}
    for line in (flickr8k_dir / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        tag, _, caption = line.partition("\t")
        first.setdefault(tag.split("#")[0], caption.strip())
    return [flickr8k_dir / "images" / name for name in names], [first[name] for name in names]


@pytest.fixture(scope="module")
def other_bundle(bundle_dir, tmp_path_factory) -> Bundle:
    """The same ONNX files (symlinked) under another model id: a second, real model."""
    d = tmp_path_factory.mktemp("other-bundle")
    for name in ("image.onnx", "text.onnx", "tokenizer.json"):
        (d / name).symlink_to(Path(bundle_dir, name).resolve())
    manifest = json.loads(Path(bundle_dir, "manifest.json").read_text())
    manifest["model_id"] += "-other"
    (d / "manifest.json").write_text(json.dumps(manifest))
    return Bundle.load(d, verify=False)


def _sqla_url(dsn: str) -> str:
    assert dsn.startswith("postgresql://")
    return "postgresql+psycopg://" + dsn[len("postgresql://"):]


# -- Store targets --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dsn", "connection", "pool", "engine"])
def test_store_from_dsn_connection_pool_or_engine(kind, pg_dsn):
    """Each kind of target works (pgvector registered by the Store where the caller did
    not), and a target passed in is left open and usable after ``store.close()``."""
    target = {"dsn": lambda: pg_dsn,
              "connection": lambda: psycopg.connect(pg_dsn),
              "pool": lambda: ConnectionPool(pg_dsn, min_size=1, max_size=2, open=True),  # no configure
              "engine": lambda: sa.create_engine(_sqla_url(pg_dsn))}[kind]()
    vecs = np.random.default_rng(0).standard_normal((20, D)).astype(np.float32)
    try:
        with Store(target) as store:
            coll = store.collection("c", model_id="m1", dim=D, create=True)
            coll.upsert([("image", f"k{i}", None, None, None, v) for i, v in enumerate(vecs)])
            hits = coll.search(vecs[3], k=2)           # a vector: no bundle needed
            assert hits[0].key == "k3" and hits[0].distance == pytest.approx(0.0, abs=1e-6)
            assert [h.id for h in hits] == [h.id for h in coll.search_vector(vecs[3], k=2, target="image")]
        if kind == "dsn":                              # the Store's own pool is closed with it
            with pytest.raises(DatabaseError, match="closed"):
                coll.count()
            return
        assert coll.count() == 20                      # a given target stays usable
        if kind == "connection":
            assert not target.closed
            assert target.execute("SELECT count(*) FROM jointembed.collections").fetchone()[0] == 1
        elif kind == "pool":
            assert not target.closed and target.get_stats()["requests_num"] >= 4   # borrowed from it
            with target.connection() as c:
                assert c.execute("SELECT 1").fetchone() == (1,)
        else:
            assert target.pool.checkedout() == 0       # every borrowed connection returned
            with target.connect() as c:
                assert c.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        if kind == "connection":
            target.close()
        elif kind == "pool":
            target.close()
        elif kind == "engine":
            target.dispose()


def test_store_pool_serves_threads_at_once(pg_dsn):
    """The Store's own pool lends each thread its own connection (no Store-wide lock)."""
    import threading

    with Store(pg_dsn, max_size=2) as store:
        barrier, pids = threading.Barrier(2, timeout=10), []

        def work():
            with store.transaction() as conn:
                pids.append(conn.info.backend_pid)
                barrier.wait()                         # both hold a connection at the same time

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(pids)) == 2
        # nested in one thread: the same connection, so the work joins the open transaction
        coll = store.collection("c", model_id="m1", dim=D, create=True)
        with store.transaction() as conn:
            coll.upsert([("text", "a", None, "x", None, np.ones(D, np.float32))])
            assert coll.count() == 1
            raise psycopg.Rollback()                       # the innermost block: the outer transaction
        assert coll.count() == 0


# -- collections ----------------------------------------------------------------------------
def test_add_images_and_texts_record_bad_items_and_store_the_rest(pg_dsn, bundle, flickr8k_dir, tmp_path):
    imgs, caps = _flickr(flickr8k_dir, 6)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a JPEG")
    missing = tmp_path / "missing.jpg"
    with Store(pg_dsn) as store:
        coll = store.collection("photos", bundle=bundle)       # created: a bundle was given
        assert (coll.model_id, coll.dim, coll.bundle) == (bundle.model_id, bundle.dim, bundle)
        rep = coll.add_images([*imgs[:3], fifo, not_image, b"\xff\xd8\xff", missing, *map(str, imgs[3:])])
        assert (rep.written, rep.unchanged, coll.count("image")) == (6, 0, 6)
        failed = {f.key: f.error for f in rep.failed}
        assert set(failed) == {str(fifo.resolve()), str(not_image.resolve()), "images[5]", str(missing)}
        assert "regular file" in failed[str(fifo.resolve())]
        assert "bytes" in failed["images[5]"] and "no such file" in failed[str(missing)]
        stored = {h.key for h in coll.search_vector(np.zeros(bundle.dim, np.float32), k=50, exact=True)}
        assert stored == {str(p.resolve()) for p in imgs}
        assert coll.add_images(imgs).unchanged == 6            # content hashes: nothing re-embedded
        assert coll.add_images(str(imgs[0]), keys="first").written == 1
        with pytest.raises(ArgumentError, match="2 keys for 1 sources"):
            coll.add_images([imgs[0]], keys=["a", "b"])

        rep = coll.add_texts([caps[0], "", None, "🐶🚀", "a\x00b", *caps[1:], caps[0]])
        assert (rep.written, coll.count("text")) == (6, 6)     # the repeated caption is one item
        reasons = sorted(f.error for f in rep.failed)
        assert len(reasons) == 4
        assert any("empty caption" in r for r in reasons) and any("NoneType" in r for r in reasons)
        assert any("NUL" in r for r in reasons) and any("[UNK]" in r or "unknown" in r for r in reasons)
        key0 = "sha256:" + hashlib.sha256(caps[0].encode("utf-8")).hexdigest()
        assert coll.content_hashes("text", [key0]).keys() == {key0}
        assert coll.add_texts(caps).unchanged == 6
        assert coll.add_texts("a dog in the snow", keys="mine").written == 1
        assert coll.content_hashes("text", ["mine"]).keys() == {"mine"}
        with store.transaction() as conn:                       # add_* built the HNSW indexes
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'jointembed'")}
        assert {coll.index_name("image"), coll.index_name("text")} <= names


def test_search_by_text_path_bytes_or_vector_matches_lower_level_calls(pg_dsn, bundle, other_bundle, flickr8k_dir,
                                                                      tmp_path, monkeypatch):
    imgs, caps = _flickr(flickr8k_dir, 8)
    ids = lambda hits: [h.id for h in hits]  # noqa: E731
    with Store(pg_dsn) as store:
        coll = store.collection("photos", bundle=bundle)
        coll.add_images(imgs)
        coll.add_texts(caps)
        q = "a dog runs across the grass"
        by_text = coll.search(q, k=5)                           # text -> images by default
        assert all(h.modality == "image" for h in by_text) and len(by_text) == 5
        assert ids(by_text) == ids(coll.search_text(bundle, q, k=5)) == \
            ids(coll.search_vector(bundle.encode_texts(q), target="image", k=5))
        assert ids(coll.search(q, k=4, target="text")) == ids(coll.search_text(bundle, q, target="text", k=4))
        assert len(coll.search(q, k=10, target=None)) == 10     # both kinds

        img = imgs[2]
        by_image = coll.search(img, k=5)                        # Path -> image; image -> texts by default
        assert all(h.modality == "text" for h in by_image)
        assert ids(by_image) == ids(coll.search_image(bundle, img, k=5))
        assert ids(coll.search(str(img), k=5, image=True)) == ids(by_image)
        assert ids(coll.search(img.read_bytes(), k=5)) == ids(by_image)

        v = bundle.encode_images(img)
        by_vector = coll.search(v, k=3, target="image")
        assert by_vector[0].key == str(img.resolve()) and by_vector[0].distance == pytest.approx(0, abs=1e-5)
        assert ids(by_vector) == ids(coll.search_vector(v, target="image", k=3))
        with store.transaction() as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM jointembed.search('photos', %s, 3, 'image')",
                                               [v])] == ids(by_vector)

        # a caption that names an existing file is still a caption
        monkeypatch.chdir(tmp_path)
        Path("a dog.jpg").symlink_to(imgs[0])
        as_text = coll.search("a dog.jpg", k=3)
        assert ids(as_text) == ids(coll.search_vector(bundle.encode_texts("a dog.jpg"), target="image", k=3))
        assert as_text[0].distance > 0.1
        as_path = coll.search(Path("a dog.jpg"), k=1, target="image")
        assert as_path[0].key == str(imgs[0].resolve()) and as_path[0].distance == pytest.approx(0, abs=1e-5)

        fifo = tmp_path / "pipe.jpg"
        os.mkfifo(fifo)
        with pytest.raises(InputError, match="regular file"):
            coll.search(fifo)                                   # an image query is read like any image
        with pytest.raises(ArgumentError, match="list"):
            coll.search([0.0] * bundle.dim)
        with pytest.raises(ArgumentError, match="image=False"):
            coll.search(img, image=False)
        with pytest.raises(InputError, match="no such file|not found|No such file"):
            coll.search("no-such-file.jpg", image=True)
        with pytest.raises(InputError):
            coll.search("   ")
        with pytest.raises(ModelMismatchError):
            coll.search(np.zeros(3, np.float32))
        with pytest.raises(ValueError):
            coll.search(q, target="images")

        vectors_only = store.collection("photos")               # opened without a bundle
        assert ids(vectors_only.search(v, k=3, target="image")) == ids(by_vector)
        with pytest.raises(ArgumentError, match="bundle"):
            vectors_only.search(q)
        with pytest.raises(ArgumentError, match="bundle"):
            vectors_only.add_texts(["a caption"])
        with pytest.raises(ModelMismatchError, match=other_bundle.model_id):
            store.collection("photos", bundle=other_bundle)     # the model is checked once, here
        with pytest.raises(DatabaseError, match="no collection"):
            store.collection("absent")                          # no bundle: never created


# -- attached tables --------------------------------------------------------------------------
def test_attach_sync_status_search_reembed_detach(pg_dsn, bundle, other_bundle, flickr8k_dir, tmp_path):
    imgs, caps = _flickr(flickr8k_dir, 6)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("CREATE SCHEMA shop")
        c.execute("CREATE TABLE shop.products (id int PRIMARY KEY, title text, image_path text)")
        rows = [(i + 1, caps[i], str(imgs[i])) for i in range(6)] + [(7, "a red bicycle", str(fifo))]
        c.cursor().executemany("INSERT INTO shop.products VALUES (%s, %s, %s)", rows)
    with Store(pg_dsn) as store:
        products = store.attach("shop.products", key="id", text="title", image="image_path", bundle=bundle)
        assert (products.schema, products.table) == ("shop", "products")
        assert products.status()["pending"] == 14              # 7 rows x (image, text)

        rep = products.sync()
        assert rep.written == 13 and [(f["key"], f["modality"]) for f in rep.failed] == [("7", "image")]
        assert "regular file" in rep.failed[0]["error"]
        st = products.status()
        assert (st["done"], st["failed"], st["model_id"]) == (13, 1, bundle.model_id)

        q = caps[2]
        hits = products.search(q, k=3)                          # text -> images by default
        with psycopg.connect(pg_dsn) as c:
            register_vector(c)
            ref = c.execute("SELECT key, distance FROM jointembed.search_attached('shop.products', %s, 3, 'image')",
                            [bundle.encode_texts(q)]).fetchall()
        assert [str(k) for k, _ in hits] == [k for k, _ in ref]
        assert [d for _, d in hits] == pytest.approx([d for _, d in ref], abs=1e-6)
        assert all(isinstance(k, int) for k, _ in hits)        # the key column's own type
        assert products.search(imgs[4], k=1, target="image")[0][0] == 5
        assert products.search(Path(imgs[4]), k=1, target="text")[0][0] in range(1, 8)

        by_vector = store.attachment("shop.products")          # no bundle: vectors, status, detach
        assert by_vector.search(bundle.encode_images(imgs[4]), k=1, target="image")[0][0] == 5
        with pytest.raises(ArgumentError, match="bundle"):
            by_vector.search(q)
        with pytest.raises(ModelMismatchError):
            store.attachment(("shop", "products"), bundle=other_bundle)

        rep = products.reembed(other_bundle)
        assert rep.switched and (rep.old_model_id, rep.new_model_id) == (bundle.model_id, other_bundle.model_id)
        assert products.bundle is other_bundle and products.status()["model_id"] == other_bundle.model_id
        assert products.search(imgs[4], k=1, target="image")[0][0] == 5
        with pytest.raises(ModelMismatchError):
            store.attachment("shop.products", bundle=bundle)    # the old model is gone

        assert products.detach().table_name == "products"
        with pytest.raises(DatabaseError, match="not attached"):
            products.status()
    with psycopg.connect(pg_dsn) as c:
        assert c.execute("SELECT count(*) FROM shop.products").fetchone()[0] == 7
        assert c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.products'::regclass "
                         "AND NOT tgisinternal").fetchone()[0] == 0


def test_attach_on_a_given_connection_and_table_names(pg_dsn, bundle):
    """Table naming rule (a tuple names a table whose name holds a dot); sync on a given
    psycopg connection runs in autocommit and restores the connection's modes."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute('CREATE TABLE "odd.name" (id text PRIMARY KEY, body text)')
        conn.execute("""INSERT INTO "odd.name" VALUES ('a', 'a dog on a beach'), ('b', 'two cats'), ('c', '')""")
        conn.commit()
        store = Store(conn)
        with pytest.raises(ArgumentError, match="one dot"):
            store.attach("public.odd.name", key="id", text="body", bundle=bundle)
        with pytest.raises(DatabaseError):                      # "odd.name" = schema odd, table name
            store.attach("odd.name", key="id", text="body", bundle=bundle)
        notes = store.attach(("public", "odd.name"), key="id", text="body", bundle=bundle)
        conn.commit()
        rep = notes.sync()
        assert rep.written == 2 and [f["key"] for f in rep.failed] == ["c"]      # the empty text
        assert conn.autocommit is False and conn.isolation_level is None        # restored
        assert store.attachment("odd.name", schema="public").status()["done"] == 2
        assert notes.search("a dog", k=1, target="text")[0][0] == "a"
        conn.execute("SELECT 1")                                # an open transaction...
        with pytest.raises(DatabaseError, match="idle"):
            notes.sync()                                        # ...is never committed for the caller
        conn.rollback()
        notes.detach()
        conn.commit()


# -- bundle shapes --------------------------------------------------------------------------
def test_encode_one_or_many(bundle, flickr8k_dir):
    imgs, caps = _flickr(flickr8k_dir, 2)
    one = bundle.encode_texts(caps[0])
    many = bundle.encode_texts(caps)
    assert one.shape == (bundle.dim,) and one.dtype == np.float32
    assert many.shape == (2, bundle.dim) and many.dtype == np.float32
    np.testing.assert_allclose(one, many[0], atol=1e-5)
    assert bundle.encode_texts([]).shape == (0, bundle.dim)
    img = bundle.encode_images(imgs[0])
    assert img.shape == (bundle.dim,) and img.dtype == np.float32
    np.testing.assert_allclose(img, bundle.encode_images([imgs[0], imgs[1]])[0], atol=1e-5)
    assert bundle.encode_images(str(imgs[1])).shape == (bundle.dim,)
