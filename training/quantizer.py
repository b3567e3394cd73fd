"""Differentiable soft quantizer with a learnable codebook (METHOD.md sec. 3).

    a_k(z) = softmax_k(-||z - q_k||^2 / tau),  q(z) = sum_k a_k(z) q_k,
    e = z + beta (q(z) - z)                                [Malali & Keller 2022; ours]

``tau`` is a buffer set by the training loop (annealed ``tau_start -> tau_end``); the
exported encoder uses ``tau_end``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SoftQuantizer(nn.Module):
    """``z (N, D) float32 -> e (N, D) float32``, differentiable in ``z`` and the codebook.

    Args:
        num_codes: K, codebook size.
        dim: D.
        beta: residual mix; 1.0 gives ``e = q(z)``, 0.0 gives ``e = z``.
        tau: initial temperature (squared-distance units).
        unit_init: initialise codewords on the unit sphere (use with L2-normalised z).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 1.0, tau: float = 1.0,
                 unit_init: bool = True):
        super().__init__()
        code = torch.randn(num_codes, dim)
        code = code / code.norm(dim=1, keepdim=True) if unit_init else code / math.sqrt(dim)
        self.codebook = nn.Parameter(code)
        self.beta = beta
        self.register_buffer("tau", torch.tensor(float(tau)))

    def set_tau(self, tau: float) -> None:
        """Set the temperature (> 0); raises ValueError otherwise."""
        if not tau > 0:
            raise ValueError(f"quantizer temperature must be > 0, got {tau}")
        self.tau.fill_(float(tau))

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``a (N, K)`` (rows sum to 1)."""
        d2 = (z * z).sum(-1, keepdim=True) + (self.codebook ** 2).sum(-1)[None, :] \
            - 2.0 * z @ self.codebook.T
        return torch.softmax(-d2 / self.tau, dim=-1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``q(z) (N, D)``: the assignment-weighted mean of codewords."""
        return self.assign(z) @ self.codebook

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.beta * (self.quantize(z) - z)


def commitment_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``mean_n ||z_n - sg(q_n)||^2`` (VQ-VAE commitment term), scalar."""
    return ((z - q.detach()) ** 2).sum(-1).mean()


def tau_at(progress: float, tau_start: float, tau_end: float) -> float:
    """Geometric anneal: ``tau_start * (tau_end / tau_start) ** progress``, progress in [0,1]."""
    p = min(max(progress, 0.0), 1.0)
    return tau_start * (tau_end / tau_start) ** p


class ProductQuantizer(nn.Module):
    """Multi-codebook (product) soft quantizer: ``z (N, D) float32 -> e (N, D) float32``.

    ``z`` is split into ``M`` sub-vectors ``z^m`` of ``D/M`` dims; each has its own
    codebook ``C^m (K, D/M)``::

        a^m_k = softmax_k(-||z^m - C^m_k||^2 / tau),   q(z) = concat_m sum_k a^m_k C^m_k
        e = z + beta (q(z) - z)

    so the quantized embedding can take ``K^M`` distinct values (product quantization,
    Jegou et al., TPAMI 2011; soft/differentiable form as in Malali & Keller 2022, and
    DPQ, Chen et al., ICML 2020). As ``tau -> 0`` each sub-vector snaps to its nearest
    codeword. With ``straight_through`` the forward value uses the hard (nearest) codewords
    while the gradient is that of the soft assignment (``q_soft + sg(q_hard - q_soft)``);
    it applies only in training mode, the exported (eval) encoder is soft at ``tau_end``.

    Args:
        num_subspaces: M (must divide ``dim``).
        num_codes: K per subspace.
        dim: D.
        beta: residual mix; 1.0 gives ``e = q(z)``.
        tau: initial temperature (squared-distance units of one sub-vector).

    Raises:
        ValueError: ``dim`` not divisible by ``num_subspaces``.
    """

    def __init__(self, num_subspaces: int, num_codes: int, dim: int, beta: float = 1.0, tau: float = 1.0,
                 straight_through: bool = False):
        super().__init__()
        if num_subspaces < 1 or dim % num_subspaces:
            raise ValueError(f"dim {dim} is not divisible by num_subspaces {num_subspaces}")
        self.m, self.k, self.sub = num_subspaces, num_codes, dim // num_subspaces
        code = torch.randn(num_subspaces, num_codes, self.sub)
        # unit-norm z has sub-vectors of norm ~ 1/sqrt(M): start codewords at that scale
        code = code / code.norm(dim=-1, keepdim=True) / math.sqrt(num_subspaces)
        self.codebook = nn.Parameter(code)
        self.beta = beta
        self.straight_through = straight_through
        self.register_buffer("tau", torch.tensor(float(tau)))

    set_tau = SoftQuantizer.set_tau

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[0], self.m, self.sub)  # (N, M, d)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances ``(N, M, K)`` of each sub-vector to its codewords."""
        zs = self._split(z)
        return (zs * zs).sum(-1, keepdim=True) + (self.codebook ** 2).sum(-1)[None] \
            - 2.0 * torch.einsum("nmd,mkd->nmk", zs, self.codebook)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``a (N, M, K)`` (sums to 1 over K)."""
        return torch.softmax(-self.distances(z) / self.tau, dim=-1)

    def hard_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codeword index per subspace, ``(N, M) int64``."""
        return self.distances(z).argmin(-1)

    def hard_quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, D)``: concatenation of the nearest codeword of every sub-vector."""
        idx = self.hard_codes(z)  # (N, M)
        m = torch.arange(self.m, device=z.device)[None, :].expand_as(idx)
        return self.codebook[m, idx].reshape(z.shape[0], -1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``q(z) (N, D)``: per subspace the assignment-weighted mean of codewords."""
        q = torch.einsum("nmk,mkd->nmd", self.assign(z), self.codebook).reshape(z.shape[0], -1)
        if self.straight_through and self.training:
            q = q + (self.hard_quantize(z) - q).detach()
        return q

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.beta * (self.quantize(z) - z)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor) -> None:
        """Set every subspace's K codewords to sub-vectors of K rows of ``z (>= K, D)``."""
        rows = torch.randperm(z.shape[0])[: self.k]
        self.codebook.copy_(self._split(z[rows]).transpose(0, 1))
