"""Find the model exporter through its entry point; the runtime never imports it by name.

The ``[export]`` extra (torch, onnx) provides the exporter; the distribution registers it
in the entry-point group :data:`GROUP` under the name :data:`DEFAULT` (``pyproject.toml``:
``[project.entry-points."jointembed_pg.exporters"] default = "jointembed_export.build"``).
Another exporter can be installed under another name. The object an entry point loads
provides what :class:`Exporter` lists.

An entry point is registered whether or not the extra's dependencies are installed, so
loading it can still fail with ``ImportError`` (no torch): :func:`load` turns both cases
into :class:`ExporterMissing`, whose message says which extra to install.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from ..errors import BundleError

#: Entry-point group exporters register under.
GROUP = "jointembed_pg.exporters"
#: Name of the exporter ``jointembed model build`` and ``demo`` use.
DEFAULT = "default"
#: What to install to get the default exporter.
INSTALL_HINT = "pip install 'jointembed-pg[export]'"


class Exporter(Protocol):
    """What the runtime calls on an exporter (``jointembed_export.build`` provides it)."""

    def build_default_bundle(self, out_dir: Path | None = None, *, checkpoint: Path | None = None,
                             int8: bool = False, data_dir: Path | None = None, force: bool = False) -> Path:
        """Export a checkpoint (default: the committed weights) into ``out_dir``; returns it."""

    def int8_dir(self, fp32_dir: Path) -> Path:
        """Directory of the int8 sibling of the fp32 bundle at ``fp32_dir``."""

    def import_model(self, source: str | Path, out_dir: Path, *, arch: str | None = None, licence: str = "unknown",
                     data_dir: Path | None = None, force: bool = False, int8: bool = False,
                     calibration_dir: Path | None = None, calibration_n: int | None = None) -> Path:
        """Import an open_clip / transformers CLIP or SigLIP model as a bundle in ``out_dir``
        (with ``int8``, its int8 sibling; ``calibration_*``: images for a convolutional tower)."""

    def verify_parity(self, bundle_dir: Path, *, checkpoint: Path | None = None,
                      data_dir: Path | None = None) -> dict:
        """Re-run ONNX-vs-PyTorch parity of a bundle; returns the report."""


class ExporterMissing(BundleError):
    """No exporter is installed (or its dependencies are not); the message names the extra."""


def load(name: str = DEFAULT) -> Any:
    """The exporter registered as ``name`` in :data:`GROUP` (see :class:`Exporter`).

    Raises:
        ExporterMissing: no such entry point, or loading it failed with ``ImportError``
            (e.g. torch missing); the message says ``pip install 'jointembed-pg[export]'``.
    """
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ExporterMissing(f"no model exporter {name!r} is installed (entry point group {GROUP}); "
                              f"install the export extra: {INSTALL_HINT}")
    try:
        return found[0].load()
    except ImportError as e:
        raise ExporterMissing(f"the model exporter needs the export extra (torch, onnx): {e}; "
                              f"install it: {INSTALL_HINT}") from e
