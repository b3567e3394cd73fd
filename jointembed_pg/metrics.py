"""Cross-modal retrieval metrics: R@K, medr and rsum for i2t and t2i (numpy only).

The one implementation used by training (dev/test selection), ``jointembed eval`` (from
ranks computed in SQL by :mod:`jointembed_pg.evaluation.evaluate`), the exporter's int8 comparison
and the benchmarks. The protocol is docs/METHOD.md, "Evaluation protocol":

* ranking is by L2 distance (smaller is closer);
* the rank of a query is 1-based: ``1 + #(wrong gallery items strictly closer than the
  closest right one)``; an image's right items are all of its captions (i2t), a
  caption's right item is its image (t2i);
* ``i2t_R@K`` = % of images with a caption ranked <= K; ``t2i_R@K`` = % of captions whose
  image is ranked <= K; ``medr`` = median rank; ``rsum`` = sum of the six R@K (max 600).

Keys are flat and stable: ``i2t_R@1, i2t_R@5, i2t_R@10, t2i_R@1, t2i_R@5, t2i_R@10,
i2t_medr, t2i_medr, rsum``. Values are computed exactly (R@K as ``100 * hits / n`` and
rsum as an exact sum of fractions, each rounded once to the nearest float), so the same
ranks give the same numbers everywhere; round only for display (:func:`rounded`).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

#: Cut-offs K of R@K.
KS = (1, 5, 10)
#: Query rows per distance block (bounds memory to ``CHUNK x gallery`` float64s).
CHUNK = 512
#: Metric keys in display order.
KEYS = tuple(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS) + ("i2t_medr", "t2i_medr", "rsum")


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``(len(a), len(b)) float64`` (monotone in L2)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def i2t_ranks(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> np.ndarray:
    """1-based rank of each image's closest own caption among all captions.

    Args:
        images: ``(N, D) float32`` image embeddings.
        captions: ``(M, D) float32`` caption embeddings.
        caption_image_ids: ``(M,) int64``, image index in ``[0, N)`` of each caption.

    Returns:
        ``(N,) int64`` ranks, 1 = an own caption is the nearest.

    Raises:
        ValueError: an image has no caption.
    """
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    if np.bincount(ids, minlength=len(images)).min() == 0:
        raise ValueError("every image needs at least one caption for i2t")
    ranks = np.empty(len(images), np.int64)
    for lo in range(0, len(images), CHUNK):
        d = _sq_dists(images[lo:lo + CHUNK], captions)
        own = ids[None, :] == np.arange(lo, lo + len(d))[:, None]
        best = np.where(own, d, np.inf).min(1)
        ranks[lo:lo + len(d)] = 1 + (d < best[:, None]).sum(1)  # own captions are never < best
    return ranks


def t2i_ranks(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> np.ndarray:
    """1-based rank of each caption's image among all images: ``(M,) int64``.

    Shapes as in :func:`i2t_ranks`.
    """
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    ranks = np.empty(len(captions), np.int64)
    for lo in range(0, len(captions), CHUNK):
        d = _sq_dists(captions[lo:lo + CHUNK], images)
        pos = d[np.arange(len(d)), ids[lo:lo + len(d)]]
        ranks[lo:lo + len(d)] = 1 + (d < pos[:, None]).sum(1)
    return ranks


def ranks(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i2t (N,) int64, t2i (M,) int64)`` 1-based ranks, in memory (the reference for SQL ranks)."""
    return (i2t_ranks(images, captions, caption_image_ids),
            t2i_ranks(images, captions, caption_image_ids))


def ranks_to_metrics(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    """The flat metric dict (module docstring) from 1-based rank arrays.

    Args:
        i2t: ``(N,) int`` rank of each image's best caption.
        t2i: ``(M,) int`` rank of each caption's image.

    Returns:
        ``{i2t_R@1 .. t2i_R@10 (percent), i2t_medr, t2i_medr, rsum}``, unrounded floats.

    Raises:
        ValueError: an empty rank array, or a rank below 1.
    """
    out: dict[str, float] = {}
    total = Fraction(0)
    for name, r in (("i2t", np.asarray(i2t)), ("t2i", np.asarray(t2i))):
        if r.size == 0 or r.min() < 1:
            raise ValueError(f"{name} ranks must be a non-empty array of 1-based ranks")
        for k in KS:
            pct = Fraction(100 * int((r <= k).sum()), r.size)
            out[f"{name}_R@{k}"] = float(pct)
            total += pct
    out["i2t_medr"] = float(np.median(np.asarray(i2t)))
    out["t2i_medr"] = float(np.median(np.asarray(t2i)))
    out["rsum"] = float(total)
    return {k: out[k] for k in KEYS}


def retrieval_metrics(images: np.ndarray, captions: np.ndarray,
                      caption_image_ids: np.ndarray) -> dict[str, float]:
    """i2t / t2i R@1/5/10, medr and rsum over one gallery (e.g. Flickr8K 1K test).

    Shapes as in :func:`i2t_ranks`; returns :func:`ranks_to_metrics` of the in-memory ranks.
    """
    return ranks_to_metrics(*ranks(images, captions, caption_image_ids))


def coco_1k_5fold(images: np.ndarray, captions: np.ndarray,
                  caption_image_ids: np.ndarray, folds: int = 5) -> dict[str, float]:
    """MS-COCO 1K protocol: mean of each metric over ``folds`` consecutive image folds.

    Images are cut into ``folds`` equal consecutive blocks (5 x 1000 for the 5K test);
    each block is evaluated against its own captions only.

    Raises:
        ValueError: the image count is not divisible by ``folds``.
    """
    n = len(images)
    if n % folds:
        raise ValueError(f"{n} images do not split into {folds} equal folds")
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    size = n // folds
    per_fold = []
    for f in range(folds):
        sel = (ids >= f * size) & (ids < (f + 1) * size)
        per_fold.append(retrieval_metrics(images[f * size:(f + 1) * size], captions[sel], ids[sel] - f * size))
    return {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}


def coco_5k(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> dict[str, float]:
    """MS-COCO 5K protocol: the whole 5,000-image test set as one gallery."""
    return retrieval_metrics(images, captions, caption_image_ids)


def rounded(metrics: dict[str, float], digits: int = 2) -> dict[str, float]:
    """A copy of ``metrics`` with every value rounded to ``digits`` decimals (display only)."""
    return {k: round(float(v), digits) for k, v in metrics.items()}
