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
import math
from numbers import Real
from os import PathLike
from struct import error as struct_error
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .. import files
from ..errors import InputError
from ..limits import MAX_FILE_BYTES, MAX_PIXELS, Limits  # noqa: F401 (re-exported)

#: JPEGs above this many pixels are decoded at 1/8 scale (far above any encoder input).
_DRAFT_PIXELS = 4096 * 4096

#: Formats Pillow can open that are never decoded: EPS/PS run Ghostscript, MPEG has no
#: decoder. Stub plugins (BUFR, GRIB, HDF5, WMF: no decoder without a handler) are left
#: out by :func:`decodable_formats` too.
_REFUSED_FORMATS = frozenset({"EPS", "MPEG"})

#: Rows per strip when converting large images (bounds temporary memory).
_STRIP_PIXELS = 1 << 20

# EfficientNet-Lite was trained on (x - 127) / 128 in pixel units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
#: ``ImageSpec.resize`` rules (see :class:`ImageSpec`).
RESIZE_MODES = ("shorter_side", "shortest", "squash")
#: ``ImageSpec.crop`` rules.
CROP_MODES = ("center", "center_round")
#: Largest encoder input side accepted from a manifest, pixels: a (3, S, S) float32 input
#: is 12 * S^2 bytes (200 MB at 4096), decoded and resized per image.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes the encoder's input tensor.

    Attributes:
        size: side S of the square input, in pixels.
        resize: ``"shorter_side"``: scale so the shorter side equals ``size``, keeping aspect
            (our own models); ``"shortest"``: the same as torchvision's ``Resize(size)`` +
            ``CenterCrop(size)`` (longer side truncated, not rounded; crop offset rounded
            half-to-even; no Pillow ``reducing_gap``), as open_clip and CLIP preprocess;
            ``"squash"``: ``size`` x ``size`` ignoring aspect, as SigLIP (no crop).
            The last two need manifest schema 2.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (Pillow filters).
        crop: ``"center"``: central ``size`` x ``size`` crop after resizing, offsets rounded
            down (ours, transformers' image processors); ``"center_round"``: offsets
            rounded half-to-even, as torchvision's ``CenterCrop`` (schema 2).
        mean, std: per-channel RGB normalisation on ``[0, 1]`` values.

    Raises:
        ValueError: ``size`` is not an int in ``1..MAX_IMAGE_SIZE``, or ``mean`` / ``std``
            are not three finite numbers (``std`` > 0): a manifest that would make every
            image fail (a division by zero, NaN pixels, a shape error) or exhaust memory.
    """

    size: int = 224
    resize: str = "shorter_side"
    interpolation: str = "bicubic"
    crop: str = "center"
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    layout: str = field(default="NCHW")

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_IMAGE_SIZE:
            raise ValueError(f"size must be an integer in 1..{MAX_IMAGE_SIZE}, got {self.size!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if (not isinstance(v, (tuple, list)) or len(v) != 3
                    or not all(isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
                raise ValueError(f"{name} must be three finite numbers (R, G, B), got {v!r}")
        if not all(x > 0 for x in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this spec (JSON-serialisable)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
        """Build from a manifest's ``preprocess.image``; raises ValueError on unknown rules."""
        def rgb(name):
            v = d[name]
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, Real) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{name} must be three finite numbers (R, G, B), got {v!r}")
            return tuple(float(x) for x in v)

        spec = cls(
            size=d["size"],  # an int, not "224" nor 224.7 (checked by __post_init__)
            resize=d.get("resize", "shorter_side"),
            interpolation=d.get("interpolation", "bicubic"),
            crop=d.get("crop", "center"),
            mean=rgb("mean"),  # type: ignore[arg-type]
            std=rgb("std"),  # type: ignore[arg-type]
            layout=d.get("layout", "NCHW"),
        )
        if spec.resize not in RESIZE_MODES or spec.crop not in CROP_MODES or spec.layout != "NCHW":
            raise ValueError(f"unsupported preprocessing rule: {d}")
        if spec.interpolation not in _RESAMPLE:
            raise ValueError(f"unsupported interpolation {spec.interpolation!r}")
        return spec


def decodable_formats() -> tuple[str, ...]:
    """Pillow formats :func:`decode` opens: every format Pillow can load, minus
    :data:`_REFUSED_FORMATS` and stub plugins. The folder scan of ``index image``
    (:func:`jointembed_pg.ingest.readers.image_extensions`) takes its extensions from the same list."""
    Image.init()
    return tuple(sorted(f for f, (cls, _accept) in Image.OPEN.items()
                        if f not in _REFUSED_FORMATS
                        and not (isinstance(cls, type) and issubclass(cls, ImageFile.StubImageFile))))


