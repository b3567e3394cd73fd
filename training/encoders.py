"""Export-ready encoders (Contract 1): backbone + head + (quantizer at tau_end) + (L2 norm).

Both modules are free of data-dependent Python control flow, so ``torch.onnx.export``
traces them with dynamic batch (and sequence) axes.
"""
from __future__ import annotations

import torch
from torch import nn

from . import backbones
from .checkpoint import Checkpoint
from .heads import EmbeddingPost


class ImageEncoder(nn.Module):
    """pixels ``(N,3,S,S) float32`` (jointembed_pg.model.preprocess) -> ``(N,D) float32``."""

    def __init__(self, backbone: nn.Module, head: nn.Module, post: EmbeddingPost):
        super().__init__()
        self.backbone, self.head, self.post = backbone, head, post

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.post(self.head(self.backbone(pixels)))


class TextEncoder(nn.Module):
    """``(input_ids (N,L) int64, attention_mask (N,L) int64) -> (N,D) float32``."""

    def __init__(self, backbone: nn.Module | None, head: nn.Module, post: EmbeddingPost):
        super().__init__()
        self.backbone, self.head, self.post = backbone, head, post

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:  # GRU baseline: the head reads token ids itself
            return self.post(self.head(input_ids, attention_mask))
        return self.post(self.head(self.backbone(input_ids, attention_mask)))


def _finetuned(ckpt: Checkpoint, which: str) -> dict | None:
    return (ckpt.info.get("finetuned_backbones") or {}).get(which)


def _load_finetuned(bb: nn.Module, state: dict, which: str) -> None:
    """Load fine-tuned tensors over the pretrained ones: all of them (finetune mode) or only
    the unfrozen top (partial mode). Raises ValueError for a key the backbone lacks."""
    _, unexpected = bb.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint's fine-tuned {which} backbone has unknown tensors {unexpected[:3]}")


def _no_bundle(ckpt: Checkpoint) -> None:
    if ckpt.config.backbone_bundle:
        raise ValueError(f"the checkpoint's backbone is the bundle {ckpt.config.backbone_bundle!r} (ONNX, no "
                         f"PyTorch tower): export it with jointembed_export.heads_bundle (jointembed model build)")


def image_encoder(ckpt: Checkpoint) -> ImageEncoder:
    """The image encoder of ``ckpt`` in eval mode (loads the weights of its config's
    ``image_backbone``, EfficientNet-Lite0 by default; ValueError for a ``backbone_bundle``
    checkpoint, whose tower is ONNX only;
    finetuned backbone weights from the checkpoint replace them when present: the whole
    backbone (finetune mode) or its unfrozen top blocks (partial mode))."""
    _no_bundle(ckpt)
    heads = ckpt.build_heads()
    bb = backbones.load_image_backbone(grid=ckpt.config.image_pool != "mean", name=ckpt.config.image_backbone)
    if _finetuned(ckpt, "image") is not None:
        _load_finetuned(bb, _finetuned(ckpt, "image"), "image")
    return ImageEncoder(bb, heads.image_head, heads.post).eval()


def text_encoder(ckpt: Checkpoint) -> TextEncoder:
    """The text encoder of ``ckpt`` in eval mode (MiniLM unless the config says GRU)."""
    _no_bundle(ckpt)
    heads = ckpt.build_heads()
    bb = None if ckpt.config.text_encoder == "gru" else backbones.load_text_backbone()
    if bb is not None and _finetuned(ckpt, "text") is not None:
        _load_finetuned(bb, _finetuned(ckpt, "text"), "text")
    return TextEncoder(bb, heads.text_head, heads.post).eval()
