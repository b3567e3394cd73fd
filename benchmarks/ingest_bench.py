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

from jointembed_pg.ingest import pipeline as ingest, readers
from jointembed_pg.model import preprocess
from jointembed_pg.ingest.readers import PathRecord, TextRecord

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


def _summary(n: int, e2e: list[float], encode: list[float], sizes: list[int], decode_s: float,
             write_s: float, reports: list) -> dict:
    """Rates over all parts (total items / total seconds) and the paired ratio of each part."""
    e2e_s, encode_s = sum(e2e), sum(encode)
    stage_sum = 1.0 / (1.0 / rate(n, decode_s) + 1.0 / rate(n, encode_s) + 1.0 / rate(n, write_s))
    return {
        "n": n, "e2e_s": e2e_s, "e2e_per_s": rate(n, e2e_s), "encode_per_s": rate(n, encode_s),
        "decode_per_s": rate(n, decode_s), "write_per_s": rate(n, write_s),
        "stage_sum_per_s": stage_sum, "ratio_e2e_to_encode": rate(n, e2e_s) / rate(n, encode_s),
        "parts": {"n": sizes, "e2e_per_s": [rate(m, x) for m, x in zip(sizes, e2e)],
                  "encode_per_s": [rate(m, x) for m, x in zip(sizes, encode)],
                  "ratio": [b / a for a, b in zip(e2e, encode)]},
        "written": sum(r.written for r in reports), "failed": sum(len(r.failed) for r in reports),
    }


