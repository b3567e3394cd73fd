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
