"""jointembed_pg.metrics (training, eval, export, benchmarks) against a naive full-argsort reference."""
from __future__ import annotations

import numpy as np
import pytest

from jointembed_pg import metrics


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


def _ranks_with_hits(n: int, hits: tuple[int, int, int]) -> np.ndarray:
    """``(n,)`` 1-based ranks where exactly ``hits[j]`` are <= K_j for K = 1, 5, 10."""
    r = np.full(n, 50, np.int64)
    r[:hits[2]] = 10
    r[:hits[1]] = 5
    r[:hits[0]] = 1
    return r


def test_values_are_exact_not_float_sums():
    # 1,000 images / 5,000 captions with hit counts whose naive float sum is 312.28000000000003
    i2t, t2i = _ranks_with_hits(1000, (301, 350, 517)), _ranks_with_hits(5000, (1302, 3989, 4483))
    m = metrics.ranks_to_metrics(i2t, t2i)
    assert repr(m["rsum"]) == "312.28" and repr(m["i2t_R@1"]) == "30.1" and repr(m["t2i_R@1"]) == "26.04"
    assert list(m) == list(metrics.KEYS)


def test_unrounded_values_round_only_for_display():
    m = metrics.ranks_to_metrics(np.array([1, 2, 9]), np.array([1, 7, 30]))  # 1/3, 2/3 -> no rounding
    assert m["i2t_R@1"] == 100 / 3 and m["t2i_R@5"] == 100 / 3 and m["i2t_R@10"] == 100.0
    assert m["rsum"] == 1000 / 3  # exact sum of 100 * (1/3 + 2/3 + 1 + 1/3 + 1/3 + 2/3)
    assert metrics.rounded(m)["i2t_R@1"] == 33.33


def test_zero_based_or_empty_ranks_are_rejected():
    with pytest.raises(ValueError, match="1-based"):
        metrics.ranks_to_metrics(np.array([0, 1]), np.array([1]))
    with pytest.raises(ValueError, match="1-based"):
        metrics.ranks_to_metrics(np.array([1]), np.array([], np.int64))


def test_eval_and_training_share_one_implementation():
    from jointembed_pg.evaluation import evaluate

    assert evaluate.ranks_to_metrics is metrics.ranks_to_metrics
    from jointembed_train import featureset, finetune

    assert featureset.retrieval_metrics is metrics.retrieval_metrics is finetune.retrieval_metrics
