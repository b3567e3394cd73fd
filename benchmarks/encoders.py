"""Encoder throughput: PyTorch eager vs ONNX fp32 vs ONNX int8, batch sizes 1 and 32.

``python -m benchmarks.encoders [--quick] [--bundle DIR] [--int8-bundle DIR] [--out FILE]``

One run, same inputs for every engine: real Flickr8K test images (preprocessed once with
the bundle's :class:`~jointembed_pg.model.preprocess.ImageSpec`; decoding is timed separately)
and their captions (tokenisation *included* for every engine, as a user pays it). Each
cell is the best of ``rounds`` measurements of items per second, each over at least
``min_seconds`` of back-to-back calls after a short warm-up call; the engines take turns
within a round, so load from other jobs on a shared machine hits them alike. onnxruntime runs with ``intra_op_num_threads = --threads``,
``ORT_ENABLE_ALL`` graph optimisation and the CPU provider; PyTorch with
``torch.set_num_threads(--threads)`` under ``inference_mode``.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jointembed_pg import paths
from jointembed_pg.model.bundle import Bundle

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS_ENCODERS.md"
BATCH_SIZES = (1, 32)


def throughput(fn: Callable[[Sequence], object], items: Sequence, batch: int, min_seconds: float) -> float:
    """Items/s of ``fn`` on consecutive ``batch``-sized slices of ``items`` (cycled)."""
    slices = [items[i:i + batch] for i in range(0, len(items) - batch + 1, batch)]
    fn(slices[0][:4])  # warm-up: session creation, first-call setup (kept short for --quick)
    n, k, t0 = 0, 0, time.perf_counter()
    while k < len(slices) or time.perf_counter() - t0 < min_seconds:
        fn(slices[k % len(slices)])
        n, k = n + batch, k + 1
    return n / (time.perf_counter() - t0)


def _engines(bundle: Bundle, int8: Bundle | None, checkpoint: Path | None, threads: int) -> dict:
    """``{name: (image_fn(pixels), text_fn(captions))}`` for every available engine."""
    import torch

    from jointembed_export.build import source_encoders

    torch.set_num_threads(threads)
    image_enc, text_enc = source_encoders(bundle, checkpoint)
    tok = bundle.tokenizer

    def torch_image(x):
        with torch.inference_mode():
            return image_enc(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    def torch_text(texts):
        ids, mask = tok.encode(texts)
        with torch.inference_mode():
            return text_enc(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    def onnx(b: Bundle):
        return (lambda x: b.encode_pixels(x, batch_size=len(x)),
                lambda t: b.encode_texts(list(t), batch_size=len(t)))

    out = {"PyTorch eager (fp32)": (torch_image, torch_text), "ONNX Runtime fp32": onnx(bundle)}
    if int8 is not None:
        out["ONNX Runtime int8"] = onnx(int8)
    return out


def run(bundle: Bundle, int8: Bundle | None, data_dir: Path, *, checkpoint: Path | None = None,
        n_items: int = 64, min_seconds: float = 3.0, rounds: int = 3, threads: int = 2) -> dict:
    """Measure every engine x modality x batch size (best of ``rounds``).

    Returns:
        ``{"rows": {engine: {"images/s b=1": float, ...}}, "decode_images_per_s": float, ...}``.
    """
    from jointembed_export.data import load_split
    from jointembed_export.parity import load_pixels

    split = load_split(data_dir, "test", limit=n_items)
    t0 = time.perf_counter()
    pixels = load_pixels(split.images, bundle.image_spec)
    decode_rate = len(split.images) / (time.perf_counter() - t0)
    captions = split.captions[:n_items]
    rows: dict[str, dict[str, float]] = {}
    load = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engines = _engines(bundle, int8, checkpoint, threads)
        for _ in range(rounds):
            for name, (img_fn, txt_fn) in engines.items():
                r = rows.setdefault(name, {})
                for bs in BATCH_SIZES:
                    for key, fn, items in ((f"images/s b={bs}", img_fn, pixels),
                                           (f"captions/s b={bs}", txt_fn, captions)):
                        r[key] = max(r.get(key, 0.0), throughput(fn, items, bs, min_seconds))
    return {"rows": rows, "decode_images_per_s": decode_rate, "n_items": n_items, "rounds": rounds,
            "min_seconds": min_seconds, "threads": threads, "loadavg": (load, os.getloadavg()[0])}


def to_markdown(res: dict, bundle: Bundle, int8: Bundle | None) -> str:
    """The results as a Markdown section (table + how it was measured)."""
    import onnxruntime
    import torch

    from benchmarks.machine import cpu_model, usable_cores

    cols = [f"{kind}/s b={bs}" for kind in ("images", "captions") for bs in BATCH_SIZES]
    eager = res["rows"]["PyTorch eager (fp32)"]
    lines = ["## Encoder throughput (PyTorch eager vs ONNX Runtime fp32 / int8)", "",
             "| engine | " + " | ".join(cols) + " | image b=32 vs eager |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for name, r in res["rows"].items():
        speed = r["images/s b=32"] / eager["images/s b=32"]
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + f" | {speed:.2f}x |")
    lines += ["", f"- Inputs: the first {res['n_items']} Flickr8K test images (224x224 JPEG) and "
              f"{res['n_items']} of their captions; the same arrays for every engine.",
              "- Images are timed from preprocessed pixels `(N,3,224,224) float32`; decode + "
              f"preprocess alone runs at {res['decode_images_per_s']:.0f} images/s (one thread).",
              "- Captions are timed from strings: tokenisation (Rust `tokenizers`) + encoder.",
              f"- Each cell: best of {res['rounds']} rounds (engines take turns) of items/s over "
              f">= {res['min_seconds']:g} s of back-to-back calls after a short warm-up call.",
              f"- onnxruntime {onnxruntime.__version__}: `intra_op_num_threads={res['threads']}`, "
              "`graph_optimization_level=ORT_ENABLE_ALL`, CPUExecutionProvider. "
              f"PyTorch {torch.__version__}: `set_num_threads({res['threads']})`, `inference_mode`.",
              f"- Machine: {cpu_model()}, {usable_cores()} usable cores, shared with other jobs: "
              f"1-min load average {res['loadavg'][0]:.1f} at start, {res['loadavg'][1]:.1f} at end "
              "(numbers are noisy; ratios within one run are the meaningful part).",
              f"- fp32 bundle `{bundle.model_id}`" + (f", int8 bundle `{int8.model_id}` "
              f"({int8.manifest['int8']['method']})" if int8 else "; no int8 bundle found") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short timings (< 1 min); numbers are rough")
    p.add_argument("--bundle", type=Path, help="fp32 bundle (default: .jointembed/test-bundle, else default)")
    p.add_argument("--int8-bundle", type=Path, help="int8 bundle (default: <bundle>-int8 if present)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint of the PyTorch engine (default: committed)")
    p.add_argument("--data-dir", type=Path, default=paths.default_data_dir(), help="Flickr8K directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown file (default {DEFAULT_OUT})")
    a = p.parse_args(argv)
    if a.data_dir is None:
        p.error("no Flickr8K directory: pass --data-dir")
    test_bundle = REPO / ".jointembed" / "test-bundle"
    path = a.bundle or (test_bundle if test_bundle.is_dir() else None)
    bundle = Bundle.load(path, intra_op_threads=a.threads)
    int8_path = a.int8_bundle or bundle.path.with_name(bundle.path.name + "-int8")
    int8 = Bundle.load(int8_path, intra_op_threads=a.threads) if int8_path.is_dir() else None
    res = run(bundle, int8, a.data_dir, checkpoint=a.checkpoint, n_items=32 if a.quick else 64,
              min_seconds=0.5 if a.quick else 3.0, rounds=1 if a.quick else 3, threads=a.threads)
    md = to_markdown(res, bundle, int8)
    print(md)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
