"""Cross-modal retrieval metrics (METHOD.md, Evaluation protocol). Pure numpy.

Ranking is by L2 distance (smaller is closer). Ranks are 0-based internally: the rank of
a query is the number of gallery items strictly closer than its closest positive, so
R@K counts ``rank < K`` and the reported median rank is ``median(rank + 1)`` (1 = first).
Keys are flat and stable: ``i2t_R@1, i2t_R@5, i2t_R@10, t2i_R@1, t2i_R@5, t2i_R@10,
i2t_medr, t2i_medr, rsum`` (R@K in percent, rsum = sum of the six R@K, max 600).
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
CHUNK = 512  #: query rows per distance block (bounds memory to CHUNK x gallery floats)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``(len(a), len(b)) float64`` (monotone in L2)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def i2t_ranks(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> np.ndarray:
    """0-based rank of each image's closest own caption among all captions.

    Args:
        images: ``(N, D) float32`` image embeddings.
        captions: ``(M, D) float32`` caption embeddings.
        caption_image_ids: ``(M,) int64``, image index in ``[0, N)`` of each caption.
    Returns: ``(N,) int64``. Raises ValueError if an image has no caption.
    """
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    if np.bincount(ids, minlength=len(images)).min() == 0:
        raise ValueError("every image needs at least one caption for i2t")
    ranks = np.empty(len(images), np.int64)
    for lo in range(0, len(images), CHUNK):
        d = _sq_dists(images[lo:lo + CHUNK], captions)
        own = ids[None, :] == np.arange(lo, lo + len(d))[:, None]
        best = np.where(own, d, np.inf).min(1)
        ranks[lo:lo + len(d)] = (d < best[:, None]).sum(1)
    return ranks


def t2i_ranks(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's image among all images: ``(M,) int64``."""
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    ranks = np.empty(len(captions), np.int64)
    for lo in range(0, len(captions), CHUNK):
        d = _sq_dists(captions[lo:lo + CHUNK], images)
        pos = d[np.arange(len(d)), ids[lo:lo + len(d)]]
        ranks[lo:lo + len(d)] = (d < pos[:, None]).sum(1)
    return ranks


def summarize(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    """Flat metric dict from 0-based rank arrays."""
    out: dict[str, float] = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            out[f"{name}_R@{k}"] = float(100.0 * (r < k).mean())
    out["i2t_medr"] = float(np.median(i2t + 1))
    out["t2i_medr"] = float(np.median(t2i + 1))
    out["rsum"] = float(sum(out[f"{n}_R@{k}"] for n in ("i2t", "t2i") for k in KS))
    return out


def retrieval_metrics(images: np.ndarray, captions: np.ndarray,
                      caption_image_ids: np.ndarray) -> dict[str, float]:
    """i2t / t2i R@1/5/10, median ranks and rsum over one gallery (e.g. Flickr 1K test)."""
    return summarize(i2t_ranks(images, captions, caption_image_ids),
                     t2i_ranks(images, captions, caption_image_ids))


def coco_1k_5fold(images: np.ndarray, captions: np.ndarray,
                  caption_image_ids: np.ndarray, folds: int = 5) -> dict[str, float]:
    """MS-COCO 1K protocol: mean of each metric over ``folds`` consecutive image folds.

    Images are cut into ``folds`` equal consecutive blocks (5 x 1000 for the 5K test);
    each block is evaluated against its own captions only. Raises ValueError if the
    image count is not divisible by ``folds``.
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
