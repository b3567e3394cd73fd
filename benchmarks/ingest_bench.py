"""Ingest throughput: the product path end to end next to each of its stages alone.

Images: ``ingest.index_images`` (decode pool -> ONNX encoder -> writer thread) against, on
the same files in the same run: decode only (the same 2-thread pool, file read + sha256 +
``preprocess.load``), encode only (``Bundle.encode_pixels`` on the already decoded pixels,
in ingest's batches) and write only (``Collection.upsert`` of the finished rows, in
ingest's batches, into an empty collection). Captions likewise with ``index_texts``; their
"decode" stage is parsing the Flickr8K token file.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jointembed_pg import ingest, preprocess, readers
from jointembed_pg.readers import PathRecord, TextRecord

from .timing import Stopwatch, rate

#: Threads of the decode pool, as ``index_images`` uses by default.
DECODE_THREADS = 2


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _read_and_load(path: Path, spec: preprocess.ImageSpec) -> tuple[str, np.ndarray]:
    data = path.read_bytes()
    return ingest.sha256(data), preprocess.load(data, spec)


def _decode(paths: list[Path], spec, threads: int) -> tuple[float, list[str], np.ndarray]:
    """Decode stage alone: ``(seconds, sha256 per file, (N,3,S,S) float32 pixels)``."""
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda p: _read_and_load(p, spec), paths))
    seconds = time.perf_counter() - t
    return seconds, [h for h, _ in done], np.stack([a for _, a in done])


def _write(coll, rows: list[ingest.Row], batch: int) -> float:
    sw = Stopwatch()
    for chunk in _chunks(rows, batch):
        with sw.run():
            coll.upsert(chunk)
    return sw.seconds


def _summary(n: int, e2e_s: float, encode_s: float, decode_s: float, write_s: float, report) -> dict:
    return {
        "n": n, "e2e_s": e2e_s, "e2e_per_s": rate(n, e2e_s), "encode_per_s": rate(n, encode_s),
        "decode_per_s": rate(n, decode_s), "write_per_s": rate(n, write_s),
        "ratio_e2e_to_encode": rate(n, e2e_s) / rate(n, encode_s),
        "written": report.written, "failed": len(report.failed),
    }


def run_images(database, bundle, paths: list[Path]) -> tuple[dict, np.ndarray]:
    """Images through every path. Returns ``(results, embeddings (N,D) float32)``."""
    spec = bundle.image_spec
    bundle.encode_pixels(np.stack([preprocess.load(p, spec) for p in paths[:4]]))  # session + warm-up
    decode_s, hashes, pixels = _decode(paths, spec, DECODE_THREADS)  # also warms the page cache
    sw, chunks = Stopwatch(), []
    for i in range(0, len(pixels), ingest.IMAGE_BATCH):
        with sw.run():
            chunks.append(bundle.encode_pixels(pixels[i:i + ingest.IMAGE_BATCH]))
    emb = np.concatenate(chunks)
    del pixels
    coll = database.collection("ingest_images", bundle)
    records = [PathRecord(str(p), p) for p in paths]
    report = ingest.index_images(coll, bundle, records, decode_threads=DECODE_THREADS, progress=False)
    rows = [ingest.Row("image", str(p), str(p), None, h, e) for p, h, e in zip(paths, hashes, emb)]
    write_s = _write(database.collection("write_images", bundle), rows, ingest.IMAGE_BATCH)
    out = _summary(len(paths), report.seconds, sw.seconds, decode_s, write_s, report)
    out.update(batch=ingest.IMAGE_BATCH, decode_threads=DECODE_THREADS, encode_s=sw.seconds)
    return out, emb


def run_texts(database, bundle, captions: list[tuple[str, str]], token_file: Path) -> tuple[dict, np.ndarray]:
    """Captions through every path. Returns ``(results, embeddings (M,D) float32)``."""
    bundle.encode_texts([t for _, t in captions[:8]])  # session + warm-up
    t = time.perf_counter()
    parsed = sum(1 for r in readers.read_texts(token_file) if r.error is None)
    parse_s, t = time.perf_counter() - t, time.perf_counter()
    hashes = [ingest.sha256(text.encode("utf-8")) for _, text in captions]
    hash_s = time.perf_counter() - t
    sw, chunks = Stopwatch(), []
    for chunk in _chunks(captions, ingest.TEXT_BATCH):
        with sw.run():
            chunks.append(bundle.encode_texts([text for _, text in chunk]))
    emb = np.concatenate(chunks)
    coll = database.collection("ingest_texts", bundle)
    report = ingest.index_texts(coll, bundle, [TextRecord(k, text) for k, text in captions], progress=False)
    rows = [ingest.Row("text", k, None, text, h, e) for (k, text), h, e in zip(captions, hashes, emb)]
    write_s = _write(database.collection("write_texts", bundle), rows, ingest.TEXT_BATCH)
    # "decode" of a caption: its share of parsing the whole token file, plus hashing it
    decode_s = parse_s * len(captions) / max(parsed, 1) + hash_s
    out = _summary(len(captions), report.seconds, sw.seconds, decode_s, write_s, report)
    out.update(batch=ingest.TEXT_BATCH, encode_s=sw.seconds, token_file_captions=parsed)
    return out, emb
