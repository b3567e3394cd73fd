"""``jointembed init`` and ``jointembed index image|text``: embed files into a collection."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ModelMismatchError
from ..model.threads import ThreadBudget
from .options import (AliasGroup, _errors, _finish, _stack, _index_log, _progress, bundle_option, collection_option,
                      defer_index_option, dsn_option, int8_option, json_option, memory_cap_option,
                      partial_report_on_interrupt, progress_option, search_index_option, storage_option, threads_option)


@click.command()
@dsn_option
@click.option("--collection", default=None, help="Also create this (empty) collection for the bundle's model.")
@storage_option
@search_index_option
@bundle_option
@json_option
@click.pass_obj
def init(obj, dsn, collection, storage, search_index, bundle_name, as_json):
    """Create the jointembed schema (idempotent; also done on first use)."""
    with _errors():
        store = obj.store(dsn)
        if collection is not None:
            _open_collection(obj, dsn, bundle_name, collection, storage, search_index=search_index)
        elif storage is not None or search_index is not None:
            raise click.UsageError("--storage and --index apply to a new collection: give --collection too")
        info = store.info() if hasattr(store, "info") else {}
    click.echo(json.dumps(info) if as_json else f"jointembed schema ready {info or ''}".rstrip())


@click.group(cls=AliasGroup)
def index():
    """Embed images or captions into a collection."""


def _open_collection(obj, dsn, bundle_name, name, storage=None, *, threads=None, int8=False, defer_index=False,
                     search_index=None):
    from ..search import bulk

    bundle = obj.bundle(bundle_name, budget=ThreadBudget.auto(threads), int8=int8)
    try:
        coll = obj.collection(dsn, name, bundle=bundle, create=True, storage=storage, index=search_index)
    except ModelMismatchError:
        coll = obj.collection(dsn, name, create=False)
        bulk.check_same_model(coll, bundle)  # the message says why precisions never mix
        raise
    if defer_index:
        bulk.drop_indexes(coll)
    return bundle, coll


#: Where ``index image`` and ``index text`` write, and how they load (same options, same order).
_target_options = _stack(collection_option, dsn_option, bundle_option)
_load_options = _stack(storage_option, search_index_option, memory_cap_option, threads_option, int8_option, defer_index_option,
                       json_option, progress_option, click.pass_obj)


@index.command("image")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_target_options
@click.option("--batch-size", default=32, show_default=True, help="Images per encoder batch.")
@_load_options
def index_images_cmd(obj, paths, collection, dsn, bundle_name, batch_size, storage, search_index, memory_cap,
                    threads, int8, defer_index, as_json, progress):
    """Embed image files or directories (recursively) into COLLECTION."""
    from ..ingest import pipeline as ingest, readers

    with _errors(), partial_report_on_interrupt(as_json) as done:
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection, storage, threads=threads, int8=int8,
                                        defer_index=defer_index, search_index=search_index)
        scan = readers.scan_images(paths)
        report = ingest.index_images(coll, bundle, scan.records, batch_size=batch_size, progress=_progress(progress),
                                     ignored=scan.ignored, decode_threads=ThreadBudget.auto(threads).decode)
        done.report = report
        coll.ensure_index(memory_cap=memory_cap, progress=_index_log(progress))
    _finish(report, as_json)


@index.command("text")
@click.argument("file", type=click.Path(path_type=Path))
@_target_options
@click.option("--batch-size", default=256, show_default=True, help="Captions per encoder batch.")
@_load_options
def index_texts_cmd(obj, file, collection, dsn, bundle_name, batch_size, storage, search_index, memory_cap,
                    threads, int8, defer_index, as_json, progress):
    """Embed the captions of FILE: CSV (id,text), JSON lines (id, text) or a Flickr8K token file."""
    from ..ingest import pipeline as ingest, readers

    with _errors(), partial_report_on_interrupt(as_json) as done:
        records = list(readers.read_texts(file))
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection, storage, threads=threads, int8=int8,
                                        defer_index=defer_index, search_index=search_index)
        report = ingest.index_texts(coll, bundle, records, batch_size=batch_size, progress=_progress(progress))
        done.report = report
        coll.ensure_index(memory_cap=memory_cap, progress=_index_log(progress))
    _finish(report, as_json)
