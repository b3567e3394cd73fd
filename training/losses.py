"""Losses over embeddings only (METHOD.md sections 1-2). No optimizer, no printing.

All take image embeddings ``u (B, D)``, caption embeddings ``v (B, D)`` (row i of each
is a matching pair) and concept ids ``y (B,) int64``. Pairs (i, j) with ``y_i == y_j``
are positives and never used as negatives (Flickr8K batches can hold two captions of
one image). Similarity ``s`` is ``cosine`` (``u.v``; the encoders L2-normalise) or
``neg_l2`` (``-||u - v||``); hinge losses work on ``delta = -s`` (a distance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BIG = 1e4  #: pushes masked entries out of min / max reductions


def similarity(u: torch.Tensor, v: torch.Tensor, kind: str) -> torch.Tensor:
    """``S (B, B)`` with ``S[i, j] = s(u_i, v_j)``; raises ValueError for unknown ``kind``."""
    if kind == "cosine":
        return u @ v.T
    if kind == "neg_l2":
        d2 = (u * u).sum(-1, keepdim=True) + (v * v).sum(-1)[None, :] - 2.0 * u @ v.T
        return -torch.sqrt(d2.clamp(min=1e-12))
    raise ValueError(f"unknown similarity {kind!r}")


def positive_mask(y: torch.Tensor) -> torch.Tensor:
    """``(B, B) bool``, True where two rows share a concept (includes the diagonal)."""
    return y[:, None] == y[None, :]


def hardest_negative_gaps(delta: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Positive distances and hardest-negative distances in both directions.

    Args: ``delta (B, B)`` distances (``delta[i, j]`` image i to caption j), ``y (B,)``.
    Returns: ``pos (B,)``, ``neg_i2t (B,)`` = min over captions j of other concepts of
    ``delta[i, j]``, ``neg_t2i (B,)`` = min over images j of other concepts of
    ``delta[j, i]``. Rows without any negative get ``+_BIG``.
    """
    masked = delta.masked_fill(positive_mask(y), _BIG)
    return delta.diagonal(), masked.min(dim=1).values, masked.min(dim=0).values


class VSEPPLoss(nn.Module):
    """VSE++ hardest-negative hinge (Faghri et al., BMVC 2018), both directions:

        mean_i [m + delta_ii - min_j delta_ij]_+ + mean_i [m + delta_ii - min_j delta_ji]_+
    """

    def __init__(self, margin: float = 0.2, sim: str = "cosine"):
        super().__init__()
        self.margin, self.sim = margin, sim

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos, n_i2t, n_t2i = hardest_negative_gaps(-similarity(u, v, self.sim), y)
        return F.relu(self.margin + pos - n_i2t).mean() + F.relu(self.margin + pos - n_t2i).mean()


