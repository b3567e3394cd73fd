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

#: Extra bytes per pixel a format's decoder holds besides the decoded image: libwebp
#: decodes into two RGBA canvases of its own (WebPAnimDecoder) and hands Pillow a third
#: copy as bytes (measured: a 6000x6000 lossless WebP peaks at ~590 MB).
_DECODER_PIXEL_BYTES = {"WEBP": 12}
#: MiB of a decoder process's memory limit kept for the interpreter (Python, numpy, Pillow:
#: ~30 MiB resident) and small buffers; the rest is what one image may cost.
_PROCESS_BASE_MB = 64

#: Largest intermediate of the full resize to the shorter side, pixels (16 MiB as RGB);
#: beyond it (an extreme aspect ratio: 448x40000 and up) only the centre region is resized.
_FULL_RESIZE_PIXELS = 4 << 20

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


def _read(source: str | Path | bytes, name: str | None, limits: Limits) -> tuple[bytes, str]:
    """The encoded bytes of ``source`` (a regular file or bytes, size-capped) and its name."""
    name = name or "<bytes>"
    if not isinstance(source, (bytes, bytearray, memoryview)):
        if not isinstance(source, (str, PathLike)):  # an int would be taken as a file descriptor
            raise TypeError(f"expected a path or bytes, got {type(source).__name__}")
        name = str(source)
        return files.read_regular(source, limits.max_file_bytes, name), name
    data = bytes(source)
    if not data:
        raise InputError(f"{name}: empty image data (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise InputError(f"{name}: {len(data)} bytes, over the {limits.max_file_bytes}-byte limit")
    return data, name


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel of ``mode``: 1 for ``1``/``L``/``P``, 2 for ``I;16*``,
    4 for every other mode (``RGB`` is stored as 4, like ``RGBA``, ``CMYK``, ``I``, ``F``)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def image_bytes(width: int, height: int, mode: str) -> int:
    """Bytes of one Pillow image of ``width`` x ``height`` in ``mode``: its pixels plus one
    8-byte row pointer per row (``ImagingNew``), which dominates for a 1-pixel-wide image."""
    return height * (8 + width * pixel_bytes(mode))


def decode_bytes(width: int, height: int, mode: str, fmt: str | None, *, converted: tuple[int, int] | None = None,
                 encoded: int = 0) -> int:
    """Upper estimate of the memory :func:`load` / :func:`decode` need for an image, bytes.

    From the header only (before decoding): the encoded bytes, the format decoder's own
    buffers (:data:`_DECODER_PIXEL_BYTES` per pixel, plus two raw rows of up to 8 bytes a
    pixel), the decoded image (:func:`image_bytes`), and the larger of a second copy of it
    (an EXIF rotation) and the 8-bit RGB copy of the ``converted`` region (``(w, h)``; the
    whole image when None; nothing when ``mode`` is already RGB).
    """
    decoded = image_bytes(width, height, mode)
    cw, ch = converted or (width, height)
    rgb = 0 if mode == "RGB" else image_bytes(cw, ch, "RGB")
    return (encoded + _DECODER_PIXEL_BYTES.get(fmt or "", 0) * width * height + 16 * width
            + decoded + max(decoded, rgb) + 4 * cw * ch)


def _budget(limits: Limits) -> int:
    """Bytes an image may cost (:func:`decode_bytes`): the decoder process's memory limit
    less what the interpreter itself holds (:data:`_PROCESS_BASE_MB`)."""
    return max(0, int(limits.memory_mb) - _PROCESS_BASE_MB) << 20


def _open(data: bytes, name: str, limits: Limits, max_pixels: int) -> Image.Image:
    """Open ``data`` and check its header (pixels; JPEG draft); not yet decoded."""
    img = Image.open(io.BytesIO(data), formats=decodable_formats())
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit "
                         f"(decompression bomb guard; not decoded)")
    if img.format == "JPEG" and w * h > _DRAFT_PIXELS:
        img.draft("RGB", (w // 8, h // 8))  # DCT-domain downscale: bounded memory
    return img


def _check_cost(img: Image.Image, name: str, limits: Limits, encoded: int,
                converted: tuple[int, int] | None = None) -> None:
    """Refuse, before decoding, an image whose :func:`decode_bytes` is over the budget."""
    w, h = img.size
    need = decode_bytes(w, h, img.mode, img.format, converted=converted, encoded=encoded)
    if need > _budget(limits):
        raise InputError(f"{name}: {w}x{h} {img.format or ''} {img.mode} image needs about {need >> 20} MiB to "
                         f"decode, over the decoder's {limits.memory_mb} MiB limit (JOINTEMBED_DECODE_MEMORY_MB); "
                         "not decoded")


def _guarded(name: str, max_pixels: int, fn):
    """Run ``fn()`` turning every decoder error into one :class:`InputError` line."""
    try:
        with warnings.catch_warnings():
            # Pillow's own check (Image.MAX_IMAGE_PIXELS; decoder processes set it to
            # max_pixels) also guards frames inside containers (ICO, ICNS): an error here
            pillow_cap = Image.MAX_IMAGE_PIXELS
            warnings.simplefilter("error" if pillow_cap and pillow_cap >= max_pixels else "ignore",
                                  Image.DecompressionBombWarning)
            return fn()
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
        raise InputError(f"{name}: corrupt or truncated image ({type(e).__name__}: {_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _finish_load(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Decode the first frame and make it upright (EXIF orientation), in its own mode."""
    img.seek(0)
    img.load()
    if img.width * img.height > max_pixels:  # a container whose frame outgrew its header
        raise InputError(f"{name}: decoded to {img.width}x{img.height} pixels, over the "
                         f"{max_pixels}-pixel limit")
    ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
    return img


def decode(source: str | Path | bytes, *, max_pixels: int | None = None, name: str | None = None,
           limits: Limits | None = None) -> Image.Image:
    """Decode an image file or bytes into an upright RGB Pillow image, within ``limits``.

    Applies the EXIF orientation tag, converts any mode (CMYK, palette with transparency,
    16-bit, greyscale) to RGB and takes the first frame of animations. Memory is bounded
    before decoding: a path must be a regular file of at most ``limits.max_file_bytes``
    (:func:`jointembed_pg.files.read_regular`), the header's width x height at most
    ``max_pixels`` (default ``limits.max_pixels``), and the memory the decode needs for
    that size, mode and format (:func:`decode_bytes`) within ``limits.memory_mb`` less the
    interpreter's share; JPEGs far larger than needed are decoded at 1/8 scale (``draft``).
    At most two full-size copies are alive at once.

    Runtime callers do not call this in their own process: they go through a decoder
    process (:mod:`jointembed_pg.ingest.sandbox`), whose memory is capped as well.

    Raises:
        InputError: missing path, not a regular file, an empty or oversized file, an
            unreadable or truncated image, a format that is not decoded (EPS), more
            than ``max_pixels`` pixels (decompression bomb), or more memory than allowed.
    """
    limits = limits or Limits.from_env()
    max_pixels = limits.max_pixels if max_pixels is None else max_pixels
    data, name = _read(source, name, limits)

    def run() -> Image.Image:
        img = _open(data, name, limits, max_pixels)
        _check_cost(img, name, limits, len(data))
        return _to_rgb(_finish_load(img, name, max_pixels))

    return _guarded(name, max_pixels, run)


def _strips(img: Image.Image):
    """Boxes ``(0, y0, w, y1)`` covering ``img`` in strips of about ``_STRIP_PIXELS``."""
    rows = max(1, _STRIP_PIXELS // max(1, img.width))
    for y0 in range(0, img.height, rows):
        yield (0, y0, img.width, min(img.height, y0 + rows))


def _sixteen_bit_top(img: Image.Image) -> float:
    """White of an ``I;16`` / ``I`` image: 255 when every value is <= 255, else 65535."""
    for box in _strips(img):
        if np.asarray(img.crop(box)).max(initial=0) > 255:
            return 65535.0
    return 255.0


def _to_rgb(img: Image.Image, hi: float | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white.

    Pixel for pixel the same as converting the whole image at once; large images are
    converted in strips so that at most the source and the result are alive in full.
    ``hi``: the white of a 16-bit image (:func:`_sixteen_bit_top` of the whole image,
    when ``img`` is a region of it).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        hi = _sixteen_bit_top(img) if hi is None else hi
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


def _resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """``(w', h')`` of :func:`resize_shorter`: the shorter side ``size``, aspect kept."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Scale ``img`` so its shorter side is ``size`` pixels, keeping the aspect ratio.

    The result has ``size`` x ``size * aspect`` pixels: for an extreme aspect ratio this is
    unbounded (a 200000x1 image would become 44.8M x 224); :func:`preprocess` resizes only
    the centre region instead.
    """
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    return img.resize(_resized_size(w, h, size), _RESAMPLE[interpolation],
                      reducing_gap=3.0 if scale < 0.5 else None)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central ``size`` x ``size`` crop of an image at least that large in both sides."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def center_box(w: int, h: int, size: int) -> tuple[float, float, float, float] | None:
    """The source region ``(x0, y0, x1, y1)`` (float pixels) that ``center_crop(resize_shorter(.))``
    shows, or None when that path reduces (shorter side over ``2 * size``: Pillow's
    ``reducing_gap`` then works on the whole image) or leaves the image as it is.

    Resizing this box to ``size`` x ``size`` (:func:`resize_center`) gives the pixels of
    ``center_crop(resize_shorter(img, size), size)`` without the ``size * aspect`` wide
    intermediate: Pillow places output pixel ``j`` at source ``x0 + (j + 0.5) * (x1 - x0) / size``
    with the filter support scaled by the same factor, as in the full resize (``w / w'``
    per axis), and clips the filter window at the image's, not the box's, edges. Measured
    against the full resize on real photos squeezed to extreme aspect ratios: within 2 of
    255 levels (float rounding of the box; ``tests/test_decode_sandbox.py``).
    """
    if min(w, h) == size or size / min(w, h) < 0.5:
        return None
    nw, nh = _resized_size(w, h, size)
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = w / nw, h / nh
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def _center_box_if_wide(w: int, h: int, size: int) -> tuple[float, float, float, float] | None:
    """:func:`center_box` when the full resize would hold over :data:`_FULL_RESIZE_PIXELS`
    (an extreme aspect ratio), else None: ordinary images take the full resize, bit for bit
    the pixels every bundle was trained and evaluated on."""
    box = center_box(w, h, size)
    if box is None:
        return None
    nw, nh = _resized_size(w, h, size)
    return box if nw * nh > _FULL_RESIZE_PIXELS else None


def _support_box(img_size: tuple[int, int], box: tuple[float, float, float, float], size: int,
                 interpolation: str) -> tuple[int, int, int, int]:
    """Integer region of the source that resizing ``box`` to ``size`` reads (the box and the
    filter's support around it, clipped to the image)."""
    support = {"bicubic": 2.0, "bilinear": 1.0}[interpolation] + 1.0  # +1: rounding of the window
    sx, sy = (box[2] - box[0]) / size, (box[3] - box[1]) / size
    return (max(0, math.floor(box[0] - support * max(sx, 1.0))), max(0, math.floor(box[1] - support * max(sy, 1.0))),
            min(img_size[0], math.ceil(box[2] + support * max(sx, 1.0))),
            min(img_size[1], math.ceil(box[3] + support * max(sy, 1.0))))


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


def resize_center(img: Image.Image, box: tuple[float, float, float, float], size: int,
                  interpolation: str = "bicubic", full: tuple[int, int] | None = None) -> Image.Image:
    """``img``'s region ``box`` (:func:`center_box`) resized to ``size`` x ``size``: the pixels
    of ``center_crop(resize_shorter(img, size), size)`` without its ``size * aspect`` wide
    intermediate (memory: a band of ``size`` x the box's rows plus the filter's support).

    Two explicit passes (each rounds and clips to 8 bits, so their order matters) in the
    order Pillow's full resize takes: horizontal first, unless the height shrinks by more
    than twice as many pixels as the width does (Pillow >= 12.2 then goes vertical first; the
    full resize is ``w x h -> w' x h'``; ``full``: ``(w, h)`` when ``img`` is a region cut
    from the whole image, default ``img.size``).
    """
    resample = _RESAMPLE[interpolation]
    w, h = full or img.size
    nw, nh = _resized_size(w, h, size)
    x0, y0, x1, y1 = _support_box(img.size, box, size, interpolation)
    if nh < h and h - nh > 2 * (w - nw):  # vertical first
        band = img.resize((x1 - x0, size), resample, box=(x0, box[1], x1, box[3]))
        return band.resize((size, size), resample, box=(box[0] - x0, 0, box[2] - x0, size))
    band = img.resize((size, y1 - y0), resample, box=(box[0], y0, box[2], y1))
    return band.resize((size, size), resample, box=(0, box[1] - y0, size, box[3] - y0))


def preprocess(img: Image.Image, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """Decoded RGB image -> encoder input ``(3, S, S) float32`` as ``spec`` says.

    ``center_crop(resize_shorter(img))``; when that would enlarge or keep the shorter side
    up to ``2 S``, only the centre region is resized (:func:`resize_center`: the same
    pixels, no ``S * aspect`` wide intermediate, so a 200000x1 image costs ``S x S``, not
    44.8M x S).
    """
    if spec.resize == "squash":
        return to_array(img.resize((spec.size, spec.size), _RESAMPLE[spec.interpolation]), spec.mean, spec.std)
    if spec.resize == "shortest":
        return to_array(resize_shortest_torchvision(img, spec.size, spec.interpolation, spec.crop), spec.mean, spec.std)
    box = _center_box_if_wide(img.width, img.height, spec.size)
    if box is not None:
        return to_array(resize_center(img, box, spec.size, spec.interpolation), spec.mean, spec.std)
    img = resize_shorter(img, spec.size, spec.interpolation)
    return to_array(center_crop(img, spec.size), spec.mean, spec.std)


def load(source: str | Path | bytes, spec: ImageSpec = ImageSpec(), *, name: str | None = None,
         limits: Limits | None = None) -> np.ndarray:
    """``decode`` then ``preprocess``: a file or bytes -> ``(3, S, S) float32``, bounded.

    The same pixels as ``preprocess(decode(source), spec)``, with less memory: when only a
    centre region is resized (:func:`center_box`), only that region (and the filter's
    support around it) is converted to RGB, so an extreme aspect ratio costs its decoded
    image plus an ``S x S``-sized region. The memory needed (:func:`decode_bytes`) is
    checked against ``limits.memory_mb`` before decoding.

    Raises:
        InputError: as :func:`decode`.
    """
    limits = limits or Limits.from_env()
    max_pixels = limits.max_pixels
    data, name = _read(source, name, limits)

    def run() -> np.ndarray:
        img = _open(data, name, limits, max_pixels)
        w, h = img.size  # EXIF may swap them: the region estimate takes the larger square
        region = min(w, h) + 16
        # the centre-region shortcut holds for our own rule only (imported models' torchvision
        # rules resize the whole image; the decoder's memory cap still bounds them)
        own_rule = spec.resize == "shorter_side"
        _check_cost(img, name, limits, len(data), converted=None if not own_rule or _center_box_if_wide(w, h, spec.size) is None
                    else (min(w, region), min(h, region)))
        img = _finish_load(img, name, max_pixels)
        full = img.size
        box = _center_box_if_wide(*full, spec.size) if own_rule else None
        if box is None or img.mode == "RGB":
            return preprocess(_to_rgb(img), spec)
        region_box = _support_box(img.size, box, spec.size, spec.interpolation)
        hi = _sixteen_bit_top(img) if img.mode in ("I;16", "I;16B", "I;16L", "I") else None
        part = _to_rgb(img.crop(region_box), hi)
        del img
        x0, y0 = region_box[0], region_box[1]
        shifted = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        return to_array(resize_center(part, shifted, spec.size, spec.interpolation, full), spec.mean, spec.std)

    return _guarded(name, max_pixels, run)
