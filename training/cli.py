"""``python -m jointembed_train {train,features,ablation,eval}``: argparse front end."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .config import TrainConfig
from .features import DEFAULT_CACHE_DIR

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flickr8k"


def load_corpus(dataset: str, data_dir: Path, karpathy_json: str | None = None):
    """Corpus for ``dataset`` (flickr8k | karpathy | pairs); raises ValueError otherwise."""
    from . import data

    if dataset == "flickr8k":
        return data.load_flickr8k(data_dir)
    if dataset == "karpathy":
        if not karpathy_json:
            raise ValueError("--karpathy-json is required for dataset=karpathy")
        return data.load_karpathy(karpathy_json, data_dir)
    if dataset == "pairs":
        return data.load_pairs(karpathy_json or data_dir / "pairs.csv", data_dir)
    raise ValueError(f"unknown dataset {dataset!r}")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="dataset directory (read in place)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="backbone feature cache")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small heads on a shared CPU)")
    p.add_argument("--karpathy-json", default=None, help="Karpathy JSON / pairs CSV|JSONL path")
    p.add_argument("--quiet", action="store_true")


def cmd_train(a: argparse.Namespace) -> None:
    from .checkpoint import save
    from .runner import train

    cfg = TrainConfig.from_file(a.config) if a.config else TrainConfig()
    over = _parse_set(a.set)
    if a.backbone_bundle:  # a path is kept absolute (the checkpoint names it); a name is looked up at use
        bb = a.backbone_bundle
        over["backbone_bundle"] = str(Path(bb).resolve()) if ("/" in bb or "\\" in bb) else bb
    if a.seed is not None:
        over["seed"] = a.seed
    cfg = cfg.replace(**over) if over else cfg
    corpus = load_corpus(cfg.dataset, a.data_dir, a.karpathy_json)
    if cfg.mode == "partial":
        from .partial import train_partial

        ck = train_partial(cfg, corpus, a.out, a.cache_dir, progress=not a.quiet)
    else:
        ck = train(cfg, corpus, a.out, a.cache_dir, a.device, a.resume, progress=not a.quiet)
    print(json.dumps({"selection": ck.info.get("best_epoch", ck.info.get("selection")), **ck.metrics}, indent=1))
    if a.ship:
        save(ck, a.ship)
        print(f"wrote {a.ship}")


def cmd_ablation(a: argparse.Namespace) -> None:
    from .ablation import run_ablation

    corpus = load_corpus("flickr8k", a.data_dir)
    run_ablation(corpus, a.out, a.cache_dir, a.device, seeds=a.seeds, only=a.only,
                 epochs=a.epochs, results_md=a.results_md, progress=not a.quiet)


def cmd_eval(a: argparse.Namespace) -> None:
    from .checkpoint import load
    from .featureset import evaluate, load_split

    ck = load(a.checkpoint)
    corpus = load_corpus(ck.config.dataset, a.data_dir, a.karpathy_json)
    heads = ck.build_heads()
    res = {s: evaluate(heads, load_split(ck.config, corpus, s, a.cache_dir)) for s in a.splits}
    print(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jointembed_train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one configuration")
    _common(t)
    t.add_argument("--config", type=Path, help="JSON/YAML TrainConfig (defaults if omitted)")
    t.add_argument("--set", nargs="*", default=[], help="override config fields: key=json_value")
    t.add_argument("--seed", type=int)
    t.add_argument("--backbone-bundle", metavar="NAME_OR_DIR",
                   help="train the heads on this imported bundle's towers (jointembed model import) instead of "
                        "EfficientNet-Lite/MiniLM: features are its embeddings, computed by the runtime and "
                        "cached per bundle; export the result with `jointembed model build --checkpoint`. "
                        "Same as --set backbone_bundle=...")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--ship", type=Path, help="also copy best.pt here (e.g. training/weights/default.pt)")
    ab = sub.add_parser("ablation", help="the whole ablation table (3 seeds)")
    _common(ab)
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ab.add_argument("--only", nargs="*", default=None, help="subset of configuration names")
    ab.add_argument("--epochs", type=int, default=None, help="override epochs (quick runs)")
    ab.add_argument("--results-md", type=Path, default=None, help="write the table here too")
    ev = sub.add_parser("eval", help="evaluate a checkpoint on splits")
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--splits", nargs="+", default=["dev", "test"])
    ev.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ev.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ev.add_argument("--karpathy-json", default=None)
    ev.add_argument("--threads", type=int, default=1)
    from .static_text import add_parser as add_static_text

    add_static_text(sub)
    a = ap.parse_args(argv)
    if a.cmd == "static-text":
        return a.func(a)
    torch.set_num_threads(a.threads)
    {"train": cmd_train, "ablation": cmd_ablation, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
