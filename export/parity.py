"""Parity: the exported ONNX encoders (run by the runtime) against the PyTorch encoders.

Both sides get identical inputs: pixels from :func:`jointembed_pg.model.preprocess.load` (the
runtime's own preprocessing) and token ids from the bundle's tokenizer. Real Flickr8K test
images and captions are used when a data directory is given, otherwise a few synthetic
inputs. Any difference above ``atol`` fails the export.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jointembed_pg.model.bundle import Bundle
from jointembed_pg.model.preprocess import ImageSpec, load as load_image

from . import ExportError
from .data import is_flickr8k, load_split

#: Largest accepted |onnx - torch| per embedding entry for fp32 bundles.
PARITY_ATOL = 1e-4
#: A caption over 128 tokens: exercises truncation and the longest sequence.
LONG_CAPTION = " ".join(["a brown dog runs across the green grass after a red ball"] * 16)
_SYNTHETIC_CAPTIONS = ["a dog", "Two children play on the beach near the water .",
                       "a man in a red jacket climbs a snowy mountain", "street"]


@dataclass(frozen=True)
class ParityInputs:
    """``pixels (N,3,S,S) float32``, captions, and where they came from."""

    pixels: np.ndarray
    texts: list[str]
    source: str


def load_pixels(paths: list[Path], spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """Images -> ``(N,3,S,S) float32`` through the runtime's preprocessing (the exporter's path)."""
    return np.stack([load_image(p, spec) for p in paths]).astype(np.float32)


def parity_inputs(data_dir: Path | None, spec: ImageSpec = ImageSpec(), *, n_images: int = 8,
                  n_captions: int = 24) -> ParityInputs:
    """Flickr8K test images/captions from ``data_dir`` if it is one, else synthetic inputs."""
    if is_flickr8k(data_dir):
        split = load_split(Path(data_dir), "test", limit=n_images)
        texts = split.captions[:n_captions] + [LONG_CAPTION]
        return ParityInputs(load_pixels(split.images, spec), texts, f"flickr8k test ({data_dir})")
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1.0, 1.0, (4, 3, spec.size, spec.size)).astype(np.float32)
    return ParityInputs(pixels, _SYNTHETIC_CAPTIONS + [LONG_CAPTION], "synthetic")


@torch.no_grad()
def torch_image(encoder: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """PyTorch image embeddings ``(N,D) float32`` of ``pixels (N,3,S,S) float32``."""
    return encoder.eval()(torch.from_numpy(np.ascontiguousarray(pixels))).float().numpy()


@torch.no_grad()
def torch_text(encoder: nn.Module, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PyTorch caption embeddings ``(N,D) float32`` of ``(N,L) int64`` ids and mask."""
    return encoder.eval()(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()


def compare(image_encoder: nn.Module, text_encoder: nn.Module, bundle: Bundle,
            inputs: ParityInputs) -> dict:
    """Max |onnx - torch| for each encoder on ``inputs`` (no threshold applied)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LONG_CAPTION is truncated on purpose
        ids, mask = bundle.tokenizer.encode(inputs.texts)
        onnx_txt = bundle.encode_texts(inputs.texts, batch_size=len(inputs.texts))
    onnx_img = bundle.encode_pixels(inputs.pixels)
    img_diff = float(np.abs(onnx_img - torch_image(image_encoder, inputs.pixels)).max())
    txt_diff = float(np.abs(onnx_txt - torch_text(text_encoder, ids, mask)).max())
    return {"image_max_abs_diff": img_diff, "text_max_abs_diff": txt_diff,
            "n_images": int(len(inputs.pixels)), "n_captions": len(inputs.texts),
            "max_sequence": int(ids.shape[1]), "inputs": inputs.source}


def check(image_encoder: nn.Module, text_encoder: nn.Module, bundle: Bundle, inputs: ParityInputs,
          atol: float = PARITY_ATOL) -> dict:
    """:func:`compare`, then fail loudly if either encoder differs by more than ``atol``.

    Returns:
        The report of :func:`compare` plus ``atol``.

    Raises:
        ExportError: naming the encoder and the measured difference.
    """
    report = compare(image_encoder, text_encoder, bundle, inputs) | {"atol": atol}
    for enc in ("image", "text"):
        if not report[f"{enc}_max_abs_diff"] <= atol:  # also catches NaN
            raise ExportError(f"{enc}.onnx differs from PyTorch by {report[f'{enc}_max_abs_diff']:.3g} "
                              f"> {atol:g} on {report['inputs']}")
    return report
