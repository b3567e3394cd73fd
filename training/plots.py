"""PNG plots of a run (loss and margin per step, dev rsum per epoch) and of an ablation."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read_steps(path: Path) -> dict[str, list[float]]:
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                # a metric a run does not log (e.g. the binary-code columns) is blank: NaN, a gap in the plot
                cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
    return cols


def plot_run(out: Path) -> Path:
    """Write ``out/curves.png``: loss per step, margin (and tau) per step, dev rsum per epoch."""
    out = Path(out)
    steps = _read_steps(out / "steps.csv")
    hist = json.loads((out / "epochs.json").read_text())
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(steps["step"], steps["loss"], lw=0.5, label="total")
    ax[0].plot(steps["step"], steps["rank"], lw=0.5, label="rank")
    ax[0].set(xlabel="step", ylabel="loss", title="training loss")
    ax[0].legend()
    ax[1].plot(steps["step"], steps["margin"], label="margin m_t")
    if max(steps["tau"], default=0) > 0:
        ax[1].plot(steps["step"], steps["tau"], label="quantizer tau")
        ax[1].set_yscale("log")
    ax[1].set(xlabel="step", title="margin / temperature")
    ax[1].legend()
    ax[2].plot([h["epoch"] for h in hist], [h["dev_rsum"] for h in hist], marker="o")
    ax[2].set(xlabel="epoch", ylabel="dev rsum", title="dev rsum (Flickr8K dev 1K)")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_ablation(rows: list[dict], path: Path) -> Path:
    """Bar plot of test rsum (mean +- std over seeds) per configuration."""
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4.5))
    names = [r["name"] for r in rows]
    ax.bar(range(len(rows)), [r["rsum_mean"] for r in rows], yerr=[r["rsum_std"] for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    lo = min(r["rsum_mean"] - r["rsum_std"] for r in rows)
    ax.set_ylim(max(0, lo - 20), None)
    ax.set_ylabel("Flickr8K test rsum")
    ax.set_title("Ablation: test rsum, mean ± std over seeds (selection on dev)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
