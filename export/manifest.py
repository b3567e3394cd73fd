"""The bundle manifest (``manifest.json``, schema 1) as the exporter writes it.

Field meanings are Contract 2 of docs/DESIGN.md. The exporter builds a typed
:class:`jointembed_pg.model.manifest.Manifest` (the reader's model, so its checks run before
anything is written) and writes its JSON. ``model_id`` hashes the checkpoint bytes and the
export options, so two bundles share an id exactly when they embed identically.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jointembed_pg.model.bundle import sha256_file
from jointembed_pg.model.manifest import BUNDLE_FILES, EXTERNAL_DATA, MANIFEST, FileEntry, Manifest
from jointembed_pg.model.preprocess import ImageSpec
from jointembed_pg.model.text import DEFAULT_MAX_TOKENS

#: Bump when the exporter's output changes for the same checkpoint: changes model_id and
#: makes :func:`jointembed_export.build.bundle_is_current` rebuild cached bundles.
EXPORT_VERSION = 1


@dataclass(frozen=True)
class ExportOptions:
    """Everything besides the checkpoint that decides what a bundle computes.

    Attributes:
        opset: ONNX opset of both graphs.
        precision: ``"fp32"``, or ``"int8"`` for the quantised variant.
        int8_method: how int8 weights were made (``None`` for fp32).
    """

    opset: int = 17
    precision: str = "fp32"
    int8_method: str | None = None


def make_model_id(checkpoint_sha256: str, options: ExportOptions) -> str:
    """``je-<12 hex>``: sha256 of the checkpoint hash, export options and EXPORT_VERSION."""
    key = json.dumps({"ckpt": checkpoint_sha256, "opts": asdict(options), "v": EXPORT_VERSION}, sort_keys=True)
    return "je-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def file_entries(bundle_dir: Path) -> dict[str, FileEntry]:
    """``{name: FileEntry(sha256, bytes)}`` for every bundle file in ``bundle_dir``: the
    :data:`BUNDLE_FILES` and the external data files (:data:`EXTERNAL_DATA`) present."""
    names = BUNDLE_FILES + tuple(n for n in EXTERNAL_DATA.values() if (bundle_dir / n).is_file())
    return {n: FileEntry(sha256_file(bundle_dir / n), (bundle_dir / n).stat().st_size) for n in names}


def quantizer_info(config: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``quantizer``: ``{K, M, tau_end, beta}`` (M subspaces of K codewords
    each) of the soft quantizer, folded into the graphs at ``tau_end``; or, for the
    binary-code quantizer (``binary_codes``, training/binary.py), ``{"kind": "binary-sign",
    "bits": D, ...}`` with its training settings; or ``None`` if neither is enabled.

    The binary-code quantizer is a training-only relaxation of ``sign``: nothing is folded
    into ``image.onnx`` / ``text.onnx`` (no threshold, offset or rotation is learned), the
    graphs output the float embedding as without it, and the code is
    ``binary_quantize(embedding)`` (bit d = ``embedding[d] > 0``), which a collection with
    ``--index binary`` indexes.
    """
    if config.get("binary_codes"):
        return {"kind": "binary-sign", "bits": int(config["embed_dim"]), "code": "binary_quantize(embedding)",
                "folded": "nothing (sign of the exported embedding; training-only relaxation)",
                "relaxation": "straight-through sign" if config.get("bin_straight_through") else "tanh",
                "tau_start": float(config.get("bin_tau_start", 1.0)), "tau_end": float(config.get("bin_tau_end", 0.1)),
                "lambda": float(config.get("lambda_bin", 1.0)), "margin": float(config.get("bin_margin", 0.2)),
                "lambda_quant": float(config.get("lambda_bin_quant", 0.0))}
    if not config.get("quantizer"):
        return None
    return {"K": int(config["codebook_size"]), "M": int(config.get("quant_subspaces", 1)),
            "tau_end": float(config["tau_end"]), "beta": float(config["quant_beta"])}


def max_tokens(config: dict[str, Any]) -> int:
    """Caption token limit the model was trained with (``text_max_tokens``, default 128)."""
    return int(config.get("text_max_tokens", DEFAULT_MAX_TOKENS))


def make_manifest(*, checkpoint_sha256: str, options: ExportOptions, bundle_dir: Path, dim: int,
                  normalized: bool, config: dict[str, Any], metrics: dict[str, Any],
                  image_spec: ImageSpec = ImageSpec()) -> Manifest:
    """The manifest for the files now in ``bundle_dir`` (checksums computed here).

    Raises:
        BundleError: a field the runtime would refuse (e.g. ``dim <= 0``).
    """
    import onnx
    import onnxruntime
    import torch

    return Manifest(
        model_id=make_model_id(checkpoint_sha256, options), dim=int(dim), normalized=bool(normalized),
        precision=options.precision, files=file_entries(bundle_dir), image=image_spec,
        max_tokens=max_tokens(config), quantizer=quantizer_info(config), training=config, metrics=metrics,
        source_checkpoint_sha256=checkpoint_sha256,
        export={"version": EXPORT_VERSION, "options": asdict(options),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
    )


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (indented, sorted keys, atomic within the directory)."""
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=_jsonable)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _jsonable(x: Any) -> Any:
    """JSON fallback for config values (paths, tuples, numpy scalars)."""
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)
