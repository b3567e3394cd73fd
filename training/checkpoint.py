"""Checkpoint files (Contract 1): heads + quantizer + config + metrics, no backbone weights.

File layout (``torch.save`` of a dict)::

    {"format": 1, "config": TrainConfig.to_dict(), "image_head": state_dict,
     "text_head": state_dict, "quantizer": state_dict | None,
     "metrics": {"dev": {...}, "test": {...}}, "info": {...},
     "feature_dims": [F_img, F_txt]}   # optional: absent = EfficientNet-Lite 1280 / MiniLM 384
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .model import JointHeads

FORMAT = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``metrics``: ``{"dev": {flat keys}, "test": {flat keys}}``."""

    config: TrainConfig
    image_head: dict[str, torch.Tensor]
    text_head: dict[str, torch.Tensor]
    quantizer: dict[str, torch.Tensor] | None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: backbone feature widths ``(F_img, F_txt)`` the heads take; None = the built-in backbones'
    feature_dims: tuple[int, int] | None = None

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def build_heads(self) -> JointHeads:
        """A :class:`JointHeads` with these weights, in eval mode, quantizer at ``tau_end``."""
        heads = JointHeads(self.config, *(self.feature_dims or ()))
        heads.image_head.load_state_dict(self.image_head)
        heads.text_head.load_state_dict(self.text_head)
        if heads.quantizer is not None:
            if self.quantizer is None:
                raise ValueError("config enables the quantizer but the checkpoint has no quantizer weights")
            heads.quantizer.load_state_dict(self.quantizer)
            heads.quantizer.set_tau(self.config.tau_end)
        return heads.eval()


def from_heads(cfg: TrainConfig, heads: JointHeads, metrics: dict | None = None,
               info: dict | None = None) -> Checkpoint:
    """Snapshot (cloned CPU tensors) of a trained :class:`JointHeads`."""
    def sd(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}

    q = heads.quantizer
    return Checkpoint(cfg, sd(heads.image_head), sd(heads.text_head), sd(q) if q is not None else None,
                      dict(metrics or {}), dict(info or {}), tuple(heads.feature_dims))


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path`` (parent dirs created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "config": ckpt.config.to_dict(), "image_head": ckpt.image_head,
                "text_head": ckpt.text_head, "quantizer": ckpt.quantizer, "metrics": ckpt.metrics,
                "info": ckpt.info, **({"feature_dims": list(ckpt.feature_dims)} if ckpt.feature_dims else {})}, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint; raises FileNotFoundError / ValueError naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {d.get('format') if isinstance(d, dict) else type(d)}")
    dims = d.get("feature_dims")
    if dims is not None and not (isinstance(dims, (list, tuple)) and len(dims) == 2
                                 and all(isinstance(x, int) and x > 0 for x in dims)):
        raise ValueError(f"{path}: feature_dims {dims!r} is not two positive ints")
    return Checkpoint(TrainConfig.from_dict(d["config"]), d["image_head"], d["text_head"], d["quantizer"],
                      d.get("metrics", {}), d.get("info", {}), tuple(dims) if dims else None)
