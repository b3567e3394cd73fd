"""Frozen-backbone feature cache (METHOD.md, Encoders, "frozen" mode).

Image features ``(N, 1280) float32`` and caption features ``(M, 384) float32`` are
computed once with ``torch.inference_mode`` and stored as ``.npy`` under a cache
directory. The file name carries a key hashed from the backbone weight files, the
preprocessing rule (:class:`jointembed_pg.model.preprocess.ImageSpec`), the view, the token
limit and the exact list of inputs, so a stale cache is never reused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from jointembed_pg.model import preprocess
from jointembed_pg.model.preprocess import ImageSpec

from . import backbones

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "cache"
CACHE_VERSION = 1  #: bump when feature code changes meaning
VIEWS = ("center", "hflip", "zoom_tl", "zoom_tr", "zoom_bl", "zoom_br", "zoom_c")
_ZOOM = 256  #: shorter side before a 224 corner crop for the ``zoom_*`` views


def _key(kind: str, items: Sequence[str], extra: dict,
         image_backbone: str = backbones.IMAGE_BACKBONE_NAME, fingerprint: str | None = None) -> str:
    """16 hex digits over the cache version, ``kind``, the backbone fingerprint (image backbone
    ``image_backbone``'s weights + MiniLM, or ``fingerprint`` when given: another backbone
    whose identity is in ``extra``), ``extra`` (spec, view, ...) and ``items``.

    A non-default image backbone is also named in the hashed dict; the default's key is
    unchanged from before the backbone choice existed, so Lite0 caches stay valid.
    """
    if image_backbone != backbones.IMAGE_BACKBONE_NAME:
        extra = {**extra, "image_backbone": image_backbone}
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "kind": kind,
                         "bb": fingerprint or backbones.backbone_fingerprint(image_backbone),
                         **extra}, sort_keys=True).encode())
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def load_view(path: Path, spec: ImageSpec, view: str) -> np.ndarray:
    """One image as ``(3, S, S) float32`` encoder input under augmentation ``view``.

    ``center`` is exactly :func:`jointembed_pg.model.preprocess.load` (the runtime pixels).
    ``hflip`` mirrors it. ``zoom_<pos>`` resizes the shorter side to 256 (8/7 of 224) with
    the spec's filter and takes a 224 crop at a corner (tl/tr/bl/br) or the centre (c),
    then normalises with the spec's mean/std. Raises ValueError for an unknown view.
    """
    if view == "center":
        return preprocess.load(path, spec)
    if view == "hflip":
        return np.ascontiguousarray(preprocess.load(path, spec)[:, :, ::-1])
    if not view.startswith("zoom_") or view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    s = spec.size
    big = round(s * _ZOOM / 224)
    img = preprocess.resize_shorter(preprocess.decode(path), big, spec.interpolation)
    w, h = img.size
    pos = view[5:]
    left = {"tl": 0, "bl": 0, "tr": w - s, "br": w - s, "c": (w - s) // 2}[pos]
    top = {"tl": 0, "tr": 0, "bl": h - s, "br": h - s, "c": (h - s) // 2}[pos]
    return preprocess.to_array(img.crop((left, top, left + s, top + s)), spec.mean, spec.std)


def _cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def image_key(paths: Sequence[Path], spec: ImageSpec, view: str,
              backbone: str = backbones.IMAGE_BACKBONE_NAME) -> str:
    """Cache key of :func:`image_features` (backbone weights + name, spec, view, paths)."""
    return _key("image", [str(p) for p in paths], {"spec": spec.to_dict(), "view": view}, backbone)


def image_features(paths: Sequence[Path], cache_dir: Path = DEFAULT_CACHE_DIR, *,
                   spec: ImageSpec = ImageSpec(), view: str = "center", batch_size: int = 64,
                   device: str = "cpu", progress: bool = True, save_grid: bool = False,
                   backbone: str = backbones.IMAGE_BACKBONE_NAME) -> np.ndarray:
    """Pooled features ``(N, 1280) float32`` of ``paths`` under image backbone ``backbone``
    (EfficientNet-Lite0 by default) at ``spec`` (cached; the key names both).

    With ``save_grid`` the final feature maps are also stored, as
    ``imggrid_<view>_<key>.npy``: ``(N, h*w, 1280) float16`` (7x7 grid for 224 input).
    """
    key = image_key(paths, spec, view, backbone)
    out = Path(cache_dir) / f"img_{view}_{key}.npy"

    grid_path = Path(cache_dir) / f"imggrid_{view}_{key}.npy"

    def compute() -> np.ndarray:
        net = backbones.load_image_backbone(name=backbone).to(device)
        feats = np.zeros((len(paths), backbones.IMAGE_FEATURE_DIM), np.float32)
        grid = None
        with torch.inference_mode():
            for lo in tqdm(range(0, len(paths), batch_size), desc=f"image features ({view})",
                           disable=not progress):
                batch = np.stack([load_view(p, spec, view) for p in paths[lo:lo + batch_size]])
                fmap = net.net.extract_features(torch.from_numpy(batch).to(device))  # (n,1280,h,w)
                feats[lo:lo + len(batch)] = fmap.mean(dim=(2, 3)).cpu().numpy()
                if save_grid:
                    g = fmap.flatten(2).transpose(1, 2).to(torch.float16).cpu().numpy()  # (n,hw,1280)
                    if grid is None:
                        grid = np.zeros((len(paths),) + g.shape[1:], np.float16)
                    grid[lo:lo + len(batch)] = g
        if grid is not None:
            np.save(grid_path, grid)
        return feats

    return _cached(out, compute)


def image_grid_features(paths: Sequence[Path], cache_dir: Path = DEFAULT_CACHE_DIR, *,
                        spec: ImageSpec = ImageSpec(), view: str = "center", device: str = "cpu",
                        progress: bool = True, backbone: str = backbones.IMAGE_BACKBONE_NAME) -> np.ndarray:
    """Final feature maps ``(N, h*w, 1280) float16`` of ``paths`` (memory-mapped cache;
    49 = 7x7 at 224 px)."""
    key = image_key(paths, spec, view, backbone)
    grid_path = Path(cache_dir) / f"imggrid_{view}_{key}.npy"
    if not grid_path.is_file():
        pooled = Path(cache_dir) / f"img_{view}_{key}.npy"
        pooled.unlink(missing_ok=True)  # recompute both in one pass
        image_features(paths, cache_dir, spec=spec, view=view, device=device, progress=progress,
                       save_grid=True, backbone=backbone)
    return np.load(grid_path, mmap_mode="r")


def tokenize(texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise exactly as the runtime does (:class:`jointembed_pg.model.text.TextTokenizer` on
    :func:`backbones.tokenizer_path`).

    Returns ``input_ids, attention_mask``: ``(N, L) int64`` padded to the longest text,
    truncated (longest_first) to ``max_tokens``.
    """
    ids, mask = _tokenizer(max_tokens).encode(list(texts))
    return torch.from_numpy(ids), torch.from_numpy(mask)


