"""Caption corpora: Flickr8K layout, Karpathy JSON, generic CSV / JSONL.

Every loader returns a :class:`Corpus`: a list of images, a list of captions and the
explicit ``caption_image_ids: (M,) int64`` mapping each caption to its image index (no
implicit "5 captions per image" arithmetic), plus named splits of image indices.
A training *concept* (METHOD.md, Notation) is one image with all its captions, so the
concept id of a caption is its image index.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jointembed_pg.ingest import flickr8k


@dataclass
class Corpus:
    """Images, captions and splits.

    Attributes:
        image_paths: ``N`` image file paths.
        captions: ``M`` caption strings.
        caption_image_ids: ``(M,) int64`` index into ``image_paths`` per caption.
        splits: split name -> ``(n,) int64`` sorted image indices.
    """

    image_paths: list[Path]
    captions: list[str]
    caption_image_ids: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> "SplitView":
        """The images of split ``name`` and their captions (raises KeyError if unknown)."""
        if name not in self.splits:
            raise KeyError(f"split {name!r} not in corpus (have {sorted(self.splits)})")
        return SplitView.of(self, self.splits[name])


@dataclass
class SplitView:
    """A subset of a corpus, with ids local to the subset.

    Attributes:
        image_index: ``(n,) int64`` corpus image indices of this split.
        caption_index: ``(m,) int64`` corpus caption indices of this split.
        caption_image_ids: ``(m,) int64`` local image index (into ``image_index``).
    """

    image_index: np.ndarray
    caption_index: np.ndarray
    caption_image_ids: np.ndarray

    @classmethod
    def of(cls, corpus: Corpus, image_index: np.ndarray) -> "SplitView":
        image_index = np.asarray(image_index, dtype=np.int64)
        local = np.full(len(corpus.image_paths), -1, dtype=np.int64)
        local[image_index] = np.arange(len(image_index))
        cap_local = local[corpus.caption_image_ids]
        keep = np.nonzero(cap_local >= 0)[0].astype(np.int64)
        return cls(image_index, keep, cap_local[keep])


def load_flickr8k(data_dir: str | Path) -> Corpus:
    """Flickr8K in its original layout, as a corpus of every image with captions.

    Parsing is :mod:`jointembed_pg.ingest.flickr8k` (the project's one Flickr8K reader). Images
    are sorted by name; captions of images missing from ``images/`` are dropped; each
    split present is the sorted indices of its listed images.

    Raises:
        FileNotFoundError: the caption file is missing.
        jointembed_pg.errors.InputError: the caption or a split file is unreadable.
    """
    data_dir = Path(data_dir)
    token_file = data_dir / flickr8k.TOKEN_FILE
    if not token_file.is_file():
        raise FileNotFoundError(f"{token_file}: Flickr8K token file not found")
    by_image = {n: [c for _, c in caps] for n, caps in flickr8k.captions_by_image(data_dir).items()}
    names = sorted(n for n in by_image if (data_dir / flickr8k.IMAGES / n).is_file())
    corpus = _corpus_from_groups(data_dir / flickr8k.IMAGES, names, by_image)
    index = {n: i for i, n in enumerate(names)}
    for split, fname in flickr8k.SPLIT_FILES.items():
        if (data_dir / fname).is_file():
            listed = flickr8k.split_names(data_dir, split)
            corpus.splits[split] = np.array(sorted(index[n] for n in listed if n in index), np.int64)
    return corpus


def load_karpathy(json_path: str | Path, image_root: str | Path) -> Corpus:
    """Karpathy split JSON (``dataset_flickr8k/30k/coco.json``).

    Images are ``image_root / [filepath /] filename``; ``split`` values ``restval`` are
    merged into ``train`` (the usual practice). Raises FileNotFoundError / KeyError.
    """
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    image_root = Path(image_root)
    paths, captions, ids, split_of = [], [], [], []
    for img in data["images"]:
        rel = Path(img.get("filepath", "")) / img["filename"]
        paths.append(image_root / rel)
        for s in img["sentences"]:
            captions.append(s.get("raw") or " ".join(s["tokens"]))
            ids.append(len(paths) - 1)
        split_of.append("train" if img["split"] == "restval" else img["split"])
    splits = {s: np.array([i for i, x in enumerate(split_of) if x == s], np.int64) for s in set(split_of)}
    return Corpus(paths, captions, np.array(ids, np.int64), splits)


def load_pairs(table_path: str | Path, image_root: str | Path | None = None) -> Corpus:
    """Generic CSV or JSONL of ``(image_path, caption[, split])`` rows.

    Rows with the same ``image_path`` form one concept. Without a ``split`` column every
    image is in split ``"all"``. Raises ValueError naming the file if columns are missing.
    """
    table_path = Path(table_path)
    root = Path(image_root) if image_root else table_path.parent
    if table_path.suffix.lower() == ".jsonl":
        rows = [json.loads(l) for l in table_path.read_text(encoding="utf-8").splitlines() if l.strip()]
    else:
        with open(table_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if rows and not {"image_path", "caption"} <= set(rows[0]):
        raise ValueError(f"{table_path}: needs columns image_path, caption (got {sorted(rows[0])})")
    by_image: dict[str, list[str]] = {}
    split_of: dict[str, str] = {}
    for r in rows:
        by_image.setdefault(r["image_path"], []).append(str(r["caption"]).strip())
        split_of[r["image_path"]] = r.get("split") or "all"
    names = list(by_image)
    corpus = _corpus_from_groups(root, names, by_image)
    for s in set(split_of.values()):
        corpus.splits[s] = np.array([i for i, n in enumerate(names) if split_of[n] == s], np.int64)
    return corpus


def _corpus_from_groups(root: Path, names: list[str], by_image: dict[str, list[str]]) -> Corpus:
    captions, ids = [], []
    for i, n in enumerate(names):
        captions.extend(by_image[n])
        ids.extend([i] * len(by_image[n]))
    return Corpus([root / n for n in names], captions, np.array(ids, np.int64))
