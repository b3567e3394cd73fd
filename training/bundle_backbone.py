"""An imported bundle's towers as frozen backbones (issue 24, "the paper's method on a strong backbone").

With ``TrainConfig.backbone_bundle`` set (a bundle name under the bundles directory or a
path, typically written by ``jointembed model import``), the features the heads train on
are that bundle's own embeddings, computed by the **runtime**
(:class:`jointembed_pg.model.bundle.Bundle`, onnxruntime) from the runtime's preprocessing
(:func:`jointembed_pg.model.preprocess.load` at the bundle's ``preprocess.image``) and the
bundle's tokenizer (``tokenizer.json``, ``max_tokens``, ``pad_to``). Serving a bundle
exported from these heads (:mod:`jointembed_export.heads_bundle`) runs the very same graphs
on the very same inputs, so training and serving see the same features by construction.

Widths come from the bundle (``manifest.dim``: e.g. 512 for CLIP ViT-B/32, 32 for the tiny
test model), not from :mod:`jointembed_train.backbones`'s constants. Views: ``center`` (the
runtime's pixels) and ``hflip`` (those pixels mirrored); the zoom views are not offered.

Cache: ``<cache_dir>/img_<view>_<key>.npy`` ``(N, F) float32`` and
``<cache_dir>/txt_bundle_<key>.npy`` ``(M, F) float32``; the key hashes the bundle's
identity (:func:`fingerprint`: model id, sha256 of its graphs and tokenizer, its
preprocessing), the view and the exact inputs (:func:`jointembed_train.features._key`),
so every backbone has its own cache entries and a changed bundle is never read stale.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from jointembed_pg.model.bundle import Bundle

from .features import _cached, _key, load_view

#: Views a bundle backbone supports (see the module docstring).
VIEWS = ("center", "hflip")


@functools.lru_cache(maxsize=8)
def open_bundle(name_or_path: str) -> Bundle:
    """The bundle ``name_or_path`` (sha256 of its files checked once per process).

    Raises:
        jointembed_pg.errors.BundleError: missing or invalid bundle.
    """
    return Bundle.load(name_or_path)


def fingerprint(bundle: Bundle) -> str:
    """12 hex digits naming what the bundle computes: model id, the sha256 of ``image.onnx``,
    ``text.onnx`` and ``tokenizer.json``, the image rule and the text limits."""
    m = bundle.meta
    ident = {"model_id": m.model_id, "files": {n: m.files[n].sha256 for n in sorted(m.files)},
             "image": m.image.to_dict(), "max_tokens": m.max_tokens, "pad_to": m.pad_to}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def image_key(paths: Sequence[Path], bundle: Bundle, view: str) -> str:
    """Cache key of :func:`image_features` (bundle identity, view, paths)."""
    return _key("image", [str(p) for p in paths], {"view": view, "bundle": fingerprint(bundle)},
                fingerprint="bundle")


def image_features(paths: Sequence[Path], cache_dir: Path, *, bundle: Bundle, view: str = "center",
                   batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """The bundle's image embeddings ``(N, F) float32`` of ``paths`` under ``view`` (cached).

    F = ``bundle.dim``. Pixels are :func:`jointembed_train.features.load_view` (``center`` is
    exactly the runtime's :func:`~jointembed_pg.model.preprocess.load`), embedded by
    :meth:`Bundle.encode_pixels`.

    Raises:
        ValueError: a view other than :data:`VIEWS`.
        jointembed_pg.errors.InputError: an image cannot be decoded (names the file).
    """
    if view not in VIEWS:
        raise ValueError(f"view {view!r}: a bundle backbone supports {VIEWS}")
    out = Path(cache_dir) / f"img_{view}_{image_key(paths, bundle, view)}.npy"

    def compute() -> np.ndarray:
        feats = np.zeros((len(paths), bundle.dim), np.float32)
        for lo in tqdm(range(0, len(paths), batch_size), desc=f"bundle image features ({view})",
                       disable=not progress):
            batch = np.stack([load_view(p, bundle.image_spec, view) for p in paths[lo:lo + batch_size]])
            feats[lo:lo + len(batch)] = bundle.encode_pixels(batch, batch_size=batch_size)
        return feats

    return _cached(out, compute)


def text_key(captions: Sequence[str], bundle: Bundle) -> str:
    """Cache key of :func:`text_features` (bundle identity, captions)."""
    return _key("text", captions, {"bundle": fingerprint(bundle)}, fingerprint="bundle")


def text_features(captions: Sequence[str], cache_dir: Path, *, bundle: Bundle, batch_size: int = 64,
                  progress: bool = True) -> np.ndarray:
    """The bundle's caption embeddings ``(M, F) float32`` (cached), tokenised by the bundle's
    tokenizer at its ``max_tokens`` (longer captions truncated, as at serve time) and
    embedded by :meth:`Bundle.encode_texts_by_length`.

    Raises:
        jointembed_pg.errors.ItemError: an empty caption or one of unknown word pieces only.
    """
    out = Path(cache_dir) / f"txt_bundle_{text_key(captions, bundle)}.npy"

    def compute() -> np.ndarray:
        chunk = batch_size * 16
        feats = np.zeros((len(captions), bundle.dim), np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TruncationWarning: truncation is the runtime's rule too
            for lo in tqdm(range(0, len(captions), chunk), desc="bundle text features", disable=not progress):
                feats[lo:lo + chunk] = bundle.encode_texts_by_length(list(captions[lo:lo + chunk]),
                                                                     batch_size=batch_size)
        return feats

    return _cached(out, compute)
