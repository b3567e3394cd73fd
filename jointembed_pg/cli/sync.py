"""``jointembed attach / detach / sync / worker / status / reembed / grant``: attached tables.

Added to the root group by :mod:`jointembed_pg.cli`.
See docs/SYNC.md.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

import click
from psycopg import sql

from .options import _echo_failures, _errors, exit_if_failed, _progress, bundle_option, dsn_option, json_option, progress_option, threads_option
from ..errors import terminal_line
from ..model.threads import ThreadBudget

table_option = click.option("--table", required=True, metavar="TABLE",
                            help="The table's name as stored (no SQL quoting).")
schema_option = click.option("--schema", default=None, metavar="SCHEMA",
                             help="The table's schema (default: the first on the search_path).")
allow_url_host_option = click.option(
    "--allow-url-host", "allow_url_hosts", multiple=True, metavar="HOST[:PORT]",
    help="Trusted image server that `url` image columns may reach although it is not a public address "
         "(or on a port other than 80/443); repeatable; adds to $JOINTEMBED_URL_ALLOW_HOSTS. Default: "
         "URLs reaching loopback, private, link-local or other non-public addresses are refused.")


@contextmanager
def _cli_errors(dsn):
    """The CLI's one rule (:data:`.options.USER_ERRORS`), with ``dsn``'s password registered
    for masking first (also when called in-process, without :func:`jointembed_pg.cli.main`)."""
    from .. import errors, settings

    with _errors():
        errors.register_dsn(dsn or settings.get().database_url)
        yield


def _config(batch_size: int, max_attempts: int | None = None, retry_base: float | None = None,
            threads: int | None = None, allow_url_hosts: tuple[str, ...] = ()):
    from dataclasses import replace

    from ..limits import Limits
    from ..sync.drain import SyncConfig

    kw = {"batch_size": batch_size, "load_threads": ThreadBudget.auto(threads).decode}
    if allow_url_hosts:
        env = Limits.from_env()
        kw["limits"] = replace(env, url_allow_hosts=(*env.url_allow_hosts, *allow_url_hosts))
    if max_attempts is not None:
        kw["max_attempts"] = max_attempts
    if retry_base is not None:
        kw["retry_base_s"] = retry_base
    return SyncConfig(**kw)


def _connect(dsn):
    from .. import db

    return db.connect(dsn, autocommit=True)


@click.command("attach")
@table_option
@click.option("--key", required=True, metavar="COL", help="Unique key column (primary key or unique index).")
@click.option("--image-column", default=None, metavar="COL", help="Column naming or holding the image.")
@click.option("--text-column", default=None, metavar="COL", help="Column holding the text to embed.")
@click.option("--image-source", type=click.Choice(["path", "url", "bytea"]), default="path", show_default=True,
              help="How the image column is read: file path, http(s) URL (public addresses only, unless "
                   "`sync`/`worker --allow-url-host`), or the bytes themselves.")
@click.option("--image-root", default=None, metavar="DIR", help="Base directory of relative image paths.")
@schema_option
@dsn_option
@bundle_option
@json_option
@click.pass_obj
def attach_cmd(obj, table, key, image_column, text_column, image_source, image_root, schema, dsn,
               bundle_name, as_json):
    """Keep TABLE's rows embedded: side table, triggers and queue; enqueue all rows.

    The table is not altered. Then run `jointembed sync --table TABLE` (once) or
    `jointembed worker` (continuously).
    """
    from ..sync import catalog as sync

    with _cli_errors(dsn):
        bundle = obj.bundle(bundle_name)
        with _connect(dsn) as conn:
            att = sync.attach(conn, table, bundle, key=key, image_column=image_column, text_column=text_column,
                              image_source=image_source, image_root=image_root, schema=schema)
            st = sync.status(conn, att.table_name, att.schema_name)[0]
            conn_rows = conn.execute(sql.SQL("SELECT count(DISTINCT key) FROM {}").format(
                sql.Identifier("jointembed", f"a{int(att.id)}_queue"))).fetchone()[0]
    if as_json:
        click.echo(json.dumps({**st, "enqueued_rows": conn_rows}, default=str))
    else:
        click.echo(f"attached {att.qualified} (model {att.model_id}, dim {att.dim}): {_enqueued(conn_rows, st)}; "
                   f"run `{_sync_hint(table, schema)}` or `jointembed worker`")


def _enqueued(rows: int, st: dict) -> str:
    """``50 rows enqueued (100 items: 50 images, 50 texts)``: the queue holds one item per
    row and embedded column."""
    kinds = [f"{rows} {m}s" for m in ("image", "text") if st.get(f"{m}_column")]
    return f"{rows} rows enqueued ({st['pending']} items: {', '.join(kinds)})"


@click.command("detach")
@table_option
@schema_option
@dsn_option
def detach_cmd(table, schema, dsn):
    """Remove TABLE's embeddings, triggers and queue (the table itself is untouched)."""
    from ..sync import catalog as sync

    with _cli_errors(dsn), _connect(dsn) as conn:
        att = sync.detach(conn, table, schema)
    click.echo(f"detached {att.qualified}")


