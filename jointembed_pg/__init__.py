"""jointembed_pg: semantic image<->text search inside PostgreSQL (torch-free runtime).

The library runs exported ONNX encoders (a *model bundle*) with onnxruntime, writes L2
embeddings into pgvector ``vector(D)`` columns and answers cross-modal queries in Python
and SQL. It never imports torch.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    BundleError,
    DatabaseError,
    InputError,
    JointEmbedError,
    ModelMismatchError,
)

_LAZY = {
    "Bundle": ("model.bundle", "Bundle"),
    "Store": ("search.store", "Store"),
    "Collection": ("search.store", "Collection"),
    "Hit": ("search.knn", "Hit"),
    "connect": ("db", "connect"),
}


def __getattr__(name: str):
    """Lazy top-level API: ``jointembed_pg.Bundle``, ``Store``, ``connect`` (imported on use)."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'jointembed_pg' has no attribute {name!r}")
