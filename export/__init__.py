"""export: turn a trained checkpoint into a model bundle (ONNX encoders + manifest).

Needs the ``[export]`` extra (torch, onnx). The runtime (:mod:`jointembed_pg.model.bundle`) reads
what this package writes and never imports it. Entry points live in :mod:`jointembed_export.build`:
``build_bundle``, ``build_default_bundle``, ``bundle_is_current``, ``verify_parity``;
the int8 variant in :mod:`jointembed_export.int8`.
"""
from __future__ import annotations

from jointembed_pg.errors import BundleError

try:  # torchvision's CUDA-only wheel must not break transformers/open_clip imports (see the module)
    from jointembed_train import _torchvision  # noqa: F401
except ImportError:  # no torch: the exporter entry point reports the missing extra
    pass


class ExportError(BundleError, RuntimeError):
    """An export step failed (ONNX conversion, parity, quantisation); no bundle was written.

    A :class:`~jointembed_pg.errors.BundleError` (hence a ``JointEmbedError``), so callers
    that build a missing bundle on demand can catch one type.
    """
