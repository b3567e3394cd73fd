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
