"""ONNX external data for towers over protobuf's 2 GiB (ViT-H / ViT-bigG class).

A serialized ONNX model is one protobuf message, which cannot exceed 2 GiB. A tower whose
graph plus weights would exceed :func:`threshold_bytes` is written as ``<name>.onnx`` (the graph,
tensors under 1 KiB inline) plus ONE data file ``<name>.onnx.data`` (every larger tensor,
in order) next to it in the bundle; the manifest lists both with sha256 and size
(``jointembed_pg.model.manifest.EXTERNAL_DATA``) and the runtime checks the data file like
the others, stricter (no symlink, a regular file owned by the user or root, one link) and
gives onnxruntime the model *path* so it resolves the data file relative to it.

Everything else stays a single file (:func:`finalize_graph` inlines the per-tensor files
PyTorch's exporter writes for large models when the total is under the threshold).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import ExportError

#: protobuf's limit on one serialized message (2 GiB - 1).
PROTOBUF_LIMIT = 2**31 - 1
#: Default threshold (bytes of graph + weights) above which a tower gets external data:
#: the protobuf limit less 64 MiB of headroom (graph structure, field overhead).
DEFAULT_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20
#: Environment variable overriding the threshold (bytes), for tests only: a tiny model
#: exercises the external-data path with e.g. ``JOINTEMBED_EXTERNAL_DATA_BYTES=100000``.
THRESHOLD_ENV = "JOINTEMBED_EXTERNAL_DATA_BYTES"
#: Tensors smaller than this stay inside the ``.onnx`` file (onnx's default).
INLINE_BELOW = 1024


def threshold_bytes(value: int | None = None) -> int:
    """The external-data threshold in bytes: ``value``, else ``$JOINTEMBED_EXTERNAL_DATA_BYTES``,
    else :data:`DEFAULT_THRESHOLD`; never above :data:`DEFAULT_THRESHOLD`.

    Raises:
        ExportError: the environment variable is not a positive integer.
    """
    if value is None:
        raw = os.environ.get(THRESHOLD_ENV)
        if raw is None:
            return DEFAULT_THRESHOLD
        try:
            value = int(raw)
        except ValueError:
            raise ExportError(f"{THRESHOLD_ENV}={raw!r}: expected a number of bytes") from None
    if value < 1:
        raise ExportError(f"external-data threshold must be positive, got {value}")
    return min(int(value), DEFAULT_THRESHOLD)


def data_name(graph_name: str) -> str:
    """``image.onnx`` -> ``image.onnx.data``."""
    return graph_name + ".data"


def external_locations(path: Path) -> list[str]:
    """Locations (relative file names) of the external data the graph at ``path`` references."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})


def total_bytes(path: Path) -> int:
    """Bytes of the graph file at ``path`` plus every external data file it references."""
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in external_locations(path))


def finalize_graph(src: Path, dst: Path, *, threshold: int | None = None) -> Path:
    """Write the graph at ``src`` (with any external data it references) into ``dst``:
    one file when the total is at most :func:`threshold_bytes` bytes, else ``dst`` plus a single
    ``dst.data`` file (:func:`data_name`). ``src`` and its data files are removed.

    Args:
        src: an ONNX file in a work folder (its external data, if any, beside it).
        dst: the bundle's ``image.onnx`` / ``text.onnx``.
        threshold: bytes; see :func:`threshold_bytes`.

    Returns:
        ``dst``.

    Raises:
        ExportError: an external data location leaves ``src``'s folder, or writing failed.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    src, dst = Path(src), Path(dst)
    limit = threshold_bytes(threshold)
    locations = external_locations(src)
    for loc in locations:
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ExportError(f"{src}: external data location {loc!r} leaves its folder")
    size = total_bytes(src)
    data = dst.with_name(data_name(dst.name))
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not locations and size <= limit:
        shutil.move(str(src), str(dst))
        return dst
    model = onnx.load(str(src), load_external_data=False)
    load_external_data_for_model(model, str(src.parent))
    try:
        if size <= limit:
            onnx.save_model(model, str(dst))
        else:
            onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=INLINE_BELOW)
    except (ValueError, OSError) as e:
        raise ExportError(f"writing {dst} failed: {e}") from e
    src.unlink()
    for loc in locations:
        (src.parent / loc).unlink(missing_ok=True)
    return dst
