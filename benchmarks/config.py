"""The one typed config of a benchmark run: ``--quick`` sizes and full sizes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Bundle the tests build (tests/conftest.py); the benchmark reuses it when it exists.
TEST_BUNDLE = REPO / ".jointembed" / "test-bundle"
#: Committed trained heads, used by the naive PyTorch path.
DEFAULT_CHECKPOINT = REPO / "training" / "weights" / "default.pt"
DEFAULT_OUT = REPO / "docs" / "BENCHMARKS.md"


@dataclass(frozen=True)
class IndexSetting:
    """One HNSW build: graph degree ``m``, ``ef_construction``, parallel maintenance workers."""

    m: int
    ef_construction: int
    workers: int

    @property
    def label(self) -> str:
        return f"m={self.m}, ef_c={self.ef_construction}, workers={self.workers}"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and settings of one run. Counts are items; memory sizes are PostgreSQL strings.

    Attributes:
        quick: small sizes for a smoke run (< 2 min); no figure of a quick run is meaningful.
        n_images / n_captions: Flickr8K items pushed through ingest (product path and stages).
        ingest_parts: the ingest inputs are split into this many parts; each part runs
            encode-only then end-to-end back to back (paired, so load from other jobs hits both).
        naive_images / naive_captions: the subset pushed through the naive PyTorch path.
        sizes: stored vectors per modality for the query benchmark (both directions).
        million: build HNSW at 1M stored image vectors and sweep it (text -> image only) even
            when the estimate says it does not fit ``budget_s``.
        budget_s: wall-clock seconds the full run should stay under; the 1M HNSW step runs
            only when its estimate fits what is left.
        million_load: load 1M vectors (COPY rate, table size per million, exact-scan latency).
        n_queries: queries per direction; every latency percentile is over this many.
        exact_queries_1m: exact-scan queries at 1M (each reads the whole table).
        ef_values: HNSW ``ef_search`` sweep.
        index: the default HNSW build of the query benchmark.
        index_sweep: extra builds at ``index_size`` for the index table.
        noise: expected noise norm of synthetic vectors, as a fraction of the median
            nearest-neighbour distance among the real embeddings.
        noise_shape: ``"cov"`` (shaped like the real embeddings' covariance) or ``"iso"``.
        split_images: images per thread split / fp32 session option (issue 19's rows).
        variant_rounds: rounds of those interleaved comparisons (every variant once per round).
        prefill: synthetic vectors already stored (with HNSW) when ingest into an indexed
            collection is measured; prefill_ingest: captions written into it per variant.
    """

    quick: bool = False
    n_images: int = 2000
    n_captions: int = 4000
    ingest_parts: int = 4
    naive_images: int = 200
    naive_captions: int = 1000
    sizes: tuple[int, ...] = (10_000, 100_000)
    million: bool = False
    budget_s: float = 27 * 60
    million_load: bool = True
    n_queries: int = 500
    exact_queries_1m: int = 20
    ef_values: tuple[int, ...] = (10, 20, 40, 80, 200, 400)
    k: int = 10
    index: IndexSetting = IndexSetting(16, 64, 1)
    index_size: int = 100_000
    index_sweep: tuple[IndexSetting, ...] = (
        IndexSetting(16, 64, 0), IndexSetting(16, 128, 1), IndexSetting(32, 64, 1))
    maintenance_work_mem: str = "2GB"
    noise: float = 1.0
    noise_shape: str = "cov"
    peak_n: int = 2048
    threads: int = 2
    seed: int = 0
    split_images: int = 320
    variant_rounds: int = 2
    prefill: int = 100_000
    prefill_ingest: int = 2000
    notes: dict = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **kw) -> "BenchConfig":
        """Tiny sizes: exercises every code path in well under 2 minutes."""
        base = cls(quick=True, n_images=48, n_captions=192, ingest_parts=2, naive_images=6, naive_captions=24,
                   sizes=(2_000,), million=False, million_load=False, n_queries=30,
                   ef_values=(10, 40), index=IndexSetting(8, 32, 1), index_size=2_000,
                   index_sweep=(IndexSetting(8, 32, 0),), maintenance_work_mem="256MB", peak_n=512,
                   split_images=16, variant_rounds=1, prefill=2_000, prefill_ingest=96)
        return replace(base, **kw)

    def to_dict(self) -> dict:
        return asdict(self)
