"""Markdown sections of the report, one function per section, plus number formatting."""
from __future__ import annotations

from .query_bench import WARMUP_QUERIES

MIB = 1024 * 1024


def f_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def f_ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def f_ratio(x: float) -> str:
    return f"{x:.2f}"


def f_mib(b: float) -> str:
    return f"{b / MIB:,.1f} MiB"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# -- 1. ingest ------------------------------------------------------------------------
def ingest_section(results: dict) -> str:
    im, tx, nv = results["ingest_images"], results["ingest_captions"], results.get("naive")
    rows = [["product end-to-end (`index_images` / `index_texts`)", f_rate(im["e2e_per_s"]), f_rate(tx["e2e_per_s"])],
            ["encode only (`Bundle.encode_pixels` / `encode_texts_by_length`, same batches)", f_rate(im["encode_per_s"]),
             f_rate(tx["encode_per_s"])],
            ["decode only (read + sha256 + `preprocess.load`, 2 threads / parse token file + sha256)",
             f_rate(im["decode_per_s"]), f_rate(tx["decode_per_s"])],
            ["write only (`Collection.upsert`, same batches, empty collection)", f_rate(im["write_per_s"]),
             f_rate(tx["write_per_s"])],
            ["stages one after another, 1 / (sum of 1/rate)", f_rate(im["stage_sum_per_s"]),
             f_rate(tx["stage_sum_per_s"])],
            ["**end-to-end / encode only**", f_ratio(im["ratio_e2e_to_encode"]), f_ratio(tx["ratio_e2e_to_encode"])]]
    if nv:
        ni, nt = nv["images"], nv["captions"]
        rows += [["naive end-to-end (PyTorch eager, 1 item/call, 1 autocommit INSERT/row)",
                  f_rate(ni["e2e_per_s"]), f_rate(nt["e2e_per_s"])],
                 ["naive: PyTorch model call only", f_rate(ni["encode_per_s"]), f_rate(nt["encode_per_s"])],
                 ["naive: INSERT only", f_rate(ni["write_per_s"]), f_rate(nt["write_per_s"])],
                 ["**product / naive (end-to-end)**", f"{im['e2e_per_s'] / ni['e2e_per_s']:.1f}x",
                  f"{tx['e2e_per_s'] / nt['e2e_per_s']:.1f}x"]]
    n_naive = (f"; naive path on the first {nv['images']['n']:,} images and {nv['captions']['n']:,} captions "
               f"of the same inputs ({_naive_threads(nv)})") if nv else ""
    return (
        "## 1. Ingest\n\n"
        f"Items per second. Product path and its stages on the same {im['n']:,} Flickr8K images and "
        f"{tx['n']:,} captions{n_naive}. Image batches of {im['batch']}, caption batches of {tx['batch']} "
        "(ingest's defaults; captions length-sorted in windows of 8 batches); the product's default thread "
        f"budget: {_budget(results)}. Files are in the OS page cache "
        "(the decode-only pass reads them first). The inputs were split into "
        f"{len(im['parts']['n'])} parts; each part ran encode-only and then end-to-end back to back, so load "
        "from other jobs hits both alike; the rates are totals over all parts "
        f"({_parts(im, 'images')}; {_parts(tx, 'captions')}). The stages overlap in the product path (decode pool ahead of the "
        "encoder, writer thread behind it) but share the same cores: the stage-sum row is the rate if "
        "they ran one after another, so end-to-end above it is overlap won.\n\n"
        + md_table(["path", "images/s", "captions/s"], rows) + _overlap_note(im, tx)
        + "\n\n![ingest rate by stage](img/bench_ingest_stages.png)")


def _budget(results: dict) -> str:
    b = results.get("budget")
    if not b:
        return "onnxruntime with its default threads"
    return (f"{b['intra_op']} onnxruntime intra-op threads without spinning, {b['decode']} image decoder "
            "process(es) decoding up to 2 batches ahead (`ThreadBudget.auto()`)")