def _print_report(rep, as_json):
    if as_json:
        click.echo(json.dumps(rep.to_dict(), default=str))
        return
    click.echo(f"{rep.table}: {rep.written} embedded, {rep.unchanged} unchanged, {len(rep.failed)} failed "
               f"in {rep.seconds:.1f} s (model {rep.model_id})", err=True)
    _echo_failures([f["error"] for f in rep.failed], "see `jointembed status`")


@click.command("sync")
@table_option
@schema_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=32, show_default=True, help="Queue rows per batch.")
@click.option("--retry-failed", is_flag=True, help="First make given-up rows ready again.")
@click.option("--rescan", is_flag=True, help="First enqueue every row (e.g. image files changed in place).")
@allow_url_host_option
@threads_option
@json_option
@progress_option
@click.pass_obj
def sync_cmd(obj, table, schema, dsn, bundle_name, batch_size, retry_failed, rescan, allow_url_hosts, threads,
             as_json, progress):
    """Drain TABLE's queue once and exit (exit code 3 when some rows failed)."""
    from ..sync import catalog as sync
    from ..sync.drain import sync_table

    with _cli_errors(dsn):
        bundle = obj.bundle(bundle_name, budget=ThreadBudget.auto(threads))
        with _connect(dsn) as conn:
            rep = sync_table(conn, table, bundle, schema=schema,
                             cfg=_config(batch_size, threads=threads, allow_url_hosts=allow_url_hosts),
                             progress=_progress(progress), retry_failed=retry_failed,
                             rescan=rescan)
            claimed = sync.status(conn, table, schema)[0].get("claimed", 0)
    _print_report(rep, as_json)
    if claimed:  # held by another worker whose session is still connected
        click.echo(f"note: {claimed} queued changes are being embedded by another running worker (claims of "
                   "a worker that died are free as soon as its connection ends); see `jointembed status`",
                   err=True)
    exit_if_failed(len(rep.failed))


@click.command("worker")
@click.option("--table", "tables", multiple=True, metavar="TABLE",
              help="Table to serve (repeatable; default: every attached table of the bundle's model).")
@schema_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=32, show_default=True, help="Queue rows per batch.")
@click.option("--poll", "poll_s", default=5.0, show_default=True, help="Seconds between polls without NOTIFY.")
@click.option("--until-idle", is_flag=True, help="Exit once every queue is drained.")
@allow_url_host_option
@threads_option
@click.pass_obj
def worker_cmd(obj, tables, schema, dsn, bundle_name, batch_size, poll_s, until_idle, allow_url_hosts, threads):
    """Embed queued rows continuously (LISTEN/NOTIFY + polling); JSON log lines on stderr.

    Stops gracefully on SIGTERM / SIGINT (the batch in hand is finished). Run as many
    as you like: each row is embedded by one of them. With --until-idle: exit code 3
    when some rows failed.
    """
    from ..sync.worker import Worker

    with _cli_errors(dsn):
        bundle = obj.bundle(bundle_name, budget=ThreadBudget.auto(threads))
        worker = Worker(dsn, bundle, tables=[(t, schema) for t in tables] or None,
                        cfg=_config(batch_size, threads=threads, allow_url_hosts=allow_url_hosts), poll_s=poll_s)
        totals = worker.run(until_idle=until_idle)
    if until_idle:  # a job that finished: the rule of sync; a stopped service exits 0
        exit_if_failed(totals["failed"])


@click.command("status")
@click.option("--table", default=None, metavar="TABLE", help="One attached table (default: all).")
@schema_option
@dsn_option
@json_option
def status_cmd(table, schema, dsn, as_json):
    """Pending / done / failed counts and the latest errors of attached tables."""
    from ..sync import catalog as sync

    with _cli_errors(dsn), _connect(dsn) as conn:
        rows = sync.status(conn, table, schema)
    if as_json:
        click.echo(json.dumps(rows[0] if table is not None else rows, default=str))
        return
    if not rows:
        click.echo("no attached tables")
    for st in rows:
        if st.get("error"):  # this table only (dropped without detach): the others are shown
            click.echo(f"{_qualified(st)}: error: {terminal_line(st['error'])}")
            continue
        click.echo(f"{_qualified(st)}: model {st['model_id']} (dim {st['dim']}): {st['done']} done, "
                   f"{st['pending']} pending, {st['failed']} failed ({st['gave_up']} given up)")
        if st.get("building"):
            b = st["building"]
            click.echo(f"  reembed to {b['model_id']} (dim {b['dim']}): {b['done']} done, "
                       f"{b['pending']} pending, {b['failed']} failed")
        if st.get("missing"):
            about = "" if st.get("missing_exact", True) else "about "
            click.echo(f"  {about}{st['missing']} rows x modalities have no embedding and are not queued "
                       "(rows added without row triggers: ATTACH PARTITION, session_replication_role = "
                       f"replica, logical replication); run `{_sync_hint(st['table'], st['schema'])} --rescan`")
        if st.get("retired"):
            click.echo(f"  {st['retired']} old model side table(s) not dropped yet (an interrupted reembed); "
                       "`jointembed reembed` with the current bundle drops them")
        for e in st["errors"]:
            retry = f"retry at {e['next_attempt_at']}" if e["next_attempt_at"] else "given up"
            click.echo(f"  [{e['key']}] {e['modality']}: {e['error']} (attempts {e['attempts']}, {retry})")


