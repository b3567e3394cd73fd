"""Import a pretrained image-text model (open_clip, transformers CLIP/SigLIP) as a bundle.

``import_model(source, out_dir, arch=...)`` loads the model with the framework's own
loader, exports both towers to ONNX (:mod:`jointembed_export.graphs`' exporter settings),
writes the framework's tokenizer as ``tokenizer.json`` and a schema-2 manifest, then checks
the bundle against the framework's *own* pipeline (its image transform, its tokenizer, its
``encode_image``/``encode_text``, L2-normalised) on real images and varied captions. A
bundle that disagrees is never written (:class:`~jointembed_export.ExportError`).

Sources (:func:`load`):

* an open_clip checkpoint file (``.pt``/``.bin``/``.safetensors``: a state dict or open_clip's
  own format) with ``arch="open_clip:ARCH"`` (``open_clip.create_model`` names);
* ``open_clip:ARCH/PRETRAINED`` or ``open_clip:hf-hub:ORG/NAME``: the hub, through open_clip;
* a folder in open_clip's hub layout (``open_clip_config.json`` with ``model_cfg`` and
  ``preprocess_cfg``, plus the weights), loaded as open_clip's ``local-dir:``;
* a directory written by transformers' ``save_pretrained`` of ``CLIPModel`` or ``SiglipModel``
  with its tokenizer files, or ``hf:ORG/NAME`` from the hub through ``from_pretrained``.

Text length: a tower whose pooled position sees only earlier positions (causal mask,
EOT/argmax pooling: CLIP) is exported for any length and fed the batch's longest caption;
a tower that pools without a padding mask (SigLIP: last token; MobileCLIP: no causal
mask) computes on the padding too, so it is exported at its context length and the
manifest says ``pad_to`` (the runtime pads every caption to it).

int8 (:func:`quantize_bundle`): dynamic quantisation (int8 per-channel weights of every
MatMul/Gemm, activations per batch) of both towers; convolutional image towers
(MobileCLIP's FastViT) would need static calibration, which is not implemented.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jointembed_train import _torchvision  # noqa: F401  (before open_clip/timm/transformers import torchvision)
from . import ExportError

log = logging.getLogger(__name__)

#: Smallest cosine between the bundle's and the framework's embeddings accepted at import.
MIN_COSINE = 0.9999
#: Tokenizer agreement (share of texts with identical ids) accepted at import.
MIN_TOKEN_AGREEMENT = 0.995
#: The importer's own version (hashed into model ids).
IMPORT_VERSION = 1
#: Captions beyond what Flickr8K has: punctuation, unicode, entities, emoji, over-long.
PROBE_TEXTS = [
    "Hello, World!!! (really?)", "a dog &amp; a cat", "it's “quoted” ‘text’", "café naïve résumé",
    "🐶 a dog and a 🚀 rocket", "東京タワー at night", "don't STOP me now", "price: $5.99 (50% off)!",
    " ".join(["a brown dog runs across the green grass after a red ball"] * 12),
]


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

    tower = getattr(model, "text", None)  # CustomTextCLIP keeps a TextTransformer here
    owner = tower if tower is not None else model
    attn_mask = getattr(owner, "attn_mask", None)
    pool = getattr(owner, "pool_type", getattr(owner, "text_pool_type", None))
    eos = getattr(owner, "eos_id", getattr(owner, "text_eos_id", None))
    variable = (attn_mask is not None and pool in ("argmax", "eos") and hasattr(owner, "token_embedding")
                and getattr(owner, "cls_emb", None) is None and not getattr(owner, "use_pad_mask", False))
    if not variable:
        def fixed(ids, mask):
            return model.encode_text(ids, normalize=True) + 0 * mask[:, :1].to(float_dtype(model))
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
            x = proj(x) if isinstance(proj, torch_nn().Linear) else x @ proj
        return F.normalize(x, dim=-1) + 0 * mask[:, :1].to(x.dtype)
    return sliced, None


def torch_nn():
    from torch import nn
    return nn


def float_dtype(model):
    return next(model.parameters()).dtype


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


# --------------------------------------------------------------------------- export
def _tower(fn, module, kind: str):
    """nn.Module running ``fn`` with ``module`` registered (its weights are the graph's initialisers)."""
    from torch import nn

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

    class ImageTower(Tower):
        def forward(self, pixels):
            return fn(pixels)

    class TextTower(Tower):
        def forward(self, input_ids, attention_mask):
            return fn(input_ids, attention_mask)

    return ImageTower() if kind == "image" else TextTower()


def export_graphs(imp: Imported, out_dir: Path, opset: int = 17) -> None:
    """Write ``image.onnx`` and ``text.onnx`` for ``imp`` into ``out_dir``.

    The TorchScript exporter with PyTorch's fused attention fast path switched off (it has
    no ONNX export); fixed-length towers are traced at ``pad_to``.

    Raises:
        ExportError: the exporter failed.
    """
    import torch

    from jointembed_pg.model.manifest import IMAGE_ONNX, INPUTS, OUTPUTS, TEXT_ONNX

    length = imp.pad_to or 16
    ids = torch.full((2, length), 1, dtype=torch.int64)
    mask = torch.ones_like(ids)
    pixels = torch.zeros(2, 3, imp.spec.size, imp.spec.size)
    seq = {0: "batch", 1: "sequence"} if imp.pad_to is None else {0: "batch"}
    jobs = [("image", _tower(imp.image_fn, imp.module, "image"), (pixels,), IMAGE_ONNX,
             {"pixels": {0: "batch"}, "embedding": {0: "batch"}}),
            ("text", _tower(imp.text_fn, imp.module, "text"), (ids, mask), TEXT_ONNX,
             {"input_ids": seq, "attention_mask": seq, "embedding": {0: "batch"}})]
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for kind, graph, args, name, axes in jobs:
            # open_clip's nn.MultiheadAttention traced by TorchScript bakes the sequence length
            # into its reshapes: its variable-length text goes through the dynamo exporter
            # (transformers' CLIP attention traces with dynamic shapes, as graphs.py's MiniLM).
            dynamo = kind == "text" and imp.pad_to is None and imp.framework == "open_clip"
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    if dynamo:
                        _export_dynamo(graph.eval(), args, out_dir / name, kind, opset)
                    else:
                        torch.onnx.export(graph.eval(), args, str(out_dir / name), dynamo=False,
                                          opset_version=opset, do_constant_folding=True,
                                          input_names=INPUTS[kind], output_names=OUTPUTS[kind], dynamic_axes=axes)
            except Exception as e:  # torch raises many types
                raise ExportError(f"ONNX export of the {kind} tower failed: {e}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _export_dynamo(graph, args, path: Path, kind: str, opset: int) -> None:
    """torch.export-based ONNX export with dynamic batch and sequence axes.

    The dynamo exporter can name the graph output like an inner value ("Duplicate
    definition of name (embedding)", the problem met with MiniLM), so the output is
    exported under a private name and renamed to ``embedding`` afterwards.
    """
    import onnx
    import torch
    from torch.export import Dim

    from jointembed_pg.model.manifest import INPUTS, OUTPUTS

    batch, seq = Dim("batch", min=1), Dim("sequence", min=1, max=4096)
    shapes = tuple({0: batch, 1: seq} for _ in args)
    tmp = path.with_suffix(".dynamo.onnx")
    prog = torch.onnx.export(graph, args, dynamo=True, opset_version=max(opset, 18), input_names=INPUTS[kind],
                             output_names=["je_output"], dynamic_shapes=shapes, external_data=False)
    prog.save(str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    (out,) = model.graph.output
    old, new = out.name, OUTPUTS[kind][0]
    names = {old: new, new: new + "__inner"}  # an inner value may already be called "embedding"
    for node in model.graph.node:
        node.output[:] = [names.get(o, o) for o in node.output]
        node.input[:] = [names.get(i, i) for i in node.input]
    for vi in model.graph.value_info:
        vi.name = names.get(vi.name, vi.name)
    out.name = new
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def probe_images(data_dir: Path | None, work: Path, n: int = 6) -> list[Path]:
    """Real Flickr8K test images from ``data_dir`` if it is one, else a few synthetic JPEGs."""
    from PIL import Image

    from .data import is_flickr8k, load_split

    if is_flickr8k(data_dir):
        return list(load_split(Path(data_dir), "test", limit=n).images)
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(320, 240), (240, 333), (500, 375), (97, 131)]):
        p = work / f"probe{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


def probe_texts(data_dir: Path | None, n: int = 40) -> list[str]:
    """Flickr8K test captions (if ``data_dir`` is one) plus :data:`PROBE_TEXTS`."""
    from .data import is_flickr8k, load_split

    caps = load_split(Path(data_dir), "test", limit=n // 5 + 1).captions[:n] if is_flickr8k(data_dir) else []
    return caps + PROBE_TEXTS


def compare(imp: Imported, bundle, images: Sequence[Path], texts: Sequence[str]) -> dict:
    """The bundle's embeddings and ids against the framework's own pipeline.

    Returns:
        ``{image_min_cosine, text_min_cosine, pixel_max_abs_diff, token_agreement, n_images,
        n_texts}``: cosines over rows, the largest |runtime pixel - framework pixel|, and
        the share of texts whose ids are identical.
    """
    import torch
    from PIL import Image

    from jointembed_pg.model.preprocess import load as load_pixels

    with torch.no_grad():
        ref_px = torch.stack([imp.ref_image(Image.open(p).convert("RGB")) for p in images]).float()
        ref_img = imp.image_fn(ref_px).numpy()
    ours_px = np.stack([load_pixels(p, bundle.image_spec) for p in images])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = bundle.encode_images(list(images))
        txt = bundle.encode_texts(list(texts))
        ids, mask = bundle.tokenizer.encode(list(texts))
    ref_ids = imp.ref_ids(texts)
    same = sum(1 for row, m, ref in zip(ids, mask, ref_ids) if row[m.astype(bool)].tolist()
               == list(ref)[:len(row[m.astype(bool)])] and int(m.sum()) == len(ref))
    ref_txt = imp.ref_text(texts)

    def cos(a, b):
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    return {"image_min_cosine": cos(img, ref_img), "text_min_cosine": cos(txt, ref_txt),
            "pixel_max_abs_diff": float(np.abs(ours_px - ref_px.numpy()).max()),
            "token_agreement": same / len(texts), "n_images": len(images), "n_texts": len(texts)}


@dataclass(frozen=True)
class ImportOptions:
    """What besides the weights decides a bundle: opset, precision, int8 method."""

    opset: int = 17
    precision: str = "fp32"
    int8_method: str | None = None


def import_model(source: str | Path, out_dir: Path, *, arch: str | None = None, licence: str = "unknown",
                 data_dir: Path | None = None, force: bool = False, int8: bool = False) -> Path:
    """Import ``source`` as a bundle in ``out_dir`` (and ``<out_dir>-int8`` with ``int8``).

    Args:
        source, arch: see :func:`load`.
        licence: the weights' licence as the user states it (recorded, not checked).
        data_dir: Flickr8K-layout folder for the parity images and captions (synthetic if None).

    Raises:
        ExportError: loading, export, or the parity check failed (cosine < :data:`MIN_COSINE`
            or token agreement < :data:`MIN_TOKEN_AGREEMENT`); ``out_dir`` exists without ``force``.
    """
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.model.manifest import TOKENIZER, Manifest

    from .manifest import file_entries, write_manifest
    from .staging import int8_dir, staged_dir

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists (use --force to replace it)")
    imp = load(source, arch)
    with staged_dir(out_dir, force=force) as tmp:
        export_graphs(imp, tmp)
        (tmp / TOKENIZER).write_text(imp.tokenizer_json, encoding="utf-8")
        manifest = _manifest(imp, tmp, licence, ImportOptions())
        write_manifest(tmp, manifest)
        report = compare(imp, Bundle.load(tmp), probe_images(data_dir, tmp), probe_texts(data_dir))
        for f in tmp.glob("probe*.jpg"):
            f.unlink()
        if not (report["image_min_cosine"] >= MIN_COSINE and report["text_min_cosine"] >= MIN_COSINE
                and report["token_agreement"] >= MIN_TOKEN_AGREEMENT):
            raise ExportError(f"imported {source} disagrees with {imp.framework}'s own pipeline: {report}")
        from dataclasses import replace

        write_manifest(tmp, replace(manifest, extra={**manifest.extra, "parity": report}))
        log.info("imported %s as %s: %s", source, manifest.model_id, report)
    if int8:
        quantize_bundle(out_dir, int8_dir(out_dir), imp, data_dir=data_dir, force=force)
    return out_dir


def _manifest(imp: Imported, bundle_dir: Path, licence: str, options: ImportOptions):
    import onnx
    import onnxruntime
    import torch
    from datetime import datetime, timezone
    import platform

    from jointembed_pg.model.manifest import Manifest

    from .manifest import file_entries

    key = json.dumps({"w": imp.weights_sha256, "arch": imp.architecture, "opts": asdict(options),
                      "v": IMPORT_VERSION}, sort_keys=True)
    probe = imp.text_fn
    del probe
    import torch as _t
    with _t.no_grad():
        dim = int(imp.image_fn(_t.zeros(1, 3, imp.spec.size, imp.spec.size)).shape[1])
    return Manifest(
        schema_version=2, model_id="je-" + hashlib.sha256(key.encode()).hexdigest()[:12], dim=dim,
        normalized=True, precision=options.precision, files=file_entries(bundle_dir), image=imp.spec,
        max_tokens=imp.context_length, pad_to=imp.pad_to, source_checkpoint_sha256=imp.weights_sha256,
        source={"framework": imp.framework, "architecture": imp.architecture, "weights": imp.weights,
                "weights_sha256": imp.weights_sha256, "licence": licence},
        export={"importer_version": IMPORT_VERSION, "options": asdict(options),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version()},
    )


#: Recorded in int8 manifests and hashed into their model id.
INT8_METHOD = "dynamic-per-channel-int8-matmul;both-towers"


def quantize_bundle(fp32_dir: Path, out_dir: Path, imp: Imported | None = None, *,
                    data_dir: Path | None = None, force: bool = False) -> Path:
    """Dynamic int8 copy of an imported fp32 bundle, with its agreement with fp32 recorded.

    Raises:
        ExportError: ``out_dir`` exists without ``force``, or quantisation failed.
    """
    from dataclasses import replace

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.model.manifest import IMAGE_ONNX, TEXT_ONNX, TOKENIZER

    from .manifest import file_entries, write_manifest
    from .staging import staged_dir

    fp32 = Bundle.load(fp32_dir)
    options = ImportOptions(precision="int8", int8_method=INT8_METHOD)
    with staged_dir(Path(out_dir), force=force) as tmp:
        for name in (IMAGE_ONNX, TEXT_ONNX):
            try:
                quantize_dynamic(str(fp32.path / name), str(tmp / name), weight_type=QuantType.QInt8,
                                 per_channel=True)
            except Exception as e:
                raise ExportError(f"int8 quantisation of {name} failed: {e}") from e
        shutil.copyfile(fp32.path / TOKENIZER, tmp / TOKENIZER)
        src = fp32.meta
        key = json.dumps({"fp32": src.model_id, "opts": asdict(options)}, sort_keys=True)
        m = replace(src, precision="int8", model_id="je-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                    files=file_entries(tmp), export={**src.export, "options": asdict(options)},
                    extra={k: v for k, v in src.extra.items() if k != "parity"})
        write_manifest(tmp, m)
        int8 = Bundle.load(tmp)
        work = tmp / ".probe"
        work.mkdir()
        images, texts = probe_images(data_dir, work), probe_texts(data_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = {"image": (fp32.encode_images(images), int8.encode_images(images)),
                     "text": (fp32.encode_texts(texts), int8.encode_texts(texts))}
        shutil.rmtree(work)
        dev = {"method": INT8_METHOD}
        for enc, (a, b) in pairs.items():
            dev[f"{enc}_min_cosine_vs_fp32"] = float(((a * b).sum(1)).min())
            dev[f"{enc}_mean_cosine_vs_fp32"] = float(((a * b).sum(1)).mean())
        write_manifest(tmp, replace(m, extra={**m.extra, "int8": dev}))
    return Path(out_dir)
