"""Real inputs of a run, from Flickr8K read in place: items to ingest and held-out queries."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jointembed_pg.ingest import flickr8k

#: Split order items are taken in: ingest takes the first ones, queries the last ones.
SPLIT_ORDER = ("test", "dev", "train")


@dataclass(frozen=True)
class Inputs:
    """Items of one run.

    Attributes:
        images: image files to ingest (``n_images``).
        captions: ``(key, caption)`` pairs to ingest (captions of ``images``, in order).
        query_images: image files never ingested, one query each.
        query_texts: captions of never-ingested images, one query each.
        token_file: the Flickr8K caption file (the text "decode" stage parses it).
    """

    images: list[Path]
    captions: list[tuple[str, str]]
    query_images: list[Path]
    query_texts: list[str]
    token_file: Path


def load(data_dir: Path, n_images: int, n_captions: int, n_queries: int) -> Inputs:
    """Pick the run's items; raises ValueError if Flickr8K is too small for the sizes."""
    images: list[Path] = []
    captions: list[tuple[str, str]] = []
    for split in SPLIT_ORDER:
        s = flickr8k.load_split(data_dir, split)
        images += s.image_paths
        captions += s.captions
    if n_images + n_queries > len(images):
        raise ValueError(f"Flickr8K at {data_dir} has {len(images)} images, the run needs {n_images + n_queries}")
    ingest = images[:n_images]
    names = {p.name for p in ingest}
    own = [(k, t) for k, t in captions if k.split("#", 1)[0] in names]
    if n_captions > len(own):
        raise ValueError(f"{n_images} images have {len(own)} captions, the run needs {n_captions}")
    held_out = images[-n_queries:]
    by_image: dict[str, str] = {}
    for k, t in captions:
        by_image.setdefault(k.split("#", 1)[0], t)
    query_texts = [by_image[p.name] for p in reversed(images) if p.name in by_image and p.name not in names]
    return Inputs(ingest, own[:n_captions], held_out, query_texts[:n_queries], data_dir / flickr8k.TOKEN_FILE)