def _qualified(st: dict) -> str:
    from ..sync.catalog import _quote

    return f"{_quote(st['schema'])}.{_quote(st['table'])}"


def _check_max_failed(ctx, param, value):
    """Refuse a bad ``--max-failed`` as bad usage (exit 2) before any work."""
    from ..errors import ArgumentError
    from ..sync.reembed import parse_max_failed

    try:
        parse_max_failed(value)
    except ArgumentError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e
    return value


@click.command("reembed")
@table_option
@schema_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=32, show_default=True, help="Queue rows per batch.")
@click.option("--max-failed", default="0", show_default=True, metavar="N|P%", callback=_check_max_failed,
              help="How many of the rows the old model has embedded may fail with the new one and the switch "
                   "still happen: a count, or a percentage of them (5%). Over it, or when the new model "
                   "embedded nothing, searches stay on the old model (exit 1; rerun to retry the failed rows).")
@click.option("--abort", "abort_", is_flag=True, help="Abandon a reembed in progress instead.")
@allow_url_host_option
@json_option
@progress_option
@click.pass_obj
def reembed_cmd(obj, table, schema, dsn, bundle_name, batch_size, max_failed, abort_, allow_url_hosts, as_json,
                progress):
    """Re-embed TABLE with another model, then switch searches to it atomically.

    The old embeddings stay searchable until the new ones are complete, and stay in use
    when the new model failed (see --max-failed). Exit code 3: switched, but some rows
    failed (within --max-failed); they keep retrying. Restart workers with the new
    bundle afterwards.
    """
    from ..sync import reembed as sync_reembed

    with _cli_errors(dsn):
        if abort_:
            with _connect(dsn) as conn:
                done = sync_reembed.abort(conn, table, schema)
            click.echo("reembed abandoned" if done else "no reembed in progress")
            return
        bundle = obj.bundle(bundle_name)
        with _connect(dsn) as conn:
            rep = sync_reembed.reembed(conn, table, bundle, schema=schema,
                                       cfg=_config(batch_size, allow_url_hosts=allow_url_hosts),
                                       progress=_progress(progress), max_failed=max_failed)
    failed = [f["error"] for f in rep.sync.failed] if rep.sync else []
    if as_json:
        click.echo(json.dumps(rep.to_dict(), default=str))
    elif not rep.switched:
        click.echo(f"{rep.table} already uses model {rep.new_model_id}")
    else:
        click.echo(f"{rep.table}: switched from {rep.old_model_id} (dim {rep.old_dim}) to "
                   f"{rep.new_model_id} (dim {rep.new_dim}); {rep.sync.written} rows embedded, "
                   f"{len(failed)} failed")
        _echo_failures(failed, "see `jointembed status`")
    exit_if_failed(len(failed))



@click.command("grant")
@click.argument("role")
@click.option("--writer", is_flag=True,
              help="Also write the items of existing collections and run `sync --rescan/--retry-failed`.")
@dsn_option
def grant_cmd(role, writer, dsn):
    """Give ROLE exactly the rights of a jointembed reader/worker (see docs/SYNC.md, Roles).

    Run as the owner of schema jointembed. The role can then search, read status and
    run `jointembed sync` / `jointembed worker`; it can write no catalog table and run
    no attach / detach / reembed. Running it again replaces the role's rights.
    """
    from ..sync.catalog import _call, _quote

    with _cli_errors(dsn), _connect(dsn) as conn:
        _call(conn, "SELECT jointembed.grant_usage(%s, %s)", [role, writer])
    click.echo(f"granted {_quote(role)} the rights of a jointembed {'writer' if writer else 'reader/worker'}")


def _sync_hint(table: str, schema: str | None) -> str:
    """The ``jointembed sync`` command line for a table, shell-quoted."""
    import shlex

    args = ["jointembed", "sync", "--table", table] + (["--schema", schema] if schema else [])
    return " ".join(shlex.quote(a) for a in args)
