"""jointembed_pg.ingest.flickr8k: the one Flickr8K reader, used by eval/demo, training and export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jointembed_pg.ingest import flickr8k
from jointembed_pg.errors import InputError


def _layout(root: Path, tokens: bytes, test: str = "a.jpg\nb.jpg\n") -> Path:
    (root / "images").mkdir(parents=True)
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(root / "images" / n)
    (root / flickr8k.TOKEN_FILE).write_bytes(tokens)
    (root / flickr8k.SPLIT_FILES["test"]).write_text(test)
    (root / flickr8k.SPLIT_FILES["train"]).write_text("c.jpg\n")
    return root


def test_bad_caption_lines_are_skipped_not_fatal(tmp_path):
    root = _layout(tmp_path, b"a.jpg#0\tA dog .\nno tab here\nb.jpg#0\t   \nb.jpg#1\tA cat .\n"
                             b"a.jpg#1\t\xff\xfe bad utf-8\nc.jpg#0\tA bird .\na.jpg#2\tA dog runs .\n")
    s = flickr8k.load_split(root, "test")
    assert [p.name for p in s.image_paths] == ["a.jpg", "b.jpg"]
    assert s.captions == [("a.jpg#0", "A dog ."), ("b.jpg#1", "A cat ."), ("a.jpg#2", "A dog runs .")]
    assert s.caption_image_ids == [0, 1, 0]


@pytest.mark.parametrize("entry", ["../secret.jpg", "images/a.jpg", "..", "a\\b.jpg"])
def test_split_entry_outside_images_is_refused(tmp_path, entry):
    root = _layout(tmp_path, b"a.jpg#0\tA dog .\n", test=f"a.jpg\n{entry}\n")
    with pytest.raises(InputError, match="not a plain image file name"):
        flickr8k.load_split(root, "test")


def test_training_corpus_is_a_view_of_the_same_reader(tmp_path):
    from jointembed_train.data import load_flickr8k

    root = _layout(tmp_path, b"b.jpg#0\tA cat .\na.jpg#0\tA dog .\nno tab\nc.jpg#0\tA bird .\na.jpg#1\tA pup .\n")
    corpus = load_flickr8k(root)
    assert [p.name for p in corpus.image_paths] == ["a.jpg", "b.jpg", "c.jpg"]  # sorted by name
    assert corpus.captions == ["A dog .", "A pup .", "A cat .", "A bird ."]
    np.testing.assert_array_equal(corpus.caption_image_ids, [0, 0, 1, 2])
    np.testing.assert_array_equal(corpus.splits["test"], [0, 1])
    split = flickr8k.load_split(root, "test")
    assert sorted(t for _, t in split.captions) == sorted(corpus.captions[:3])


def test_real_test_split(flickr8k_dir):
    s = flickr8k.load_split(flickr8k_dir, "test")
    assert len(s.image_paths) == 1000 and len(s.captions) == 5000
    assert flickr8k.is_flickr8k(flickr8k_dir) and not flickr8k.is_flickr8k(None)
