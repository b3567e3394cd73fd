"""``jointembed demo``: the main job end to end on real Flickr8K.

Builds the default bundle if it is missing, starts (or reuses) the embedded Postgres,
indexes a split's images and captions, runs text->image, image->text and image->image
queries, prints the hits, writes an HTML gallery of them (correct matches by the Flickr8K
ground truth marked) and ends with the collection it filled and the commands to try next.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from .. import paths
from .options import _errors, _progress, bundle_option, dsn_option, json_option, progress_option, quiet_stdout
from ..errors import terminal_line
from ..progress import heartbeat

DEMO_SENTENCES = (
    "a dog runs through the snow",
    "a child in a pink dress climbing stairs",
    "a man riding a bicycle on a dirt path",
    "two people sitting on a bench by the water",
    "a group of children playing soccer on a field",
)
DEMO_IMAGES = 3
#: Real captions of the split used as text queries: their own image is the right answer.
DEMO_CAPTIONS = 2


def ensure_default_bundle(progress: bool = True, data_dir: Path | None = None) -> Path:
    """Return the default bundle's directory, exporting it first if it is missing.

    ``data_dir``: the Flickr8K directory the export checks parity on (the demo's
    ``--data-dir``; ``None``: the exporter's default, ``../shared/data/flickr8k``, which a
    wheel install does not have, so it would fall back to synthetic inputs).

    Raises:
        BundleError: the bundle is missing and the export extra (torch) is not installed.
    """
    from ..model import exporter
    from ..model.bundle import Bundle, bundles_dir

    target = bundles_dir() / paths.DEFAULT_BUNDLE
    if (target / "manifest.json").is_file():
        return target
    try:
        build = exporter.load()
    except exporter.ExporterMissing as e:
        raise exporter.ExporterMissing(f"no model bundle at {target}, and {e}; then: jointembed model build") from e
    click.echo(f"building the default model bundle into {target} (one time, ~1-2 min) ...", err=True)
    with quiet_stdout(), heartbeat("building the model bundle", enabled=progress):
        build.build_default_bundle(target, data_dir=data_dir)
    Bundle.load(target)
    return target


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Flickr8K-layout directory (images/, Flickr8k.token.txt) [default: $JOINTEMBED_DATA_DIR, "
                   "else shared/data/flickr8k beside the checkout].")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True,
              help="Flickr8K split (1,000 images for dev and test, 6,000 for train; 5 captions each).")
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
    from ..ingest import flickr8k, pipeline as ingest, readers
    from ..evaluation.gallery import write_gallery

    show = _progress(progress)
    with _errors():
        data_dir = paths.flickr8k_dir(data_dir)
        data = flickr8k.load_split(data_dir, split)
        bundle = obj.bundle(bundle_name or str(ensure_default_bundle(show, data_dir)))
        name = collection or f"flickr8k_{split}"
        coll = obj.collection(dsn, name, bundle=bundle, create=True)
        where = database_location(dsn)
        if not as_json:
            click.echo(where, err=True)
        img_recs = [readers.PathRecord(str(p), p) for p in data.image_paths]
        reports = [
            ingest.index_images(coll, bundle, img_recs, progress=show),
            ingest.index_texts(coll, bundle, [readers.TextRecord(k_, t) for k_, t in data.captions], progress=show),
        ]
        coll.ensure_index()
        queries = _run_queries(coll, bundle, data, k)
        counts = {"image": coll.count("image"), "text": coll.count("text")}
        write_gallery(html_path, queries, title=f"jointembed demo: Flickr8K {split}",
                      header={"collection": name, "model": f"{bundle.model_id} ({bundle.path.name}, dim {bundle.dim})",
                              "counts": counts})
    _report(reports, queries, html_path, name, counts, next_steps(name, queries, data, dsn), as_json, where)


def database_location(dsn: str | None) -> str:
    """``database: <DSN, password masked>`` and, for the embedded server, its data directory."""
    from .. import settings
    from ..errors import redact_dsn

    given = dsn or settings.get().database_url
    if given:
        return f"database: {redact_dsn(given)}"
    from ..server import embedded

    srv = embedded.server()
    return (f"database: {srv.uri()} (the embedded PostgreSQL, data dir {srv.pgdata}; "
            f"`jointembed server start` keeps it running, `jointembed server dsn` prints this DSN)")


def _caption_picks(data, exclude: set[int]) -> list[tuple[str, str, int]]:
    """``(caption key, caption, image index)`` of DEMO_CAPTIONS captions spread over the split."""
    step = max(1, len(data.captions) // (DEMO_CAPTIONS + 1))
    out = []
    for i in range(step // 2, len(data.captions), step):
        img = data.caption_image_ids[i]
        if img not in exclude and len(out) < DEMO_CAPTIONS:
            out.append((*data.captions[i], img))
    return out


def _run_queries(coll, bundle, data, k):
    """The demo's queries with their hits; ``relevant`` holds the ground truth where known."""
    queries = []
    step = max(1, len(data.image_paths) // DEMO_IMAGES)
    pick_ids = [i * step for i in range(DEMO_IMAGES)]
    for key, text, img in _caption_picks(data, set(pick_ids)):  # ground truth known: first
        target_path = data.image_paths[img]
        hits = coll.search_vector(bundle.encode_texts(text), target="image", k=k)
        queries.append({"label": f"text → image (a Flickr8K caption of {target_path.name}): {text}",
                        "query_text": text, "query_image": None, "hits": hits, "relevant": {str(target_path)}})
    for text, vec in zip(DEMO_SENTENCES, bundle.encode_texts(list(DEMO_SENTENCES))):
        hits = coll.search_vector(vec, target="image", k=k)
        queries.append({"label": f"text → image: {text}", "query_text": text, "query_image": None, "hits": hits})
    picks = [data.image_paths[i] for i in pick_ids]
    for path, vec in zip(picks, bundle.encode_images(picks)):
        truth = {c for c, _ in data.captions if c.split("#", 1)[0] == path.name}
        for target, arrow in (("text", "image → text"), ("image", "image → image")):
            hits = [h for h in coll.search_vector(vec, target=target, k=k + 1) if h.key != str(path)][:k]
            queries.append({"label": f"{arrow}: {path.name}", "query_text": None, "query_image": str(path),
                            "hits": hits, "relevant": truth if target == "text" else None})
    return queries


def next_steps(name: str, queries, data, dsn) -> list[str]:
    """Commands to try against the demo's collection (shell-quoted)."""
    coll = shlex.quote(name)
    first_image = next((h for q in queries for h in q["hits"] if h.modality == "image"), None)
    image_path = shlex.quote(str(data.image_paths[len(data.image_paths) // 2]))
    steps = [f'jointembed search text "a dog jumping into a swimming pool" --collection {coll} -k 5',
             f"jointembed search image {image_path} --collection {coll} --target text -k 5"]
    if first_image is not None:
        steps.append(f"jointembed search item {first_image.id} --collection {coll} --target image --html more.html")
    sql = (f"SELECT id, key, distance, text FROM jointembed.more_like_this({_sql_literal(name)}, "
           f"{first_image.id if first_image is not None else 1}, 5, 'text')")
    psql_dsn = '"$DATABASE_URL"' if dsn else '"$(jointembed server start)"'
    steps.append(f"psql {psql_dsn} -c {_shell_quote(sql)}")
    return steps


def _shell_quote(text: str) -> str:
    """Double quotes when nothing inside is special to the shell (readable SQL), else shlex."""
    if not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _report(reports, queries, html_path, name, counts, steps, as_json, where):
    if as_json:
        click.echo(json.dumps({
            "collection": name, "database": where.removeprefix("database: "), "counts": counts, "ingest": [r.to_dict() for r in reports],
            "html": str(html_path), "next": steps,
            "queries": [{"label": q["label"], "hits": [{"id": h.id, "key": h.key, "distance": float(h.distance),
                                                        "text": h.text, "source": h.source,
                                                        "correct": (h.key in q["relevant"]) if q.get("relevant")
                                                        else None} for h in q["hits"]]}
                        for q in queries],
        }))
        return
    for r in reports:
        click.echo(f"{r.modality}s: {r.written} written, {r.unchanged} unchanged, {len(r.failed)} failed "
                   f"({r.seconds:.1f} s)")
    for q in queries:
        click.echo(terminal_line(q["label"]))
        relevant = q.get("relevant")
        for rank, h in enumerate(q["hits"], 1):
            what = h.text if h.modality == "text" else Path(h.source or h.key).name
            mark = (" ✓" if h.key in relevant else "") if relevant else ""
            click.echo(f"  {rank}. {h.distance:.4f}  [id {h.id}]  {terminal_line(what)}{mark}")
    click.echo(f"\ncollection: {name} ({counts['image']} images, {counts['text']} texts)")
    click.echo(where)
    click.echo(f"gallery: {html_path.resolve()}  (✓ = correct by the Flickr8K ground truth; L2 distance, lower = closer)")
    click.echo("next, try:")
    for step in steps:
        click.echo(f"  {step}")
