"""export: turn a trained checkpoint into a model bundle (ONNX encoders + manifest).

Needs the ``[export]`` extra (torch, onnx). The runtime (:mod:`jointembed_pg.bundle`) reads
what this package writes and never imports it. Entry points live in :mod:`export.build`:
``build_bundle``, ``build_default_bundle``, ``bundle_is_current``.
"""
from __future__ import annotations


class ExportError(RuntimeError):
    """An export step failed (ONNX conversion, parity, quantisation); no bundle was written."""
