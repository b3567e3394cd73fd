"""Tiny randomly initialised models with the real architectures, saved the way users get them.

For tests/test_model_import.py: open_clip (CLIP ViT with the real classes, tiny widths;
a no-causal-mask text tower as MobileCLIP's; the RN50 ResNet image tower), transformers ``CLIPModel`` and
``SiglipModel`` folders (``save_pretrained``). Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

#: Tiny widths: the same classes as ViT-B-32 (VisionTransformer, TextTransformer), 2 layers.
OPEN_CLIP_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
#: MobileCLIP-style text tower: no causal mask (pools at argmax without a padding mask).
OPEN_CLIP_TINY_NOCAUSAL = {**OPEN_CLIP_TINY, "custom_text": True,
                           "text_cfg": {**OPEN_CLIP_TINY["text_cfg"], "no_causal_mask": True}}
#: open_clip's ModifiedResNet (the ``RN50`` classes: conv stem, bottlenecks, attention pool),
#: one block per stage at width 8: a convolutional image tower (static int8 calibration).
OPEN_CLIP_TINY_RESNET = {**OPEN_CLIP_TINY,
                         "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}}
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def register_open_clip(folder: Path) -> dict[str, str]:
    """Write the tiny configs and register them with open_clip; ``{key: arch name}``."""
    from jointembed_train import _torchvision  # noqa: F401
    import open_clip

    names = {"clip": "jetest-tiny-ViT", "nocausal": "jetest-tiny-ViT-nocausal", "resnet": "jetest-tiny-RN"}
    folder.mkdir(parents=True, exist_ok=True)
    for key, cfg in (("clip", OPEN_CLIP_TINY), ("nocausal", OPEN_CLIP_TINY_NOCAUSAL),
                     ("resnet", OPEN_CLIP_TINY_RESNET)):
        (folder / f"{names[key]}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return names


def save_open_clip(arch: str, path: Path, seed: int = 0) -> Path:
    """A random open_clip model of ``arch`` saved as open_clip's checkpoint format."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    torch.save({"epoch": 0, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def save_open_clip_dir(folder: Path, model_cfg: dict, preprocess_cfg: dict | None = None, seed: int = 0) -> Path:
    """A random open_clip model in open_clip's hub layout (``open_clip_config.json`` + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from jointembed_train import _torchvision  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def _clip_vocab_files(folder: Path) -> tuple[Path, Path]:
    """OpenAI CLIP's vocab.json / merges.txt, made from the BPE file open_clip ships."""
    import open_clip
    from open_clip.tokenizer import default_bpe

    tok = open_clip.tokenizer.SimpleTokenizer()
    vocab = {t: i for t, i in tok.encoder.items()}
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def save_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A random tiny ``CLIPModel`` + ``CLIPTokenizerFast`` + image processor (``save_pretrained``)."""
    import torch
    import transformers

    from jointembed_train import _torchvision  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(_TINY, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(_TINY, image_size=64, patch_size=16), projection_dim=32)
    transformers.CLIPModel(config).save_pretrained(folder)
    vocab, merges = _clip_vocab_files(folder)
    transformers.CLIPTokenizer(vocab=str(vocab), merges=str(merges)).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 64},
                                    crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def save_hf_siglip(folder: Path, captions: list[str], seed: int = 0) -> Path:
    """A random tiny ``SiglipModel`` + a fast tokenizer trained on ``captions`` + image processor.

    SigLIP's own tokenizer is SentencePiece (needs ``sentencepiece``, not installed here);
    a small BPE trained on the captions stands in: the model side (squash resize, padding
    to 64 without a mask, last-token pooling) is what this exercises.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from jointembed_train import _torchvision  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"]))
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="</s>", eos_token="</s>",
                                               unk_token="<unk>", model_max_length=64)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.SiglipConfig(
        text_config=dict(_TINY, vocab_size=tk.get_vocab_size(), max_position_embeddings=64,
                         pad_token_id=1, bos_token_id=1, eos_token_id=1),
        vision_config=dict(_TINY, image_size=64, patch_size=16))
    transformers.SiglipModel(config).save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
