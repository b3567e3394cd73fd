"""The int8 sibling of an imported bundle (``<name>-int8``): static or dynamic, chosen per tower.

* **Transformer towers** (ViT image towers, every text tower): dynamic quantisation
  (int8 per-channel weights of every MatMul, activations quantised per batch at run
  time), as before.
* **Convolutional image towers** (open_clip's ModifiedResNet ``RN*``, ConvNeXt,
  MobileCLIP's FastViT): dynamic quantisation leaves convolutions fp32 (onnxruntime's
  dynamic path quantises MatMul/Gemm, and ConvInteger is slow and inaccurate on CPU), so
  these get *static* QDQ quantisation: int8 per-channel weights, uint8 activations whose
  ranges (MinMax) are calibrated on real images put through the runtime's own
  preprocessing (the fp32 bundle's manifest rules, decoded in the runtime's decoder
  sandbox). Which ops: ``Conv`` only (:data:`STATIC_OP_TYPES`); attention/MLP MatMuls
  inside such a tower stay fp32.

"Convolutional" (:func:`is_conv_tower`): the graph has more ``Conv`` nodes than
``MatMul`` + ``Gemm`` nodes (a ViT has one Conv, its patch embedding; a ResNet or FastViT
has tens). The manifest's ``int8`` block records the method per tower and the
calibration images used, and the agreement with fp32 (cosine per probe image / text).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ExportError

log = logging.getLogger(__name__)

#: Recorded in the manifest (``int8.method``) and hashed into the model id.
DYNAMIC = "dynamic-per-channel-int8-matmul"
STATIC = "static-qdq-minmax-per-channel-int8-conv"
#: Op types quantised statically in a convolutional image tower.
STATIC_OP_TYPES = ("Conv",)
#: Calibration images used by default (the first N of the calibration folder / Flickr8K train).
CALIBRATION_IMAGES = 64
#: Image file suffixes read from a calibration folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def op_counts(path: Path) -> dict[str, int]:
    """``{op_type: count}`` of the nodes of the ONNX graph at ``path`` (weights not loaded)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def is_conv_tower(path: Path) -> bool:
    """Whether the graph at ``path`` has more ``Conv`` than ``MatMul`` + ``Gemm`` nodes."""
    c = op_counts(path)
    return c.get("Conv", 0) > c.get("MatMul", 0) + c.get("Gemm", 0)


def calibration_images(data_dir: Path | None, calibration_dir: Path | None,
                       n: int = CALIBRATION_IMAGES) -> tuple[list[Path], str]:
    """The first ``n`` images (sorted names) of ``calibration_dir``, else of Flickr8K *train*.

    Returns:
        ``(paths, description)`` (the description goes into the manifest).

    Raises:
        ExportError: neither is given / usable, or the folder holds no image.
    """
    from .data import is_flickr8k, load_split

    if n < 1:
        raise ExportError(f"calibration needs at least 1 image, got {n}")
    if calibration_dir is not None:
        d = Path(calibration_dir)
        if not d.is_dir():
            raise ExportError(f"calibration folder {d}: not a directory")
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_symlink()
                       and p.is_file())[:n]
        if not found:
            raise ExportError(f"calibration folder {d}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return found, f"{len(found)} images of {d.name}/"
    if is_flickr8k(data_dir):
        images = list(load_split(Path(data_dir), "train", limit=n).images)
        return images, f"{len(images)} Flickr8K train images"
    raise ExportError("static int8 of a convolutional image tower needs calibration images: "
                      "give --calibration-dir DIR (a folder of photos like the ones you will index) "
                      "or a Flickr8K-layout --data-dir")


def load_calibration(bundle, images: Sequence[Path]) -> np.ndarray:
    """``(N, 3, S, S) float32`` pixels of ``images`` by the runtime's own preprocessing
    (``bundle.load_pixels``: the manifest's rules, decoded in the decoder sandbox); an
    image that cannot be read is skipped with a warning.

    Raises:
        ExportError: none of them could be read.
    """
    from jointembed_pg.errors import ItemError

    rows = []
    for p in images:
        try:
            rows.append(bundle.load_pixels([p])[0])
        except ItemError as e:
            log.warning("calibration image skipped: %s", e.reason)
    if not rows:
        raise ExportError(f"none of the {len(images)} calibration images could be read")
    return np.stack(rows)


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over ``(N,3,S,S) float32`` pixels, 8 at a time."""

    def __init__(self, pixels: np.ndarray):
        self._it = iter([{"pixels": pixels[i:i + 8]} for i in range(0, len(pixels), 8)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax; onnxruntime's protocol has it
        raise NotImplementedError


def quantize_static_conv(src: Path, dst: Path, pixels: np.ndarray) -> None:
    """Static QDQ int8 copy of the image graph ``src`` (Conv only), calibrated on ``pixels``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre))
    except Exception:  # symbolic shape inference fails on some graphs; ONNX shape inference suffices
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(str(pre), str(dst), _Reader(pixels), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(STATIC_OP_TYPES), calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)


