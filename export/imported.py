"""Load a pretrained image-text model (open_clip, transformers CLIP/SigLIP) for import.

:func:`load` returns an :class:`Imported`: the framework's model wrapped as the two
functions the bundle's graphs compute (L2-normalised embeddings), the runtime's image rule
(:class:`~jointembed_pg.model.preprocess.ImageSpec`), the tokenizer as ``tokenizer.json``,
and the framework's *own* reference pipeline (its transform, tokenizer and encoders) that
:mod:`jointembed_export.import_bundle` checks the bundle against.

Sources (:func:`load`):

* an open_clip checkpoint file (``.pt``/``.bin``/``.safetensors``: a state dict or open_clip's
  own format) with ``arch="open_clip:ARCH"`` (``open_clip.create_model`` names);
* ``open_clip:ARCH/PRETRAINED`` or ``open_clip:hf-hub:ORG/NAME``: the hub, through open_clip;
* a folder in open_clip's hub layout (``open_clip_config.json`` with ``model_cfg`` and
  ``preprocess_cfg``, plus the weights), loaded as open_clip's ``local-dir:``;
* a directory written by transformers' ``save_pretrained`` of ``CLIPModel`` or ``SiglipModel``
  with its (fast) tokenizer files, or ``hf:ORG/NAME`` from the hub through ``from_pretrained``.

Text length: a tower whose pooled position sees only earlier positions (causal mask,
EOT/argmax pooling: CLIP) is exported for any length and fed the batch's longest caption;
a tower that pools without a padding mask (SigLIP: last token; MobileCLIP: no causal
mask) computes on the padding too, so it is exported at its context length and the
manifest says ``pad_to`` (the runtime pads every caption to it).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jointembed_train import _torchvision  # noqa: F401  (before open_clip/timm/transformers import torchvision)
from . import ExportError

log = logging.getLogger(__name__)

@dataclass
class Imported:
    """A loaded model, ready to export, with the framework's own reference pipeline.

    Attributes:
        framework: ``"open_clip"`` or ``"transformers"``.
        architecture: e.g. ``"ViT-B-32"`` or ``"CLIPModel"``.
        weights: where the weights came from (path or hub name).
        weights_sha256: sha256 of the weights file(s) (hub: of the loaded state dict).
        image_fn: ``pixels (N,3,S,S) float32 tensor -> (N,D)`` L2-normalised embeddings.
        text_fn: ``(input_ids, attention_mask) (N,L) int64 -> (N,D)`` L2-normalised.
        spec: the runtime's image rule (:class:`~jointembed_pg.model.preprocess.ImageSpec`).
        context_length: the text tower's positions (manifest ``max_tokens``).
        pad_to: ``None`` (variable length) or ``context_length``.
        tokenizer_json: ``tokenizer.json`` text for the runtime.
        ref_image: PIL image -> ``(3,S,S)`` tensor: the framework's own transform.
        ref_ids: list of texts -> list of id lists (padding removed): the framework's tokenizer.
        ref_text: list of texts -> ``(N,D)`` numpy, the framework's whole text pipeline.
        module: the framework's ``nn.Module`` (its parameters become the graphs' weights).
    """

    framework: str
    architecture: str
    weights: str
    weights_sha256: str
    image_fn: Any
    text_fn: Any
    spec: Any
    context_length: int
    pad_to: int | None
    tokenizer_json: str
    ref_image: Callable
    ref_ids: Callable[[Sequence[str]], list[list[int]]]
    ref_text: Callable[[Sequence[str]], np.ndarray]
    module: Any = None


def sha256_of(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order (one file: its plain sha256)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _state_sha256(module) -> str:
    """sha256 of a module's state dict (names, shapes, bytes): hub weights have no local file."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load(source: str | Path, arch: str | None = None) -> Imported:
    """Load ``source`` (see the module docstring) with its framework's own loader.

    Raises:
        ExportError: unknown source kind, missing ``arch`` for a checkpoint file, a model
            or tokenizer this importer does not support, or the framework failed to load it.
    """
    text = str(source)
    if text.startswith("open_clip:"):
        name, _, pretrained = text[len("open_clip:"):].partition("/")
        if name == "hf-hub:" or name.startswith("hf-hub:"):
            return _load_open_clip(text[len("open_clip:"):], None, hub=True)
        return _load_open_clip(name, pretrained or None, hub=True)
    if text.startswith("hf:"):
        return _load_transformers(text[3:], hub=True)
    path = Path(source)
    if path.is_dir() and (path / "open_clip_config.json").is_file():  # open_clip's hub layout, saved locally
        return _load_open_clip(f"local-dir:{path}", None, hub=False)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"{path}: a directory without config.json is not a transformers save_pretrained folder")
        return _load_transformers(str(path), hub=False)
    if not path.is_file():
        raise ExportError(f"{path}: no such file or directory (or give open_clip:ARCH/PRETRAINED, hf:NAME)")
    if not arch or not arch.startswith("open_clip:"):
        raise ExportError(f"{path}: a checkpoint file needs --arch open_clip:ARCH (e.g. open_clip:ViT-B-32)")
    return _load_open_clip(arch[len("open_clip:"):], str(path), hub=False)


