"""Synthetic stored vectors that follow the real embedding distribution, and COPY loading.

A synthetic vector is a real Flickr8K embedding (picked uniformly) plus Gaussian noise,
renormalised to unit length when the bundle's embeddings are normalised. The noise is
shaped like the real embeddings themselves, ``N(0, s^2 * C)`` with ``C`` their covariance
(``shape="cov"``; ``"iso"`` = isotropic), and scaled so its expected norm is a fraction of
the median nearest-neighbour distance among the real embeddings: each real item gets a
cloud of near-paraphrases that stays on the data's own directions instead of filling all
D dimensions evenly. The first rows of every set are the real embeddings themselves.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from psycopg import sql

#: Rows generated (and COPYed) per block, bounding the temporary memory.
BLOCK = 100_000
#: Real embeddings used as queries to estimate the nearest-neighbour distance.
NN_SAMPLE = 1000


def median_nn_distance(base: np.ndarray, rng: np.random.Generator) -> float:
    """Median L2 distance from a real embedding to its nearest other real embedding.

    Args:
        base: ``(N, D) float32`` real embeddings (N >= 2).
    """
    idx = rng.choice(len(base), size=min(NN_SAMPLE, len(base)), replace=False)
    q = base[idx].astype(np.float64)
    b = base.astype(np.float64)
    d2 = (q ** 2).sum(1)[:, None] - 2.0 * q @ b.T + (b ** 2).sum(1)[None, :]
    d2[np.arange(len(idx)), idx] = np.inf  # not itself
    return float(np.median(np.sqrt(np.maximum(d2.min(1), 0.0))))


@dataclass(frozen=True)
class Noise:
    """Gaussian noise ``z @ factor.T`` with ``z ~ N(0, I)``; ``factor``: ``(D, D) float32``.

    ``norm``: expected L2 norm of one noise vector (L2 units of the embedding space).
    """

    factor: np.ndarray
    norm: float
    shape: str


def noise_model(base: np.ndarray, norm: float, shape: str = "cov") -> Noise:
    """Noise of expected norm ``norm``, shaped like ``base``'s covariance or isotropic.

    Args:
        base: ``(N, D) float32`` real embeddings.
        shape: ``"cov"`` (``N(0, s^2 C)``, ``C`` = covariance of ``base``) or ``"iso"``.
    """
    d = base.shape[1]
    if shape == "iso":
        return Noise(np.eye(d, dtype=np.float32) * np.float32(norm / np.sqrt(d)), norm, shape)
    if shape != "cov":
        raise ValueError(f"noise shape must be 'cov' or 'iso', got {shape!r}")
    w, v = np.linalg.eigh(np.cov(base.T.astype(np.float64)))
    w = np.clip(w, 0.0, None)
    factor = v * np.sqrt(w) * (norm / np.sqrt(w.sum()))  # E||z @ factor.T||^2 = norm^2
    return Noise(factor.astype(np.float32), norm, shape)


def generate(base: np.ndarray, n: int, noise: Noise, normalized: bool, rng: np.random.Generator) -> np.ndarray:
    """``(n, D) float32``: the real rows first, then real rows picked at random + ``noise``.

    Args:
        base: ``(N, D) float32`` real embeddings.
        normalized: renormalise every synthetic row to unit L2 norm.
    """
    out = np.empty((n, base.shape[1]), np.float32)
    real = min(n, len(base))
    out[:real] = base[:real]
    for start in range(real, n, BLOCK):
        stop = min(start + BLOCK, n)
        z = rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32)
        rows = base[rng.integers(0, len(base), stop - start)] + z @ noise.factor.T
        if normalized:
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        out[start:stop] = rows
    return out


def key(modality: str, i: int) -> str:
    """Item key of stored vector ``i`` (``image:0000042``); :func:`index_of` inverts it."""
    return f"{modality}:{i:07d}"


def index_of(item_key: str) -> int:
    return int(item_key.rsplit(":", 1)[1])


def copy_load(conn, coll, modality: str, vectors: np.ndarray, model_id: str) -> float:
    """Binary ``COPY`` of ``vectors`` into the collection's items table; returns seconds.

    Uses pgvector's binary dumper (``pgvector.psycopg``, registered on ``conn``).
    """
    stmt = sql.SQL("COPY {} (modality, key, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
        coll.table_ident)
    t = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as cp:
        cp.set_types(["text", "text", "text", "vector"])
        for i, v in enumerate(vectors):
            cp.write_row((modality, key(modality, i), model_id, v))
    return time.perf_counter() - t


def exact_topk(queries: np.ndarray, stored: np.ndarray, k: int, chunk: int = 64) -> np.ndarray:
    """Reference top-``k`` (by L2, ascending) stored row indices per query: ``(Q, k) int64``."""
    s64 = stored.astype(np.float32)
    norms = (s64 ** 2).sum(1)
    out = np.empty((len(queries), k), np.int64)
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk].astype(np.float32)
        d = norms[None, :] - 2.0 * q @ s64.T  # ||q||^2 is constant per row
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[i:i + chunk] = np.take_along_axis(part, order, 1)
    return out
