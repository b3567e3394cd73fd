"""The paper's heads on an imported model's towers (issue 24, item 4): mechanics only.

A tiny randomly initialised open_clip model (tests/_tiny_models.py) is imported as a bundle;
``python -m jointembed_train train --backbone-bundle`` trains the heads (adaptive margin,
center loss, soft quantizer, hflip view) on 40 real Flickr8K images whose features are that
bundle's embeddings computed by the runtime; ``jointembed model build --checkpoint`` composes
tower + heads into a new bundle, which must embed exactly as the PyTorch heads on the cached
tower features, and is indexed and searched through SQL. Random towers give meaningless
retrieval scores: quality is measured with real weights (docs/MODEL.md), never here.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the [training] extra (torch)")
import jointembed_train._torchvision  # noqa: E402,F401  (before anything imports torchvision)

pytest.importorskip("open_clip")
sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models as tiny  # noqa: E402

from jointembed_pg import Bundle, Store  # noqa: E402

pytestmark = pytest.mark.flickr8k

N_IMAGES, N_TRAIN, N_DEV = 40, 24, 8
CONFIG = {"dataset": "pairs", "epochs": 1, "batch_size": 16, "lr": 5e-3, "warmup_epochs": 0.0, "embed_dim": 24,
          "loss": "adaptive", "center": True, "quantizer": True, "codebook_size": 16, "quant_init": "data",
          "image_views": ["center", "hflip"]}


def _cos(a, b) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _run(args, home: Path, module: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JOINTEMBED_HOME=str(home))
    env.pop("DATABASE_URL", None)
    p = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def base(flickr8k_dir, tmp_path_factory) -> Bundle:
    """A tiny random open_clip model imported as a bundle (32-d towers, 64 px)."""
    from jointembed_export.import_bundle import import_model

    root = tmp_path_factory.mktemp("base")
    folder = tiny.save_open_clip_dir(root / "tiny-clip", tiny.OPEN_CLIP_TINY)
    return Bundle.load(import_model(folder, root / "bundle", data_dir=flickr8k_dir))


@pytest.fixture(scope="module")
def pairs(flickr8k_dir, tmp_path_factory) -> Path:
    """40 Flickr8K train images with their captions as a pairs CSV: 24 train, 8 dev, 8 test."""
    from jointembed_train.data import load_flickr8k

    full = load_flickr8k(flickr8k_dir)
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "caption", "split"])
        for rank, i in enumerate(full.splits["train"][:N_IMAGES]):
            split = "train" if rank < N_TRAIN else "dev" if rank < N_TRAIN + N_DEV else "test"
            for c in np.flatnonzero(full.caption_image_ids == i):
                w.writerow([str(full.image_paths[i]), full.captions[c], split])
    return path


@pytest.fixture(scope="module")
def trained(base, pairs, flickr8k_dir, tmp_path_factory):
    """CLI: train the heads on ``base``'s towers, then build the composed bundle."""
    root = tmp_path_factory.mktemp("run")
    (root / "cfg.json").write_text(json.dumps(CONFIG))
    _run(["train", "--config", root / "cfg.json", "--backbone-bundle", base.path, "--data-dir", "/",
          "--karpathy-json", pairs, "--cache-dir", root / "cache", "--out", root / "run", "--quiet",
          "--threads", "2"], root, "jointembed_train")
    p = _run(["model", "build", "--checkpoint", root / "run" / "best.pt", "--out", root / "heads",
              "--data-dir", flickr8k_dir], root, "jointembed_pg")
    assert "wrote" in p.stdout
    return root


