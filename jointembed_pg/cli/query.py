"""``jointembed search`` and ``jointembed eval``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .. import paths
from .options import (AliasGroup, KindChoice, _errors, _progress, bundle_option, collection_option, dsn_option,
                  json_option, progress_option)
from ..errors import InputError, ItemError, terminal_line


@click.group(cls=AliasGroup)
def search():
    """Cross-modal search: a sentence or an image against stored images or captions."""


def _search_options(default_target):
    def deco(f):
        for opt in reversed([
            click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Hits to return."),
            click.option("--target", type=KindChoice(), default=default_target, show_default=True,
                         help="Search stored images or stored texts (captions); plurals accepted."),
            collection_option, dsn_option, bundle_option,
            click.option("--ef-search", type=click.IntRange(1, 1000), default=None, help="HNSW ef_search for this query."),
            click.option("--exact", is_flag=True, help="Exact scan (no index)."),
            click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Also write an HTML page with thumbnails of the hits."),
            json_option,
        ]):
            f = opt(f)
        return f
    return deco


def empty_target_hint(coll, target) -> str:
    """Why a search of ``coll`` found nothing when the cause is plain: the ``target`` kind
    (``"image"`` / ``"text"``; ``None``: no hint) has no items, e.g. ``search image`` (target
    text by default) in a collection of images only. ``""`` when it has some."""
    if target not in ("image", "text") or coll.count(target) > 0:
        return ""
    other = "text" if target == "image" else "image"
    n_other = coll.count(other)
    hint = f"collection {coll.name!r} has no {target}s"
    return hint + (f"; it has {n_other} {other}s: add --target {other}" if n_other else "")


def _print_hits(label, hits, as_json, warnings=(), empty_hint=""):
    """Hits as text (rank, L2 distance, ``[id N]``, caption or path; each value on one line,
    control characters escaped by :func:`~jointembed_pg.errors.terminal_line`) or one JSON
    object per hit (``id, key, modality, distance, source, text, warnings``). No hits: the
    text says ``(no results)`` and ``empty_hint`` (why, and the fix); with JSON the hint
    goes to stderr as a ``note:`` line."""
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        if not hits and empty_hint:
            click.echo(f"note: no results: {empty_hint}", err=True)
        for h in hits:
            click.echo(json.dumps({"id": h.id, "key": h.key, "modality": h.modality, "distance": float(h.distance),
                                   "source": h.source, "text": h.text, "warnings": list(warnings)}))
        return
    label = label if len(label) <= 200 else f"{label[:197]}..."
    click.echo(terminal_line(label))
    if not hits:
        click.echo(f"  (no results: {empty_hint})" if empty_hint else "  (no results)")
    for rank, h in enumerate(hits, 1):
        what = h.text if h.modality == "text" else (h.source or h.key)
        click.echo(f"  {rank:>3}. {h.distance:.4f}  [id {h.id}]  {terminal_line(what)}")


def _run_search(obj, coll, vec, label, query_image, query_text, k, target, ef_search, exact, html, as_json,
                warnings=()):
    hits = coll.search_vector(vec, target=target, k=k, ef_search=ef_search, exact=exact)
    _print_hits(label, hits, as_json, warnings, empty_target_hint(coll, target) if not hits else "")
    if html:
        _write_html(html, coll, [{"label": label, "query_image": query_image, "query_text": query_text,
                                  "hits": hits}], as_json)


def _write_html(html, coll, queries, as_json):
    from ..evaluation.gallery import write_gallery

    write_gallery(html, queries, header={"collection": coll.name, "model": coll.model_id,
                                         "counts": {"image": coll.count("image"), "text": coll.count("text")}})
    if not as_json:
        click.echo(f"wrote {html}", err=True)


def query_warnings(bundle, query: str) -> list[str]:
    """Refuse a query the model cannot read; warn when it is mostly unknown word pieces.

    Raises:
        InputError: empty, or every word piece is ``[UNK]`` (emoji, unsupported script):
            such queries would all embed alike and return the same hits.
    """
    if not query.strip():
        raise InputError("the query is empty")
    cov = bundle.tokenizer.coverage(query)
    if cov.unreadable:
        raise InputError(f"query {query[:60]!r}: the model cannot read it: {cov.describe()}; "
                         "use English words (emoji and many scripts are not in the vocabulary)")
    if cov.mostly_unknown:
        return [f"query {query[:60]!r}: {cov.describe()} (more than half); results may be unrelated"]
    return []


TEXT_ENCODER_OPTION = click.option(
    "--text-encoder", type=click.Choice(["onnx", "sql"]), default="onnx", show_default=True,
    help="onnx: the bundle's text tower; sql: the collection model's static text encoder computed "
         "in the database (jointembed.embed_text, docs/SQL.md).")


def sql_query_vector(coll, query: str) -> tuple:
    """``(vector, warnings)`` of ``query`` by ``jointembed.embed_text`` (the database's warnings
    about mostly-unknown queries are returned; an empty / all-unknown query is an InputError)."""
    from ..search import text_sql

    notices: list[str] = []
    with coll.store.connection() as conn:
        handler = lambda d: notices.append(d.message_primary or "")  # noqa: E731
        conn.add_notice_handler(handler)
        try:
            vec = text_sql.embed_checked(conn, coll.name, query)
        finally:
            conn.remove_notice_handler(handler)
    return vec, [n for n in notices if "unknown" in n]


@search.command("text")
@click.argument("query")
@_search_options("image")
@TEXT_ENCODER_OPTION
@click.pass_obj
def search_text(obj, query, k, target, collection, dsn, bundle_name, ef_search, exact, html, as_json, text_encoder):
    """Find stored images (or texts) closest to the sentence QUERY (L2 distance, lower = closer).

    A query whose word pieces are all unknown to the tokenizer (emoji, unsupported
    scripts) is refused; one that is mostly unknown (> 50%) gets a warning (a "warnings"
    entry in each --json hit). With --text-encoder sql the query is embedded by the database (no text
    tower run here), with the same refusal and warning.
    """
    with _errors():
        if text_encoder == "sql":
            coll = obj.collection(dsn, collection)
            vec, warnings = sql_query_vector(coll, query)
            _run_search(obj, coll, vec, f"text: {query}", None, query, k, target, ef_search, exact, html, as_json,
                        warnings)
            return
        bundle = obj.bundle(bundle_name)
        coll = obj.collection(dsn, collection, bundle=bundle)  # refuse a missing collection / other model first
        warnings = query_warnings(bundle, query)
        try:
            vec = bundle.encode_texts(query)
        except ItemError as e:
            raise InputError(e.for_item("query")) from e
        _run_search(obj, coll, vec, f"text: {query}", None, query, k, target, ef_search, exact, html, as_json,
                    warnings)


@search.command("image")
@click.argument("path", type=click.Path(path_type=Path))
@_search_options("text")
@click.pass_obj
def search_image(obj, path, k, target, collection, dsn, bundle_name, ef_search, exact, html, as_json):
    """Find stored texts (or images) closest to the image at PATH (L2 distance, lower = closer)."""
    with _errors():
        bundle = obj.bundle(bundle_name)
        coll = obj.collection(dsn, collection, bundle=bundle)  # refuse a missing collection / other model first
        vec = bundle.encode_images(path)
        _run_search(obj, coll, vec, f"image: {path}", str(path), None, k, target, ef_search, exact, html, as_json)


@click.command("eval")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Flickr8K-layout directory (images/, Flickr8k.token.txt) [default: $JOINTEMBED_DATA_DIR, "
                   "else shared/data/flickr8k beside the checkout].")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True,
              help="Flickr8K split (1,000 images for dev and test, 6,000 for train; 5 captions each).")
@click.option("--collection", default=None, help="Collection to write the split into [default: flickr8k_<split>].")
@dsn_option
@bundle_option
@json_option
@progress_option
@TEXT_ENCODER_OPTION
@click.pass_obj
def eval_cmd(obj, data_dir, split, collection, dsn, bundle_name, as_json, progress, text_encoder):
    """Index a Flickr8K split through Postgres and report R@1/5/10 (i2t, t2i), medr and rsum.

    With --text-encoder sql the captions are ranked with the embeddings jointembed.embed_text
    computes in SQL (the static text encoder) and the report adds the ONNX tower's t2i
    R@1+R@5+R@10 on the same split and the ratio.
    """
    from ..evaluation.evaluate import evaluate_split

    with _errors():
        data_dir = paths.flickr8k_dir(data_dir)
        bundle = obj.bundle(bundle_name)
        name = collection or f"flickr8k_{split}"
        coll = obj.collection(dsn, name, bundle=bundle, create=True)
        res = evaluate_split(coll, bundle, data_dir, split, progress=_progress(progress), text_encoder=text_encoder)
    m = res.metrics
    if as_json:
        click.echo(json.dumps({**m, "split": split, "model_id": bundle.model_id, "collection": name,
                               "text_encoder": text_encoder}))
        return
    click.echo(f"Flickr8K {split} via Postgres ({res.images.total} images, {res.texts.total} captions), model {bundle.model_id}"
               + (", captions embedded in SQL (jointembed.embed_text)" if text_encoder == "sql" else ""))
    for d in ("i2t", "t2i"):
        click.echo(f"  {d}: R@1 {m[f'{d}_R@1']:6.2f}  R@5 {m[f'{d}_R@5']:6.2f}  R@10 {m[f'{d}_R@10']:6.2f}  medr {m[f'{d}_medr']:g}")
    click.echo(f"  rsum {m['rsum']:.2f}")
    if text_encoder == "sql":
        click.echo(f"  t2i R@1+5+10 {m['t2i_R@1'] + m['t2i_R@5'] + m['t2i_R@10']:.2f} vs ONNX tower "
                   f"{m['tower_t2i_rsum']:.2f}: {100 * m['sql_t2i_ratio']:.1f} %")


@search.command("item")
@click.argument("item_id", type=int)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Hits to return.")
@click.option("--target", type=KindChoice(), default=None,
              help="image or text [default: the item's own kind].")
@collection_option
@dsn_option
@click.option("--ef-search", type=click.IntRange(1, 1000), default=None, help="HNSW ef_search for this query.")
@click.option("--exact", is_flag=True, help="Exact scan (no index).")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an HTML page with thumbnails of the hits.")
@json_option
@click.pass_obj
def search_item(obj, item_id, k, target, collection, dsn, ef_search, exact, html, as_json):
    """More like this: items nearest to the stored item ITEM_ID (no model needed).

    ITEM_ID is the numeric id shown as [id N] in search output ("id" with --json).
    """
    with _errors():
        coll = obj.collection(dsn, collection)
        hits = coll.more_like_this(item_id, target=target, k=k, ef_search=ef_search, exact=exact)
        item = coll.get(item_id)
        what = item.text if item.modality == "text" else (item.source or item.key)
        _print_hits(f"item {item_id} ({item.modality}): {what}", hits, as_json,
                    empty_hint=empty_target_hint(coll, target) if not hits else "")
        if html:
            query_image = item.source if item.modality == "image" else None
            _write_html(html, coll, [{"label": f"more like item {item_id}", "query_image": query_image,
                                      "query_text": item.text, "query_id": item_id, "hits": hits}], as_json)
