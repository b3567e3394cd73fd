"""Losses and quantizer on hand-computable inputs (METHOD.md sections 1-3)."""
from __future__ import annotations

import math

import pytest
import torch

from jointembed_train.losses import (AdaptiveMarginLoss, CenterClassLoss, InfoNCELoss, VSE0Loss, VSEPPLoss,
                             hardest_negative_gaps, similarity)
from jointembed_train.quantizer import SoftQuantizer, commitment_loss, tau_at

# Three 2-D unit vectors: images u, captions v. u0=v0=e1, u1=v1=e2, u2=v2=-e1.
E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
U = torch.stack([E1, E2, -E1])
V = torch.stack([E1, E2, -E1])


def test_vsepp_hand_computed():
    # cosine S = U V^T; delta = -S. Positives delta_ii = -1. Hardest negative for row 0:
    # captions 1 (cos 0) and 2 (cos -1) -> min delta = 0. Hinge: [0.2 - 1 - 0]_+ = 0.
    y = torch.tensor([0, 1, 2])
    assert VSEPPLoss(0.2)(U, V, y).item() == pytest.approx(0.0)
    # Swap captions 0 and 1 so every positive is orthogonal (delta 0) and a negative matches.
    v = torch.stack([E2, E1, -E1])
    # row 0: pos delta 0, negatives: v1=e1 (delta -1), v2=-e1 (delta 1): [0.2+0+1]=1.2
    # row 1: pos 0, negatives v0=e2 (-1), v2 (0) -> 1.2 ; row 2: pos delta -1 (u2=v2),
    # negatives v0=e2 (0), v1=e1 (+1) -> [0.2-1-0]=0. i2t mean = 2.4/3 = 0.8
    # t2i col 0 (v0=e2): pos 0, images u1=e2 (-1), u2 (0) -> 1.2; col 1 (e1): u0 (-1) -> 1.2; col 2: 0
    assert VSEPPLoss(0.2)(U, v, y).item() == pytest.approx(1.6)


def test_same_concept_pairs_are_masked():
    # Captions 0 and 1 belong to the same concept (y=0): the identical vectors must not
    # count as negatives of each other, so the loss is as if only concept 2 were a negative.
    u = torch.stack([E1, E1, -E1])
    v = torch.stack([E1, E1, -E1])
    y_same = torch.tensor([0, 0, 1])
    y_diff = torch.tensor([0, 1, 2])
    assert VSEPPLoss(0.2)(u, v, y_same).item() == pytest.approx(0.0)
    # Unmasked, row 0's hardest negative is v1 = e1 (delta -1): [0.2 - 1 + 1] = 0.2 per row.
    assert VSEPPLoss(0.2)(u, v, y_diff).item() == pytest.approx(2 * (0.2 + 0.2) / 3)
    pos, n_i2t, n_t2i = hardest_negative_gaps(-similarity(u, v, "cosine"), y_same)
    assert n_i2t.tolist() == [1.0, 1.0, 1.0]


def test_vse0_sums_over_negatives():
    y = torch.tensor([0, 1, 2])
    v = torch.stack([E2, E1, -E1])
    # i2t row 0: negatives delta -1 and 1 -> [1.2]+[0.2+0-1]_+=1.2; row1: v0 (-1)->1.2, v2 (0)->0.2
    # row 2 (pos -1): v0 delta 0 -> 0, v1 delta 1 -> 0. Sum = 2.6; mean = 2.6/3.
    # t2i col 0 (v0=e2, pos delta 0): u1=e2 -> 1.2, u2=-e1 -> 0.2; col 1 (e1, pos 0): u0 -> 1.2,
    # u2 -> [0.2+0-1]=0; col 2 (v2=-e1, pos -1): u0 (delta 1) -> 0, u1 (delta 0) -> 0. Sum=2.6.
    assert VSE0Loss(0.2)(U, v, y).item() == pytest.approx((2.6 + 2.6) / 3)


def test_infonce_matches_manual_and_masks_positives():
    loss = InfoNCELoss(init_temp=0.5)
    y = torch.tensor([0, 1, 2])
    logits = (U @ V.T) / 0.5
    t = torch.arange(3)
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, t) + torch.nn.functional.cross_entropy(logits.T, t))
    assert loss(U, V, y).item() == pytest.approx(ref.item(), rel=1e-5)
    # duplicate concept: identical pair masked -> same as a 2-way problem without it
    u = torch.stack([E1, E1, E2])
    got = loss(u, u, torch.tensor([0, 0, 1])).item()
    # logits/T = [[2,2,0],[2,2,0],[0,0,2]]; (0,1),(1,0) masked. Rows 0,1: log(1+e^-2);
    # row 2: log(1+2e^-2). Columns are the same by symmetry.
    a, b = math.log1p(math.exp(-2.0)), math.log1p(2 * math.exp(-2.0))
    assert got == pytest.approx((2 * a + b) / 3, rel=1e-5)
    assert loss.temperature().item() == pytest.approx(0.5)


