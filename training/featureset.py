"""In-memory feature sets per split for the frozen mode, and embedding/evaluation of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jointembed_pg.metrics import retrieval_metrics

from .config import TrainConfig
from .data import Corpus, SplitView
from .features import image_features, image_grid_features, text_features, tokenize
from .model import JointHeads


@dataclass
class FeatureSet:
    """Cached backbone features of one split.

    Attributes:
        image_feats: ``(V, N, 1280) float32`` per view (view 0 is the runtime ``center``),
            or ``(V, N, 49, 1280) float16`` grids when the config pools the grid itself;
            ``(V, N, F)`` with F = the bundle's dim for a ``backbone_bundle``.
        text_feats: ``(M, 384) float32`` mean-pooled MiniLM features (``(M, F)``: the bundle's).
        token_ids, token_mask: ``(M, L) int64`` (for the GRU text encoder) or None.
        caption_image_ids: ``(M,) int64`` local image index per caption (= concept id).
    """

    image_feats: torch.Tensor
    text_feats: torch.Tensor
    token_ids: torch.Tensor | None
    token_mask: torch.Tensor | None
    caption_image_ids: torch.Tensor

    @property
    def num_images(self) -> int:
        return self.image_feats.shape[1]

    def text_inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs of the text head for caption rows ``idx``: features, or trimmed ids+mask."""
        if self.token_ids is None:
            return (self.text_feats[idx],)
        mask = self.token_mask[idx]
        length = int(mask.sum(1).max())
        return self.token_ids[idx, :length], mask[:, :length]


def load_split(cfg: TrainConfig, corpus: Corpus, split: str | SplitView, cache_dir: Path,
               views: tuple[str, ...] = ("center",), device: str = "cpu") -> FeatureSet:
    """Features of ``split`` (a split name or a :class:`SplitView`), computing and caching
    backbone features (``cfg.image_backbone`` at ``cfg.image_spec()``, or the towers of
    ``cfg.backbone_bundle``: :mod:`jointembed_train.bundle_backbone`) on a miss.

    Whole-corpus caches are used for the ``center`` view; extra views are cached for the
    split's images only (they are only used for training).
    """
    view = corpus.split(split) if isinstance(split, str) else split
    if cfg.backbone_bundle:  # an imported bundle's towers (training/bundle_backbone.py)
        from . import bundle_backbone

        bundle = bundle_backbone.open_bundle(cfg.backbone_bundle)

        def fn(paths, cache_dir, view="center"):
            return bundle_backbone.image_features(paths, cache_dir, bundle=bundle, view=view)

        bb: dict = {}
        all_txt = bundle_backbone.text_features(corpus.captions, cache_dir, bundle=bundle)
    else:
        fn = image_features if cfg.image_pool == "mean" else image_grid_features
        bb = dict(spec=cfg.image_spec(), backbone=cfg.image_backbone, device=device)
        all_txt = None
    img = []
    for v in views:
        if v == "center":
            img.append(fn(corpus.image_paths, cache_dir, **bb)[view.image_index])
        else:
            paths = [corpus.image_paths[i] for i in view.image_index]
            img.append(fn(paths, cache_dir, view=v, **bb))
    caps = [corpus.captions[i] for i in view.caption_index]
    if all_txt is None:
        all_txt = text_features(corpus.captions, cache_dir, max_tokens=cfg.text_max_tokens, device=device)
    txt = all_txt[view.caption_index]
    ids = mask = None
    if cfg.text_encoder == "gru":
        ids, mask = tokenize(caps, cfg.text_max_tokens)
    return FeatureSet(torch.from_numpy(np.stack(img)), torch.from_numpy(np.ascontiguousarray(txt)),
                      ids, mask, torch.from_numpy(view.caption_image_ids))


@torch.no_grad()
def embed(heads: JointHeads, fs: FeatureSet, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D), (M, D) float32`` of the split's centre-view images and captions."""
    was = heads.training
    heads.eval()
    dev = next(heads.parameters()).device
    imgs = [heads.embed_images(fs.image_feats[0, i:i + batch].to(dev))[0].cpu()
            for i in range(0, fs.num_images, batch)]
    m = len(fs.caption_image_ids)
    caps = []
    for i in range(0, m, batch):
        idx = torch.arange(i, min(i + batch, m))
        caps.append(heads.embed_texts(*(t.to(dev) for t in fs.text_inputs(idx)))[0].cpu())
    heads.train(was)
    return torch.cat(imgs).numpy(), torch.cat(caps).numpy()


def evaluate(heads: JointHeads, fs: FeatureSet) -> dict[str, float]:
    """Flickr 1K-style metrics (training.metrics) of ``heads`` on ``fs``."""
    u, v = embed(heads, fs)
    return retrieval_metrics(u, v, fs.caption_image_ids.numpy())
