"""Export of configurations the committed checkpoint does not use: the soft quantizer
(folded in at tau_end) with an MLP head, parity-checked on synthetic inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from jointembed_export.build import build_bundle  # noqa: E402
from jointembed_export.parity import PARITY_ATOL  # noqa: E402
from jointembed_pg.model.bundle import Bundle  # noqa: E402
from jointembed_train import checkpoint  # noqa: E402
from jointembed_train.config import TrainConfig  # noqa: E402
from jointembed_train.model import JointHeads  # noqa: E402

pytestmark = pytest.mark.slow


def test_quantizer_and_mlp_head_export(tmp_path: Path):
    torch.manual_seed(0)
    cfg = TrainConfig(quantizer=True, codebook_size=64, tau_end=0.05, quant_beta=0.5, head="mlp",
                      head_hidden=128, embed_dim=32)
    ckpt = checkpoint.save(checkpoint.from_heads(cfg, JointHeads(cfg), {"dev": {}, "test": {}}),
                           tmp_path / "q.pt")
    out = build_bundle(ckpt, tmp_path / "bundle", data_dir=None)  # synthetic parity inputs
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantizer"] == {"K": 64, "M": 1, "tau_end": 0.05, "beta": 0.5}
    assert m["dim"] == 32 and m["normalized"] is True
    assert m["parity"]["inputs"] == "synthetic"
    assert max(m["parity"]["image_max_abs_diff"], m["parity"]["text_max_abs_diff"]) <= PARITY_ATOL
    assert Bundle.load(out).encode_texts(["a dog"]).shape == (1, 32)


def test_binary_code_quantizer_export_names_it_and_folds_nothing(tmp_path: Path):
    """A model trained with the binary-code quantizer exports the same float graph (nothing
    folded in) and its manifest names the formulation; the code is sign(embedding)."""
    import numpy as np

    torch.manual_seed(0)
    cfg = TrainConfig(binary_codes=True, bin_straight_through=True, lambda_bin=0.5, bin_tau_end=0.2,
                      embed_dim=32)
    heads = JointHeads(cfg)
    ckpt = checkpoint.save(checkpoint.from_heads(cfg, heads, {"dev": {}, "test": {}}), tmp_path / "b.pt")
    out = build_bundle(ckpt, tmp_path / "bundle", data_dir=None)
    m = json.loads((out / "manifest.json").read_text())
    q = m["quantizer"]
    assert q["kind"] == "binary-sign" and q["bits"] == 32 and q["code"] == "binary_quantize(embedding)"
    assert q["relaxation"] == "straight-through sign" and q["lambda"] == 0.5 and q["tau_end"] == 0.2
    assert q["folded"].startswith("nothing")
    e = Bundle.load(out).encode_texts(["a dog", "two cats"])
    assert e.shape == (2, 32) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
