"""Readers: caption formats, bad lines recorded (not raised), image path expansion, Flickr8K."""
from __future__ import annotations

import json

import pytest

from jointembed_pg.errors import InputError
from jointembed_pg.ingest.flickr8k import load_split as load_flickr8k
from jointembed_pg.ingest.readers import iter_image_paths, read_texts


def test_token_file_jsonl_and_csv_give_same_records(tmp_path):
    (tmp_path / "a.txt").write_text("x.jpg#0\tA dog runs .\nx.jpg#1\tA cat sits .\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"id": k, "text": t})
                                                for k, t in [("x.jpg#0", "A dog runs ."), ("x.jpg#1", "A cat sits .")]))
    (tmp_path / "a.csv").write_text('id,text\nx.jpg#0,A dog runs .\nx.jpg#1,"A cat sits ."\n')
    got = [[(r.key, r.text, r.error) for r in read_texts(tmp_path / f"a.{s}")] for s in ("txt", "jsonl", "csv")]
    assert got[0] == got[1] == got[2] == [("x.jpg#0", "A dog runs .", None), ("x.jpg#1", "A cat sits .", None)]


def test_bad_lines_are_recorded_and_the_rest_goes_on(tmp_path):
    f = tmp_path / "caps.txt"
    f.write_bytes(b"a#0\tgood one\nb#0\t   \nc#0\t\xff\xfe bad utf8\nno tab here\nd#0\t\xf0\x9f\x90\xb6 \xe7\x8a\xac dog\n")
    recs = list(read_texts(f))
    assert [r.key for r in recs if r.error is None] == ["a#0", "d#0"]
    errors = {r.key: r.error for r in recs if r.error}
    assert "empty caption" in errors["b#0"]
    assert any("invalid UTF-8" in e for e in errors.values())
    assert any("no TAB" in e for e in errors.values())


def test_empty_caption_file_and_missing_file_raise(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(InputError, match="empty caption file"):
        list(read_texts(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="no such caption file"):
        list(read_texts(tmp_path / "nope.csv"))
    with pytest.raises(InputError, match="is a directory"):
        list(read_texts(tmp_path))


def test_csv_without_header_columns_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("key,caption\n1,hello\n")
    with pytest.raises(InputError, match="'id' and 'text'"):
        list(read_texts(tmp_path / "x.csv"))


def test_iter_image_paths_walks_dirs_and_records_missing(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.JPG").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("skip me when walking")
    recs = list(iter_image_paths([tmp_path, tmp_path / "missing.jpg"]))
    assert [r.path.name for r in recs] == ["a.png", "b.JPG", "missing.jpg"]
    assert recs[-1].error and "no such file" in recs[-1].error
    assert all(r.error is None for r in recs[:2])


def test_flickr8k_test_split(flickr8k_dir):
    split = load_flickr8k(flickr8k_dir, "test")
    assert len(split.image_paths) == 1000 and len(split.captions) == 5000
    for (key, _), i in zip(split.captions, split.caption_image_ids):
        assert key.split("#")[0] == split.image_paths[i].name


def test_flickr8k_bad_dir(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_flickr8k(tmp_path / "nope", "test")
    with pytest.raises(InputError, match="not a Flickr8K-layout"):
        load_flickr8k(tmp_path, "test")


def test_csv_with_bom_and_bad_rows(tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes(b'\xef\xbb\xbfid,text\nd1,first dog\n,orphan\n')
    recs = list(read_texts(f))
    assert (recs[0].key, recs[0].text, recs[0].error) == ("d1", "first dog", None)
    assert recs[1].error and "empty id" in recs[1].error


def test_jsonl_null_id_is_an_error_not_the_key_none(tmp_path):
    f = tmp_path / "n.jsonl"
    f.write_text('{"id": null, "text": "x"}\n{"id": 7, "text": "a cat"}\n')
    recs = list(read_texts(f))
    assert recs[0].error and "null" in recs[0].error
    assert (recs[1].key, recs[1].error) == ("7", None)


def test_same_file_named_twice_is_one_item(tmp_path):
    (tmp_path / "d").mkdir()
    img = tmp_path / "d" / "x.jpg"
    img.write_bytes(b"x")
    recs = list(iter_image_paths([img, img, tmp_path / "d" / ".." / "d" / "x.jpg", tmp_path / "d"]))
    assert [r.key for r in recs] == [str(img.resolve())]
