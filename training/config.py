"""The one typed training config (saved into every checkpoint and bundle manifest)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

LOSSES = ("vsepp", "vse0", "infonce", "adaptive")
SIMILARITIES = ("cosine", "neg_l2")
HEADS = ("linear", "mlp")
TEXT_ENCODERS = ("minilm", "gru")
IMAGE_POOLS = ("mean", "gem", "attn")
IMAGE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")  #: = training.backbones.IMAGE_BACKBONES


@dataclass
class TrainConfig:
    """Everything that determines a trained model. Units noted per field.

    Loss/method fields follow docs/METHOD.md sections 1-3 [Malali & Keller 2022].
    """

    # data / run
    dataset: str = "flickr8k"  #: loader: flickr8k | karpathy | pairs
    mode: str = "frozen"  #: frozen (cached backbone features) | finetune
    seed: int = 0
    epochs: int = 30
    batch_size: int = 128  #: (image, caption) pairs per step
    lr: float = 2e-3  #: AdamW peak learning rate
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  #: linear warm-up, then cosine decay to 0
    grad_clip: float = 2.0  #: max global grad norm (0 = off)
    image_views: tuple[str, ...] = ("center",)  #: cached augmented views sampled per step
    text_max_tokens: int = 128  #: tokenizer truncation limit (longest_first)
    # encoders
    image_backbone: str = "efficientnet-lite0"  #: efficientnet-lite0 | efficientnet-lite2 (training/backbones.py)
    #: an imported bundle (name under the bundles directory, or a path) whose image and text
    #: towers are the frozen backbones instead of EfficientNet-Lite/MiniLM (training/bundle_backbone.py);
    #: "" = the built-in backbones. Frozen mode, mean pooling and the feature text head only.
    backbone_bundle: str = ""
    image_size: int = 0  #: encoder input side S in pixels; 0 = the backbone's native size (224 Lite0, 260 Lite2)
    embed_dim: int = 256  #: D, the pgvector dimension
    head: str = "linear"  #: linear | mlp (2-layer MLP + linear skip)
    head_hidden: int = 1024
    head_dropout: float = 0.1
    feature_dropout: float = 0.0  #: dropout on backbone features during training only
    image_pool: str = "mean"  #: mean (pooled 1280-d) | gem | attn (over the 7x7 grid)
    text_encoder: str = "minilm"  #: minilm (frozen MiniLM + head) | gru (learned words + GRU)
    gru_word_dim: int = 300
    normalize: bool = True  #: L2-normalise the final embedding
    # ranking loss (METHOD.md sec. 1)
    loss: str = "vsepp"  #: vsepp | vse0 | infonce | adaptive
    similarity: str = "cosine"  #: cosine (s = u.v) | neg_l2 (s = -||u - v||)
    margin: float = 0.2  #: fixed hinge margin (vsepp, vse0), in similarity units
    adaptive_kappa: float = 0.5
    adaptive_min: float = 0.1  #: m_min (similarity units)
    adaptive_max: float = 0.4  #: m_max
    adaptive_neg: str = "mean"  #: mu_neg from all negatives (mean) or hardest negatives
    adaptive_decay: float = 0.99  #: EMA decay of mu_pos / mu_neg per step
    infonce_init_temp: float = 0.07
    # multitask center loss (METHOD.md sec. 2)
    center: bool = False
    lambda_center: float = 0.1
    lambda_cls: float = 0.1
    center_update: str = "sgd"  #: sgd | ema (Wen et al. moving average)
    center_alpha: float = 0.5
    # differentiable quantizer (METHOD.md sec. 3)
    quantizer: bool = False
    codebook_size: int = 1024  #: K
    tau_start: float = 1.0
    tau_end: float = 0.05
    quant_beta: float = 1.0  #: e = z + beta (q(z) - z); 1.0 = pure q(z)
    lambda_commit: float = 0.0
    quant_init: str = "random"  #: random (unit sphere) | data (initial embeddings of train items)
    quant_subspaces: int = 1  #: M; > 1 selects the product quantizer (M x codebook_size codewords)
    quant_straight_through: bool = False  #: product quantizer: hard codewords forward, soft grads (training)
    # binary-code quantizer (training/binary.py): a training-only relaxation of sign(e), so that
    # binary_quantize(embedding) is a good Hamming code; the exported graph is unchanged
    binary_codes: bool = False
    lambda_bin: float = 1.0  #: weight of the VSE++ hinge on the relaxed codes
    bin_margin: float = 0.2  #: hinge margin in code-similarity units (1 - 2 hamming / D)
    bin_tau_start: float = 1.0  #: tanh(sqrt(D) e / tau) temperature, annealed geometrically
    bin_tau_end: float = 0.1
    bin_straight_through: bool = False  #: sign(x) forward, tanh gradient backward
    lambda_bin_quant: float = 0.0  #: weight of mean_d (1 - |sqrt(D) e_d|)^2 (pulls |e_d| to 1/sqrt(D))
    # partial fine-tuning on cached intermediate activations (mode "partial", training/partial.py)
    image_unfrozen_blocks: int = 0  #: EfficientNet-Lite0 units trained: 0 none, 1 conv head, 2 + block 15, 3 + block 14
    text_unfrozen_layers: int = 0  #: last transformer layers of MiniLM trained (0..2)
    finetune_epochs: float = 0.0  #: stage 2 (after `epochs` of heads-only training): passes over the train captions
    backbone_lr: float = 2e-5  #: stage-2 AdamW peak lr of the unfrozen backbone weights
    finetune_head_lr: float = 2e-4  #: stage-2 AdamW peak lr of the heads (+ quantizer)
    finetune_evals: int = 3  #: dev evaluations during stage 2 (best dev state kept)
    holdout_topic: str = ""  #: leave-topic-out: drop train images whose captions name this topic (training/topics.py)
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form notes (not used by code)

    def __post_init__(self) -> None:
        self.image_views = tuple(self.image_views)
        for name, allowed in (("loss", LOSSES), ("similarity", SIMILARITIES), ("head", HEADS),
                              ("text_encoder", TEXT_ENCODERS),
                              ("image_pool", IMAGE_POOLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"config {name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.image_backbone not in IMAGE_BACKBONES:
            raise ValueError(f"config image_backbone={self.image_backbone!r}: expected one of {IMAGE_BACKBONES}")
        if not (self.image_size == 0 or 32 <= self.image_size <= 1024):
            raise ValueError(f"config image_size={self.image_size}: expected 0 (native) or 32..1024 pixels")
        if self.backbone_bundle:
            need = {"mode": "frozen", "image_pool": "mean", "text_encoder": "minilm", "image_size": 0}
            wrong = {k: getattr(self, k) for k, v in need.items() if getattr(self, k) != v}
            if wrong:
                raise ValueError(f"config backbone_bundle={self.backbone_bundle!r} trains heads on the bundle's "
                                 f"pooled tower outputs: needs {need} (text_encoder minilm = the feature head; "
                                 f"image_size 0 = the bundle's own), got {wrong}")
            bad = [v for v in self.image_views if v not in ("center", "hflip")]
            if bad:
                raise ValueError(f"config image_views {bad}: a backbone_bundle supports the views center and hflip")
        if self.embed_dim <= 0 or self.batch_size < 2:
            raise ValueError(f"config embed_dim={self.embed_dim}, batch_size={self.batch_size}: invalid")

    def image_spec(self):
        """The :class:`jointembed_pg.model.preprocess.ImageSpec` of this config: the default
        rule at ``image_size`` (the backbone's native side when 0); with ``backbone_bundle``,
        the bundle's own rule (its manifest's ``preprocess.image``, what the runtime applies)."""
        from jointembed_pg.model.preprocess import ImageSpec

        if self.backbone_bundle:
            from .bundle_backbone import open_bundle

            return open_bundle(self.backbone_bundle).image_spec

        from .backbones import native_image_size

        return ImageSpec(size=self.image_size or native_image_size(self.image_backbone))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_views"] = list(self.image_views)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; raises ValueError naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a JSON (or YAML if PyYAML is installed) config file."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: invalid training config ({e})") from e

    def replace(self, **kw: Any) -> "TrainConfig":
        d = self.to_dict()
        d.update(kw)
        return TrainConfig.from_dict(d)
