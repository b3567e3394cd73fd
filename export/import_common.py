"""What the importer and its int8 step share: options hashed into model ids, probe inputs.

Probe inputs are what a bundle is compared on (with the framework at import, with fp32
for int8): real Flickr8K test images and captions when a Flickr8K folder is given
(synthetic JPEGs otherwise), plus :data:`PROBE_TEXTS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Captions beyond what Flickr8K has: punctuation, unicode, entities, emoji, over-long.
PROBE_TEXTS = [
    "Hello, World!!! (really?)", "a dog &amp; a cat", "it's “quoted” ‘text’", "café naïve résumé",
    "🐶 a dog and a 🚀 rocket", "東京タワー at night", "don't STOP me now", "price: $5.99 (50% off)!",
    " ".join(["a brown dog runs across the green grass after a red ball"] * 12),
]


@dataclass(frozen=True)
class ImportOptions:
    """What besides the weights decides a bundle: opset, precision, int8 method."""

    opset: int = 17
    precision: str = "fp32"
    int8_method: str | None = None


def probe_images(data_dir: Path | None, work: Path, n: int = 6) -> list[Path]:
    """Real Flickr8K test images from ``data_dir`` if it is one, else a few synthetic JPEGs."""
    from PIL import Image

    from .data import is_flickr8k, load_split

    if is_flickr8k(data_dir):
        return list(load_split(Path(data_dir), "test", limit=n).images)
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(320, 240), (240, 333), (500, 375), (97, 131)]):
        p = work / f"probe{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


def probe_texts(data_dir: Path | None, n: int = 40) -> list[str]:
    """Flickr8K test captions (if ``data_dir`` is one) plus :data:`PROBE_TEXTS`."""
    from .data import is_flickr8k, load_split

    caps = load_split(Path(data_dir), "test", limit=n // 5 + 1).captions[:n] if is_flickr8k(data_dir) else []
    return caps + PROBE_TEXTS
