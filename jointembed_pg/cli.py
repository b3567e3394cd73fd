"""The ``jointembed`` command line (click).

Exit codes: 0 success; 1 error (one line on stderr, no traceback); 2 bad usage;
3 the job finished but some items failed (they are listed in the end-of-run report).
Every command that touches the database takes ``--dsn`` (or ``$DATABASE_URL``); without
either it starts/reuses the embedded PostgreSQL in ``<home>/pgdata`` (see
:mod:`jointembed_pg.settings`). No password reaches stdout/stderr (:func:`_guard_secrets`).
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from .errors import JointEmbedError

EXIT_PARTIAL = 3
DEFAULT_COLLECTION = "default"

dsn_option = click.option("--dsn", envvar="DATABASE_URL", default=None, metavar="DSN",
                          help="PostgreSQL DSN (default: $DATABASE_URL, else the embedded server).")
bundle_option = click.option("--bundle", "bundle_name", default=None, metavar="NAME|PATH",
                             envvar="JOINTEMBED_BUNDLE", help="Model bundle (default: the 'default' bundle).")
collection_option = click.option("--collection", default=DEFAULT_COLLECTION, show_default=True,
                                 help="Collection to read or write.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bars (default: on when stderr is a terminal).")


class Context:
    """Lazily opened resources shared by one CLI invocation."""

    def __init__(self):
        self._store = None
        self._bundle = None

    def bundle(self, name):
        if self._bundle is None:
            from .bundle import Bundle

            self._bundle = Bundle.load(name)
        return self._bundle

    def store(self, dsn):
        if self._store is None:
            from .store import Store

            self._store = Store(dsn)
        return self._store


def _progress(flag):
    return sys.stderr.isatty() if flag is None else flag


@contextmanager
def _errors():
    """Turn expected failures into one-line ``Error: ...`` messages with exit code 1."""
    try:
        yield
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:  # e.g. an --html path that cannot be written
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        raise click.ClickException(f"{where}{e.strerror or e}") from e
    except ValueError as e:  # invalid argument values caught below the CLI (names, dims)
        raise click.ClickException(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jointembed-pg")
@click.pass_context
def cli(ctx):
    """Semantic image<->text search inside PostgreSQL with pgvector.

    \b
    Quick start:
      jointembed model build                 # export the default model bundle
      jointembed index images photos/        # embed images into the 'default' collection
      jointembed index texts captions.csv    # embed captions (CSV id,text / JSONL / Flickr8K tokens)
      jointembed search text "a dog running on the beach" -k 5
      jointembed demo                        # the whole thing on Flickr8K, with an HTML gallery
    """
    ctx.obj = Context()


@cli.command()
@dsn_option
@json_option
@click.pass_obj
def init(obj, dsn, as_json):
    """Create the jointembed schema (idempotent; also done on first use)."""
    with _errors():
        store = obj.store(dsn)
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
        click.echo(f"{report.modality}s: {report.written} written, {report.skipped} unchanged, "
                   f"{len(report.failed)} failed, {report.total} total in {report.seconds:.1f} s", err=True)
        for f in report.failed[:20]:
            click.echo(f"  failed: {f.error}", err=True)
        if len(report.failed) > 20:
            click.echo(f"  ... and {len(report.failed) - 20} more (use --json for all)", err=True)
    if report.failed:
        # nothing usable at all is an error; some items failing is a partial success
        sys.exit(1 if report.written + report.skipped == 0 else EXIT_PARTIAL)


def _open_collection(obj, dsn, bundle_name, name):
    bundle = obj.bundle(bundle_name)
    coll = obj.store(dsn).collection(name, model_id=bundle.model_id, dim=bundle.dim, create=True)
    return bundle, coll


@index.command("images")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@collection_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=32, show_default=True, help="Images per encoder batch.")
@json_option
@progress_option
@click.pass_obj
def index_images_cmd(obj, paths, collection, dsn, bundle_name, batch_size, as_json, progress):
    """Embed image files or directories (recursively) into COLLECTION."""
    from . import ingest, readers

    with _errors():
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection)
        records = list(readers.iter_image_paths(paths))
        report = ingest.index_images(coll, bundle, records, batch_size=batch_size, progress=_progress(progress))
        coll.ensure_index()
    _finish(report, as_json)


@index.command("texts")
@click.argument("file", type=click.Path(path_type=Path))
@collection_option
@dsn_option
@bundle_option
@click.option("--batch-size", default=256, show_default=True, help="Captions per encoder batch.")
@json_option
@progress_option
@click.pass_obj
def index_texts_cmd(obj, file, collection, dsn, bundle_name, batch_size, as_json, progress):
    """Embed the captions of FILE: CSV (id,text), JSON lines (id, text) or a Flickr8K token file."""
    from . import ingest, readers

    with _errors():
        records = list(readers.read_texts(file))
        bundle, coll = _open_collection(obj, dsn, bundle_name, collection)
        report = ingest.index_texts(coll, bundle, records, batch_size=batch_size, progress=_progress(progress))
        coll.ensure_index()
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
from . import cli_query, cli_demo, cli_sync, cli_distributed  # noqa: E402,F401
from .cli_model import model as _model_group  # noqa: E402
from .cli_server import server as _server_group  # noqa: E402

cli.add_command(_model_group, "model")
cli.add_command(_server_group, "server")
