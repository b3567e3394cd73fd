"""Issue 16 item 2: the image backbone is a config choice (EfficientNet-Lite0 @ 224 default,
EfficientNet-Lite2 @ 260). The choice must reach the weight loader, the preprocessing size,
the feature-cache key and the exported encoder; Lite0's cache keys must not change (the
caches computed before the choice existed stay valid). Real weights, real images; no training."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jointembed_pg.model.preprocess import ImageSpec, load  # noqa: E402
from jointembed_train import backbones, checkpoint, encoders, features  # noqa: E402
from jointembed_train.config import TrainConfig  # noqa: E402
from jointembed_train.model import JointHeads  # noqa: E402

LITE0, LITE2 = "efficientnet-lite0", "efficientnet-lite2"


def test_config_picks_backbone_and_native_size():
    from jointembed_train import config

    assert config.IMAGE_BACKBONES == tuple(backbones.IMAGE_BACKBONES)  # one list, torch-free copy
    assert TrainConfig().image_backbone == LITE0
    assert TrainConfig().image_spec() == ImageSpec()  # the default rule, 224 px
    assert TrainConfig(image_backbone=LITE2).image_spec().size == 260
    assert TrainConfig(image_backbone=LITE2, image_size=224).image_spec().size == 224
    with pytest.raises(ValueError, match="image_backbone"):
        TrainConfig(image_backbone="efficientnet-b7")
    with pytest.raises(ValueError, match="image_size"):
        TrainConfig(image_size=-1)
    with pytest.raises(ValueError, match="unknown image backbone"):
        backbones.image_weights_path("resnet50")


def test_weights_paths_differ_per_backbone():
    p0, p2 = backbones.image_weights_path(LITE0), backbones.image_weights_path(LITE2)
    assert p0.is_file() and p2.is_file() and p0 != p2
    assert backbones.backbone_fingerprint(LITE0) != backbones.backbone_fingerprint(LITE2)


def _old_key(paths, spec: ImageSpec, view: str) -> str:
    """The image cache key as computed before the backbone choice existed (reference)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": features.CACHE_VERSION, "kind": "image", "bb": backbones.backbone_fingerprint(),
                         "spec": spec.to_dict(), "view": view}, sort_keys=True).encode())
    for s in paths:
        h.update(str(s).encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def test_cache_keys_name_backbone_and_size():
    paths = [Path("/x/a.jpg"), Path("/x/b.jpg")]
    k0 = features.image_key(paths, ImageSpec(), "center")
    assert k0 == features.image_key(paths, ImageSpec(), "center", LITE0) == _old_key(paths, ImageSpec(), "center")
    k2 = features.image_key(paths, ImageSpec(size=260), "center", LITE2)
    k2_224 = features.image_key(paths, ImageSpec(), "center", LITE2)
    k0_260 = features.image_key(paths, ImageSpec(size=260), "center", LITE0)
    assert len({k0, k2, k2_224, k0_260}) == 4


def test_lite2_features_reach_loader_and_cache(flickr8k_dir, tmp_path):
    """``image_features(backbone=Lite2, spec 260)`` runs Lite2 (not Lite0) on 260-px pixels,
    returns ``(N, 1280)`` and caches under the Lite2 key."""
    imgs = sorted((flickr8k_dir / "images").glob("*.jpg"))[:2]
    spec = ImageSpec(size=260)
    got = features.image_features(imgs, tmp_path, spec=spec, backbone=LITE2, progress=False)
    assert got.shape == (2, backbones.IMAGE_FEATURE_DIM) and got.dtype == np.float32
    assert (tmp_path / f"img_center_{features.image_key(imgs, spec, 'center', LITE2)}.npy").is_file()
    pix = torch.from_numpy(np.stack([load(p, spec) for p in imgs]))
    assert pix.shape == (2, 3, 260, 260)
    with torch.inference_mode():
        want2 = backbones.load_image_backbone(name=LITE2)(pix).numpy()
        other0 = backbones.load_image_backbone(name=LITE0)(pix).numpy()
    np.testing.assert_allclose(got, want2, rtol=0, atol=1e-5)
    assert np.abs(got - other0).max() > 0.1  # a different network, not Lite0 at 260


def test_lite2_checkpoint_builds_lite2_encoder():
    """A Lite2 checkpoint's image encoder (what export traces) holds Lite2's weights and
    maps ``(1, 3, 260, 260)`` pixels to ``(1, D)``."""
    cfg = TrainConfig(image_backbone=LITE2, embed_dim=32, head="linear")
    torch.manual_seed(0)
    ck = checkpoint.from_heads(cfg, JointHeads(cfg))
    enc = encoders.image_encoder(ck)
    lite2 = torch.load(backbones.image_weights_path(LITE2), map_location="cpu", weights_only=True)
    torch.testing.assert_close(enc.backbone.net._conv_stem.weight.detach(), lite2["_conv_stem.weight"])
    with torch.inference_mode():
        assert enc(torch.zeros(1, 3, 260, 260)).shape == (1, 32)


def test_partial_mode_refuses_other_backbones():
    from jointembed_train.partial import train_partial

    with pytest.raises(ValueError, match="only efficientnet-lite0 at 224"):
        train_partial(TrainConfig(mode="partial", image_backbone=LITE2), corpus=None, out=Path("unused"))


def test_frozen_runner_leave_topic_out_views(flickr8k_dir):
    """``holdout_topic`` drops exactly the topic's training images (and their captions) from
    the frozen runner's train view; every run is also scored on the topic's test images."""
    from jointembed_train.data import load_flickr8k
    from jointembed_train.runner import topic_test_view, train_view
    from jointembed_train.topics import topic_images

    corpus = load_flickr8k(flickr8k_dir)
    hit = topic_images(corpus, "snow_bike_horse")
    full = train_view(TrainConfig(), corpus)
    lto = train_view(TrainConfig(holdout_topic="snow_bike_horse"), corpus)
    assert np.array_equal(full.image_index, corpus.splits["train"])
    assert not hit[lto.image_index].any()
    assert len(lto.image_index) == len(full.image_index) - int(hit[corpus.splits["train"]].sum()) == 6000 - 876
    assert len(lto.caption_index) == 5 * len(lto.image_index)
    topic = topic_test_view(TrainConfig(), corpus)
    assert len(topic.image_index) == 134 and hit[topic.image_index].all()
    assert set(topic.image_index) <= set(corpus.splits["test"])
