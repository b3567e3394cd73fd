"""Checkpoint -> model bundle: the export pipeline and its entry points.

``build_bundle`` loads a checkpoint through the training API (Contract 1), writes
``image.onnx``, ``text.onnx``, ``tokenizer.json`` and ``manifest.json`` into a staging
directory beside the target, checks ONNX-vs-PyTorch parity, and only then renames the
staging directory into place: a failed export never leaves a half-written bundle.
"""
from __future__ import annotations

import contextlib
import io
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

__all__ = ["build_bundle", "build_default_bundle", "bundle_is_current", "default_checkpoint", "import_model",
           "int8_dir", "source_encoders", "staged_dir", "verify_parity"]

log = logging.getLogger(__name__)

def default_checkpoint() -> Path:
    """The committed checkpoint ``training/weights/default.pt``."""
    import jointembed_train

    return Path(jointembed_train.__file__).resolve().parent / "weights" / "default.pt"


@contextlib.contextmanager
def quiet_libraries():
    """Keep the backbone libraries' own output off the terminal while they load.

    efficientnet_lite_pytorch ``print``s "Loaded pretrained weights for ..." (stdout is
    captured here and sent to this module's DEBUG log); transformers draws a "Loading
    weights" tqdm bar and writes a load report (its progress bars are disabled and its
    verbosity set to ERROR for the block, then restored).
    """
    hf = None
    try:
        from transformers.utils import logging as hf
    except ImportError:  # not installed: nothing of its to silence
        pass
    if hf is not None:
        bars, verbosity = hf.is_progress_bar_enabled(), hf.get_verbosity()
        hf.disable_progress_bar()
        hf.set_verbosity_error()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        if hf is not None:
            hf.set_verbosity(verbosity)
            if bars:
                hf.enable_progress_bar()
        for line in captured.getvalue().splitlines():
            log.debug("%s", line)


def load_encoders(checkpoint: Path):
    """``(ckpt, image_encoder, text_encoder)`` from the training API, in eval mode (the
    libraries' own load messages silenced: :func:`quiet_libraries`)."""
    from jointembed_train import checkpoint as ckpt_mod, encoders

    try:
        ckpt = ckpt_mod.load(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from e
    with quiet_libraries():
        return ckpt, encoders.image_encoder(ckpt).eval(), encoders.text_encoder(ckpt).eval()


def build_bundle(checkpoint: Path, out_dir: Path, *, data_dir: Path | None = None,
                 options: ExportOptions = ExportOptions(), force: bool = False) -> Path:
    """Export ``checkpoint`` as an fp32 bundle in ``out_dir``; returns ``out_dir``.

    Args:
        checkpoint: a training checkpoint (``jointembed_train.checkpoint.load`` reads it).
        out_dir: bundle directory to create (replaced only if ``force``).
        data_dir: Flickr8K-layout directory for the parity inputs (synthetic if ``None``).

    A checkpoint trained on a ``backbone_bundle`` goes to
    :func:`jointembed_export.heads_bundle.build_heads_bundle` (tower graphs + heads, composed).

    Raises:
        ExportError: ``out_dir`` exists, ONNX export failed, or parity exceeds 1e-4.
    """
    from jointembed_train.backbones import tokenizer_path

    from .heads_bundle import build_heads_bundle, is_heads_checkpoint

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if is_heads_checkpoint(checkpoint):  # heads over an imported bundle's towers: composed in ONNX
        return build_heads_bundle(checkpoint, out_dir, data_dir=data_dir, force=force)
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


def import_model(source, out_dir: Path, **kwargs) -> Path:
    """Import an open_clip / transformers model as a bundle: :func:`jointembed_export.import_bundle.import_model`
    (imported on call: it needs open_clip/timm, the ``[import]`` extra)."""
    try:
        from .import_bundle import import_model as run
    except ImportError as e:
        raise ExportError(f"model import needs the import extra (open_clip, timm): {e}; "
                          f"pip install 'jointembed-pg[import]'") from e
    return run(source, out_dir, **kwargs)


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
    from .heads_bundle import is_heads_checkpoint

    if int8 and is_heads_checkpoint(checkpoint):
        raise ExportError(f"{checkpoint}: int8 of heads on an imported bundle is not supported yet; "
                          f"build the fp32 bundle (without --int8)")
    keep_int8 = False
    if int8 and int8_dir(out_dir).exists() and not force:  # fail before the slow part
        keep_int8 = _same_source(int8_dir(out_dir), checkpoint)  # rerun: "up to date", not an error
        if not keep_int8:
            raise ExportError(f"{int8_dir(out_dir)} already exists and was not exported from {checkpoint} "
                              f"(use --force to replace it)")
    if force or not bundle_is_current(out_dir, checkpoint):
        build_bundle(checkpoint, out_dir, data_dir=data_dir, force=force)
    from .static_text import install_for_checkpoint

    install_for_checkpoint(out_dir)  # the committed SQL text encoder of this checkpoint (issue 25), if any
    if int8 and not keep_int8:
        from .int8 import build_int8_bundle

        build_int8_bundle(out_dir, int8_dir(out_dir), data_dir=data_dir, force=force)
    if int8:  # the same checkpoint's SQL text encoder, its untrained rows from the int8 text tower
        install_for_checkpoint(int8_dir(out_dir))
    return out_dir


def bundle_is_current(bundle_dir: Path, checkpoint: Path | None = None,
                      options: ExportOptions = ExportOptions()) -> bool:
    """Whether ``bundle_dir`` is an intact bundle of ``checkpoint`` (default: committed)
    exported by this exporter version with ``options``. False if anything is missing."""
    from .heads_bundle import is_current, is_heads_checkpoint

    try:
        checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        if is_heads_checkpoint(checkpoint):
            return is_current(bundle_dir, checkpoint)
        m = validate_manifest(read_manifest(Path(bundle_dir)), Path(bundle_dir), checksums=True)
        ckpt_sha = sha256_file(checkpoint)
    except (BundleError, OSError, ImportError):
        return False
    return m.source_checkpoint_sha256 == ckpt_sha and m.model_id == make_model_id(ckpt_sha, options)


def _same_source(bundle_dir: Path, checkpoint: Path) -> bool:
    """Whether ``bundle_dir`` is an intact bundle (checksums verified) exported from ``checkpoint``."""
    try:
        m = validate_manifest(read_manifest(Path(bundle_dir)), Path(bundle_dir), checksums=True)
        return m.source_checkpoint_sha256 == sha256_file(checkpoint)
    except (BundleError, OSError):
        return False


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
