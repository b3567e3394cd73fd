"""Heads trained on an imported bundle's towers -> a bundle (issue 24, item 4).

A checkpoint whose config names a ``backbone_bundle`` (``python -m jointembed_train train
--backbone-bundle NAME``, :mod:`jointembed_train.bundle_backbone`) holds heads over that
bundle's embeddings. Its bundle is composed in ONNX, since the tower exists only as a graph:

    image.onnx = base image.onnx ("pixels" -> its embedding) -> image head -> post
    text.onnx  = base text.onnx ("input_ids", "attention_mask" -> its embedding) -> text head -> post

where *post* is :class:`jointembed_train.heads.EmbeddingPost` (L2 norm, the soft quantizer at
``tau_end`` when trained with one, L2 norm), as in :func:`jointembed_train.encoders.image_encoder`.
Each head is exported by the TorchScript exporter at the tower's opset and joined with
``onnx.compose.merge_models`` (the head's names prefixed, the tower's output renamed).

The base bundle's ``tokenizer.json``, ``preprocess.image`` rule, ``max_tokens`` and ``pad_to``
are kept, so the runtime feeds the composed graphs exactly what it fed the towers when the
training features were computed. Parity before anything is written: the new bundle's
embeddings (runtime) against the PyTorch heads applied to the base bundle's embeddings
(runtime) of the same inputs, max |diff| <= :data:`jointembed_export.parity.PARITY_ATOL`.

The manifest is schema 2: ``source`` names this exporter (``framework``
:data:`FRAMEWORK`), the checkpoint (``weights``, ``weights_sha256``), the base model's licence,
and the base bundle under ``source.base`` (its model id, path and own ``source``);
``training`` is the checkpoint's config.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import ExportError

#: ``source.framework`` of these bundles.
FRAMEWORK = "jointembed-heads"
#: Bump when the composed graphs change for the same checkpoint and base (changes model ids).
HEADS_EXPORT_VERSION = 1


def model_id(checkpoint_sha256: str, base_model_id: str) -> str:
    """``je-<12 hex>`` over the checkpoint's sha256, the base bundle's model id and the version."""
    key = json.dumps({"ckpt": checkpoint_sha256, "base": base_model_id, "v": HEADS_EXPORT_VERSION}, sort_keys=True)
    return "je-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def is_heads_checkpoint(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was trained on a ``backbone_bundle`` (False if unreadable)."""
    from jointembed_train import checkpoint as ckpt_mod

    try:
        return bool(ckpt_mod.load(checkpoint).config.backbone_bundle)
    except (FileNotFoundError, ValueError):
        return False


