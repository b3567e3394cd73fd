"""Throughput of imported architectures on this CPU: ``python -m benchmarks.import_throughput``.

For each open_clip architecture named (default ``ViT-B-32``), a randomly initialised model
(random weights give the real speed, not the real quality) is saved as a checkpoint,
imported with :func:`jointembed_export.import_bundle.import_model` (fp32, and with ``--int8``
the dynamic-int8 sibling), and the runtime bundle is timed: images per second from
``(N,3,S,S)`` pixels (decoding excluded) and Flickr8K-length captions per second, on
``--threads`` intra-op threads (default 2, the project's reference machine). Prints one
JSON line per bundle. Slow (minutes per architecture: export and a 150M+ parameter
checkpoint); not part of the test suite.
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.import_throughput", description=__doc__.split("\n")[0])
    p.add_argument("archs", nargs="*", default=["ViT-B-32"], help="open_clip architecture names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--int8", action="store_true", help="also time the dynamic-int8 bundle")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/flickr8k"))
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
                print(json.dumps({"arch": arch, "import_seconds": round(seconds, 1), **measure(d, captions, args.threads)}),
                      flush=True)


if __name__ == "__main__":
    main()
