"""``python -m benchmarks [--quick] [--dsn DSN] [--out docs/BENCHMARKS.md]``.

Runs every benchmark on this machine (embedded PostgreSQL in a temporary directory unless
``--dsn`` names a server), prints a summary table and writes the Markdown report with its
PNG plots (``<out dir>/img/bench_*.png``). Exit code 2 when a prerequisite is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_OUT, BenchConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="Benchmark jointembed_pg on this machine; write a Markdown report + plots.")
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 2 min); figures mean nothing")
    p.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away embedded pgserver)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown report (default {DEFAULT_OUT})")
    p.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    p.add_argument("--from-json", type=Path, metavar="JSON",
                   help="measure nothing: re-render the report from a --json file of an earlier run")
    p.add_argument("--bundle", type=Path, help="model bundle (default: the tests' bundle, built if needed)")
    p.add_argument("--data-dir", type=Path, help="Flickr8K directory (default: ../shared/data/flickr8k)")
    p.add_argument("--int8-bundle", type=Path,
                   help="int8 variant of the bundle (default: <bundle>-int8, built there when missing)")
    p.add_argument("--checkpoint", type=Path, help="weights of the naive PyTorch path (default: committed)")
    p.add_argument("--million", action="store_true",
                   help="build HNSW at 1M vectors and sweep it even when it does not fit --budget-min")
    p.add_argument("--budget-min", type=float, default=27.0,
                   help="the full run's time budget; the 1M HNSW step runs only if its estimate fits (27)")
    p.add_argument("--no-million-load", action="store_true", help="skip the 1M COPY/size/exact-scan step")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> BenchConfig:
    kw = {"million": args.million, "million_load": not args.no_million_load and not args.quick,
          "budget_s": args.budget_min * 60}
    if args.quick:
        kw["million"] = False
        return BenchConfig.quick_config(**kw)
    return BenchConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from . import env, report, runner

    if args.from_json:
        results = json.loads(args.from_json.read_text())
        print(report.summary_table(results))
        print(f"wrote {report.write(results, args.out)} (re-rendered from {args.from_json})", file=sys.stderr)
        return 0
    cfg = config_from(args)
    try:
        results = runner.run(cfg, dsn=args.dsn, bundle_path=args.bundle, data_dir=args.data_dir, int8_path=args.int8_bundle,
                             checkpoint=args.checkpoint)
    except env.Unavailable as e:
        print(f"benchmarks: cannot run: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(report.summary_table(results))
    path = report.write(results, args.out)
    print(f"wrote {path} and its plots in {path.parent / 'img'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