def _rename(model, old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` everywhere in ``model``'s main graph."""
    g = model.graph
    for node in g.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.name == old:
            vi.name = new


def _head_graph(module, in_dim: int, opset: int):
    """The ONNX model of ``module``: ``features (N, in_dim) float32 -> embedding (N, D) float32``."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(2, in_dim),), buf, dynamo=False, opset_version=opset,
                          do_constant_folding=True, input_names=["features"], output_names=["embedding"],
                          dynamic_axes={"features": {0: "batch"}, "embedding": {0: "batch"}})
    return onnx.load_model_from_string(buf.getvalue())


def compose(tower_path: Path, head_module, in_dim: int, out_path: Path) -> None:
    """Write ``tower -> head`` as one graph to ``out_path`` (inputs of the tower, output ``embedding``).

    Raises:
        ExportError: the head's export or the merge failed.
    """
    import onnx
    from onnx import compose as oc

    tower = onnx.load(str(tower_path))
    opset = next((o.version for o in tower.opset_import if o.domain in ("", "ai.onnx")), 17)
    try:
        head = oc.add_prefix(_head_graph(head_module, in_dim, opset), "je_head/")
        head.ir_version = tower.ir_version
        _rename(tower, "embedding", "je_tower/embedding")
        _rename(head, "je_head/embedding", "embedding")
        merged = oc.merge_models(tower, head, io_map=[("je_tower/embedding", "je_head/features")],
                                 doc_string="imported tower followed by jointembed heads")
        onnx.checker.check_model(merged)
    except Exception as e:  # torch / onnx raise many types
        raise ExportError(f"composing {tower_path.name} with the trained head failed: {e}") from e
    onnx.save(merged, str(out_path))


class _Head:
    """``features -> post(head(features))`` as an nn.Module (built lazily: torch import)."""

    @staticmethod
    def make(head, post):
        from torch import nn

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.head, self.post = head, post

            def forward(self, features):
                return self.post(self.head(features))

        return Head().eval()


def parity(heads, base, bundle, inputs) -> dict:
    """The composed bundle against the PyTorch heads on the base bundle's embeddings.

    Returns:
        ``{image_max_abs_diff, text_max_abs_diff, image_min_cosine_vs_torch,
        text_min_cosine_vs_torch, n_images, n_captions, inputs}``.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long caption is truncated on purpose
        feats = {"image": base.encode_pixels(inputs.pixels), "text": base.encode_texts(inputs.texts)}
        ours = {"image": bundle.encode_pixels(inputs.pixels), "text": bundle.encode_texts(inputs.texts)}
    report = {"n_images": int(len(inputs.pixels)), "n_captions": len(inputs.texts), "inputs": inputs.source,
              "reference": "PyTorch heads on the base bundle's embeddings (onnxruntime)"}
    with torch.no_grad():
        for kind, head in (("image", heads.image_head), ("text", heads.text_head)):
            ref = heads.post(head(torch.from_numpy(feats[kind]))).numpy()
            got = ours[kind]
            cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
            report[f"{kind}_max_abs_diff"] = float(np.abs(got - ref).max())
            report[f"{kind}_min_cosine_vs_torch"] = float(cos.min())
    return report


def build_heads_bundle(checkpoint: Path, out_dir: Path, *, data_dir: Path | None = None,
                       force: bool = False) -> Path:
    """Export a ``backbone_bundle`` checkpoint as a bundle in ``out_dir``; returns ``out_dir``.

    Args:
        checkpoint: a checkpoint trained with ``backbone_bundle`` set.
        out_dir: bundle directory to create (replaced only if ``force``).
        data_dir: Flickr8K-layout folder for the parity inputs (synthetic pixels if None).

    Raises:
        ExportError: not such a checkpoint, its base bundle is missing/changed or has another
            width than the heads, composing failed, or parity exceeds ``PARITY_ATOL``;
            ``out_dir`` exists without ``force``.
    """
    import onnx
    import onnxruntime
    import torch

    from jointembed_pg.model.bundle import Bundle, sha256_file
    from jointembed_pg.model.manifest import IMAGE_ONNX, TEXT_ONNX, TOKENIZER, Manifest
    from jointembed_train import checkpoint as ckpt_mod
    from jointembed_train.bundle_backbone import fingerprint

    from . import parity as parity_mod
    from .manifest import file_entries, quantizer_info, write_manifest
    from .staging import staged_dir

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    try:
        ckpt = ckpt_mod.load(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(str(e)) from e
    cfg = ckpt.config
    if not cfg.backbone_bundle:
        raise ExportError(f"{checkpoint}: not trained on a backbone_bundle (export it with build_bundle)")
    base = Bundle.load(cfg.backbone_bundle)  # BundleError (an ExportError's base) if missing or corrupt
    trained_on = ckpt.info.get("backbone_bundle_fingerprint")
    if trained_on and trained_on != fingerprint(base):
        raise ExportError(f"the bundle {cfg.backbone_bundle!r} ({base.model_id}) is not the one the heads were "
                          f"trained on (fingerprint {trained_on}, now {fingerprint(base)})")
    if ckpt.feature_dims != (base.dim, base.dim):
        raise ExportError(f"{checkpoint}: heads take features of widths {ckpt.feature_dims}, the bundle "
                          f"{cfg.backbone_bundle!r} outputs {base.dim}")
    heads = ckpt.build_heads()
    ckpt_sha = sha256_file(checkpoint)
    with staged_dir(out_dir, force=force) as tmp:
        compose(base.path / IMAGE_ONNX, _Head.make(heads.image_head, heads.post), base.dim, tmp / IMAGE_ONNX)
        compose(base.path / TEXT_ONNX, _Head.make(heads.text_head, heads.post), base.dim, tmp / TEXT_ONNX)
        shutil.copyfile(base.path / TOKENIZER, tmp / TOKENIZER)
        bsrc = base.meta.source or {}
        config = cfg.to_dict()
        manifest = Manifest(
            schema_version=2, model_id=model_id(ckpt_sha, base.model_id), dim=cfg.embed_dim,
            normalized=bool(cfg.normalize), precision="fp32", files=file_entries(tmp), image=base.image_spec,
            max_tokens=base.max_tokens, pad_to=base.meta.pad_to, quantizer=quantizer_info(config),
            training=config, metrics=dict(ckpt.metrics), source_checkpoint_sha256=ckpt_sha,
            source={"framework": FRAMEWORK,
                    "architecture": f"{cfg.head} heads on {bsrc.get('framework', 'jointembed')}:"
                                    f"{bsrc.get('architecture', base.model_id)}",
                    "weights": str(checkpoint), "weights_sha256": ckpt_sha,
                    "licence": str(bsrc.get("licence", "unknown")),
                    "base": {"model_id": base.model_id, "path": str(base.path.resolve()), "dim": base.dim,
                             "source": bsrc}},
            export={"heads_export_version": HEADS_EXPORT_VERSION, "composed_with": "onnx.compose.merge_models",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "torch": torch.__version__, "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__, "python": platform.python_version()})
        write_manifest(tmp, manifest)
        inputs = parity_mod.parity_inputs(data_dir, base.image_spec)
        report = parity(heads, base, Bundle.load(tmp), inputs) | {"atol": parity_mod.PARITY_ATOL}
        for kind in ("image", "text"):
            if not report[f"{kind}_max_abs_diff"] <= parity_mod.PARITY_ATOL:  # also NaN
                raise ExportError(f"composed {kind}.onnx differs from the PyTorch heads by "
                                  f"{report[f'{kind}_max_abs_diff']:.3g} > {parity_mod.PARITY_ATOL:g}")
        write_manifest(tmp, replace(manifest, extra={**manifest.extra, "parity": report}))
    return out_dir


def is_current(bundle_dir: Path, checkpoint: Path) -> bool:
    """Whether ``bundle_dir`` is an intact bundle composed from ``checkpoint`` and its base as it is now."""
    from jointembed_pg.errors import BundleError
    from jointembed_pg.model.bundle import Bundle, read_manifest, sha256_file, validate_manifest
    from jointembed_train import checkpoint as ckpt_mod

    try:
        m = validate_manifest(read_manifest(Path(bundle_dir)), Path(bundle_dir), checksums=True)
        sha = sha256_file(checkpoint)
        base = Bundle.load(ckpt_mod.load(checkpoint).config.backbone_bundle, verify=False)
    except (BundleError, OSError, ValueError):
        return False
    return m.source_checkpoint_sha256 == sha and m.model_id == model_id(sha, base.model_id)
