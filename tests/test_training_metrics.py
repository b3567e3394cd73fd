"""training.metrics against a naive full-argsort reference (STYLE.md rule 10)."""
from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def naive(images: np.ndarray, captions: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    d = np.linalg.norm(images[:, None, :] - captions[None, :, :], axis=-1)  # (N, M) L2
    i2t = np.array([np.nonzero(np.isin(np.argsort(d[i]), np.nonzero(ids == i)[0]))[0].min()
                    for i in range(len(images))])
    t2i = np.array([int(np.nonzero(np.argsort(d[:, j]) == ids[j])[0][0]) for j in range(len(captions))])
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = 100.0 * np.mean(r < k)
    out["i2t_medr"], out["t2i_medr"] = float(np.median(i2t + 1)), float(np.median(t2i + 1))
    out["rsum"] = sum(out[f"{n}_R@{k}"] for n in ("i2t", "t2i") for k in (1, 5, 10))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference_with_uneven_captions(seed):
    rng = np.random.default_rng(seed)
    n, d = 40, 8
    ids = np.concatenate([np.arange(n), rng.integers(0, n, 70)]).astype(np.int64)  # 1..many per image
    rng.shuffle(ids)
    images = rng.normal(size=(n, d)).astype(np.float32)
    captions = (images[ids] + 1.2 * rng.normal(size=(len(ids), d))).astype(np.float32)
    old = metrics.CHUNK
    metrics.CHUNK = 7  # exercise chunk boundaries
    try:
        got = metrics.retrieval_metrics(images, captions, ids)
    finally:
        metrics.CHUNK = old
    ref = naive(images, captions, ids)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k]), k


def test_perfect_embedding_scores_600():
    x = np.eye(10, dtype=np.float32)
    ids = np.repeat(np.arange(10), 5)
    m = metrics.retrieval_metrics(x, x[ids], ids)
    assert m["rsum"] == 600.0 and m["i2t_medr"] == 1.0 and m["t2i_medr"] == 1.0


def test_image_without_caption_raises():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="at least one caption"):
        metrics.i2t_ranks(x, x[:2], np.array([0, 1]))


def test_coco_1k_is_fold_mean():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(20, 4)).astype(np.float32)
    ids = np.repeat(np.arange(20), 2)
    caps = images[ids] + rng.normal(size=(40, 4)).astype(np.float32)
    folds = metrics.coco_1k_5fold(images, caps, ids, folds=2)
    a = metrics.retrieval_metrics(images[:10], caps[:20], ids[:20])
    b = metrics.retrieval_metrics(images[10:], caps[20:], ids[20:] - 10)
    assert folds["rsum"] == pytest.approx((a["rsum"] + b["rsum"]) / 2)
    with pytest.raises(ValueError):
        metrics.coco_1k_5fold(images[:9], caps[:18], ids[:18], folds=2)
