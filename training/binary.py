"""Binary-code quantizer: a training-only relaxation of ``sign`` so that the sign pattern of
the float embedding is itself a good Hamming code (issue 26; docs/RESULTS.md).

The code of an L2-normalised embedding ``e (N, D)`` is ``b = sign(e)`` in ``{-1, +1}^D``,
i.e. pgvector's ``binary_quantize(e)::bit(D)`` (bit d set iff ``e_d > 0``). Hamming distance
and code similarity are related by ``s_b(b, b') = b.b' / D = 1 - 2 hamming(b, b') / D``.

Training adds, on top of the float losses (runner.train_step)::

    x = sqrt(D) e                                   (coordinates ~ +-1 for a spread e)
    c = tanh(x / tau)                               (relaxed code; tau annealed tau_start -> tau_end)
      or sign(x) + tanh(x/tau) - sg(tanh(x/tau))    (straight-through, ``straight_through``)
    L_bin   = VSE++(c_u / ||c_u||, c_v / ||c_v||)   (hinge on code similarity, margin bin_margin)
    L_quant = mean_{n,d} (1 - |x_nd|)^2              (pulls every |e_d| towards 1 / sqrt(D))
    L += lambda_bin L_bin + lambda_bin_quant L_quant

(HashNet, Cao et al., ICCV 2017, for the annealed tanh; Courbariaux et al. 2016 / Bengio et
al. 2013 for the straight-through sign; the hinge is VSE++, Faghri et al. 2018.) Nothing of
this is part of the exported encoder: the float embedding is unchanged in form, searched
exactly, and its code is ``binary_quantize`` of it; there is no learned threshold, offset
or rotation to fold in.

Evaluation helpers rank by Hamming distance alone and by Hamming top-R re-ranked by L2,
with ties in Hamming broken by gallery index (a fixed arbitrary order, as an index would),
never optimistically.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from jointembed_pg.metrics import KEYS, ranks_to_metrics

from .losses import VSEPPLoss


def relaxed_codes(e: torch.Tensor, tau: float, straight_through: bool = False) -> torch.Tensor:
    """``e (N, D) float32 -> c (N, D) float32`` in ``[-1, 1]``: ``tanh(sqrt(D) e / tau)``, or
    its straight-through sign (``sign`` forward, tanh's gradient backward). Raises ValueError
    for ``tau <= 0``."""
    if not tau > 0:
        raise ValueError(f"binary-code temperature must be > 0, got {tau}")
    soft = torch.tanh(e * (math.sqrt(e.shape[-1]) / tau))
    if not straight_through:
        return soft
    return soft + (torch.where(e > 0, 1.0, -1.0).to(soft.dtype) - soft).detach()


def quantization_loss(e: torch.Tensor) -> torch.Tensor:
    """``mean_{n,d} (1 - |sqrt(D) e_nd|)^2``, scalar: 0 iff every coordinate has magnitude
    ``1/sqrt(D)``, i.e. ``e = sign(e) / sqrt(D)`` and L2 ranking equals Hamming ranking."""
    return (1.0 - (e * math.sqrt(e.shape[-1])).abs()).pow(2).mean()


class BinaryCodeLoss(torch.nn.Module):
    """``L_bin`` of the module docstring over a batch: ``(u (B,D), v (B,D), y (B,)) -> scalar``.

    Args:
        margin: hinge margin in code-similarity units (0.2 = 0.1 D bits of Hamming gap).
        straight_through: use the straight-through sign instead of tanh.
    """

    def __init__(self, margin: float = 0.2, straight_through: bool = False):
        super().__init__()
        self.rank = VSEPPLoss(margin, "cosine")
        self.straight_through = straight_through
        self.tau = 1.0

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cu = F.normalize(relaxed_codes(u, self.tau, self.straight_through), dim=-1)
        cv = F.normalize(relaxed_codes(v, self.tau, self.straight_through), dim=-1)
        return self.rank(cu, cv, y)


# ---------------------------------------------------------------- evaluation (numpy)

def sign_codes(e: np.ndarray) -> np.ndarray:
    """``(N, D) float -> (N, D) int8`` in ``{-1, +1}``: +1 iff ``e > 0`` (binary_quantize)."""
    return np.where(np.asarray(e) > 0, 1, -1).astype(np.int8)


def _hamming(qc: np.ndarray, gc: np.ndarray) -> np.ndarray:
    """``(Q, G) float64`` Hamming distances of +-1 codes: ``(D - qc.gc) / 2``."""
    d = qc.shape[1]
    return (d - qc.astype(np.float64) @ gc.astype(np.float64).T) / 2.0


def _keys(q: np.ndarray, g: np.ndarray, pool: int) -> np.ndarray:
    """``(Q, G) float64`` ranking keys (smaller = closer), all distinct per row.

    ``pool == 0``: Hamming distance + index / (G + 1) (ties broken by gallery index).
    ``pool > 0``: the ``pool`` gallery items first by that key are ranked by squared L2
    (< 4 for unit vectors), every other item after them (key 10 + Hamming + index).
    """
    n_g = len(g)
    ham = _hamming(sign_codes(q), sign_codes(g)) + np.arange(n_g)[None, :] / (n_g + 1)
    if pool <= 0:
        return ham
    pool = min(pool, n_g)
    cand = np.argpartition(ham, pool - 1, axis=1)[:, :pool]
    qd = q.astype(np.float64)
    gd = g.astype(np.float64)
    l2 = (qd * qd).sum(1)[:, None] + (gd * gd).sum(1)[None, :] - 2.0 * qd @ gd.T
    keys = 10.0 + ham
    rows = np.arange(len(q))[:, None]
    keys[rows, cand] = np.maximum(l2[rows, cand], 0.0)
    return keys


def binary_metrics(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray,
                   pool: int = 0, chunk: int = 512) -> dict[str, float]:
    """Flickr 1K metrics (:mod:`jointembed_pg.metrics` keys) of Hamming retrieval on the sign
    codes (``pool = 0``) or of Hamming top-``pool`` candidates re-ranked by exact L2.

    Args: ``images (N, D)``, ``captions (M, D)`` float32, ``caption_image_ids (M,) int64``.
    Ranks are 1-based, ``1 + #(items with a strictly smaller key)`` as in metrics.py; keys
    are distinct per query (ties broken by gallery index), so the figures are not optimistic.
    """
    ids = np.asarray(caption_image_ids, dtype=np.int64)
    i2t = np.empty(len(images), np.int64)
    for lo in range(0, len(images), chunk):
        k = _keys(images[lo:lo + chunk], captions, pool)
        own = ids[None, :] == np.arange(lo, lo + len(k))[:, None]
        best = np.where(own, k, np.inf).min(1)
        i2t[lo:lo + len(k)] = 1 + (k < best[:, None]).sum(1)
    t2i = np.empty(len(captions), np.int64)
    for lo in range(0, len(captions), chunk):
        k = _keys(captions[lo:lo + chunk], images, pool)
        pos = k[np.arange(len(k)), ids[lo:lo + len(k)]]
        t2i[lo:lo + len(k)] = 1 + (k < pos[:, None]).sum(1)
    m = ranks_to_metrics(i2t, t2i)
    return {key: m[key] for key in KEYS}


#: Re-rank pools reported per evaluation (0 = Hamming alone).
POOLS = (0, 10, 20, 40, 100)


def binary_summary(images: np.ndarray, captions: np.ndarray, caption_image_ids: np.ndarray,
                   pools: tuple[int, ...] = POOLS) -> dict[str, float]:
    """``{"ham_rsum": ..., "rr10_rsum": ..., ...}``: rsum of :func:`binary_metrics` per pool."""
    return {("ham_rsum" if p == 0 else f"rr{p}_rsum"):
            binary_metrics(images, captions, caption_image_ids, p)["rsum"] for p in pools}
