"""``jointembed demo``: the main job end to end on real Flickr8K.

Builds the default bundle if it is missing, starts (or reuses) the embedded Postgres,
indexes a split's images and captions, runs text->image, image->text and image->image
queries, prints the hits and writes an HTML gallery of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from . import paths
from .cli import _errors, _progress, bundle_option, cli, dsn_option, json_option, progress_option
from .errors import InputError

DEMO_SENTENCES = (
    "a dog runs through the snow",
    "a child in a pink dress climbing stairs",
    "a man riding a bicycle on a dirt path",
    "two people sitting on a bench by the water",
    "a group of children playing soccer on a field",
)
DEMO_IMAGES = 3


def ensure_default_bundle(progress: bool = True) -> Path:
    """Return the default bundle's directory, exporting it first if it is missing.

    Raises:
        BundleError: the bundle is missing and the export extra (torch) is not installed.
    """
    from . import exporter
    from .bundle import Bundle

    target = paths.bundles_dir() / paths.DEFAULT_BUNDLE
    if (target / "manifest.json").is_file():
        return target
    try:
        build = exporter.load()
    except exporter.ExporterMissing as e:
        raise exporter.ExporterMissing(f"no model bundle at {target}, and {e}; then: jointembed model build") from e
    click.echo(f"building the default model bundle into {target} (one time, ~1-2 min) ...", err=True)
    build.build_default_bundle(target)
    Bundle.load(target)
    return target


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Flickr8K-layout directory [default: ../shared/data/flickr8k when it exists].")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True)
@click.option("--collection", default=None, help="Collection [default: flickr8k_<split>].")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("jointembed-demo.html"), show_default=True, help="Where to write the gallery.")
@click.option("-k", "k", default=5, show_default=True, help="Hits per query.")
@dsn_option
@bundle_option
@json_option
@progress_option
@click.pass_obj
def demo(obj, data_dir, split, collection, html_path, k, dsn, bundle_name, as_json, progress):
    """Main job: build the bundle, index Flickr8K into Postgres, run cross-modal queries."""
    from . import flickr8k, ingest, readers
    from .gallery import write_gallery

    show = _progress(progress)
    with _errors():
        data_dir = data_dir or paths.default_data_dir()
        if data_dir is None:
            raise InputError("no Flickr8K data found at ../shared/data/flickr8k; "
                             "pass --data-dir DIR (a directory with images/ and Flickr8k.token.txt)")
        data = flickr8k.load_split(data_dir, split)
        bundle = obj.bundle(bundle_name or str(ensure_default_bundle(show)))
        name = collection or f"flickr8k_{split}"
        coll = obj.store(dsn).collection(name, model_id=bundle.model_id, dim=bundle.dim, create=True)
        img_recs = [readers.PathRecord(str(p), p) for p in data.image_paths]
        reports = [
            ingest.index_images(coll, bundle, img_recs, progress=show),
            ingest.index_texts(coll, bundle, [readers.TextRecord(k_, t) for k_, t in data.captions], progress=show),
        ]
        coll.ensure_index()
        queries = _run_queries(coll, bundle, data, k)
        write_gallery(html_path, queries)
    _report(reports, queries, html_path, name, as_json)


def _run_queries(coll, bundle, data, k):
    queries = []
    for text, vec in zip(DEMO_SENTENCES, bundle.encode_texts(list(DEMO_SENTENCES))):
        hits = coll.search_vector(vec, target="image", k=k)
        queries.append({"label": f"text → image: {text}", "query_text": text, "query_image": None, "hits": hits})
    step = max(1, len(data.image_paths) // DEMO_IMAGES)
    picks = [data.image_paths[i * step] for i in range(DEMO_IMAGES)]
    for path, vec in zip(picks, bundle.encode_images(picks)):
        for target, arrow in (("text", "image → text"), ("image", "image → image")):
            hits = [h for h in coll.search_vector(vec, target=target, k=k + 1) if h.key != str(path)][:k]
            queries.append({"label": f"{arrow}: {path.name}", "query_text": None, "query_image": str(path), "hits": hits})
    return queries


def _report(reports, queries, html_path, name, as_json):
    if as_json:
        click.echo(json.dumps({
            "collection": name, "ingest": [r.to_dict() for r in reports], "html": str(html_path),
            "queries": [{"label": q["label"], "hits": [{"key": h.key, "distance": float(h.distance),
                                                        "text": h.text, "source": h.source} for h in q["hits"]]}
                        for q in queries],
        }))
        return
    for r in reports:
        click.echo(f"{r.modality}s: {r.written} written, {r.skipped} unchanged, {len(r.failed)} failed ({r.seconds:.1f} s)")
    for q in queries:
        click.echo(q["label"])
        for rank, h in enumerate(q["hits"], 1):
            what = h.text if h.modality == "text" else Path(h.source or h.key).name
            click.echo(f"  {rank}. {h.distance:.4f}  {what}")
    click.echo(f"gallery: {html_path.resolve()}")