class VSE0Loss(nn.Module):
    """VSE0: the same hinge summed over all negatives (Faghri et al. 2018, eq. 2)."""

    def __init__(self, margin: float = 0.2, sim: str = "cosine"):
        super().__init__()
        self.margin, self.sim = margin, sim

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = -similarity(u, v, self.sim)
        neg = ~positive_mask(y)
        pos = delta.diagonal()
        i2t = F.relu(self.margin + pos[:, None] - delta) * neg
        t2i = F.relu(self.margin + pos[None, :] - delta) * neg
        return i2t.sum(1).mean() + t2i.sum(0).mean()


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) with a learnable temperature.

    ``logits = S / T``; other positives of the same concept are removed from each row's
    softmax denominator. ``T = exp(log_t)`` is clamped to ``[0.01, 1]``.
    """

    def __init__(self, init_temp: float = 0.07, sim: str = "cosine"):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(float(init_temp)).log())
        self.sim = sim

    def temperature(self) -> torch.Tensor:
        return self.log_t.exp().clamp(0.01, 1.0)

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = similarity(u, v, self.sim) / self.temperature()
        eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
        logits = logits.masked_fill(positive_mask(y) & ~eye, -_BIG)
        target = torch.arange(len(y), device=y.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class AdaptiveMarginLoss(nn.Module):
    """Hardest-negative hinge whose margin follows the space's separation (METHOD.md sec. 1).

    Per training step (before the loss is taken), with batch means ``p = mean_i delta_ii``
    and ``n`` = the mean negative distance: over both directions' hardest negatives
    (``neg_stat="hardest"``, METHOD.md's wording) or over all negative pairs
    (``neg_stat="mean"``, our default: with hardest negatives ``n < p`` for most of
    training, so the margin sits at ``m_min``; measured in docs/RESULTS.md):

        mu_pos <- decay mu_pos + (1 - decay) p      (mu_pos = p on the first step)
        mu_neg <- decay mu_neg + (1 - decay) n
        m_t = clip(kappa (mu_neg - mu_pos), m_min, m_max)

    then ``L = mean_i [m_t + delta_ii - n_i2t_i]_+ + mean_i [m_t + delta_ii - n_t2i_i]_+``.
    The EMAs only move in training mode. ``margin`` (a buffer) holds the current m_t.
    """

    def __init__(self, kappa: float = 0.5, m_min: float = 0.05, m_max: float = 0.5,
                 decay: float = 0.99, sim: str = "cosine", neg_stat: str = "hardest"):
        super().__init__()
        if neg_stat not in ("hardest", "mean"):
            raise ValueError(f"neg_stat must be hardest or mean, got {neg_stat!r}")
        self.kappa, self.m_min, self.m_max, self.decay, self.sim = kappa, m_min, m_max, decay, sim
        self.neg_stat = neg_stat
        self.register_buffer("mu_pos", torch.tensor(0.0))
        self.register_buffer("mu_neg", torch.tensor(0.0))
        self.register_buffer("margin", torch.tensor(float(m_min)))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))

    @torch.no_grad()
    def update(self, pos_mean: torch.Tensor, neg_mean: torch.Tensor) -> None:
        """Apply one EMA step and recompute ``margin``."""
        a = 0.0 if int(self.steps) == 0 else self.decay
        self.mu_pos.mul_(a).add_((1 - a) * pos_mean)
        self.mu_neg.mul_(a).add_((1 - a) * neg_mean)
        self.margin.copy_((self.kappa * (self.mu_neg - self.mu_pos)).clamp(self.m_min, self.m_max))
        self.steps += 1

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = -similarity(u, v, self.sim)
        pos, n_i2t, n_t2i = hardest_negative_gaps(delta, y)
        if self.training:
            if self.neg_stat == "hardest":
                valid = torch.cat([n_i2t, n_t2i])
                valid = valid[valid < _BIG / 2]
            else:
                valid = delta[~positive_mask(y)]
            if len(valid):
                self.update(pos.detach().mean(), valid.detach().mean())
        m = self.margin
        return F.relu(m + pos - n_i2t).mean() + F.relu(m + pos - n_t2i).mean()


class CenterClassLoss(nn.Module):
    """Multitask concept loss (METHOD.md sec. 2): center loss + concept classification.

        L_center = 1/(2B) sum_n ||e_n - c_{y_n}||^2   (Wen et al., ECCV 2016)
        L_cls    = CE(W e_n + b, y_n), averaged over the 2B image and caption embeddings

    Returns ``(L_center, L_cls)``. ``update="sgd"``: centers are parameters; ``"ema"``:
    centers are a buffer moved by Wen et al.'s rule
    ``c_j <- c_j - alpha * sum_{n: y_n=j} (c_j - e_n) / (1 + |{n: y_n=j}|)`` in training
    mode. Centers and classifier are training-only (never exported).
    """

    def __init__(self, num_concepts: int, dim: int, update: str = "sgd", alpha: float = 0.5):
        super().__init__()
        if update not in ("sgd", "ema"):
            raise ValueError(f"center update must be sgd or ema, got {update!r}")
        init = F.normalize(torch.randn(num_concepts, dim), dim=-1)
        if update == "sgd":
            self.centers = nn.Parameter(init)
        else:
            self.register_buffer("centers", init)
        self.update, self.alpha = update, alpha
        self.classifier = nn.Linear(dim, num_concepts)

    @torch.no_grad()
    def _ema_step(self, e: torch.Tensor, y: torch.Tensor) -> None:
        diff = torch.zeros_like(self.centers).index_add_(0, y, self.centers[y] - e)
        count = torch.zeros(len(self.centers), device=e.device).index_add_(0, y, torch.ones_like(y, dtype=e.dtype))
        self.centers.sub_(self.alpha * diff / (1.0 + count)[:, None])

    def forward(self, u: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.cat([u, v])
        yy = torch.cat([y, y])
        center = ((e - self.centers[yy]) ** 2).sum(-1).mean()
        cls = F.cross_entropy(self.classifier(e), yy)
        if self.training and self.update == "ema":
            self._ema_step(e.detach(), yy)
        return center, cls
