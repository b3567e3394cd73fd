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
    """Image head ``(N,F_img)->(N,D)``, text head ``(N,F_txt)->(N,D)`` (or GRU over ids), shared post.

    ``image_dim``/``text_dim`` are the backbone feature widths F (default: EfficientNet-Lite's
    1280 and MiniLM's 384; a ``backbone_bundle``'s dim for an imported model's towers); kept
    as :attr:`feature_dims` and saved in checkpoints.
    """

    def __init__(self, cfg: TrainConfig, image_dim: int = IMAGE_FEATURE_DIM, text_dim: int = TEXT_FEATURE_DIM):
        super().__init__()
        self.feature_dims = (int(image_dim), int(text_dim))
        self.image_head = make_image_head(cfg, int(image_dim))
        self.text_head = make_text_head(cfg, int(text_dim), VOCAB_SIZE)
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
        """``(N,F_img)`` pooled (or ``(N,T,F_img)`` grid) features ``-> (e, z)``, both ``(N,D)``."""
        return self.post.forward_with_z(self.image_head(self.feature_drop(feats)))

    def embed_texts(self, *text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N,F_txt) float32`` features (or ``ids, mask`` for the GRU) ``-> (e, z)``."""
        if not self.text_is_gru:
            text = (self.feature_drop(text[0]),)
        return self.post.forward_with_z(self.text_head(*text))
