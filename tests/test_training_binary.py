"""Binary-code quantizer (training/binary.py): relaxation, losses and the Hamming metrics."""
import numpy as np
import pytest
import torch

from jointembed_pg.metrics import retrieval_metrics
from jointembed_train.binary import (BinaryCodeLoss, binary_metrics, quantization_loss, relaxed_codes,
                             sign_codes)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_straight_through_is_sign_forward_and_tanh_backward():
    e = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1).requires_grad_(True)
    c = relaxed_codes(e, 0.5, straight_through=True)
    assert torch.equal(c.detach(), torch.where(e > 0, 1.0, -1.0))
    c.sum().backward()
    e2 = e.detach().clone().requires_grad_(True)
    torch.tanh(e2 * 4.0 / 0.5).sum().backward()  # sqrt(16) / tau
    assert torch.allclose(e.grad, e2.grad)
    with pytest.raises(ValueError):
        relaxed_codes(e, 0.0)


def test_annealed_tanh_tends_to_sign():
    e = torch.nn.functional.normalize(torch.randn(8, 64), dim=-1)
    assert torch.allclose(relaxed_codes(e, 1e-4), torch.sign(e), atol=1e-3)


def test_quantization_loss_is_zero_exactly_on_scaled_sign_vectors():
    s = torch.sign(torch.randn(5, 64)) / 8.0
    assert float(quantization_loss(s)) == pytest.approx(0.0, abs=1e-12)
    assert float(quantization_loss(torch.nn.functional.normalize(torch.randn(5, 64), dim=-1))) > 0.05


def test_binary_loss_prefers_matching_codes():
    u = torch.sign(torch.randn(6, 32)) / 32 ** 0.5
    y = torch.arange(6)
    loss = BinaryCodeLoss(0.2)
    loss.tau = 0.1
    assert float(loss(u, u.clone(), y)) == 0.0
    assert float(loss(u, -u, y)) > 0.0


def test_full_pool_rerank_equals_exact_l2_metrics():
    img, cap = _unit(40, 32, 0), _unit(200, 32, 1)
    ids = np.repeat(np.arange(40), 5)
    assert binary_metrics(img, cap, ids, pool=200)["rsum"] == retrieval_metrics(img, cap, ids)["rsum"]


def test_hamming_alone_equals_l2_on_sign_vectors_and_ties_are_not_optimistic():
    img, cap = _unit(40, 32, 2), _unit(200, 32, 3)
    ids = np.repeat(np.arange(40), 5)
    si, sc = sign_codes(img) / 32 ** 0.5, sign_codes(cap) / 32 ** 0.5
    ham = binary_metrics(img, cap, ids, pool=0)
    assert ham["rsum"] <= retrieval_metrics(si, sc, ids)["rsum"]  # L2 ranks count ties as wins
    same = np.ones((40, 32), np.float32)  # every code equal: ties broken by gallery index
    m = binary_metrics(same, np.ones((200, 32), np.float32), ids, pool=0)
    assert m["t2i_R@1"] == pytest.approx(100 * 5 / 200)  # only the 5 captions of image 0
    assert m["i2t_R@1"] == pytest.approx(100 / 40)  # only image 0 (its captions come first)


def test_runner_adds_the_binary_loss_and_reports_code_metrics():
    """binary_codes=True: train_step logs the hinge on relaxed codes and the quantization term,
    they fall over a few steps on a learnable toy set, and evaluation reports Hamming rsums."""
    from jointembed_train.config import TrainConfig
    from jointembed_train.featureset import FeatureSet
    from jointembed_train.runner import build_state, evaluate_with_codes, train_step

    torch.manual_seed(0)
    cfg = TrainConfig(binary_codes=True, lambda_bin=1.0, lambda_bin_quant=1.0, bin_tau_start=0.5, embed_dim=32,
                      lr=1e-2)
    n = 64
    img = torch.randn(1, n, 1280)
    txt = img[0, :, :384] + 0.1 * torch.randn(n, 384)  # captions = noisy slices of their image
    fs = FeatureSet(img, txt, None, None, torch.arange(n))
    st = build_state(cfg, n, "cpu")
    st.binary_loss.tau = 0.5
    logs = [train_step(cfg, st, fs, torch.arange(n), "cpu") for _ in range(30)]
    assert logs[0]["bin"] > 0 and logs[-1]["bin"] < logs[0]["bin"]
    assert logs[-1]["bin_quant"] < logs[0]["bin_quant"]
    m = evaluate_with_codes(st.heads, fs)
    assert {"rsum", "ham_rsum", "rr10_rsum", "rr100_rsum"} <= set(m)
    assert m["rr100_rsum"] == m["rsum"]  # pool 100 >= 64 items: re-ranking equals L2
    plain = build_state(TrainConfig(embed_dim=32), n, "cpu")
    assert plain.binary_loss is None
    assert "bin" not in train_step(TrainConfig(embed_dim=32), plain, fs, torch.arange(n), "cpu")