def decode(source: str | Path | bytes, *, max_pixels: int | None = None, name: str | None = None,
           limits: Limits | None = None) -> Image.Image:
    """Decode an image file or bytes into an upright RGB Pillow image, within ``limits``.

    Applies the EXIF orientation tag, converts any mode (CMYK, palette with transparency,
    16-bit, greyscale) to RGB and takes the first frame of animations. Memory is bounded
    before decoding: a path must be a regular file of at most ``limits.max_file_bytes``
    (:func:`jointembed_pg.files.read_regular`), and the header's width x height at most
    ``max_pixels`` (default ``limits.max_pixels``); JPEGs far larger than needed are
    decoded at 1/8 scale (``draft``). At most two full-size copies are alive at once
    (4 bytes per pixel each for RGB/RGBA).

    Raises:
        InputError: missing path, not a regular file, an empty or oversized file, an
            unreadable or truncated image, a format that is not decoded (EPS), or more
            than ``max_pixels`` pixels (decompression bomb).
    """
    limits = limits or Limits.from_env()
    max_pixels = limits.max_pixels if max_pixels is None else max_pixels
    name = name or "<bytes>"
    if not isinstance(source, (bytes, bytearray, memoryview)):
        if not isinstance(source, (str, PathLike)):  # an int would be taken as a file descriptor
            raise TypeError(f"expected a path or bytes, got {type(source).__name__}")
        name = str(source)
        data = files.read_regular(source, limits.max_file_bytes, name)
    else:
        data = bytes(source)
        if not data:
            raise InputError(f"{name}: empty image data (0 bytes)")
        if len(data) > limits.max_file_bytes:
            raise InputError(f"{name}: {len(data)} bytes, over the {limits.max_file_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            # Pillow's own check (Image.MAX_IMAGE_PIXELS; decoder processes set it to
            # max_pixels) also guards frames inside containers (ICO, ICNS): an error here
            pillow_cap = Image.MAX_IMAGE_PIXELS
            warnings.simplefilter("error" if pillow_cap and pillow_cap >= max_pixels else "ignore",
                                  Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=decodable_formats())
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"{name}: {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit "
                                 f"(decompression bomb guard; not decoded)")
            if img.format == "JPEG" and w * h > _DRAFT_PIXELS:
                img.draft("RGB", (w // 8, h // 8))  # DCT-domain downscale: bounded memory
            img.seek(0)
            img.load()
            if img.width * img.height > max_pixels:  # a container whose frame outgrew its header
                raise InputError(f"{name}: decoded to {img.width}x{img.height} pixels, over the "
                                 f"{max_pixels}-pixel limit")
            ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
            return _to_rgb(img)
    except InputError:
        raise
    except UnidentifiedImageError as e:
        raise InputError(f"{name}: not a readable image (unknown or unsupported format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: over the {max_pixels}-pixel limit ({e})") from e
    except MemoryError as e:
        raise InputError(f"{name}: out of memory while decoding (image too large for the decoder's limit)") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            struct_error, ZeroDivisionError, OverflowError) as e:
        raise InputError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from e


def _strips(img: Image.Image):
    """Boxes ``(0, y0, w, y1)`` covering ``img`` in strips of about ``_STRIP_PIXELS``."""
    rows = max(1, _STRIP_PIXELS // max(1, img.width))
    for y0 in range(0, img.height, rows):
        yield (0, y0, img.width, min(img.height, y0 + rows))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white.

    Pixel for pixel the same as converting the whole image at once; large images are
    converted in strips so that at most the source and the result are alive in full.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        hi = 255.0
        for box in _strips(img):
            if np.asarray(img.crop(box)).max(initial=0) > 255:
                hi = 65535.0
                break
        out = np.empty((img.height, img.width), np.uint8)
        for box in _strips(img):
            arr = np.asarray(img.crop(box), dtype=np.float64)
            out[box[1]:box[3]] = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(out, "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        out_img = Image.new("RGB", img.size)
        for box in _strips(img):
            rgba = img.crop(box).convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out_img.paste(Image.alpha_composite(background, rgba).convert("RGB"), box[:2])
        return out_img
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


def resize_shortest_torchvision(img: Image.Image, size: int, interpolation: str = "bicubic",
                                crop: str = "center_round") -> Image.Image:
    """torchvision ``Resize(size)`` then ``CenterCrop(size)`` on a PIL image, pixel for pixel.

    Formulas of torchvision 0.2x ``transforms.functional._compute_resized_output_size``
    (shorter side -> ``size``, longer -> ``int(size * long / short)``, truncated) and
    ``center_crop`` (offsets ``int(round((w - size) / 2))``; with ``crop="center"`` floored,
    as transformers' ``center_crop``); Pillow ``resize`` without ``reducing_gap``, as both call it.
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    img = img.resize(new, _RESAMPLE[interpolation])
    if crop == "center_round":
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    else:
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def preprocess(img: Image.Image, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """Decoded RGB image -> encoder input ``(3, S, S) float32`` as ``spec`` says."""
    if spec.resize == "squash":
        return to_array(img.resize((spec.size, spec.size), _RESAMPLE[spec.interpolation]), spec.mean, spec.std)
    if spec.resize == "shortest":
        return to_array(resize_shortest_torchvision(img, spec.size, spec.interpolation, spec.crop), spec.mean, spec.std)
    img = resize_shorter(img, spec.size, spec.interpolation)
    return to_array(center_crop(img, spec.size), spec.mean, spec.std)


def load(source: str | Path | bytes, spec: ImageSpec = ImageSpec(), *, name: str | None = None,
         limits: Limits | None = None) -> np.ndarray:
    """``decode`` then ``preprocess``: a file or bytes -> ``(3, S, S) float32``.

    Raises:
        InputError: as :func:`decode`.
    """
    return preprocess(decode(source, name=name, limits=limits), spec)
