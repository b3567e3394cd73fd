"""The trainable joint model over (cached or live) backbone features.

:class:`JointHeads` holds exactly what a checkpoint ships: the image head, the text head
and the (optional) shared quantizer. Backbones are attached only by
:mod:`jointembed_train.encoders` (export) or the finetune runner.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import IMAGE_FEATURE_DIM, TEXT_FEATURE_DIM
from .config import TrainConfig
from .heads import EmbeddingPost, make_image_head, make_text_head
from .quantizer import ProductQuantizer, SoftQuantizer

VOCAB_SIZE = 30522  #: all-MiniLM-L6-v2 (BERT uncased) word-piece vocabulary


class JointHeads(nn.Module):
    """Image head ``(N,1280)->(N,D)``, text head ``(N,384)->(N,D)`` (or GRU over ids), shared post."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.image_head = make_image_head(cfg, IMAGE_FEATURE_DIM)
        self.text_head = make_text_head(cfg, TEXT_FEATURE_DIM, VOCAB_SIZE)
        quant = None
        if cfg.quantizer and cfg.quant_subspaces > 1:
            quant = ProductQuantizer(cfg.quant_subspaces, cfg.codebook_size, cfg.embed_dim, cfg.quant_beta,
                                     cfg.tau_start, cfg.quant_straight_through)
        elif cfg.quantizer:
            quant = SoftQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.quant_beta, cfg.tau_start,
                                  unit_init=cfg.normalize)
        self.post = EmbeddingPost(cfg.normalize, quant)
        self.text_is_gru = cfg.text_encoder == "gru"
        self.feature_drop = nn.Dropout(cfg.feature_dropout)  # identity in eval / export

    @property
    def quantizer(self) -> SoftQuantizer | None:
        return self.post.quantizer

    def embed_images(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N,1280)`` pooled (or ``(N,T,1280)`` grid) features ``-> (e, z)``, both ``(N,D)``."""
        return self.post.forward_with_z(self.image_head(self.feature_drop(feats)))

    def embed_texts(self, *text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N,384) float32`` features (or ``ids, mask`` for the GRU) ``-> (e, z)``."""
        if not self.text_is_gru:
            text = (self.feature_drop(text[0]),)
        return self.post.forward_with_z(self.text_head(*text))
