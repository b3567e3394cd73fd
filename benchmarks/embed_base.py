"""Real embeddings to grow benchmark vectors from: ``python -m benchmarks.embed_base OUT.npz``.

Encodes Flickr8K (read in place) with a bundle (default: the shipped default) and writes an
``.npz`` that :mod:`benchmarks.binary_index` takes as ``--base``:

* ``images (N0, D) float32``: the test and dev images, then train images up to ``--images``;
* ``queries (Qt, D) float32``: captions of the test images (what a benchmark reports on);
* ``queries_dev (Qd, D) float32``: captions of the dev images (what settings are chosen on).

The stored rows include the queries' own images (as in a gallery that holds them);
queries are caption embeddings, never stored. One thread budget: onnxruntime's default.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jointembed_pg.paths import flickr8k_dir  # noqa: E402
from jointembed_pg.ingest import flickr8k  # noqa: E402
from jointembed_pg.model.bundle import Bundle  # noqa: E402



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embed_base", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data", type=Path, default=None,
                   help="Flickr8K directory (default: $JOINTEMBED_DATA_DIR, else shared/data/flickr8k beside the checkout)")
    p.add_argument("--bundle", default=None, help="bundle name or directory (default: the shipped default)")
    p.add_argument("--images", type=int, default=4000, help="stored images: test + dev + train, at most this many")
    a = p.parse_args(argv)
    bundle = Bundle.load(a.bundle)
    data = flickr8k_dir(a.data)
    splits = {s: flickr8k.load_split(data, s) for s in ("test", "dev", "train")}
    paths = [x for s in ("test", "dev", "train") for x in splits[s].image_paths][:a.images]
    t = time.perf_counter()
    images = np.concatenate([bundle.encode_images(paths[i:i + 256]) for i in range(0, len(paths), 256)])
    print(f"{len(paths)} images in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    out = {"images": images.astype(np.float32)}
    for key, split in (("queries", "test"), ("queries_dev", "dev")):
        texts = [c for _, c in splits[split].captions]
        out[key] = bundle.encode_texts_by_length(texts).astype(np.float32)
        print(f"{len(texts)} {split} captions", file=sys.stderr, flush=True)
    np.savez(a.out, model_id=np.array(bundle.model_id), **out)


if __name__ == "__main__":
    main()
