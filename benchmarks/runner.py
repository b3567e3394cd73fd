"""Runs every section of the benchmark once and returns one JSON-ready results dict."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from jointembed_pg.model.bundle import Bundle

from jointembed_pg.model.threads import ThreadBudget
from jointembed_pg.search import bulk

from . import data, env, ingest_bench, ingest_variants, limit, machine, naive, query_bench, scale, synth
from .config import DEFAULT_CHECKPOINT, BenchConfig


class Run:
    """Results of one run being filled in, with per-section wall times and progress lines."""

    def __init__(self, cfg: BenchConfig):
        self.t0 = time.perf_counter()
        self.results: dict = {"config": cfg.to_dict(), "machine": machine.facts(), "timings": {},
                              "skipped": []}

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @contextmanager
    def section(self, name: str):
        t = time.perf_counter()
        self.results.setdefault("load", {})[name] = (machine.load_average() or (float("nan"),))[0]
        self.log(f"{name} ...")
        yield
        self.results["timings"][name] = time.perf_counter() - t
        self.log(f"{name} done in {self.results['timings'][name]:.1f} s")

    def log(self, msg: str) -> None:
        print(f"[bench {time.perf_counter() - self.t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    def skip(self, what: str, why: str) -> None:
        self.results["skipped"].append({"what": what, "why": why})
        self.log(f"skipped {what}: {why}")


#: 1M HNSW build time estimate: the largest build measured before it, scaled linearly in
#: the vector count and then by this factor for the graph's growing depth (10k -> 100k
#: measured about 9x per 10x vectors on this machine; 1.3 leaves a margin).
MILLION_BUILD_FACTOR = 1.3
#: Seconds allowed for the 1M COPY, sizes and exact scans, and for its ef_search sweep.
MILLION_LOAD_S, MILLION_SWEEP_S = 90, 150
#: Seconds kept free after the extra index builds (queries after each build, report).
SWEEP_RESERVE_S = 120


def _bundle_facts(bundle: Bundle) -> dict:
    m = bundle.manifest
    return {"path": str(bundle.path), "model_id": bundle.model_id, "dim": bundle.dim,
            "normalized": bundle.normalized, "precision": m.get("precision"),
            "image_size": bundle.image_spec.size, "max_tokens": bundle.max_tokens}


def _naive(r: Run, database, bundle, cfg: BenchConfig, inputs, checkpoint: Path) -> None:
    if not checkpoint.is_file():
        r.skip("naive PyTorch path", f"no checkpoint at {checkpoint}")
        return
    try:
        with r.section("naive"):
            r.results["naive"] = naive.run(database, bundle, checkpoint, inputs.images[:cfg.naive_images],
                                           inputs.captions[:cfg.naive_captions], cfg.threads)
    except ImportError as e:
        r.skip("naive PyTorch path", f"the training extra is not installed ({e})")


def _queries(r: Run, database, bundle, cfg: BenchConfig, inputs, base: dict) -> None:
    rng = np.random.default_rng(cfg.seed)
    with r.section("query encode"):
        queries = query_bench.encode_queries(bundle, inputs.query_texts, inputs.query_images)
    nn = {m: synth.median_nn_distance(b, rng) for m, b in base.items()}
    noise = {m: synth.noise_model(b, cfg.noise * nn[m], cfg.noise_shape) for m, b in base.items()}
    r.results["synthetic"] = {"median_nn": nn, "noise_norm": {m: z.norm for m, z in noise.items()},
                              "noise": cfg.noise, "shape": cfg.noise_shape,
                              "base_rows": {m: len(b) for m, b in base.items()}}
    r.results["query_encode"] = {m: {"n": len(q["seconds"])} for m, q in queries.items()}
    with r.section("synthetic fidelity"):
        r.results["fidelity"] = scale.fidelity(database, bundle, cfg, base["text"], queries, rng)
    r.results["scales"] = []
    # extra index builds must leave time for the 1M load and the report
    deadline = r.t0 + cfg.budget_s - MILLION_LOAD_S - SWEEP_RESERVE_S
    for n in cfg.sizes:
        with r.section(f"scale {n}"):
            res = scale.run_size(database, bundle, cfg, n, base, noise, queries, rng, deadline=deadline)
        r.results["scales"].append(res)
        for label in res.get("index_sweep_skipped", []):
            r.skip(f"index build {label} at {n:,}", "its estimated build would overrun the time budget")
    if not (cfg.million_load or cfg.million):
        r.skip("1M stored vectors", "--quick" if cfg.quick else "disabled (--no-million-load)")
        return
    build = _million_decision(r, cfg)
    with r.section("scale 1M"):
        r.results["million"] = scale.run_million(database, bundle, cfg, base["image"], noise["image"],
                                                 queries, rng, build_hnsw=build)


def _million_decision(r: Run, cfg: BenchConfig) -> bool:
    """Build HNSW at 1M if forced (``--million``) or if it fits the time budget."""
    scales = r.results.get("scales") or []
    last = scales[-1] if scales else None
    scale_up = scale.MILLION / last["n"] * MILLION_BUILD_FACTOR if last else float("inf")
    estimate = last["build_s"]["image"] * scale_up if last else float("inf")
    left = cfg.budget_s - r.elapsed - MILLION_LOAD_S - MILLION_SWEEP_S
    build = cfg.million or estimate <= left
    r.results["million_decision"] = {"estimate_s": estimate, "left_s": left, "build": build,
                                     "forced": cfg.million, "budget_s": cfg.budget_s}
    if not build:
        r.skip("1M HNSW build and ef_search sweep",
               f"its build was estimated at {estimate / 60:.1f} min ({scale_up:.0f} x the "
               f"{last['n'] if last else 0:,}-vector build of this run) but only {max(left, 0) / 60:.1f} min "
               f"of the {cfg.budget_s / 60:.0f}-min budget were left for it; run with --million to force it")
    return build


def _int8_bundle(r: Run, fp32: Bundle, path: Path | None, flickr: Path, budget: ThreadBudget) -> Bundle | None:
    """The int8 variant (``path``, else ``<fp32 dir>-int8``, built there when missing)."""
    path = path or bulk.int8_dir(fp32.path)
    if not (path / "manifest.json").is_file():
        try:
            from jointembed_export.int8 import build_int8_bundle
        except ImportError as e:
            r.skip("int8 rows", f"no int8 bundle at {path} and the exporter cannot be imported ({e})")
            return None
        build_int8_bundle(fp32.path, path, data_dir=flickr, evaluate=False)
    b = Bundle.load(path, intra_op_threads=budget.intra_op, session_config=budget.session_config())
    if b.meta.precision != "int8":
        r.skip("int8 rows", f"{path} is not an int8 bundle")
        return None
    return b


def _variants(r: Run, database, bundle: Bundle, cfg: BenchConfig, inputs, budget: ThreadBudget,
              txt_emb: np.ndarray) -> None:
    """Issue 19's rows: thread splits, fp32 session options, writes into an indexed collection."""
    imgs = inputs.images[:cfg.split_images]
    with r.section("thread splits"):
        r.results["thread_splits"] = ingest_variants.thread_splits(database, bundle.path, imgs, cfg.variant_rounds)
    with r.section("fp32 options"):
        from jointembed_pg.model import preprocess

        pixels = np.stack([preprocess.load(p, bundle.image_spec) for p in imgs])
        r.results["fp32_options"] = ingest_variants.fp32_options(bundle.path, pixels, cfg.variant_rounds, budget)
        del pixels
    with r.section(f"indexed collection {cfg.prefill:,}"):
        rng = np.random.default_rng(cfg.seed)
        noise = synth.noise_model(txt_emb, cfg.noise * synth.median_nn_distance(txt_emb, rng), cfg.noise_shape)
        stored = synth.generate(txt_emb, cfg.prefill, noise, bundle.normalized, rng)
        caps = inputs.captions[:cfg.prefill_ingest]
        from jointembed_pg.ingest import pipeline as ingest

        rows = [ingest.Row("text", k, None, t, ingest.sha256(t.encode()), e)
                for (k, t), e in zip(caps, txt_emb[:len(caps)])]
        r.results["indexed_collection"] = ingest_variants.indexed_collection(
            database, bundle, caps, rows, stored, cfg.variant_rounds, synth.copy_load)