# --------------------------------------------------------------------------- open_clip
def _load_open_clip(arch: str, pretrained: str | None, *, hub: bool) -> Imported:
    import open_clip
    import torch

    from jointembed_pg.model.preprocess import ImageSpec

    from .clip_tokenizer import framework_ids, simple_tokenizer_json

    try:
        model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        tok = open_clip.get_tokenizer(arch)
    except Exception as e:  # open_clip raises RuntimeError, AssertionError, KeyError, ...
        raise ExportError(f"open_clip cannot load {arch!r} with weights {pretrained!r}: {e}") from e
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", 224)
    size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else None)
    if size is None:
        raise ExportError(f"{arch}: non-square input {cfg.get('size')} is not supported")
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ExportError(f"{arch}: resize mode {mode!r} is not supported (shortest, squash)")
    spec = ImageSpec(size=int(size), resize=mode, crop="center_round" if mode == "shortest" else "center",
                     interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
                     mean=tuple(float(x) for x in cfg.get("mean")), std=tuple(float(x) for x in cfg.get("std")))
    if not isinstance(tok, open_clip.tokenizer.SimpleTokenizer):
        raise ExportError(f"{arch}: tokenizer {type(tok).__name__} is not supported yet (only CLIP's BPE "
                          f"SimpleTokenizer; SigLIP: import the transformers SiglipModel instead)")
    try:
        tokenizer_json = simple_tokenizer_json(tok)
    except ValueError as e:
        raise ExportError(f"{arch}: {e}") from e
    ctx = int(model.context_length if hasattr(model, "context_length") else model.text.context_length)
    text_fn, pad_to = _open_clip_text_fn(model, ctx)
    weights = pretrained if pretrained else arch
    if hub:
        sha = _state_sha256(model)
    elif pretrained:
        sha = sha256_of([Path(pretrained)])
    else:  # local-dir: the weights file open_clip picked in the folder
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(Path(arch[len("local-dir:"):]))
        sha = sha256_of([Path(found)]) if found else _state_sha256(model)

    def image_fn(pixels):
        return model.encode_image(pixels, normalize=True)

    @torch.no_grad()
    def ref_text(texts):
        return model.encode_text(tok(list(texts), context_length=ctx), normalize=True).numpy()

    return Imported("open_clip", arch, str(weights), sha, image_fn, text_fn, spec, ctx, pad_to, tokenizer_json,
                    ref_image=transform, ref_ids=lambda texts: [framework_ids(tok, t, ctx) for t in texts],
                    ref_text=ref_text, module=model.requires_grad_(False))


def _open_clip_text_fn(model, ctx: int):
    """``(text_fn, pad_to)``: variable length when the tower is causal with argmax/EOS pooling."""
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool
    from torch import nn

    tower = getattr(model, "text", None)  # CustomTextCLIP keeps a TextTransformer here
    owner = tower if tower is not None else model
    attn_mask = getattr(owner, "attn_mask", None)
    pool = getattr(owner, "pool_type", getattr(owner, "text_pool_type", None))
    eos = getattr(owner, "eos_id", getattr(owner, "text_eos_id", None))
    variable = (attn_mask is not None and pool in ("argmax", "eos") and hasattr(owner, "token_embedding")
                and getattr(owner, "cls_emb", None) is None and not getattr(owner, "use_pad_mask", False))
    if not variable:
        def fixed(ids, mask):
            # the mask is unused by these towers; touching it keeps it a graph input
            return model.encode_text(ids, normalize=True) + 0 * mask[:, :1].to(next(model.parameters()).dtype)
        return fixed, ctx

    def sliced(ids, mask):
        # open_clip's encode_text / TextTransformer.forward with the positional embedding and
        # the causal mask cut to the batch's length L (the rest of the 77 positions is
        # never seen by the pooled EOT token under the causal mask).
        length = ids.shape[1]
        x = owner.token_embedding(ids)
        x = x + owner.positional_embedding[:length]
        x = owner.transformer(x, attn_mask=attn_mask[:length, :length])
        x = owner.ln_final(x)
        x = text_global_pool(x, ids, pool, eos_token_id=eos)
        proj = owner.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) + 0 * mask[:, :1].to(x.dtype)
    return sliced, None