def test_adaptive_margin_update_rule():
    loss = AdaptiveMarginLoss(kappa=0.5, m_min=0.05, m_max=0.5, decay=0.9, sim="neg_l2", neg_stat="hardest")
    y = torch.tensor([0, 1])
    u = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [4.0, 0.0]])
    # d(u0,v0)=1, d(u1,v1)=1 -> p=1; hardest negatives: i2t u0->v1 4, u1->v0 2; t2i v0<-u1 2, v1<-u0 4
    # n = mean(4,2,2,4) = 3. First step: mu_pos=1, mu_neg=3, m = clip(0.5*2)=0.5 (clipped)
    out = loss(u, v, y)
    assert (loss.mu_pos.item(), loss.mu_neg.item(), loss.margin.item()) == pytest.approx((1.0, 3.0, 0.5))
    assert out.item() == pytest.approx(0.0)  # 0.5 + 1 - 2 < 0
    # Second step with p=1, n=1.4 (u1 moved): mu_pos = 1, mu_neg = 0.9*3 + 0.1*n
    u2 = torch.tensor([[0.0, 0.0], [1.4, 0.0]])
    v2 = torch.tensor([[0.0, 1.0], [1.4, 1.0]])
    pos, a, b = hardest_negative_gaps(-similarity(u2, v2, "neg_l2"), y)
    n = torch.cat([a, b]).mean().item()
    loss(u2, v2, y)
    mu_neg = 0.9 * 3 + 0.1 * n
    assert loss.mu_neg.item() == pytest.approx(mu_neg, rel=1e-5)
    assert loss.margin.item() == pytest.approx(min(0.5, max(0.05, 0.5 * (mu_neg - 1.0))), rel=1e-5)
    # eval mode: no update
    loss.eval()
    before = loss.mu_neg.item()
    loss(u, v, y)
    assert loss.mu_neg.item() == before


def test_center_loss_values_and_ema_update():
    cl = CenterClassLoss(num_concepts=2, dim=2, update="ema", alpha=0.5)
    cl.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    center, cls = cl(u, v, torch.tensor([0, 1]))
    # ||u0-c0||^2=1, ||v0-c0||^2=1, concept-1 terms 0 -> sum 2 over 2B=4 embeddings
    assert center.item() == pytest.approx(0.5)
    assert cls.item() > 0
    # Wen et al.: c0 -= 0.5 * ((c0-u0)+(c0-v0)) / (1+2) = 0.5*(-1,-1)/3
    assert cl.centers[0].tolist() == pytest.approx([1 / 6, 1 / 6])
    assert cl.centers[1].tolist() == pytest.approx([1.0, 1.0])


def test_quantizer_low_and_high_temperature():
    q = SoftQuantizer(num_codes=2, dim=2, beta=1.0, tau=1.0)
    with torch.no_grad():
        q.codebook.copy_(torch.stack([E1, E2]))
    z = torch.tensor([[0.9, 0.1]])
    q.set_tau(1e-4)  # ~hard: nearest codeword
    assert q(z)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    q.set_tau(1e6)  # ~uniform: codebook mean
    assert q(z)[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-5)
    q.beta = 0.0  # residual switch off -> identity
    assert q(z)[0].tolist() == pytest.approx([0.9, 0.1])
    q.beta = 0.5
    q.set_tau(1e-4)
    assert q(z)[0].tolist() == pytest.approx([0.95, 0.05], abs=1e-6)
    with pytest.raises(ValueError):
        q.set_tau(0.0)


def test_quantizer_is_differentiable_and_commitment():
    q = SoftQuantizer(4, 3, tau=0.5)
    z = torch.randn(5, 3, requires_grad=True)
    q(z).sum().backward()
    assert z.grad is not None and q.codebook.grad is not None
    zz = torch.tensor([[1.0, 0.0]])
    assert commitment_loss(zz, torch.tensor([[0.0, 0.0]])).item() == pytest.approx(1.0)
    assert tau_at(0.0, 1.0, 0.01) == 1.0 and tau_at(1.0, 1.0, 0.01) == pytest.approx(0.01)
    assert tau_at(0.5, 1.0, 0.01) == pytest.approx(math.sqrt(0.01))


def test_adaptive_margin_mean_negative_statistic():
    loss = AdaptiveMarginLoss(kappa=0.5, m_min=0.0, m_max=10.0, decay=0.9, sim="neg_l2", neg_stat="mean")
    y = torch.tensor([0, 1])
    u = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [4.0, 0.0]])
    # negatives: d(u0,v1)=4, d(u1,v0)=2 -> n = 3; p = 1 -> m = 0.5 * (3 - 1) = 1.0
    loss(u, v, y)
    assert loss.margin.item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        AdaptiveMarginLoss(neg_stat="median")