def run(cfg: BenchConfig, *, dsn: str | None, bundle_path: Path | None, data_dir: Path | None,
        checkpoint: Path | None, int8_path: Path | None = None) -> dict:
    """All sections, in order. Raises :class:`env.Unavailable` when a prerequisite is missing."""
    r = Run(cfg)
    with r.section("setup"):
        budget = ThreadBudget.auto()  # the product's default, as the CLI uses it
        bundle = Bundle.load(env.resolve_bundle(bundle_path), intra_op_threads=budget.intra_op,
                             session_config=budget.session_config())
        flickr = env.flickr8k_dir(data_dir)
        int8 = _int8_bundle(r, bundle, int8_path, flickr, budget)
        inputs = data.load(flickr, cfg.n_images, cfg.n_captions, cfg.n_queries)
        database = env.Database.open(dsn)
    r.results["bundle"] = _bundle_facts(bundle)
    r.results["int8_bundle"] = _bundle_facts(int8) if int8 is not None else None
    r.results["budget"] = {"decode": budget.decode, "intra_op": budget.intra_op, "spinning": budget.spinning}
    r.results["data_dir"] = str(flickr)
    try:
        r.results["postgres"] = machine.postgres(database.conn)
        r.results["postgres"]["embedded"] = dsn is None
        with r.section("ingest images"):
            r.results["ingest_images"], img_emb = ingest_bench.run_images(database, bundle, inputs.images,
                                                                           cfg.ingest_parts, int8, budget.decode)
        with r.section("ingest captions"):
            r.results["ingest_captions"], txt_emb = ingest_bench.run_texts(database, bundle, inputs.captions,
                                                                          inputs.token_file, cfg.ingest_parts, int8)
        _variants(r, database, bundle, cfg, inputs, budget, txt_emb)
        with r.section("limit"):
            r.results["limit"] = limit.measure(bundle.path / "image.onnx", r.results["ingest_images"]["encode_per_s"],
                                               cfg.threads, cfg.peak_n, 2 if cfg.quick else limit.PEAK_REPEATS)
        _naive(r, database, bundle, cfg, inputs, checkpoint or DEFAULT_CHECKPOINT)
        _queries(r, database, bundle, cfg, inputs, {"image": img_emb, "text": txt_emb})
    finally:
        database.close()
    r.results["total_s"] = time.perf_counter() - r.t0
    r.results["finished_at"] = time.strftime("%Y-%m-%d %H:%M %Z")
    r.results["load_at_end"] = machine.load_average()
    return r.results