# --------------------------------------------------------------------------- transformers
def _load_transformers(name: str, *, hub: bool) -> Imported:
    import torch
    import transformers

    from jointembed_pg.model.preprocess import ImageSpec

    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except Exception as e:
        raise ExportError(f"transformers cannot read the config of {name!r}: {e}") from e
    kind = getattr(config, "model_type", None)
    classes = {"clip": (transformers.CLIPModel, "CLIPImageProcessorPil"),
               "siglip": (transformers.SiglipModel, "SiglipImageProcessorPil")}
    if kind not in classes:
        raise ExportError(f"{name}: model_type {kind!r} is not supported (clip, siglip)")
    cls, proc_name = classes[kind]
    try:
        model = cls.from_pretrained(name).eval()
        tok = transformers.AutoTokenizer.from_pretrained(name)
        processor = getattr(transformers, proc_name).from_pretrained(name)
    except Exception as e:
        raise ExportError(f"transformers cannot load {name!r} as {cls.__name__}: {e}") from e
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{name}: needs a fast tokenizer (tokenizer.json); got {type(tok).__name__}")
    if kind == "clip":
        size = int(processor.crop_size["height"])
        spec_kw = dict(resize="shortest", crop="center")
        if processor.size.get("shortest_edge") != size or not processor.do_center_crop:
            raise ExportError(f"{name}: CLIP preprocessing other than resize-shortest + centre crop "
                              f"({processor.size}, crop {processor.crop_size}) is not supported")
        ctx, pad_to = int(config.text_config.max_position_embeddings), None
    else:
        size = int(processor.size["height"])
        spec_kw = dict(resize="squash", crop="center")
        ctx = int(config.text_config.max_position_embeddings)
        pad_to = ctx
    interp = {2: "bilinear", 3: "bicubic"}.get(int(processor.resample))
    if interp is None:
        raise ExportError(f"{name}: resample {processor.resample} is not supported (bilinear, bicubic)")
    spec = ImageSpec(size=size, interpolation=interp, mean=tuple(float(x) for x in processor.image_mean),
                     std=tuple(float(x) for x in processor.image_std), **spec_kw)
    if abs(float(processor.rescale_factor) - 1 / 255) > 1e-12 or not processor.do_normalize:
        raise ExportError(f"{name}: rescale {processor.rescale_factor} / normalize {processor.do_normalize} "
                          f"is not supported")
    data = json.loads(tok.backend_tokenizer.to_str())
    data["truncation"] = None
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    data["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": int(pad_id), "pad_type_id": 0, "pad_token": tok.convert_ids_to_tokens(int(pad_id))}
    tokenizer_json = json.dumps(data, ensure_ascii=False)
    uses_mask = kind == "clip"
    F = torch.nn.functional

    def image_fn(pixels):
        return F.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1)

    def text_fn(ids, mask):
        out = model.get_text_features(input_ids=ids, attention_mask=mask if uses_mask else None)
        return F.normalize(_pooled(out), dim=-1) + 0 * mask[:, :1].to(torch.float32)

    def tokenize(texts):
        return tok(list(texts), padding="max_length" if pad_to else True, truncation=True, max_length=ctx,
                   return_tensors="pt")

    @torch.no_grad()
    def ref_text(texts):
        t = tokenize(texts)
        out = model.get_text_features(input_ids=t["input_ids"],
                                      **({"attention_mask": t["attention_mask"]} if uses_mask else {}))
        return F.normalize(_pooled(out), dim=-1).numpy()

    def ref_ids(texts):
        return [tok(t, truncation=True, max_length=ctx)["input_ids"] for t in texts]

    def ref_image(img):
        return torch.from_numpy(np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0]))

    files = [] if hub else sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin"))
    sha = sha256_of(files) if files else _state_sha256(model)
    return Imported("transformers", cls.__name__, name, sha, image_fn, text_fn, spec, ctx, pad_to,
                    tokenizer_json, ref_image=ref_image, ref_ids=ref_ids, ref_text=ref_text,
                    module=model.requires_grad_(False))


def _pooled(out):
    """transformers 5 returns a model output whose ``pooler_output`` is the projected feature."""
    return out if hasattr(out, "shape") else out.pooler_output
