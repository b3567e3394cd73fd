"""Throughput of imported architectures on this CPU: ``python -m benchmarks.import_throughput``.

For each open_clip architecture named (default ``ViT-B-32``), a randomly initialised model
(random weights give the real speed, not the real quality) is saved as a checkpoint,
imported with :func:`jointembed_export.import_bundle.import_model` (fp32, and with ``--int8``
the dynamic-int8 sibling), and the runtime bundle is timed: images per second from
``(N,3,S,S)`` pixels (decoding excluded) and Flickr8K-length captions per second, on
``--threads`` intra-op threads (default 2, the project's reference machine). Prints one
JSON line per bundle. Slow (minutes per architecture: export and a 150M+ parameter
checkpoint); not part of the test suite.

With ``--int8``, the int8 bundle's agreement with fp32 is measured on ``--agree-n`` images
(default 200) of the Flickr8K ``--agree-split`` (default test; calibration uses train) and
one caption each: cosine per image (min, mean) between the fp32 and int8 image embeddings,
and the top-10 overlap (share of the fp32 top 10 that int8 keeps) of caption -> image
retrieval (fp32 text queries against fp32 vs int8 image embeddings) and image -> image.
``mean_pairwise_cosine`` (fp32 images) says how close together random-init embeddings lie,
which makes their rankings fragile: with real weights they spread out.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _rate(fn, items: int, min_seconds: float = 5.0) -> float:
    """Items per second of ``fn()`` (which handles ``items`` items), after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        n += items
    return n / (time.perf_counter() - start)


def measure(bundle_dir: Path, captions: list[str], threads: int) -> dict:
    """``{images_per_s, texts_per_s}`` of the bundle at ``bundle_dir``."""
    os.environ["JOINTEMBED_THREADS"] = str(threads)
    from jointembed_pg import Bundle

    b = Bundle.load(bundle_dir)
    pixels = np.random.default_rng(0).normal(size=(16, 3, b.image_spec.size, b.image_spec.size)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        texts = _rate(lambda: b.encode_texts(captions, batch_size=64), len(captions))
    return {"bundle": b.path.name, "precision": b.manifest["precision"], "dim": b.dim,
            "image_size": b.image_spec.size, "pad_to": b.meta.pad_to, "threads": threads,
            "images_per_s": round(_rate(lambda: b.encode_pixels(pixels, batch_size=16), len(pixels)), 2),
            "texts_per_s": round(texts, 2)}


def agreement(fp32_dir: Path, int8_dir: Path, data_dir: Path, split: str, n: int, threads: int) -> dict:
    """fp32-vs-int8 agreement on ``n`` images of ``split`` (module docstring)."""
    os.environ["JOINTEMBED_THREADS"] = str(threads)
    from jointembed_pg import Bundle
    from jointembed_export.data import load_split

    a, b = Bundle.load(fp32_dir), Bundle.load(int8_dir)
    sp = load_split(data_dir, split, limit=n)
    pixels = np.concatenate([a.load_pixels(sp.images[i:i + 50]) for i in range(0, len(sp.images), 50)])
    first = {}
    for cap, img in zip(sp.captions, sp.caption_image_ids):
        first.setdefault(int(img), cap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        queries = a.encode_texts([first[i] for i in sorted(first)])
    x, y = a.encode_pixels(pixels), b.encode_pixels(pixels)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))

    def overlap(q_a, q_b, g_a, g_b, k=10):
        ta, tb = np.argsort(-(q_a @ g_a.T), 1)[:, :k], np.argsort(-(q_b @ g_b.T), 1)[:, :k]
        return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(ta, tb)]))

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pair = xn @ xn.T
    return {"agree_split": split, "agree_images": len(x), "image_cos_min": round(float(cos.min()), 6),
            "image_cos_mean": round(float(cos.mean()), 6),
            "t2i_top10_overlap": round(overlap(queries, queries, x, y), 4),
            "i2i_top10_overlap": round(overlap(x, y, x, y), 4),
            "mean_pairwise_cosine": round(float(pair[~np.eye(len(x), dtype=bool)].mean()), 4),
            "int8": b.manifest.get("int8", {}).get("method")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.import_throughput", description=__doc__.split("\n")[0])
    p.add_argument("archs", nargs="*", default=["ViT-B-32"], help="open_clip architecture names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--int8", action="store_true", help="also time the dynamic-int8 bundle")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--agree-split", default="test", help="Flickr8K split for the int8 agreement (default test)")
    p.add_argument("--agree-n", type=int, default=200, help="images for the int8 agreement (default 200)")
    args = p.parse_args(argv)

    from jointembed_train import _torchvision  # noqa: F401
    import open_clip
    import torch

    from jointembed_export.data import load_split
    from jointembed_export.import_bundle import import_model

    torch.set_num_threads(args.threads)
    captions = load_split(args.data_dir, "dev", limit=64).captions[:256]
    with tempfile.TemporaryDirectory(prefix="je-import-bench-") as tmp:
        for arch in args.archs:
            torch.manual_seed(0)
            ckpt = Path(tmp) / f"{arch}.pt"
            torch.save(open_clip.create_model(arch).state_dict(), ckpt)
            start = time.perf_counter()
            out = import_model(ckpt, Path(tmp) / arch, arch=f"open_clip:{arch}", data_dir=args.data_dir,
                               int8=args.int8)
            seconds = time.perf_counter() - start
            for d in [out] + ([out.with_name(out.name + "-int8")] if args.int8 else []):
                row = {"arch": arch, "import_seconds": round(seconds, 1), **measure(d, captions, args.threads)}
                if d != out:
                    row |= agreement(out, d, args.data_dir, args.agree_split, args.agree_n, args.threads)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
