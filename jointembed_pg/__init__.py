"""jointembed_pg: semantic image<->text search inside PostgreSQL (torch-free runtime).

The library runs exported ONNX encoders (a *model bundle*) with onnxruntime, writes L2
embeddings into pgvector ``vector(D)`` columns and answers cross-modal queries in Python
and SQL. It never imports torch.

>>> from jointembed_pg import Bundle, Store
>>> store = Store()                                   # DSN | Connection | ConnectionPool | Engine | None
>>> photos = store.collection("photos", bundle=Bundle.load())
>>> photos.add_images(["a.jpg", "b.jpg"]); photos.add_texts(["a dog on the beach"])
>>> photos.search("a dog", k=10, target="image")     # -> list[Hit], L2 distance ascending
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    ArgumentError,
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
    "Attached": ("search.attached", "Attached"),
    "Hit": ("search.knn", "Hit"),
    "IngestReport": ("ingest.pipeline", "IngestReport"),
    "SyncReport": ("sync.drain", "SyncReport"),
    "ReembedReport": ("sync.reembed", "ReembedReport"),
    "connect": ("db", "connect"),
    "open_pool": ("db", "open_pool"),
}

__all__ = ["BundleError", "DatabaseError", "InputError", "JointEmbedError", "ModelMismatchError",
           "ArgumentError", *_LAZY]


def __getattr__(name: str):
    """Lazy top-level API (imported on first use): ``Bundle``, ``Store``, ``Collection``,
    ``Attached``, ``Hit``, the reports ``IngestReport`` / ``SyncReport`` / ``ReembedReport``,
    ``connect`` and ``open_pool``."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'jointembed_pg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