def _parts(n: int, parts: int) -> list[slice]:
    step = -(-n // max(1, parts))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _encode_images(bundle, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    sw, chunks = Stopwatch(), []
    for i in range(0, len(pixels), ingest.IMAGE_BATCH):
        with sw.run():
            chunks.append(bundle.encode_pixels(pixels[i:i + ingest.IMAGE_BATCH]))
    return sw.seconds, np.concatenate(chunks)


def _encode_texts(bundle, captions: list[tuple[str, str]]) -> tuple[float, np.ndarray]:
    """The product's text encoding: windows of ``TEXT_SORT_WINDOW`` batches, length-sorted."""
    sw, chunks = Stopwatch(), []
    for chunk in _chunks(captions, ingest.TEXT_BATCH * ingest.TEXT_SORT_WINDOW):
        with sw.run():
            chunks.append(bundle.encode_texts_by_length([text for _, text in chunk], batch_size=ingest.TEXT_BATCH))
    return sw.seconds, np.concatenate(chunks)


def _encode_texts_unsorted(bundle, captions: list[tuple[str, str]]) -> float:
    """Before issue 19: batches of ``TEXT_BATCH`` in input order, each padded to its longest."""
    sw = Stopwatch()
    for chunk in _chunks(captions, ingest.TEXT_BATCH):
        with sw.run():
            bundle.encode_texts([text for _, text in chunk], batch_size=ingest.TEXT_BATCH)
    return sw.seconds


def _int8_summary(n: int, e2e: list[float], encode: list[float], int8) -> dict | None:
    if int8 is None:
        return None
    return {"model_id": int8.model_id, "e2e_per_s": rate(n, sum(e2e)), "encode_per_s": rate(n, sum(encode))}


def run_images(database, bundle, paths: list[Path], parts: int, int8=None,
               decode_threads: int = DECODE_THREADS) -> tuple[dict, np.ndarray]:
    """Images through every path. The inputs are split into ``parts``; each part runs
    encode-only, then end-to-end, back to back (then both with the ``int8`` bundle, if
    given), so load from other jobs hits all alike.
    Returns ``(results, embeddings (N,D) float32)``."""
    spec = bundle.image_spec
    bundle.encode_pixels(np.stack([preprocess.load(p, spec) for p in paths[:4]]))  # session + warm-up
    decode_s, hashes, pixels = _decode(paths, spec, DECODE_THREADS)  # also warms the page cache
    records = [PathRecord(str(p), p) for p in paths]
    encode, e2e, embs, reports, e2e8, encode8 = [], [], [], [], [], []
    if int8 is not None:
        int8.encode_pixels(pixels[:4])
    for part in _parts(len(paths), parts):
        seconds, emb = _encode_images(bundle, pixels[part])
        encode.append(seconds)
        embs.append(emb)
        coll = database.collection("ingest_images", bundle)
        reports.append(ingest.index_images(coll, bundle, records[part], decode_threads=decode_threads,
                                           progress=False))
        e2e.append(reports[-1].seconds)
        database.drop(coll)
        if int8 is not None:
            encode8.append(_encode_images(int8, pixels[part])[0])
            coll = database.collection("ingest_images8", int8)
            e2e8.append(ingest.index_images(coll, int8, records[part], decode_threads=decode_threads,
                                            progress=False).seconds)
            database.drop(coll)
    del pixels
    emb = np.concatenate(embs)
    rows = [ingest.Row("image", str(p), str(p), None, h, e) for p, h, e in zip(paths, hashes, emb)]
    write_s = _write(database.collection("write_images", bundle), rows, ingest.IMAGE_BATCH)
    sizes = [len(range(len(paths))[p]) for p in _parts(len(paths), parts)]
    out = _summary(len(paths), e2e, encode, sizes, decode_s, write_s, reports)
    out.update(batch=ingest.IMAGE_BATCH, decode_threads=decode_threads,
               int8=_int8_summary(len(paths), e2e8, encode8, int8))
    return out, emb


def run_texts(database, bundle, captions: list[tuple[str, str]], token_file: Path,
              parts: int, int8=None) -> tuple[dict, np.ndarray]:
    """Captions through every path, in parts as :func:`run_images`.

    Returns ``(results, embeddings (M,D) float32)``.
    """
    bundle.encode_texts([t for _, t in captions[:8]])  # session + warm-up
    t = time.perf_counter()
    parsed = sum(1 for r in readers.read_texts(token_file) if r.error is None)
    parse_s, t = time.perf_counter() - t, time.perf_counter()
    hashes = [ingest.sha256(text.encode("utf-8")) for _, text in captions]
    hash_s = time.perf_counter() - t
    records = [TextRecord(k, text) for k, text in captions]
    encode, e2e, embs, reports, unsorted, e2e8, encode8 = [], [], [], [], [], [], []
    if int8 is not None:
        int8.encode_texts([t for _, t in captions[:8]])
    for part in _parts(len(captions), parts):
        unsorted.append(_encode_texts_unsorted(bundle, captions[part]))
        seconds, emb = _encode_texts(bundle, captions[part])
        encode.append(seconds)
        embs.append(emb)
        coll = database.collection("ingest_texts", bundle)
        reports.append(ingest.index_texts(coll, bundle, records[part], progress=False))
        e2e.append(reports[-1].seconds)
        database.drop(coll)
        if int8 is not None:
            encode8.append(_encode_texts(int8, captions[part])[0])
            coll = database.collection("ingest_texts8", int8)
            e2e8.append(ingest.index_texts(coll, int8, records[part], progress=False).seconds)
            database.drop(coll)
    emb = np.concatenate(embs)
    rows = [ingest.Row("text", k, None, text, h, e) for (k, text), h, e in zip(captions, hashes, emb)]
    write_s = _write(database.collection("write_texts", bundle), rows, ingest.TEXT_BATCH)
    # "decode" of a caption: its share of parsing the whole token file, plus hashing it
    decode_s = parse_s * len(captions) / max(parsed, 1) + hash_s
    sizes = [len(range(len(captions))[p]) for p in _parts(len(captions), parts)]
    out = _summary(len(captions), e2e, encode, sizes, decode_s, write_s, reports)
    out.update(batch=ingest.TEXT_BATCH, token_file_captions=parsed, sort_window=ingest.TEXT_SORT_WINDOW,
               encode_unsorted_per_s=rate(len(captions), sum(unsorted)),
               int8=_int8_summary(len(captions), e2e8, encode8, int8))
    return out, emb
