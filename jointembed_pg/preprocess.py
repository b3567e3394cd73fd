"""Image decoding and preprocessing: small pure functions, shared by training and runtime.

The training pipeline (``training/``) caches backbone features from exactly these
functions, and the runtime feeds the ONNX image encoder from them, so the vector stored in
Postgres sees the same pixels that training saw. The rule is recorded in each bundle's
``manifest.json`` (``preprocess.image``) and read back into an :class:`ImageSpec`.

Pipeline (immich-style, each step a function):
``decode`` (Pillow, EXIF orientation, RGB) -> ``resize_shorter`` (bicubic) ->
``center_crop`` -> ``to_array`` ((3, S, S) float32, ``(x/255 - mean) / std``).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

#: Largest image accepted, in pixels (width * height). Larger headers are refused before
#: decoding (decompression-bomb guard).
MAX_PIXELS = 100_000_000

#: JPEGs above this many pixels are decoded at 1/8 scale (far above any encoder input).
_DRAFT_PIXELS = 4096 * 4096

#: Largest encoded file accepted, in bytes.
MAX_FILE_BYTES = 64 * 1024 * 1024

# EfficientNet-Lite was trained on (x - 127) / 128 in pixel units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes the encoder's input tensor.

    Attributes:
        size: side S of the square input, in pixels.
        resize: ``"shorter_side"``: scale so the shorter side equals ``size``, keeping aspect.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (Pillow filters).
        crop: ``"center"``: central ``size`` x ``size`` crop after resizing.
        mean, std: per-channel RGB normalisation on ``[0, 1]`` values.
    """

    size: int = 224
    resize: str = "shorter_side"
    interpolation: str = "bicubic"
    crop: str = "center"
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    layout: str = field(default="NCHW")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this spec (JSON-serialisable)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
        """Build from a manifest's ``preprocess.image``; raises ValueError on unknown rules."""
        spec = cls(
            size=int(d["size"]),
            resize=d.get("resize", "shorter_side"),
            interpolation=d.get("interpolation", "bicubic"),
            crop=d.get("crop", "center"),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            layout=d.get("layout", "NCHW"),
        )
        if spec.resize != "shorter_side" or spec.crop != "center" or spec.layout != "NCHW":
            raise ValueError(f"unsupported preprocessing rule: {d}")
        if spec.interpolation not in _RESAMPLE:
            raise ValueError(f"unsupported interpolation {spec.interpolation!r}")
        return spec


def decode(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode an image file or bytes into an upright RGB Pillow image.

    Applies the EXIF orientation tag, converts any mode (CMYK, palette with transparency,
    16-bit, greyscale) to RGB and takes the first frame of animations. JPEGs are decoded
    at a reduced scale (``draft``) when far larger than needed, bounding memory.

    Raises:
        InputError: missing path, a directory, an empty or oversized file, an unreadable
            or truncated image, or more than ``max_pixels`` pixels (decompression bomb).
    """
    name = name or "<bytes>"
    if not isinstance(source, (bytes, bytearray, memoryview)):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise InputError(f"{name}: no such file")
        if path.is_dir():
            raise InputError(f"{name}: is a directory, not an image file")
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"{name}: empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise InputError(f"{name}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        data = path.read_bytes()
    else:
        data = bytes(source)
        if not data:
            raise InputError(f"{name}: empty image data (0 bytes)")
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS (checked below) is the limit, not Pillow's lower default warning level
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"{name}: {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit")
            if img.format == "JPEG" and w * h > _DRAFT_PIXELS:
                img.draft("RGB", (w // 8, h // 8))  # DCT-domain downscale: bounded memory
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InputError:
        raise
    except UnidentifiedImageError as e:
        raise InputError(f"{name}: not a readable image (unknown or unsupported format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: not a readable image ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: corrupt or truncated image ({e})") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Scale ``img`` so its shorter side is ``size`` pixels, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, _RESAMPLE[interpolation], reducing_gap=3.0 if scale < 0.5 else None)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central ``size`` x ``size`` crop of an image at least that large in both sides."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> ``(3, H, W) float32`` array, ``(x / 255 - mean) / std`` per channel."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """Decoded RGB image -> encoder input ``(3, S, S) float32`` as ``spec`` says."""
    img = resize_shorter(img, spec.size, spec.interpolation)
    return to_array(center_crop(img, spec.size), spec.mean, spec.std)


def load(source: str | Path | bytes, spec: ImageSpec = ImageSpec(), *, name: str | None = None) -> np.ndarray:
    """``decode`` then ``preprocess``: a file or bytes -> ``(3, S, S) float32``.

    Raises:
        InputError: as :func:`decode`.
    """
    return preprocess(decode(source, name=name), spec)
