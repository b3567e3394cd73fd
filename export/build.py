"""Checkpoint -> model bundle: the export pipeline and its entry points.

``build_bundle`` loads a checkpoint through the training API (Contract 1), writes
``image.onnx``, ``text.onnx``, ``tokenizer.json`` and ``manifest.json`` into a staging
directory beside the target, checks ONNX-vs-PyTorch parity, and only then renames the
staging directory into place: a failed export never leaves a half-written bundle.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from jointembed_pg import paths
from jointembed_pg.model.bundle import (IMAGE_ONNX, TEXT_ONNX, TOKENIZER, Bundle, read_manifest, sha256_file,
                                        validate_manifest)
from jointembed_pg.errors import BundleError

from . import ExportError, graphs, parity
from .manifest import ExportOptions, make_manifest, make_model_id, write_manifest
from .staging import int8_dir, staged_dir

__all__ = ["build_bundle", "build_default_bundle", "bundle_is_current", "default_checkpoint", "int8_dir",
           "source_encoders", "staged_dir", "verify_parity"]

log = logging.getLogger(__name__)

def default_checkpoint() -> Path:
    """The committed checkpoint ``training/weights/default.pt``."""
    import jointembed_train

    return Path(jointembed_train.__file__).resolve().parent / "weights" / "default.pt"


def load_encoders(checkpoint: Path):
    """``(ckpt, image_encoder, text_encoder)`` from the training API, in eval mode."""
    from jointembed_train import checkpoint as ckpt_mod, encoders

    try:
        ckpt = ckpt_mod.load(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from e
    return ckpt, encoders.image_encoder(ckpt).eval(), encoders.text_encoder(ckpt).eval()


def build_bundle(checkpoint: Path, out_dir: Path, *, data_dir: Path | None = None,
                 options: ExportOptions = ExportOptions(), force: bool = False) -> Path:
    """Export ``checkpoint`` as an fp32 bundle in ``out_dir``; returns ``out_dir``.

    Args:
        checkpoint: a training checkpoint (``jointembed_train.checkpoint.load`` reads it).
        out_dir: bundle directory to create (replaced only if ``force``).
        data_dir: Flickr8K-layout directory for the parity inputs (synthetic if ``None``).

    Raises:
        ExportError: ``out_dir`` exists, ONNX export failed, or parity exceeds 1e-4.
    """
    from jointembed_train.backbones import tokenizer_path

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    with staged_dir(out_dir, force=force) as tmp:
        ckpt, image_enc, text_enc = load_encoders(checkpoint)
        spec = ckpt.config.image_spec()  # the backbone's input rule (224 Lite0, 260 Lite2)
        graphs.export_image(image_enc, tmp / IMAGE_ONNX, size=spec.size, opset=options.opset)
        graphs.export_text(text_enc, tmp / TEXT_ONNX, opset=options.opset)
        shutil.copyfile(tokenizer_path(), tmp / TOKENIZER)
        inputs = parity.parity_inputs(data_dir, spec)
        dim, normalized = _probe(image_enc, inputs.pixels[:2], ckpt.config_dict)
        manifest = make_manifest(checkpoint_sha256=sha256_file(checkpoint), options=options, bundle_dir=tmp,
                                 dim=dim, normalized=normalized, config=ckpt.config_dict,
                                 metrics=dict(ckpt.metrics), image_spec=spec)
        write_manifest(tmp, manifest)
        report = parity.check(image_enc, text_enc, Bundle.load(tmp), inputs)
        write_manifest(tmp, replace(manifest, extra={**manifest.extra, "parity": report}))
        log.info("exported %s: parity %s", manifest.model_id, report)
    return out_dir


def _probe(image_enc, pixels: np.ndarray, config: dict) -> tuple[int, bool]:
    """Embedding dim and whether rows are unit-norm, measured on the PyTorch encoder."""
    z = parity.torch_image(image_enc, pixels)
    normalized = bool(np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-4))
    said = config.get("normalize", config.get("l2_normalize"))
    if said is not None and bool(said) != normalized:
        raise ExportError(f"config says normalize={said} but the encoder's rows have norms "
                          f"{np.linalg.norm(z, axis=1)}")
    return int(z.shape[1]), normalized


def build_default_bundle(out_dir: Path | None = None, *, checkpoint: Path | None = None, int8: bool = False,
                         data_dir: Path | None = None, force: bool = False) -> Path:
    """Export the committed weights (or ``checkpoint``) into ``out_dir``.

    Defaults: ``out_dir = bundles_dir()/default``, parity on ``paths.default_data_dir()``.
    With ``int8`` also writes ``<out_dir>-int8`` (see :mod:`jointembed_export.int8`). Without
    ``force``, an existing fp32 bundle that is current for ``checkpoint`` is kept as is
    (so ``jointembed model build --int8`` after ``jointembed demo`` only adds the int8 one).

    Raises:
        ExportError: a bundle that is *not* current exists and ``force`` is false.
    """
    out_dir = Path(out_dir) if out_dir else paths.bundles_dir() / paths.DEFAULT_BUNDLE
    data_dir = data_dir if data_dir is not None else paths.default_data_dir()
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    if int8 and int8_dir(out_dir).exists() and not force:  # fail before the slow part
        raise ExportError(f"{int8_dir(out_dir)} already exists (use --force to replace it)")
    if force or not bundle_is_current(out_dir, checkpoint):
        build_bundle(checkpoint, out_dir, data_dir=data_dir, force=force)
    from .static_text import install_for_checkpoint

    install_for_checkpoint(out_dir)  # the committed SQL text encoder of this checkpoint (issue 25), if any
    if int8:
        from .int8 import build_int8_bundle

        build_int8_bundle(out_dir, int8_dir(out_dir), data_dir=data_dir, force=force)
    return out_dir


def bundle_is_current(bundle_dir: Path, checkpoint: Path | None = None,
                      options: ExportOptions = ExportOptions()) -> bool:
    """Whether ``bundle_dir`` is an intact bundle of ``checkpoint`` (default: committed)
    exported by this exporter version with ``options``. False if anything is missing."""
    try:
        checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        m = validate_manifest(read_manifest(Path(bundle_dir)), Path(bundle_dir), checksums=True)
        ckpt_sha = sha256_file(checkpoint)
    except (BundleError, OSError, ImportError):
        return False
    return m.source_checkpoint_sha256 == ckpt_sha and m.model_id == make_model_id(ckpt_sha, options)


def verify_parity(bundle_dir: Path, *, checkpoint: Path | None = None, data_dir: Path | None = None) -> dict:
    """Re-run parity of an existing bundle against the checkpoint it was exported from.

    fp32 bundles must match PyTorch within ``parity.PARITY_ATOL``; for int8 bundles the
    deviation is only reported (no threshold).

    Raises:
        ExportError: the checkpoint is not the bundle's source, or parity fails.
        BundleError: the bundle is invalid.
    """
    bundle = Bundle.load(bundle_dir)
    image_enc, text_enc = source_encoders(bundle, checkpoint)
    data_dir = data_dir if data_dir is not None else paths.default_data_dir()
    inputs = parity.parity_inputs(data_dir, bundle.image_spec)
    if bundle.meta.precision != "fp32":
        return parity.compare(image_enc, text_enc, bundle, inputs)
    return parity.check(image_enc, text_enc, bundle, inputs)


def source_encoders(bundle: Bundle, checkpoint: Path | None = None):
    """PyTorch ``(image_encoder, text_encoder)`` of the checkpoint ``bundle`` was exported from.

    Raises:
        ExportError: ``checkpoint`` (default: the committed one) is missing or is not the
            bundle's source (sha256 differs from ``source_checkpoint_sha256``).
    """
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    want = bundle.meta.source_checkpoint_sha256
    if not checkpoint.is_file() or sha256_file(checkpoint) != want:
        raise ExportError(f"{checkpoint} is not the checkpoint {bundle.path} was exported from "
                          f"(sha256 {str(want)[:12]}...); pass --checkpoint")
    _, image_enc, text_enc = load_encoders(checkpoint)
    return image_enc, text_enc
