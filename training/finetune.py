"""Finetune mode (METHOD.md, Encoders): backbones train end to end with the heads.

Wants a GPU for real runs; on CPU it is only smoke-tested (a few steps on a few images).
Images go through :func:`jointembed_train.features.load_view` (the runtime ``center`` pixels, or
an augmented view), captions through the runtime tokenizer. The saved checkpoint carries
the backbone weights too (``info["finetuned_backbones"]``, see :mod:`jointembed_train.checkpoint`).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jointembed_pg.metrics import retrieval_metrics

from . import backbones
from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import Corpus
from .features import load_view, tokenize
from .model import JointHeads
from .runner import build_rank_loss, seed_everything

BACKBONE_LR_SCALE = 0.1  #: backbone learning rate = cfg.lr * this


class FinetuneModel(nn.Module):
    """Backbones + heads; ``embed_images(pixels)`` / ``embed_texts(ids, mask)`` -> ``(N, D)``."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.image_backbone = backbones.load_image_backbone(name=cfg.image_backbone)
        self.spec = cfg.image_spec()  #: pixels rule of the image backbone
        self.text_backbone = backbones.load_text_backbone()
        self.heads = JointHeads(cfg)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.heads.embed_images(self.image_backbone(pixels))[0]

    def embed_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.heads.text_is_gru:
            return self.heads.embed_texts(ids, mask)[0]
        return self.heads.embed_texts(self.text_backbone(ids, mask))[0]


def _batch(cfg: TrainConfig, corpus: Corpus, cap_rows: np.ndarray, local_ids: np.ndarray,
           image_index: np.ndarray, views: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    spec = cfg.image_spec()
    y = local_ids[cap_rows]
    pix = np.stack([load_view(corpus.image_paths[image_index[i]], spec, random.choice(views)) for i in y])
    ids, mask = tokenize([corpus.captions[i] for i in cap_rows], cfg.text_max_tokens)
    return torch.from_numpy(pix), ids, mask, torch.from_numpy(y)


def train_finetune(cfg: TrainConfig, corpus: Corpus, out: Path, device: str = "cpu",
                   max_steps: int | None = None) -> tuple[ckpt_io.Checkpoint, list[float]]:
    """Train backbones + heads on the train split; returns the checkpoint and step losses.

    ``max_steps`` caps the number of steps (CPU smoke tests). The center loss and the
    quantizer schedule are not wired here yet (the ranking loss only).
    """
    seed_everything(cfg.seed)
    view = corpus.split("train")
    model = FinetuneModel(cfg).to(device).train()
    rank = build_rank_loss(cfg).to(device)
    head_params = list(model.heads.parameters()) + list(rank.parameters())
    bb_params = list(model.image_backbone.parameters()) + list(model.text_backbone.parameters())
    opt = torch.optim.AdamW([{"params": head_params, "lr": cfg.lr},
                             {"params": bb_params, "lr": cfg.lr * BACKBONE_LR_SCALE}],
                            weight_decay=cfg.weight_decay)
    caption_rows = view.caption_index
    losses: list[float] = []
    step = 0
    for _ in range(cfg.epochs):
        order = np.random.permutation(len(caption_rows))
        for b in range(len(order) // cfg.batch_size):
            rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            pix, ids, mask, y = (t.to(device) for t in _batch(cfg, corpus, rows, view.caption_image_ids,
                                                               view.image_index, cfg.image_views))
            loss = rank(model.embed_images(pix), model.embed_texts(ids, mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if max_steps is not None and step >= max_steps:
                return _save(cfg, model, out), losses
    return _save(cfg, model, out), losses


def _save(cfg: TrainConfig, model: FinetuneModel, out: Path) -> ckpt_io.Checkpoint:
    model.eval()
    info = {"finetuned_backbones": {
        "image": {k: v.detach().cpu() for k, v in model.image_backbone.state_dict().items()},
        "text": {k: v.detach().cpu() for k, v in model.text_backbone.state_dict().items()}}}
    ck = ckpt_io.from_heads(cfg, model.heads.cpu(), {}, info)
    ckpt_io.save(ck, Path(out) / "finetuned.pt")
    return ck


@torch.no_grad()
def evaluate_finetuned(model: FinetuneModel, corpus: Corpus, split: str, batch: int = 64,
                       max_tokens: int = 128) -> dict[str, float]:
    """Metrics of a finetune model on ``split`` (encodes pixels and tokens live; slow on CPU)."""
    model.eval()
    view = corpus.split(split)
    spec = model.spec
    u = [model.embed_images(torch.from_numpy(np.stack([load_view(corpus.image_paths[i], spec, "center")
                                                        for i in view.image_index[lo:lo + batch]])))
         for lo in range(0, len(view.image_index), batch)]
    v = [model.embed_texts(*tokenize([corpus.captions[i] for i in view.caption_index[lo:lo + batch]],
                                     max_tokens))
         for lo in range(0, len(view.caption_index), batch)]
    return retrieval_metrics(torch.cat(u).numpy(), torch.cat(v).numpy(), view.caption_image_ids)
