"""Projection heads and the shared embedding post-processing (METHOD.md, Encoders).

Image: ``(N, 1280) -> (N, D)``; text: ``(N, 384) -> (N, D)``; the GRU text baseline:
``(input_ids, attention_mask) (N, L) int64 -> (N, D)``. :class:`EmbeddingPost` applies
(L2 norm) -> (quantizer) -> (L2 norm), shared by both modalities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .quantizer import SoftQuantizer


class LinearHead(nn.Module):
    """``(N, in_dim) float32 -> (N, D) float32`` affine projection."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """2-layer MLP with a linear skip (VSE-infinity style): ``W2 drop(relu(LN(W1 x))) + W0 x``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.fc2(self.drop(F.relu(self.norm(self.fc1(x)))))


class GRUTextEncoder(nn.Module):
    """Paper-era baseline: learned word-piece embeddings + bidirectional GRU.

    ``(input_ids (N,L) int64, attention_mask (N,L) int64) -> (N, D) float32``: the two
    directions' outputs are averaged and mean-pooled over the mask (no packing, so it
    traces to ONNX with a dynamic length). Token id 0 is padding.
    """

    def __init__(self, vocab_size: int, word_dim: int, out_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, out_dim, batch_first=True, bidirectional=True)
        self.out_dim = out_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embed(input_ids))  # (N, L, 2D)
        h = 0.5 * (h[..., : self.out_dim] + h[..., self.out_dim:])
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class GeMPool(nn.Module):
    """Generalised-mean pooling over positions (Radenovic et al., TPAMI 2019).

    ``(N, T, C) float -> (N, C) float32``: ``(mean_t clamp(x, eps)^p)^(1/p)`` with a learnable
    scalar ``p`` (p = 1 is average pooling, p -> inf max pooling). Needs ``x >= 0``
    (EfficientNet-Lite features follow a ReLU6).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-4):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=1).pow(1.0 / p)


class AttnPool(nn.Module):
    """Mean pooling plus learned attention pooling, ``(N, T, C) -> (N, C) float32``.

    ``out = 0.5 (mean_t x_t + sum_t softmax_t(w . x_t) x_t)``; ``w`` starts at 0, so the
    module starts as exact average pooling.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        a = torch.softmax(self.score(x), dim=1)  # (N, T, 1)
        return 0.5 * (x.mean(dim=1) + (a * x).sum(dim=1))


class PooledHead(nn.Module):
    """``(N, T, C) -> pool -> (N, C) -> head -> (N, D)`` (image grid features)."""

    def __init__(self, pool: nn.Module, head: nn.Module):
        super().__init__()
        self.pool, self.head = pool, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


def make_image_head(cfg: TrainConfig, in_dim: int) -> nn.Module:
    """Image head: projection of pooled features, or pooling over the grid then projection."""
    if cfg.image_pool == "mean":
        return make_head(cfg, in_dim)
    pool = GeMPool() if cfg.image_pool == "gem" else AttnPool(in_dim)
    return PooledHead(pool, make_head(cfg, in_dim))


def make_head(cfg: TrainConfig, in_dim: int) -> nn.Module:
    """The projection head named by ``cfg.head`` (raises ValueError if unknown)."""
    if cfg.head == "linear":
        return LinearHead(in_dim, cfg.embed_dim)
    if cfg.head == "mlp":
        return MLPHead(in_dim, cfg.embed_dim, cfg.head_hidden, cfg.head_dropout)
    raise ValueError(f"unknown head {cfg.head!r}")


def make_text_head(cfg: TrainConfig, in_dim: int, vocab_size: int) -> nn.Module:
    """Text head: a projection of MiniLM features, or the GRU baseline over token ids."""
    if cfg.text_encoder == "gru":
        return GRUTextEncoder(vocab_size, cfg.gru_word_dim, cfg.embed_dim)
    return make_head(cfg, in_dim)


class EmbeddingPost(nn.Module):
    """Shared tail: ``z (N,D) -> e (N,D)`` = [L2 norm] -> [quantizer] -> [L2 norm].

    Returns ``e`` and, in ``forward_with_z``, the pre-quantization ``z`` (for the
    commitment term). The quantizer's codebook is shared by both modalities so that
    semantically similar images and captions can share codewords [Malali & Keller 2022].
    """

    def __init__(self, normalize: bool, quantizer: SoftQuantizer | None):
        super().__init__()
        self.normalize = normalize
        self.quantizer = quantizer

    def forward_with_z(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize:
            z = F.normalize(z, dim=-1)
        e = z if self.quantizer is None else self.quantizer(z)
        if self.normalize and self.quantizer is not None:
            e = F.normalize(e, dim=-1)
        return e, z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_with_z(z)[0]