def _overlap_note(im: dict, tx: dict) -> str:
    below = [name for name, r in (("images", im), ("captions", tx)) if r["e2e_per_s"] < r["stage_sum_per_s"]]
    if not below:
        return ""
    return (f"\n\nFor {' and '.join(below)} end-to-end is below the stage-sum rate: overlapping the stages won "
            "nothing here, because the decode pool, the writer and onnxruntime's own threads all compete for "
            "the same cores.")


def _parts(r: dict, unit: str) -> str:
    ratios = ", ".join(f"{x:.2f}" for x in r["parts"]["ratio"])
    return f"{unit}: per-part end-to-end / encode-only {ratios}"


def _naive_threads(nv: dict) -> str:
    def one(key: str) -> str:
        c = nv[key]["torch_threads"]
        tried = ", ".join(f"{n}: {ms:.0f} ms" for n, ms in sorted(c["ms"].items()))
        return f"{key} {c['threads']} ({tried} per item)"

    return (f"torch {nv['torch']}; the naive path runs with the faster torch thread count of a short "
            f"calibration, {one('images')}, {one('captions')}, so the product/naive ratio is a lower bound")


# -- 2. query -------------------------------------------------------------------------
def _lat(p: dict) -> str:
    return f"{f_ms(p['p50'])} / {f_ms(p['p95'])} / {f_ms(p['p99'])}"


def _sweep_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        label = f"HNSW ef_search={r['ef_search']}" if r["setting"] == "hnsw" else "exact scan"
        out.append([label, f"{r['recall']:.3f}", _lat(r["encode"]), _lat(r["sql"]), _lat(r["total"]),
                    str(r["sql"]["n"])])
    return out


_SWEEP_HEAD = ["search", "recall@10", "encode ms p50/p95/p99", "SQL ms p50/p95/p99",
               "total ms p50/p95/p99", "queries"]


def _synthetic(results: dict) -> str:
    s = results["synthetic"]
    shape = ("shaped like the real embeddings' covariance, N(0, s^2 C)" if s["shape"] == "cov"
             else "isotropic")
    return (f"Stored vectors: the real embeddings of the ingested items ({s['base_rows']['image']:,} images, "
            f"{s['base_rows']['text']:,} captions) first, then real embeddings picked at random plus Gaussian "
            f"noise ({shape}) with an expected norm of {s['noise']} x the median nearest-neighbour distance "
            f"among the real ones (images: {s['median_nn']['image']:.3f}, captions: {s['median_nn']['text']:.3f})"
            + (", renormalised to unit length" if results["bundle"]["normalized"] else "")
            + ". Loaded with binary `COPY` (`pgvector.psycopg`).")


def _fidelity(results: dict) -> str:
    f = results.get("fidelity")
    if not f:
        return ""
    efs = sorted(f["real"]["recall"], key=int)
    rows = [[name, f"{f[name]['n']:,}", f"{f[name]['median_nn']:.3f}", f"{f[name]['median_query_nn']:.3f}"]
            + [f"{f[name]['recall'][ef]:.3f}" for ef in efs] for name in ("real", "synthetic")]
    reps = f["real"]["n"] / f["bases"]
    base = results["synthetic"]["base_rows"]
    at = ", ".join(f"{s['n']:,}: images {s['n'] / base['image']:.0f}x, captions {s['n'] / base['text']:.0f}x"
                   for s in results.get("scales", []))
    return ("Check of the synthetic data, in this run: all real caption embeddings of section 1 against a "
            f"synthetic set of the same size grown the same way from {f['bases']:,} of them (each real vector "
            f"used about {reps:.0f} times; in the stored sets below, {at}), both indexed with the default HNSW "
            "and searched image->text with the held-out image queries. Where the synthetic set's recall is "
            "lower, the recall figures below are pessimistic for real data of the same size.\n\n"
            + md_table(["stored set", "vectors", "median NN distance", "median query->nearest distance"]
                       + [f"recall@10 ef_search={ef}" for ef in efs], rows))


