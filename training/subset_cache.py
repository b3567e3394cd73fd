"""Train on the images whose features a partial cache holds (issue 26, CPU-bound runs).

``python -m jointembed_train.subset_cache merge`` merges the partial center-view feature
files ``cache/sub_<i>_<n>.npz`` (``idx (k,) int64`` corpus image indices, ``feats (k, 1280)``;
written by the issue-26 extraction, dev and test images first, then train images in a fixed
random order) into ``cache_sub/``: the full-corpus center cache file (rows not computed
are zero and never used) and a link to the caption cache. ``... train NAME SEED [key=json ...]``
trains ``training/configs/binary_base.json`` (+ overrides) on the corpus whose train split
is restricted to the train images with features, then evaluates on the full 1K dev / test.
Refuses when a dev or test image has no features.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FULL, SUB = REPO / "cache", REPO / "cache_sub"


def _corpus():
    from .cli import load_corpus

    return load_corpus("flickr8k", REPO.parent.parent / "shared" / "data" / "flickr8k")


def merge() -> None:
    from .config import TrainConfig
    from .features import _key, image_key

    c = _corpus()
    cfg = TrainConfig.from_file(REPO / "training" / "configs" / "binary_base.json")
    arr = np.zeros((len(c.image_paths), 1280), np.float32)
    have = np.zeros(len(c.image_paths), bool)
    for f in sorted(FULL.glob("sub_*.npz")):
        z = np.load(f)
        arr[z["idx"]] = z["feats"]
        have[z["idx"]] = True
    SUB.mkdir(exist_ok=True)
    np.save(SUB / f"img_center_{image_key(c.image_paths, cfg.image_spec(), 'center', cfg.image_backbone)}.npy", arr)
    np.save(SUB / "have.npy", have)
    txt = f"txt_mean_{_key('text', c.captions, {'max_tokens': cfg.text_max_tokens})}.npy"
    link = SUB / txt
    if not link.exists():
        link.symlink_to(FULL / txt)
    print(json.dumps({s: int(have[c.splits[s]].sum()) for s in ("train", "dev", "test")}))


def train(name: str, seed: int, sets: list[str]) -> None:
    import torch

    from .cli import _parse_set
    from .config import TrainConfig
    from .runner import train as run

    torch.set_num_threads(1)
    c = _corpus()
    have = np.load(SUB / "have.npy")
    for s in ("dev", "test"):
        if not have[c.splits[s]].all():
            raise SystemExit(f"{s}: {int((~have[c.splits[s]]).sum())} images without features")
    c.splits["train"] = c.splits["train"][have[c.splits["train"]]]
    cfg = TrainConfig.from_file(REPO / "training" / "configs" / "binary_base.json").replace(
        seed=seed, **_parse_set(sets))
    cfg = cfg.replace(extra={**cfg.extra, "train_images": int(len(c.splits["train"]))})
    ck = run(cfg, c, REPO / "runs" / f"{name}-s{seed}", SUB, progress=False)
    print(json.dumps({"train_images": len(c.splits["train"]), **ck.info, **ck.metrics}))


if __name__ == "__main__":
    if sys.argv[1] == "merge":
        merge()
    else:
        train(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
