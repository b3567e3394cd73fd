"""Flickr8K-layout data for parity checks and int8 evaluation (read in place).

A thin view over :func:`jointembed_train.data.load_flickr8k` (images in name order), which
parses with :mod:`jointembed_pg.ingest.flickr8k`, the one Flickr8K reader of the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jointembed_pg.ingest import flickr8k
from jointembed_pg.errors import InputError

from . import ExportError


@dataclass(frozen=True)
class Split:
    """One split: ``images[i]`` is a path; caption ``j`` describes image ``caption_image_ids[j]``.

    Attributes:
        images: N image paths.
        captions: M captions (5 per image for Flickr8K).
        caption_image_ids: ``(M,) int64`` index into ``images`` for each caption.
    """

    images: list[Path]
    captions: list[str]
    caption_image_ids: np.ndarray


def is_flickr8k(data_dir: Path | None) -> bool:
    """Whether ``data_dir`` looks like a Flickr8K-layout directory."""
    return flickr8k.is_flickr8k(data_dir)


def load_split(data_dir: Path, split: str = "test", limit: int | None = None) -> Split:
    """Read one split; ``limit`` keeps only its first ``limit`` images (and their captions).

    Raises:
        ExportError: the directory is not Flickr8K-layout or lacks the split.
    """
    from jointembed_train.data import load_flickr8k

    try:
        corpus = load_flickr8k(data_dir)
        view = corpus.split(split)
    except (FileNotFoundError, KeyError, ValueError, InputError) as e:
        raise ExportError(f"{data_dir}: cannot read Flickr8K split {split!r} ({e})") from e
    n = len(view.image_index) if limit is None else min(limit, len(view.image_index))
    keep = view.caption_image_ids < n
    return Split([corpus.image_paths[i] for i in view.image_index[:n]],
                 [corpus.captions[j] for j in view.caption_index[keep]],
                 view.caption_image_ids[keep].astype(np.int64))
