"""The Flickr8K layout, read in place: the one Flickr8K reader of the project (torch-free).

A Flickr8K-layout directory holds ``images/<name>.jpg``, the caption file
:data:`TOKEN_FILE` (``<name>.jpg#<n><TAB><caption>`` per line, parsed by
:func:`jointembed_pg.ingest.readers.read_texts`, so bad lines are dropped the same way as in
``jointembed index text``) and one split file per split (:data:`SPLIT_FILES`, one image
name per line).

Used by ``jointembed eval`` / ``demo`` (:func:`load_split`), training
(``jointembed_train.data.load_flickr8k`` builds its corpus from :func:`captions_by_image`
and :func:`split_names`), the exporter's parity/int8 data and the benchmarks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import InputError
from .readers import read_texts

TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGES = "images"
#: Largest split file read (bytes); Flickr8K's train list is 150 KB.
MAX_SPLIT_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Flickr8kSplit:
    """One split of a Flickr8K-layout directory.

    Attributes:
        image_paths: the split's image files (resolved), in split-file order.
        captions: ``(key, caption)`` pairs, e.g. ``("1000268201_693b08cb0e.jpg#0", "A child ...")``,
            in caption-file order.
        caption_image_ids: ``(M,)`` index into ``image_paths`` of each caption's image.
    """

    image_paths: list[Path]
    captions: list[tuple[str, str]]
    caption_image_ids: list[int]


def is_flickr8k(data_dir: str | Path | None) -> bool:
    """Whether ``data_dir`` has a Flickr8K caption file (``None`` -> False)."""
    return data_dir is not None and (Path(data_dir).expanduser() / TOKEN_FILE).is_file()


def image_name(caption_key: str) -> str:
    """``"x.jpg#3"`` -> ``"x.jpg"``: the image a caption key belongs to."""
    return caption_key.split("#", 1)[0]


def captions_by_image(data_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Every valid caption of the caption file, grouped by image name, in file order.

    Lines that :func:`~jointembed_pg.ingest.readers.read_texts` flags (invalid UTF-8, no TAB,
    empty caption) are skipped.

    Raises:
        InputError: the caption file is missing or empty.
    """
    by_image: dict[str, list[tuple[str, str]]] = {}
    for rec in read_texts(Path(data_dir).expanduser() / TOKEN_FILE):
        if rec.error is None:
            by_image.setdefault(image_name(rec.key), []).append((rec.key, rec.text))
    return by_image


def split_names(data_dir: str | Path, split: str) -> list[str]:
    """Image names listed in ``split``'s file, in file order (blank lines skipped).

    Raises:
        InputError: unknown split, unreadable split file, or a line that is not a plain
            file name (a path separator, ``.`` or ``..``: it would point outside ``images/``).
    """
    if split not in SPLIT_FILES:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    path = Path(data_dir).expanduser() / SPLIT_FILES[split]
    try:  # a regular file of bounded size: a FIFO or /dev/zero in a --data-dir cannot hang or fill memory
        lines = files.read_regular(path, MAX_SPLIT_FILE_BYTES, "split file").decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: cannot read the split file ({e})") from e
    names = [n.strip() for n in lines if n.strip()]
    for lineno, n in enumerate(names, 1):
        if "/" in n or "\\" in n or "\0" in n or n in (".", ".."):
            raise InputError(f"{path}: entry {lineno} ({n[:80]!r}) is not a plain image file name")
    return names


def load_split(data_dir: str | Path, split: str) -> Flickr8kSplit:
    """Read one split of a Flickr8K-layout directory (``images/``, caption file, split file).

    Raises:
        InputError: the directory, the caption file, the split file or some of the split's
            images are missing, or ``split`` is not one of train/dev/test.
    """
    root = Path(data_dir).expanduser()
    if split not in SPLIT_FILES:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    if not root.is_dir():
        raise InputError(f"data directory {root} does not exist (pass --data-dir DIR with a Flickr8K layout)")
    for name in (TOKEN_FILE, SPLIT_FILES[split], IMAGES):
        if not (root / name).exists():
            raise InputError(f"{root} is not a Flickr8K-layout directory: {name} is missing")
    names = split_names(root, split)
    index = {n: i for i, n in enumerate(names)}
    captions: list[tuple[str, str]] = []
    ids: list[int] = []
    for rec in read_texts(root / TOKEN_FILE):  # file order, as before: not grouped by image
        image = image_name(rec.key)
        if rec.error is None and image in index:
            captions.append((rec.key, rec.text))
            ids.append(index[image])
    paths = [Path(os.path.realpath(root / IMAGES / n)) for n in names]  # a symlink loop is "missing"
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} images of the {split} split are missing under {root / IMAGES}, "
                         f"e.g. {missing[0].name}")
    return Flickr8kSplit(paths, captions, ids)
