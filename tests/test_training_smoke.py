"""End-to-end smoke tests on real Flickr8K images (features computed on the fly).

A 64-image subset of the train split: backbone features are computed into a temporary
cache, a linear model trains for a few epochs and the loss must decrease; the saved
checkpoint must load, and the export encoders (pixels -> embedding) must reproduce the
embeddings the training path computes from cached features.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from jointembed_train import checkpoint, encoders
from jointembed_train.config import TrainConfig
from jointembed_train.data import Corpus, load_flickr8k
from jointembed_train.featureset import embed, load_split
from jointembed_train.features import tokenize
from jointembed_train.runner import train

N_IMAGES = 64
N_TRAIN = 48


@pytest.fixture(scope="module")
def small_corpus(flickr8k_dir: Path) -> Corpus:
    full = load_flickr8k(flickr8k_dir)
    keep = full.splits["train"][:N_IMAGES]
    sel = np.isin(full.caption_image_ids, keep)
    remap = {int(old): new for new, old in enumerate(keep)}
    ids = np.array([remap[int(i)] for i in full.caption_image_ids[sel]], np.int64)
    caps = [c for c, s in zip(full.captions, sel) if s]
    splits = {"train": np.arange(N_TRAIN), "dev": np.arange(N_TRAIN, N_IMAGES),
              "test": np.arange(N_TRAIN, N_IMAGES)}
    return Corpus([full.image_paths[i] for i in keep], caps, ids, splits)


@pytest.fixture(scope="module")
def trained(small_corpus: Corpus, tmp_path_factory) -> tuple[Path, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("smoke")
    cfg = TrainConfig(epochs=4, batch_size=32, lr=5e-3, warmup_epochs=0.0, seed=0,
                      loss="adaptive", center=True, quantizer=True, codebook_size=64)
    train(cfg, small_corpus, root / "run", root / "cache", progress=False)
    return root / "run", root / "cache"


def _epoch_mean(steps: list[dict], epoch: int, key: str) -> float:
    return float(np.mean([float(r[key]) for r in steps if int(r["epoch"]) == epoch]))


def test_loss_decreases_and_logs(trained):
    run, _ = trained
    with open(run / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert _epoch_mean(steps, 4, "loss") < _epoch_mean(steps, 1, "loss")
    assert all(float(r["margin"]) > 0 for r in steps)  # adaptive margin logged per step
    assert (run / "epochs.csv").is_file() and (run / "curves.png").is_file()


def test_checkpoint_roundtrip_and_encoder_parity(trained, small_corpus):
    run, cache = trained
    ck = checkpoint.load(run / "best.pt")
    assert ck.config.quantizer and ck.metrics["dev"]["rsum"] >= 0
    assert set(ck.metrics["test"]) >= {"i2t_R@1", "t2i_R@10", "rsum", "i2t_medr"}
    heads = ck.build_heads()
    fs = load_split(ck.config, small_corpus, "dev", cache)
    u_cached, v_cached = embed(heads, fs)
    from jointembed_pg.model.preprocess import ImageSpec, load

    view = small_corpus.split("dev")
    pix = torch.from_numpy(np.stack([load(small_corpus.image_paths[i], ImageSpec()) for i in view.image_index[:4]]))
    with torch.no_grad():
        u = encoders.image_encoder(ck)(pix).numpy()
        caps = [small_corpus.captions[i] for i in view.caption_index[:4]]
        v = encoders.text_encoder(ck)(*tokenize(caps, ck.config.text_max_tokens)).numpy()
    assert u.shape == (4, ck.config.embed_dim) and u.dtype == np.float32
    np.testing.assert_allclose(u, u_cached[:4], atol=1e-4)
    np.testing.assert_allclose(v, v_cached[:4], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)


def test_finetune_mode_cpu_smoke(small_corpus, tmp_path):
    """A few end-to-end steps with trainable backbones (GPU runs are out of scope here)."""
    from jointembed_train.finetune import train_finetune

    torch.set_num_threads(2)
    cfg = TrainConfig(mode="finetune", epochs=1, batch_size=4, lr=1e-3, image_views=("center", "hflip"))
    ck, losses = train_finetune(cfg, small_corpus, tmp_path, max_steps=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "finetuned.pt").is_file()
    assert "finetuned_backbones" in checkpoint.load(tmp_path / "finetuned.pt").info


def test_gru_text_baseline_trains(small_corpus, tmp_path, trained):
    _, cache = trained
    cfg = TrainConfig(epochs=2, batch_size=32, text_encoder="gru", gru_word_dim=32, embed_dim=32,
                      warmup_epochs=0.0)
    ck = train(cfg, small_corpus, tmp_path / "gru", cache, progress=False)
    enc = encoders.text_encoder(ck)
    ids, mask = tokenize(["a dog runs", "two people on a beach"], 128)
    assert enc(ids, mask).shape == (2, 32)


def test_resume_continues_and_never_unpickles_code(trained, small_corpus, tmp_path):
    """``--resume`` reads ``last.pt`` with ``weights_only=True``: our own state (numpy's RNG
    included) loads and training continues from the saved epoch, while a ``last.pt`` holding a
    pickled callable (someone else's run directory) is refused before anything runs."""
    import pickle
    import shutil

    run, cache = trained
    cfg = TrainConfig(epochs=5, batch_size=32, lr=5e-3, warmup_epochs=0.0, seed=0,
                      loss="adaptive", center=True, quantizer=True, codebook_size=64)
    mine = tmp_path / "mine"
    shutil.copytree(run, mine)
    train(cfg, small_corpus, mine, cache, resume=True, progress=False)
    with open(mine / "epochs.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]  # one more epoch only

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    with open(hostile / "last.pt", "wb") as f:
        pickle.dump({"modules": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        train(cfg, small_corpus, hostile, cache, resume=True, progress=False)
    assert not marker.exists()
