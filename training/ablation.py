"""Ablation runner: baselines and each idea of [Malali & Keller 2022] on/off, over seeds.

Every configuration shares :data:`BASE` (same frozen backbones, data, heads, epochs
and batch size) and differs only in its loss / quantizer fields. Each run selects its
epoch on Flickr8K dev; test is reported once per run. Results: ``OUT/ablation.json``,
``OUT/ablation.md`` (table: test R@K both ways and rsum, mean +- std over seeds; dev
rsum; training time) and ``OUT/ablation_rsum.png``. Finished runs are reused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .data import Corpus
from .plots import plot_ablation
from .runner import train

#: Shared settings of every ablation configuration (chosen on dev, see docs/METHOD.md).
BASE: dict = dict(epochs=10, batch_size=128, lr=1e-3, embed_dim=256, head="linear",
                  feature_dropout=0.2)

#: Our method's switches (METHOD.md sections 1-3), applied on top of the VSE++ base.
ADAPTIVE = dict(loss="adaptive")
CENTER = dict(center=True)
QUANT = dict(quantizer=True)

CONFIGS: dict[str, dict] = {
    "VSE++": dict(loss="vsepp"),
    "VSE0": dict(loss="vse0"),
    "InfoNCE": dict(loss="infonce"),
    "+adaptive": {**ADAPTIVE},
    "+center": {**CENTER},
    "+quant": {**QUANT},
    "ours (all three)": {**ADAPTIVE, **CENTER, **QUANT},
    "+adaptive+center": {**ADAPTIVE, **CENTER},
    "+adaptive+quant": {**ADAPTIVE, **QUANT},
    "+center+quant": {**CENTER, **QUANT},
}
#: The default table (the pairwise rows are optional: ``--only``).
DEFAULT_NAMES = ["VSE++", "VSE0", "InfoNCE", "+adaptive", "+center", "+quant", "ours (all three)"]

KEYS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum"]


def config_for(name: str, seed: int, epochs: int | None = None, base: dict | None = None) -> TrainConfig:
    """The TrainConfig of ablation configuration ``name`` (KeyError if unknown)."""
    d = {**(base or BASE), **CONFIGS[name], "seed": seed}
    if epochs is not None:
        d["epochs"] = epochs
    return TrainConfig.from_dict(d)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def run_one(cfg: TrainConfig, corpus: Corpus, out: Path, cache_dir: Path, device: str,
            progress: bool) -> dict:
    """Train (or reuse) one run; returns ``{"dev":..., "test":..., "seconds":...}``."""
    done = out / "metrics.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg:
            return {**saved["metrics"], "seconds": saved["train_seconds"]}
    t0 = time.time()
    ck = train(cfg, corpus, out, cache_dir, device, resume=False, progress=progress)
    return {**ck.metrics, "seconds": time.time() - t0}


def collect(out: Path, seeds: list[int], epochs: int | None, base: dict | None) -> list[dict]:
    """Aggregated rows for every configuration whose runs (all seeds, same config) exist."""
    rows = []
    for name in CONFIGS:
        runs = []
        for s in seeds:
            d = out / _slug(name) / f"seed{s}"
            if not (d / "metrics.json").is_file():
                break
            if TrainConfig.from_dict(json.loads((d / "config.json").read_text())) != config_for(name, s, epochs, base):
                break
            saved = json.loads((d / "metrics.json").read_text())
            runs.append({**saved["metrics"], "seconds": saved["train_seconds"]})
        if len(runs) == len(seeds):
            rows.append(aggregate(name, runs))
    return rows


def aggregate(name: str, runs: list[dict]) -> dict:
    """Mean and std (ddof=0) over seeds of test metrics, plus dev rsum and seconds."""
    row: dict = {"name": name, "seeds": len(runs)}
    for k in KEYS:
        vals = np.array([r["test"][k] for r in runs])
        row[f"{k}_mean"], row[f"{k}_std"] = float(vals.mean()), float(vals.std())
    dev = np.array([r["dev"]["rsum"] for r in runs])
    row["dev_rsum_mean"], row["dev_rsum_std"] = float(dev.mean()), float(dev.std())
    row["seconds_mean"] = float(np.mean([r["seconds"] for r in runs]))
    return row


def table_md(rows: list[dict]) -> str:
    """Markdown table of aggregated rows."""
    head = ("| configuration | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | "
            "test rsum | dev rsum | train s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [f"{r[f'{k}_mean']:.1f} ± {r[f'{k}_std']:.1f}" for k in KEYS]
        lines.append(f"| {r['name']} | " + " | ".join(cells)
                     + f" | {r['dev_rsum_mean']:.1f} ± {r['dev_rsum_std']:.1f} | {r['seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def run_ablation(corpus: Corpus, out: Path, cache_dir: Path, device: str = "cpu",
                 seeds: list[int] = (0, 1, 2), only: list[str] | None = None,
                 epochs: int | None = None, results_md: Path | None = None,
                 progress: bool = True, base: dict | None = None) -> list[dict]:
    """Run every configuration (or ``only`` those) for each seed; write table + plot."""
    out = Path(out)
    for name in only or DEFAULT_NAMES:
        for s in seeds:
            cfg = config_for(name, s, epochs, base)
            r = run_one(cfg, corpus, out / _slug(name) / f"seed{s}", cache_dir, device, progress)
            print(f"[ablation] {name} seed {s}: test rsum {r['test']['rsum']:.1f} "
                  f"dev rsum {r['dev']['rsum']:.1f} ({r['seconds']:.0f} s)", flush=True)
    rows = collect(out, seeds, epochs, base)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    md = table_md(rows)
    (out / "ablation.md").write_text(md)
    plot_ablation(rows, out / "ablation_rsum.png")
    if results_md:
        Path(results_md).write_text(md)
    print(md)
    return rows
