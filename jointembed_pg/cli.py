"""The ``jointembed`` command line (click).

Exit codes: 0 success; 1 error (one line on stderr, no traceback); 2 bad usage;
3 the job finished but some items failed (they are listed in the end-of-run report).
Which exceptions are "errors" (one line) and which are bugs (traceback): :data:`USER_ERRORS`.
Every command that touches the database takes ``--dsn`` (or ``$DATABASE_URL``); without
either it starts/reuses the embedded PostgreSQL in ``<home>/pgdata`` (see
:mod:`jointembed_pg.settings`). No password reaches stdout/stderr (:func:`_guard_secrets`).

Vocabulary: the two kinds of item are ``image`` and ``text`` everywhere (commands,
``--target``, JSON, Python, SQL); the plurals ``images`` / ``texts`` are accepted as aliases.
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from .errors import InputError, JointEmbedError, ModelMismatchError
from .threads import ThreadBudget, threads_option

EXIT_PARTIAL = 3
DEFAULT_COLLECTION = "default"

#: The one rule for one-line errors: our own hierarchy (bad input, missing bundle,
#: database trouble) and operating-system errors (unwritable paths, full disks). click's
#: own ``ClickException``s (bad usage) are one line by construction. Every other
#: exception -- a bare ``ValueError``, ``TypeError``, ``KeyError`` -- is a bug and keeps
#: its traceback rather than being disguised as a user error.
USER_ERRORS: tuple[type[BaseException], ...] = (JointEmbedError, OSError)

#: The item kinds, and the plural spellings accepted for them.
KINDS = ("image", "text")
ALIASES = {"images": "image", "texts": "text"}


class KindChoice(click.Choice):
    """``image`` or ``text`` (``images`` / ``texts`` accepted and normalised)."""

    def __init__(self):
        super().__init__(list(KINDS))

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = ALIASES.get(value.lower(), value)
        return super().convert(value, param, ctx)


class AliasGroup(click.Group):
    """A command group that accepts ``images``/``texts`` for ``image``/``text`` (and back)."""

    group_class = type  # sub-groups made with @group.group() are AliasGroups too

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            other = ALIASES.get(cmd_name) or {v: k for k, v in ALIASES.items()}.get(cmd_name)
            cmd = super().get_command(ctx, other) if other else None
        return cmd

dsn_option = click.option("--dsn", envvar="DATABASE_URL", default=None, metavar="DSN",
                          help="PostgreSQL DSN (default: $DATABASE_URL, else the embedded server).")
bundle_option = click.option("--bundle", "bundle_name", default=None, metavar="NAME|PATH",
                             envvar="JOINTEMBED_BUNDLE", help="Model bundle (default: the 'default' bundle).")
collection_option = click.option("--collection", default=DEFAULT_COLLECTION, show_default=True,
                                 help="Collection to read or write.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress on stderr: a bar on a terminal, else a line every 10 s "
                                    "($JOINTEMBED_PROGRESS_INTERVAL) [default: on].")
storage_option = click.option("--storage", type=click.Choice(["vector", "halfvec"]), default=None,
                              help="Embedding type of a new collection: vector (float32, default) or halfvec "
                                   "(float16, half the bytes; pgvector >= 0.7). An existing one must match.")
memory_cap_option = click.option("--memory-cap", envvar="JOINTEMBED_INDEX_MEMORY", default=None, metavar="SIZE",
                                 help="Most maintenance_work_mem an HNSW build may use, e.g. 2GB "
                                      "(default: $JOINTEMBED_INDEX_MEMORY, else 1GB).")


class Context:
    """Lazily opened resources shared by one CLI invocation."""

    def __init__(self):
        self._store = None
        self._bundle = None

    def bundle(self, name, *, budget=None, int8=False):
        """The bundle of this invocation, loaded once; ``budget``: the batch job's
        :class:`ThreadBudget` (its sessions' threads), ``int8``: the int8 variant."""
        if self._bundle is None:
            from . import bulk

            self._bundle = bulk.load_bundle(name, int8=int8, threads=budget)
        return self._bundle

    def collection(self, dsn, name, *, bundle=None, create=False, storage=None):
        """Open collection ``name`` (checking ``bundle``'s model); a missing one is an
        :class:`InputError` listing the existing names (and the closest one)."""
        from .errors import DatabaseError
        from .suggest import not_found

        store = self.store(dsn)
        model = {"model_id": bundle.model_id, "dim": bundle.dim} if bundle is not None else {}
        try:
            return store.collection(name, create=create, storage=storage, **model)
        except DatabaseError as e:
            names = [c.name for c in store.collections()]
            if create or name in names:
                raise
            raise InputError(not_found("collection", name, names) + " (create one with "
                             "`jointembed index image|text ... --collection NAME`)") from e

    def store(self, dsn):
        if self._store is None:
            from .store import Store

            self._store = Store(dsn)
        return self._store


def _progress(flag):
    """``--progress/--no-progress`` -> the library's ``progress`` argument (on unless turned off;
    :mod:`jointembed_pg.progress` picks a bar or log lines by whether stderr is a terminal)."""
    return flag is not False


def user_error_message(e: BaseException) -> str | None:
    """The one-line message for an exception :data:`USER_ERRORS` covers, else ``None`` (a bug)."""
    if isinstance(e, OSError) and not isinstance(e, JointEmbedError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return f"{where}{e.strerror or e}"
    if isinstance(e, USER_ERRORS):
        return str(e)
    return None


def _index_log(flag) -> bool:
    """Route index-build messages to stderr; return whether to draw a progress bar.

    Server notices and warnings always show; progress lines (every 10 s, without a bar)
    and build summaries unless ``--no-progress``.
    """
    logger = logging.getLogger("jointembed_pg.indexing")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if flag is False else logging.INFO)
    return _progress(flag)


@contextmanager
def _errors():
    """Turn :data:`USER_ERRORS` into one-line ``Error: ...`` messages with exit code 1."""
    try:
        yield
    except USER_ERRORS as e:
        raise click.ClickException(user_error_message(e)) from e


@click.group(cls=AliasGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jointembed-pg")
@click.pass_context
def cli(ctx):
    """Semantic image<->text search inside PostgreSQL with pgvector.

    \b
    Quick start:
      jointembed model build                 # export the default model bundle
      jointembed index image photos/         # embed images into the 'default' collection
      jointembed index text captions.csv     # embed captions (CSV id,text / JSONL / Flickr8K tokens)
      jointembed search text "a dog running on the beach" -k 5
      jointembed demo                        # the whole thing on Flickr8K, with an HTML gallery
      jointembed model list                  # the model bundles you have
      jointembed collections list            # what is indexed
    """
    ctx.obj = Context()


@cli.command()
@dsn_option
@click.option("--collection", default=None, help="Also create this (empty) collection for the bundle's model.")
@storage_option
@bundle_option
@json_option
@click.pass_obj
def init(obj, dsn, collection, storage, bundle_name, as_json):
    """Create the jointembed schema (idempotent; also done on first use)."""
    with _errors():
        store = obj.store(dsn)
        if collection is not None:
            _open_collection(obj, dsn, bundle_name, collection, storage)
        elif storage is not None:
            raise click.UsageError("--storage applies to a new collection: give --collection too")
        info = store.info() if hasattr(store, "info") else {}
    click.echo(json.dumps(info) if as_json else f"jointembed schema ready {info or ''}".rstrip())


@cli.group()
def index():
    """Embed images or captions into a collection."""


def _finish(report, as_json):
    """Print an ingest report; exit 3 when some items failed."""
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{report.modality}s: {report.written} written, {report.unchanged} unchanged, "
                   f"{len(report.failed)} failed, {report.total} total in {report.seconds:.1f} s", err=True)
        for f in report.failed[:20]:
            click.echo(f"  failed: {f.error}", err=True)
        if len(report.failed) > 20:
            click.echo(f"  ... and {len(report.failed) - 20} more (use --json for all)", err=True)
        if getattr(report, "ignored", None):
            click.echo(f"  {report.ignored_summary()} (not images; --json lists them)", err=True)
    if report.written + report.unchanged == 0:
        # nothing indexed at all (no input, or every item failed) is an error
        if not report.failed and not as_json:
            click.echo(f"Error: nothing to index: no {report.modality} found", err=True)
        sys.exit(1)
    if report.failed:
        sys.exit(EXIT_PARTIAL)  # some items failing is a partial success


def _open_collection(obj, dsn, bundle_name, name, storage=None, *, threads=None, int8=False, defer_index=False):
    from . import bulk

    bundle = obj.bundle(bundle_name, budget=ThreadBudget.auto(threads), int8=int8)
    try:
        coll = obj.collection(dsn, name, bundle=bundle, create=True, storage=storage)
    except ModelMismatchError:
        coll = obj.collection(dsn, name, create=False)
        bulk.check_same_model(coll, bundle)  # the message says why precisions never mix
        raise
    if defer_index:
        bulk.drop_indexes(coll)
    return bundle, coll


int8_option = click.option("--int8", "int8", is_flag=True,
                           help="Bulk load with the bundle's int8 variant (<bundle>-int8: ~2x faster images, "
                                "-2.1 test rsum). Only into a collection made with that int8 bundle (or a new one); "
                                "query it with --bundle <name>-int8.")
defer_index_option = click.option("--defer-index", is_flag=True,
                                  help="Drop the collection's HNSW indexes before the load and build them once "
                                       "after it (faster for a load large next to what is stored).")


@index.command("image")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@collection_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=32, show_default=True, help="Images per encoder batch.")
@storage_option
@memory_cap_option
@threads_option
@int8_option
@defer_index_option
@json_option
@progress_option
@click.pass_obj
def index_images_cmd(obj, paths, collection, dsn, bundle_name, batch_size, storage, memory_cap, threads, int8,
                     defer_index, as_json, progress):
    """Embed image files or directories (recursively) into COLLECTION."""
    from . import ingest, readers

    with _errors():
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection, storage, threads=threads, int8=int8,
                                        defer_index=defer_index)
        scan = readers.scan_images(paths)
        report = ingest.index_images(coll, bundle, scan.records, batch_size=batch_size, progress=_progress(progress),
                                     ignored=scan.ignored, decode_threads=ThreadBudget.auto(threads).decode)
        coll.ensure_index(memory_cap=memory_cap, progress=_index_log(progress))
    _finish(report, as_json)


