"""The decoder processes of image items (:mod:`jointembed_pg.model.decoder`), and their entry point.

``python -m jointembed_pg.ingest.sandbox`` is a decoder process: it imports the image
sources of attached tables (:mod:`jointembed_pg.ingest.sources`: path, URL, bytea, whose
jobs it reads) before its memory cap, then serves jobs (:func:`jointembed_pg.model.decoder.serve`).
"""
from __future__ import annotations

from ..model.decoder import (  # noqa: F401  (re-exported: one implementation, in model/)
    ImageJob, ImageLoader, Interrupted, Loaded, bytes_job, load_item, shared_loader,
)

if __name__ == "__main__":
    from ..model.decoder import serve
    from . import sources  # noqa: F401  (imported before the decoder's memory cap)

    serve()
