"""Import torchvision without its compiled ops (open_clip, timm and transformers import it).

The torchvision wheels that match ``torch==2.13.0`` on the local index (and PyPI's default
Linux wheel) are CUDA builds: their ``_C.so`` links ``libtorch_cuda`` and does not load
next to the CPU torch build. torchvision then imports anyway, except that
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` with ``torch.library.register_fake``, which needs the operators to
exist. :func:`ensure` defines those two schemas (the signatures of torchvision's
``csrc/ops/nms.cpp`` / ``quantized/cpu/qnms_kernel.cpp``) when, and only when, ``_C``
cannot be loaded, so that ``import torchvision`` succeeds. Nothing here runs an op:
the importer uses only torchvision's transforms (pure Python on PIL images), the
framework's own preprocessing that the parity tests compare against. Calling a detection
op (``nms``) would raise "no kernel" — never needed to embed images.

Once torchvision is installed, transformers imports it from ``modeling_utils`` (any model,
MiniLM included), so every torch-side entry point runs :func:`ensure` first: importing this
module does it (``jointembed_train.backbones`` before transformers, ``jointembed_export``'s
package, ``tests/conftest.py``).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

#: Operator schemas torchvision's Python code registers fake kernels for at import time.
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib = None  # the torch.library.Library defining SCHEMAS (kept alive: dropping it undefines them)


def _compiled_ops_load() -> bool:
    """Whether torchvision's ``_C`` extension loads next to this torch (False if absent)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd")):
            try:
                torch.ops.load_library(path)
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure() -> bool:
    """Make ``import torchvision`` work; returns True when its compiled ops are real.

    Idempotent; a no-op when torchvision is already imported or not installed.
    """
    global _lib
    if "torchvision" in sys.modules:
        return hasattr(torch.ops.torchvision, "nms")
    if _compiled_ops_load():
        return True
    if _lib is None and importlib.util.find_spec("torchvision") is not None:
        _lib = torch.library.Library("torchvision", "DEF")
        for schema in SCHEMAS.values():
            _lib.define(schema)
    return False


ensure()