def query_section(results: dict) -> str:
    if not results.get("scales"):
        return ""
    cfg = results["config"]
    parts = ["## 2. Query latency and recall\n\n"
             f"Top-{cfg['k']} through the product path: encode = `Bundle.encode_texts([caption])` / "
             "`Bundle.encode_images([path])` (read + decode + preprocess + ONNX), one query at a time; "
             "SQL = `Collection.search_vector(q, target=..., k=10, ef_search=...)` (one transaction: "
             "set `hnsw.ef_search`, `ORDER BY embedding <-> q LIMIT 10`); exact = `exact=True` "
             "(sequential scan). Total = encode + SQL of the same query. Queries are held-out Flickr8K "
             "captions and images (never stored). Recall@10 is against a numpy brute-force top-10 over the "
             f"stored vectors. {query_bench_warmup()} " + _synthetic(results)]
    parts.append(_fidelity(results))
    for s in results["scales"]:
        load = ", ".join(f"{m} {f_rate(v['copy_rows_per_s'])} rows/s" for m, v in s["load"].items())
        for direction, rows in s["sweeps"].items():
            parts.append(f"### {s['n']:,} stored vectors per modality, {direction}\n\n"
                         + md_table(_SWEEP_HEAD, _sweep_rows(rows)))
        parts.append(f"COPY load at {s['n']:,}: {load}.")
    parts.append(_million_query(results))
    parts.append("![latency vs recall](img/bench_latency_recall.png)")
    return "\n\n".join(p for p in parts if p)


def query_bench_warmup() -> str:
    return f"Before each sweep {WARMUP_QUERIES} untimed queries warm the index pages."


def _million_query(results: dict) -> str:
    m = results.get("million")
    if not m:
        return ""
    text = (f"### 1,000,000 stored image vectors, text->image\n\nCOPY load: {f_rate(m['load']['copy_rows_per_s'])} "
            f"rows/s ({m['load']['copy_s']:.0f} s). ")
    rows = list(m.get("sweep") or [])
    rows.append(m["exact"])
    if not m.get("sweep"):
        text += ("No HNSW index was built at 1M in this run (see *Skipped*); only the exact scan was timed, "
                 f"on {m['exact']['sql']['n']} queries (each reads the whole table), with the embeddings of "
                 "the first text queries.")
    else:
        text += f"HNSW build: {m['build_s']:.0f} s. The exact scan ran on {m['exact']['sql']['n']} queries."
    return text + "\n\n" + md_table(_SWEEP_HEAD, _sweep_rows(rows))


# -- 3. index -------------------------------------------------------------------------
def index_section(results: dict) -> str:
    if not results.get("scales"):
        return ""
    cfg = results["config"]
    idx = cfg["index"]
    rows = []
    for s in results["scales"]:
        for mod in ("image", "text"):
            rows.append([f"{s['n']:,}", mod, f"{s['build_s'][mod]:.1f}", f_mib(s["sizes"]["hnsw"][mod])])
    m = results.get("million")
    if m and m.get("build_s") is not None:
        rows.append([f"{m['n']:,}", "image", f"{m['build_s']:.1f}", f_mib(m["sizes"]["hnsw"]["image"])])
    parts = ["## 3. Index build and size\n\n"
             f"HNSW (`vector_l2_ops`, partial per modality) built by `Collection.ensure_index` with "
             f"m={idx['m']}, ef_construction={idx['ef_construction']}, "
             f"`maintenance_work_mem={cfg['maintenance_work_mem']}`, "
             f"`max_parallel_maintenance_workers={idx['workers']}` (the leader plus that many workers), after the "
             "vectors were loaded. Each table holds both modalities, so each build scans 2N rows.\n\n"
             + md_table(["N per modality", "modality", "build s", "index size"], rows)]
    sweep = next((s.get("index_sweep") for s in results["scales"] if s.get("index_sweep")), None)
    if sweep:
        srows = [[str(r["m"]), str(r["ef_construction"]), str(r["workers"]), f"{r['build_s']:.1f}",
                  f_mib(r["index_bytes"]), f"{r['recall']:.3f}", f_ms(r["sql"]["p50"])] for r in sweep]
        parts.append(f"Build settings at {cfg['index_size']:,} image vectors (text->image queries at "
                     f"ef_search={sweep[0]['ef_search']}; `maintenance_work_mem={cfg['maintenance_work_mem']}`):\n\n"
                     + md_table(["m", "ef_construction", "parallel workers", "build s", "index size",
                                 "recall@10", "SQL p50 ms"], srows))
    parts.append(_table_sizes(results))
    return "\n\n".join(parts)


