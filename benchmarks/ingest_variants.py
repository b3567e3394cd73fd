"""Issue 19's changes, each measured against its own baseline in the same run, interleaved.

* ``thread_splits``: ``index_images`` end to end under each split of the cores between
  decoder processes and onnxruntime's intra-op threads (:class:`ThreadBudget`), in rounds
  (every split once per round), so load from other jobs hits every split alike.
* ``fp32_options``: the fp32 image encoder alone on the same decoded pixels, one change at
  a time against the product's session (graph optimisation level, denormals as zero,
  batch size), in rounds.
* ``indexed_collection``: writing into a collection that already holds ``n`` vectors with
  an HNSW index vs an empty, unindexed one (write-only ``Collection.upsert`` and
  ``index_texts`` end to end, in rounds), and building the index after the load instead.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jointembed_pg.ingest import pipeline as ingest
from jointembed_pg.ingest.readers import PathRecord, TextRecord
from jointembed_pg.ingest.sandbox import ImageLoader
from jointembed_pg.model.bundle import Bundle
from jointembed_pg.model.threads import ThreadBudget
from jointembed_pg.search import bulk

from .timing import Stopwatch, rate

#: (label, decoder processes, intra-op threads or None = onnxruntime's default, spinning)
SPLITS = (("before: 2 decoders, onnxruntime default threads, spinning", 2, None, True),
          ("1 decoder, 2 intra-op, no spinning (default)", 1, 2, False),
          ("2 decoders, 2 intra-op, no spinning", 2, 2, False),
          ("1 decoder, 1 intra-op, no spinning", 1, 1, False),
          ("2 decoders, 1 intra-op, no spinning", 2, 1, False))


def _bundle(path: Path, intra: int | None, spinning: bool) -> Bundle:
    cfg = {} if spinning else ThreadBudget(1, 1).session_config()
    return Bundle.load(path, intra_op_threads=intra, session_config=cfg, verify=False)


def thread_splits(database, bundle_path: Path, paths: list[Path], rounds: int) -> dict:
    """``index_images`` of ``paths`` under every :data:`SPLITS` entry, ``rounds`` times each."""
    records = [PathRecord(str(p), p) for p in paths]
    setups = []
    for label, decode, intra, spin in SPLITS:
        b = _bundle(bundle_path, intra, spin)
        loader = ImageLoader(b.image_spec, workers=decode)
        ingest.index_images(database.collection("warm", b), b, records[:8], decode_threads=decode,
                            progress=False, loader=loader)  # sessions + decoders started
        setups.append((label, decode, b, loader))
    seconds = {label: 0.0 for label, *_ in SPLITS}
    try:
        for _ in range(rounds):
            for label, decode, b, loader in setups:
                coll = database.collection("split", b)
                rep = ingest.index_images(coll, b, records, decode_threads=decode, progress=False, loader=loader)
                seconds[label] += rep.seconds
                database.drop(coll)
    finally:
        for *_, loader in setups:
            loader.close()
    n = len(paths) * rounds
    return {"n": n, "rounds": rounds, "rows": [{"label": k, "per_s": rate(n, s)} for k, s in seconds.items()]}


def _ort_session(path: Path, level, intra: int, config: dict[str, str]):
    """An onnxruntime session set up as :meth:`Bundle._new_session` does, with ``level``."""
    import onnxruntime as ort

    from jointembed_pg.model.bundle import X64_QUANT_PRECISION

    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.add_session_config_entry(*X64_QUANT_PRECISION)
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    opts.intra_op_num_threads = intra
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def fp32_options(bundle_path: Path, pixels: np.ndarray, rounds: int, budget: ThreadBudget) -> dict:
    """The fp32 image encoder alone on ``pixels`` ``(N,3,S,S) float32`` under each session
    change (one at a time against the product's session), ``rounds`` times each."""
    import onnxruntime as ort

    all_, cfg = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, budget.session_config()
    variants = [("product session (ORT_ENABLE_ALL, batch 32)", all_, cfg, 32),
                ("graph optimisation ORT_ENABLE_EXTENDED", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, cfg, 32),
                ("graph optimisation ORT_ENABLE_BASIC", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, cfg, 32),
                ("session.set_denormal_as_zero=1", all_, {**cfg, "session.set_denormal_as_zero": "1"}, 32),
                *[(f"batch {b}", all_, cfg, b) for b in (8, 16, 64, 128)]]
    path, setups = Path(bundle_path) / "image.onnx", []
    for label, level, config, batch in variants:
        sess = _ort_session(path, level, budget.intra_op, config)
        sess.run(None, {"pixels": pixels[:4]})
        setups.append((label, sess, batch))
    seconds = {label: 0.0 for label, *_ in setups}
    for _ in range(rounds):
        for label, sess, batch in setups:
            sw = Stopwatch()
            for i in range(0, len(pixels), batch):
                x = np.ascontiguousarray(pixels[i:i + batch])
                with sw.run():
                    sess.run(None, {"pixels": x})
            seconds[label] += sw.seconds
    n = len(pixels) * rounds
    return {"n": n, "rounds": rounds, "rows": [{"label": k, "per_s": rate(n, s)} for k, s in seconds.items()]}


def indexed_collection(database, bundle: Bundle, captions: list[tuple[str, str]], rows: list[ingest.Row],
                       stored: np.ndarray, rounds: int, copy_load) -> dict:
    """Writes into a collection already holding ``len(stored)`` vectors with HNSW, vs empty.

    Args:
        captions: ``(key, text)`` ingested end to end by ``index_texts``.
        rows: the same captions as finished rows (write-only ``upsert``, ingest's batches).
        stored: ``(n, D) float32`` pre-fill, COPYed once and indexed once.
        copy_load: ``synth.copy_load``.
    """
    big = database.collection("prefilled", bundle)
    t = time.perf_counter()
    copy_load(database.conn, big, "text", stored, bundle.model_id)
    copy_s, t = time.perf_counter() - t, time.perf_counter()
    big.ensure_index(modalities=("text",))
    build_s = time.perf_counter() - t
    records = [TextRecord(k, text) for k, text in captions]
    out = {"stored": len(stored), "copy_s": copy_s, "build_s": build_s, "n": len(rows), "rounds": rounds}
    acc = {k: 0.0 for k in ("write_indexed", "write_empty", "e2e_indexed", "e2e_empty")}
    for _ in range(rounds):
        for where, coll in (("indexed", big), ("empty", database.collection("empty", bundle))):
            sw = Stopwatch()
            for chunk in [rows[i:i + ingest.TEXT_BATCH] for i in range(0, len(rows), ingest.TEXT_BATCH)]:
                with sw.run():
                    coll.upsert(chunk)
            acc[f"write_{where}"] += sw.seconds
            coll.delete("text", [r.key for r in rows])
            acc[f"e2e_{where}"] += ingest.index_texts(coll, bundle, records, progress=False).seconds
            coll.delete("text", [r.key for r in rows])
            if where == "empty":
                database.drop(coll)
    n = len(rows) * rounds
    out.update({k: rate(n, s) for k, s in acc.items()})
    # the other way: drop the index, load, build it again
    t = time.perf_counter()
    bulk.drop_indexes(big)
    big.upsert(rows)
    load_s, t = time.perf_counter() - t, time.perf_counter()
    big.ensure_index(modalities=("text",))
    out["deferred"] = {"load_s": load_s, "rebuild_s": time.perf_counter() - t}
    database.drop(big)
    return out


def _rows(block: dict, unit: str) -> list[list[str]]:
    from .tables import f_rate

    base = block["rows"][0]["per_s"]
    return [[r["label"], f"{f_rate(r['per_s'])} {unit}", f"{r['per_s'] / base:.2f}"] for r in block["rows"]]


def section(results: dict) -> str:
    """Markdown: one row per change of issue 19, each with its own baseline of this run."""
    from .tables import f_rate, md_table

    im, tx = results.get("ingest_images") or {}, results.get("ingest_captions") or {}
    out = ["### 1b. Each change of issue 19, against its baseline in the same run",
           "Every block below ran its variants interleaved (each variant once per round), so load "
           "from other jobs hits them alike; the ratio column is against the block's first row."]
    b = results.get("budget")
    if results.get("thread_splits"):
        ts = results["thread_splits"]
        out.append(f"**Thread budget** (`index_images` end to end, {ts['n'] // ts['rounds']:,} images x "
                   f"{ts['rounds']} rounds; decoder processes vs onnxruntime intra-op threads, "
                   "`session.intra_op.allow_spinning`). The product's default (`ThreadBudget.auto()`, "
                   f"`--threads` unset) on this machine: {b['decode']} decoder(s), {b['intra_op']} intra-op "
                   "threads, no spinning.\n\n" + md_table(["split", "rate", "vs before"], _rows(ts, "images/s")))
    if tx.get("encode_unsorted_per_s"):
        u, s_ = tx["encode_unsorted_per_s"], tx["encode_per_s"]
        out.append(md_table(["change", "before", "after", "after / before"], [
            [f"captions sorted by token length within windows of {tx['sort_window']} batches "
             "(`Bundle.encode_texts_by_length`), encoder only, same captions",
             f"{f_rate(u)} captions/s (input order)", f"{f_rate(s_)} captions/s", f"{s_ / u:.2f}"],
            *[[f"int8 bundle (`--int8`), {key} {what}", f"{f_rate(r[k])} {key}/s (fp32)",
               f"{f_rate(r['int8'][k])} {key}/s (int8)", f"{r['int8'][k] / r[k]:.2f}"]
              for key, r in (("images", im), ("captions", tx)) if r.get("int8")
              for k, what in (("encode_per_s", "encoder only"), ("e2e_per_s", "end to end"))]]))
    if results.get("fp32_options"):
        fo = results["fp32_options"]
        out.append(f"**fp32 image encoder, one session change at a time** (encoder only on the same "
                   f"{fo['n'] // fo['rounds']:,} decoded images x {fo['rounds']} rounds, raw onnxruntime "
                   "sessions set up as the product's):\n\n" + md_table(["session", "rate", "vs product"],
                                                                    _rows(fo, "images/s")))
    ic = results.get("indexed_collection")
    if ic:
        d = ic["deferred"]
        incremental = ic["n"] / ic["write_indexed"]
        out.append(
            f"**Writing into an indexed collection** ({ic['stored']:,} synthetic caption vectors COPYed in "
            f"{ic['copy_s']:.1f} s, HNSW built once in {ic['build_s']:.1f} s and reused; {ic['n']:,} real "
            f"captions per variant x {ic['rounds']} rounds, deleted after each):\n\n" + md_table(
                ["path", f"into {ic['stored']:,} + HNSW", "into an empty collection", "indexed / empty"], [
                    ["write only (`Collection.upsert`, binary COPY + merge, batches of 256)",
                     f"{f_rate(ic['write_indexed'])} rows/s", f"{f_rate(ic['write_empty'])} rows/s",
                     f"{ic['write_indexed'] / ic['write_empty']:.2f}"],
                    ["end to end (`index_texts`)", f"{f_rate(ic['e2e_indexed'])} captions/s",
                     f"{f_rate(ic['e2e_empty'])} captions/s", f"{ic['e2e_indexed'] / ic['e2e_empty']:.2f}"]])
            + f"\n\nBuilding the index after the load instead (`index ... --defer-index`): drop the index, "
              f"write the {ic['n']:,} rows ({d['load_s']:.1f} s), rebuild over {ic['stored'] + ic['n']:,} "
              f"rows ({d['rebuild_s']:.1f} s): {d['load_s'] + d['rebuild_s']:.1f} s against "
              f"{incremental:.1f} s of writes into the live index. Deferring pays only when the load is "
              f"large next to what is stored. At 1,000,000 stored vectors ingest was not measured: its "
              f"HNSW pre-fill build alone, estimated from this run's {ic['stored']:,}-vector build "
              f"({ic['build_s']:.0f} s x {1_000_000 // ic['stored']} x 1.3 for the deeper graph = "
              f"{ic['build_s'] * 1_000_000 / ic['stored'] * 1.3 / 60:.0f} min), does not fit the run's "
              "15-minute bound on 2 shared cores.")
    return "\n\n".join(out) if len(out) > 2 else ""
