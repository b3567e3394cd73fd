"""Corpus loaders: Flickr8K layout, Karpathy JSON, generic CSV / JSONL; config round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jointembed_train.config import TrainConfig
from jointembed_train.data import load_flickr8k, load_karpathy, load_pairs


def test_flickr8k_layout(flickr8k_dir):
    c = load_flickr8k(flickr8k_dir)
    assert len(c.image_paths) == 8091 and len(c.captions) == len(c.caption_image_ids) == 40455
    assert {k: len(v) for k, v in c.splits.items()} == {"train": 6000, "dev": 1000, "test": 1000}
    test = c.split("test")
    assert len(test.caption_index) == 5000
    assert np.bincount(test.caption_image_ids).tolist() == [5] * 1000
    with pytest.raises(KeyError, match="split 'val'"):
        c.split("val")


def test_karpathy_json(tmp_path):
    data = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test",
         "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}, {"tokens": ["a", "kitten"]}]},
        {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A dog."}]},
    ]}
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps(data))
    c = load_karpathy(p, tmp_path / "img")
    assert c.captions == ["A cat.", "a kitten", "A dog."]
    assert c.caption_image_ids.tolist() == [0, 0, 1]
    assert c.image_paths[0] == tmp_path / "img" / "val2014" / "a.jpg"
    assert c.splits["train"].tolist() == [1] and c.splits["test"].tolist() == [0]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_pairs_csv_jsonl(tmp_path, fmt):
    rows = [("x.jpg", "one", "train"), ("y.jpg", "two", "test"), ("x.jpg", "three", "train")]
    if fmt == "csv":
        p = tmp_path / "pairs.csv"
        p.write_text("image_path,caption,split\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    else:
        p = tmp_path / "pairs.jsonl"
        p.write_text("".join(json.dumps({"image_path": a, "caption": b, "split": s}) + "\n" for a, b, s in rows))
    c = load_pairs(p)
    assert c.captions == ["one", "three", "two"]
    assert c.caption_image_ids.tolist() == [0, 0, 1]
    assert c.splits["train"].tolist() == [0] and c.splits["test"].tolist() == [1]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\nx.jpg,hi\n")
    with pytest.raises(ValueError, match="image_path, caption"):
        load_pairs(bad)


def test_config_roundtrip_and_validation(tmp_path):
    cfg = TrainConfig(loss="adaptive", quantizer=True, image_views=("center", "hflip"))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"loss": "nope"}))
    with pytest.raises(ValueError, match="loss='nope'"):
        TrainConfig.from_file(p)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"lr": 1.0, "bogus": 2})
