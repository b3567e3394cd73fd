"""The path a user would write without jointembed: PyTorch eager, one item at a time,
one autocommitted ``INSERT`` per row.

Same trained weights (``jointembed_train.checkpoint.load``), same preprocessing functions, same
items table layout as the product path; only the execution strategy differs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from jointembed_pg.model import preprocess

from .timing import Stopwatch, rate

_INSERT = ("INSERT INTO {} (modality, key, source, text, content_hash, model_id, embedding) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s)")


def _insert_stmt(coll) -> sql.Composed:
    return sql.SQL(_INSERT).format(coll.table_ident)


def _connect(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    return conn


#: Items timed per candidate torch thread count before the naive run.
CALIBRATE_ITEMS = 5


def pick_threads(call, candidates: tuple[int, ...]) -> dict:
    """Time ``call()`` :data:`CALIBRATE_ITEMS` times per torch thread count; keep the fastest.

    PyTorch's OpenMP threads busy-wait, so with other jobs on the same cores 2 threads can
    be many times slower than 1. The naive path gets whichever is faster here, which makes
    the product/naive ratio a lower bound. Returns ``{"threads": best, "ms": {n: ms}}``.
    """
    import torch

    ms = {}
    for n in candidates:
        torch.set_num_threads(n)
        call()
        t = time.perf_counter()
        for _ in range(CALIBRATE_ITEMS):
            call()
        ms[n] = (time.perf_counter() - t) / CALIBRATE_ITEMS * 1e3
    best = min(ms, key=ms.get)
    torch.set_num_threads(best)
    return {"threads": best, "ms": ms}


def _images(enc, conn, stmt, paths: list[Path], spec, model_id: str, threads: tuple[int, ...]) -> dict:
    import torch

    with torch.inference_mode():
        x0 = torch.from_numpy(preprocess.load(paths[0], spec))[None]
        calib = pick_threads(lambda: enc(x0), threads)
        model, write, total = Stopwatch(), Stopwatch(), Stopwatch()
        with total.run():
            for p in paths:
                img = preprocess.decode(p)
                x = torch.from_numpy(preprocess.preprocess(img, spec))[None]
                with model.run():
                    e = enc(x)[0].numpy().astype(np.float32)
                with write.run():
                    conn.execute(stmt, ("image", str(p), str(p), None, None, model_id, e))
    return {**_summary(len(paths), total, model, write), "torch_threads": calib}


def _texts(enc, conn, stmt, captions: list[tuple[str, str]], model_id: str, max_tokens: int,
           threads: tuple[int, ...]) -> dict:
    import torch
    from tokenizers import Tokenizer

    from jointembed_train import backbones

    tok = Tokenizer.from_file(str(backbones.tokenizer_path()))
    tok.no_padding()
    tok.enable_truncation(max_tokens)

    def embed(text: str) -> np.ndarray:
        ids = tok.encode(text)
        t_ids = torch.tensor([ids.ids], dtype=torch.int64)
        t_mask = torch.tensor([ids.attention_mask], dtype=torch.int64)
        return enc(t_ids, t_mask)[0].numpy().astype(np.float32)

    with torch.inference_mode():
        calib = pick_threads(lambda: embed(captions[0][1]), threads)
        model, write, total = Stopwatch(), Stopwatch(), Stopwatch()
        with total.run():
            for key, text in captions:
                with model.run():
                    e = embed(text)
                with write.run():
                    conn.execute(stmt, ("text", key, None, text, None, model_id, e))
    return {**_summary(len(captions), total, model, write), "torch_threads": calib}


def _summary(n: int, total: Stopwatch, model: Stopwatch, write: Stopwatch) -> dict:
    return {"n": n, "e2e_per_s": rate(n, total.seconds), "encode_per_s": rate(n, model.seconds),
            "write_per_s": rate(n, write.seconds), "e2e_s": total.seconds}


def run(database, bundle, checkpoint: Path, paths: list[Path], captions: list[tuple[str, str]],
        threads: int) -> dict:
    """Naive images and captions into a fresh collection; rates per item.

    Raises:
        FileNotFoundError / ImportError: no checkpoint or no training extra (caller skips).
    """
    import torch

    from jointembed_train import checkpoint as ckpt_mod
    from jointembed_train import encoders

    ckpt = ckpt_mod.load(checkpoint)
    coll = database.collection("naive", bundle)
    stmt = _insert_stmt(coll)
    candidates = tuple(sorted({1, threads}))
    default_threads = torch.get_num_threads()
    try:
        with _connect(database.dsn) as conn:
            img = _images(encoders.image_encoder(ckpt), conn, stmt, paths, bundle.image_spec, bundle.model_id,
                          candidates)
            txt = _texts(encoders.text_encoder(ckpt), conn, stmt, captions, bundle.model_id, bundle.max_tokens,
                         candidates)
    finally:
        torch.set_num_threads(default_threads)
    database.drop(coll)
    return {"images": img, "captions": txt, "torch_default_threads": default_threads,
            "torch": torch.__version__, "checkpoint": str(checkpoint), "batch": 1}
