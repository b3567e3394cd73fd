"""The report's PNG plots (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

#: File names under ``<out dir>/img/``.
LATENCY_RECALL = "bench_latency_recall.png"
INGEST_STAGES = "bench_ingest_stages.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_recall(results: dict, path: Path) -> Path:
    """SQL p50 latency vs recall@10 of the ef_search sweep, one line per size and direction."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    sets = [(s["n"], d, rows) for s in results.get("scales", []) for d, rows in s["sweeps"].items()]
    million = results.get("million") or {}
    if million.get("sweep"):
        sets.append((million["n"], "text->image", million["sweep"]))
    for ax, direction in zip(axes, ("text->image", "image->text")):
        for n, d, rows in sets:
            if d != direction:
                continue
            hnsw = [r for r in rows if r["setting"] == "hnsw"]
            line, = ax.plot([r["recall"] for r in hnsw], [r["sql"]["p50"] for r in hnsw], "o-", label=f"HNSW, {n:,}")
            for r in hnsw:
                ax.annotate(str(r["ef_search"]), (r["recall"], r["sql"]["p50"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
            for r in rows:
                if r["setting"] == "exact":
                    ax.plot([r["recall"]], [r["sql"]["p50"]], "x", ms=9, color=line.get_color(),
                            label=f"exact scan, {n:,}")
        ax.axhline(10.0, color="grey", ls=":", lw=1)
        ax.axvline(0.95, color="grey", ls=":", lw=1)  # the aim: <= 10 ms at recall >= 0.95
        ax.set_title(f"{direction} top-10 (labels: ef_search; dotted: the aim)")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("SQL latency p50 (ms, log)")
    fig.tight_layout()
    return _save(fig, plt, path)


def ingest_stages(results: dict, path: Path) -> Path:
    """Items/s of each ingest stage, the product path end to end and the naive path."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    naive = results.get("naive") or {}
    for ax, key, unit in ((axes[0], "images", "images/s"), (axes[1], "captions", "captions/s")):
        r = results[f"ingest_{key}"]
        first = "decode only" if key == "images" else "parse + hash only"
        bars = [(first, r["decode_per_s"]), ("encode only", r["encode_per_s"]),
                ("write only", r["write_per_s"]), ("product end-to-end", r["e2e_per_s"])]
        if key in naive:
            bars.append(("naive end-to-end", naive[key]["e2e_per_s"]))
        names, values = zip(*bars)
        colors = ["#9ecae1", "#4292c6", "#c6dbef", "#08519c", "#fc9272"][:len(bars)]
        ax.barh(names, values, color=colors)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(f"{unit} (log)")
        ax.set_title(f"{key}: n={r['n']:,}")
        ax.invert_yaxis()
        ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