def quantize_dynamic_matmul(src: Path, dst: Path) -> None:
    """Dynamic int8 copy (per-channel weights of every MatMul) of the graph ``src``; a source
    with external data (over 2 GiB) is written with external data too (int8 is ~1/4 the
    size: :func:`~jointembed_export.external_data.finalize_graph` inlines it when it fits)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .external_data import external_locations

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=bool(external_locations(src)))


def quantize_bundle(fp32_dir: Path, out_dir: Path, imp=None, *, data_dir: Path | None = None,
                    calibration_dir: Path | None = None, calibration_n: int = CALIBRATION_IMAGES,
                    force: bool = False, external_threshold: int | None = None) -> Path:
    """int8 copy of an imported fp32 bundle (method per tower: module docstring), with its
    agreement with fp32 recorded in the manifest's ``int8`` block.

    Args:
        fp32_dir: the imported fp32 bundle.
        out_dir: where the int8 bundle goes.
        imp: unused (kept for callers that pass the loaded model).
        data_dir: Flickr8K-layout folder: probe images/captions, and calibration images
            (train split) when ``calibration_dir`` is not given.
        calibration_dir: a folder of images to calibrate a convolutional image tower on.
        calibration_n: how many calibration images (the first, by name).
        external_threshold: see :func:`jointembed_export.external_data.finalize_graph`.

    Raises:
        ExportError: ``out_dir`` exists without ``force``, no calibration images for a
            convolutional tower, or quantisation failed.
    """
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.model.manifest import IMAGE_ONNX, TEXT_ONNX, TOKENIZER

    from .external_data import finalize_graph
    from .import_common import ImportOptions, probe_images, probe_texts
    from .manifest import file_entries, write_manifest
    from .staging import staged_dir

    fp32 = Bundle.load(fp32_dir)
    methods = {"image": STATIC if is_conv_tower(fp32.path / IMAGE_ONNX) else DYNAMIC, "text": DYNAMIC}
    calib_note = None
    if methods["image"] == STATIC:
        images, calib_note = calibration_images(data_dir, calibration_dir, calibration_n)
        pixels = load_calibration(fp32, images)
        calib_note = f"{len(pixels)} of {calib_note}" if len(pixels) < len(images) else calib_note
    method = f"image:{methods['image']};text:{methods['text']}"
    options = ImportOptions(precision="int8", int8_method=method)
    with staged_dir(Path(out_dir), force=force) as tmp:
        work = tmp / ".work"
        work.mkdir()
        for kind, name in (("image", IMAGE_ONNX), ("text", TEXT_ONNX)):
            part = work / name
            try:
                if methods[kind] == STATIC:
                    quantize_static_conv(fp32.path / name, part, pixels)
                else:
                    quantize_dynamic_matmul(fp32.path / name, part)
            except Exception as e:  # onnxruntime.quantization raises many types
                raise ExportError(f"int8 quantisation ({methods[kind]}) of {name} failed: {e}") from e
            finalize_graph(part, tmp / name, threshold=external_threshold)
        shutil.copyfile(fp32.path / TOKENIZER, tmp / TOKENIZER)
        src = fp32.meta
        key = json.dumps({"fp32": src.model_id, "opts": asdict(options), "calib": calib_note}, sort_keys=True)
        m = replace(src, precision="int8", model_id="je-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                    files=file_entries(tmp), export={**src.export, "options": asdict(options)},
                    extra={k: v for k, v in src.extra.items() if k not in ("parity", "int8")})
        write_manifest(tmp, m)
        int8 = Bundle.load(tmp)
        images, texts = probe_images(data_dir, work), probe_texts(data_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = {"image": (fp32.encode_images(images), int8.encode_images(images)),
                     "text": (fp32.encode_texts(texts), int8.encode_texts(texts))}
        shutil.rmtree(work)
        info = {"method": method, "image_method": methods["image"], "text_method": methods["text"],
                "calibration": calib_note}
        for enc, (a, b) in pairs.items():
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            info[f"{enc}_min_cosine_vs_fp32"] = float(cos.min())
            info[f"{enc}_mean_cosine_vs_fp32"] = float(cos.mean())
        write_manifest(tmp, replace(m, extra={**m.extra, "int8": info}))
    return Path(out_dir)
