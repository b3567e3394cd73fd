"""Small timing helpers: a stopwatch and latency percentiles (milliseconds)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


class Stopwatch:
    """Accumulates wall-clock seconds over several ``with sw.run():`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def run(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t


def rate(count: int, seconds: float) -> float:
    """Items per second (``nan`` when nothing was timed)."""
    return count / seconds if seconds > 0 else float("nan")


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """``{"p50": ms, "p95": ms, "p99": ms, "mean": ms, "n": count}`` of per-call seconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    out = {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}
    out["mean"], out["n"] = float(a.mean()), int(a.size)
    return out


def emit(results: dict, text: str, out, json_path=None) -> None:
    """Write a benchmark's markdown ``text`` to ``out`` (and the raw ``results`` as JSON to
    ``json_path`` when given), then print the markdown."""
    import json

    out.write_text(text)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    print(text)