def test_heads_train_on_the_bundle_towers_with_the_projects_losses(trained, base):
    from jointembed_train import checkpoint

    ck = checkpoint.load(trained / "run" / "best.pt")
    assert ck.feature_dims == (base.dim, base.dim) == (32, 32)        # widths from the bundle, not 1280/384
    assert ck.config.backbone_bundle == str(base.path.resolve())
    assert ck.info["backbone_bundle_model_id"] == base.model_id
    with open(trained / "run" / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert steps and all(float(r["center"]) > 0 and float(r["margin"]) > 0 for r in steps)  # center loss, adaptive
    assert float(steps[-1]["tau"]) < float(steps[0]["tau"])           # the quantizer's temperature annealed
    cached = sorted(p.name.split("_")[1] for p in (trained / "cache").glob("*.npy"))
    assert cached == ["bundle", "center", "hflip"]                    # text, image, image mirrored
    for p in (trained / "cache").glob("*.npy"):
        assert np.load(p).shape[1] == base.dim


def test_hflip_features_are_the_bundle_embeddings_of_mirrored_pixels(trained, base, pairs):
    from jointembed_pg.model.preprocess import load
    from jointembed_train.bundle_backbone import image_features
    from jointembed_train.data import load_pairs

    corpus = load_pairs(pairs, "/")
    paths = [corpus.image_paths[i] for i in corpus.split("train").image_index]
    got = image_features(paths, trained / "cache", bundle=base, view="hflip", progress=False)  # the cached file
    px = np.stack([load(p, base.image_spec)[:, :, ::-1] for p in paths[:4]])
    assert np.abs(got[:4] - base.encode_pixels(px)).max() < 1e-5
    assert np.abs(got[:4] - base.encode_images(paths[:4])).max() > 1e-3  # not the centre view


def test_composed_bundle_embeds_as_the_torch_heads_on_cached_tower_features(trained, base, pairs):
    from jointembed_train import checkpoint
    from jointembed_train.data import load_pairs
    from jointembed_train.featureset import embed, load_split

    ck = checkpoint.load(trained / "run" / "best.pt")
    bundle = Bundle.load(trained / "heads")
    m = bundle.manifest
    assert bundle.dim == 24 and m["quantizer"]["K"] == 16 and m["normalized"] is True
    assert m["source"]["framework"] == "jointembed-heads" and m["source"]["base"]["model_id"] == base.model_id
    assert m["source"]["base"]["source"] == base.manifest["source"] and m["training"] == ck.config.to_dict()
    assert m["preprocess"] == base.manifest["preprocess"]              # the runtime feeds what the towers saw
    assert (bundle.path / "tokenizer.json").read_bytes() == (base.path / "tokenizer.json").read_bytes()
    assert m["parity"]["image_max_abs_diff"] <= 1e-4 and m["parity"]["n_images"] == 8
    corpus = load_pairs(pairs, "/")
    fs = load_split(ck.config, corpus, "test", trained / "cache")     # cached tower features, no recompute
    u_ref, v_ref = embed(ck.build_heads(), fs)
    view = corpus.split("test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = bundle.encode_images([corpus.image_paths[i] for i in view.image_index])
        v = bundle.encode_texts([corpus.captions[i] for i in view.caption_index])
    assert u.shape == (N_IMAGES - N_TRAIN - N_DEV, 24) and v.shape == (len(view.caption_index), 24)
    assert _cos(u, u_ref).min() >= 0.9999 and _cos(v, v_ref).min() >= 0.9999


def test_model_verify_shows_the_parity_recorded_at_build(trained):
    out = _run(["model", "verify", trained / "heads"], trained, "jointembed_pg").stdout
    assert "sha256 of 3 files OK" in out and "jointembed-heads:linear heads on open_clip:" in out
    assert "parity when written: image " in out and "model build --checkpoint" in out and "?" not in out


def test_composed_bundle_is_indexed_and_searched_through_sql(trained, pairs, pg_dsn):
    from jointembed_train.data import load_pairs

    bundle = Bundle.load(trained / "heads")
    corpus = load_pairs(pairs, "/")
    images = corpus.image_paths[:6]
    with Store(pg_dsn) as store:
        coll = store.collection("heads", bundle=bundle)
        assert coll.add_images(images).written == 6
        assert coll.add_texts(corpus.captions[:5]).written == 5
        for p in images[:3]:                                          # an image finds itself first
            assert coll.search(Path(p), k=1, target="image", exact=True)[0].key == str(Path(p).resolve())
        hits = coll.search(corpus.captions[0], k=3)
        assert len(hits) == 3 and {h.key for h in hits} <= {str(Path(p).resolve()) for p in images}


def test_a_bundle_backbone_refuses_what_it_cannot_compute():
    from jointembed_train.config import TrainConfig

    for bad in ({"image_pool": "gem"}, {"text_encoder": "gru"}, {"mode": "finetune"}, {"image_size": 224},
                {"image_views": ["center", "zoom_tl"]}):
        with pytest.raises(ValueError, match="backbone_bundle|image_views"):
            TrainConfig(backbone_bundle="clip-b32", **bad)
    assert TrainConfig(backbone_bundle="clip-b32", image_views=("center", "hflip")).backbone_bundle == "clip-b32"


def test_the_bundle_backbone_image_rule_is_the_bundles(base):
    from jointembed_train.config import TrainConfig

    assert TrainConfig(backbone_bundle=str(base.path)).image_spec() == base.image_spec


def test_fixed_length_tower_with_an_mlp_head_composes_too(pairs, flickr8k_dir, tmp_path):
    """A text tower exported at its context (pad_to 77: MobileCLIP-style, no causal mask) and the
    MLP head: features through the runtime's fixed-length batches, composed graph = torch heads."""
    from jointembed_export.heads_bundle import build_heads_bundle
    from jointembed_export.import_bundle import import_model
    from jointembed_train import checkpoint
    from jointembed_train.config import TrainConfig
    from jointembed_train.data import load_pairs
    from jointembed_train.featureset import embed, load_split
    from jointembed_train.runner import train

    names = tiny.register_open_clip(tmp_path / "cfg")
    base = Bundle.load(import_model(tiny.save_open_clip(names["nocausal"], tmp_path / "nc.pt"), tmp_path / "base",
                                    arch=f"open_clip:{names['nocausal']}", data_dir=flickr8k_dir))
    assert base.meta.pad_to == 77
    corpus = load_pairs(pairs, "/")
    cfg = TrainConfig(**{**CONFIG, "head": "mlp", "head_hidden": 32, "image_views": ["center"]},
                      backbone_bundle=str(base.path))
    train(cfg, corpus, tmp_path / "run", tmp_path / "cache", progress=False)
    out = build_heads_bundle(tmp_path / "run" / "best.pt", tmp_path / "heads", data_dir=flickr8k_dir)
    bundle = Bundle.load(out)
    assert bundle.meta.pad_to == 77 and bundle.dim == 24
    ck = checkpoint.load(tmp_path / "run" / "best.pt")
    u_ref, v_ref = embed(ck.build_heads(), load_split(ck.config, corpus, "test", tmp_path / "cache"))
    view = corpus.split("test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = bundle.encode_images([corpus.image_paths[i] for i in view.image_index])
        v = bundle.encode_texts([corpus.captions[i] for i in view.caption_index])
    assert _cos(u, u_ref).min() >= 0.9999 and _cos(v, v_ref).min() >= 0.9999