_TOK: dict[int, object] = {}


def _tokenizer(max_tokens: int):
    from jointembed_pg.model.text import TextTokenizer

    if max_tokens not in _TOK:
        _TOK[max_tokens] = TextTokenizer(backbones.tokenizer_path(), max_tokens)
    return _TOK[max_tokens]


def text_features(captions: Sequence[str], cache_dir: Path = DEFAULT_CACHE_DIR, *,
                  max_tokens: int = 128, batch_size: int = 256, device: str = "cpu",
                  progress: bool = True) -> np.ndarray:
    """MiniLM mean-pooled caption features ``(M, 384) float32`` (cached)."""
    key = _key("text", captions, {"max_tokens": max_tokens})
    out = Path(cache_dir) / f"txt_mean_{key}.npy"

    def compute() -> np.ndarray:
        net = backbones.load_text_backbone().to(device)
        order = np.argsort([len(c) for c in captions], kind="stable")  # similar lengths batch
        feats = np.zeros((len(captions), backbones.TEXT_FEATURE_DIM), np.float32)
        with torch.inference_mode():
            for lo in tqdm(range(0, len(order), batch_size), desc="text features", disable=not progress):
                idx = order[lo:lo + batch_size]
                ids, mask = tokenize([captions[i] for i in idx], max_tokens)
                feats[idx] = net(ids.to(device), mask.to(device)).cpu().numpy()
        return feats

    return _cached(out, compute)
