"""``import_model``: an :class:`~jointembed_export.imported.Imported` model -> a checked bundle.

Exports both towers to ONNX, writes the framework's tokenizer as ``tokenizer.json`` and a
schema-2 manifest, then checks the bundle against the framework's *own* pipeline (its image
transform, its tokenizer, its encoders, L2-normalised) on real images and varied
captions. A bundle that disagrees is never written (:class:`~jointembed_export.ExportError`).

int8 (:func:`jointembed_export.import_int8.quantize_bundle`): dynamic quantisation of
transformer towers, static (calibrated) QDQ quantisation of convolutional image towers.
A tower over protobuf's 2 GiB is written with one external data file
(:mod:`jointembed_export.external_data`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import warnings
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from . import ExportError
from .import_common import PROBE_TEXTS, ImportOptions, probe_images, probe_texts  # noqa: F401
from .imported import Imported, load

log = logging.getLogger(__name__)

#: Smallest cosine between the bundle's and the framework's embeddings accepted at import.
MIN_COSINE = 0.9999
#: Tokenizer agreement (share of texts with identical ids) accepted at import.
MIN_TOKEN_AGREEMENT = 0.995
#: The importer's own version (hashed into model ids).
IMPORT_VERSION = 1


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


def export_graphs(imp: Imported, out_dir: Path, opset: int = 17, *, external_threshold: int | None = None) -> None:
    """Write ``image.onnx`` and ``text.onnx`` for ``imp`` into ``out_dir``.

    The TorchScript exporter with PyTorch's fused attention fast path switched off (it has
    no ONNX export); fixed-length towers are traced at ``pad_to``. Each tower is exported
    into a work folder of its own, then :func:`~jointembed_export.external_data.finalize_graph`
    moves it into ``out_dir`` as one file, or with one ``<name>.data`` file when it is over
    ``external_threshold`` bytes (default: protobuf's 2 GiB less headroom).

    Raises:
        ExportError: the exporter failed.
    """
    import torch

    from .external_data import finalize_graph

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
            work = out_dir / f".export-{kind}"
            work.mkdir()
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    if dynamo:
                        _export_dynamo(graph.eval(), args, work / name, kind, opset)
                    else:  # over 2 GiB it writes one external file per tensor into `work`
                        torch.onnx.export(graph.eval(), args, str(work / name), dynamo=False,
                                          opset_version=opset, do_constant_folding=True,
                                          input_names=INPUTS[kind], output_names=OUTPUTS[kind], dynamic_axes=axes)
            except Exception as e:  # torch raises many types
                raise ExportError(f"ONNX export of the {kind} tower failed: {e}") from e
            finalize_graph(work / name, out_dir / name, threshold=external_threshold)
            shutil.rmtree(work)
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
    prog.save(str(tmp))  # external data of its own choosing when over 2 GiB
    model = onnx.load(str(tmp))
    for f in [tmp, *tmp.parent.glob(tmp.name + "*.data")]:
        f.unlink()
    (out,) = model.graph.output
    old, new = out.name, OUTPUTS[kind][0]
    names = {old: new, new: new + "__inner"}  # an inner value may already be called "embedding"
    for node in model.graph.node:
        node.output[:] = [names.get(o, o) for o in node.output]
        node.input[:] = [names.get(i, i) for i in node.input]
    for vi in model.graph.value_info:
        vi.name = names.get(vi.name, vi.name)
    out.name = new
    # always external here (a >2 GiB proto cannot be serialised); finalize_graph inlines it when small
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    onnx.checker.check_model(str(path))


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


def import_model(source: str | Path, out_dir: Path, *, arch: str | None = None, licence: str = "unknown",
                 data_dir: Path | None = None, force: bool = False, int8: bool = False,
                 calibration_dir: Path | None = None, calibration_n: int | None = None,
                 external_threshold: int | None = None) -> Path:
    """Import ``source`` as a bundle in ``out_dir`` (and ``<out_dir>-int8`` with ``int8``).

    Args:
        source, arch: see :func:`load`.
        licence: the weights' licence as the user states it (recorded, not checked).
        data_dir: Flickr8K-layout folder for the parity images and captions (synthetic if None).
        int8: also write the int8 sibling (:func:`jointembed_export.import_int8.quantize_bundle`:
            static calibration for a convolutional image tower, dynamic otherwise).
        calibration_dir, calibration_n: images to calibrate a convolutional image tower on
            (default: the first 64 Flickr8K train images of ``data_dir``).
        external_threshold: bytes above which a tower is written with external data
            (default: protobuf's 2 GiB less headroom; ``$JOINTEMBED_EXTERNAL_DATA_BYTES``, tests only).

    Raises:
        ExportError: loading, export, or the parity check failed (cosine < :data:`MIN_COSINE`
            or token agreement < :data:`MIN_TOKEN_AGREEMENT`); ``out_dir`` exists without ``force``.
    """
    from jointembed_pg.model.bundle import Bundle
    from jointembed_pg.model.manifest import TOKENIZER

    from .manifest import write_manifest
    from .staging import int8_dir, staged_dir

    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists (use --force to replace it)")
    imp = load(source, arch)
    with staged_dir(out_dir, force=force) as tmp:
        export_graphs(imp, tmp, external_threshold=external_threshold)
        (tmp / TOKENIZER).write_text(imp.tokenizer_json, encoding="utf-8")
        manifest = _manifest(imp, tmp, licence, ImportOptions())
        write_manifest(tmp, manifest)
        report = compare(imp, Bundle.load(tmp), probe_images(data_dir, tmp), probe_texts(data_dir))
        for f in tmp.glob("probe*.jpg"):
            f.unlink()
        if not (report["image_min_cosine"] >= MIN_COSINE and report["text_min_cosine"] >= MIN_COSINE
                and report["token_agreement"] >= MIN_TOKEN_AGREEMENT):
            raise ExportError(f"imported {source} disagrees with {imp.framework}'s own pipeline: {report}")
        write_manifest(tmp, replace(manifest, extra={**manifest.extra, "parity": report}))
        log.info("imported %s as %s: %s", source, manifest.model_id, report)
    if int8:
        from .import_int8 import CALIBRATION_IMAGES, quantize_bundle

        quantize_bundle(out_dir, int8_dir(out_dir), data_dir=data_dir, calibration_dir=calibration_dir,
                        calibration_n=calibration_n or CALIBRATION_IMAGES, force=force,
                        external_threshold=external_threshold)
    return out_dir


def _manifest(imp: Imported, bundle_dir: Path, licence: str, options: ImportOptions):
    import onnx
    import onnxruntime
    import torch

    from jointembed_pg.model.manifest import Manifest

    from .manifest import file_entries

    key = json.dumps({"w": imp.weights_sha256, "arch": imp.architecture, "opts": asdict(options),
                      "v": IMPORT_VERSION}, sort_keys=True)
    with torch.no_grad():
        dim = int(imp.image_fn(torch.zeros(1, 3, imp.spec.size, imp.spec.size)).shape[1])
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
