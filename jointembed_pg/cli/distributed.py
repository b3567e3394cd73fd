"""``jointembed index-distributed image|text --engine ray``: the batch ingest on a Ray pool.

Same output and exit codes as ``jointembed index image|text`` (0, 1 error, 3 some items
failed). Added to the root group by :mod:`jointembed_pg.cli`.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from .options import (AliasGroup, _errors, _finish, _progress, _stack, bundle_option, collection_option, dsn_option,
                      json_option, progress_option)

ENGINES = ("ray",)

engine_options = [
    click.option("--engine", type=click.Choice(ENGINES), default="ray", show_default=True,
                 help="Distributed engine (needs the matching extra: pip install 'jointembed-pg[ray]')."),
    click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
                 help="Worker actors; each loads the model once and holds one connection."),
    click.option("--cpus-per-worker", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                 help="CPUs reserved per worker (also its onnxruntime threads)."),
    click.option("--ray-address", default=None, metavar="ADDR", envvar="RAY_ADDRESS",
                 help="Ray cluster to join ('auto', 'ray://head:10001'); default: a local one for this job."),
]


_target_options = _stack(collection_option, dsn_option, bundle_option)
_run_options = _stack(*engine_options, json_option, progress_option)


@click.group("index-distributed", cls=AliasGroup)
def index_distributed():
    """Embed images or captions on a distributed engine (Ray), same results as `index`.

    \b
    The database (--dsn) must be reachable from every worker, and the bundle directory
    must exist at the same path on every node.
    """


def _ray_options(workers, cpus_per_worker, ray_address, progress):
    return {"workers": workers, "cpus_per_worker": cpus_per_worker, "address": ray_address,
            "progress": _progress(progress)}


@index_distributed.command("image")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_target_options
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per encoder batch and per write transaction.")
@_run_options
def images_cmd(paths, collection, dsn, bundle_name, batch_size, engine, workers, cpus_per_worker, ray_address,
               as_json, progress):
    """Embed image files or directories (recursively) into COLLECTION."""
    from .. import distributed
    from ..model.bundle import resolve

    with _errors(), _ray_chatter_to_stderr():
        report = distributed.index_images_ray(dsn, collection, resolve(bundle_name), paths, batch_size=batch_size,
                                              **_ray_options(workers, cpus_per_worker, ray_address, progress))
        _ensure_index(dsn, collection)
    _finish(report, as_json)


@index_distributed.command("text")
@click.argument("file", type=click.Path(path_type=Path))
@_target_options
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Captions per encoder batch and per write transaction.")
@_run_options
def texts_cmd(file, collection, dsn, bundle_name, batch_size, engine, workers, cpus_per_worker, ray_address,
              as_json, progress):
    """Embed the captions of FILE: CSV (id,text), JSON lines (id, text) or a Flickr8K token file."""
    from .. import distributed
    from ..model.bundle import resolve

    with _errors(), _ray_chatter_to_stderr():
        report = distributed.index_texts_ray(dsn, collection, resolve(bundle_name), file, batch_size=batch_size,
                                             **_ray_options(workers, cpus_per_worker, ray_address, progress))
        _ensure_index(dsn, collection)
    _finish(report, as_json)


def _ray_chatter_to_stderr():
    """Ray prints worker and raylet messages to ``sys.stdout``; keep stdout for ``--json``."""
    return contextlib.redirect_stdout(sys.stderr)


def _ensure_index(dsn, collection):
    from ..search.store import Store

    with Store(dsn) as store:
        store.collection(collection).ensure_index()
