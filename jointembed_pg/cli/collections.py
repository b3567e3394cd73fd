"""``jointembed collections list`` and ``jointembed collections drop NAME``.

Added to the root group by :mod:`jointembed_pg.cli`.
"""
from __future__ import annotations

import json
import sys

import click

from ..errors import terminal_line
from .options import AliasGroup, _errors, dsn_option, json_option


@click.group("collections", cls=AliasGroup)
def collections():
    """List or drop collections (what `index` and `search --collection` use)."""


@collections.command("list")
@dsn_option
@json_option
@click.pass_obj
def list_cmd(obj, dsn, as_json):
    """Each collection: name, model id, dim, number of images and texts, created at."""
    with _errors():
        store = obj.store(dsn)
        rows = []
        for info in store.collections():
            coll = store.collection(info.name)
            rows.append({"name": info.name, "model_id": info.model_id, "dim": info.dim,
                         "image": coll.count("image"), "text": coll.count("text"),
                         "created_at": info.created_at.isoformat(timespec="seconds")})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no collections yet (create one with `jointembed index image|text ... --collection NAME`)")
        return
    shown = [(terminal_line(r["name"]), terminal_line(r["model_id"])) for r in rows]  # one line each, no controls
    width = max(len(name) for name, _ in shown)
    click.echo(f"{'name':<{width}}  {'model_id':<16} {'dim':>5} {'images':>8} {'texts':>8}  created")
    for r, (name, model_id) in zip(rows, shown):
        click.echo(f"{name:<{width}}  {model_id:<16} {r['dim']:>5} {r['image']:>8} {r['text']:>8}  "
                   f"{r['created_at']}")


def _interactive() -> bool:
    """Whether there is a terminal to ask for confirmation on."""
    return sys.stdin.isatty()


@collections.command("drop")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@dsn_option
@click.pass_obj
def drop_cmd(obj, name, yes, dsn):
    """Delete collection NAME and all its embeddings (asks first; --yes skips the question).

    Without --yes and without a terminal to ask on, nothing is dropped (exit 1).
    """
    with _errors():
        coll = obj.collection(dsn, name)  # a misspelt name gets "did you mean"
        what = (f"collection {terminal_line(name)!r} ({coll.count('image')} images, {coll.count('text')} texts, "
                f"model {coll.model_id})")
        if not yes:
            if not _interactive():
                raise click.ClickException(f"not dropping {what}: no terminal to confirm on; pass --yes")
            if not click.confirm(f"Drop {what}? This deletes its embeddings", default=False):
                click.echo("not dropped")
                return
        obj.store(dsn).drop_collection(name)
    click.echo(f"dropped {what}")
