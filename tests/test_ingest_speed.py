"""Issue 19's ingest changes: length-sorted caption batches, the thread budget reaching the
onnxruntime sessions, the bounded decode-ahead queue, int8 vs fp32 never mixed.

Real bundle, real onnxruntime sessions, real PostgreSQL, real Flickr8K images.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jointembed_pg import cli
from jointembed_pg.ingest import pipeline as ingest
from jointembed_pg.search import bulk
from jointembed_pg.errors import ModelMismatchError
from jointembed_pg.ingest.readers import PathRecord, TextRecord
from jointembed_pg.search.store import Store
from jointembed_pg.model.text import length_sorted_batches
from jointembed_pg.model.threads import NO_SPINNING, ThreadBudget

CAPTIONS = [
    "a dog", "a black dog runs across a green field of tall grass while two children watch from the fence",
    "two men", "a girl in a pink dress climbs the wooden stairs of a playhouse in the garden", "surf",
    "a man rides a bike", "several people are standing on a city street corner waiting for the light to change "
    "and one of them is holding a large red umbrella", "a cat sleeps", "kids play in the water",
    "a brown horse", "the climber hangs from a rock face above the river", "snow",
] * 3


def _hits_key(coll, vector, key):
    hits = coll.search_vector(vector, target="text", k=1, exact=True)
    return hits and hits[0].key == key and hits[0].distance < 1e-4


# -- length-sorted caption batches ---------------------------------------------------------
def test_length_sorted_batches_cover_every_row_once():
    mask = np.zeros((7, 5), np.int64)
    for i, n in enumerate([5, 1, 3, 1, 4, 2, 3]):
        mask[i, :n] = 1
    batches = length_sorted_batches(mask, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert np.concatenate(batches).tolist() == [1, 3, 5, 2, 6, 4, 0]  # by length, stable on ties
    with pytest.raises(ValueError):
        length_sorted_batches(mask, 0)


def test_sorted_text_encoding_equals_unsorted(bundle):
    """Length-sorted batches give the unsorted path's embeddings, in the caller's order, and
    both equal the one-caption-per-call reference (no padding at all)."""
    unsorted = bundle.encode_texts(CAPTIONS, batch_size=8)
    sorted_ = bundle.encode_texts_by_length(CAPTIONS, batch_size=8)
    assert sorted_.shape == unsorted.shape == (len(CAPTIONS), bundle.dim) and sorted_.dtype == np.float32
    assert np.abs(sorted_ - unsorted).max() <= 1e-5
    reference = np.stack([bundle.encode_texts([c], batch_size=1)[0] for c in CAPTIONS[:12]])
    assert np.abs(sorted_[:12] - reference).max() <= 1e-5
    assert bundle.encode_texts_by_length([], batch_size=8).shape == (0, bundle.dim)


def test_index_texts_sorted_window_with_a_refused_caption(pg_dsn, bundle):
    """A caption the encoder refuses in the middle of a window fails alone; every other
    caption is stored under its own key with its unsorted embedding."""
    texts = [f"{t} ({i})" for i, t in enumerate(CAPTIONS)]  # unique: one nearest key each
    records = [TextRecord(f"c{i}", t) for i, t in enumerate(texts)]
    records.insert(17, TextRecord("emoji", "\U0001F436\U0001F680"))
    coll = Store(pg_dsn).collection("sorted", model_id=bundle.model_id, dim=bundle.dim, create=True)
    rep = ingest.index_texts(coll, bundle, records, batch_size=4, progress=False)
    assert [f.key for f in rep.failed] == ["emoji"] and rep.written == len(CAPTIONS)
    ref = bundle.encode_texts(texts, batch_size=1)
    for i in (0, 1, 6, 16, 17, len(texts) - 1):
        assert _hits_key(coll, ref[i], f"c{i}"), i


# -- bounded decode-ahead queue ------------------------------------------------------------
def test_decode_ahead_keeps_order_bounds_and_isolates_a_bad_item():
    submitted, lock = [], threading.Lock()

    def work(x):
        with lock:
            submitted.append(x)
        time.sleep(0.001 * (x % 3))  # finish out of order
        if x == 5:
            raise OSError("bad item 5")
        return x * 10

    with ThreadPoolExecutor(3) as pool:
        seen = []
        for item, fut in ingest.decode_ahead(pool, work, range(12), depth=4):
            with lock:
                assert len(submitted) <= item + 4  # never more than `depth` ahead of the consumer
            try:
                seen.append((item, fut.result()))
            except OSError as e:
                seen.append((item, str(e)))
    assert [i for i, _ in seen] == list(range(12))
    assert dict(seen)[5] == "bad item 5" and all(v == i * 10 for i, v in seen if i != 5)
    with pytest.raises(ValueError):
        next(ingest.decode_ahead(None, work, [1], depth=0))


def test_index_images_bad_file_mid_batch_loses_nothing(pg_dsn, bundle, flickr8k_dir, tmp_path):
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:6]
    paths = [flickr8k_dir / "images" / n for n in names]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(paths[0].read_bytes()[:300])
    records = [PathRecord(str(p), p) for p in paths[:3]] + [PathRecord(str(bad), bad)] + \
        [PathRecord(str(p), p) for p in paths[3:]]
    coll = Store(pg_dsn).collection("ahead", model_id=bundle.model_id, dim=bundle.dim, create=True)
    rep = ingest.index_images(coll, bundle, records, batch_size=2, decode_threads=2, progress=False)
    assert [f.key for f in rep.failed] == [str(bad)] and rep.written == 6
    ref = bundle.encode_images(paths)
    for p, e in zip(paths, ref):
        hits = coll.search_vector(e, target="image", k=1, exact=True)
        assert hits[0].key == str(p) and hits[0].distance < 1e-4


# -- --threads reaches the sessions --------------------------------------------------------
def _spy_bundles(monkeypatch) -> list:
    seen, real = [], cli.Context.bundle

    def spy(self, *a, **kw):
        b = real(self, *a, **kw)
        seen.append(b)
        return b
    monkeypatch.setattr(cli.Context, "bundle", spy)
    return seen


def test_threads_option_sets_the_session_options(pg_dsn, bundle_dir, tmp_path, monkeypatch):
    caps = tmp_path / "caps.csv"
    caps.write_text("id,text\na,a dog runs\nb,two children play\n")
    seen = _spy_bundles(monkeypatch)
    r = CliRunner().invoke(cli.cli, ["index", "text", str(caps), "--collection", "t", "--dsn", pg_dsn,
                                     "--bundle", str(bundle_dir), "--threads", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    opts = seen[0]._session("text").get_session_options()
    assert opts.intra_op_num_threads == 3
    assert opts.get_session_config_entry(NO_SPINNING[0]) == "0"
    assert opts.get_session_config_entry("session.x64quantprecision") == "1"  # kept


@pytest.mark.parametrize("command", [["sync", "--table", "no_such_table"], ["worker", "--until-idle"]])
def test_threads_option_on_sync_and_worker(pg_dsn, bundle_dir, monkeypatch, command):
    seen = _spy_bundles(monkeypatch)
    CliRunner().invoke(cli.cli, [*command, "--dsn", pg_dsn, "--bundle", str(bundle_dir), "--threads", "2"])
    assert seen and seen[0].intra_op_threads == 2 and seen[0].session_config == dict([NO_SPINNING])


def test_thread_budget_auto():
    assert ThreadBudget.auto(2) == ThreadBudget(decode=1, intra_op=2)
    assert ThreadBudget.auto(8) == ThreadBudget(decode=2, intra_op=8)
    assert ThreadBudget.auto().intra_op >= 1
    with pytest.raises(ValueError):
        ThreadBudget.auto(0)


# -- int8 and fp32 never mixed -------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_pair(bundle_dir, flickr8k_dir, tmp_path_factory) -> Path:
    """A directory ``<tmp>/b`` (the fp32 bundle) with its int8 variant ``<tmp>/b-int8`` beside it."""
    pytest.importorskip("torch")
    from jointembed_export.int8 import build_int8_bundle

    root = tmp_path_factory.mktemp("pair")
    (root / "b").symlink_to(Path(bundle_dir).resolve(), target_is_directory=True)
    build_int8_bundle(root / "b", root / "b-int8", data_dir=flickr8k_dir, evaluate=False)
    return root / "b"


@pytest.mark.slow
def test_int8_and_fp32_vectors_never_mix(pg_dsn, int8_pair, bundle, tmp_path):
    caps = tmp_path / "caps.csv"
    caps.write_text("id,text\na,a dog runs\nb,two children play\n")
    run = CliRunner().invoke
    base = ["index", "text", str(caps), "--dsn", pg_dsn, "--bundle", str(int8_pair), "--no-progress"]
    assert run(cli.cli, [*base, "--collection", "fp32"]).exit_code == 0
    r = run(cli.cli, [*base, "--collection", "fp32", "--int8"])
    assert r.exit_code == 1 and "int8 and fp32 vectors are never mixed" in r.output, r.output
    r = run(cli.cli, [*base, "--collection", "q8", "--int8"])
    assert r.exit_code == 0, r.output
    int8 = bulk.load_bundle(int8_pair, int8=True)
    store = Store(pg_dsn)
    assert int8.meta.precision == "int8" and store.collection("q8").model_id == int8.model_id != bundle.model_id
    with pytest.raises(ModelMismatchError):  # fp32 query vectors against int8 stored ones
        store.collection("q8").search_text(bundle, "a dog", target="text")
    with pytest.raises(ModelMismatchError):  # and the other way round
        store.collection("fp32").search_text(int8, "a dog", target="text")
    assert run(cli.cli, [*base, "--collection", "fp32"]).exit_code == 0  # fp32 into fp32 still fine