@index.command("text")
@click.argument("file", type=click.Path(path_type=Path))
@collection_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=256, show_default=True, help="Captions per encoder batch.")
@storage_option
@memory_cap_option
@threads_option
@int8_option
@defer_index_option
@json_option
@progress_option
@click.pass_obj
def index_texts_cmd(obj, file, collection, dsn, bundle_name, batch_size, storage, memory_cap, threads, int8,
                    defer_index, as_json, progress):
    """Embed the captions of FILE: CSV (id,text), JSON lines (id, text) or a Flickr8K token file."""
    from . import ingest, readers

    with _errors():
        records = list(readers.read_texts(file))
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection, storage, threads=threads, int8=int8,
                                        defer_index=defer_index)
        report = ingest.index_texts(coll, bundle, records, batch_size=batch_size, progress=_progress(progress))
        coll.ensure_index(memory_cap=memory_cap, progress=_index_log(progress))
    _finish(report, as_json)


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so the process unwinds like on Ctrl-C."""


def _guard_secrets() -> None:
    """Register the passwords of every DSN on the command line and in the environment, and
    scrub them (and any found later) from everything this process writes to stdout/stderr."""
    import os

    from . import errors, settings

    for arg in [*sys.argv[1:], os.environ.get(settings.DSN_ENV) or ""]:  # before settings can fail
        if "=" in arg or "://" in arg:
            errors.register_dsn(arg.split("=", 1)[1] if arg.startswith("--dsn=") else arg)
    errors.register_secret(os.environ.get("PGPASSWORD"))
    if not isinstance(sys.stdout, errors.ScrubbingStream):
        sys.stdout = errors.ScrubbingStream(sys.stdout)
    if not isinstance(sys.stderr, errors.ScrubbingStream):
        sys.stderr = errors.ScrubbingStream(sys.stderr)


def main() -> None:
    """Console entry point: click without its standalone handling, so that Ctrl-C and
    SIGTERM unwind normally (committed batches stay; the embedded server is released).
    No password reaches stdout/stderr (:func:`_guard_secrets`)."""
    import signal

    def _terminate(*_):
        raise _Terminated()

    _guard_secrets()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with _errors():  # the same rule for commands that did not apply it themselves
            rc = cli.main(prog_name="jointembed", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: committed batches are kept; rerun the same command to resume", err=True)
        sys.exit(130)
    except _Terminated:
        click.echo("terminated: committed batches are kept; rerun the same command to resume", err=True)
        sys.exit(143)
    sys.exit(rc if isinstance(rc, int) else 0)


# Sub-command modules register themselves on ``cli`` (they import it from here).
from . import cli_query, cli_demo, cli_sync, cli_distributed, cli_collections  # noqa: E402,F401
from .cli_model import model as _model_group  # noqa: E402
from .cli_server import server as _server_group  # noqa: E402

cli.add_command(_model_group, "model")
cli.add_command(_server_group, "server")