def _per_million(sizes: dict, key_bytes: float) -> str:
    return f_mib(key_bytes * 1e6 / max(sizes["rows"], 1))


def _table_sizes(results: dict) -> str:
    rows = []
    sets = [(f"{s['n']:,} + {s['n']:,} (both modalities)", s["sizes"]) for s in results["scales"]]
    m = results.get("million")
    if m:
        sets.append((f"{m['n']:,} images, before HNSW", m["sizes_no_hnsw"]))
        if m.get("sizes"):
            sets.append((f"{m['n']:,} images, with HNSW", m["sizes"]))
    for label, sz in sets:
        hnsw = sum(sz["hnsw"].values())
        rows.append([label, f"{sz['rows']:,}", _per_million(sz, sz["heap"] + sz["toast"]),
                     _per_million(sz, sz["btree"]), _per_million(sz, hnsw) if hnsw else "-",
                     _per_million(sz, sz["total"]), f_mib(sz["total"])])
    return ("Table size per million embeddings (D=" + str(results["bundle"]["dim"]) + ", float4 vectors; rows "
            "carry modality, key, model_id and timestamps; synthetic rows have no source/text):\n\n"
            + md_table(["table", "rows", "heap+TOAST per 1M", "btree (pkey + unique key) per 1M",
                        "HNSW per 1M", "total per 1M", "total measured"], rows))


# -- 4. limit -------------------------------------------------------------------------
def limit_section(results: dict) -> str:
    lim = results.get("limit")
    if not lim:
        return ""
    ops = ", ".join(f"{k} {v:.3f}" for k, v in sorted(lim["flops_by_op"].items()))
    gemm = f"{lim['gemm_n']}^3, {lim['threads']} threads"
    rows = [["image graph FLOPs per image (2 x MACs of Conv/Gemm/MatMul)",
             f"{lim['gflops_per_image']:.3f} GFLOP ({ops})"],
            ["encoder-only rate (section 1)", f"{f_rate(lim['images_per_s'])} images/s"],
            ["achieved", f"{lim['achieved_gflops']:.1f} GFLOP/s"],
            [f"peak: numpy fp32 GEMM {gemm}", f"{lim['peak_numpy_gflops']:.1f} GFLOP/s"],
            [f"peak: onnxruntime fp32 MatMul {gemm}", f"{lim['peak_ort_gflops']:.1f} GFLOP/s"],
            [f"peak: {lim['threads']} x onnxruntime fp32 MatMul {lim['gemm_n']}^3 on 1 thread",
             f"{lim['threads'] * lim['peak_ort_1thread_gflops']:.1f} GFLOP/s"],
            [f"**achieved / peak (the highest of the three, {lim['peak_gflops']:.1f})**",
             f"**{100 * lim['fraction_of_peak']:.1f} %**"]]
    return ("## 4. Limit: image encoder against the machine's fp32 peak\n\n"
            "FLOPs are counted from `image.onnx` itself: shape inference at batch 1 (shapes it cannot "
            "infer come from one onnxruntime run), then 2 x multiply-accumulates of every Conv, Gemm and "
            "MatMul node; elementwise ops, pooling and activations are not counted. The peak is the best of "
            f"{lim['gemm_repeats']} timed square fp32 GEMMs after a warm-up, with numpy (BLAS threads pinned "
            "by environment variables in a subprocess) and with a one-node onnxruntime graph "
            "(`intra_op_num_threads`); with other jobs on the cores a 2-thread GEMM can get less than two "
            "cores, so twice the 1-thread GEMM is measured too and the highest figure is the peak.\n\n"
            + md_table(["", "value"], rows)
            + f"\n\nThe image encoder runs at {100 * lim['fraction_of_peak']:.0f} % of the measured fp32 GEMM peak. "
              "EfficientNet-Lite0's depthwise 3x3 convolutions have little reuse per weight and cannot run at "
              "GEMM speed, so what is left is in the kernels; what the pipeline around the encoder loses is "
              "measured in section 1.")
