"""The int8 variant of a bundle (``<name>-int8``), and its retrieval cost in rsum.

Only the backbones are quantised; the projection heads, the soft quantizer (whose
softmax at ``tau_end`` amplifies small errors) and the L2 normalisation stay fp32:

* ``image.onnx``: static QDQ quantisation of EfficientNet-Lite0 (int8 per-channel weights,
  uint8 activations, MinMax ranges calibrated on Flickr8K *train* images). Dynamic
  quantisation of the convolutions was both slower than fp32 and inaccurate.
* ``text.onnx``: dynamic quantisation of MiniLM's MatMuls (int8 per-channel weights,
  activations quantised per batch at run time), except each layer's FFN output
  projection (``layer.N/output/dense``, 1536 -> 384), whose outlier activations cost most
  of the int8 loss: keeping those 6 fp32 took the text-side rsum loss from -3.3 to -0.7
  on Flickr8K test (VSE++ linear-head checkpoint).

The fp32 and int8 bundles are compared in memory on the Flickr8K test split (1,000
images, 5,000 captions, L2 ranking) with :func:`jointembed_pg.metrics.retrieval_metrics`.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from jointembed_pg.model.bundle import IMAGE_ONNX, TEXT_ONNX, TOKENIZER, Bundle
from jointembed_pg.metrics import retrieval_metrics

from . import ExportError
from .data import is_flickr8k, load_split
from .manifest import ExportOptions, file_entries, make_model_id, write_manifest
from .parity import load_pixels, parity_inputs
from .staging import staged_dir

#: Recorded in the manifest and hashed into the model id.
METHOD = "image:static-qdq-minmax-per-channel;text:dynamic-per-channel-ffn-out-fp32;backbones-only"
#: Train images used to calibrate activation ranges of the image backbone.
CALIBRATION_IMAGES = 64
#: Node-name prefix of backbone ops in graphs written by :mod:`jointembed_export.graphs`.
BACKBONE_PREFIX = "/encoder/backbone/"


def _non_backbone_nodes(path: Path) -> list[str]:
    """Names of the nodes outside the backbone (heads, quantizer, normalisation)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if not any(n.name.startswith(BACKBONE_PREFIX) for n in nodes):
        raise ExportError(f"{path}: no node named {BACKBONE_PREFIX}*; cannot tell backbone from head")
    return [n.name for n in nodes if not n.name.startswith(BACKBONE_PREFIX)]


def _ffn_output_nodes(path: Path) -> list[str]:
    """MatMuls of the BERT layers' FFN output projections (``layer.N/output/dense``)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type == "MatMul" and "/output/dense/" in n.name
            and "/attention/" not in n.name]


class _Calibration:
    """onnxruntime CalibrationDataReader over ``(N,3,S,S) float32`` pixels, 8 at a time."""

    def __init__(self, pixels: np.ndarray):
        self._it = iter([{"pixels": pixels[i:i + 8]} for i in range(0, len(pixels), 8)])

    def get_next(self):
        return next(self._it, None)


def quantize_image(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 copy of ``image.onnx``, calibrated on ``calibration (N,3,S,S) float32``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=_non_backbone_nodes(pre), calibrate_method=CalibrationMethod.MinMax)
    pre.unlink()


def quantize_text(src: Path, dst: Path) -> None:
    """Dynamic int8 (per-channel weights) copy of ``text.onnx``; heads and FFN outputs stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic fails on BERT's mask
    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=_non_backbone_nodes(pre) + _ffn_output_nodes(pre))
    pre.unlink()


def split_metrics(bundle: Bundle, data_dir: Path, chunk: int = 100) -> dict[str, float]:
    """Flickr8K test retrieval metrics (flat keys, ``rsum``) of ``bundle``, L2 ranking."""
    split = load_split(data_dir, "test")
    imgs = np.concatenate([bundle.encode_pixels(load_pixels(split.images[i:i + chunk], bundle.image_spec))
                           for i in range(0, len(split.images), chunk)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        caps = bundle.encode_texts(split.captions, batch_size=64)
    return retrieval_metrics(imgs, caps, split.caption_image_ids)


def deviation(fp32: Bundle, int8: Bundle, data_dir: Path | None) -> dict:
    """Max |int8 - fp32| and min cosine per encoder on the parity inputs."""
    inputs = parity_inputs(data_dir, fp32.image_spec)
    out = {"inputs": inputs.source}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = {"image": (fp32.encode_pixels(inputs.pixels), int8.encode_pixels(inputs.pixels)),
                 "text": (fp32.encode_texts(inputs.texts), int8.encode_texts(inputs.texts))}
    for enc, (a, b) in pairs.items():
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[f"{enc}_max_abs_diff_vs_fp32"] = float(np.abs(a - b).max())
        out[f"{enc}_min_cosine_vs_fp32"] = float(cos.min())
    return out


def build_int8_bundle(fp32_dir: Path, out_dir: Path, *, data_dir: Path | None, force: bool = False,
                      evaluate: bool = True) -> Path:
    """Quantise the fp32 bundle at ``fp32_dir`` into ``out_dir`` (precision ``"int8"``).

    Records ``int8`` = {method, calibration, fp32 and int8 test metrics, rsum delta} and the
    deviation from fp32 (in place of ``parity``) in the manifest.

    Raises:
        ExportError: ``data_dir`` is not Flickr8K-layout (needed for calibration), or
            ``out_dir`` exists and not ``force``.
    """
    if not is_flickr8k(data_dir):
        raise ExportError(f"int8 export needs a Flickr8K-layout --data-dir for calibration (got {data_dir})")
    fp32 = Bundle.load(fp32_dir)
    src = fp32.meta
    options = ExportOptions(opset=src.export["options"]["opset"], precision="int8", int8_method=METHOD)
    with staged_dir(out_dir, force=force) as tmp:
        calib = load_split(data_dir, "train", limit=CALIBRATION_IMAGES)
        quantize_image(fp32.path / IMAGE_ONNX, tmp / IMAGE_ONNX, load_pixels(calib.images, fp32.image_spec))
        quantize_text(fp32.path / TEXT_ONNX, tmp / TEXT_ONNX)
        shutil.copyfile(fp32.path / TOKENIZER, tmp / TOKENIZER)
        m = replace(src, precision="int8", model_id=make_model_id(src.source_checkpoint_sha256, options),
                    files=file_entries(tmp), export=src.export | {"options": asdict(options)},
                    extra={k: v for k, v in src.extra.items() if k != "parity"})
        write_manifest(tmp, m)
        int8 = Bundle.load(tmp)
        info = {"method": METHOD, "calibration": f"{CALIBRATION_IMAGES} Flickr8K train images"}
        if evaluate:
            info |= _compare_rsum(fp32, int8, data_dir)
        write_manifest(tmp, replace(m, extra=m.extra | {"int8_deviation": deviation(fp32, int8, data_dir),
                                                         "int8": info}))
    return Path(out_dir)


def _compare_rsum(fp32: Bundle, int8: Bundle, data_dir: Path) -> dict:
    a, b = split_metrics(fp32, data_dir), split_metrics(int8, data_dir)
    return {"test_fp32": a, "test_int8": b, "rsum_fp32": a["rsum"], "rsum_int8": b["rsum"],
            "rsum_delta": b["rsum"] - a["rsum"]}
